#!/usr/bin/env bash
# One prepared device check (issue 17): parity, panoptic, decode, throughput, host overhead, environment
# -> DIR/gpu_check.json.
#   bash scripts/gpu_check.sh [--device cuda|cpu] [--out DIR] [--quick] [--variants M0 PT ...]
# Python: $FLASHOCC_PYTHON, else the repository's .venv, else python3 (the device machine: Python 3.12, no ROS).
# Wheels carried to a machine without network: scripts/gpu_carry.sh unpacks them under .carry/site (or set
# FLASHOCC_CARRY_DIR); that directory is put on PYTHONPATH (only for the Python version it was made for) and its
# top-level entries are recorded in the report's environment section.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${FLASHOCC_PYTHON:-}"
if [[ -z "$PY" ]]; then
  if [[ -x "$REPO/.venv/bin/python" ]]; then PY="$REPO/.venv/bin/python"; else PY="$(command -v python3)"; fi
fi
CARRY="${FLASHOCC_CARRY_DIR:-$REPO/.carry/site}"
if [[ -f "$CARRY/.python_version" ]]; then  # written by scripts/gpu_carry.sh: wheels for one Python version
  want="$(cat "$CARRY/.python_version")"
  have="$("$PY" -c 'import sys; print("%d.%d" % sys.version_info[:2])')"
  if [[ "$want" != "$have" ]]; then
    echo "gpu_check.sh: not using $CARRY (wheels for Python $want, this is Python $have)" >&2
    CARRY=""
  fi
fi
if [[ -n "$CARRY" && -d "$CARRY" ]]; then
  export PYTHONPATH="$CARRY${PYTHONPATH:+:$PYTHONPATH}"
  FLASHOCC_CARRIED="$(ls -1 "$CARRY" | grep -v '\.dist-info$' | paste -sd: -)"
  export FLASHOCC_CARRIED
fi
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
exec "$PY" -m flashocc_ros.tools.gpu_check "$@"
