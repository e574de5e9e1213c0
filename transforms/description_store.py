"""The description store: Parquet parts keyed by (image sha256, request fingerprint), in hive-style
partitions STORE/fingerprint=<fp>/part-<batch name>.parquet (schemas/descriptions.py's schema).

Append-only, like the translation store (transforms/translation_store.py, whose listing, atomic
writes and Parquet encoding it uses): a part is one recaption batch, written whole (temporary name,
then rename) and never changed, named by a hash of the fingerprint, the checks version and its images'
hashes (transforms/translate_batches.batch_name), so a retried bundle reads its part instead of asking
again. Readable without this project: `pyarrow.dataset.dataset(STORE, partitioning="hive")`.

A run reads one fingerprint's partition, its parts listed in 16 slices by the first hex digit of
their names, each part read by a worker, and one entry kept per image (accepted before rejected, then
by content, so the choice never depends on order). Rows judged by other checks versions are not used:
their images are asked again under the current checks (a new part; the old stays).
"""
from __future__ import annotations

from typing import Iterator, NamedTuple, Optional
from urllib.parse import quote

import apache_beam as beam
import pyarrow.parquet as pq

from schemas.arrow import STATUS_ACCEPTED
from schemas.descriptions import DESCRIPTION_SCHEMA, DescriptionOutcome, DescriptionRequest
from schemas.errors import InputError
from transforms.atomic import join, write_bytes_atomic
from transforms.description_checks import CHECKS_TAG, CHECKS_VERSION
from transforms.description_client import DescriptionClient
from transforms.group_metrics import MeasuredCombinePerKey
from transforms.range_reader import open_ranged
from transforms.translation_store import APPENDED_SLICES, TMP, list_appended, parquet_bytes, part_file

NAMESPACE = "recaption"  # Beam metrics of the recaption stage


def partition_dir(store: str, fingerprint: str) -> str:
    return join(store, f"fingerprint={quote(fingerprint, safe='')}")


def part_path(store: str, fingerprint: str, name: str) -> str:
    return join(partition_dir(store, fingerprint), part_file(name))


def read_part(path: str) -> list[dict]:
    with open_ranged(path) as f:
        try:
            return pq.read_table(f).to_pylist()
        except (OSError, ValueError) as error:
            raise InputError(path, f"description store part is not readable Parquet ({type(error).__name__}: "
                                   f"{error}); parts are written whole, so it was damaged afterwards: move it "
                                   "out of the store and `florenz-data recaption` asks for its images again") from None


class DescriptionEntry(NamedTuple):
    status: str  # accepted | rejected
    description: Optional[str]
    reason: Optional[str]


def prefer(entries) -> DescriptionEntry:
    """One entry per image, whatever the order parts are read in."""
    return min(entries, key=lambda e: (e.status != STATUS_ACCEPTED, e.description or "", e.reason or "", e.status))


class DescriptionParts:
    """The description store as AnswerBatches' parts (transforms/translate_batches.py)."""

    namespace = NAMESPACE
    client = DescriptionClient
    checks = CHECKS_TAG

    def __init__(self, store: str, fingerprint: str):
        self.store = store
        self.fingerprint = fingerprint

    def part(self, lang: str, name: str) -> str:
        return part_path(self.store, self.fingerprint, name)

    def write(self, lang: str, name: str, rows: list[dict]) -> None:
        write_bytes_atomic(self.part(lang, name), parquet_bytes(rows, DESCRIPTION_SCHEMA), join(self.store, TMP))

    def read(self, path: str) -> list[dict]:
        return [{**r, "text_hash": r["image_sha256"]} for r in read_part(path)]

    def row(self, outcome: DescriptionOutcome) -> dict:
        return {"image_sha256": outcome.request.image_sha256, "fingerprint": self.fingerprint,
                "description": outcome.description, "status": outcome.status, "reason": outcome.reason,
                "raw_output": outcome.raw_output, "finish_reason": outcome.finish_reason,
                "checks_version": CHECKS_VERSION}

    def from_row(self, request: DescriptionRequest, row: dict) -> DescriptionOutcome:
        return DescriptionOutcome(request, row["status"], row["description"], row["reason"], row["raw_output"],
                                  row["finish_reason"])

    def as_stored(self, outcome: DescriptionOutcome, row: Optional[dict]) -> DescriptionOutcome:
        """The outcome with the decision its part holds (another attempt's, if that one wrote the part)."""
        if row is None or (row["status"], row["description"], row["reason"]) == (
                outcome.status, outcome.description, outcome.reason):
            return outcome
        return self.from_row(outcome.request, row)


def _list_slice(slice_: str, directory: str) -> Iterator[str]:
    yield from list_appended(directory, slice_)


def _entries(path: str) -> Iterator[tuple[str, DescriptionEntry]]:
    for row in read_part(path):
        if row["checks_version"] == CHECKS_VERSION:
            yield row["image_sha256"], DescriptionEntry(row["status"], row["description"], row["reason"])
        else:
            beam.metrics.Metrics.counter(NAMESPACE, "other_checks_on_read").inc()


class ReadDescriptions(beam.PTransform):
    """(image sha256, DescriptionEntry) of one fingerprint, one per image. Nothing is listed while the
    graph is built; one worker lists one slice (~1/16 of the partition's part names) and reads one
    part at a time (batch_size rows): nothing grows with the store on one worker but a slice's names."""

    def __init__(self, store: str, fingerprint: str):
        super().__init__()
        self.store = store
        self.fingerprint = fingerprint

    def expand(self, pbegin):
        return (pbegin
                | "Slices" >> beam.Create(APPENDED_SLICES)
                | "SpreadSlices" >> beam.Reshuffle()
                | "ListParts" >> beam.FlatMap(_list_slice, partition_dir(self.store, self.fingerprint))
                | "SpreadParts" >> beam.Reshuffle()
                | "ReadParts" >> beam.FlatMap(_entries)
                | "OnePerImage" >> MeasuredCombinePerKey(prefer))
