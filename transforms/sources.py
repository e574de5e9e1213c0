"""Sources: COCO caption JSON + image folder (transforms/coco_source.py), img2dataset-style
WebDataset tars, Parquet.

Each source PTransform yields a dict with `records` (SourceRecord, tagged with the source name) and
`rejected` (Rejection, for inputs a source can already tell are unusable). Images are referenced,
not carried: a plain tar's member by its byte range, a path as it is; the shard writer reads the
bytes again. What a source has read anyway (a tar member's bytes, a Parquet cell) rides along to
validation, which runs fused right after the source, and no further; an image that no byte range of
its file holds (a Parquet cell, a compressed tar's member) is named only by its origin, and
validation stages it (transforms/staging.py).

What a source does with a bad input, by kind:
- a bad *record* (a COCO image entry without id, a row with a null id, a tar member that cannot be
  used, an image path outside the source's root) is a counted Rejection with a reason; the rest of
  the file is read;
- a bad *file among many* (a truncated, corrupt or empty tar) keeps the records read before the
  break and counts the break as one rejection naming the file and the offset: a job over 10k tars
  must not die for one of them;
- a file that is not what the config says it is (COCO JSON that does not parse or lacks "images", a
  Parquet file without a configured column, a glob that matches nothing) raises InputError naming
  the file: nothing sensible can be read from it, and the config or the data must be fixed.

Image paths named by the data are confined to the source's root (transforms/source_common.py).
"""
from __future__ import annotations

import json
import posixpath
import tarfile
import zlib
from typing import Any, Iterator, Mapping, Optional, Union

import apache_beam as beam
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from schemas.config import CocoSource, ParquetSource, SourceSpec, WebDatasetSource
from schemas.errors import InputError
from schemas.records import ImageRef, Rejection, SourceRecord, sample_key
from transforms.coco_source import ReadCoco
from transforms.range_reader import open_ranged
from transforms.source_common import (MALFORMED, REJECTED, SourceOutput, confine, one_line,
                                      resolve_under)

# Rejection reasons of the tar reader (validation adds the image and caption ones).
MEMBER_UNUSED = "member_unused"
TAR_EMPTY = "tar_empty"
TAR_TRUNCATED = "tar_truncated"
TAR_CORRUPT = "tar_corrupt"
METADATA_UNREADABLE = "metadata_unreadable"
IMAGE_UNREADABLE = "image_unreadable"


def matched_paths(pattern: str, owner: str) -> Iterator[str]:
    """The files a glob matches, on a worker; a pattern matching nothing is a config or data mistake
    (a typo, an unmounted bucket) that must not build an empty dataset with exit 0. `owner` names the
    setting in the error ("source 'coco' field urls")."""
    matches = FileSystems.match([pattern])[0].metadata_list
    if not matches:
        raise InputError(pattern, f"{owner}: the pattern matches no files")
    yield from sorted(m.path for m in matches)


# --- WebDataset tars ------------------------------------------------------------------------------

_IMAGE_MEMBER_EXTS = ("jpg", "jpeg", "png", "webp")


def _wds_captions(spec: WebDatasetSource, members: dict[str, bytes]) -> tuple[Union[str, bytes], ...]:
    if spec.caption == "txt":
        return (members["txt"],) if "txt" in members else ()
    if "json" not in members:
        return ()
    meta = json.loads(members["json"].decode("utf-8"))
    if not isinstance(meta, dict):
        raise ValueError(f"the .json member is a JSON {type(meta).__name__}, not an object")
    value = meta.get(spec.caption[len("json:"):])
    if value is None:
        return ()
    return tuple(value) if isinstance(value, list) else (value,)


class _TrackedTarInfo(tarfile.TarInfo):
    """Remembers on the TarFile why the last header could not be read: tarfile ends the iteration
    quietly on a missing, short or invalid header after the first, so a truncated or corrupt tar
    would otherwise look complete."""

    @classmethod
    def fromtarfile(cls, tar):
        try:
            return super().fromtarfile(tar)
        except tarfile.HeaderError as e:
            tar.florenz_end = e
            raise


def _tar_break(spec: WebDatasetSource, url: str, reason: str, offset: int, detail: str) -> Rejection:
    kept = "; the records before it are kept, the rest of the file is not read" if offset else ""
    return Rejection(spec.name, sample_key(spec.name, f"{posixpath.basename(url)}@{offset}"), "image", reason,
                     f"{url} at byte {offset} of the tar stream: {detail}{kept}")


