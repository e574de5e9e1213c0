"""Benchmark: the training loader's samples/s at 0, 1, 2 workers against raw tar reading of the same
shards (bytes only: the I/O ceiling) and against decode + transform in one process without the loader.

    .venv/bin/python benchmarks/loader_throughput.py [--output OUT] [--samples 3000] [--image-size 224]

OUT is a pipeline output (default: out/paper-coco-sample, which scripts/run-sample.sh writes). The
tokenizers are trained here on the COCO sample's captions (tests/train_support.py), as in the tests.
"""
from __future__ import annotations

import argparse
import itertools
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from transformers import AutoTokenizer  # noqa: E402

from model.data import (AnnotationSampler, Collator, ResumableShardStream, decode_image,  # noqa: E402
                        image_transform, shard_samples, shard_urls, split_key_counts, train_loader)
from schemas.records import SPLIT_TRAIN  # noqa: E402
from tests.train_support import train_tokenizers  # noqa: E402


def timed(samples: int, produce) -> float:
    start = time.perf_counter()
    produce(samples)
    return samples / (time.perf_counter() - start)


def raw_samples(urls: list[str]):
    return (s for url in itertools.cycle(urls) for s in shard_samples(url))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default=str(REPO / "out" / "paper-coco-sample"))
    parser.add_argument("--samples", type=int, default=3000)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    urls = shard_urls(args.output, SPLIT_TRAIN)
    transform = image_transform(args.image_size)
    encoder_dir, decoder_dir = train_tokenizers(Path(tempfile.mkdtemp()))
    collator = Collator(AutoTokenizer.from_pretrained(encoder_dir), AutoTokenizer.from_pretrained(decoder_dir))
    sampler = AnnotationSampler.from_setting("uniform", split_key_counts(args.output, SPLIT_TRAIN))

    def loader(workers: int):
        def produce(n: int) -> None:
            stream = ResumableShardStream(urls, sampler, transform, seed=0)
            batches = iter(train_loader(stream, collator, args.batch_size, workers))
            for _ in range(n // args.batch_size):
                next(batches)
        return produce

    rows = [("raw tar reading (bytes only)", timed(args.samples, lambda n: list(itertools.islice(raw_samples(urls), n)))),
            ("decode + transform, one process", timed(args.samples, lambda n: [transform(decode_image(s)) for s in
                                                                                itertools.islice(raw_samples(urls), n)]))]
    rows += [(f"loader, {w} worker{'s' if w != 1 else ''}" + (" (in process)" if w == 0 else ""),
              timed(args.samples, loader(w))) for w in (0, 1, 2)]
    print(f"{len(urls)} train shards, {args.samples} samples, {args.image_size} px, batch {args.batch_size}")
    print(f"{'reader':<36}{'samples/s':>11}{'vs raw':>9}")
    for name, rate in rows:
        print(f"{name:<36}{rate:>11.1f}{rate / rows[0][1]:>9.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
