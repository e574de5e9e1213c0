"""Write one WebDataset shard per (split, shard index): `<key>.<ext>` + `<key>.json` per sample
(names: schemas/layout.py), and `<key>.224.jpg` when the config asks for a resized copy.

The copy is made here, per sample, from the bytes fetched for the shard (checked against the sha256
validation recorded), not carried from validation: image bytes never travel through the build's
groupings (pipeline/build.py), and an image is resized only once it is known to be written.

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
from typing import Iterable, Iterator, Optional

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq

from schemas.arrow import MANIFEST_SCHEMA
from schemas.config import ResizedImages
from schemas.layout import JSON_EXTENSION, intent, manifest_part, member_name, resized_extension, shard_relpath
from schemas.records import Rejection
from transforms.atomic import atomic_create, join, write_bytes_atomic
from transforms.coverage import ShardMember
from transforms.image_io import ImageChanged, ImageFetcher, spooled
from transforms.image_pixels import resized_jpeg
from transforms.run_folder import run_tmp

log = logging.getLogger(__name__)


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


WRITE_REJECTED = "write_rejected"  # WriteShard's output of samples whose image is gone
IMAGE_MISSING_AT_WRITE = "image_missing_at_write"
IMAGE_CHANGED = "image_changed"
READ_THREADS = 8  # parallel image reads per DoFn instance


def _gone(sample: ShardMember, data: object) -> Optional[Rejection]:
    """Why a sample's image can no longer be written (deleted or changed since validation), or None.
    The image is named as its source holds it (ImageRef.name), never by a staged copy's run-specific
    file: the detail goes to rejects/, which must be the same in every run."""
    if isinstance(data, FileNotFoundError):
        reason, detail = IMAGE_MISSING_AT_WRITE, f"{sample.image.name}: deleted since validation"
    elif isinstance(data, ImageChanged):
        reason, detail = IMAGE_CHANGED, str(data)
    elif hashlib.sha256(data).hexdigest() != sample.sha256:
        reason, detail = IMAGE_CHANGED, f"{sample.image.name}: the bytes differ from those validated"
    else:
        return None
    return Rejection(sample.source, sample.key, "image", reason, detail, sample.captions)


class WriteShard(beam.DoFn):
    """((split, index), [(position, ShardMember)]) -> ShardResult, after an atomic write; a sample whose
    image was deleted or changed since validation is left out (its position stays a gap) and goes
    to the WRITE_REJECTED output as a Rejection.

    The shard's images are fetched first, each as an exact byte range of a source file or of a
    staging file (image_io: ranges merged per file, a pool of READ_THREADS, one client per DoFn
    instance), then written in position order. The tar is written with the standard library, in
    webdataset's layout (members of a sample adjacent, extensions in sorted order, USTAR): importing
    webdataset would import torch into every worker (~500 MiB each) for a writer that needs none of it."""

    def __init__(self, output: str, run_id: str, resized: Optional[ResizedImages] = None):
        self.output, self.run_id, self.resized = output, run_id, resized
        self.fetcher: Optional[ImageFetcher] = None

    def setup(self) -> None:
        self.fetcher = ImageFetcher(READ_THREADS)

    def teardown(self) -> None:
        if self.fetcher is not None:
            self.fetcher.close()

    def process(self, item: tuple[tuple[str, int], Iterable[tuple[int, ShardMember]]],
                missing: int = 0) -> Iterator[ShardResult]:
        if missing:  # the build stops: translations it needs are missing (transforms/missing.py)
            return
        (split, index), members = item
        members = sorted(members, key=lambda m: m[0])
        rows, totals, missing = [], Counter(), Counter()
        images, captions = Counter(), Counter()
        gone: list[Rejection] = []
        relpath = shard_relpath(split, index)
        # Written before the shard is put in place: a run killed between the tar and its manifest part
        # still names the shard it wrote, so a later run may remove it (transforms/finalize.py).
        write_bytes_atomic(join(self.output, intent(self.run_id, split, index)), relpath.encode(),
                           run_tmp(self.output, self.run_id))
        with spooled(self.fetcher, [sample.image for _, sample in members]) as image_of, \
                atomic_create(join(self.output, relpath), run_tmp(self.output, self.run_id)) as stream:
            with tarfile.open(fileobj=stream, mode="w|", format=tarfile.USTAR_FORMAT) as tar:
                for i, (position, sample) in enumerate(members):
                    data = image_of(i)
                    rejection = _gone(sample, data)
                    if rejection is not None:
                        gone.append(rejection)
                        continue
                    for ext, content in sorted(self.members(sample, data).items()):
                        _add_member(tar, member_name(sample.key, ext), content)
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
        for rejection in gone:
            beam.metrics.Metrics.counter("shards", rejection.reason).inc()
            log.warning("%s: %s left out of %s: %s", rejection.key, rejection.reason, relpath, rejection.detail)
            yield beam.pvalue.TaggedOutput(WRITE_REJECTED, rejection)

    def members(self, sample: ShardMember, data: bytes) -> dict[str, bytes]:
        """A sample's members by extension: its image (unless only the resized copy is kept), the
        copy when configured, its JSON."""
        members = {JSON_EXTENSION: sample.json_member()}
        if self.resized is None or self.resized.keep_original:
            members[sample.image_format] = data
        if self.resized is not None:
            spec = self.resized
            members[resized_extension(spec.image_size, spec.resize_mode)] = resized_jpeg(
                data, spec.image_size, spec.resize_mode, spec.quality)
        return members

    def _write_manifest_part(self, split: str, index: int, rows: list[dict]) -> None:
        buffer = io.BytesIO()
        pq.write_table(pa.Table.from_pylist(rows, schema=MANIFEST_SCHEMA), buffer)
        # Written right after its shard, so each part in the folder names a shard some run wrote.
        write_bytes_atomic(join(self.output, manifest_part(split, index)), buffer.getvalue(),
                           run_tmp(self.output, self.run_id))
