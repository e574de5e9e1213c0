"""stats.json: the run's counts, and the accounting that proves nothing was lost.

For images and captions, per source and in total: read = written + rejected (by reason).
"""
from __future__ import annotations

from collections import Counter, defaultdict
from typing import Iterable, Mapping

from schemas.coverage import CoveragePlan

SOURCE_TOTAL = "(all)"


def _level_stats(read: int, written: int, rejected: Mapping[str, int]) -> dict:
    rejected_total = sum(rejected.values())
    return {"read": read, "written": written, "rejected": dict(sorted(rejected.items())),
            "rejected_total": rejected_total, "balanced": read == written + rejected_total}


def compute_stats(plan: CoveragePlan, read: Mapping[str, tuple[int, int]], shards: Iterable,
                  rejects: Iterable[tuple[str, str, str, int, int]]) -> dict:
    """read: source -> (images, captions); shards: ShardResult; rejects: (source, level, reason,
    images, captions) summary rows."""
    written_images, written_captions = Counter(), Counter()
    splits: dict = defaultdict(lambda: {"images": 0, "shards": 0, "annotations": Counter(), "missing": Counter()})
    for shard in shards:
        written_images.update(shard.images_by_source)
        written_captions.update(shard.captions_by_source)
        split = splits[shard.split]
        split["images"] += shard.nsamples
        split["shards"] += 1
        split["annotations"].update(shard.annotations)
        split["missing"].update(shard.missing)
    rejected_images: dict = defaultdict(Counter)
    rejected_captions: dict = defaultdict(Counter)
    for source, level, reason, images, captions in rejects:
        if images:
            rejected_images[source][reason] += images
        if captions:
            rejected_captions[source][reason if level == "caption" else f"image:{reason}"] += captions
    sources = sorted(set(read) | set(written_images) | set(rejected_images))
    per_source = {
        s: {"images": _level_stats(read.get(s, (0, 0))[0], written_images[s], rejected_images[s]),
            "captions": _level_stats(read.get(s, (0, 0))[1], written_captions[s], rejected_captions[s])}
        for s in sources
    }
    total_img_rej = sum((rejected_images[s] for s in sources), Counter())
    total_cap_rej = sum((rejected_captions[s] for s in sources), Counter())
    return {
        "images": _level_stats(sum(r[0] for r in read.values()), sum(written_images.values()), total_img_rej),
        "captions": _level_stats(sum(r[1] for r in read.values()), sum(written_captions.values()), total_cap_rej),
        "sources": per_source,
        "splits": {name: {"images": v["images"], "shards": v["shards"],
                          "annotations": dict(sorted(v["annotations"].items())),
                          "missing_translation": dict(sorted(v["missing"].items()))}
                   for name, v in sorted(splits.items())},
        "plan": {"languages": list(plan.languages), "caption_languages": list(plan.caption_languages),
                 "translation_languages": list(plan.translation_languages),
                 "held_out_caption_languages": list(plan.held_out_caption_languages)},
    }
