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
import tarfile
from collections import Counter
from typing import Iterable, Iterator

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq

from schemas.arrow import MANIFEST_SCHEMA
from schemas.sample import JSON_EXTENSION
from transforms.atomic import atomic_create, join, write_bytes_atomic
from transforms.coverage import ShardMember
from transforms.image_io import read_image_bytes
from transforms.run_folder import run_dir, run_tmp

log = logging.getLogger(__name__)


def shard_relpath(split: str, index: int) -> str:
    return f"{split}/{index:06d}.tar"


def manifest_parts_dir(output: str, run_id: str) -> str:
    """A run's manifest parts: one per shard it wrote, and so its record of those shards."""
    return join(run_dir(output, run_id), "manifest_parts")


def manifest_part_path(output: str, run_id: str, split: str, index: int) -> str:
    return join(manifest_parts_dir(output, run_id), f"{split}-{index:06d}.parquet")


def shard_of_manifest_part(part_path: str) -> str:
    """The shard (relative path) a manifest part records: its name is <split>-<index>.parquet."""
    split, index = part_path.rsplit("/", 1)[-1].removesuffix(".parquet").rsplit("-", 1)
    return shard_relpath(split, int(index))


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


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    """One member with fixed metadata (owner, mode, mtime 0), as webdataset's TarWriter writes it."""
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime, info.uname, info.gname = len(data), 0o444, 0, "florenz", "florenz"
    tar.addfile(info, io.BytesIO(data))


class WriteShard(beam.DoFn):
    """((split, index), [(position, ShardMember)]) -> ShardResult, after an atomic write.

    The tar is written with the standard library, in webdataset's layout (members of a sample
    adjacent, extensions in sorted order, USTAR): importing webdataset would import torch into every
    worker (~500 MiB each) for a writer that needs none of it."""

    def __init__(self, output: str, run_id: str):
        self.output, self.run_id = output, run_id

    def process(self, item: tuple[tuple[str, int], Iterable[tuple[int, ShardMember]]],
                missing: int = 0) -> Iterator[ShardResult]:
        if missing:  # the build stops: translations it needs are missing (transforms/missing.py)
            return
        (split, index), members = item
        members = sorted(members, key=lambda m: m[0])
        rows, totals, missing = [], Counter(), Counter()
        images, captions = Counter(), Counter()
        relpath = shard_relpath(split, index)
        with atomic_create(join(self.output, relpath), run_tmp(self.output, self.run_id)) as stream:
            with tarfile.open(fileobj=stream, mode="w|", format=tarfile.USTAR_FORMAT) as tar:
                for position, sample in members:
                    data = read_image_bytes(sample.image)
                    if hashlib.sha256(data).hexdigest() != sample.sha256:
                        raise RuntimeError(f"{sample.key}: image bytes changed since validation ({sample.image.uri})")
                    for ext, content in sorted({sample.image_format: data,
                                                JSON_EXTENSION: sample.json_member()}.items()):
                        _add_member(tar, f"{sample.key}.{ext}", content)
                    totals.update(dict(sample.annotations))
                    missing.update(dict(sample.missing))
                    images[sample.source] += 1
                    captions[sample.source] += sample.captions
                    rows.append({**sample.metadata(), "shard": relpath, "position": position,
                                 "image_format": sample.image_format, "captions": sample.captions,
                                 "annotations": list(sample.annotations), "missing": list(sample.missing)})
        self._write_manifest_part(split, index, rows)
        beam.metrics.Metrics.counter("shards", f"{split}_samples").inc(len(rows))
        log.info("wrote %s (%d samples)", relpath, len(rows))
        yield ShardResult(split, index, relpath, stream.md5.hexdigest(), stream.size, len(rows),
                          dict(images), dict(captions), dict(totals), dict(missing))

    def _write_manifest_part(self, split: str, index: int, rows: list[dict]) -> None:
        buffer = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA), buffer)
        write_bytes_atomic(manifest_part_path(self.output, self.run_id, split, index), buffer.getvalue(),
                           run_tmp(self.output, self.run_id))
