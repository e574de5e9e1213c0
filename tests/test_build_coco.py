"""The build on the real COCO sample: exact annotation counts per split x task x language, no
held-out caption label in train, and `verify` catching tampered outputs."""
from __future__ import annotations

import io
import json
import shutil
import tarfile
from collections import Counter, defaultdict
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from pipeline.output_files import read_manifest
from pipeline.report import write_report
from pipeline.verify import iter_tar_samples, verify_output
from schemas.errors import InputError
from tests.helpers import PAPER_PLAN, coco_captions, coco_source, fill_store, run_build, write_config
from tests.hostile import run_cli
from transforms.finalize import clear_run_markers

EVAL_IDS = [139, 802, 11813, 12280, 18575, 19221, 20247, 22192, 22892, 30213]
ZH_MISSING = 3  # texts deliberately left untranslated into zh


def expected_counts() -> dict[str, Counter]:
    """Counts derived straight from captions.json, independently of the pipeline's code."""
    data = coco_captions()
    captions = defaultdict(list)
    for ann in data["annotations"]:
        text = " ".join(ann["caption"].split())
        if len(text) > 25 and text not in captions[ann["image_id"]]:
            captions[ann["image_id"]].append(text)
    no_zh = set(sorted({t for texts in captions.values() for t in texts})[:ZH_MISSING])
    counts = {"train": Counter(), "eval": Counter()}
    for image_id, texts in captions.items():
        split = "eval" if image_id in EVAL_IDS else "train"
        langs = PAPER_PLAN["languages"] if split == "eval" else PAPER_PLAN["caption_languages"]
        for text in texts:
            for lang in langs:
                if not (lang == "zh" and text in no_zh):
                    counts[split][f"caption-{lang}"] += 1
            for lang in PAPER_PLAN["translation_languages"]:
                if not (lang == "zh" and text in no_zh):
                    counts[split][f"translation-{lang}"] += 1
    return counts


@pytest.fixture(scope="module")
def built(tmp_path_factory) -> Path:
    tmp = tmp_path_factory.mktemp("coco")
    texts = [a["caption"] for a in coco_captions()["annotations"]]
    from schemas.records import normalize_text
    ordered = sorted({normalize_text(t) for t in texts if len(normalize_text(t)) > 25})
    fill_store(tmp / "store", texts, PAPER_PLAN["translation_languages"],
               skip={(t, "zh") for t in ordered[:ZH_MISSING]})
    plan = {**PAPER_PLAN, "eval_keys": [f"coco_{i}" for i in EVAL_IDS]}
    run_build(write_config(tmp, [coco_source()], plan), allow_missing=True)
    return tmp / "out"


def shard_annotations(output: Path, split: str):
    for tar_path in sorted((output / split).glob("*.tar")):
        for key, members in iter_tar_samples(tar_path.read_bytes()):
            yield key, members, json.loads(members["json"])


def test_exact_annotation_counts_per_split_task_language(built):
    expected = expected_counts()
    stats = json.loads((built / "stats.json").read_text())
    for split in ("train", "eval"):
        seen = Counter(f"{a['task']}-{a['lang']}" for _, _, s in shard_annotations(built, split)
                       for a in s["annotations"])
        assert seen == expected[split], split
        assert stats["splits"][split]["annotations"] == dict(expected[split])
    missing_zh = sum(stats["splits"][s]["missing_translation"].get("translation-zh", 0) for s in ("train", "eval"))
    assert missing_zh == ZH_MISSING
    assert stats["images"] == {"read": 100, "written": 100, "rejected": {}, "rejected_total": 0, "balanced": True}
    assert stats["captions"]["read"] == 500
    assert stats["captions"]["written"] + stats["captions"]["rejected_total"] == 500


def test_no_held_out_caption_label_in_train_and_eval_has_all_languages(built):
    train_caption_langs = {a["lang"] for _, _, s in shard_annotations(built, "train")
                           for a in s["annotations"] if a["task"] == "caption"}
    assert train_caption_langs == {"en", "de"}
    eval_caption_langs = {a["lang"] for _, _, s in shard_annotations(built, "eval")
                          for a in s["annotations"] if a["task"] == "caption"}
    assert eval_caption_langs == set(PAPER_PLAN["languages"])
    eval_keys = {k for k, _, _ in shard_annotations(built, "eval")}
    assert eval_keys == {f"coco_{i}" for i in EVAL_IDS}
    assert not eval_keys & {k for k, _, _ in shard_annotations(built, "train")}


def test_shards_hold_original_image_bytes_and_respect_shard_size(built):
    manifest = read_manifest(str(built)).to_pylist()
    assert len(manifest) == 100
    import pyarrow.dataset as ds  # the folder of parts reads as one dataset
    assert ds.dataset(built / "manifest", format="parquet").to_table().sort_by("key").to_pylist() == \
        sorted(manifest, key=lambda r: r["key"])
    originals = {str(img["id"]): img["file_name"] for img in coco_captions()["images"]}
    from tests.helpers import COCO_SAMPLE
    for key, members, sample in list(shard_annotations(built, "train"))[:5]:
        original = (COCO_SAMPLE / "images" / originals[sample["source_id"]]).read_bytes()
        assert members["jpg"] == original
    index = json.loads((built / "train.index.json").read_text())
    assert index["__kind__"] == "wids-shard-index-v1"
    assert all(e["nsamples"] <= PAPER_PLAN["shard_size"] for e in index["shardlist"])
    assert sum(e["nsamples"] for e in index["shardlist"]) == 90
    assert verify_output(str(built), decode_images=True) == []


