#!/usr/bin/env bash
# Set up the environment when needed, then run the MAE vs MI-MAE demo on the bundled data.
# Usage: bash tools/demo.sh [run_demo.py options]
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
"$ROOT/tools/setup_env.sh"
cd "$ROOT"
exec "$ROOT/.venv/bin/python" tools/run_demo.py "$@"
