"""Hostile-input cases about outputs and leakage, each a real `florenz-data` run: an output that holds
its own input, two builds into one output at once, stale and foreign leases, files in the output that
no run of ours wrote, the same image under two ids, glob characters in the output path, unwritable
outputs and stores."""
from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import tarfile
import time
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from pipeline.output_files import read_manifest
from pipeline.verify import ManifestKeyChecks, verify_output
from schemas.coverage import CoveragePlan
from tests.helpers import COCO_SAMPLE, PAPER_PLAN, coco_captions, coco_source, fill_store, require_coco_sample, \
    write_config
from tests.hostile import CliResult, _console_script, assert_balanced, expect, read_stats, rejects, run_cli

CAPTION = "A man rides a bicycle down a busy city street."


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    """Every COCO sample caption translated, so builds need no translator."""
    path = tmp_path_factory.mktemp("store") / "store"
    fill_store(path, [a["caption"] for a in coco_captions()["annotations"]] + [CAPTION],
               PAPER_PLAN["translation_languages"])
    return path


def config_with(tmp: Path, sources: list[dict], store: Path, output: Path | None = None, **plan) -> Path:
    path = write_config(tmp, sources, {**PAPER_PLAN, **plan})
    raw = yaml.safe_load(path.read_text())
    raw["store"]["path"] = str(store)
    if output is not None:
        raw["output"] = str(output)
    path.write_text(yaml.safe_dump(raw))
    return path


def small_tars(folder: Path, images: list[str]) -> None:
    """img2dataset-style tars of real COCO images, one sample each."""
    folder.mkdir(parents=True)
    for i, name in enumerate(images):
        with tarfile.open(folder / f"{i:05d}.tar", "w") as tar:
            for member, data in ((f"{i:09d}.jpg", (COCO_SAMPLE / "images" / name).read_bytes()),
                                 (f"{i:09d}.txt", CAPTION.encode())):
                info = tarfile.TarInfo(member)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def coco_images(n: int) -> list[str]:
    return sorted(p.name for p in (require_coco_sample() / "images").glob("*.jpg"))[:n]


def test_an_output_that_holds_its_input_is_refused_and_the_input_survives(tmp_path, store):
    data = tmp_path / "data"
    small_tars(data / "train", coco_images(3))
    before = {p: p.read_bytes() for p in (data / "train").glob("*.tar")}
    source = {"name": "wds", "type": "webdataset", "urls": str(data / "train" / "*.tar")}
    for output in (data, data / "train" / "out"):  # the input inside the output, and the other way round
        result = run_cli("build", config_with(tmp_path, [source], store, output=output))
        expect(result, "refused", "data loss", mentions=["output", "overlaps sources[0].urls"])
    result = run_cli("build", config_with(tmp_path, [source], store, output=store / "out"))
    expect(result, "refused", "data loss", mentions=["overlaps store.path"])
    assert {p: p.read_bytes() for p in (data / "train").glob("*.tar")} == before


def test_only_shards_an_earlier_run_listed_are_removed(tmp_path, store):
    require_coco_sample()
    out = tmp_path / "out"
    config = config_with(tmp_path, [coco_source()], store, output=out, shard_size=4)
    expect(run_cli("build", config), "handled", "data loss")
    many = sorted(p.name for p in (out / "train").glob("*.tar"))
    assert len(many) == 25
    # Files no run of ours listed: a user's own tar with a shard's name pattern, and any other name.
    (out / "train" / "900000.tar").write_bytes(b"mine")
    (out / "train" / "notes.tar").write_bytes(b"mine too")
    victim = tmp_path / "victim.txt"
    victim.write_text("not a shard")
    index = json.loads((out / "train.index.json").read_text())
    index["shardlist"].append({"url": "../../victim.txt", "md5sum": "", "nsamples": 0, "filesize": 0})
    (out / "train.index.json").write_text(json.dumps(index))
    config = config_with(tmp_path, [coco_source()], store, output=out, shard_size=50)
    expect(run_cli("build", config), "handled", "data loss")
    assert sorted(p.name for p in (out / "train").glob("*.tar")) == ["000000.tar", "000001.tar", "900000.tar",
                                                                       "notes.tar"]
    assert victim.read_text() == "not a shard"
    assert (out / "train" / "900000.tar").read_bytes() == b"mine"
    problems = verify_output(str(out))  # the strays are reported, not deleted
    assert problems == ["train/900000.tar is not in train.index.json", "train/notes.tar is not in train.index.json"]