def parse_webdataset_tar(spec: WebDatasetSource, url: str) -> Iterator[SourceOutput]:
    """Stream one tar (plain, or compressed: gzip, bz2, xz are detected); group members by key.

    The key is the member's basename up to its first dot, as webdataset reads it; a member's role
    comes from its extension: exactly jpg/jpeg/png/webp is the image, exactly the caption member
    (`txt` or `json`) holds the caption. Every other member that carries an image or a caption by
    its last extension (`a.b.jpg`, read by webdataset as key `a`, extension `b.jpg`; a second image
    of a key; `x.de.txt`) is counted and rejected as `member_unused`, so no image or caption
    escapes the accounting.

    A tar that breaks (truncated, corrupt header, gzip stream cut short) keeps the records read
    before the break, and the break is one rejection (`tar_truncated` / `tar_corrupt`) naming the
    file and the offset. An empty (0-byte) tar is a rejection too (`tar_empty`), not an error: it is
    what a failed download leaves, and one of 10k shards must not stop the job; the rejection makes
    it visible in rejects/ and stats.json. (Either break counts as one rejected image: the
    records in the unread rest cannot be counted.)

    Each image member is read here, once: its bytes go along to validation (SourceRecord.data). The
    record refers to the image by byte range in a plain tar (the shard writer reads that range
    again); a compressed tar has no byte ranges to refer to, so there the reference only names the
    member and validation stages the bytes. An image member that the break cuts short is
    `image_unreadable`."""
    caption_ext = "txt" if spec.caption == "txt" else "json"
    state: dict[str, Any] = {"key": None}

    def start(key: Optional[str]) -> None:
        state.update(key=key, members={}, image=None, data=None, cut=None, used=False)

    def flush() -> Iterator[SourceOutput]:
        if state["key"] is None or not state["used"]:
            return
        source_id = f"{posixpath.basename(url)}/{state['key']}"
        key = sample_key(spec.name, source_id)
        try:
            captions = _wds_captions(spec, state["members"])
        except (ValueError, UnicodeDecodeError) as e:
            yield Rejection(spec.name, key, "image", METADATA_UNREADABLE, f"{url}: {state['key']}.json: {e}")
            return
        if state["cut"] is not None:
            yield Rejection(spec.name, key, "image", IMAGE_UNREADABLE,
                            f"{url}: member {state['cut']} is cut short by the break", captions=len(captions))
            return
        yield SourceRecord(spec.name, source_id, key, state["image"], captions, data=state["data"])

    def unused(name: str, level: str, why: str) -> Rejection:
        return Rejection(spec.name, sample_key(spec.name, f"{posixpath.basename(url)}/{name}"), level,
                         MEMBER_UNUSED, f"{url}: member {name}: {why}", captions=1 if level == "caption" else 0)

    start(None)
    tar = None
    with FileSystems.open(url, compression_type="uncompressed") as f:
        try:
            tar = tarfile.open(fileobj=f, mode="r|*", tarinfo=_TrackedTarInfo)
            compressed = tar.fileobj.comptype != "tar"
            while True:
                info = tar.next()
                if info is None:
                    break
                tar.members = []  # stream mode keeps every TarInfo otherwise
                if not info.isfile():
                    continue
                base = posixpath.basename(info.name)
                if "." not in base:
                    continue
                key, ext = base.split(".", 1)
                key = posixpath.join(posixpath.dirname(info.name), key)
                ext = ext.lower()
                role_ext = ext.rsplit(".", 1)[-1]
                if key != state["key"]:
                    yield from flush()
                    start(key)
                if ext in _IMAGE_MEMBER_EXTS and state["image"] is None:
                    state.update(used=True, cut=info.name)  # until its bytes are in: a break leaves it cut
                    data = tar.extractfile(info).read()
                    state.update(cut=None, data=data, image=ImageRef(origin=f"{url}: member {info.name}")
                                 if compressed else ImageRef(url, offset=info.offset_data, length=info.size))
                elif role_ext in _IMAGE_MEMBER_EXTS:
                    why = (f"a second image of key {key!r}" if ext in _IMAGE_MEMBER_EXTS else
                           f"read as key {key!r} with extension {ext!r} (a dot in the key?), not an image member")
                    yield unused(info.name, "image", why)
                elif ext == caption_ext and caption_ext not in state["members"]:
                    state["members"][ext] = tar.extractfile(info).read()
                    state["used"] = True
                elif role_ext == caption_ext:
                    why = (f"a second .{ext} member of key {key!r}" if ext == caption_ext else
                           f"read as key {key!r} with extension {ext!r}; the caption is <key>.{caption_ext}")
                    yield unused(info.name, "caption", why)
            end = getattr(tar, "florenz_end", None)
            if isinstance(end, (tarfile.EmptyHeaderError, tarfile.TruncatedHeaderError)):
                yield from flush()
                start(None)
                yield _tar_break(spec, url, TAR_TRUNCATED, tar.offset,
                                 "the file ends without the tar end-of-archive marker (cut short)")
            elif isinstance(end, tarfile.InvalidHeaderError):
                yield from flush()
                start(None)
                yield _tar_break(spec, url, TAR_CORRUPT, tar.offset, f"invalid tar header ({end})")
        except (tarfile.TarError, EOFError, zlib.error, OSError) as e:
            offset = tar.offset if tar is not None else 0
            yield from flush()
            start(None)
            message = str(e) or type(e).__name__
            if offset == 0 and "empty file" in message:
                yield _tar_break(spec, url, TAR_EMPTY, 0, "the file is empty (0 bytes)")
            elif "unexpected end" in message or "truncated" in message.lower() or isinstance(e, EOFError) \
                    or "Compressed file ended" in message:
                yield _tar_break(spec, url, TAR_TRUNCATED, offset, message)
            else:
                yield _tar_break(spec, url, TAR_CORRUPT, offset, one_line(e))
        yield from flush()


