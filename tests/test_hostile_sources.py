"""Hostile inputs on the sources side, each a real `florenz-data build` in its own process on a small
real input (real COCO images):

- files outside the input: COCO file_names and Parquet paths with `..` or absolute paths, symlinks out
  of the image folder -> counted `image_outside_root` rejections, the secret file in no shard, unless
  the source sets allow_outside_root;
- one bad input aborts: truncated, empty, gzip-compressed tars, a tar's .json that is a list, COCO
  entries with missing keys or null captions, a Parquet file without a configured column, COCO JSON
  that is not JSON or lacks "images", a damaged store part -> counted rejections for bad records and
  bad tars among many, one clear error naming the file for a file that is unusable as a whole;
- smaller: globs matching nothing, null Parquet ids, a repeated COCO image entry, captions 0 / "",
  member names with dots, a store path with brackets, EXIF-rotated images.
"""
from __future__ import annotations

import gzip
import io
import json
import tarfile
import uuid
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml
from PIL import Image

from pipeline.output_files import read_manifest
from pipeline.verify import iter_tar_samples
from tests.helpers import COCO_SAMPLE, copy_images, fill_store, require_coco_sample, store_part_files, \
    write_config
from tests.hostile import assert_balanced, expect, read_stats, rejects, run_cli

# Distinct real images: the build keeps one copy of identical bytes (duplicate_image), so no two
# records of a case share one.
IMAGES = sorted(p.name for p in (COCO_SAMPLE / "images").glob("*.jpg"))
CAPTION = "A man rides a bicycle down a busy city street."
CAPTION2 = "Two dogs play with a red ball on the green grass."


@pytest.fixture(autouse=True)
def _sample():
    require_coco_sample()


def image_bytes(i: int = 0) -> bytes:
    return (COCO_SAMPLE / "images" / IMAGES[i]).read_bytes()


def build(config: Path, succeed: bool = True):
    result = run_cli("build", config, "--allow-missing-translations")
    if succeed:  # say why, before anything reads the output
        assert result.returncode == 0, f"exit {result.returncode}\n{result.stderr[-4000:]}"
    return result


def reasons_by_key(out: Path) -> dict[tuple[str, str], str]:
    return {(r["source"], r["key"]): r["reason"] for r in rejects(out)}


def samples(out: Path) -> dict[str, dict]:
    """key -> sample JSON, over every shard of both splits."""
    found = {}
    for tar_path in sorted(out.glob("*/*.tar")):
        for key, members in iter_tar_samples(tar_path.read_bytes()):
            found[key] = json.loads(members["json"])
    return found


def caption_count(sample: dict) -> int:
    return sum(1 for a in sample["annotations"] if a["task"] == "caption" and a["lang"] == "en")


