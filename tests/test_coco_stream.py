"""The COCO source streams its captions file: a 1 GB COCO-shaped file builds (a real CLI run) in far
less memory than the file's size, and the per-image-id join keeps every decision the whole-file
parse made (first entry wins, repeats and unknown ids rejected, ids 1 and "1" apart), with clear
errors for documents that are not COCO caption JSON."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from benchmarks.coco_stream_memory import measure_build
from pipeline.verify import verify_output
from schemas.config import CocoSource
from schemas.errors import InputError
from schemas.records import Rejection, SourceRecord
from tests.helpers import require_coco_sample
from transforms.coco_source import caption_entries, image_entries, join_image

PEAK_RSS_LIMIT_MIB = 600  # the file is 1024 MiB; loading it whole took about 7x that (README)


def test_a_1gb_coco_file_builds_with_memory_far_below_its_size(tmp_path):
    sample = require_coco_sample()
    try:
        result = measure_build(tmp_path, size_mb=1024, images=300, sample=sample, timeout=600)
    finally:
        (tmp_path / "captions.json").unlink(missing_ok=True)  # pytest keeps tmp folders: not 1 GB of them
    assert result["rc"] == 0, result["output"][-4000:]
    assert result["bytes"] >= 1000 << 20
    assert result["peak_rss_mib"] < PEAK_RSS_LIMIT_MIB, f"peak RSS {result['peak_rss_mib']:.0f} MiB"
    stats = result["stats"]
    # 300 entries over the 100 real images: 100 written, 200 the same bytes under another id.
    assert stats["images"] == {"read": 300, "written": 100, "rejected": {"duplicate_image": 200},
                               "rejected_total": 200, "balanced": True}
    assert stats["captions"]["read"] == result["annotations"] and stats["captions"]["balanced"]
    assert verify_output(str(tmp_path / "out")) == []


def _spec(tmp_path: Path, document) -> CocoSource:
    path = tmp_path / "captions.json"
    path.write_text(document if isinstance(document, str) else json.dumps(document))
    return CocoSource(name="c", captions=str(path), images=str(tmp_path / "images"))


def _joined(spec: CocoSource) -> list:
    """What ReadCoco yields, without a pipeline: the streams' rejections, then each id's group joined."""
    out, groups = [], {}
    for element in [*image_entries(spec), *caption_entries(spec)]:
        if isinstance(element, Rejection):
            out.append(element)
        else:
            groups.setdefault(element[0], []).append(element[1])
    for key, values in groups.items():
        out += join_image(spec, (key, values))
    return out


def test_the_per_id_join_decides_as_the_whole_file_parse_did(tmp_path):
    spec = _spec(tmp_path, {
        "images": [{"id": 1, "file_name": "a.jpg"}, {"id": "1", "file_name": "b.jpg"}, {"id": 2},
                   {"id": 2, "file_name": "c.jpg"}, {"id": 1, "file_name": "d.jpg"}, ["not an object"]],
        "annotations": [{"id": 30, "image_id": 1, "caption": "third by id"},
                        {"id": 10, "image_id": 1, "caption": "first by id"},
                        {"id": 20, "image_id": "1", "caption": "the string id's"},
                        {"id": 40, "image_id": 2, "caption": "the unusable entry's"},
                        {"id": 50, "image_id": 7, "caption": "no such image"},
                        {"id": 60, "image_id": 1, "caption": None}]})
    out = _joined(spec)
    records = {r.image.uri.rsplit("/", 1)[1]: r.captions for r in out if isinstance(r, SourceRecord)}
    reasons = sorted((r.key, r.reason, r.captions) for r in out if isinstance(r, Rejection))
    # Id 1: its first entry (not the repeat, d.jpg), captions in annotation id order; id "1" apart
    # (the same key c_1: the coverage step keeps one of them as duplicate_key, as it always did).
    assert records == {"a.jpg": ("first by id", "third by id"), "b.jpg": ("the string id's",)}
    assert reasons == sorted([
        ("c_1#images4", "duplicate_image_entry", 0),
        ("c_2", "record_malformed", 1),  # no file_name: its caption goes with it
        ("c_2#images3", "duplicate_image_entry", 0),
        ("c_images-index-5", "record_malformed", 0),
        ("annotation-50", "unknown_image_id", 1),
        ("annotation-60", "record_malformed", 1),
    ])
    # Accounting: 6 entries, 6 annotations, each in exactly one place.
    images = sum(1 for r in out if isinstance(r, SourceRecord) or r.level == "image")
    captions = sum(len(r.captions) if isinstance(r, SourceRecord) else r.captions for r in out)
    assert (images, captions) == (6, 6)


@pytest.mark.parametrize("document, message", [
    ('[{"id": 1}]', "not COCO caption JSON (a JSON array"),
    ({"annotations": []}, 'no "images" key'),
    ({"images": "a.jpg"}, '"images" is a JSON string'),
    ({"images": [], "annotations": {"id": 1}}, '"annotations" must be a list, not a JSON object'),
    ('{"images": [{"id": 1, "file_name": "a.jpg"}], "annotations": [{"id": ', "not valid JSON"),
    (b'{"images": [{"id": 1, "file_name": "\xff.jpg"}]}', "not valid JSON"),
])
def test_a_document_that_is_not_coco_caption_json_is_a_clear_error(tmp_path, document, message):
    if isinstance(document, bytes):
        (tmp_path / "captions.json").write_bytes(document)
        spec = CocoSource(name="c", captions=str(tmp_path / "captions.json"), images=str(tmp_path))
    else:
        spec = _spec(tmp_path, document)
    with pytest.raises(InputError) as error:
        _joined(spec)
    assert message in str(error.value) and "captions.json" in str(error.value)
