"""`florenz-data verify`: re-read an output folder and report every broken invariant.

Checks that leakage did not happen (no caption label in a held-out language in train, no eval key or
eval image *content* in train, no image content in two samples, every sample in the split its plan
assigns to its key and content), that the manifest, indexes and tars agree byte for byte, and that
stats.json adds up (read = written + rejected) and matches the shards and rejects.
"""
from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections import Counter, defaultdict
from typing import Iterator

import pyarrow.parquet as pq
import yaml
from apache_beam.io.filesystems import FileSystems
from PIL import Image

from schemas.coverage import CoveragePlan
from schemas.records import SPLIT_TRAIN, SPLITS, TASK_CAPTION
from schemas.sample import JSON_EXTENSION, decode_sample_json, task_language
from transforms.atomic import glob_escape, join
from transforms.finalize import CONFIG_COPY, MANIFEST, REJECTS, STATS, SUCCESS, index_name
from transforms.lease import LEASE
from transforms.run_folder import RUNS_DIR, files_under


def _read(path: str) -> bytes:
    with FileSystems.open(path, compression_type="uncompressed") as f:
        return f.read()


def iter_tar_samples(data: bytes) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {extension: bytes}) in member order, grouping consecutive members by key."""
    key, members = None, {}
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        for info in tar:
            stem, ext = info.name.split(".", 1)
            if stem != key and key is not None:
                yield key, members
                members = {}
            key = stem
            members[ext] = tar.extractfile(info).read()
    if key is not None:
        yield key, members


def verify_output(output: str, decode_images: bool = False) -> list[str]:
    """Every problem found, as a sentence; empty means the output is sound."""
    problems: list[str] = []
    for name in (SUCCESS, STATS, MANIFEST, CONFIG_COPY, REJECTS, *(index_name(s) for s in SPLITS)):
        if not FileSystems.exists(join(output, name)):
            problems.append(f"{name} is missing (incomplete or killed run?)")
    if problems:
        return problems
    if files_under(join(output, RUNS_DIR)):
        problems.append(f"{RUNS_DIR}/ holds files of an unfinished run")
    if FileSystems.exists(join(output, LEASE)):
        problems.append(f"{LEASE} is held: a run is writing this output (or died holding it)")
    plan = CoveragePlan.from_dict(yaml.safe_load(_read(join(output, CONFIG_COPY)))["plan"])
    stats = json.loads(_read(join(output, STATS)))
    manifest = pq.read_table(io.BytesIO(_read(join(output, MANIFEST)))).to_pylist()
    problems += _check_manifest_keys(manifest, plan)
    seen_annotations: dict[str, Counter] = {s: Counter() for s in SPLITS}
    rows_by_shard: dict[str, list[dict]] = defaultdict(list)
    for row in manifest:
        rows_by_shard[row["shard"]].append(row)
    for split in SPLITS:
        index = json.loads(_read(join(output, index_name(split))))
        listed = {e["url"] for e in index["shardlist"]}
        on_disk = {f"{split}/{m.path.rsplit('/', 1)[-1]}"
                   for m in FileSystems.match([join(glob_escape(output), split, "*.tar")])[0].metadata_list}
        for stray in sorted(on_disk - listed):
            problems.append(f"{stray} is not in {index_name(split)}")
        for entry in index["shardlist"]:
            problems += _check_shard(output, split, entry, rows_by_shard[entry["url"]], plan,
                                     seen_annotations[split], decode_images)
    problems += _check_stats(stats, manifest, seen_annotations, output)
    return problems


def _check_manifest_keys(manifest: list[dict], plan: CoveragePlan) -> list[str]:
    """Keys and image contents: each once, none in train that is in eval, each in its planned split."""
    problems = []
    keys = Counter(r["key"] for r in manifest)
    problems += [f"key {k} appears {n} times in the manifest" for k, n in sorted(keys.items()) if n > 1]
    holders: dict[str, list[dict]] = defaultdict(list)
    for r in manifest:
        holders[r["sha256"]].append(r)
    for sha, rows in sorted(holders.items()):
        if len(rows) > 1:
            where = ", ".join(sorted(f"{r['key']} ({r['split']})" for r in rows))
            problems.append(f"image content sha256 {sha[:16]}... is in {len(rows)} samples: {where}")
    eval_keys = {r["key"] for r in manifest if r["split"] != SPLIT_TRAIN}
    for r in manifest:
        if r["split"] == SPLIT_TRAIN and r["key"] in eval_keys:
            problems.append(f"evaluation key {r['key']} is in train")
        planned = plan.split_of(r["key"], r["sha256"])
        if planned != r["split"]:
            problems.append(f"key {r['key']} is in {r['split']} but the plan assigns {planned}")
    return problems


def _check_shard(output: str, split: str, entry: dict, rows: list[dict], plan: CoveragePlan,
                 seen: Counter, decode_images: bool) -> list[str]:
    url = entry["url"]
    path = join(output, url)
    if not FileSystems.exists(path):
        return [f"{url} is listed in {index_name(split)} but missing"]
    data = _read(path)
    problems = []
    if len(data) != entry["filesize"] or hashlib.md5(data).hexdigest() != entry["md5sum"]:
        problems.append(f"{url}: size/md5 differ from {index_name(split)} (tampered or truncated)")
    try:
        samples = list(iter_tar_samples(data))
    except (tarfile.TarError, ValueError) as e:
        return problems + [f"{url}: not a readable tar ({e})"]
    if len(samples) != entry["nsamples"]:
        problems.append(f"{url}: {len(samples)} samples, index says {entry['nsamples']}")
    rows = sorted(rows, key=lambda r: r["position"])
    if [k for k, _ in samples] != [r["key"] for r in rows]:
        problems.append(f"{url}: sample keys differ from the manifest's rows for this shard")
    held_out = set(plan.held_out_caption_languages)
    for (key, members), row in zip(samples, rows):
        image = members.get(row["image_format"])
        if image is None or hashlib.sha256(image).hexdigest() != row["sha256"]:
            problems.append(f"{url}: {key}: image bytes differ from the manifest's sha256")
        elif decode_images:
            try:
                with Image.open(io.BytesIO(image)) as img:
                    img.load()
            except Exception as e:
                problems.append(f"{url}: {key}: image does not decode ({e})")
        try:
            meta, annotations = decode_sample_json(members[JSON_EXTENSION])
        except (KeyError, ValueError) as e:
            problems.append(f"{url}: {key}: sample JSON unreadable ({e})")
            continue
        if meta.get("split") != split or meta.get("key") != key:
            problems.append(f"{url}: {key}: JSON says split {meta.get('split')}, key {meta.get('key')}")
        counts = Counter(task_language(a.task, a.lang) for a in annotations)
        seen.update(counts)
        if dict(counts) != dict(row["annotations"]):
            problems.append(f"{url}: {key}: annotation counts differ from the manifest")
        if split == SPLIT_TRAIN:
            leaked = sorted({a.lang for a in annotations if a.task == TASK_CAPTION and a.lang in held_out})
            if leaked:
                problems.append(f"{url}: {key}: caption label in held-out language(s) {leaked} in train")
    return problems


def _check_stats(stats: dict, manifest: list[dict], seen: dict[str, Counter], output: str) -> list[str]:
    problems = []
    for level in ("images", "captions"):
        s = stats[level]
        if s["read"] != s["written"] + s["rejected_total"]:
            problems.append(f"stats: {level} read {s['read']} != written {s['written']} + rejected {s['rejected_total']}")
        for source, per in stats["sources"].items():
            p = per[level]
            if p["read"] != p["written"] + sum(p["rejected"].values()):
                problems.append(f"stats: source {source}: {level} read != written + rejected")
    if stats["images"]["written"] != len(manifest):
        problems.append(f"stats: {stats['images']['written']} images written, manifest has {len(manifest)}")
    if stats["captions"]["written"] != sum(r["captions"] for r in manifest):
        problems.append("stats: captions written differ from the manifest")
    for split in SPLITS:
        claimed = stats["splits"].get(split, {}).get("annotations", {})
        if claimed != dict(seen[split]):
            problems.append(f"stats: {split} annotation counts differ from what the shards hold")
    rejects = [json.loads(line) for line in _read(join(output, REJECTS)).decode("utf-8").splitlines() if line]
    image_rejects = Counter(r["reason"] for r in rejects if r["level"] == "image")
    if dict(image_rejects) != stats["images"]["rejected"]:
        problems.append(f"stats: image rejections {stats['images']['rejected']} differ from {REJECTS}")
    return problems