def write_tar(path: Path, members: list[tuple[str, bytes]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in members:
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    path.write_bytes(buffer.getvalue())
    return buffer.getvalue()


def coco_json(path: Path, images: list, annotations: list) -> None:
    path.write_text(json.dumps({"images": images, "annotations": annotations}))


# -- A. files outside the input ----------------------------------------------------------------------
def test_image_paths_leading_out_of_the_source_root_are_rejected_and_never_read(tmp_path):
    secret = f"FLORENZ-SECRET-{uuid.uuid4().hex}"
    outside = tmp_path / "outside"
    outside.mkdir()
    # A real JPEG (it decodes: without confinement it would be written) that carries the secret.
    (outside / "secret.jpg").write_bytes(image_bytes(3) + secret.encode())
    copy_images([IMAGES[2]], outside)  # a harmless image outside, for the allow_outside_root source

    coco = tmp_path / "coco"
    copy_images([IMAGES[0], IMAGES[1], IMAGES[4], IMAGES[5]], coco / "images")
    (coco / "images" / "sub").mkdir()
    (coco / "images" / "link.jpg").symlink_to(outside / "secret.jpg")  # a symlink out of the folder
    (coco / "images" / "inner.jpg").symlink_to(IMAGES[1])  # a symlink inside it: fine
    entries = [(1, IMAGES[0]), (2, "../../outside/secret.jpg"), (3, str(outside / "secret.jpg")),
               (4, "/etc/passwd"), (5, "link.jpg"), (6, "inner.jpg"), (7, "sub/../" + IMAGES[4])]
    coco_json(coco / "captions.json", [{"id": i, "file_name": f} for i, f in entries],
              [{"id": i, "image_id": i, "caption": CAPTION} for i, _ in entries])

    # Parquet paths with image_root, and without one (the Parquet file's folder is the root).
    pq.write_table(pa.table({"id": ["p1", "p2", "p3"], "caption": [CAPTION] * 3,
                             "path": [IMAGES[5], str(outside / "secret.jpg"), "../../outside/secret.jpg"]}),
                   tmp_path / "rooted.parquet")
    pqdir = tmp_path / "pqdir"
    copy_images([IMAGES[6]], pqdir / "images")
    pq.write_table(pa.table({"id": ["q1", "q2", "q3"], "caption": [CAPTION] * 3,
                             "path": [f"images/{IMAGES[6]}", "../outside/secret.jpg", str(outside / "secret.jpg")]}),
                   pqdir / "rows.parquet")

    # allow_outside_root: the same kind of path is read when the source says so.
    (tmp_path / "open" / "images").mkdir(parents=True)
    coco_json(tmp_path / "open" / "captions.json", [{"id": 1, "file_name": f"../../outside/{IMAGES[2]}"}],
              [{"id": 1, "image_id": 1, "caption": CAPTION}])

    sources = [
        {"name": "coco", "type": "coco", "captions": str(coco / "captions.json"), "images": str(coco / "images")},
        {"name": "pq-rooted", "type": "parquet", "files": str(tmp_path / "rooted.parquet"), "id_column": "id",
         "image_path_column": "path", "image_root": str(coco / "images")},
        {"name": "pq-unrooted", "type": "parquet", "files": str(pqdir / "rows.parquet"), "id_column": "id",
         "image_path_column": "path"},
        {"name": "open", "type": "coco", "captions": str(tmp_path / "open" / "captions.json"),
         "images": str(tmp_path / "open" / "images"), "allow_outside_root": True},
    ]
    result = build(write_config(tmp_path, sources))
    out = tmp_path / "out"
    found = reasons_by_key(out)
    written = set(samples(out))
    stats = read_stats(out)
    assert_balanced(stats)
    assert written == {"coco_1", "coco_6", "coco_7", "pq-rooted_p1", "pq-unrooted_q1", "open_1"}
    scan = dict(secrets=[secret], scan=[out])

    assert found[("coco", "coco_2")] == found[("coco", "coco_4")] == "image_outside_root"  # `..`, /etc/passwd
    expect(result, "counted_rejection", "files outside the input", **scan)
    assert found[("coco", "coco_3")] == "image_outside_root"  # an absolute file_name
    expect(result, "counted_rejection", "files outside the input", **scan)
    assert found[("coco", "coco_5")] == "image_outside_root"  # a symlink leading out of the folder
    expect(result, "counted_rejection", "files outside the input", **scan)
    assert found[("pq-rooted", "pq-rooted_p2")] == found[("pq-rooted", "pq-rooted_p3")] == "image_outside_root"
    expect(result, "counted_rejection", "files outside the input", **scan)
    assert found[("pq-unrooted", "pq-unrooted_q2")] == found[("pq-unrooted", "pq-unrooted_q3")] \
        == "image_outside_root"
    expect(result, "counted_rejection", "files outside the input", **scan)
    assert stats["sources"]["coco"]["images"]["rejected"] == {"image_outside_root": 4}
    assert stats["sources"]["open"]["images"]["written"] == 1  # allowed by the source: read and written


# -- B and C: bad records and bad tars among many are counted -------------------------------------------
def make_tars(folder: Path) -> None:
    """The WebDataset source's tars: good, cut short, empty, gzip-compressed (two names), dotted names."""
    folder.mkdir()
    cap = CAPTION.encode()
    write_tar(folder / "good.tar", [("a.jpg", image_bytes(0)), ("a.txt", cap)])
    full = write_tar(folder / "cut.tar", [("a.jpg", image_bytes(1)), ("a.txt", cap), ("b.jpg", image_bytes(2)),
                                          ("b.txt", cap), ("c.jpg", image_bytes(3)), ("c.txt", cap)])
    c_data = full.index(image_bytes(3))
    (folder / "cut.tar").write_bytes(full[: c_data + 1000])  # cut inside c.jpg's data
    (folder / "empty.tar").write_bytes(b"")
    for name, image in (("zipped.tar.gz", 4), ("zipped-named.tar", 5)):
        plain = write_tar(folder / name, [("d.jpg", image_bytes(image)), ("d.txt", cap)])
        (folder / name).write_bytes(gzip.compress(plain))
    write_tar(folder / "dots.tar", [("x.y.jpg", image_bytes(6)), ("x.y.txt", cap)])


def test_bad_records_and_bad_tars_among_many_are_counted_not_fatal(tmp_path):
    make_tars(tmp_path / "wds")
    (tmp_path / "wdsj").mkdir()
    write_tar(tmp_path / "wdsj" / "meta.tar", [("f.jpg", image_bytes(7)), ("f.json", b'["a JSON list"]'),
                                              ("g.jpg", image_bytes(8)), ("g.json", json.dumps({"caption": CAPTION}).encode())])
    coco = tmp_path / "coco"
    copy_images(IMAGES[9:13], coco / "images")
    coco_json(coco / "captions.json",
              [{"id": 1, "file_name": IMAGES[9]}, {"file_name": IMAGES[10]}, {"id": 3},
               {"id": 1, "file_name": IMAGES[11]}, {"id": 5, "file_name": IMAGES[12]}],
              [{"id": 10, "image_id": 1, "caption": CAPTION}, {"id": 11, "image_id": 1, "caption": CAPTION2},
               {"id": 12, "caption": CAPTION}, {"id": 13, "image_id": 5, "caption": None},
               {"id": 14, "image_id": 5, "caption": CAPTION}, {"id": 15, "image_id": 5},
               {"id": 16, "image_id": 3, "caption": CAPTION}])
    (tmp_path / "pq").mkdir()
    pq.write_table(pa.table({"id": [None, "n1", None, "n2", "n3"], "caption": [CAPTION, "", CAPTION, CAPTION, None],
                             "jpg": [image_bytes(i) for i in range(13, 18)]}), tmp_path / "pq" / "a.parquet")
    pq.write_table(pa.table({"id": ["i1"], "caption": pa.array([0], pa.int64()), "jpg": [image_bytes(18)]}),
                   tmp_path / "pq" / "b.parquet")
    sources = [
        {"name": "wds", "type": "webdataset", "urls": str(tmp_path / "wds" / "*.tar*")},
        {"name": "wdsj", "type": "webdataset", "urls": str(tmp_path / "wdsj" / "*.tar"), "caption": "json:caption"},
        {"name": "coco", "type": "coco", "captions": str(coco / "captions.json"), "images": str(coco / "images")},
        {"name": "pq", "type": "parquet", "files": str(tmp_path / "pq" / "*.parquet"), "id_column": "id",
         "image_column": "jpg"},
    ]
    result = build(write_config(tmp_path, sources))
    out = tmp_path / "out"
    stats = read_stats(out)
    assert_balanced(stats)
    all_rejects = rejects(out)
    written = samples(out)
    by_reason: dict[tuple[str, str], list[dict]] = {}
    for r in all_rejects:
        by_reason.setdefault((r["source"], r["reason"]), []).append(r)
    wds_written = Counter(s["source_id"].split("/")[0] for s in written.values() if s["source"] == "wds")

    # A truncated tar: the records before the break are kept, the break is one counted rejection.
    (cut,) = by_reason[("wds", "tar_truncated")]
    assert "cut.tar at byte" in cut["detail"]
    assert wds_written["cut.tar"] == 2 and len(by_reason[("wds", "image_unreadable")]) == 1  # c.jpg was cut
    expect(result, "counted_rejection", "one bad input aborts")
    # An empty tar: counted, the other tars read.
    (empty,) = by_reason[("wds", "tar_empty")]
    assert "empty.tar" in empty["detail"]
    expect(result, "counted_rejection", "one bad input aborts")
    # A gzip-compressed tar, named .tar.gz or .tar: read.
    assert wds_written["zipped.tar.gz"] == 1 and wds_written["zipped-named.tar"] == 1
    assert wds_written["good.tar"] == 1
    expect(result, "handled", "one bad input aborts")
    # A tar's .json member that is a list: that record rejected, its neighbour written.
    (meta,) = by_reason[("wdsj", "metadata_unreadable")]
    assert "list" in meta["detail"]
    assert [s["source_id"] for s in written.values() if s["source"] == "wdsj"] == ["meta.tar/g"]
    expect(result, "counted_rejection", "one bad input aborts")
    # COCO entries and annotations with missing keys or a null caption: counted, named in the detail.
    malformed = {r["key"]: r["detail"] for r in by_reason[("coco", "record_malformed")]}
    assert "no 'id'" in malformed["coco_images-index-1"]
    assert "no 'file_name'" in malformed["coco_3"]  # its caption (annotation 16) goes with it
    assert "no 'image_id'" in malformed["annotation-12"]
    assert "'caption' is null" in malformed["annotation-13"] and "no 'caption'" in malformed["annotation-15"]
    assert caption_count(written["coco_5"]) == 1
    expect(result, "counted_rejection", "one bad input aborts")

    # C: a repeated COCO image entry: rejected once; the captions of id 1 counted (and written) once.
    (repeat,) = by_reason[("coco", "duplicate_image_entry")]
    assert "images[3] repeats id 1" in repeat["detail"]
    assert caption_count(written["coco_1"]) == 2
    assert stats["sources"]["coco"]["captions"]["read"] == 7 and stats["sources"]["coco"]["images"]["read"] == 5
    expect(result, "counted_rejection", "smaller")
    # C: null Parquet ids: each rejected, none written as "None".
    nulls = by_reason[("pq", "record_malformed")]
    assert len(nulls) == 2 and all("id_column 'id' is null" in r["detail"] for r in nulls)
    assert not any(s["source_id"] == "None" for s in written.values())
    expect(result, "counted_rejection", "smaller")
    # C: captions "" and 0 in Parquet are read and rejected (a null caption is no caption).
    pq_captions = stats["sources"]["pq"]["captions"]
    assert pq_captions["read"] == 5  # a.parquet: 4 rows with a caption (one of them ""), b.parquet: 0
    assert pq_captions["rejected"].get("caption_empty") == 1 and pq_captions["rejected"].get("caption_not_text") == 1
    assert {s["source_id"] for s in written.values() if s["source"] == "pq"} == {"n2"}
    expect(result, "counted_rejection", "smaller")
    # C: member names with dots (x.y.jpg + x.y.txt: key 'x', extension 'y.jpg'): counted, not lost.
    dots = by_reason[("wds", "member_unused")]
    assert sorted(r["level"] for r in dots) == ["caption", "image"]
    assert all("dots.tar: member x.y." in r["detail"] for r in dots)
    expect(result, "counted_rejection", "smaller")


# -- B and C: a file unusable as a whole is one clear error naming it ---------------------------------
def _coco_with(tmp_path: Path, text: str) -> list[dict]:
    copy_images(IMAGES[:1], tmp_path / "images")
    (tmp_path / "captions.json").write_text(text)
    return [{"name": "coco", "type": "coco", "captions": str(tmp_path / "captions.json"),
             "images": str(tmp_path / "images")}]


def _parquet_without_column(tmp_path: Path) -> list[dict]:
    pq.write_table(pa.table({"id": ["p1"], "text": [CAPTION], "jpg": [image_bytes(0)]}), tmp_path / "rows.parquet")
    return [{"name": "pq", "type": "parquet", "files": str(tmp_path / "rows.parquet"), "id_column": "id",
             "caption_column": "caption", "image_column": "jpg"}]


ERRORS = {
    # case: (finding, make sources, what the message must mention)
    "coco_not_json": ("one bad input aborts", lambda t: _coco_with(t, '{"images": [ this is not JSON'),
                      ["captions.json", "not valid JSON"]),
    "coco_without_images": ("one bad input aborts", lambda t: _coco_with(t, json.dumps({"annotations": []})),
                            ["captions.json", 'no "images" key']),
    "parquet_missing_column": ("one bad input aborts", _parquet_without_column,
                               ["rows.parquet", "caption_column", "'caption'", "'text'"]),
    "coco_captions_missing": ("smaller", lambda t: [
        {"name": "coco", "type": "coco", "captions": str(t / "nothere.json"), "images": str(t / "images")}],
        ["nothere.json", "file not found"]),
    "webdataset_glob_matches_nothing": ("smaller", lambda t: [
        {"name": "wds", "type": "webdataset", "urls": str(t / "shards" / "*.tar")}], ["field urls", "shards/*.tar"]),
    "parquet_glob_matches_nothing": ("smaller", lambda t: [
        {"name": "pq", "type": "parquet", "files": str(t / "in" / "*.parquet"), "image_column": "jpg"}],
        ["field files", "*.parquet"]),
}


@pytest.mark.parametrize("case", sorted(ERRORS))
def test_a_file_unusable_as_a_whole_is_a_clear_error_naming_it(tmp_path, case):
    finding, make, mentions = ERRORS[case]
    result = build(write_config(tmp_path, make(tmp_path)), succeed=False)
    expect(result, "clear_error", finding, mentions=["input error:", *mentions])
    assert not (tmp_path / "out" / "_SUCCESS").exists()


def test_a_damaged_store_part_is_named_with_what_to_do(tmp_path):
    copy_images(IMAGES[:1], tmp_path / "images")
    coco_json(tmp_path / "captions.json", [{"id": 1, "file_name": IMAGES[0]}],
              [{"id": 1, "image_id": 1, "caption": CAPTION}])
    fill_store(tmp_path / "store", [CAPTION], ["de", "fr", "es", "ru", "zh"])
    part = store_part_files(tmp_path / "store")[0]
    part.write_bytes(part.read_bytes()[:-100])  # a partial copy: the footer is gone
    sources = [{"name": "coco", "type": "coco", "captions": str(tmp_path / "captions.json"),
                "images": str(tmp_path / "images")}]
    result = build(write_config(tmp_path, sources), succeed=False)
    expect(result, "clear_error", "one bad input aborts", mentions=["input error:", part.name, "move it out"])


# -- C: handled: a store path with brackets, EXIF-rotated images -------------------------------------
def test_store_path_with_brackets_and_exif_rotation_are_handled(tmp_path, tmp_path_factory):
    coco = tmp_path / "coco"
    copy_images(IMAGES[:1], coco / "images")
    with Image.open(COCO_SAMPLE / "images" / IMAGES[1]) as img:
        width, height = img.size
        exif = Image.Exif()
        exif[0x0112] = 6  # shown turned by 90 degrees
        img.save(coco / "images" / "rotated.jpg", exif=exif.tobytes(), quality=90)
    assert width != height
    coco_json(coco / "captions.json", [{"id": 1, "file_name": IMAGES[0]}, {"id": 2, "file_name": "rotated.jpg"}],
              [{"id": 1, "image_id": 1, "caption": CAPTION}, {"id": 2, "image_id": 2, "caption": CAPTION2}])
    # In a folder of its own: the config's overlap check reads a store path as a glob (a[1] -> a),
    # which would make it overlap the output beside it.
    store = tmp_path_factory.mktemp("bracketed") / "a[1]" / "store"
    fill_store(store, [CAPTION, CAPTION2], ["de", "fr", "es", "ru", "zh"])
    config = write_config(tmp_path, [{"name": "coco", "type": "coco", "captions": str(coco / "captions.json"),
                                      "images": str(coco / "images")}])
    raw = yaml.safe_load(config.read_text())
    raw["store"]["path"] = str(store)
    config.write_text(yaml.safe_dump(raw))
    result = build(config)
    out = tmp_path / "out"
    stats = read_stats(out)
    assert_balanced(stats)
    translation = stats["translation"]
    assert translation["requested"] == 10 and translation.get("cache_hits_accepted") == 10, translation
    assert all(not s["missing_translation"] for s in stats["splits"].values())
    expect(result, "handled", "smaller")
    rotated = samples(out)["coco_2"]
    assert (rotated["width"], rotated["height"]) == (height, width)
    manifest = read_manifest(str(out)).to_pylist()
    (row,) = [r for r in manifest if r["key"] == "coco_2"]
    assert (row["width"], row["height"]) == (height, width)
    expect(result, "handled", "smaller")
