"""Misses -> batches that depend on their requests alone -> answers (translations; the recaption
stage's descriptions through the same AnswerBatches), each batch one store part named by what it
asks; the requests stream through the worker's dispatcher with no barrier between batches.

Idempotent under bundle retries (Dataflow retries a failed bundle, and may run one twice at once):
- a batch is a function of its requests: misses are keyed by (language, first b bits of the text
  hash), b sized from the count of misses per language so that a group averages at most
  GROUP_BATCHES batches at any input size; each group, sorted by text hash, is cut into batch_size
  pieces. However a runner splits the bundles, a retry forms the same batches.
- a batch's part is named by a hash of the fingerprint, the checks version, the language and its
  sorted text hashes (so a part of older checks is never taken for this run's). A
  batch whose part exists is read, not sent; the requests that part lacks (they failed, and failures
  are not stored) are sent as a batch of their own, named by their own hashes.
- what a batch emits is what its part holds, read back after the write: two attempts racing on one
  batch emit the part that won the write, the one the store resolves to on read (prefer_entry). A
  request is in one batch per run, so the run's parts hold one entry per (text, language).

No barrier: a bundle submits a batch and carries on, taking the batches that are done as it goes;
it blocks only while more than max_in_flight + batch_size of its requests are unanswered, and at its
end. So one bundle alone keeps a server at its admission limit across batch boundaries, and the
bundles of every SDK process feeding the same dispatcher share that limit.
"""
from __future__ import annotations

import dataclasses
import hashlib
import os
import uuid
from typing import Any, Iterable, Iterator, Mapping, Optional, Protocol

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.transforms.window import GlobalWindows

from schemas.config import ServedModel, StoreConfig, TranslatorConfig
from schemas.records import STATUS_FAILED, TranslationOutcome, TranslationRequest
from transforms.dispatcher import acquire_dispatcher, count_result, require_api_key_env
from transforms.group_metrics import MeasuredCombinePerKey, MeasuredGroupByKey
from transforms.store_verdicts import checks_version
from transforms.translate import NAMESPACE
from transforms.translation_client import TranslationClient
from transforms.translation_store import part_path, read_part, write_store_part

GROUP_BATCHES = 16  # batches per group of misses, on average at most: bounded, and few partial batches


class Keyed(Protocol):
    """What BatchMisses cuts into batches: a TranslationRequest, or an imported verdict
    (pipeline/import_translations.py, which writes its store parts the same way)."""

    @property
    def text_hash(self) -> str: ...

    @property
    def lang(self) -> str: ...


@dataclasses.dataclass(frozen=True)
class Batch:
    name: str  # its store part's name
    lang: str
    requests: tuple[Keyed, ...]  # sorted by text hash; TranslationRequests in the translate step


def batch_name(fingerprint: str, lang: str, text_hashes: Iterable[str], checks: Optional[str] = None) -> str:
    """The part name of a set of requests under the current checks (`checks`: their version's tag,
    the translation checks' by default): the same set, the same name, whatever the order."""
    key = [fingerprint, f"checks={checks or checks_version()}", lang, *sorted(text_hashes)]
    return hashlib.sha256("\n".join(key).encode()).hexdigest()[:32]


def bucket_bits(misses: int, batch_size: int) -> int:
    """The fewest bits b that cut `misses` into 2^b hash buckets of at most GROUP_BATCHES batches on average."""
    bits = 0
    while misses > (GROUP_BATCHES * batch_size) << bits:
        bits += 1
    return bits


def _bucket(request: Keyed, misses: Mapping[str, int], batch_size: int) -> tuple[tuple[str, int], Keyed]:
    bits = bucket_bits(misses[request.lang], batch_size)
    return (request.lang, int(request.text_hash[:16], 16) >> (64 - bits)), request


def _cut(group: tuple[tuple[str, int], Iterable[Keyed]], fingerprint: str, batch_size: int,
         checks: Optional[str]) -> Iterator[Batch]:
    (lang, _), requests = group
    ordered = sorted(requests, key=lambda r: r.text_hash)
    for start in range(0, len(ordered), batch_size):
        batch = tuple(ordered[start:start + batch_size])
        yield Batch(batch_name(fingerprint, lang, (r.text_hash for r in batch), checks), lang, batch)


