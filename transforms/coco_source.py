"""COCO caption JSON + image folder, streamed.

A COCO-shaped file can be many GB (instances files carry segmentation polygons), and loading it
whole costs about 4x its size in one process. Here two passes stream it with ijson (its C backend):
one over the `images` array, one over `annotations`, each holding one entry at a time, and a
grouping by image id joins them. The per-id group decides what whole-file dicts used to: the first
entry of an id holds its captions and a repeat is `duplicate_image_entry`; captions of an id
without an entry are `unknown_image_id`. A group holds one image's entries and captions.

Bad entries and annotations (not an object, no or null id / file_name / image_id / caption) are
counted `record_malformed` rejections; a document that is not JSON, or not an object with an
`images` list, or whose `annotations` is not a list, raises InputError naming the file.
"""
from __future__ import annotations

from typing import Any, BinaryIO, Iterator, Optional, Union

import apache_beam as beam
import ijson
from apache_beam.io.filesystems import FileSystems

from schemas.config import CocoSource
from schemas.errors import InputError
from schemas.records import ImageRef, Rejection, SourceRecord, sample_key
from transforms.group_metrics import MeasuredGroupByKey
from transforms.source_common import MALFORMED, SourceOutput, json_type, one_line, resolve_under

DUPLICATE_ENTRY = "duplicate_image_entry"
UNKNOWN_IMAGE_ID = "unknown_image_id"
IMAGES, ANNOTATIONS = "images", "annotations"

# What meets in the grouping, keyed by image id as (type, id): JSON 1 and "1" are different ids.
IdKey = tuple[str, Union[int, str]]
Entry = tuple[str, int, Optional[str], str]  # (IMAGES, index, file_name, why it is unusable or "")
Caption = tuple[str, tuple, Any, str]  # (ANNOTATIONS, order, caption, rejection key)


def _is_id(value: Any) -> bool:
    return isinstance(value, (int, str)) and not isinstance(value, bool)


def _id_key(value: Union[int, str]) -> IdKey:
    return ("int" if isinstance(value, int) else "str", value)


def _open(spec: CocoSource) -> BinaryIO:
    try:
        return FileSystems.open(spec.captions, compression_type="uncompressed")
    except Exception:  # FileNotFoundError, or the BeamIOError a filesystem wraps it in
        if not FileSystems.exists(spec.captions):
            raise InputError(spec.captions, f"source {spec.name!r} captions: file not found") from None
        raise


def _items(spec: CocoSource, array: str) -> Iterator[Any]:
    """The items of the document's top-level `array`, one at a time."""
    found = False
    try:
        with _open(spec) as f:
            for item in ijson.items(f, f"{array}.item", use_float=True):
                found = True
                yield item
        if not found:
            _check_shape(spec, array)
    except (ijson.JSONError, UnicodeDecodeError) as e:
        raise InputError(spec.captions, f"source {spec.name!r} captions: not valid JSON ({one_line(e)})") from None


_EVENT_TYPES = {"start_map": "object", "start_array": "array", "string": "string", "number": "number",
                "boolean": "boolean", "null": "null"}


def _check_shape(spec: CocoSource, array: str) -> None:
    """When `array` yielded nothing: InputError unless the document is an object whose `array` is a
    list (or, for annotations, absent). Walks the top level's events (only on this path: it is slow)."""
    path, name = spec.captions, spec.name
    with _open(spec) as f:
        events = ijson.parse(f, use_float=True)
        _, first, _ = next(events)
        if first != "start_map":
            raise InputError(path, f"source {name!r} captions: not COCO caption JSON (a JSON {_EVENT_TYPES[first]}, "
                                   "not an object with an \"images\" list)")
        keys: list[str] = []
        value_type = None
        for prefix, event, value in events:
            if prefix == "" and event == "map_key":
                keys.append(value)
            elif prefix == array and keys[-1] == array:
                value_type = _EVENT_TYPES.get(event)
                break
    if array == IMAGES and value_type != "array":
        found = "no \"images\" key" if value_type is None else f"\"images\" is a JSON {value_type}"
        raise InputError(path, f"source {name!r} captions: not COCO caption JSON ({found}; it needs an \"images\" "
                               f"list; keys: {sorted(keys)[:10]})")
    if array == ANNOTATIONS and value_type not in (None, "array"):
        raise InputError(path, f"source {name!r} captions: \"annotations\" must be a list, not a JSON {value_type}")


