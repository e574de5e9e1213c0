"""`florenz-data build` end to end: byte-identical outputs across runs and worker counts, and a run
killed midway leaves no partial file and, re-run, the same result."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from pipeline.verify import verify_output
from tests.helpers import PAPER_PLAN, coco_captions, coco_source, fill_store, write_config

CLI = str(Path(sys.executable).with_name("florenz-data"))
COMPARED = ("manifest.parquet", "train.index.json", "eval.index.json", "stats.json", "rejects.jsonl")


def make_run(tmp: Path, name: str, shard_size: int = 8) -> Path:
    """A config whose output is tmp/name/out, reading a shared store."""
    root = tmp / name
    root.mkdir()
    store = tmp / "store"
    if not store.exists():
        fill_store(store, [a["caption"] for a in coco_captions()["annotations"]],
                   PAPER_PLAN["translation_languages"])
    config = write_config(root, [coco_source()], {**PAPER_PLAN, "eval_fraction": 0.1, "shard_size": shard_size})
    text = config.read_text().replace(str(root / "store"), str(store))
    config.write_text(text)
    return config


def build(config: Path, *beam_args: str) -> None:
    subprocess.run([CLI, "build", str(config), *beam_args], check=True, capture_output=True, timeout=300)


def output_bytes(out: Path) -> dict[str, bytes]:
    files = {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.glob("*/*.tar"))}
    files.update({name: (out / name).read_bytes() for name in COMPARED})
    return files


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> tuple[Path, dict[str, bytes]]:
    tmp = tmp_path_factory.mktemp("determinism")
    config = make_run(tmp, "reference")
    build(config)
    return tmp, output_bytes(config.parent / "out")


def test_two_runs_are_byte_identical(reference):
    tmp, expected = reference
    config = make_run(tmp, "again")
    build(config)
    assert output_bytes(config.parent / "out") == expected
    assert len([k for k in expected if k.endswith(".tar")]) > 2


def test_two_worker_processes_give_the_same_bytes(reference):
    tmp, expected = reference
    config = make_run(tmp, "workers")
    build(config, "--direct_num_workers", "2", "--direct_running_mode", "multi_processing")
    assert output_bytes(config.parent / "out") == expected


def test_killed_run_leaves_no_partial_file_and_rerun_matches(tmp_path):
    reference_config = make_run(tmp_path, "reference", shard_size=1)
    build(reference_config)
    expected = output_bytes(reference_config.parent / "out")

    config = make_run(tmp_path, "killed", shard_size=1)
    out = config.parent / "out"
    proc = subprocess.Popen([CLI, "build", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.monotonic() + 120
    while not list(out.glob("train/*.tar")) and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    written = list(out.glob("*/*.tar"))
    assert written, "the run ended before any shard was written; nothing was killed midway"
    assert not (out / "_SUCCESS").exists()
    for tar_path in written:  # whatever is in place is whole: temporary names are elsewhere
        with tarfile.open(tar_path) as tar:
            assert len(tar.getnames()) == 2
    assert verify_output(str(out)) != []

    build(config)
    assert output_bytes(out) == expected
    assert not (out / "_runs").exists() and not (out / "_lease.json").exists()
    assert verify_output(str(out)) == []
