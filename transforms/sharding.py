"""Deterministic shard assignment with a hard maximum of samples per shard.

Samples are ranked within their split by the plan's seeded order (a shuffle that never depends on
arrival order). Ranking is done without collecting a split on one worker: the order space is cut
into buckets, bucket sizes are counted (a small side input), each bucket's (order, key) pairs are
sorted on their own, and a sample's rank is its bucket's offset plus its rank inside the bucket.
shard = rank // shard_size, position = rank % shard_size.
"""
from __future__ import annotations

from typing import Iterable, Iterator, Mapping

import apache_beam as beam

BUCKET_BITS = 12  # 4096 buckets per split: ~2.5k keys per bucket at 10M images


def _bucket(order: int) -> int:
    return order >> (64 - BUCKET_BITS)


def _offsets(counts: Mapping[tuple[str, int], int]) -> dict[tuple[str, int], int]:
    """Rank of each bucket's first sample within its split: a running sum in bucket order."""
    offsets, running = {}, {}
    for split, bucket in sorted(counts):
        offsets[(split, bucket)] = running.get(split, 0)
        running[split] = running.get(split, 0) + counts[(split, bucket)]
    return offsets


def _rank_bucket(item: tuple[tuple[str, int], Iterable[tuple[int, str]]],
                 offsets: Mapping[tuple[str, int], int], shard_size: int) -> Iterator:
    (split, bucket), members = item
    offset = offsets[(split, bucket)]
    for i, (_, key) in enumerate(sorted(members)):
        rank = offset + i
        yield key, (split, rank // shard_size, rank % shard_size)


class AssignShards(beam.PTransform):
    """(key, PlannedSample) -> ((split, shard_index), (position, PlannedSample))."""

    def __init__(self, shard_size: int):
        super().__init__()
        self.shard_size = shard_size

    def expand(self, samples):
        orders = samples | "Order" >> beam.MapTuple(
            lambda key, s: ((s.split, _bucket(s.order)), (s.order, key)))
        offsets = (orders
                   | "BucketSizes" >> beam.combiners.Count.PerKey()
                   | "AsOneDict" >> beam.combiners.ToDict()
                   | "Offsets" >> beam.Map(_offsets))
        positions = (orders
                     | "GroupBuckets" >> beam.GroupByKey()
                     | "Rank" >> beam.FlatMap(_rank_bucket, offsets=beam.pvalue.AsSingleton(offsets),
                                              shard_size=self.shard_size))
        return ({"sample": samples, "position": positions}
                | "JoinPositions" >> beam.CoGroupByKey()
                | "ByShard" >> beam.MapTuple(_by_shard))


def _by_shard(key: str, grouped: dict) -> tuple[tuple[str, int], tuple[int, object]]:
    (sample,) = grouped["sample"]
    ((split, shard, position),) = grouped["position"]
    return (split, shard), (position, sample)
