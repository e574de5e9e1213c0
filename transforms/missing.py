"""The translations a build needs and the store does not hold: the gate that stops a build before it
writes anything, and the report that lists them: OUTPUT/missing_translations/part-NNNNN.jsonl (the
texts with their reason, in sorted parts by hash bucket: transforms/sorted_parts.py) and
OUTPUT/missing_translations.json (counts per language and per reason, one example of each failure's
cause), whose counts a combiner sums from what each part holds.

A translation is missing because it is not in the store and this command does not translate
(`not_in_store`), or its only stored verdict is of older checks and cannot be judged again
(`stale_verdict`: a rejection stored before raw answers were kept; `translate` sends it again), or because the translator failed on it (`failed_<reason>`, e.g. failed_http_500):
failures are not stored, so the next run sends them again."""
from __future__ import annotations

import dataclasses
import json
from collections import Counter
from typing import Iterable, Iterator, Optional

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from schemas.layout import MISSING_SUMMARY, MISSING_TEXTS
from schemas.records import TranslationRequest
from transforms.atomic import join, write_bytes_atomic
from transforms.run_folder import remove_run_dir, run_tmp
from transforms.sorted_parts import PartFormat, WriteSortedParts

NOT_IN_STORE = "not_in_store"
STALE_VERDICT = "stale_verdict"


@dataclasses.dataclass(frozen=True)
class MissingTranslation:
    """A translation the run needs and has no decided outcome for, and why."""

    request: TranslationRequest
    reason: str  # NOT_IN_STORE, STALE_VERDICT, or failed_<reason> (the translator's counter)
    detail: Optional[str] = None  # a failure's cause, in one line (HTTP status and the server's body...)


def _sort_key(m: MissingTranslation) -> tuple:
    return m.request.lang, m.request.text


def _to_json(m: MissingTranslation) -> dict:
    return {"lang": m.request.lang, "text": m.request.text, "text_hash": m.request.text_hash, "reason": m.reason}


def _part_summary(missing: list[MissingTranslation]) -> dict:
    """Counts per language and per reason, and the smallest example of each reason's cause."""
    examples: dict[str, str] = {}
    for m in missing:
        if m.detail is not None:
            examples[m.reason] = min(examples.get(m.reason, m.detail), m.detail)
    return {"per_language": Counter(m.request.lang for m in missing),
            "per_reason": Counter(m.reason for m in missing), "examples": examples}


# 50k lines of ~750 bytes: parts of ~40 MB; a CC12M build with nothing stored (300 M requests)
# lists them in 6,000 parts.
MISSING_PARTS = PartFormat(records_per_part=50_000, sort_key=_sort_key, to_json=_to_json, summarize=_part_summary)


class _MergeSummaries(beam.CombineFn):
    """Per-part summaries -> the report's summary (its size: languages x reasons, never the texts)."""

    def create_accumulator(self) -> dict:
        return {"per_language": Counter(), "per_reason": Counter(), "examples": {}}

    def add_input(self, acc: dict, part: dict) -> dict:
        acc["per_language"].update(part["per_language"])
        acc["per_reason"].update(part["per_reason"])
        for reason, example in part["examples"].items():
            acc["examples"][reason] = min(acc["examples"].get(reason, example), example)
        return acc

    def merge_accumulators(self, accs: Iterable[dict]) -> dict:
        merged = self.create_accumulator()
        for acc in accs:
            self.add_input(merged, acc)
        return merged

    def extract_output(self, acc: dict) -> dict:
        return {"total": sum(acc["per_language"].values()),
                "per_language": dict(sorted(acc["per_language"].items())),
                "per_reason": dict(sorted(acc["per_reason"].items())),
                "examples": dict(sorted(acc["examples"].items())), "texts": MISSING_TEXTS}


class _WriteSummary(beam.DoFn):
    """missing_translations.json, when anything is missing; then the run's folder goes, since the
    build stops here (every other writing step is gated)."""

    def __init__(self, output: str, run_id: str):
        self.output, self.run_id = output, run_id

    def process(self, summary: dict) -> Iterator[dict]:
        if not summary["total"]:
            return
        write_bytes_atomic(join(self.output, MISSING_SUMMARY), json.dumps(summary, indent=2).encode("utf-8"),
                           run_tmp(self.output, self.run_id))
        remove_run_dir(self.output, self.run_id)
        yield summary


class GateOnMissing(beam.PTransform):
    """MissingTranslations -> the side input every writing step consults (their count), after writing
    the report when there are any."""

    def __init__(self, output: str, run_id: str):
        super().__init__()
        self.output, self.run_id = output, run_id

    def expand(self, missing):
        summary = (missing
                   | "WriteTexts" >> WriteSortedParts(join(self.output, MISSING_TEXTS), self.output, self.run_id,
                                                      MISSING_PARTS)
                   | "Summarize" >> beam.CombineGlobally(_MergeSummaries()))
        summary | "WriteSummary" >> beam.ParDo(_WriteSummary(self.output, self.run_id))
        return beam.pvalue.AsSingleton(summary | "Count" >> beam.Map(lambda s: s["total"]))


def read_missing_summary(output: str) -> dict | None:
    path = join(output, MISSING_SUMMARY)
    if not FileSystems.exists(path):
        return None
    with FileSystems.open(path) as f:
        return json.loads(f.read().decode("utf-8"))
