#!/usr/bin/env bash
# README command 1: the whole pipeline on an embedded default (a synthetic nuScenes-format scene), on a fresh machine.
#   bash scripts/demo.sh [--dataroot /data/nuscenes --version v1.0-mini --scene scene-0061] [--variant ...]
#                        [--checkpoint models/flashocc-r50-M0.pth] [--out reports/demo]
# Sets up .venv if needed, then runs flashocc-demo (see flashocc_ros/tools/demo.py); the report is <out>/report.md.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
bash scripts/setup_env.sh
VENV="${FLASHOCC_VENV:-$ROOT/.venv}"
export AMENT_PREFIX_PATH="$VENV"
export FASTDDS_DEFAULT_PROFILES_FILE="$ROOT/config/fastdds_profile.xml"
export ROS_AUTOMATIC_DISCOVERY_RANGE="${ROS_AUTOMATIC_DISCOVERY_RANGE:-LOCALHOST}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-2}"
exec "$VENV/bin/python" -m flashocc_ros.tools.demo "$@"
