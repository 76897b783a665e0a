#!/usr/bin/env bash
# Create (or update) the development environment in <repo>/.venv:
#   one pip resolve (numpy<2, torch==2.13.0 CPU, ROS 2 Kilted wheels, ONNX, rosbags, nuscenes-devkit, ...),
#   the package itself (editable), and the msg/ interfaces built with cmake into the venv
#   (+ a test-only, wire-identical copy of tf2_msgs/TFMessage).
# Idempotent: each step is skipped when its inputs have not changed.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${FLASHOCC_VENV:-$ROOT/.venv}"
PY="$VENV/bin/python"
log() { printf '[setup_env] %s\n' "$*"; }
stamp_of() { cat "$@" | sha256sum | cut -c1-16; }

if [ ! -x "$PY" ]; then
  log "creating virtual environment $VENV"
  python3 -m venv "$VENV"
fi

PIP_STAMP="$(stamp_of "$ROOT/requirements.txt" "$ROOT/setup.py")"
if [ "$(cat "$VENV/.pip_stamp" 2>/dev/null)" != "$PIP_STAMP" ]; then
  log "installing Python dependencies (one resolve, ~1-2 min on a fresh machine)"
  "$PY" -m pip install -q --upgrade "pip>=23" "setuptools>=64" wheel 2>&1 | grep -v "is ignored" || true
  # -e with compat mode: a .pth entry for the repository (the cmake-built msg package is found via extend_path).
  "$PY" -m pip install -q -r "$ROOT/requirements.txt" -e "$ROOT" --config-settings editable_mode=compat \
    2>&1 | grep -v "is ignored" || true
  "$PY" -c "import torch, rclpy, onnxruntime, rosbags, nuscenes, numpy; assert torch.__version__.startswith('2.13.0'), torch.__version__; assert numpy.__version__ < '2'" \
    || { log "ERROR: dependency install failed"; exit 1; }
  echo "$PIP_STAMP" > "$VENV/.pip_stamp"
fi

SITE="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
PYINC="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["include"])')"
NPINC="$("$PY" -c 'import numpy; print(numpy.get_include())')"
PYVER="$("$PY" -c 'import sys; print(f"python{sys.version_info[0]}.{sys.version_info[1]}")')"

MSG_STAMP="$(stamp_of "$ROOT"/msg/*.msg "$ROOT/CMakeLists.txt" "$ROOT/test/interfaces/tf2_msgs/CMakeLists.txt" "$VENV/.pip_stamp")"
if [ "$(cat "$VENV/.msg_stamp" 2>/dev/null)" != "$MSG_STAMP" ]; then
  log "fixing wheel-builder paths in the venv's exported CMake files"
  # (grep finds nothing when the paths were fixed by an earlier run: not an error)
  { grep -rlZ -e '/opt/python/cp311-cp311' "$VENV/share" --include='*.cmake' 2>/dev/null || true; } | xargs -0 -r sed -i \
    -e "s#/opt/python/cp311-cp311/lib/python3.11/site-packages/numpy/_core/include#$NPINC#g" \
    -e "s#/opt/python/cp311-cp311/lib/python3.11/site-packages/numpy/core/include#$NPINC#g" \
    -e "s#/opt/python/cp311-cp311/include/python3.11#$PYINC#g"
  export AMENT_PREFIX_PATH="$VENV"
  build_pkg() {  # build_pkg <src> <build dir> [extra cmake args...]
    local src="$1" bld="$2"; shift 2
    rm -rf "$bld"  # a cache from another checkout path (a moved or re-cloned repository) would make cmake refuse
    cmake -S "$src" -B "$bld" -DCMAKE_INSTALL_PREFIX="$VENV" -DCMAKE_PREFIX_PATH="$VENV" \
      -DPython3_EXECUTABLE="$PY" -DBUILD_TESTING=OFF "$@" > "$bld.log" 2>&1 \
      && cmake --build "$bld" -j2 >> "$bld.log" 2>&1 && cmake --install "$bld" >> "$bld.log" 2>&1 \
      || { log "ERROR: building $src failed; see $bld.log"; tail -n 30 "$bld.log"; exit 1; }
  }
  mkdir -p "$VENV/build"
  log "building test-only tf2_msgs/TFMessage copy"
  build_pkg "$ROOT/test/interfaces/tf2_msgs" "$VENV/build/tf2_msgs"
  log "building flashocc_ros interfaces (msg/)"
  # Generated Python goes to a directory of its own (listed in a .pth after the editable repo entry), so the
  # repository's flashocc_ros stays the one imported; flashocc_ros/__init__.py extends __path__ to find .msg.
  build_pkg "$ROOT" "$VENV/build/flashocc_ros" -DFLASHOCC_INSTALL_PYTHON=OFF \
    -DPYTHON_INSTALL_DIR="lib/$PYVER/flashocc_ros_interfaces"
  rm -f "$VENV/lib/$PYVER/flashocc_ros_interfaces/flashocc_ros/__init__.py"
  echo "$VENV/lib/$PYVER/flashocc_ros_interfaces" > "$SITE/zz_flashocc_ros_interfaces.pth"
  echo "$MSG_STAMP" > "$VENV/.msg_stamp"
fi

AMENT_PREFIX_PATH="$VENV" "$PY" -c "import flashocc_ros.msg, flashocc_ros.config, tf2_msgs.msg" \
  || { log "ERROR: interfaces do not import"; exit 1; }
log "environment ready: $VENV"
