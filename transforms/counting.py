"""Summing small dicts of counts across a PCollection (for stats.json sections)."""
from __future__ import annotations

from collections import Counter
from typing import Iterable, Mapping

import apache_beam as beam


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
