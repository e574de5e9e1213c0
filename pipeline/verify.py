"""`florenz-data verify`: re-read an output folder and report every broken invariant.

Checks that leakage did not happen (no caption label in a held-out language in train, no eval key or
eval image *content* in train, no image content in two samples, every sample in the split its plan
assigns to its key and content, no translation in a language the plan pairs `other_image` whose
English source is one of the sample's own captions, by the text hashes its JSON lists; a language
paired `bitext` is not checked so, its sources being corpus sentences, but each of its translations
must carry the similarity of a matched bitext), that the
manifest, indexes and tars agree byte for byte, that every sample holds the resized copy its config's
`resized` section asks for (with --decode: that it decodes to its size, as RGB), and that stats.json
adds up (read = written + rejected) and matches the shards and rejects.

It streams, so its memory does not hold the manifest as rows: per shard, the shard's manifest part
is checked against its tar (one tar and one part in memory at a time); the rejects are counted line
by line; the global checks (each key once, each image content once) keep two Arrow columns of every
part (ManifestKeyChecks). At 12 M images that is ~0.5 GB, and sorting one of them to find repeats
takes about as much again (measured at 1 M rows: 37 MB of columns, 54 MB more while sorting), where
the manifest as Python dicts would take ~20 GB.
"""
from __future__ import annotations

import hashlib
import io
import json
import tarfile
from collections import Counter, defaultdict
from typing import Iterable, Iterator, Optional

import pyarrow as pa
import pyarrow.compute as pc
import yaml
from apache_beam.io.filesystems import FileSystems
from PIL import Image

from pipeline.output_files import iter_rejects, manifest_parts, read_manifest_part, refuse_old_layout
from schemas.config import ResizedImages
from schemas.coverage import CoveragePlan
from schemas.errors import InputError
from schemas.layout import (CONFIG_COPY, JSON_EXTENSION, LEASE, MANIFEST_DIR, REJECTS_DIR, RUNS_DIR, STATS, SUCCESS,
                            IndexEntry, index_entries, index_name, member_key, resized_extension, shard_glob,
                            shard_glob_relpath, shard_of_manifest_part)
from schemas.records import SPLIT_TRAIN, SPLITS, TASK_CAPTION, TASK_TRANSLATION, text_hash
from schemas.sample import CAPTION_HASHES, Annotation, decode_sample_json, task_language
from transforms.atomic import glob_escape, join
from transforms.image_pixels import resized_size
from transforms.run_folder import files_under


def _read(path: str) -> bytes:
    with FileSystems.open(path, compression_type="uncompressed") as f:
        return f.read()


