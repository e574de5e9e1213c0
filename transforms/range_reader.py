"""Exact byte-range reads from local disk, S3 and GCS, with one client per scheme per reader.

Why not `FileSystems.open`: Beam's S3 and GCS filesystems build a new client for every open and
read through a 16 MiB buffer (S3: a GET of the open-ended range `bytes=offset-`, read 16 MiB at a
time), so a 40 KiB image inside a tar cost up to 16 MiB downloaded and a client per image. Here a
read of [offset, offset + length) is one GET of exactly that range, through a client built once
(a DoFn's setup()) from the same options Beam's FileSystems use (`FileSystems.set_options`: the CLI's
`--s3_endpoint_url`, `--s3_access_key_id`, ..., the GCP project and credentials). Local files are a
plain seek + read. Any other scheme Beam knows falls back to FileSystems.open + seek + read.

A missing file or object raises FileNotFoundError; a file shorter than the range asked for gives
fewer bytes (the caller decides what that means); a local path that is not a regular file (a FIFO or
device placed among images would block or never end) raises NotARegularFile.
"""
from __future__ import annotations

import errno
import io
import os
import stat
import threading
from typing import Any, BinaryIO, Optional

from apache_beam.io.filesystems import FileSystems

S3, GCS = "s3", "gs"


class NotARegularFile(OSError):
    """A local image path that names a FIFO, a device or a folder."""


def _scheme(uri: str) -> str:
    return uri.split("://", 1)[0].lower() if "://" in uri else ""


def _split_bucket(uri: str) -> tuple[str, str]:
    bucket, _, name = uri.split("://", 1)[1].partition("/")
    return bucket, name


def _beam_options() -> Any:
    """The options Beam's FileSystems build their clients from, looked up as
    FileSystems.get_filesystem does (set by the CLI, by beam.Pipeline, and on every worker)."""
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.options.value_provider import RuntimeValueProvider

    options = FileSystems._pipeline_options or RuntimeValueProvider.runtime_options  # noqa: SLF001
    if options is None:
        return PipelineOptions([])
    return PipelineOptions.from_dictionary(options) if isinstance(options, dict) else options


def _http_range(offset: int, length: int) -> Optional[str]:
    if offset == 0 and length < 0:
        return None
    return f"bytes={offset}-" + (str(offset + length - 1) if length >= 0 else "")


