"""Deterministic shard assignment with a hard maximum of samples per shard.

Samples are ranked within their split by the plan's seeded order (a shuffle that never depends on
arrival order). Split and order are functions of the key alone, so ranking needs no sample data:
the order space is cut into buckets, the unique keys per bucket are counted (a small side input of
bucket offsets), and each bucket's samples, grouped once, are ranked on their own. A sample's rank
is its bucket's offset plus its rank inside the bucket; shard = rank // shard_size,
position = rank % shard_size.
"""
from __future__ import annotations

from typing import Mapping

import apache_beam as beam

from schemas.coverage import CoveragePlan

BUCKET_BITS = 12  # 4096 buckets per split: ~2.5k keys per bucket at 10M images

Bucket = tuple[str, int]  # (split, bucket index)


def bucket_of(plan: CoveragePlan, key: str) -> Bucket:
    return plan.split_of(key), plan.order_of(key) >> (64 - BUCKET_BITS)


def _offsets(counts: Mapping[Bucket, int]) -> dict[Bucket, int]:
    """Rank of each bucket's first sample within its split: a running sum in bucket order."""
    offsets, running = {}, {}
    for split, bucket in sorted(counts):
        offsets[(split, bucket)] = running.get(split, 0)
        running[split] = running.get(split, 0) + counts[(split, bucket)]
    return offsets


def shard_position(rank: int, shard_size: int) -> tuple[int, int]:
    """(shard index, position in the shard) of the sample ranked `rank` in its split."""
    return rank // shard_size, rank % shard_size


class BucketOffsets(beam.PTransform):
    """Sample keys (duplicates allowed) -> a singleton side input {(split, bucket): first rank}."""

    def __init__(self, plan: CoveragePlan):
        super().__init__()
        self.plan = plan

    def expand(self, keys):
        plan = self.plan
        return beam.pvalue.AsSingleton(
            keys
            | "UniqueKeys" >> beam.Distinct()
            | "Bucket" >> beam.Map(lambda key: bucket_of(plan, key))
            | "BucketSizes" >> beam.combiners.Count.PerElement()
            | "AsOneDict" >> beam.combiners.ToDict()
            | "Offsets" >> beam.Map(_offsets))
