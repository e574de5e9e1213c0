"""What every source shares: its output type, the rejection reasons sources give, error wording, and
the confinement of image paths to their source's root.

Image paths named by the data (COCO `file_name`, a Parquet path column) are confined to the
source's root: resolved (posixpath.normpath for URIs, os.path.realpath for local files, so a symlink
is followed before the check) and rejected as `image_outside_root` when they lead out of it, unless
the source sets `allow_outside_root: true`. A caption file must not be able to make the pipeline
copy /etc/passwd or another user's files into shards.
"""
from __future__ import annotations

import functools
import os
import posixpath
from typing import Any, Union

from apache_beam.io.filesystems import FileSystems

from schemas.records import Rejection, SourceRecord

REJECTED = "rejected"
SourceOutput = Union[SourceRecord, Rejection]

# Rejection reasons a source gives (validation adds the image and caption ones).
OUTSIDE_ROOT = "image_outside_root"
MALFORMED = "record_malformed"


def json_type(value: Any) -> str:
    """A Python value parsed from JSON, named as JSON names it."""
    names = {dict: "object", list: "array", str: "string", bool: "boolean", int: "number", float: "number"}
    return "null" if value is None else names.get(type(value), type(value).__name__)


def one_line(error: BaseException) -> str:
    """An exception as one line (the CLI shows the first line of a tagged error)."""
    return " ".join(f"{type(error).__name__}: {error}".split())


def _join(folder: str, name: str) -> str:
    return FileSystems.join(folder, name) if "://" in folder else posixpath.join(folder, name)


def _split_uri(path: str) -> tuple[str, str]:
    scheme, sep, rest = path.partition("://")
    return (scheme.lower(), rest) if sep else ("", path)


@functools.lru_cache(maxsize=1024)
def _real_root(root: str) -> str:
    return os.path.realpath(root)


def resolve_under(root: str, name: str) -> str:
    """The path `name` (relative to `root`, or absolute, or a URI) names."""
    if "://" in name or posixpath.isabs(name):
        return name
    return _join(root, name)


def is_within(root: str, path: str) -> bool:
    """Whether `path` lies strictly inside `root`: URIs compared after posixpath.normpath (same
    scheme), local paths after os.path.realpath (symlinks followed, `..` resolved)."""
    if "://" in root or "://" in path:
        (root_scheme, root_rest), (scheme, rest) = _split_uri(root), _split_uri(path)
        if scheme != root_scheme:
            return False
        real_root, real = posixpath.normpath(root_rest), posixpath.normpath(rest)
    else:
        try:
            real_root, real = _real_root(root), os.path.realpath(path)
        except ValueError:  # an embedded NUL byte: no file has that name
            return False
    prefix = real_root if real_root.endswith("/") else real_root + "/"
    return real.startswith(prefix)


def confine(record: SourceOutput, root: str, allow_outside: bool) -> SourceOutput:
    """The record as it is (or a rejection passed through), or an `image_outside_root` rejection
    with its captions."""
    if isinstance(record, Rejection):
        return record
    image = record.image
    if allow_outside or image is None or not image.addressable or is_within(root, image.uri):
        return record
    return Rejection(record.source, record.key, "image", OUTSIDE_ROOT,
                     f"{image.uri} is outside the source's root {root} (set allow_outside_root: true to allow)",
                     captions=len(record.captions))