class BatchMisses(beam.PTransform):
    """TranslationRequests (or any Keyed elements) -> Batches of at most batch_size, a function of the
    elements' keys alone (and of `checks`, the version tag of the checks judging them)."""

    def __init__(self, fingerprint: str, batch_size: int, checks: Optional[str] = None):
        super().__init__()
        self.fingerprint = fingerprint
        self.batch_size = batch_size
        self.checks = checks

    def expand(self, requests):
        misses = (requests | "Languages" >> beam.Map(lambda r: (r.lang, 1))
                  | "CountMisses" >> MeasuredCombinePerKey(sum))
        return (requests
                | "Bucket" >> beam.Map(_bucket, beam.pvalue.AsDict(misses), self.batch_size)
                | "GroupMisses" >> MeasuredGroupByKey()
                | "Cut" >> beam.FlatMap(_cut, self.fingerprint, self.batch_size, self.checks))


def store_row(outcome: TranslationOutcome, fingerprint: str) -> dict:
    """The store row of a decided outcome: its verdict, the answer it judged and the checks' version."""
    r = outcome.request
    return {"text_hash": r.text_hash, "lang": r.lang, "fingerprint": fingerprint, "source_text": r.text,
            "translation": outcome.translation, "status": outcome.status, "reason": outcome.reason,
            "raw_output": outcome.raw_output, "checks_version": checks_version()}


class BatchParts(Protocol):
    """What AnswerBatches needs of a store: where a batch's part is, its rows, and how an outcome and a
    row map onto each other (TranslationParts here; the recaption stage's DescriptionParts)."""

    namespace: str  # the Beam metrics namespace of the stage
    client: type  # the ChatClient class that answers one request
    fingerprint: str
    checks: Optional[str]  # the checks' version tag, part of the part names

    def part(self, lang: str, name: str) -> str: ...

    def write(self, lang: str, name: str, rows: list[dict]) -> None: ...

    def read(self, path: str) -> list[dict]: ...

    def row(self, outcome: Any) -> dict: ...

    def from_row(self, request: Any, row: dict) -> Any: ...

    def as_stored(self, outcome: Any, row: Optional[dict]) -> Any: ...


class TranslationParts:
    """The translation store's parts, STORE/fingerprint=<fp>/lang=<lang>/part-<batch name>.parquet."""

    namespace = NAMESPACE
    client = TranslationClient
    checks = None

    def __init__(self, store: StoreConfig):
        self.store = store
        self.fingerprint = store.fingerprint

    def part(self, lang: str, name: str) -> str:
        return part_path(self.store.path, self.fingerprint, lang, name)

    def write(self, lang: str, name: str, rows: list[dict]) -> None:
        write_store_part(self.store.path, self.fingerprint, lang, rows, name=name)

    def read(self, path: str) -> list[dict]:
        return read_part(path)

    def row(self, outcome: TranslationOutcome) -> dict:
        return store_row(outcome, self.fingerprint)

    def from_row(self, request: TranslationRequest, row: dict) -> TranslationOutcome:
        return TranslationOutcome(request, row["status"], row["translation"], row["reason"])

    def as_stored(self, outcome: TranslationOutcome, row: Optional[dict]) -> TranslationOutcome:
        """The outcome with the decision its part holds (another attempt's, if that one wrote the part)."""
        if row is None or (row["status"], row["translation"], row["reason"]) == (
                outcome.status, outcome.translation, outcome.reason):
            return outcome
        return dataclasses.replace(outcome, status=row["status"], translation=row["translation"],
                                   reason=row["reason"])


