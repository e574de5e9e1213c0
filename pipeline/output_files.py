"""Reading a finished output's sharded files one part at a time, for verify, report and the tests:
the manifest (manifest/<split>-<index>.parquet, one Parquet part per shard) and the JSONL parts of
rejects/ and missing_translations/. Everything goes through Beam's FileSystems (local disk or an
object store, where a folder is only a prefix: parts are found by listing, never by exists()).

An output of the older single-file layout (manifest.parquet, rejects.jsonl) is refused, naming the
file and saying to rebuild it: reading both layouts would mean two readers to keep right, for
outputs a rebuild replaces with no translator call (the store keeps every translation).
"""
from __future__ import annotations

import json
from typing import Iterator, Optional

import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from schemas.arrow import MANIFEST_SCHEMA
from schemas.errors import InputError
from schemas.layout import LEGACY_FILES, MANIFEST_DIR, PART_NAME, REJECTS_DIR, shard_of_manifest_part
from transforms.atomic import join
from transforms.run_folder import files_under


def refuse_old_layout(output: str) -> None:
    """Raise InputError when `output` holds a file of the older layout."""
    for name in LEGACY_FILES:
        path = join(output, name)
        if FileSystems.exists(path):
            raise InputError(path, "written by an older florenz-data (one file, not a folder of parts); "
                                   "rebuild the output with this version: florenz-data build CONFIG")


def manifest_parts(output: str) -> dict[str, str]:
    """shard (relative path, train/000003.tar) -> its manifest part, for each part in manifest/."""
    parts = {}
    for path in files_under(join(output, MANIFEST_DIR)):
        shard = shard_of_manifest_part(path)
        if shard is not None:
            parts[shard] = path
    return dict(sorted(parts.items()))


def read_manifest_part(path: str, columns: Optional[list[str]] = None) -> pa.Table:
    with FileSystems.open(path, compression_type="uncompressed") as f:
        return pq.read_table(f, columns=columns, schema=MANIFEST_SCHEMA)


def iter_manifest(output: str, columns: Optional[list[str]] = None) -> Iterator[pa.Table]:
    """The manifest, one shard's part at a time, in shard order."""
    for path in manifest_parts(output).values():
        yield read_manifest_part(path, columns)


def read_manifest(output: str, columns: Optional[list[str]] = None) -> pa.Table:
    """The whole manifest as one Arrow table: memory grows with the output, so project the columns
    you need (`pyarrow.dataset.dataset(OUTPUT/manifest)` reads the same folder on a local disk)."""
    empty = MANIFEST_SCHEMA.empty_table()
    return pa.concat_tables([empty.select(columns) if columns else empty, *iter_manifest(output, columns)])


def jsonl_parts(folder: str) -> list[str]:
    """The part-NNNNN.jsonl files of a folder of sorted parts (transforms/sorted_parts.py)."""
    return [p for p in files_under(folder) if PART_NAME.match(p.rsplit("/", 1)[-1])]


def iter_jsonl_parts(folder: str) -> Iterator[dict]:
    """Every record of a folder of parts, streamed line by line, part after part."""
    for path in jsonl_parts(folder):
        with FileSystems.open(path, compression_type="uncompressed") as f:
            for line in f:
                yield json.loads(line)


def iter_rejects(output: str) -> Iterator[dict]:
    """Every rejection: {source, key, level, reason, detail, captions}."""
    return iter_jsonl_parts(join(output, REJECTS_DIR))