def iter_tar_samples(data: bytes) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {extension: bytes}) in member order, grouping consecutive members by key."""
    key, members = None, {}
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
        for info in tar:
            stem, ext = member_key(info.name)
            if stem != key and key is not None:
                yield key, members
                members = {}
            key = stem
            members[ext] = tar.extractfile(info).read()
    if key is not None:
        yield key, members


def verify_output(output: str, decode_images: bool = False) -> list[str]:
    """Every problem found, as a sentence; empty means the output is sound."""
    try:
        refuse_old_layout(output)
    except InputError as error:
        return [f"{error.path}: {error.detail}"]
    problems = [f"{name} is missing (incomplete or killed run?)"
                for name in (SUCCESS, STATS, CONFIG_COPY, *(index_name(s) for s in SPLITS))
                if not FileSystems.exists(join(output, name))]
    if problems:
        return problems
    if files_under(join(output, RUNS_DIR)):
        problems.append(f"{RUNS_DIR}/ holds files of an unfinished run")
    if FileSystems.exists(join(output, LEASE)):
        problems.append(f"{LEASE} is held: a run is writing this output (or died holding it)")
    config = yaml.safe_load(_read(join(output, CONFIG_COPY)))
    plan = CoveragePlan.from_dict(config["plan"])
    resized = ResizedImages(**config["resized"]) if config.get("resized") else None
    stats = json.loads(_read(join(output, STATS)))
    parts = manifest_parts(output)
    keys = ManifestKeyChecks(plan)
    checked: list[str] = []  # the parts `keys` was fed, to read again for what repeats
    seen_annotations: dict[str, Counter] = {s: Counter() for s in SPLITS}
    written: Counter = Counter()  # images and captions the manifest holds
    for split in SPLITS:
        entries = index_entries(json.loads(_read(join(output, index_name(split)))))
        listed = {entry.url for entry in entries}
        on_disk = {shard_glob_relpath(split, m.path)
                   for m in FileSystems.match([join(glob_escape(output), shard_glob(split))])[0].metadata_list}
        for stray in sorted(on_disk - listed):
            problems.append(f"{stray} is not in {index_name(split)}")
        for entry in entries:
            part = parts.pop(entry.url, None)
            rows: list[dict] = []
            if part is None:
                problems.append(f"{entry.url} has no manifest part in {MANIFEST_DIR}/")
            else:
                table = read_manifest_part(part)
                problems += keys.add(table)
                checked.append(part)
                rows = table.to_pylist()
                written.update(images=len(rows), captions=sum(r["captions"] for r in rows))
            problems += _check_shard(output, split, entry, rows, plan, seen_annotations[split], decode_images,
                                     resized)
    for shard, part in parts.items():
        problems.append(f"{MANIFEST_DIR}/{part.rsplit('/', 1)[-1]} names {shard}, which no index lists")
    for path in files_under(join(output, MANIFEST_DIR)):  # a stray file breaks reading the folder as a dataset
        if shard_of_manifest_part(path) is None:
            problems.append(f"{MANIFEST_DIR}/{path.rsplit('/', 1)[-1]} is not a manifest part")
    problems += keys.problems(read_manifest_part(part, ManifestKeyChecks.COLUMNS) for part in checked)
    problems += _check_stats(stats, written, seen_annotations, output)
    return problems


class ManifestKeyChecks:
    """Keys and image contents over the whole manifest, fed one part at a time: each sample in the
    split its plan assigns (checked per part), each key and each content once, no evaluation key in
    train. Per row it keeps the key and the first 16 hex digits of sha256, as Arrow arrays (~40
    bytes); the rows whose values repeat are read in a second pass, which only a failing output needs
    (there, distinct contents sharing a 64-bit prefix, ~1e-5 likely at 12 M, are told apart)."""

    COLUMNS = ["key", "split", "sha256"]

    def __init__(self, plan: CoveragePlan):
        self.plan = plan
        self.keys: list[pa.ChunkedArray] = []
        self.contents: list[pa.ChunkedArray] = []

    def add(self, part: pa.Table) -> list[str]:
        """Keep the part's keys and contents; the samples it holds in a split the plan does not assign."""
        self.keys.append(part["key"])
        self.contents.append(_content_prefix(part["sha256"]))
        problems = []
        for key, split, sha in zip(*(part[c].to_pylist() for c in self.COLUMNS)):
            planned = self.plan.split_of(key, sha)
            if planned != split:
                problems.append(f"key {key} is in {split} but the plan assigns {planned}")
        return problems

    def problems(self, parts: Iterable[pa.Table]) -> list[str]:
        """Repeated keys and contents; `parts` are the same parts again (COLUMNS at least), read
        only when something repeats."""
        keys, contents = _repeated(self.keys), _repeated(self.contents)
        if not len(keys) and not len(contents):
            return []
        by_key: dict[str, list[dict]] = defaultdict(list)
        by_content: dict[str, list[dict]] = defaultdict(list)
        for part in parts:
            key_hit = pc.is_in(part["key"], value_set=keys)
            content_hit = pc.is_in(_content_prefix(part["sha256"]), value_set=contents)
            for row, is_key, is_content in zip(part.select(self.COLUMNS).to_pylist(), key_hit.to_pylist(),
                                               content_hit.to_pylist()):
                if is_key:
                    by_key[row["key"]].append(row)
                if is_content:
                    by_content[row["sha256"]].append(row)
        problems = []
        for key, rows in sorted(by_key.items()):
            problems.append(f"key {key} appears {len(rows)} times in the manifest")
            if {r["split"] == SPLIT_TRAIN for r in rows} == {True, False}:
                problems.append(f"evaluation key {key} is in train")
        for sha, rows in sorted(by_content.items()):
            if len(rows) > 1:
                where = ", ".join(sorted(f"{r['key']} ({r['split']})" for r in rows))
                problems.append(f"image content sha256 {sha[:16]}... is in {len(rows)} samples: {where}")
        return problems


def _content_prefix(sha256: pa.ChunkedArray) -> pa.ChunkedArray:
    return pc.utf8_slice_codeunits(sha256, 0, 16)


def _repeated(chunks: list) -> pa.Array:
    """The values found more than once in these arrays: sorted in Arrow, neighbours compared."""
    values = pa.chunked_array(chunks, pa.string())
    if len(values) < 2:
        return pa.array([], pa.string())
    ordered = pc.take(values, pc.array_sort_indices(values)).combine_chunks()
    rest = ordered.slice(1)
    return pc.unique(rest.filter(pc.equal(rest, ordered.slice(0, len(ordered) - 1))))