class AnswerBatches(beam.DoFn):
    """Batch -> one outcome per request: read from the batch's part where it exists, else answered
    through the worker's dispatcher and written as that part (failures are emitted, not stored). A
    bundle submits batches while it has at most max_in_flight + batch_size requests unanswered: the
    server's slots, and a batch queued to take each slot as it frees, so one bundle alone keeps a
    server full; it waits for the rest at its end."""

    def __init__(self, parts: BatchParts, served: ServedModel):
        require_api_key_env(served)
        self.parts = parts
        self.served = served
        self._tag = f"florenz-{parts.namespace}-{uuid.uuid4().hex}"  # one dispatcher per pipeline, stage and VM

    def setup(self) -> None:
        self._dispatcher = acquire_dispatcher(self.served, self._tag, self.parts.client)
        self._limit = self._dispatcher.status()["max_in_flight"]
        self._pending: dict[int, Batch] = {}
        self._unanswered = 0

    def start_bundle(self) -> None:
        self._drop_pending()

    def process(self, batch: Batch) -> Iterator[TranslationOutcome]:
        requests, name = list(batch.requests), batch.name
        parts = self.parts
        while FileSystems.exists(parts.part(batch.lang, name)):
            Metrics.counter(parts.namespace, "parts_reused").inc()
            stored = self._rows(batch.lang, name)
            yield from (parts.from_row(r, stored[r.text_hash]) for r in requests if r.text_hash in stored)
            left = [r for r in requests if r.text_hash not in stored]
            if not left or len(left) == len(requests):
                requests = left
                break
            requests, name = left, batch_name(parts.fingerprint, batch.lang, (r.text_hash for r in left), parts.checks)
        if requests:
            self._pending[self._dispatcher.submit(requests, os.getpid())] = Batch(name, batch.lang, tuple(requests))
        yield from self._collect()
        while self._unanswered > self._limit + self.served.batch_size:
            self._dispatcher.wait(list(self._pending), self._limit + self.served.batch_size)
            yield from self._collect()

    def finish_bundle(self) -> Iterator:
        while self._pending:
            self._dispatcher.wait(list(self._pending))
            yield from (GlobalWindows.windowed_value(o) for o in self._collect())
        status = self._dispatcher.status()
        for name in ("max_in_flight", "peak_in_flight", "processes"):
            Metrics.gauge(self.parts.namespace, f"server_{name}").set(status[name])

    def teardown(self) -> None:
        self._drop_pending()

    def _drop_pending(self) -> None:
        """Batches a failed bundle left behind: the retry sends them again (or reads their parts)."""
        if getattr(self, "_pending", None):
            self._dispatcher.cancel(list(self._pending))
        self._pending, self._unanswered = {}, 0

    def _rows(self, lang: str, name: str) -> dict[str, dict]:
        """The rows of a batch's part, by key (the Keyed text_hash)."""
        return {r["text_hash"]: r for r in self.parts.read(self.parts.part(lang, name))}

    def _collect(self) -> Iterator[Any]:
        """The outcomes of the batches that are done, each stored first."""
        if not self._pending:
            return
        done, self._unanswered = self._dispatcher.collect(list(self._pending))
        for ticket, result in done:
            batch = self._pending.pop(ticket)
            count_result(result, self.parts.namespace)
            yield from self._store(batch, result.outcomes)

    def _store(self, batch: Batch, outcomes: list[Any]) -> Iterator[Any]:
        parts = self.parts
        rows = [parts.row(o) for o in outcomes if o.status != STATUS_FAILED]
        stored: dict[str, dict] = {}
        if rows:
            # Another attempt of this bundle may have written the part meanwhile: keep its rows then.
            if not FileSystems.exists(parts.part(batch.lang, batch.name)):
                parts.write(batch.lang, batch.name, rows)
                Metrics.counter(parts.namespace, "store_parts").inc()
            stored = self._rows(batch.lang, batch.name)
        for outcome in outcomes:
            yield parts.as_stored(outcome, stored.get(outcome.request.text_hash))


class TranslateBatches(AnswerBatches):
    """The translate step: batches of TranslationRequests, parts of the translation store."""

    def __init__(self, store: StoreConfig, translator: TranslatorConfig):
        super().__init__(TranslationParts(store), translator)