class RangeReader:
    """Reads byte ranges; thread-safe (boto3 clients are; google-cloud-storage's own transfer manager
    shares one client between threads), so a DoFn's read pool shares one reader."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._s3: Any = None
        self._gcs: Any = None
        self._gcs_retry: Any = None

    # --- clients, built on first use --------------------------------------------------------------
    def _s3_client(self) -> Any:
        with self._lock:
            if self._s3 is None:
                from apache_beam.io.aws.clients.s3 import boto3_client  # Beam's construction from S3Options

                self._s3 = boto3_client.Client(options=_beam_options()).client
            return self._s3

    def _gcs_client(self) -> Any:
        with self._lock:
            if self._gcs is None:
                from apache_beam.io.gcp import gcsio, gcsio_retry
                from apache_beam.options.pipeline_options import GoogleCloudOptions

                options = _beam_options()
                # --no_auth: anonymous, as Beam's own container builder reads it (public buckets, emulators)
                self._gcs = gcsio.create_storage_client(options, not options.view_as(GoogleCloudOptions).no_auth)
                self._gcs_retry = gcsio_retry.get_retry(options)
            return self._gcs

    # --- reads ------------------------------------------------------------------------------------
    def read(self, uri: str, offset: int = 0, length: int = -1) -> bytes:
        """Bytes [offset, offset + length) of `uri` (length -1: to the end); fewer if it is shorter."""
        if length == 0:
            return b""
        scheme = _scheme(uri)
        if not scheme:
            return self._read_local(uri, offset, length)
        if scheme == S3:
            return self._read_s3(uri, offset, length)
        if scheme == GCS:
            return self._read_gcs(uri, offset, length)
        return self._read_beam(uri, offset, length)

    @staticmethod
    def _read_local(path: str, offset: int, length: int) -> bytes:
        with _open_local(path) as f:
            f.seek(offset)
            return f.read() if length < 0 else f.read(length)

    def _read_s3(self, uri: str, offset: int, length: int) -> bytes:
        from botocore.exceptions import ClientError

        bucket, key = _split_bucket(uri)
        request = {"Bucket": bucket, "Key": key}
        if (byte_range := _http_range(offset, length)) is not None:
            request["Range"] = byte_range
        try:
            return self._s3_client().get_object(**request)["Body"].read()
        except ClientError as e:
            status = e.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            code = e.response.get("Error", {}).get("Code")
            if status == 404 or code in ("NoSuchKey", "NoSuchBucket"):
                raise FileNotFoundError(errno.ENOENT, "not found", uri) from None
            if status == 416 or code == "InvalidRange":  # the range starts past the end: it shrank
                return b""
            raise

    def _read_gcs(self, uri: str, offset: int, length: int) -> bytes:
        from google.api_core.exceptions import NotFound, RequestRangeNotSatisfiable

        bucket, name = _split_bucket(uri)
        blob = self._gcs_client().bucket(bucket).blob(name)
        ranged = _http_range(offset, length) is not None
        try:
            return blob.download_as_bytes(start=offset if ranged else None,
                                          end=offset + length - 1 if length >= 0 else None,
                                          raw_download=True, retry=self._gcs_retry,
                                          checksum=None if ranged else "auto")  # a range has no checksum
        except NotFound:
            raise FileNotFoundError(errno.ENOENT, "not found", uri) from None
        except RequestRangeNotSatisfiable:
            return b""

    @staticmethod
    def _read_beam(uri: str, offset: int, length: int) -> bytes:
        try:
            with FileSystems.open(uri, compression_type="uncompressed") as f:
                f.seek(offset)
                return f.read() if length < 0 else f.read(length)
        except Exception:  # Beam wraps a missing file in BeamIOError
            if not FileSystems.exists(uri):
                raise FileNotFoundError(errno.ENOENT, "not found", uri) from None
            raise

    def size(self, uri: str) -> int:
        scheme = _scheme(uri)
        if scheme == S3:
            from botocore.exceptions import ClientError

            bucket, key = _split_bucket(uri)
            try:
                return self._s3_client().head_object(Bucket=bucket, Key=key)["ContentLength"]
            except ClientError as e:
                if e.response.get("ResponseMetadata", {}).get("HTTPStatusCode") == 404:
                    raise FileNotFoundError(errno.ENOENT, "not found", uri) from None
                raise
        if scheme == GCS:
            bucket, name = _split_bucket(uri)
            blob = self._gcs_client().bucket(bucket).get_blob(name, retry=self._gcs_retry)
            if blob is None:
                raise FileNotFoundError(errno.ENOENT, "not found", uri)
            return blob.size
        raise ValueError(f"{uri}: size() is for object stores")

    def open(self, uri: str) -> BinaryIO:
        """A seekable file (for pyarrow's Parquet reader): on S3 and GCS each read() is one ranged GET
        of exactly what was asked; elsewhere the file itself."""
        scheme = _scheme(uri)
        if scheme in (S3, GCS):
            return _RangeFile(self, uri, self.size(uri))  # type: ignore[return-value]
        if not scheme:
            return _open_local(uri)
        return FileSystems.open(uri, compression_type="uncompressed")


_process_reader: Optional[RangeReader] = None
_process_reader_lock = threading.Lock()


def open_ranged(uri: str) -> BinaryIO:
    """A seekable file for readers such as pyarrow's Parquet reader that read a few ranges of a large
    object (a footer, some column chunks): through one RangeReader per process, so an object-store
    client is built once and each read fetches exactly what it asks for (Beam's own `open` would
    fetch from the position to the end of the object)."""
    global _process_reader
    with _process_reader_lock:
        if _process_reader is None:
            _process_reader = RangeReader()
    return _process_reader.open(uri)


def _open_local(path: str) -> BinaryIO:
    """The file, if it is a regular one; O_NONBLOCK so that opening a FIFO cannot block before fstat
    refuses it."""
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    f = open(fd, "rb", closefd=True)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        f.close()
        raise NotARegularFile(errno.EINVAL, "not a regular file", path)
    return f


class _RangeFile(io.RawIOBase):
    """A read-only, seekable view of an object whose reads are exact ranged GETs."""

    def __init__(self, reader: RangeReader, uri: str, size: int):
        super().__init__()
        self._reader, self._uri, self._size, self._pos = reader, uri, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self._pos, io.SEEK_END: self._size}[whence]
        self._pos = max(0, base + offset)
        return self._pos

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[:len(data)] = data
        return len(data)

    def read(self, size: int = -1) -> bytes:
        if self._pos >= self._size:
            return b""
        length = self._size - self._pos if size is None or size < 0 else min(size, self._size - self._pos)
        data = self._reader.read(self._uri, self._pos, length)
        self._pos += len(data)
        return data

    def readall(self) -> bytes:
        return self.read(-1)
