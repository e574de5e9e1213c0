#!/usr/bin/env bash
# Build the project's venv (.venv) from nothing, or bring it up to date with setup.py.
# Idempotent: a stamp holding setup.py's hash skips the install when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [[ ! -x .venv/bin/python ]]; then
  echo "[setup] creating .venv with $($PYTHON --version)"
  "$PYTHON" -m venv .venv
fi
stamp=".venv/.florenz-setup-$(sha256sum setup.py | cut -c1-16)"
if [[ ! -f "$stamp" ]]; then
  echo "[setup] installing the project and its pipeline + dev dependencies"
  .venv/bin/python -m pip install --quiet --upgrade pip
  .venv/bin/python -m pip install --quiet -e ".[pipeline,train,gcp,aws,dev]"
  rm -f .venv/.florenz-setup-*
  touch "$stamp"
fi
