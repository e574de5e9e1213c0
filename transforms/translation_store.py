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
from typing import Iterable, Mapping, Optional

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from schemas.arrow import STATUS_ACCEPTED, TRANSLATION_SCHEMA
from schemas.config import StoreConfig
from transforms.atomic import join, write_bytes_atomic

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


def store_parts(store_path: str) -> list[str]:
    """Paths of the store's complete parts (temporary files live elsewhere and never match)."""
    matches = FileSystems.match([join(store_path, PART_GLOB)])[0].metadata_list
    return sorted(m.path for m in matches)


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
        if not store_parts(self.store.path):
            return pbegin | "EmptyStore" >> beam.Create([])
        fingerprint, languages = self.store.fingerprint, self.languages
        return (pbegin
                | "ReadParts" >> beam.io.ReadFromParquet(join(self.store.path, PART_GLOB))
                | "Mine" >> beam.Filter(lambda r: r["fingerprint"] == fingerprint and r["lang"] in languages)
                | "ByKey" >> beam.Map(lambda r: ((r["text_hash"], r["lang"]),
                                                 StoreEntry(r["status"], r["translation"], r["reason"])))
                | "OnePerKey" >> beam.CombinePerKey(prefer_entry))
