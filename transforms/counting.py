"""Summing small dicts of counts across a PCollection (for stats.json sections)."""
from __future__ import annotations

from collections import Counter
from typing import Iterable, Mapping

import apache_beam as beam
from apache_beam.metrics.metric import MetricsFilter


class SumCounts(beam.CombineFn):
    """Mapping[str, int] elements -> one dict with the per-key sums (keys sorted)."""

    def create_accumulator(self) -> Counter:
        return Counter()

    def add_input(self, acc: Counter, counts: Mapping[str, int]) -> Counter:
        acc.update(counts)
        return acc

    def merge_accumulators(self, accs: Iterable[Counter]) -> Counter:
        total = Counter()
        for acc in accs:
            total.update(acc)
        return total

    def extract_output(self, acc: Counter) -> dict[str, int]:
        return dict(sorted(acc.items()))


def sum_pairs(pairs: Iterable[tuple[int, int]]) -> tuple[int, int]:
    """Element-wise sum of (a, b) pairs: a CombinePerKey function (associative, so Beam may apply
    it to partial sums)."""
    first = second = 0
    for a, b in pairs:
        first += a
        second += b
    return first, second


def counter_totals(result: beam.runners.runner.PipelineResult, namespace: str) -> dict[str, int]:
    """The Beam counters of one namespace after a finished run, by name (committed values where the
    runner has them, else attempted), for the commands that print their counts."""
    totals: dict[str, int] = {}
    for counter in result.metrics().query(MetricsFilter().with_namespace(namespace))["counters"]:
        value = counter.committed if counter.committed is not None else counter.attempted
        totals[counter.key.metric.name] = totals.get(counter.key.metric.name, 0) + (value or 0)
    return dict(sorted(totals.items()))
