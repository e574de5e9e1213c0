"""No grouping of a build grows with its input: every GroupByKey, CoGroupByKey and CombinePerKey
reports its largest group as a Beam metric (transforms/group_metrics.py), read here from the
PipelineResult of real builds at two sizes, with an empty and a full translation store. CI runs
300 vs 3,000 records with small buckets and shards; benchmarks/group_bounds.py runs the same
checks at 5,000 vs 50,000 (README, "Running at CC12M scale"). The plan is the paper's, held-out
languages paired with other images' captions: pairing happens inside the bucket's group and adds
none."""
from __future__ import annotations

import filecmp

import pytest

from benchmarks.group_bounds import (bounds, build_and_measure, check, fill_store, make_synthetic, plan,
                                     unmeasured)
from tests.helpers import require_coco_sample

SMALL, LARGE = 300, 3000
PLAN = plan(shard_size=100, images_per_bucket=32)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    require_coco_sample()
    root = tmp_path_factory.mktemp("groups")
    data = {n: make_synthetic(n, root) for n in (SMALL, LARGE)}
    fill_store(root / "full", data[SMALL].texts | data[LARGE].texts, "bench")
    return root, data


def test_no_group_grows_with_the_input(inputs):
    root, data = inputs
    runs = []
    for store in ("empty", "full"):
        small, large = (build_and_measure(data[n], root, root / store, PLAN) for n in (SMALL, LARGE))
        assert check(small.maxima, large.maxima, PLAN, LARGE) == [], (store, small.maxima, large.maxima)
        assert large.stats["images"]["balanced"] and large.stats["images"]["written"] > 0.95 * LARGE
        runs += [small.maxima, large.maxima]
    assert unmeasured(runs, PLAN) == []
    assert runs[-1]["GroupShards"] == PLAN["shard_size"]  # the largest group is a full shard
    assert runs[-1]["JoinStore"] == bounds(PLAN)["JoinStore"][0]  # a bucket set + every language's entry


def test_one_bucket_for_every_image_is_caught(inputs):
    """The check fails on a grouping that does grow: with a bucket larger than the input, all images
    meet in one group."""
    root, data = inputs
    one_bucket = plan(shard_size=100, images_per_bucket=10**6)
    small, large = (build_and_measure(data[n], root, root / "empty", one_bucket) for n in (SMALL, LARGE))
    problems = check(small.maxima, large.maxima, one_bucket, LARGE)
    assert any(p.startswith("JoinBuckets: grew") for p in problems), problems
    assert any(p.startswith("BucketSizes: grew") for p in problems), problems


def test_the_bucket_size_changes_the_groups_not_the_output(inputs):
    """With own_caption pairing; other_image pairs within a bucket, so there the bucket size also
    chooses the partners of the images at a bucket's end (tests/test_translation_pairing.py)."""
    root, data = inputs
    outputs = []
    for per_bucket in (8, 10**6):  # 64 buckets, or one
        build_and_measure(data[SMALL], root, root / "full",
                          plan(shard_size=50, images_per_bucket=per_bucket, translation_pairing="own_caption"),
                          name=f"per-bucket-{per_bucket}")
        outputs.append(root / f"out-per-bucket-{per_bucket}")
    tars = sorted(p.relative_to(outputs[0]) for p in outputs[0].rglob("*.tar"))
    assert len(tars) >= 6 and tars == sorted(p.relative_to(outputs[1]) for p in outputs[1].rglob("*.tar"))
    _, mismatch, errors = filecmp.cmpfiles(outputs[0], outputs[1], [str(t) for t in tars], shallow=False)
    assert mismatch == [] and errors == []


def test_bucket_bits_keep_buckets_near_their_size():
    from transforms.sharding import bucket_bits

    assert [bucket_bits(n, 4096) for n in (0, 4096, 4097, 8192, 8193)] == [0, 0, 1, 1, 2]
    assert bucket_bits(12_000_000, 4096) == 12  # CC12M: 4096 buckets of ~2,930 images
    for n in (1, 1000, 123_457, 12_000_000):
        bits = bucket_bits(n, 1000)
        assert n / 2**bits <= 1000 and (bits == 0 or n / 2**(bits - 1) > 1000)


@pytest.mark.parametrize("value", [0, -5, 2.5, True, "4096"])
def test_a_bucket_size_that_is_not_a_positive_integer_is_refused(value):
    from schemas.coverage import CoveragePlan
    from schemas.errors import ConfigError

    with pytest.raises(ConfigError, match="plan.images_per_bucket: must be a positive integer"):
        CoveragePlan.from_dict({**PLAN, "images_per_bucket": value})
