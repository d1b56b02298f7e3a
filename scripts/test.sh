#!/usr/bin/env bash
# Install, then run the whole test suite (it includes a run on the real embedded model and a real
# browser over the MLflow UI: Debian's chromium is installed when missing and apt-get can).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
if ! command -v chromium >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    echo "installing Debian's chromium for the MLflow UI test" >&2
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null
  else
    echo "note: no chromium here (and no root apt-get), so the browser test is skipped" >&2
  fi
fi
exec .venv/bin/python -m pytest -q "$@"
