"""Deterministic shard assignment with a hard maximum of samples per shard.

Samples are ranked within their split by the plan's seeded order (a shuffle that never depends on
arrival order). Order is a function of the key alone and the split of (key, content hash), so
ranking needs no sample data: the order space is cut into 2^b buckets, the kept images per (split,
bucket) are counted (a small side input of offsets), and each bucket's samples, grouped once, are
ranked on their own. A sample's rank is its (split, bucket) offset plus its rank inside the bucket;
shard = rank // shard_size, position = rank % shard_size.

b is sized from the input: the smallest b with count / 2^b <= plan.images_per_bucket, so a bucket's
group stays near that size however many images there are (12 M images, 4096 per bucket: b = 12,
~2,900 images per bucket). Buckets cut the order space in order, so ranks, shards and positions are
the same for every b: b changes how the work is grouped, never where a sample goes (other_image
translation pairing, which pairs within a bucket, is the one thing b also chooses: transforms/coverage.py).
"""
from __future__ import annotations

from typing import Mapping

import apache_beam as beam

from schemas.coverage import CoveragePlan
from transforms.group_metrics import MeasuredCombinePerKey

Bucket = tuple[str, int]  # (split, bucket index)


def bucket_bits(images: int, images_per_bucket: int) -> int:
    """The fewest bits b such that `images` spread over 2^b buckets average <= images_per_bucket."""
    return (max(1, -(-images // images_per_bucket)) - 1).bit_length()


def bucket_of(plan: CoveragePlan, key: str, bits: int) -> int:
    """The order bucket of a key; every image under one key meets in it, whatever its split."""
    return plan.order_of(key) >> (64 - bits) if bits else 0


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


class BucketBits(beam.PTransform):
    """Images -> a singleton side input: the bucket bits for their count (`bucket_bits`)."""

    def __init__(self, plan: CoveragePlan):
        super().__init__()
        self.plan = plan

    def expand(self, images):
        return beam.pvalue.AsSingleton(
            images
            | "CountImages" >> beam.combiners.Count.Globally()
            | "Bits" >> beam.Map(bucket_bits, self.plan.images_per_bucket))


class BucketOffsets(beam.PTransform):
    """(key, rank of the image under it) per image, where the smallest rank is the image kept for the
    key -> a singleton side input {(split, bucket): first rank}: 2 x 2^b entries at most."""

    def __init__(self, plan: CoveragePlan, bits: beam.pvalue.AsSingleton):
        super().__init__()
        self.plan, self.bits = plan, bits

    def expand(self, ranked_keys):
        plan = self.plan

        def split_bucket(kept: tuple[str, tuple[str, str]], bits: int) -> tuple[Bucket, None]:
            key, (_, sha256) = kept
            return (plan.split_of(key, sha256), bucket_of(plan, key, bits)), None

        return beam.pvalue.AsSingleton(
            ranked_keys
            | "KeptPerKey" >> MeasuredCombinePerKey(min)
            | "Bucket" >> beam.Map(split_bucket, bits=self.bits)
            | "BucketSizes" >> MeasuredCombinePerKey(beam.combiners.CountCombineFn())
            | "AsOneDict" >> beam.combiners.ToDict()
            | "Offsets" >> beam.Map(_offsets))
