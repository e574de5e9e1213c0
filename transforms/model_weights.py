"""Model weights from a bucket: a managed vLLM server given `translator.model: gs://...` (or s3://...)
serves a local copy, made once per machine before the server starts.

A Dataflow GPU worker runs several SDK processes that may each start a server (or restart it); the
copy is made under an exclusive file lock, so the first process copies and the others wait, then
find it complete (a marker file written last, then a rename) and copy nothing. Files are read through
Beam's FileSystems, so any store Beam reads works, with the options the worker was given; several
files (a model's safetensors shards) are copied at once.
"""
from __future__ import annotations

import fcntl
import hashlib
import os
import posixpath
import shutil
import tempfile
from concurrent.futures import ThreadPoolExecutor

from apache_beam.io.filesystems import FileSystems

COMPLETE = "_COMPLETE"
COPY_THREADS = 8
_CHUNK = 16 << 20


def is_remote(model: str) -> bool:
    """A model given as a URI (gs://, s3://...) rather than a hub id or a local folder."""
    return "://" in model


def default_root() -> str:
    """Where copies go: the worker's boot disk (sized for them: README, "Running at CC12M scale")."""
    return os.path.join(tempfile.gettempdir(), "florenz-weights")


def local_weights(model: str, root: str | None = None) -> str:
    """A local folder holding every file under the URI `model`, copied once per machine; a hub id or
    a local folder is returned as it is."""
    if not is_remote(model):
        return model
    root = root or default_root()
    os.makedirs(root, exist_ok=True)
    target = os.path.join(root, hashlib.sha256(model.encode("utf-8")).hexdigest()[:16])
    with open(f"{target}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # released when the file closes, and by the OS if we die
        if not os.path.exists(os.path.join(target, COMPLETE)):
            _copy_tree(model, target)
    return target


def _copy_tree(uri: str, target: str) -> None:
    prefix = uri.rstrip("/") + "/"
    files = sorted(m.path for m in FileSystems.match([prefix + "**"])[0].metadata_list)
    if not files:
        raise FileNotFoundError(f"translator.model: no files under {uri}")
    partial = f"{target}.partial"
    for stale in (partial, target):  # a copy killed midway, or one that lost its marker
        shutil.rmtree(stale, ignore_errors=True)
    destinations = [os.path.join(partial, _relative(path, prefix)) for path in files]
    with ThreadPoolExecutor(COPY_THREADS) as pool:
        list(pool.map(_copy_file, files, destinations))
    open(os.path.join(partial, COMPLETE), "w").close()
    os.rename(partial, target)


def _relative(path: str, prefix: str) -> str:
    """The path of an object below the model's prefix; never one that leaves the copy's folder."""
    relative = posixpath.normpath(path[len(prefix):])
    if relative.startswith("../") or relative in ("..", ".") or posixpath.isabs(relative):
        raise ValueError(f"translator.model: {path} does not lie below {prefix}")
    return relative


def _copy_file(source: str, destination: str) -> None:
    os.makedirs(os.path.dirname(destination), exist_ok=True)
    with FileSystems.open(source, compression_type="uncompressed") as src, open(destination, "wb") as dst:
        shutil.copyfileobj(src, dst, _CHUNK)