# --- Parquet --------------------------------------------------------------------------------------

def _parquet_columns(spec: ParquetSource) -> dict[str, str]:
    """Configured column -> the config field naming it."""
    fields = ("id_column", "caption_column", "image_column", "image_path_column")
    return {getattr(spec, f): f for f in fields if getattr(spec, f)}


def checked_row_groups(path: str, columns: Mapping[str, str], owner: str) -> Iterator[tuple[str, int]]:
    """(path, row group index) for each row group of one file, after checking from its footer that
    it is Parquet and holds every column of `columns` (column -> the setting naming it); InputError
    naming the file, `owner` ("source 'm30k'") and the setting otherwise."""
    with open_ranged(path) as f:
        try:
            parquet = pq.ParquetFile(f)
        except Exception as e:  # pyarrow raises ArrowInvalid/OSError for a file that is not Parquet
            raise InputError(path, f"{owner}: not a readable Parquet file ({one_line(e)})") from None
        names = parquet.schema_arrow.names
        for column, field in columns.items():
            if column not in names:
                raise InputError(path, f"{owner} {field}: column {column!r} is not in the file; "
                                       f"its columns are {names}")
        groups = parquet.num_row_groups
    for index in range(groups):
        yield path, index


def row_group_rows(path: str, group: int, columns: list[str], owner: str) -> Iterator[dict]:
    """The rows (dicts of `columns`) of one row group, streamed in batches; InputError naming the
    file when it cannot be read."""
    row = 0
    with open_ranged(path) as f:
        try:
            batches = pq.ParquetFile(f).iter_batches(batch_size=256, row_groups=[group], columns=columns)
            for batch in batches:
                for values in batch.to_pylist():
                    yield values
                    row += 1
        except (OSError, ValueError) as e:  # pyarrow: ArrowInvalid (a ValueError), ArrowIOError (OSError)
            raise InputError(path, f"{owner}: row group {group} cannot be read after row {row} "
                                   f"({one_line(e)})") from None


def parquet_row_groups(spec: ParquetSource, path: str) -> Iterator[tuple[str, int]]:
    """(path, row group index) for each row group of one file holding every configured column."""
    return checked_row_groups(path, _parquet_columns(spec), f"source {spec.name!r}")


def read_parquet_row_group(spec: ParquetSource, item: tuple[str, int]) -> Iterator[SourceOutput]:
    """The rows of one row group, streamed in batches, as records or rejections."""
    path, group = item
    rows = row_group_rows(path, group, list(_parquet_columns(spec)), f"source {spec.name!r}")
    for index, values in enumerate(rows):
        yield parse_parquet_row(spec, values, where=(path, group, index))


