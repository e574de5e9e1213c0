"""Sources: COCO caption JSON + image folder, img2dataset-style WebDataset tars, Parquet.

Each source PTransform yields a dict with `records` (SourceRecord, tagged with the source name) and
`rejected` (Rejection, for inputs a source can already tell are unusable). Images are referenced,
not loaded: validation and the shard writer read them through FileSystems.
"""
from __future__ import annotations

import json
import posixpath
import tarfile
from collections import defaultdict
from typing import Iterator, Union

import apache_beam as beam
from apache_beam.io import fileio
from apache_beam.io.filesystems import FileSystems

from schemas.config import CocoSource, ParquetSource, SourceSpec, WebDatasetSource
from schemas.records import ImageRef, Rejection, SourceRecord, sample_key

REJECTED = "rejected"
SourceOutput = Union[SourceRecord, Rejection]


def _join(folder: str, name: str) -> str:
    return FileSystems.join(folder, name) if "://" in folder else posixpath.join(folder, name)


def parse_coco(spec: CocoSource) -> Iterator[SourceOutput]:
    """One SourceRecord per image entry; captions whose image_id has no entry are rejected."""
    with FileSystems.open(spec.captions, compression_type="uncompressed") as f:
        data = json.load(f)
    captions: dict[int, list[tuple[int, str]]] = defaultdict(list)
    image_ids = {img["id"] for img in data["images"]}
    for ann in data.get("annotations", []):
        if ann["image_id"] not in image_ids:
            yield Rejection(spec.name, f"annotation-{ann.get('id')}", "caption", "unknown_image_id",
                            f"image_id {ann['image_id']} has no entry in images", captions=1)
            continue
        captions[ann["image_id"]].append((ann.get("id", 0), ann["caption"]))
    for img in data["images"]:
        source_id = str(img["id"])
        ordered = tuple(text for _, text in sorted(captions.get(img["id"], [])))
        yield SourceRecord(source=spec.name, source_id=source_id, key=sample_key(spec.name, source_id),
                           image=ImageRef(_join(spec.images, img["file_name"])), captions=ordered)


_IMAGE_MEMBER_EXTS = ("jpg", "jpeg", "png", "webp")


def _wds_captions(spec: WebDatasetSource, members: dict[str, bytes]) -> tuple[Union[str, bytes], ...]:
    if spec.caption == "txt":
        return (members["txt"],) if "txt" in members else ()
    if "json" not in members:
        return ()
    value = json.loads(members["json"].decode("utf-8")).get(spec.caption[len("json:"):])
    if value is None:
        return ()
    return tuple(value) if isinstance(value, list) else (value,)


def parse_webdataset_tar(spec: WebDatasetSource, url: str) -> Iterator[SourceOutput]:
    """Stream one tar; group members by key (basename up to the first dot, as webdataset does)."""
    current_key, members, image_ref = None, {}, None

    def flush() -> Iterator[SourceOutput]:
        if current_key is None:
            return
        source_id = f"{posixpath.basename(url)}/{current_key}"
        try:
            captions = _wds_captions(spec, members)
        except (ValueError, UnicodeDecodeError) as e:
            yield Rejection(spec.name, sample_key(spec.name, source_id), "image", "metadata_unreadable", str(e))
            return
        yield SourceRecord(spec.name, source_id, sample_key(spec.name, source_id), image_ref, captions)

    with FileSystems.open(url, compression_type="uncompressed") as f:
        with tarfile.open(fileobj=f, mode="r|") as tar:
            for info in tar:
                if not info.isfile():
                    continue
                base = posixpath.basename(info.name)
                if "." not in base:
                    continue
                key, ext = base.split(".", 1)
                key = posixpath.join(posixpath.dirname(info.name), key)
                if key != current_key:
                    yield from flush()
                    current_key, members, image_ref = key, {}, None
                ext = ext.lower()
                if ext in _IMAGE_MEMBER_EXTS:
                    image_ref = ImageRef(url, offset=info.offset_data, length=info.size)
                elif ext in ("txt", "json"):
                    members[ext] = tar.extractfile(info).read()
            yield from flush()


def parse_parquet_row(spec: ParquetSource, row: dict) -> SourceOutput:
    source_id = str(row[spec.id_column])
    caption = row[spec.caption_column]
    captions = tuple(caption) if isinstance(caption, (list, tuple)) else ((caption,) if caption else ())
    if spec.image_column is not None:
        data = row[spec.image_column]
        image = ImageRef(uri=f"parquet:{spec.name}/{source_id}", inline=data) if data else None
    else:
        path = row[spec.image_path_column]
        image = None
        if path:
            image = ImageRef(path if ("://" in path or posixpath.isabs(path)) or not spec.image_root
                             else _join(spec.image_root, path))
    return SourceRecord(spec.name, source_id, sample_key(spec.name, source_id), image, captions)


class _Route(beam.DoFn):
    """Send Rejections to the `rejected` output, records to the main one."""

    def process(self, element: SourceOutput):
        if isinstance(element, Rejection):
            yield beam.pvalue.TaggedOutput(REJECTED, element)
        else:
            yield element


class ReadSource(beam.PTransform):
    """Read one configured source; returns {"records": ..., "rejected": ...}."""

    def __init__(self, spec: SourceSpec):
        super().__init__(label=f"Read[{spec.name}]")
        self.spec = spec

    def expand(self, pbegin):
        spec = self.spec
        if isinstance(spec, CocoSource):
            # One document parsed by one worker: spread its records so validation runs everywhere.
            raw = (pbegin | "Spec" >> beam.Create([spec]) | "ParseCoco" >> beam.FlatMap(parse_coco)
                   | "Spread" >> beam.Reshuffle())
        elif isinstance(spec, WebDatasetSource):
            raw = (pbegin
                   | "Match" >> fileio.MatchFiles(spec.urls)
                   | "Urls" >> beam.Map(lambda m: m.path)
                   | "SpreadUrls" >> beam.Reshuffle()
                   | "ParseTars" >> beam.FlatMap(lambda url, s=spec: parse_webdataset_tar(s, url)))
        else:  # ReadFromParquet splits by row group on its own
            columns = [c for c in (spec.id_column, spec.caption_column, spec.image_column,
                                   spec.image_path_column) if c]
            raw = (pbegin
                   | "ReadParquet" >> beam.io.ReadFromParquet(spec.files, columns=columns)
                   | "Parse" >> beam.Map(lambda row, s=spec: parse_parquet_row(s, row)))
        routed = raw | "Route" >> beam.ParDo(_Route()).with_outputs(REJECTED, main="records")
        return {"records": routed.records, "rejected": routed[REJECTED]}
