"""`florenz-data build` end to end: byte-identical outputs (shards, manifest parts, rejects parts, the
missing-translations report) across runs and worker counts, images staged in the run's folder
included, and a run killed midway leaves no partial file and, re-run, the same result."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest

from pipeline.verify import verify_output
from tests.helpers import (COCO_SAMPLE, PAPER_PLAN, coco_captions, coco_source, fill_store, write_config,
                           write_staged_sources)

CLI = str(Path(sys.executable).with_name("florenz-data"))
COMPARED = ("train.index.json", "eval.index.json", "stats.json")
FOLDERS = ("train", "eval", "manifest", "rejects")
WORKERS = ("--direct_num_workers", "2", "--direct_running_mode", "multi_processing")


def staged_sources(tmp: Path) -> list[dict]:
    """A Parquet source holding images in a column and a .tar.gz (tests/helpers.py), shared by the
    runs: 20 of the sample's images, each made distinct from the COCO source's copy, with its longest
    real caption. Validation stages them in each run's folder; nothing of that may reach the output."""
    captions = coco_captions()
    longest = {}
    for a in captions["annotations"]:
        longest[a["image_id"]] = max(longest.get(a["image_id"], ""), a["caption"], key=len)
    entries = sorted(captions["images"], key=lambda e: e["file_name"])[:20]
    images = [((COCO_SAMPLE / "images" / e["file_name"]).read_bytes() + f"staged copy {i}".encode(), longest[e["id"]])
              for i, e in enumerate(entries)]
    return write_staged_sources(tmp / "staged", images, row_group_size=4)  # the same bytes each time


def make_run(tmp: Path, name: str, shard_size: int = 8, **plan) -> Path:
    """A config whose output is tmp/name/out, reading a shared store and shared sources. Captions
    under 50 characters are rejected, so the rejects spread over many parts."""
    root = tmp / name
    root.mkdir()
    store = tmp / "store"
    if not store.exists():
        fill_store(store, [a["caption"] for a in coco_captions()["annotations"]],
                   PAPER_PLAN["translation_languages"])
    config = write_config(root, [coco_source(), *staged_sources(tmp)],
                          {**PAPER_PLAN, "eval_fraction": 0.1, "shard_size": shard_size, **plan},
                          validation={"min_caption_chars": 50})
    text = config.read_text().replace(str(root / "store"), str(store))
    config.write_text(text)
    return config


def build(config: Path, *beam_args: str, check: bool = True) -> subprocess.CompletedProcess:
    """A CLI build whose rejects and missing-translations reports spread over parts of 5 records."""
    return subprocess.run([CLI, "build", str(config), "--records_per_part=5", *beam_args], check=check,
                          capture_output=True, timeout=300)


def tree_bytes(out: Path, folders: tuple[str, ...], names: tuple[str, ...]) -> dict[str, bytes]:
    """Every file under the folders, and the named files, by relative path."""
    files = {p.relative_to(out).as_posix(): p.read_bytes() for folder in folders
             for p in sorted((out / folder).rglob("*")) if p.is_file()}
    files.update({name: (out / name).read_bytes() for name in names})
    return files


def output_bytes(out: Path) -> dict[str, bytes]:
    return tree_bytes(out, FOLDERS, COMPARED)


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
    assert len([k for k in expected if k.startswith("manifest/")]) == len([k for k in expected if k.endswith(".tar")])
    assert len([k for k in expected if k.startswith("rejects/")]) > 20
    sources = json.loads(expected["stats.json"])["sources"]
    assert sources["cells"]["images"]["written"] > 0 and sources["zipped"]["images"]["written"] > 0  # staged


def test_two_worker_processes_give_the_same_bytes(reference):
    tmp, expected = reference
    config = make_run(tmp, "workers")
    build(config, *WORKERS)
    assert output_bytes(config.parent / "out") == expected


def test_the_missing_translations_report_is_the_same_with_two_workers(tmp_path):
    """A plan needing a language the store lacks: the build stops, listing the texts in parts."""
    reports = []
    for name, workers in (("one", ()), ("two", WORKERS)):
        config = make_run(tmp_path, name, languages=[*PAPER_PLAN["languages"], "it"],
                          translation_languages=[*PAPER_PLAN["translation_languages"], "it"])
        assert build(config, *workers, check=False).returncode == 2
        out = config.parent / "out"
        assert sorted(p.name for p in out.iterdir()) == ["missing_translations", "missing_translations.json"]
        reports.append(tree_bytes(out, ("missing_translations",), ("missing_translations.json",)))
    assert reports[0] == reports[1]
    assert len(reports[0]) > 20  # the texts spread over many parts


def test_killed_run_leaves_no_partial_file_and_rerun_matches(tmp_path):
    reference_config = make_run(tmp_path, "reference", shard_size=1)
    build(reference_config)
    expected = output_bytes(reference_config.parent / "out")

    config = make_run(tmp_path, "killed", shard_size=1)
    out = config.parent / "out"
    proc = subprocess.Popen([CLI, "build", str(config)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    deadline = time.monotonic() + 900  # a loaded machine can take minutes to reach the first shard
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