def _check_shard(output: str, split: str, entry: IndexEntry, rows: list[dict], plan: CoveragePlan,
                 seen: Counter, decode_images: bool, resized: Optional[ResizedImages] = None) -> list[str]:
    url = entry.url
    path = join(output, url)
    if not FileSystems.exists(path):
        return [f"{url} is listed in {index_name(split)} but missing"]
    data = _read(path)
    problems = []
    if len(data) != entry.filesize or hashlib.md5(data).hexdigest() != entry.md5sum:
        problems.append(f"{url}: size/md5 differ from {index_name(split)} (tampered or truncated)")
    try:
        samples = list(iter_tar_samples(data))
    except (tarfile.TarError, ValueError) as e:
        return problems + [f"{url}: not a readable tar ({e})"]
    if len(samples) != entry.nsamples:
        problems.append(f"{url}: {len(samples)} samples, index says {entry.nsamples}")
    rows = sorted(rows, key=lambda r: r["position"])
    if any(r["shard"] != url for r in rows):
        problems.append(f"{url}: its manifest part holds rows of another shard")
    if [k for k, _ in samples] != [r["key"] for r in rows]:
        problems.append(f"{url}: sample keys differ from the manifest's rows for this shard")
    held_out, paired = set(plan.held_out_caption_languages), set(plan.other_image_languages)
    bitext = set(plan.bitext_languages)
    for (key, members), row in zip(samples, rows):
        image = members.get(row["image_format"])
        if resized is not None and not resized.keep_original:
            if image is not None:
                problems.append(f"{url}: {key}: holds its original image, but resized.keep_original is false")
        elif image is None or hashlib.sha256(image).hexdigest() != row["sha256"]:
            problems.append(f"{url}: {key}: image bytes differ from the manifest's sha256")
        elif decode_images:
            try:
                with Image.open(io.BytesIO(image)) as img:
                    img.load()
            except Exception as e:
                problems.append(f"{url}: {key}: image does not decode ({e})")
        if resized is not None:
            problems += [f"{url}: {key}: {p}" for p in _resized_problems(members, row, resized, decode_images)]
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
        if paired:
            problems += [f"{url}: {key}: {p}" for p in _own_caption_translations(meta, annotations, paired)]
        unmatched = sorted({a.lang for a in annotations if a.task == TASK_TRANSLATION and a.lang in bitext
                            and a.similarity is None})
        if unmatched:
            problems.append(f"{url}: {key}: translation into {unmatched} (plan: bitext) has no similarity, so it "
                            "is not a matched bitext")
    return problems


def _resized_problems(members: dict[str, bytes], row: dict, spec: ResizedImages, decode: bool) -> list[str]:
    """What is wrong with a sample's resized copy: missing, or (`decode`) not an RGB JPEG of its size."""
    extension = resized_extension(spec.image_size, spec.resize_mode)
    copy = members.get(extension)
    if copy is None:
        return [f"no resized copy ({extension}), which the config's resized section asks for"]
    if not decode:
        return []
    try:
        with Image.open(io.BytesIO(copy)) as img:
            img.load()
            got = (img.format, img.mode, img.size)
    except Exception as e:
        return [f"resized copy ({extension}) does not decode ({e})"]
    expected = ("JPEG", "RGB", resized_size(row["width"], row["height"], spec.image_size, spec.resize_mode))
    return [] if got == expected else [f"resized copy ({extension}) is {got}, expected {expected}"]


def _own_caption_translations(meta: dict, annotations: list[Annotation], paired: set[str]) -> list[str]:
    """What breaks other_image pairing in one sample: a translation into a paired language whose
    source is one of the image's own captions (the sample's caption_hashes), or no list to tell."""
    own = meta.get(CAPTION_HASHES)
    if not isinstance(own, list):
        return [f"sample JSON has no {CAPTION_HASHES}, so its other_image translations cannot be checked"]
    own = set(own)
    leaked = sorted({a.lang for a in annotations
                     if a.task == TASK_TRANSLATION and a.lang in paired and text_hash(a.source) in own})
    return [f"translation into {leaked} (plan: other_image) translates the image's own caption"] if leaked else []


def _check_stats(stats: dict, written: Counter, seen: dict[str, Counter], output: str) -> list[str]:
    problems = []
    for level in ("images", "captions"):
        s = stats[level]
        if s["read"] != s["written"] + s["rejected_total"]:
            problems.append(f"stats: {level} read {s['read']} != written {s['written']} + rejected {s['rejected_total']}")
        for source, per in stats["sources"].items():
            p = per[level]
            if p["read"] != p["written"] + sum(p["rejected"].values()):
                problems.append(f"stats: source {source}: {level} read != written + rejected")
    if stats["images"]["written"] != written["images"]:
        problems.append(f"stats: {stats['images']['written']} images written, manifest has {written['images']}")
    if stats["captions"]["written"] != written["captions"]:
        problems.append("stats: captions written differ from the manifest")
    for split in SPLITS:
        claimed = stats["splits"].get(split, {}).get("annotations", {})
        if claimed != dict(seen[split]):
            problems.append(f"stats: {split} annotation counts differ from what the shards hold")
    image_rejects = Counter(r["reason"] for r in iter_rejects(output) if r["level"] == "image")
    if dict(image_rejects) != stats["images"]["rejected"]:
        problems.append(f"stats: image rejections {stats['images']['rejected']} differ from {REJECTS_DIR}/")
    return problems
