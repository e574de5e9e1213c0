"""Benchmark: the translation store before and after `compact-store`, at N requests.

    .venv/bin/python benchmarks/store_compaction.py --requests 100000 [--batch-sizes 64,256] [--workdir DIR]

For each batch size the store is filled the way the translate stage fills it: one part per batch of
that many requests of one language (write_store_part, content-hash names), from real COCO val2017
captions (normalized, deduplicated; N / 5 texts x 5 languages; the translations are store fixtures,
"[de] <caption>", of about a real one's length). Then, before and after compaction: the parts and
bytes on disk, the reads a build's store lookup makes (a footer per part plus each row group: on an
object store each is a ranged GET), and the wall time of that lookup (ReadStoreEntries on the
DirectRunner, every key of the 5 languages, counted, the better of two runs; the script fails unless
it finds every request each time). Ratios are against the uncompacted store of the same batch size.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

REPO = Path(__file__).resolve().parents[1]
COCO_TEXT = REPO.parent / "shared" / "data" / "coco-captions-val2017-text.json"
LANGUAGES = ("de", "fr", "es", "ru", "zh")
FINGERPRINT = "bench"


def texts(count: int) -> list[str]:
    from schemas.records import normalize_text

    captions = json.loads(COCO_TEXT.read_text())["annotations"]
    unique = sorted({normalize_text(a["caption"]) for a in captions})
    if len(unique) < count:
        raise SystemExit(f"{COCO_TEXT} holds {len(unique):,} distinct captions, fewer than {count:,}")
    return unique[:count]


def fill(store: Path, captions: list[str], batch_size: int) -> None:
    """Parts of batch_size rows of one language, batches cut from requests sorted by text hash (as the
    translate stage cuts them)."""
    from schemas.records import text_hash
    from transforms.translation_checks import CHECKS_VERSION
    from transforms.translation_store import write_store_part

    for lang in LANGUAGES:
        rows = sorted(({"text_hash": text_hash(t), "lang": lang, "fingerprint": FINGERPRINT, "source_text": t,
                        "translation": f"[{lang}] {t}", "status": "accepted", "reason": None,
                        "raw_output": f"[{lang}] {t}", "checks_version": CHECKS_VERSION} for t in captions),
                      key=lambda r: r["text_hash"])
        for start in range(0, len(rows), batch_size):
            write_store_part(str(store), FINGERPRINT, lang, rows[start:start + batch_size])


def on_disk(store: Path) -> tuple[int, int, int]:
    """Parts, bytes, and the reads a lookup makes: a footer per part and each row group (on an object
    store, each is a ranged GET)."""
    import pyarrow.parquet as pq

    files = list(store.glob("fingerprint=*/lang=*/part-*.parquet"))
    reads = sum(1 + pq.ParquetFile(f).num_row_groups for f in files)
    return len(files), sum(f.stat().st_size for f in files), reads


def lookup_seconds(store: Path) -> tuple[float, int]:
    """Wall time of ReadStoreEntries over every language, and the keys it found; the better of two runs
    (the machine is shared)."""
    import apache_beam as beam
    from apache_beam.metrics.metric import MetricsFilter
    from apache_beam.options.pipeline_options import PipelineOptions

    from schemas.config import StoreConfig
    from transforms.translation_store import ReadStoreEntries

    def count(_: object) -> None:
        beam.metrics.Metrics.counter("bench", "keys").inc()

    runs = []
    for _ in range(2):
        started = time.monotonic()
        p = beam.Pipeline(options=PipelineOptions(["--runner=DirectRunner"]))
        _ = p | ReadStoreEntries(StoreConfig(str(store), FINGERPRINT), LANGUAGES) | beam.Map(count)
        result = p.run()
        result.wait_until_finish()
        (keys,) = result.metrics().query(MetricsFilter().with_namespace("bench"))["counters"]
        runs.append((time.monotonic() - started, keys.committed))
    return min(runs)


def main() -> int:
    from pipeline.compact_store import compact_store

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--batch-sizes", default="64,256")
    parser.add_argument("--workdir", default=None)
    args = parser.parse_args()
    root = Path(args.workdir or tempfile.mkdtemp(prefix="florenz-store-bench-"))
    captions = texts(args.requests // len(LANGUAGES))
    requests = len(captions) * len(LANGUAGES)
    lines = []
    for batch_size in (int(b) for b in args.batch_sizes.split(",")):
        store = root / f"store-{batch_size}"
        fill(store, captions, batch_size)
        parts, size, reads = on_disk(store)
        seconds, keys = lookup_seconds(store)
        started = time.monotonic()
        compact_store(str(store), ["--runner=DirectRunner"])
        compaction = time.monotonic() - started
        parts_after, size_after, reads_after = on_disk(store)
        seconds_after, keys_after = lookup_seconds(store)
        if keys != requests or keys_after != requests:
            raise SystemExit(f"the lookup found {keys:,} / {keys_after:,} keys, not {requests:,}")
        lines.append(f"| {batch_size} | appended (one part per batch) | {parts:,} | {size / 2**20:.1f} | "
                     f"{size / requests:.0f} | {reads:,} | {seconds:.1f} | 1.00x | 1.00x | 1.00x | 1.00x | - |")
        lines.append(f"| {batch_size} | compacted | {parts_after:,} | {size_after / 2**20:.1f} | "
                     f"{size_after / requests:.0f} | {reads_after:,} | {seconds_after:.1f} | "
                     f"{parts_after / parts:.4f}x | {size_after / size:.2f}x | {reads_after / reads:.4f}x | "
                     f"{seconds_after / seconds:.2f}x | {compaction:.1f} |")
    print(f"{requests:,} requests ({len(captions):,} COCO captions x {len(LANGUAGES)} languages), DirectRunner, "
          f"one process; every lookup found all {requests:,} keys")
    print("| batch rows | store | parts | MiB | bytes/entry | lookup reads | lookup s | parts ratio | bytes ratio "
          "| reads ratio | lookup s ratio | compaction s |")
    print("|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
