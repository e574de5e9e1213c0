"""Groupings that report the size of every group they form, so a run shows whether any group grows
with the input (a group is held, or at least iterated, by one worker: the thing that must stay
bounded at CC12M scale).

Each reports a Beam Distribution in namespace "groups" named by the grouping's label (or the `name`
it is given, where one composite transform applies it more than once): for a GroupByKey the number
of values per key after the group; for a CoGroupByKey the number of values per key over all its
inputs (Beam's Python CoGroupByKey builds every group as lists in memory); for a CombinePerKey the
number of inputs per key, counted by a combiner that runs alongside the real one (the combine itself
still holds one accumulator per key, lifted before the shuffle). Its max is the largest group;
`group_maxima` reads them back from a PipelineResult. Counting a GroupByKey's group iterates it once
more (on Dataflow a large group is paged in again from the shuffle, not held).
"""
from __future__ import annotations

from typing import Any, Iterable, Mapping

import apache_beam as beam
from apache_beam.metrics import Metrics
from apache_beam.metrics.metric import MetricsFilter

NAMESPACE = "groups"


def group_size(values: Iterable | Mapping[Any, Iterable]) -> int:
    """Values in one grouped element: a GroupByKey's iterable, or a CoGroupByKey's dict of them."""
    if isinstance(values, Mapping):
        return sum(group_size(v) for v in values.values())
    return sum(1 for _ in values)


def _report(element: tuple, name: str) -> tuple:
    Metrics.distribution(NAMESPACE, name).update(group_size(element[1]))
    return element


class _Measured(beam.PTransform):
    """A grouping whose metric is named `name`, or by the label it is applied with."""

    def __init__(self, name: str = ""):
        super().__init__()
        self.name = name

    @property
    def metric(self) -> str:
        return self.name or self.label


class MeasuredGroupByKey(_Measured):
    """beam.GroupByKey(), reporting each group's size."""

    def expand(self, pcoll):
        return pcoll | "Group" >> beam.GroupByKey() | "GroupSizes" >> beam.Map(_report, self.metric)


class MeasuredCoGroupByKey(_Measured):
    """beam.CoGroupByKey() over a dict of PCollections, reporting each group's size (all inputs)."""

    def expand(self, pcolls):
        return pcolls | "Group" >> beam.CoGroupByKey() | "GroupSizes" >> beam.Map(_report, self.metric)


class _CountingCombineFn(beam.CombineFn):
    """Another CombineFn, with a count of the inputs per key beside its accumulator; the count is
    reported when the key's output is extracted (once per key)."""

    def __init__(self, fn: beam.CombineFn, name: str):
        self.fn, self.name = fn, name

    def setup(self, *args, **kwargs) -> None:
        self.fn.setup(*args, **kwargs)

    def create_accumulator(self) -> tuple[Any, int]:
        return self.fn.create_accumulator(), 0

    def add_input(self, acc: tuple[Any, int], element: Any) -> tuple[Any, int]:
        return self.fn.add_input(acc[0], element), acc[1] + 1

    def merge_accumulators(self, accs: Iterable[tuple[Any, int]]) -> tuple[Any, int]:
        accs = list(accs)  # Beam hands a merge a bounded batch of accumulators
        return self.fn.merge_accumulators(a for a, _ in accs), sum(n for _, n in accs)

    def compact(self, acc: tuple[Any, int]) -> tuple[Any, int]:
        return self.fn.compact(acc[0]), acc[1]

    def extract_output(self, acc: tuple[Any, int]) -> Any:
        Metrics.distribution(NAMESPACE, self.name).update(acc[1])
        return self.fn.extract_output(acc[0])

    def teardown(self, *args, **kwargs) -> None:
        self.fn.teardown(*args, **kwargs)


class MeasuredCombinePerKey(_Measured):
    """beam.CombinePerKey(fn) (a CombineFn or a callable), reporting the inputs per key."""

    def __init__(self, fn: Any, name: str = ""):
        super().__init__(name)
        self.fn = beam.CombineFn.maybe_from_callable(fn)

    def expand(self, pcoll):
        return pcoll | "Combine" >> beam.CombinePerKey(_CountingCombineFn(self.fn, self.metric))


def group_maxima(result: beam.runners.runner.PipelineResult) -> dict[str, int]:
    """The largest group of each measured grouping of a finished run, by label."""
    maxima: dict[str, int] = {}
    for metric in result.metrics().query(MetricsFilter().with_namespace(NAMESPACE))["distributions"]:
        value = metric.committed if metric.committed is not None else metric.attempted
        if value is not None and value.count:
            name = metric.key.metric.name
            maxima[name] = max(maxima.get(name, 0), value.max)
    return maxima
