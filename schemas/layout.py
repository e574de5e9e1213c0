"""The layout of a pipeline output, in one place: every folder, file and member name that the writers
write and the readers (verify, report, the loader, the tests) look for.

    OUTPUT/
      train/000000.tar, eval/000000.tar       shards: <key>.<jpg|png|webp> + <key>.json per sample, and
                                              <key>.224.jpg (a resized copy) with a `resized` section
      train.index.json, eval.index.json       wids indexes (relative urls)
      manifest/<split>-<index>.parquet        one manifest part per shard (schemas/arrow.py)
      rejects/part-NNNNN.jsonl                every rejection
      missing_translations/part-NNNNN.jsonl   the texts a stopped build lacked, and
      missing_translations.json               their counts
      stats.json, config.yaml                 the build's counts, its resolved config
      translation_stats.json                  the last `translate`'s summary
      recaption_stats.json                    the last `recaption`'s (or recaptioning `run`'s) summary
      _SUCCESS                                written last: the output is complete
      _lease.json, _runs/<run id>/            while a run holds the output (tmp/, staging/, intents/)
      report/                                 `florenz-data report`'s files

Paths here are relative to the output folder and '/'-separated (a wids index holds them as relative
urls). Callers join them to the output with Beam's FileSystems.join (transforms.atomic.join), never
pathlib, so s3:// and gs:// outputs work; nothing here does I/O. The content of a sample's JSON member
is schemas/sample.py's.
"""
from __future__ import annotations

import dataclasses
import re
from typing import Any, Optional

from schemas.records import SPLITS

# -- a shard's members -------------------------------------------------------------------------------
JSON_EXTENSION = "json"
IMAGE_EXTENSIONS = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}  # Pillow's format -> member extension


# The resized copy's modes (img2dataset's names; its `no` mode, no resizing, is having no copy) and member
# extension: `224.jpg` for the square resize, the one Florence-2's processor does and the loader reads;
# `224.<mode>.jpg` for the others, so a member's name says which pixels it holds.
RESIZE_SQUARE, RESIZE_KEEP_RATIO, RESIZE_CENTER_CROP, RESIZE_BORDER = "square", "keep_ratio", "center_crop", "border"
RESIZE_MODES = (RESIZE_SQUARE, RESIZE_KEEP_RATIO, RESIZE_CENTER_CROP, RESIZE_BORDER)
RESIZED_FORMAT = "jpg"


def resized_extension(size: int, mode: str) -> str:
    """The member extension of the copy resized to `size` in `mode`."""
    return f"{size}.{RESIZED_FORMAT}" if mode == RESIZE_SQUARE else f"{size}.{mode}.{RESIZED_FORMAT}"


def member_name(key: str, extension: str) -> str:
    """`<key>.<extension>`: WebDataset splits a member name at its first dot, so keys hold none."""
    return f"{key}.{extension}"


def member_key(name: str) -> tuple[str, str]:
    """(key, extension) of a member name, as WebDataset reads it."""
    key, _, extension = name.partition(".")
    return key, extension


# -- shards, their indexes and manifest parts ---------------------------------------------------------
SHARD_EXTENSION = "tar"
MANIFEST_DIR = "manifest"  # one Parquet part per shard; the folder reads as one dataset (pyarrow.dataset)
_SHARD_STEM = re.compile(r"(%s)-([0-9]{6})" % "|".join(SPLITS))  # matched whole (fullmatch)
_SHARD_PATH = re.compile(r"(%s)/([0-9]{6})\.%s" % ("|".join(SPLITS), SHARD_EXTENSION))


def shard_relpath(split: str, index: int) -> str:
    """train/000003.tar: a split's shards lie in the folder named after it."""
    return f"{split}/{index:06d}.{SHARD_EXTENSION}"


def shard_glob(split: str) -> str:
    """A FileSystems.match pattern, relative to the output, for the files where `split`'s shards lie."""
    return f"{split}/*.{SHARD_EXTENSION}"


def shard_glob_relpath(split: str, matched: str) -> str:
    """The relative path of a file (full path or URI) that `shard_glob(split)` matched."""
    return f"{split}/{matched.rsplit('/', 1)[-1]}"


