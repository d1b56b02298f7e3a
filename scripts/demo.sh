#!/usr/bin/env bash
# Install, then optimize a method on gsm8k_seed with the embedded model (the demo preset, ~10 min on 2 cores).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec .venv/bin/auto-evol optimize --config experiments/demo.toml "$@"
