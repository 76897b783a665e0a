#!/usr/bin/env bash
# README command 2: create/update the environment if needed, then lint and run the whole test suite.
# Extra arguments go to pytest (e.g. scripts/test.sh -k panoptic).
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup_env.sh
VENV="${FLASHOCC_VENV:-$ROOT/.venv}"
echo "[test] ruff check + format check"
"$VENV/bin/ruff" check .
"$VENV/bin/ruff" format --check .
export AMENT_PREFIX_PATH="$VENV"
export FASTDDS_DEFAULT_PROFILES_FILE="$ROOT/config/fastdds_profile.xml"
export ROS_AUTOMATIC_DISCOVERY_RANGE=LOCALHOST
export RMW_IMPLEMENTATION=rmw_fastrtps_cpp
export FLASHOCC_REQUIRE_ROS=1   # ROS message tests must run here, not skip
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
echo "[test] pytest"
exec "$VENV/bin/python" -m pytest -q -ra --durations=15 "$@"