@pytest.fixture
def copy_of(built, tmp_path) -> Path:
    out = tmp_path / "out"
    shutil.copytree(built, out)
    return out


def _rewrite_member(tar_path: Path, edit) -> None:
    """Rewrite a tar with edit(name, bytes) -> bytes applied to each member."""
    buffer = io.BytesIO()
    with tarfile.open(tar_path) as src, tarfile.open(fileobj=buffer, mode="w") as dst:
        for info in src:
            data = edit(info.name, src.extractfile(info).read())
            info.size = len(data)
            dst.addfile(info, io.BytesIO(data))
    tar_path.write_bytes(buffer.getvalue())


def test_verify_catches_a_flipped_byte(copy_of):
    tar_path = copy_of / "train" / "000000.tar"
    data = bytearray(tar_path.read_bytes())
    data[2000] ^= 0xFF
    tar_path.write_bytes(bytes(data))
    problems = verify_output(str(copy_of))
    assert any("000000.tar" in p and "md5" in p for p in problems)


def test_verify_catches_a_held_out_caption_smuggled_into_train(copy_of):
    tar_path = copy_of / "train" / "000001.tar"
    done = []

    def add_french_caption(name: str, data: bytes) -> bytes:
        if name.endswith(".json") and not done:
            body = json.loads(data)
            body["annotations"].append({"task": "caption", "lang": "fr", "target": "Une photo."})
            done.append(name)
            return json.dumps(body).encode()
        return data

    _rewrite_member(tar_path, add_french_caption)
    # Make the index agree, so only the leak itself is left to find.
    import hashlib
    index_path = copy_of / "train.index.json"
    index = json.loads(index_path.read_text())
    for entry in index["shardlist"]:
        if entry["url"] == "train/000001.tar":
            entry["md5sum"] = hashlib.md5(tar_path.read_bytes()).hexdigest()
            entry["filesize"] = tar_path.stat().st_size
    index_path.write_text(json.dumps(index))
    problems = verify_output(str(copy_of))
    assert any("held-out language(s) ['fr'] in train" in p for p in problems), problems


def test_verify_catches_an_eval_key_moved_to_train_and_stats_that_do_not_add_up(copy_of):
    import pyarrow as pa
    part = copy_of / "manifest" / "eval-000000.parquet"
    table = pq.read_table(part)
    rows = table.to_pylist()
    moved = rows[0]
    moved["split"] = "train"
    pq.write_table(pa.Table.from_pylist(rows, schema=table.schema), part)
    stats = json.loads((copy_of / "stats.json").read_text())
    stats["images"]["read"] += 1
    (copy_of / "stats.json").write_text(json.dumps(stats))
    problems = verify_output(str(copy_of))
    assert any(f"key {moved['key']} is in train but the plan assigns eval" in p for p in problems)
    assert any("images read 101 != written 100" in p for p in problems)


def test_verify_reports_an_incomplete_run(copy_of):
    (copy_of / "_SUCCESS").unlink()
    assert verify_output(str(copy_of)) == ["_SUCCESS is missing (incomplete or killed run?)"]


def test_verify_catches_stale_missing_and_repeated_manifest_parts(copy_of):
    parts = copy_of / "manifest"
    shutil.copy(parts / "train-000000.parquet", parts / "train-000099.parquet")  # a part no index lists
    shutil.copy(parts / "train-000000.parquet", parts / "train-000001.parquet")  # its rows listed twice
    (parts / "train-000002.parquet").unlink()
    (parts / "notes.txt").write_text("not a part")
    problems = verify_output(str(copy_of))
    assert "manifest/notes.txt is not a manifest part" in problems
    assert "manifest/train-000099.parquet names train/000099.tar, which no index lists" in problems
    assert "train/000002.tar has no manifest part in manifest/" in problems
    key = pq.read_table(parts / "train-000000.parquet")["key"][0].as_py()
    assert f"key {key} appears 2 times in the manifest" in problems
    assert any(p.startswith("image content sha256") and f"{key} (train), {key} (train)" in p for p in problems)


def test_an_output_of_the_older_layout_is_refused_saying_to_rebuild_and_a_build_replaces_it(copy_of):
    (copy_of / "rejects.jsonl").write_text("{}\n")
    (problem,) = verify_output(str(copy_of))
    assert problem.startswith(f"{copy_of / 'rejects.jsonl'}: written by an older florenz-data") and "rebuild" in problem
    with pytest.raises(InputError, match="older florenz-data"):
        write_report(str(copy_of))
    result = run_cli("report", copy_of)
    assert result.returncode == 2 and "input error:" in result.stderr and "rebuild" in result.stderr
    assert "Traceback" not in result.output
    assert list((copy_of / "rejects").glob("part-*.jsonl"))
    clear_run_markers(str(copy_of))  # what the next build does first, under its lease
    assert not (copy_of / "rejects.jsonl").exists() and not list((copy_of / "rejects").glob("part-*.jsonl"))
    assert len(list((copy_of / "manifest").glob("*.parquet"))) == len(list(copy_of.glob("*/*.tar")))
