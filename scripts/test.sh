#!/usr/bin/env bash
# Run the whole test suite in .venv/. Arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/system-deps.sh
bash scripts/venv.sh requirements-dev.txt
exec .venv/bin/python -m pytest "$@"
