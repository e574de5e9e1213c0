"""Benchmark: the largest group of every grouping of a build, at two input sizes, with an empty and a
full translation store, read from the run's Beam metrics (transforms/group_metrics.py); a grouping
whose largest group grows with the input fails it.

    .venv/bin/python benchmarks/group_bounds.py --sizes 5000,50000 [--workdir DIR] [--out FILE]

The input is synthetic but made of real data: a Parquet source of N rows whose image paths point at
the 100 real COCO sample images (each shrunk to at most 64 px and given a unique JPEG comment, so
every record is its own content: 100 unchanged images would make 99.8 % of the records duplicates
of each other, and the groups by content would measure that, not the pipeline) and whose captions
are real COCO val2017 captions (two joined per caption, so N records have ~2N distinct texts: the
24,719 real ones alone would be reused ~10 times each at 50k records). Duplicates are put in at a
fixed rate, so the data's multiplicities do not change with N: one record in 97 repeats the
previous record's image file, one in 89 its first caption, one in 101 its id (with another image).

The baseline of the ratio is the same build on the smaller input, measured in the same run. Each
grouping has an absolute bound that follows from the plan (shard_size, images_per_bucket, the
languages) or from the data's fixed multiplicities; SumRead (records read per source, a lifted
total whose state is two integers) is the one grouping that counts the whole input by design.
"""
from __future__ import annotations

import argparse
import dataclasses
import io
import json
import sys
import tempfile
import time
import typing
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from schemas.layout import MISSING_TEXTS, REJECTS_DIR, STATS  # noqa: E402  (after the path: run as a script)
from schemas.records import SPLIT_TRAIN  # noqa: E402

SHARED = REPO.parent / "shared" / "data"
SAMPLE_IMAGES = SHARED / "coco-val2017-sample" / "images"
CAPTION_TEXTS = SHARED / "coco-captions-val2017-text.json"
LANGUAGES = ["de", "fr", "es", "ru", "zh"]
CAPTIONS_PER_RECORD = 2
SAME_IMAGE_EVERY, SAME_CAPTION_EVERY, SAME_ID_EVERY = 97, 89, 101
MULTIPLICITY = 2  # copies of one content, uses of one text, images under one id: at most this many
# Count the whole input by design, lifted before the shuffle; state: one accumulator per key (a source;
# a (source, level, reason) summed over the rejects parts).
LIFTED_TOTALS = {"SumRead", "RejectCounts"}
# Fill up to records_per_part, then split (transforms/sorted_parts.py): bounded absolutely, so not
# compared across sizes (below records_per_part, one part holds every record of its kind).
FILLED_PARTS = {f"parts:{REJECTS_DIR}", f"parts:{MISSING_TEXTS}"}
RECORDS_PER_PART = 1000  # for the rejects parts: small enough that the 50k run splits them
FACTOR = 2.0  # images per bucket average in (images_per_bucket / 2, images_per_bucket] at any size


@dataclasses.dataclass(frozen=True)
class Synthetic:
    """A synthetic Parquet source: its file, its image folder and every caption text it holds."""

    parquet: Path
    images: Path
    texts: frozenset[str]
    records: int

    def source(self) -> dict:
        return {"name": "syn", "type": "parquet", "files": str(self.parquet), "id_column": "id",
                "caption_column": "captions", "image_path_column": "image_path", "image_root": str(self.images)}


def _thumbnails() -> list[bytes]:
    """The real sample images, each shrunk to at most 64 px (JPEG)."""
    thumbs = []
    for path in sorted(SAMPLE_IMAGES.glob("*.jpg")):
        with Image.open(path) as image:
            image = image.convert("RGB")
            image.thumbnail((64, 64))
            buffer = io.BytesIO()
            image.save(buffer, "JPEG", quality=85)
            thumbs.append(buffer.getvalue())
    return thumbs


def with_jpeg_comment(jpeg: bytes, comment: str) -> bytes:
    """The same image with a JPEG comment segment after the start marker: other bytes, same pixels."""
    payload = comment.encode("ascii")
    return jpeg[:2] + b"\xff\xfe" + (len(payload) + 2).to_bytes(2, "big") + payload + jpeg[2:]


def caption_pool() -> list[str]:
    return [a["caption"].strip() for a in json.loads(CAPTION_TEXTS.read_text())["annotations"]]


