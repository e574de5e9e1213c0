"""Atomic writes through Beam's FileSystems: write a temporary name, then rename.

Local renames are atomic; on GCS a rename is copy + delete, which is why a run also writes a
completion marker (_SUCCESS) last.
"""
from __future__ import annotations

import contextlib
import hashlib
import os
import re
import uuid
import warnings
from typing import BinaryIO, Iterator

from apache_beam.io.filesystems import FileSystems


def join(*parts: str) -> str:
    return FileSystems.join(*parts)


_GLOB_CHARS = re.compile(r"([*?\[\]])")
# Beam compiles the "[[]" class this produces into a regex, which Python flags as a possible
# nested set; it is not one (a literal '[' in a class), so the warning is noise for our patterns.
warnings.filterwarnings("ignore", "Possible nested set", FutureWarning)


def glob_escape(path: str) -> str:
    """`path` as a FileSystems.match pattern matching only itself: Beam's patterns have no escape
    character, so each of * ? [ ] becomes a one-character class ([[], []], ...)."""
    return _GLOB_CHARS.sub(r"[\1]", path)


def delete_paths(paths: list[str]) -> None:
    """FileSystems.delete of literal paths: the local and GCS filesystems take each path as a match
    pattern (a '[' in a folder name would match nothing), S3 takes it as a name."""
    if paths:
        FileSystems.delete([p if p.startswith("s3://") else glob_escape(p) for p in paths])


def ensure_dir(path: str) -> None:
    """Local filesystems need the folder; object stores have none."""
    if "://" not in path and path:
        os.makedirs(path, exist_ok=True)


class HashingWriter:
    """A write-only stream that tracks md5 and size of what passes through it."""

    def __init__(self, raw: BinaryIO):
        self.raw = raw
        self.md5 = hashlib.md5()
        self.size = 0

    def write(self, data: bytes) -> int:
        self.md5.update(data)
        self.size += len(data)
        return self.raw.write(data)

    closed = False  # pyarrow.PythonFile checks these two
    writable = staticmethod(lambda: True)

    def tell(self) -> int:
        return self.size

    def flush(self) -> None:
        self.raw.flush()


@contextlib.contextmanager
def atomic_create(final_path: str, tmp_root: str) -> Iterator[HashingWriter]:
    """Yield a stream; on clean exit the bytes appear at final_path at once, on error nowhere."""
    ensure_dir(os.path.dirname(final_path))
    tmp = join(tmp_root, f"{os.path.basename(final_path)}.{uuid.uuid4().hex}")
    raw = FileSystems.create(tmp, mime_type="application/octet-stream", compression_type="uncompressed")
    try:
        writer = HashingWriter(raw)
        yield writer
        raw.close()
    except BaseException:
        raw.close()
        delete_paths([tmp])
        raise
    FileSystems.rename([tmp], [final_path])  # replaces a previous run's file (os.rename / GCS copy)


def write_bytes_atomic(final_path: str, data: bytes, tmp_root: str) -> None:
    with atomic_create(final_path, tmp_root) as f:
        f.write(data)