def parse_shard(relpath: object) -> Optional[tuple[str, int]]:
    """(split, index) of a relative shard path, or None for anything not shaped like one (so a tampered
    index or manifest part cannot name any other file)."""
    match = _SHARD_PATH.fullmatch(relpath) if isinstance(relpath, str) else None
    return (match[1], int(match[2])) if match else None


def _shard_stem(split: str, index: int) -> str:
    return f"{split}-{index:06d}"


def _shard_of_stem(stem: str) -> Optional[str]:
    match = _SHARD_STEM.fullmatch(stem)
    return shard_relpath(match[1], int(match[2])) if match else None


def manifest_part(split: str, index: int) -> str:
    """A shard's manifest part, manifest/<split>-<index>.parquet (relative)."""
    return f"{MANIFEST_DIR}/{_shard_stem(split, index)}.parquet"


def manifest_part_of_shard(shard: str) -> str:
    """The manifest part (relative) of a relative shard path; ValueError for a path not shaped like one."""
    parsed = parse_shard(shard)
    if parsed is None:
        raise ValueError(f"not a shard path: {shard!r}")
    return manifest_part(*parsed)


def shard_of_manifest_part(path: str) -> Optional[str]:
    """The shard (relative path) a manifest part names, or None for a file not shaped like a part."""
    name = path.rsplit("/", 1)[-1]
    return _shard_of_stem(name.removesuffix(".parquet")) if name.endswith(".parquet") else None


def index_name(split: str) -> str:
    return f"{split}.index.json"


@dataclasses.dataclass(frozen=True)
class IndexEntry:
    """One shard of a wids index, in wids's own field names: `url` is the relative shard path, which
    wids resolves against the index's folder."""

    url: str
    md5sum: str
    nsamples: int
    filesize: int


def wids_index(name: str, entries: list[IndexEntry]) -> dict[str, Any]:
    """A wids shard index (`wids-shard-index-v1`), as JSON-ready data."""
    return {"__kind__": "wids-shard-index-v1", "wids_version": 1, "name": name,
            "shardlist": [dataclasses.asdict(e) for e in entries]}


def index_entries(index: dict[str, Any]) -> list[IndexEntry]:
    """The shards a wids index lists, in its order; a field an entry lacks is None and other keys are
    ignored, so a tampered index is reported by what reads it (verify), not a crash."""
    names = [field.name for field in dataclasses.fields(IndexEntry)]
    return [IndexEntry(*(entry.get(name) for name in names)) for entry in index["shardlist"]]


# -- the output's other files --------------------------------------------------------------------------
STATS = "stats.json"
CONFIG_COPY = "config.yaml"
TRANSLATION_STATS = "translation_stats.json"
RECAPTION_STATS = "recaption_stats.json"
SUCCESS = "_SUCCESS"
REJECTS_DIR = "rejects"
MISSING_TEXTS = "missing_translations"  # the folder of parts
MISSING_SUMMARY = "missing_translations.json"
REPORT_DIR = "report"
# What this tool wrote before the manifest, rejects and missing-translation texts became folders of parts.
LEGACY_FILES = ("manifest.parquet", "rejects.jsonl", "missing_translations.jsonl")

# rejects/ and missing_translations/ hold sorted JSONL parts (transforms/sorted_parts.py)
PART_NAME = re.compile(r"^part-[0-9]{5}\.jsonl$")
MAX_PARTS = 100_000  # the part name has five digits


def part_name(bucket: int) -> str:
    return f"part-{bucket:05d}.jsonl"


# -- while a run holds the output ----------------------------------------------------------------------
LEASE = "_lease.json"
RUNS_DIR = "_runs"
RUN_TMP = "tmp"  # a run's temporary names
RUN_STAGING = "staging"  # its staged images
SUPERSEDED = "superseded.json"  # earlier shards the run is about to remove
INTENTS_DIR = "intents"  # one record per shard the run is writing


def run_folder(run_id: str) -> str:
    return f"{RUNS_DIR}/{run_id}"


def intent(run_id: str, split: str, index: int) -> str:
    """The record a run writes before it puts shard (split, index) in place (relative)."""
    return f"{run_folder(run_id)}/{INTENTS_DIR}/{_shard_stem(split, index)}"


def shard_of_intent(path: str) -> Optional[str]:
    """The shard an intent record names, or None for any other file."""
    folder, _, name = path.rpartition("/")
    return _shard_of_stem(name) if folder.endswith(f"/{INTENTS_DIR}") else None
