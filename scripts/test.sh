#!/usr/bin/env bash
# README command 2: set up (idempotent) and run the checks: ruff, then the pytest suite.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
bash scripts/setup_env.sh
VENV=${D2SSL_VENV:-$ROOT/.venv}
"$VENV/bin/ruff" check d2ssl tools tests configs benchmarks
"$VENV/bin/python" -m pytest -q -p no:cacheprovider "$@"