def image_entries(spec: CocoSource) -> Iterator[Union[Rejection, tuple[IdKey, Entry]]]:
    """Stream `images`: (id, entry) per entry with a usable id; an entry without one is rejected here."""
    for index, img in enumerate(_items(spec, IMAGES)):
        if not isinstance(img, dict):
            yield _malformed_entry(spec, index, f"images[{index}] is not an object (a JSON {json_type(img)})")
            continue
        image_id, file_name = img.get("id"), img.get("file_name")
        if not _is_id(image_id):
            why = ("no 'id'" if "id" not in img else "'id' is null") if image_id is None else f"'id' is {image_id!r}"
            yield _malformed_entry(spec, index, f"images[{index}]: {why}")
            continue
        unusable = ""
        if not isinstance(file_name, str) or not file_name:
            why = (("no 'file_name'" if "file_name" not in img else "'file_name' is null") if file_name is None
                   else f"'file_name' is {file_name!r}")
            unusable = f"images[{index}] (id {image_id!r}): {why}"
        yield _id_key(image_id), (IMAGES, index, file_name if not unusable else None, unusable)


def _malformed_entry(spec: CocoSource, index: int, detail: str) -> Rejection:
    return Rejection(spec.name, sample_key(spec.name, f"images-index-{index}"), "image", MALFORMED, detail)


def caption_entries(spec: CocoSource) -> Iterator[Union[Rejection, tuple[IdKey, Caption]]]:
    """Stream `annotations`: (image id, caption) per usable annotation; a malformed one is rejected here."""
    for index, ann in enumerate(_items(spec, ANNOTATIONS)):
        ann_id = ann.get("id") if isinstance(ann, dict) else None
        key = f"annotation-{ann_id}" if _is_id(ann_id) else f"annotation-index-{index}"
        if not isinstance(ann, dict):
            yield Rejection(spec.name, key, "caption", MALFORMED,
                            f"annotations[{index}] is not an object (a JSON {json_type(ann)})", captions=1)
            continue
        missing = [f"no {field!r}" if field not in ann else f"{field!r} is null"
                   for field in ("image_id", "caption") if ann.get(field) is None]
        if missing or not _is_id(ann["image_id"]):
            detail = ", ".join(missing) if missing else f"'image_id' is {ann['image_id']!r}"
            yield Rejection(spec.name, key, "caption", MALFORMED, f"annotations[{index}]: {detail}", captions=1)
            continue
        order = (0, ann_id, index) if isinstance(ann_id, int) and not isinstance(ann_id, bool) else (1, 0, index)
        yield _id_key(ann["image_id"]), (ANNOTATIONS, order, ann["caption"], key)


def join_image(spec: CocoSource, item: tuple[IdKey, Any]) -> Iterator[SourceOutput]:
    """One image id's entries and captions -> its record, or the rejections that account for them."""
    (_, image_id), values = item
    entries: list[Entry] = []
    captions: list[Caption] = []
    for value in values:
        (entries if value[0] == IMAGES else captions).append(value)
    captions.sort(key=lambda c: c[1])
    if not entries:
        for _, _, _, key in captions:
            yield Rejection(spec.name, key, "caption", UNKNOWN_IMAGE_ID, f"image_id {image_id} has no entry in images",
                            captions=1)
        return
    entries.sort(key=lambda e: e[1])
    (_, first, file_name, unusable), repeats = entries[0], entries[1:]
    key = sample_key(spec.name, str(image_id))
    for _, index, _, _ in repeats:
        yield Rejection(spec.name, f"{key}#images{index}", "image", DUPLICATE_ENTRY,
                        f"images[{index}] repeats id {image_id!r} (first at images[{first}]); its captions count once")
    if unusable:
        yield Rejection(spec.name, key, "image", MALFORMED, unusable, captions=len(captions))
        return
    yield SourceRecord(spec.name, str(image_id), key, ImageRef(resolve_under(spec.images, file_name)),
                       tuple(text for _, _, text, _ in captions))


class ReadCoco(beam.PTransform):
    """CocoSource -> SourceRecords and Rejections (mixed). The two streams run on their own workers;
    the join is spread by image id."""

    def __init__(self, spec: CocoSource):
        super().__init__()
        self.spec = spec

    def expand(self, pbegin):
        spec = self.spec
        images = pbegin | "ImagesOf" >> beam.Create([spec]) | "StreamImages" >> beam.FlatMap(image_entries)
        annotations = (pbegin | "AnnotationsOf" >> beam.Create([spec])
                       | "StreamAnnotations" >> beam.FlatMap(caption_entries))
        rejected, keyed = ((images, annotations)
                           | "Streamed" >> beam.Flatten()
                           | "SplitRejected" >> beam.Partition(lambda e, _: 0 if isinstance(e, Rejection) else 1, 2))
        joined = keyed | "ByImageId" >> MeasuredGroupByKey() | "JoinImages" >> beam.FlatMap(
            lambda item, s=spec: join_image(s, item))
        return (rejected, joined) | "All" >> beam.Flatten()
