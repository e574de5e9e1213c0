#!/usr/bin/env bash
# The test suite, after building the venv from nothing if needed. Arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
exec .venv/bin/python -m pytest -q "$@" tests
