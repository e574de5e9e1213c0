"""Write one WebDataset shard per (split, shard index): `<key>.<ext>` + `<key>.json` per sample.

Members are in shard position order, tar metadata is fixed (mtime 0, fixed owner and mode), and
the JSON is serialized with sorted keys, so the same input gives byte-identical tars. Each shard and
its manifest part are written to a temporary name and renamed.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import logging
from collections import Counter
from typing import Iterable, Iterator

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from webdataset import TarWriter

from schemas.arrow import MANIFEST_SCHEMA
from schemas.sample import JSON_EXTENSION, encode_sample_json, task_language
from transforms.atomic import TMP_DIR, atomic_create, join, write_bytes_atomic
from transforms.coverage import PlannedSample
from transforms.image_io import read_image_bytes

MANIFEST_PARTS_DIR = "_manifest_parts"
log = logging.getLogger(__name__)


def shard_relpath(split: str, index: int) -> str:
    return f"{split}/{index:06d}.tar"


def manifest_part_path(output: str, split: str, index: int) -> str:
    return join(output, MANIFEST_PARTS_DIR, f"{split}-{index:06d}.parquet")


@dataclasses.dataclass(frozen=True)
class ShardResult:
    """What one written shard holds: enough for the wids index, the manifest and stats.json."""

    split: str
    index: int
    path: str  # relative to the output folder
    md5: str
    filesize: int
    nsamples: int
    images_by_source: dict[str, int]
    captions_by_source: dict[str, int]
    annotations: dict[str, int]  # task-lang -> n
    missing: dict[str, int]  # task-lang -> n


def sample_metadata(sample: PlannedSample) -> dict:
    im = sample.image
    return {"key": im.key, "split": sample.split, "source": im.source, "source_id": im.source_id,
            "width": im.width, "height": im.height, "sha256": im.sha256}


class WriteShard(beam.DoFn):
    """((split, index), [(position, PlannedSample)]) -> ShardResult, after an atomic write."""

    def __init__(self, output: str):
        self.output = output

    def process(self, item: tuple[tuple[str, int], Iterable[tuple[int, PlannedSample]]],
                missing: int = 0) -> Iterator[ShardResult]:
        if missing:  # the build stops: translations it needs are missing (transforms/missing.py)
            return
        (split, index), members = item
        members = sorted(members, key=lambda m: m[0])
        rows, totals, missing = [], Counter(), Counter()
        images, captions = Counter(), Counter()
        relpath = shard_relpath(split, index)
        with atomic_create(join(self.output, relpath), join(self.output, TMP_DIR)) as stream:
            with TarWriter(stream, user="florenz", group="florenz", mode=0o444, mtime=0) as tar:
                for position, sample in members:
                    im = sample.image
                    data = read_image_bytes(im.image)
                    if hashlib.sha256(data).hexdigest() != im.sha256:
                        raise RuntimeError(f"{im.key}: image bytes changed since validation ({im.image.uri})")
                    tar.write({"__key__": im.key, im.image_format: data,
                               JSON_EXTENSION: encode_sample_json(sample_metadata(sample),
                                                                  list(sample.annotations))})
                    counts = Counter(task_language(a.task, a.lang) for a in sample.annotations)
                    totals.update(counts)
                    missing.update(dict(sample.missing))
                    images[im.source] += 1
                    captions[im.source] += len(im.captions)
                    rows.append({**sample_metadata(sample), "shard": relpath, "position": position,
                                 "image_format": im.image_format, "captions": len(im.captions),
                                 "annotations": sorted(counts.items()), "missing": list(sample.missing)})
        self._write_manifest_part(split, index, rows)
        beam.metrics.Metrics.counter("shards", f"{split}_samples").inc(len(rows))
        log.info("wrote %s (%d samples)", relpath, len(rows))
        yield ShardResult(split, index, relpath, stream.md5.hexdigest(), stream.size, len(rows),
                          dict(images), dict(captions), dict(totals), dict(missing))

    def _write_manifest_part(self, split: str, index: int, rows: list[dict]) -> None:
        buffer = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA), buffer)
        write_bytes_atomic(manifest_part_path(self.output, split, index), buffer.getvalue(),
                           join(self.output, TMP_DIR))