def test_two_builds_into_one_output_at_once_one_wins_the_other_is_refused(tmp_path, store):
    require_coco_sample()
    out = tmp_path / "out"
    configs = []
    for name in ("a", "b"):
        (tmp_path / name).mkdir()
        configs.append(config_with(tmp_path / name, [coco_source()], store, output=out, shard_size=8,
                                   eval_fraction=0.1))
    procs = [subprocess.Popen([*_console_script("florenz-data"), "build", str(c)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for c in configs]
    results = []
    for proc in procs:
        stdout, stderr = proc.communicate(timeout=600)
        results.append((proc.returncode, stdout, stderr))
    assert sorted(rc for rc, _, _ in results) == [0, 2], results
    (_, out_ok, err_ok), (_, out_refused, err_refused) = sorted(results, key=lambda r: r[0])
    expect(CliResult([], 2, out_refused, err_refused), "refused", "data loss", mentions=["refused:", "is in use by run"])
    assert verify_output(str(out)) == []
    assert not (out / "_lease.json").exists()


def write_lease(out: Path, age_s: float, host: str, pid: int, run_id: str = "20260101T000000Z-deadbeef") -> None:
    out.mkdir(parents=True, exist_ok=True)
    lease = out / "_lease.json"
    then = time.time() - age_s
    lease.write_text(json.dumps({"run_id": run_id, "command": "build", "host": host, "pid": pid, "renewed": then}))
    os.utime(lease, (then, then))


def test_stale_leases_are_taken_over_and_a_live_one_refuses(tmp_path, store):
    require_coco_sample()
    import socket

    dead = subprocess.Popen(["true"])
    dead.wait()
    out = tmp_path / "out"
    config = config_with(tmp_path, [coco_source()], store, output=out)
    write_lease(out, 5, "some-other-host", 1)  # alive, elsewhere: refused
    expect(run_cli("build", config), "refused", "data loss", mentions=["20260101T000000Z-deadbeef",
                                                                        "some-other-host"])
    assert not (out / "_SUCCESS").exists() and (out / "_lease.json").exists()
    write_lease(out, 5, socket.gethostname(), dead.pid)  # this host, process gone: taken over
    result = run_cli("build", config)
    expect(result, "handled", "data loss", mentions=["taking over the lease", f"process {dead.pid}"])
    write_lease(out, 3600, "some-other-host", 1)  # not renewed for an hour: taken over
    expect(run_cli("build", config), "handled", "data loss", mentions=["not renewed for"])
    assert verify_output(str(out)) == [] and not (out / "_lease.json").exists()


def test_the_same_image_under_two_ids_is_kept_once_and_never_in_both_splits(tmp_path, store):
    """Two sources listing one dataset, and two ids for one file inside one source."""
    names = coco_images(40)
    captions = coco_captions()
    by_file = {im["file_name"]: im["id"] for im in captions["images"]}
    coco_dir = tmp_path / "coco"
    shutil.copytree(COCO_SAMPLE / "images", coco_dir / "images")
    doubled = {"images": [im for im in captions["images"] if im["file_name"] in names[:20]],
               "annotations": [a for a in captions["annotations"] if a["image_id"] in
                               {by_file[n] for n in names[:20]}]}
    for im in list(doubled["images"])[:5]:  # a second id for the same file in the same source
        doubled["images"].append({"id": im["id"] + 10**9, "file_name": im["file_name"]})
        doubled["annotations"].append({"id": im["id"] + 10**9, "image_id": im["id"] + 10**9, "caption": CAPTION})
    (coco_dir / "captions.json").write_text(json.dumps(doubled))
    table = pa.table({"id": [f"web-{i}" for i in range(40)], "caption": [CAPTION] * 40,
                      "jpg": [(COCO_SAMPLE / "images" / n).read_bytes() for n in names]})
    pq.write_table(table, tmp_path / "web.parquet")
    sources = [{"name": "coco", "type": "coco", "captions": str(coco_dir / "captions.json"),
                "images": str(coco_dir / "images")},
               {"name": "web", "type": "parquet", "files": str(tmp_path / "web.parquet"), "id_column": "id",
                "caption_column": "caption", "image_column": "jpg"}]
    out = tmp_path / "out"
    result = run_cli("build", config_with(tmp_path, sources, store, output=out, eval_fraction=0.5))
    expect(result, "counted_rejection", "leakage by content")
    stats = read_stats(out)
    assert_balanced(stats)
    assert stats["images"]["read"] == 25 + 40 and stats["images"]["written"] == 40
    assert stats["images"]["rejected"] == {"duplicate_image": 25}
    duplicates = [r for r in rejects(out) if r["reason"] == "duplicate_image"]
    assert len(duplicates) == 25 and all("sha256" in r["detail"] for r in duplicates)
    manifest = read_manifest(str(out)).to_pylist()
    assert len({r["sha256"] for r in manifest}) == len(manifest) == 40
    assert {r["split"] for r in manifest} == {"train", "eval"}
    assert verify_output(str(out)) == []


def test_verify_finds_one_image_content_in_train_and_eval():
    plan = CoveragePlan.from_dict({**PAPER_PLAN, "eval_fraction": 0.5})
    sha = "ab" * 32
    split = plan.split_of("x_1", sha)
    other = "eval" if split == "train" else "train"
    rows = [{"key": "x_1", "split": split, "sha256": sha}, {"key": "y_1", "split": other, "sha256": sha}]
    parts = [pa.Table.from_pylist(rows[:1]), pa.Table.from_pylist(rows[1:])]  # the manifest's parts
    checks = ManifestKeyChecks(plan)
    problems = checks.add(parts[0]) + checks.add(parts[1]) + checks.problems(parts)
    assert any("is in 2 samples" in p for p in problems)
    assert any("y_1 is in" in p and "plan assigns" in p for p in problems)
    # One key in two parts, once in eval; a content sharing the first 16 hex digits is another content.
    parts = [pa.Table.from_pylist([{"key": "x_1", "split": "train", "sha256": sha}]),
             pa.Table.from_pylist([{"key": "x_1", "split": "eval", "sha256": "ab" * 8 + "cd" * 24}])]
    checks = ManifestKeyChecks(plan)
    for part in parts:
        checks.add(part)
    assert checks.problems(parts) == ["key x_1 appears 2 times in the manifest", "evaluation key x_1 is in train"]


def test_an_output_path_with_glob_characters_is_rebuilt_and_verified(tmp_path, store):
    require_coco_sample()
    out = tmp_path / "out[1]*?"
    for shard_size in (4, 50):
        expect(run_cli("build", config_with(tmp_path, [coco_source()], store, output=out, shard_size=shard_size)),
               "handled", "smaller")
    assert len(list((out / "train").glob("*.tar"))) == 2
    assert verify_output(str(out)) == []
    result = run_cli("verify", out)
    expect(result, "handled", "smaller", mentions=["OK"])


def test_unwritable_output_and_store_are_found_before_any_work(tmp_path, store):
    require_coco_sample()
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    result = run_cli("build", config_with(tmp_path, [coco_source()], store, output=blocker / "out"))
    expect(result, "clear_error", "failures without their cause", mentions=["output: cannot write to"])
    config = write_config(tmp_path, [coco_source()], PAPER_PLAN,
                          translator={"model": "m", "endpoints": ["http://127.0.0.1:9/v1"]})
    raw = yaml.safe_load(config.read_text())
    raw["store"]["path"] = str(blocker / "store")
    config.write_text(yaml.safe_dump(raw))
    result = run_cli("translate", config)
    expect(result, "clear_error", "failures without their cause", mentions=["store.path: cannot write to"])
    assert not (tmp_path / "out" / "_lease.json").exists()


def test_only_glob_fields_are_cut_at_their_wildcards():
    from schemas.config import RunConfig
    from schemas.errors import ConfigError

    def config(output: str, store: str) -> RunConfig:
        return RunConfig.from_dict({"output": output, "store": {"path": store, "fingerprint": "fp"},
                                    "plan": PAPER_PLAN,
                                    "sources": [{"name": "w", "type": "webdataset", "urls": "/d/x[0-9]/*.tar"}]})

    assert config("/x/out", "/x/a[1]/store").output == "/x/out"  # a store path is a name, not a pattern
    with pytest.raises(ConfigError, match="overlaps store.path"):
        config("/x/a[1]/store/out", "/x/a[1]/store")
    with pytest.raises(ConfigError, match=r"overlaps sources\[0\].urls"):
        config("/d/out", "/s")  # the glob's fixed part is /d


def test_a_shard_a_killed_run_wrote_before_its_manifest_part_is_removed(tmp_path, store):
    """Killed between a shard's tar and its manifest part: the run's intent record still names it."""
    require_coco_sample()
    out = tmp_path / "out"
    config = config_with(tmp_path, [coco_source()], store, output=out, shard_size=50)
    expect(run_cli("build", config), "handled", "data loss")
    (out / "train" / "000007.tar").write_bytes(b"half a run")
    intents = out / "_runs" / "20260101T000000Z-deadbeef" / "intents"
    intents.mkdir(parents=True)
    (intents / "train-000007").write_text("train/000007.tar")
    expect(run_cli("build", config), "handled", "data loss")
    assert not (out / "train" / "000007.tar").exists() and not (out / "_runs").exists()
    assert verify_output(str(out)) == []
