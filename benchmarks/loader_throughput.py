"""Benchmark: the training loader's images per second per core, reading the copy the build resized
(config `resized`, `<key>.224.jpg`) against the path it replaces (decode the full JPEG, bicubic resize,
ToTensor + Normalize on the CPU), in the same run; and how many cores one H100 needs to feed training.

    .venv/bin/python benchmarks/loader_throughput.py [--output OUT] [--samples 2000] [--image-size 224]

OUT is a pipeline output built with a `resized` section at --image-size (square mode); without
--output one is built in a temporary folder from the COCO sample (/work/shared/data, as the tests build
theirs: a store fixture in place of translations). Per-core rows run pinned to one core: the transform
rows on samples already read from the tars, the loader rows reading the tars, drawing annotations,
tokenizing and collating too (tokenizers trained here on the COCO captions, as in the tests), timed
after their first batch.
"""
from __future__ import annotations

import argparse
import itertools
import math
import os
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # one core means one core

import torch  # noqa: E402
import yaml  # noqa: E402
from torchvision import transforms  # noqa: E402
from transformers import AutoTokenizer  # noqa: E402

from model.data import (AnnotationSampler, Collator, ResumableShardStream, decode_image,  # noqa: E402
                        image_transform, output_path, shard_samples, shard_urls, split_key_counts, train_loader)
from model.pixels import IMAGENET_MEAN, IMAGENET_STD  # noqa: E402
from schemas.layout import CONFIG_COPY, RESIZE_SQUARE  # noqa: E402
from schemas.records import SPLIT_TRAIN  # noqa: E402
from tests.train_support import train_tokenizers  # noqa: E402

TARGETS = {"florenz-0.4b": 2200, "florenz-3.5b": 800}  # samples/s on one H100: issue 16's training goals


def build_output(root: Path, image_size: int) -> str:
    """The COCO sample built with the paper's plan and a square copy at `image_size`."""
    from tests.helpers import PAPER_PLAN, build_with_copy, coco_captions, coco_source

    build_with_copy(root, coco_source(), [a["caption"] for a in coco_captions()["annotations"]], PAPER_PLAN, image_size)
    return str(root / "out")


def check_copy(output: str, image_size: int) -> None:
    import webdataset as wds

    with wds.gopen(output_path(output, CONFIG_COPY), "rb") as f:
        resized = yaml.safe_load(f).get("resized") or {}
    if (resized.get("image_size"), resized.get("resize_mode")) != (image_size, RESIZE_SQUARE):
        sys.exit(f"{output} holds no square copy at {image_size} px (its resized section: {resized or 'none'}); "
                 f"build it with resized: {{image_size: {image_size}}} or leave out --output")


def rate(samples: int, produce) -> float:
    start = time.perf_counter()
    produce(samples)
    return samples / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", help="a pipeline output with a square copy at --image-size (default: build one)")
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="loader-bench-") as tmp:
        return measure(args, Path(tmp))


def measure(args: argparse.Namespace, tmp: Path) -> int:
    output = args.output or build_output(tmp, args.image_size)
    check_copy(output, args.image_size)
    urls = shard_urls(output, SPLIT_TRAIN)
    raw = [s for url in urls for s in shard_samples(url)]
    cycle = lambda n: itertools.islice(itertools.cycle(raw), n)  # noqa: E731
    size = args.image_size
    today = transforms.Compose([transforms.Resize((size, size), interpolation=transforms.InterpolationMode.BICUBIC),
                                transforms.ToTensor(), transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    new = image_transform(size)
    originals = [{k: v for k, v in s.items() if k != new.copy_extension} for s in raw]
    encoder_dir, decoder_dir = train_tokenizers(tmp / "tokenizers")
    collator = Collator(AutoTokenizer.from_pretrained(encoder_dir), AutoTokenizer.from_pretrained(decoder_dir))
    sampler = AnnotationSampler.from_setting("uniform", split_key_counts(output, SPLIT_TRAIN))

    class Today:
        """The stream's transform before the copy: the original decoded, resized, normalized on the CPU."""

        def of_sample(self, sample: dict) -> torch.Tensor:
            return today(decode_image(sample))

    def loader(workers: int, transform) -> float:
        """Samples/s of the training loader, after its first batch (worker start-up left out)."""
        batches = iter(train_loader(ResumableShardStream(urls, sampler, transform, seed=0), collator,
                                    args.batch_size, workers))
        next(batches)
        return rate(args.samples, lambda n: [next(batches) for _ in range(n // args.batch_size)])

    cores = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, cores[:1])
    torch.set_num_threads(1)
    per_core = [
        ("today: full decode + bicubic resize + normalize (float)",
         rate(args.samples, lambda n: [today(decode_image(s)) for s in cycle(n)])),
        ("original, no copy: draft decode + resize (uint8)",
         rate(args.samples, lambda n: [new.of_sample(s) for s in itertools.islice(itertools.cycle(originals), n)])),
        (f"pre-resized copy ({new.copy_extension}): decode (uint8)",
         rate(args.samples, lambda n: [new.of_sample(s) for s in cycle(n)])),
        ("loader in process, today's transform", loader(0, Today())),
        ("loader in process, copy", loader(0, new)),
    ]
    os.sched_setaffinity(0, cores)
    workers = len(cores)
    whole = loader(workers, new)
    base = per_core[0][1]
    print(f"{len(urls)} train shards ({len(raw)} samples), {args.samples} samples per row, {size} px, "
          f"batch {args.batch_size}, {len(cores)} cores")
    print(f"{'per core (pinned to one)':<58}{'samples/s':>10}{'ms/sample':>11}{'vs today':>10}")
    for name, value in per_core:
        print(f"{name:<58}{value:>10.0f}{1000 / value:>11.2f}{value / base:>9.1f}x")
    print(f"{f'loader, {workers} workers (data.workers default), copy':<58}{whole:>10.0f}")
    today_loader, copy_rate, loader_rate = per_core[3][1], per_core[2][1], per_core[4][1]
    print(f"loader per core, copy vs today: {loader_rate / today_loader:.1f}x")
    print(f"\n{'cores one H100 needs':<24}{'samples/s':>10}{'today, loader':>15}{'copy, decode':>14}"
          f"{'copy, loader':>14}")
    for size_name, target in TARGETS.items():
        print(f"{size_name:<24}{target:>10,}{math.ceil(target / today_loader):>15}{math.ceil(target / copy_rate):>14}"
              f"{math.ceil(target / loader_rate):>14}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
