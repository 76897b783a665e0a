#!/usr/bin/env bash
set -euo pipefail
echo "demo: not implemented yet"
