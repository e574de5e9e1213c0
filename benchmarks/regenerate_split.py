"""Benchmark: regenerating a coverage split for an ablation from an existing translation store vs the
first full build's build stage, at N images, with zero translator calls in both (asserted from
stats.json). The first build has the paper's plan; the ablation moves French from held-out to
captioned. Both read the same images and store and write a full set of shards.

    .venv/bin/python benchmarks/regenerate_split.py --images 100000 [--source parquet|coco] [--workdir DIR]
        [beam options...]

Images: the 100 real COCO sample images cycled to N records, each its own file with a record-naming
JPEG comment so that every record is a distinct image (build_throughput.replicate), as a streaming
Parquet source by default. The store is
filled once for every caption text and language (a store fixture: this measures the build, not
translation).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from build_throughput import CLI, Replica, replicate, timed  # noqa: E402
from schemas.layout import STATS  # noqa: E402
from schemas.records import SPLIT_TRAIN  # noqa: E402

PAPER = {"languages": ["en", "de", "fr", "es", "ru", "zh"], "caption_languages": ["en", "de"],
         "translation_languages": ["de", "fr", "es", "ru", "zh"], "eval_fraction": 0.05, "seed": 0,
         "shard_size": 1000}


def fill_store(store: Path, replica: Replica) -> int:
    from schemas.records import normalize_text, text_hash
    from transforms.translation_checks import CHECKS_VERSION
    from transforms.translation_store import write_store_rows

    texts = sorted({normalize_text(t) for t in replica.texts})
    write_store_rows(str(store), [{"text_hash": text_hash(t), "lang": lang, "fingerprint": "bench",
                                   "source_text": t, "translation": f"[{lang}] {t}", "status": "accepted",
                                   "reason": None, "raw_output": f"[{lang}] {t}", "checks_version": CHECKS_VERSION}
                                  for t in texts for lang in PAPER["translation_languages"]])
    return len(texts)


def build(name: str, plan: dict, replica: Replica, root: Path, beam_args: list[str]) -> dict:
    config = {"output": str(root / name), "plan": plan, "sources": [replica.source_config()],
              "store": {"path": str(root / "store"), "fingerprint": "bench"}}
    path = root / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config))
    measured = timed([str(CLI), "build", str(path), *beam_args])
    stats = json.loads((root / name / STATS).read_text())
    translation = stats["translation"]
    if translation.get("sent") or translation.get("translated") or translation.get("not_in_store"):
        raise RuntimeError(f"{name}: the build called or needed the translator: {translation}")
    return {"seconds": measured.seconds, "rss": measured.peak_rss, "images": stats["images"]["written"],
            "cache_hits": translation.get("cache_hits_accepted", 0), "train": stats["splits"][SPLIT_TRAIN]["annotations"]}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=100_000)
    parser.add_argument("--source", choices=("parquet", "coco"), default="parquet")
    parser.add_argument("--workdir", default=None)
    args, beam_args = parser.parse_known_args()
    root = Path(args.workdir or tempfile.mkdtemp(prefix="florenz-regen-bench-"))
    root.mkdir(parents=True, exist_ok=True)
    replica = replicate(args.images, root, args.source)
    texts = fill_store(root / "store", replica)
    first = build("paper", PAPER, replica, root, beam_args)
    ablation = build("fr-captioned", {**PAPER, "caption_languages": ["en", "de", "fr"]}, replica, root, beam_args)
    print(f"{args.images:,} images ({args.source}), {texts:,} unique caption texts in the store, "
          f"beam args: {beam_args or 'none'}")
    print("| build | seconds | images/s | vs first build | translator calls | store hits | peak RSS MiB |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, r in (("first build (paper plan)", first), ("ablation: fr captioned", ablation)):
        print(f"| {name} | {r['seconds']:.1f} | {r['images'] / r['seconds']:.0f} | "
              f"{r['seconds'] / first['seconds']:.2f}x | 0 | {r['cache_hits']:,} | {r['rss']:.0f} |")
    print(f"train caption-fr: {first['train'].get('caption-fr', 0):,} -> {ablation['train'].get('caption-fr', 0):,}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
