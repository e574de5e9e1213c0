"""The rejects: every Rejection as one JSONL line in OUTPUT/rejects/part-NNNNN.jsonl (sorted parts
by hash bucket, transforms/sorted_parts.py), and the counts stats.json needs per (source, level,
reason), summed by a combiner from what each part holds."""
from __future__ import annotations

from collections import Counter
from typing import Optional

import apache_beam as beam

from schemas.layout import REJECTS_DIR
from schemas.records import Rejection
from transforms.atomic import join
from transforms.counting import sum_pairs
from transforms.group_metrics import MeasuredCombinePerKey
from transforms.sorted_parts import PartFormat, WriteSortedParts


def _sort_key(r: Rejection) -> tuple:
    return r.source, r.key, r.level, r.reason


def _part_counts(rejects: list[Rejection]) -> list[tuple[tuple[str, str, str], tuple[int, int]]]:
    """((source, level, reason), (rejections, captions they remove)) for one part."""
    counts: Counter = Counter()
    captions: Counter = Counter()
    for r in rejects:
        counts[(r.source, r.level, r.reason)] += 1
        captions[(r.source, r.level, r.reason)] += r.captions
    return [(key, (n, captions[key])) for key, n in sorted(counts.items())]


# 50k records of ~300 bytes: parts of ~15 MB, one sorted by one worker (a few times that in memory);
# a CC12M run rejecting every caption and image (~72 M lines) writes ~1,440 parts.
REJECT_PARTS = PartFormat(records_per_part=50_000, sort_key=_sort_key, to_json=Rejection.to_json, summarize=_part_counts)


def _summary_row(key: tuple[str, str, str], counts: tuple[int, int]) -> tuple[str, str, str, int, int]:
    source, level, reason = key
    rejections, captions = counts
    return source, level, reason, rejections if level == "image" else 0, captions


class WriteRejects(beam.PTransform):
    """Rejections -> rejects/part-NNNNN.jsonl; yields (source, level, reason, images, captions) rows
    (transforms/accounting.py), after the parts holding them are written."""

    def __init__(self, output: str, run_id: str, gate: Optional[dict] = None):
        super().__init__()
        self.output, self.run_id, self.gate = output, run_id, gate

    def expand(self, rejections):
        return (rejections
                | "Write" >> WriteSortedParts(join(self.output, REJECTS_DIR), self.output, self.run_id,
                                              REJECT_PARTS, self.gate)
                | "PerReason" >> beam.FlatMap(lambda counts: counts)
                | "Sum" >> MeasuredCombinePerKey(sum_pairs, name="RejectCounts")
                | "Rows" >> beam.MapTuple(_summary_row))