def parse_parquet_row(spec: ParquetSource, row: dict, where: tuple[str, int, int]) -> SourceOutput:
    """One row -> a record; `where` is (file, row group, row within it): what names the row in a
    rejection and an image cell as its origin.

    A null caption is no caption; every other value (0, "", a list with nulls) is a caption that
    validation judges, so each is counted. A null id is rejected (it would become "None" and
    collide with every other null id). An image cell's bytes go to validation with the record, which
    stages them: no byte range of the file holds a cell, and reading it again would mean reading
    its row group. Image paths are confined to image_root, or without one to the folder of the
    Parquet file."""
    path, group, index = where
    caption = row[spec.caption_column]
    captions = tuple(caption) if isinstance(caption, (list, tuple)) else (() if caption is None else (caption,))
    raw_id = row[spec.id_column]
    if raw_id is None or raw_id == "":
        position = f"{posixpath.basename(path)}:rg{group}:row{index}"
        return Rejection(spec.name, sample_key(spec.name, position), "image", MALFORMED,
                         f"{path} row group {group} row {index}: id_column {spec.id_column!r} is "
                         f"{'null' if raw_id is None else 'empty'}", captions=len(captions))
    source_id = raw_id.decode("utf-8", "replace") if isinstance(raw_id, bytes) else str(raw_id)
    key = sample_key(spec.name, source_id)
    if spec.image_column is not None:
        data = row[spec.image_column]
        if not data:
            return SourceRecord(spec.name, source_id, key, None, captions)
        cell = ImageRef(origin=f"{path}: row group {group}, row {index}, column {spec.image_column}")
        return SourceRecord(spec.name, source_id, key, cell, captions, data=data)
    image_path = row[spec.image_path_column]
    if not image_path:
        return SourceRecord(spec.name, source_id, key, None, captions)
    if not isinstance(image_path, str):
        return Rejection(spec.name, key, "image", MALFORMED, f"image_path_column {spec.image_path_column!r} "
                         f"holds a {type(image_path).__name__}, not a path", captions=len(captions))
    root = spec.image_root or posixpath.dirname(path)
    record = SourceRecord(spec.name, source_id, key, ImageRef(resolve_under(root, image_path)), captions)
    return confine(record, root, spec.allow_outside_root)


# --- the source transform -------------------------------------------------------------------------

class _Route(beam.DoFn):
    """Send Rejections to the `rejected` output, records to the main one."""

    def process(self, element: SourceOutput):
        if isinstance(element, Rejection):
            yield beam.pvalue.TaggedOutput(REJECTED, element)
        else:
            yield element


class ReadSource(beam.PTransform):
    """Read one configured source; returns {"records": ..., "rejected": ...}.

    Globs are matched on a worker (no construction-time listing), files are spread before they are
    opened, and Parquet is read per (file, row group) after each file's footer is checked, which
    keeps row-group parallelism and lets a bad file be named."""

    def __init__(self, spec: SourceSpec):
        super().__init__(label=f"Read[{spec.name}]")
        self.spec = spec

    def expand(self, pbegin):
        spec = self.spec
        if isinstance(spec, CocoSource):
            raw = (pbegin | "Coco" >> ReadCoco(spec)
                   | "Confine" >> beam.Map(lambda r, s=spec: confine(r, s.images, s.allow_outside_root)))
        elif isinstance(spec, WebDatasetSource):
            raw = (pbegin
                   | "Pattern" >> beam.Create([spec.urls])
                   | "Match" >> beam.FlatMap(matched_paths, f"source {spec.name!r} field urls")
                   | "SpreadUrls" >> beam.Reshuffle()
                   | "ParseTars" >> beam.FlatMap(lambda url, s=spec: parse_webdataset_tar(s, url)))
        else:
            raw = (pbegin
                   | "Pattern" >> beam.Create([spec.files])
                   | "Match" >> beam.FlatMap(matched_paths, f"source {spec.name!r} field files")
                   | "SpreadFiles" >> beam.Reshuffle()
                   | "RowGroups" >> beam.FlatMap(lambda path, s=spec: parquet_row_groups(s, path))
                   | "SpreadRowGroups" >> beam.Reshuffle()
                   | "ReadRowGroups" >> beam.FlatMap(lambda item, s=spec: read_parquet_row_group(s, item)))
        routed = raw | "Route" >> beam.ParDo(_Route()).with_outputs(REJECTED, main="records")
        return {"records": routed.records, "rejected": routed[REJECTED]}
