"""Bad inputs from all three source kinds are each rejected with their reason and counted."""
from __future__ import annotations

import io
import json
import tarfile
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.output_files import iter_rejects
from pipeline.verify import iter_tar_samples, verify_output
from tests.helpers import COCO_SAMPLE, assert_sorted_parts, copy_images, require_coco_sample, run_build, write_config

GOOD = ["000000000139.jpg", "000000000802.jpg", "000000011813.jpg"]
CAPTION = "A man rides a bicycle down a busy city street."


def make_coco(root: Path) -> None:
    images = root / "images"
    copy_images(GOOD, images)
    real = (COCO_SAMPLE / "images" / GOOD[0]).read_bytes()
    (images / "truncated.jpg").write_bytes(real[: len(real) // 2])
    (images / "not-an-image.jpg").write_bytes(b"this is a text file, not a JPEG\n" * 10)
    entries = [(1, GOOD[0]), (2, GOOD[1]), (3, "truncated.jpg"), (4, "not-an-image.jpg"), (5, "missing.jpg")]
    annotations = [
        (1, CAPTION), (1, ""), (1, "x" * 10_000), (1, "Too short."),
        (2, "A\x00 woman\u200b holds an \t umbrella   in the rain."),
        (3, CAPTION), (4, CAPTION), (5, CAPTION), (99, CAPTION),
    ]
    (root / "captions.json").write_text(json.dumps({
        "images": [{"id": i, "file_name": f} for i, f in entries],
        "annotations": [{"id": n, "image_id": i, "caption": c} for n, (i, c) in enumerate(annotations)],
    }))


def make_webdataset(path: Path) -> None:
    real = (COCO_SAMPLE / "images" / GOOD[2]).read_bytes()
    members = [("a.jpg", real), ("a.txt", CAPTION.encode()),
               ("b.jpg", real), ("b.txt", b"\xff\xfe not UTF-8 \xc3\x28 at all, long enough though"),
               ("c.txt", CAPTION.encode())]  # c has no image
    with tarfile.open(path, "w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def make_parquet(path: Path) -> None:
    real = (COCO_SAMPLE / "images" / "000000012280.jpg").read_bytes()  # not a copy of a COCO entry's image
    pq.write_table(pa.table({"id": ["p1", "p2"], "text": [[CAPTION, CAPTION + " Again."], [CAPTION]],
                             "jpg": [real, b"GIF89a garbage"]}), path)


def test_each_bad_input_is_rejected_with_its_reason_and_counted(tmp_path):
    require_coco_sample()
    make_coco(tmp_path / "coco")
    (tmp_path / "wds").mkdir()
    make_webdataset(tmp_path / "wds" / "00000.tar")
    make_parquet(tmp_path / "rows.parquet")
    sources = [
        {"name": "coco", "type": "coco", "captions": str(tmp_path / "coco" / "captions.json"),
         "images": str(tmp_path / "coco" / "images")},
        {"name": "wds", "type": "webdataset", "urls": str(tmp_path / "wds" / "*.tar")},
        {"name": "pq", "type": "parquet", "files": str(tmp_path / "rows.parquet"), "id_column": "id",
         "caption_column": "text", "image_column": "jpg"},
    ]
    stats = run_build(write_config(tmp_path, sources), True, "--records_per_part=2")  # an empty store
    out = tmp_path / "out"
    rejects = list(iter_rejects(str(out)))
    by_key = {(r["source"], r["key"]): r["reason"] for r in rejects}
    assert by_key == {
        ("coco", "annotation-8"): "unknown_image_id",
        ("coco", "coco_1#c1"): "caption_empty",
        ("coco", "coco_1#c2"): "caption_too_long",
        ("coco", "coco_1#c3"): "caption_too_short",
        ("coco", "coco_3"): "image_undecodable",
        ("coco", "coco_4"): "image_undecodable",
        ("coco", "coco_5"): "image_missing",
        ("wds", "wds_00000_tar_b_" + by_key_suffix(rejects, "wds_00000_tar_b_", "caption_not_utf8")):
            "caption_not_utf8",
        ("wds", "wds_00000_tar_b_" + by_key_suffix(rejects, "wds_00000_tar_b_", "no_valid_caption")):
            "no_valid_caption",
        ("wds", "wds_00000_tar_c_" + by_key_suffix(rejects, "wds_00000_tar_c_", "image_missing")):
            "image_missing",
        ("pq", "pq_p2"): "image_undecodable",
    }
    # Accounting: 5 + 3 + 2 images read; coco_1, coco_2, wds a, pq p1 written.
    assert stats["images"]["read"] == 10 and stats["images"]["written"] == 4
    assert stats["images"]["rejected"] == {"image_missing": 2, "image_undecodable": 3, "no_valid_caption": 1}
    assert stats["captions"]["read"] == 9 + 3 + 3
    assert stats["captions"]["rejected"] == {
        "caption_empty": 1, "caption_not_utf8": 1, "caption_too_long": 1, "caption_too_short": 1,
        "unknown_image_id": 1, "image:image_missing": 2, "image:image_undecodable": 3}
    for level in ("images", "captions"):
        assert stats[level]["balanced"]
        for source in ("coco", "wds", "pq"):
            assert stats["sources"][source][level]["balanced"], (source, level)
    # The control characters were cleaned, not a reason to reject.
    samples = {k: json.loads(m["json"]) for t in sorted((out / "train").glob("*.tar"))
               for k, m in iter_tar_samples(t.read_bytes())}
    woman = [a["target"] for a in samples["coco_2"]["annotations"] if a["task"] == "caption"]
    assert woman == ["A woman holds an umbrella in the rain."]
    assert Counter(s["source"] for s in samples.values()) == {"coco": 2, "wds": 1, "pq": 1}
    assert verify_output(str(out)) == []
    assert_sorted_parts(out / "rejects", 2, ("source", "key", "level", "reason"), min_parts=5)


def by_key_suffix(rejects: list[dict], prefix: str, reason: str) -> str:
    """Keys of tar members get a hash suffix (the id had a '/' and '.'); find it by reason."""
    (key,) = [r["key"] for r in rejects if r["key"].startswith(prefix) and r["reason"] == reason]
    return key[len(prefix):]
