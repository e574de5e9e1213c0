"""The translations a build needs and the store does not hold: the gate that stops a build before it
writes anything, and the report that lists them (counts per language and per reason, one example of
each failure's cause, and a JSONL file of the texts with their reason).

A translation is missing because it is not in the store and this command does not translate
(`not_in_store`), or because the translator failed on it (`failed_<reason>`, e.g. failed_http_500):
failures are not stored, so the next run sends them again."""
from __future__ import annotations

import dataclasses
import json
from collections import Counter
from typing import Iterable, Iterator, Optional

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from schemas.records import TranslationRequest
from transforms.atomic import join, write_bytes_atomic

MISSING_TEXTS = "missing_translations.jsonl"
MISSING_SUMMARY = "missing_translations.json"
NOT_IN_STORE = "not_in_store"


@dataclasses.dataclass(frozen=True)
class MissingTranslation:
    """A translation the run needs and has no decided outcome for, and why."""

    request: TranslationRequest
    reason: str  # NOT_IN_STORE, or failed_<reason> (the translator's counter)
    detail: Optional[str] = None  # a failure's cause, in one line (HTTP status and the server's body...)


class _WriteReport(beam.DoFn):
    def __init__(self, output: str):
        self.output = output

    def process(self, item: tuple[None, Iterable[MissingTranslation]]) -> Iterator[dict]:
        missing = sorted(item[1], key=lambda m: (m.request.lang, m.request.text))
        lines = "".join(json.dumps({"lang": m.request.lang, "text": m.request.text, "text_hash": m.request.text_hash,
                                    "reason": m.reason}, ensure_ascii=False) + "\n" for m in missing)
        examples: dict[str, str] = {}
        for m in missing:
            if m.detail is not None:
                examples[m.reason] = min(examples.get(m.reason, m.detail), m.detail)
        summary = {"total": len(missing),
                   "per_language": dict(sorted(Counter(m.request.lang for m in missing).items())),
                   "per_reason": dict(sorted(Counter(m.reason for m in missing).items())),
                   "examples": dict(sorted(examples.items())), "texts": MISSING_TEXTS}
        tmp = join(self.output, "_tmp_missing")
        write_bytes_atomic(join(self.output, MISSING_TEXTS), lines.encode("utf-8"), tmp)
        write_bytes_atomic(join(self.output, MISSING_SUMMARY), json.dumps(summary, indent=2).encode("utf-8"), tmp)
        if FileSystems.exists(tmp):
            FileSystems.delete([tmp])
        yield summary


class GateOnMissing(beam.PTransform):
    """MissingTranslations -> the side input every writing step consults (their count), after writing
    the report when there are any."""

    def __init__(self, output: str):
        super().__init__()
        self.output = output

    def expand(self, missing):
        (missing
         | "OneGroup" >> beam.Map(lambda r: (None, r))
         | "Collect" >> beam.GroupByKey()
         | "WriteReport" >> beam.ParDo(_WriteReport(self.output)))
        return beam.pvalue.AsSingleton(missing | "Count" >> beam.combiners.Count.Globally())


def read_missing_summary(output: str) -> dict | None:
    path = join(output, MISSING_SUMMARY)
    if not FileSystems.exists(path):
        return None
    with FileSystems.open(path) as f:
        return json.loads(f.read().decode("utf-8"))
