"""Staging: validation appends the bytes of each valid image that no byte range of its source file
holds (a Parquet cell, a member of a compressed tar) to a staging file in the run's folder,
OUTPUT/_runs/<run id>/staging/<uuid>.bin, and refers to it from then on as (file, offset, length),
like a plain tar member: the shard writer reads it with one exact ranged read, and no image bytes
travel through a grouping.

Why: shard members are spread over the whole dataset by a hash of their key, so a shard of 1,000
samples touches ~1,000 row groups; reading the cells from the Parquet files again would read about
(rows per row group / 2) x the bytes written. Staged, each image costs one write and one exact read.

Retries: each bundle writes files of its own (a new uuid each) and closes them in finish_bundle. A
runner consumes a bundle's outputs only after the bundle has committed, that is after finish_bundle
closed its files, so a reference any later step sees names a complete file; the files of a failed
attempt are never referenced and go with the run folder (after _SUCCESS, or with the next run's
finalize). Staging names and offsets never reach the output: messages name an image by its origin.
"""
from __future__ import annotations

import dataclasses
import uuid
from typing import BinaryIO, Optional

from apache_beam.io.filesystems import FileSystems

from schemas.records import ImageRef
from transforms.atomic import join

# A new file past this size: an S3 multipart upload holds at most 10,000 parts (Beam writes 5 MiB
# parts, so 50 GB), and a failed attempt leaves less behind.
MAX_FILE_BYTES = 1 << 30


class StagingWriter:
    """Stages one bundle's images in `folder`, streamed through Beam's FileSystems (local disk, S3,
    GCS). A file is opened at its first image: Beam's S3 filesystem cannot write an empty object."""

    def __init__(self, folder: str):
        self.folder = folder
        self._stream: Optional[BinaryIO] = None
        self._path = ""
        self._size = 0

    def stage(self, ref: ImageRef, data: bytes) -> ImageRef:
        """`ref` pointing at the staged copy of `data` (its origin kept)."""
        if self._stream is None or (self._size and self._size + len(data) > MAX_FILE_BYTES):
            self.close()
            self._path = join(self.folder, f"{uuid.uuid4().hex}.bin")
            self._stream = FileSystems.create(self._path, mime_type="application/octet-stream",
                                              compression_type="uncompressed")
            self._size = 0
        self._stream.write(data)
        offset, self._size = self._size, self._size + len(data)
        return dataclasses.replace(ref, uri=self._path, offset=offset, length=len(data))

    def close(self) -> None:
        """Complete the open file (on S3: the multipart upload); a reference to it is usable after this."""
        if self._stream is not None:
            stream, self._stream = self._stream, None
            stream.close()
