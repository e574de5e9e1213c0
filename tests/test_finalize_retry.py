"""Finalize retried after any point of a first attempt, as Dataflow retries a failed bundle: the
output ends complete, byte-identical to a finalize that ran once, and verified; the earlier run's
shards this run did not write again are gone, with their manifest parts, even when the first attempt
died halfway through removing them."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from pipeline.output_files import manifest_parts
from pipeline.verify import verify_output
from schemas.layout import LEASE
from tests.helpers import PAPER_PLAN, coco_captions, coco_source, fill_store, run_build, write_config
from transforms import finalize

CAPTURED: dict = {}
OPERATIONS = ("write_bytes_atomic", "delete_paths", "delete_tree")  # finalize's writes and deletions


class Killed(Exception):
    """The first attempt's worker dying."""


def _capture(self, _, shards, read, rejects, translation, missing=0):
    """Stands in for _Finalize.process in the build: keeps its inputs, writes nothing."""
    CAPTURED.update(config=self.config, run_id=self.run_id, inputs={
        "shards": list(shards), "read": dict(read), "rejects": list(rejects), "translation": translation})
    yield from ()


@pytest.fixture(scope="module")
def before_finalize(tmp_path_factory) -> Path:
    """An output where an earlier build wrote 4-image shards, and a new build (50-image shards)
    wrote its shards, manifest parts and rejects but has not finalized; CAPTURED holds its inputs."""
    tmp = tmp_path_factory.mktemp("retry")
    fill_store(tmp / "store", [a["caption"] for a in coco_captions()["annotations"]],
               PAPER_PLAN["translation_languages"])
    for shard_size in (4, 50):
        config = write_config(tmp, [coco_source()], {**PAPER_PLAN, "eval_fraction": 0.2, "shard_size": shard_size})
        if shard_size == 50:
            with pytest.MonkeyPatch.context() as patch:
                patch.setattr(finalize._Finalize, "process", _capture)
                run_build(config)
        else:
            run_build(config)
    assert CAPTURED, "the build's finalize did not run in this process"
    snapshot = tmp / "before-finalize"
    shutil.copytree(tmp / "out", snapshot)
    return snapshot


def _restore(snapshot: Path) -> Path:
    """The output as the build left it, holding the run's lease again."""
    out = Path(CAPTURED["config"].output)
    shutil.rmtree(out)
    shutil.copytree(snapshot, out)
    (out / LEASE).write_text(json.dumps({"run_id": CAPTURED["run_id"], "command": "build"}))
    return out


def _attempt(monkeypatch, crash_at: int = 0) -> int:
    """One finalize call; with `crash_at`, the worker dies right after that write or deletion (a
    deletion of several files dies halfway through them). Returns the operations it did."""
    done = 0

    def counted(name: str, real):
        def operation(*args):
            nonlocal done
            done += 1
            if done == crash_at and name == "delete_paths" and len(args[0]) > 1:
                real(args[0][: len(args[0]) // 2])
                raise Killed(f"halfway through {name}")
            real(*args)
            if done == crash_at:
                raise Killed(f"after {name}")
        return operation

    with monkeypatch.context() as patch:
        for name in OPERATIONS:
            patch.setattr(finalize, name, counted(name, getattr(finalize, name)))
        try:
            list(finalize._Finalize(CAPTURED["config"], CAPTURED["run_id"]).process(None, **CAPTURED["inputs"]))
        except Killed:
            pass
    return done


def _files(out: Path) -> dict[str, bytes]:
    return {p.relative_to(out).as_posix(): p.read_bytes() for p in sorted(out.rglob("*"))
            if p.is_file() and p.name != LEASE}


def test_a_finalize_retried_after_any_point_gives_the_same_complete_output(before_finalize, monkeypatch):
    out = _restore(before_finalize)
    stale = {shard for shard in manifest_parts(str(out)) if int(shard[-10:-4]) >= 2}  # the 4-image shards
    assert len(stale) > 10
    operations = _attempt(monkeypatch)
    expected = _files(out)
    (out / LEASE).unlink()
    assert verify_output(str(out)) == []
    assert not stale & set(manifest_parts(str(out))) and not any((out / shard).exists() for shard in stale)
    assert yaml.safe_load(expected["config.yaml"])["plan"]["shard_size"] == 50
    assert operations >= 7  # superseded.json, 2 indexes, stats, config, the removal, _SUCCESS, the run folders

    for crash_at in range(1, operations + 2):  # the last: a first attempt that completed
        out = _restore(before_finalize)
        _attempt(monkeypatch, crash_at)
        _attempt(monkeypatch)
        assert _files(out) == expected, f"retried after operation {crash_at}"
        assert not (out / "_runs").exists()
        (out / LEASE).unlink()
        assert verify_output(str(out)) == [], f"retried after operation {crash_at}"
