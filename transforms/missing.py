"""The translations a build needs and the store does not hold: the gate that stops a build before it
writes anything, and the report that lists them (counts per language + a JSONL file of the texts)."""
from __future__ import annotations

import json
from collections import Counter
from typing import Iterable, Iterator

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from schemas.records import TranslationRequest
from transforms.atomic import join, write_bytes_atomic

MISSING_TEXTS = "missing_translations.jsonl"
MISSING_SUMMARY = "missing_translations.json"


class _WriteReport(beam.DoFn):
    def __init__(self, output: str):
        self.output = output

    def process(self, item: tuple[None, Iterable[TranslationRequest]]) -> Iterator[dict]:
        requests = sorted(item[1], key=lambda r: (r.lang, r.text))
        lines = "".join(json.dumps({"lang": r.lang, "text": r.text, "text_hash": r.text_hash}, ensure_ascii=False)
                        + "\n" for r in requests)
        summary = {"total": len(requests), "per_language": dict(sorted(Counter(r.lang for r in requests).items())),
                   "texts": MISSING_TEXTS}
        tmp = join(self.output, "_tmp_missing")
        write_bytes_atomic(join(self.output, MISSING_TEXTS), lines.encode("utf-8"), tmp)
        write_bytes_atomic(join(self.output, MISSING_SUMMARY), json.dumps(summary, indent=2).encode("utf-8"), tmp)
        if FileSystems.exists(tmp):
            FileSystems.delete([tmp])
        yield summary


class GateOnMissing(beam.PTransform):
    """missing TranslationRequests -> the side input every writing step consults (their count), after
    writing the report when there are any."""

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
