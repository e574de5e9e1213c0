"""Deterministic shard assignment with a hard maximum of samples per shard.

Samples are ranked within their split by the plan's seeded order (a shuffle that never depends on
arrival order). Order is a function of the key alone and the split of (key, content hash), so
ranking needs no sample data: the order space is cut into buckets, the kept images per (split,
bucket) are counted (a small side input of offsets), and each bucket's samples, grouped once, are
ranked on their own. A sample's rank is its (split, bucket) offset plus its rank inside the bucket;
shard = rank // shard_size, position = rank % shard_size.
"""
from __future__ import annotations

from typing import Mapping

import apache_beam as beam

from schemas.coverage import CoveragePlan

BUCKET_BITS = 12  # 4096 buckets: ~3k images per bucket at 12M images

Bucket = tuple[str, int]  # (split, bucket index)


def bucket_of(plan: CoveragePlan, key: str) -> int:
    """The order bucket of a key; every image under one key meets in it, whatever its split."""
    return plan.order_of(key) >> (64 - BUCKET_BITS)


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
    """(key, rank of the image under it) per image, where the smallest rank is the image kept for the
    key -> a singleton side input {(split, bucket): first rank}."""

    def __init__(self, plan: CoveragePlan):
        super().__init__()
        self.plan = plan

    def expand(self, ranked_keys):
        plan = self.plan
        return beam.pvalue.AsSingleton(
            ranked_keys
            | "KeptPerKey" >> beam.CombinePerKey(min)
            | "Bucket" >> beam.MapTuple(lambda key, rank: (plan.split_of(key, rank[1]), bucket_of(plan, key)))
            | "BucketSizes" >> beam.combiners.Count.PerElement()
            | "AsOneDict" >> beam.combiners.ToDict()
            | "Offsets" >> beam.Map(_offsets))
