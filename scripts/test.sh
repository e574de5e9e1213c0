#!/usr/bin/env bash
# The test suite, after building the venv from nothing if needed. Arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/setup-vllm.sh  # the real vLLM server the translation tests start
exec .venv/bin/python -m pytest -q "$@" tests
