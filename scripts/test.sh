#!/usr/bin/env bash
# Install, then run the whole test suite (it includes one run on the real embedded model).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec .venv/bin/python -m pytest -q "$@"
