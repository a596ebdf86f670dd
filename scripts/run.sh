#!/usr/bin/env bash
# Run LEG-Invoicing (the embedded demo when there is no config.yaml). Arguments go to app.py.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/system-deps.sh runtime
bash scripts/venv.sh requirements.txt
exec .venv/bin/python app.py "$@"
