"""The translation store: append-only Parquet parts keyed by (text hash, language, fingerprint).

Parts are content-addressed (named by a hash of their rows), written atomically, and never changed,
so concurrent writers and re-runs cannot corrupt it. Readers merge all parts; where a key has several
entries (two runs raced, or a rejection was retried), an accepted one beats a rejected one and the
lexicographically smallest translation wins, so reads are deterministic.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
from typing import Iterable, Iterator, Mapping, Optional

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from schemas.arrow import STATUS_ACCEPTED, TRANSLATION_SCHEMA
from schemas.config import StoreConfig
from schemas.errors import InputError
from transforms.atomic import glob_escape, join, write_bytes_atomic
from transforms.group_metrics import MeasuredCombinePerKey
from transforms.range_reader import open_ranged

PART_GLOB = "part-*.parquet"


def write_store_part(store_path: str, rows: Iterable[Mapping[str, object]]) -> str:
    """Append one part holding `rows` (dicts of TRANSLATION_SCHEMA's fields); returns its path."""
    table = pa.Table.from_pylist(sorted(rows, key=lambda r: (r["text_hash"], r["lang"], r["fingerprint"])),
                                 schema=TRANSLATION_SCHEMA)
    buffer = io.BytesIO()
    pq.write_table(table, buffer, compression="zstd")
    data = buffer.getvalue()
    path = join(store_path, f"part-{hashlib.sha256(data).hexdigest()[:24]}.parquet")
    write_bytes_atomic(path, data, join(store_path, "_tmp"))
    return path


def parts_pattern(store_path: str, prefix: str = "") -> str:
    """The FileSystems.match pattern of the store's parts (those whose content hash starts with
    `prefix`); the store's own path is matched literally (a store at /data/run[1]/store is read back)."""
    return join(glob_escape(store_path), PART_GLOB.replace("*", f"{prefix}*", 1))


def store_parts(store_path: str) -> list[str]:
    """Paths of the store's complete parts (temporary files live elsewhere and never match)."""
    matches = FileSystems.match([parts_pattern(store_path)])[0].metadata_list
    return sorted(m.path for m in matches)


_DAMAGED_PART = ("store parts are written whole (temporary name, then rename), so this one was damaged after it "
                 "was written (a partial copy or sync?): restore it from where the store was copied from, or move "
                 "it out of the store folder; the translations it held are then missing and `florenz-data "
                 "translate` sends them again")


def _one_line(error: BaseException) -> str:
    return " ".join(f"{type(error).__name__}: {error}".split())


def part_row_groups(path: str) -> Iterator[tuple[str, int]]:
    """(part, row group index) for each row group of one store part, after reading its footer;
    a part that is not readable Parquet raises InputError naming it and saying what to do."""
    with open_ranged(path) as f:
        try:
            groups = pq.ParquetFile(f).num_row_groups
        except Exception as e:  # pyarrow: ArrowInvalid, OSError
            raise InputError(path, f"translation store part is not readable Parquet ({_one_line(e)}); "
                                   f"{_DAMAGED_PART}") from None
    for index in range(groups):
        yield path, index


def read_part_row_group(item: tuple[str, int], fingerprint: str,
                        languages: frozenset[str]) -> Iterator[tuple[tuple[str, str], "StoreEntry"]]:
    """((text_hash, lang), StoreEntry) of one row group of one part, for one fingerprint and languages."""
    path, group = item
    columns = ["text_hash", "lang", "fingerprint", "status", "translation", "reason"]
    with open_ranged(path) as f:
        try:
            for batch in pq.ParquetFile(f).iter_batches(batch_size=4096, row_groups=[group], columns=columns):
                for r in batch.to_pylist():
                    if r["fingerprint"] == fingerprint and r["lang"] in languages:
                        yield (r["text_hash"], r["lang"]), StoreEntry(r["status"], r["translation"], r["reason"])
        except (OSError, ValueError) as e:  # pyarrow: ArrowInvalid (ValueError), ArrowIOError (OSError)
            raise InputError(path, f"translation store part: row group {group} cannot be read "
                                   f"({_one_line(e)}); {_DAMAGED_PART}") from None


@dataclasses.dataclass(frozen=True)
class StoreEntry:
    status: str  # accepted | rejected
    translation: Optional[str]
    reason: Optional[str]


def prefer_entry(entries: Iterable[StoreEntry]) -> StoreEntry:
    """One entry per key, whatever the part order: any accepted beats rejected; ties by content."""
    return min(entries, key=lambda e: (e.status != STATUS_ACCEPTED, e.translation or "", e.reason or ""))


class ReadStoreEntries(beam.PTransform):
    """((text_hash, lang), StoreEntry) for one translator fingerprint and the given languages."""

    def __init__(self, store: StoreConfig, languages: Iterable[str]):
        super().__init__()
        self.store = store
        self.languages = frozenset(languages)

    def expand(self, pbegin):
        # Parts are listed on workers, by the first two hex digits of their content hash, so no one
        # worker lists them all (at CC12M scale a store holds ~1.2 M parts, one per translate batch);
        # an empty or new store matches nothing, which is fine. They are read per (part, row group)
        # after each footer is checked, so a damaged part is named.
        fingerprint, languages = self.store.fingerprint, self.languages
        patterns = [parts_pattern(self.store.path, f"{i:02x}") for i in range(256)]
        return (pbegin
                | "Patterns" >> beam.Create(patterns)
                | "SpreadPatterns" >> beam.Reshuffle()
                | "MatchParts" >> beam.FlatMap(lambda pattern: sorted(
                    m.path for m in FileSystems.match([pattern])[0].metadata_list))
                | "SpreadParts" >> beam.Reshuffle()
                | "RowGroups" >> beam.FlatMap(part_row_groups)
                | "SpreadRowGroups" >> beam.Reshuffle()
                | "ReadRowGroups" >> beam.FlatMap(read_part_row_group, fingerprint, languages)
                | "OnePerKey" >> MeasuredCombinePerKey(prefer_entry))
