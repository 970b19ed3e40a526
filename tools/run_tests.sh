#!/usr/bin/env bash
# Set up the environment when needed, then run the test suite.
# Usage: bash tools/run_tests.sh [pytest options]
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
"$ROOT/tools/setup_env.sh"
cd "$ROOT"
exec "$ROOT/.venv/bin/python" -m pytest tests "$@"
