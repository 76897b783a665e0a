#!/usr/bin/env bash
# Prepare what scripts/gpu_check.sh needs on the device machine (Python 3.12, no network) and lacks there:
# downloads the wheels below for CPython 3.12 / manylinux x86-64 and unpacks them into .carry/site (git-ignored),
# which gpu_check.sh puts on PYTHONPATH and records in its report. Run here, once, before the device call:
#   bash scripts/gpu_carry.sh            # -> .carry/site (~1 MB)
# then, with the device tool:  run(command="bash scripts/gpu_check.sh --device cuda --out $OUT/gpu", carry=[".carry"])
# Only simplejpeg is missing there (the fast CPU JPEG path; without it the CPU path decodes with Pillow's draft
# mode); torch, torchvision, numpy, OpenCV, Pillow, PyYAML and onnxruntime are in the device image.
set -euo pipefail
REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WHEELS=("simplejpeg==1.9.0")
PY_VERSION="${FLASHOCC_CARRY_PYTHON:-3.12}"
PIP=("${FLASHOCC_PIP:-python3}" -m pip)
DEST="$REPO/.carry"
TMP="$(mktemp -d "$REPO/.carry.tmp.XXXXXX")"
trap 'rm -rf "$TMP"' EXIT
platforms=()
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64; do
  platforms+=(--platform "$p")
done
"${PIP[@]}" download -q --no-deps --only-binary=:all: --python-version "$PY_VERSION" --implementation cp \
  "${platforms[@]}" -d "$TMP/wheels" "${WHEELS[@]}"
mkdir -p "$TMP/site"
echo "$PY_VERSION" > "$TMP/site/.python_version"  # gpu_check.sh uses the folder only with this Python
for whl in "$TMP"/wheels/*.whl; do
  python3 -m zipfile -e "$whl" "$TMP/site"
done
# replace the previous .carry only once everything is unpacked (never a half-prepared folder)
rm -rf "$DEST"
mkdir -p "$DEST"
mv "$TMP/wheels" "$TMP/site" "$DEST/"
echo "carried for Python $PY_VERSION: $(ls -1 "$DEST/site" | grep -v '\.dist-info$' | paste -sd' ' -) ($(du -sh "$DEST" | cut -f1))"