def _composite(slot: int, pool: list[str]) -> str:
    """A distinct text per slot (for slots < len(pool)^2): two real captions joined."""
    first = slot % len(pool)
    second = (first + 1 + slot // len(pool)) % len(pool)
    return f"{pool[first]} {pool[second]}"


def make_synthetic(n: int, root: Path) -> Synthetic:
    """n records as described in the module docstring, under root."""
    images = root / f"images-{n}"
    images.mkdir(parents=True, exist_ok=True)
    thumbs, pool = _thumbnails(), caption_pool()
    ids, paths, captions = [], [], []
    for i in range(n):
        if i and i % SAME_IMAGE_EVERY == SAME_IMAGE_EVERY - 1:
            paths.append(paths[-1])
        else:
            name = f"{i:07d}.jpg"
            (images / name).write_bytes(with_jpeg_comment(thumbs[i % len(thumbs)], f"florenz synthetic {i}"))
            paths.append(name)
        texts = [_composite(CAPTIONS_PER_RECORD * i + j, pool) for j in range(CAPTIONS_PER_RECORD)]
        if i and i % SAME_CAPTION_EVERY == SAME_CAPTION_EVERY - 1:
            texts[0] = captions[-1][0]
        captions.append(texts)
        ids.append(ids[-1] if i and i % SAME_ID_EVERY == SAME_ID_EVERY - 1 else f"{i:07d}")
    parquet = root / f"records-{n}.parquet"
    pq.write_table(pa.table({"id": ids, "image_path": paths, "captions": captions}), parquet, row_group_size=1000)
    return Synthetic(parquet, images, frozenset(t for texts in captions for t in texts), n)


def fill_store(store: Path, texts: frozenset[str], fingerprint: str, part_rows: int = 100_000) -> int:
    """A translation of every text into every language, in parts of up to part_rows rows (one per
    language of each slice of part_rows rows); returns the rows."""
    from schemas.records import normalize_text, text_hash
    from transforms.translation_checks import CHECKS_VERSION
    from transforms.translation_store import write_store_rows

    rows = [{"text_hash": text_hash(t), "lang": lang, "fingerprint": fingerprint, "source_text": t,
             "translation": f"[{lang}] {t}", "status": "accepted", "reason": None, "raw_output": f"[{lang}] {t}",
             "checks_version": CHECKS_VERSION}
            for t in sorted({normalize_text(t) for t in texts}) for lang in LANGUAGES]
    for start in range(0, len(rows), part_rows):
        write_store_rows(str(store), rows[start:start + part_rows])
    return len(rows)


# The paper's regime: the held-out languages translate other images' captions (README, "Translation pairing").
PAPER_PAIRING = {"de": "own_caption", **{lang: "other_image" for lang in LANGUAGES if lang != "de"}}


def plan(shard_size: int, images_per_bucket: int, translation_pairing: str | dict = PAPER_PAIRING) -> dict:
    return {"languages": ["en", *LANGUAGES], "caption_languages": ["en", "de"], "translation_languages": LANGUAGES,
            "eval_fraction": 0.05, "seed": 0, "shard_size": shard_size, "images_per_bucket": images_per_bucket,
            "translation_pairing": translation_pairing}


@dataclasses.dataclass(frozen=True)
class Measured:
    maxima: dict[str, int]  # grouping -> its largest group
    seconds: float
    stats: dict


def build_and_measure(data: Synthetic, root: Path, store: Path, run_plan: dict, name: str = "") -> Measured:
    """Build `data` with `store` into root/out-NAME (by default, its size and store) on the in-process
    DirectRunner (annotations whose translation the store lacks are left out, as with
    --allow-missing-translations) and read the group maxima."""
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    from pipeline.build import build_shards
    from pipeline.output_run import output_run
    from schemas.config import load_config
    from transforms.group_metrics import group_maxima

    name = name or f"{data.records}-{store.name}"
    config_path = root / f"config-{name}.yaml"
    config_path.write_text(yaml.safe_dump({"output": str(root / f"out-{name}"), "sources": [data.source()],
                                           "store": {"path": str(store), "fingerprint": "bench"},
                                           "plan": run_plan}))
    config = load_config(str(config_path))
    start = time.perf_counter()
    with output_run(config, "build", writes_store=False) as run_id:
        p = beam.Pipeline(options=PipelineOptions(["--runner=DirectRunner",
                                                   f"--records_per_part={RECORDS_PER_PART}"]))
        build_shards(p, config, run_id, allow_missing=True)
        result = p.run()
        result.wait_until_finish()
    seconds = time.perf_counter() - start
    stats = json.loads((Path(config.output) / STATS).read_text())
    return Measured(group_maxima(result), seconds, stats)


def bounds(run_plan: dict) -> dict[str, tuple[int, str]]:
    """Each grouping's largest allowed group, and why."""
    per_bucket = 2 * run_plan["images_per_bucket"]
    languages = len(run_plan["translation_languages"])
    return {
        "GroupContent": (MULTIPLICITY, "copies of one image content (the data's)"),
        "KeptPerKey": (MULTIPLICITY, "images under one key (the data's)"),
        "Unique": (MULTIPLICITY, "valid images using one caption text (the data's)"),
        "TextBuckets": (MULTIPLICITY, "images using one text, reduced to its buckets before the shuffle"),
        "OnePerKey": (1, "store entries per (text, language): one part holds each"),
        "Lookup": (2, "one needed text + one store entry per (text, language)"),
        "JoinStore": (1 + languages, "one bucket set + one store entry per language"),
        "BucketSizes": (per_bucket, "2 x images_per_bucket"),
        "JoinBuckets": ((1 + CAPTIONS_PER_RECORD) * per_bucket,
                        "2 x images_per_bucket images, each with its captions' translations"),
        "GroupShards": (run_plan["shard_size"], "shard_size"),
        **{name: (2 * RECORDS_PER_PART, "2 x records_per_part (a hash bucket's spread)") for name in FILLED_PARTS},
    }


def unmeasured(runs: list[dict[str, int]], run_plan: dict) -> list[str]:
    """Groupings with a bound that no run reported, and reported ones without a bound (a grouping
    with no input reports nothing: the empty store's OnePerKey). These builds leave missing
    translations out (counted), so they write no missing-translations report: its parts come from
    the same WriteSortedParts as the rejects', measured here."""
    expected = (set(bounds(run_plan)) | LIFTED_TOTALS) - {f"parts:{MISSING_TEXTS}"}
    seen = set().union(*runs)
    return ([f"{name}: not measured in any run" for name in sorted(expected - seen)]
            + [f"{name}: measured, but has no bound" for name in sorted(seen - expected)])


def check(small: dict[str, int], large: dict[str, int], run_plan: dict, records: int) -> list[str]:
    """What breaks the bound between two sizes of one input: a grouping reported at one size only,
    over its bound, or grown by more than FACTOR."""
    limits = bounds(run_plan)
    problems = [f"{name}: measured at one size only" for name in sorted(set(small) ^ set(large))]
    for name, (limit, why) in sorted(limits.items()):
        if name in large and large[name] > limit:
            problems.append(f"{name}: largest group {large[name]} > {limit} ({why})")
        if name in large and name in small and name not in FILLED_PARTS and large[name] > FACTOR * small[name]:
            problems.append(f"{name}: grew from {small[name]} to {large[name]} (> {FACTOR}x)")
    if large.get("SumRead") != records:
        problems.append(f"SumRead: counted {large.get('SumRead')} records, {records} were read")
    return problems


def shuffled_records() -> list[tuple[str, str, int, int]]:
    """(grouping, record, bytes encoded as the pipeline encodes it (Beam's coder for untyped elements),
    records per image) for what each shuffle of a build carries, for one real COCO image with its 5
    real captions, each translated into the 5 languages (a full store: every lookup hits)."""
    import hashlib

    import apache_beam as beam

    from schemas.coverage import CoveragePlan
    from schemas.records import ImageRef, ValidImage, normalize_text, text_hash
    from transforms.coverage import shard_member
    from transforms.translation_store import StoreEntry

    coco = json.loads((SAMPLE_IMAGES.parent / "captions.json").read_text())

    def coco_image(info: dict) -> ValidImage:
        path = SAMPLE_IMAGES / info["file_name"]
        caps = tuple(normalize_text(a["caption"]) for a in coco["annotations"] if a["image_id"] == info["id"])[:5]
        with Image.open(path) as decoded:
            width, height = decoded.size
        return ValidImage("coco", str(info["id"]), f"coco_{info['id']}", ImageRef(str(path)), "jpg", width, height,
                          hashlib.sha256(path.read_bytes()).hexdigest(), caps)

    image, donor = coco_image(coco["images"][0]), coco_image(coco["images"][1])  # the donor: other_image texts
    caps = image.captions
    h = text_hash(image.captions[0])
    found = tuple((lang, f"[{lang}] {image.captions[0]}") for lang in LANGUAGES)
    entry = StoreEntry("accepted", found[0][1], None)
    translations = {text_hash(c): {lang: f"[{lang}] {c}" for lang in LANGUAGES}
                    for c in image.captions + donor.captions}
    member = shard_member(image, SPLIT_TRAIN, CoveragePlan.from_dict(plan(1000, 4096)), translations, donor)
    texts, entries = len(caps), len(caps) * len(LANGUAGES)
    rows = [("Unique", "(text hash, text)", (h, image.captions[0]), texts),
            ("OnePerKey", "((text hash, lang), StoreEntry)", ((h, "de"), entry), entries),
            ("Lookup", "((text hash, lang), text): needed", ((h, "de"), image.captions[0]), entries),
            ("Lookup", "((text hash, lang), StoreEntry): stored", ((h, "de"), entry), entries),
            ("GroupContent", "(sha256, ValidImage)", (image.sha256, image), 1),
            ("TextBuckets", "(text hash, bucket)", (h, 1234), texts),
            ("JoinStore", "(text hash, its buckets)", (h, (1234,)), texts),
            ("JoinStore", "(text hash, (lang, translation))", (h, found[0]), entries),
            ("KeptPerKey", "(key, (source_id, sha256))", (image.key, (image.source_id, image.sha256)), 1),
            ("BucketSizes", "((split, bucket), None), before lifting", ((SPLIT_TRAIN, 1234), None), 1),
            ("JoinBuckets", "(bucket, ValidImage)", (1234, image), 1),
            ("JoinBuckets", "(bucket, (text hash, 5 translations))", (1234, (h, found)), texts),
            ("GroupShards", "((split, shard), (position, ShardMember))", ((SPLIT_TRAIN, 1234), (17, member)), 1)]
    coder = beam.coders.registry.get_coder(typing.Any)
    return [(grouping, record, len(coder.encode(element)), per_image) for grouping, record, element, per_image in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="5000,50000")
    parser.add_argument("--shard-size", type=int, default=1000)
    parser.add_argument("--images-per-bucket", type=int, default=4096, help="the plan's default")
    parser.add_argument("--scale-images", type=int, default=12_000_000, help="for the shuffle arithmetic")
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--out", default=None, help="also write the tables here")
    args = parser.parse_args()
    small_n, large_n = (int(s) for s in args.sizes.split(","))
    root = Path(args.workdir or tempfile.mkdtemp(prefix="florenz-groups-"))
    run_plan = plan(args.shard_size, args.images_per_bucket)
    data = {n: make_synthetic(n, root) for n in (small_n, large_n)}
    stores = {"empty": root / "empty", "full": root / "full"}
    fill_store(stores["full"], data[small_n].texts | data[large_n].texts, "bench")
    runs = {(n, kind): build_and_measure(data[n], root, store, run_plan)
            for kind, store in stores.items() for n in (small_n, large_n)}
    lines = [f"records: {small_n:,} and {large_n:,}; plan: shard_size {args.shard_size}, images_per_bucket "
             f"{args.images_per_bucket}, 5 translation languages; {CAPTIONS_PER_RECORD} captions per record", "",
             "| run | records | seconds | images/s | images written | annotations |", "|---|---:|---:|---:|---:|---:|"]
    for (n, kind), m in runs.items():
        annotations = sum(sum(split["annotations"].values()) for split in m.stats["splits"].values())
        lines.append(f"| {kind} store | {n:,} | {m.seconds:.1f} | {n / m.seconds:.0f} | "
                     f"{m.stats['images']['written']:,} | {annotations:,} |")
    limits = bounds(run_plan)
    lines += ["", f"| grouping | store | max at {small_n:,} | max at {large_n:,} | ratio | bound | bound from |",
              "|---|---|---:|---:|---:|---:|---|"]
    problems = []
    for kind in stores:
        small, large = runs[(small_n, kind)].maxima, runs[(large_n, kind)].maxima
        for name in sorted(set(small) | set(large)):
            ratio = f"{large[name] / small[name]:.2f}" if small.get(name) and name in large else "-"
            limit, why = limits.get(name, ("-", "a lifted total: counts every record, state = 2 integers"))
            lines.append(f"| {name} | {kind} | {small.get(name, '-')} | {large.get(name, '-')} | {ratio} | "
                         f"{limit} | {why} |")
        problems += [f"{kind} store: {p}" for p in check(small, large, run_plan, large_n)]
    problems += unmeasured([m.maxima for m in runs.values()], run_plan)
    lines += ["", f"| grouping | shuffled record | bytes | per image | GB at {args.scale_images / 1e6:g} M images |",
              "|---|---|---:|---:|---:|"]
    total = 0.0
    for grouping, record, size, per_image in shuffled_records():
        gigabytes = size * per_image * args.scale_images / 1e9
        total += gigabytes
        lines.append(f"| {grouping} | {record} | {size} | {per_image} | {gigabytes:.1f} |")
    lines.append(f"| all | | | | {total:.0f} |")
    text = "\n".join(lines)
    print(text)
    if args.out:
        Path(args.out).write_text(text + "\n")
    if problems:
        sys.exit("\n".join(["FAILED:", *problems]))


if __name__ == "__main__":
    main()
