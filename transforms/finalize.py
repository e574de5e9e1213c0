"""The run's closing writes, after every shard exists: manifest.parquet, wids indexes, rejects,
stats.json, the resolved config, and the _SUCCESS marker last.

Shards of earlier runs that this run did not write again are removed, and only those: a file is
removed only when an earlier run of this tool listed it as its own (in a wids index it wrote, or in
the manifest parts / superseded list a killed run left in its run folder) and it has the shape of a
shard. Nothing else in the output folder is ever deleted, whatever it is called.
"""
from __future__ import annotations

import json
import logging
import re
from collections import Counter
from typing import Iterable, Iterator, Optional

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
import yaml
from apache_beam.io.filesystems import FileSystems

from schemas.arrow import MANIFEST_SCHEMA
from schemas.config import RunConfig
from schemas.records import SPLITS, Rejection
from transforms.accounting import compute_stats
from transforms.atomic import atomic_create, delete_paths, join, write_bytes_atomic
from transforms.lease import check_lease
from transforms.missing import MISSING_SUMMARY, MISSING_TEXTS
from transforms.run_folder import RUNS_DIR, delete_tree, files_under, run_dir, run_tmp
from transforms.shard_writer import ShardResult, manifest_part_path, shard_of_manifest_part

MANIFEST = "manifest.parquet"
STATS = "stats.json"
REJECTS = "rejects.jsonl"
CONFIG_COPY = "config.yaml"
SUCCESS = "_SUCCESS"
SUPERSEDED = "superseded.json"  # in a run folder: earlier shards the run is about to remove
_SHARD_PATH = re.compile(r"^(%s)/[0-9]{6}\.tar$" % "|".join(SPLITS))
log = logging.getLogger(__name__)


def index_name(split: str) -> str:
    return f"{split}.index.json"


def wids_index(shards: list[ShardResult], name: str) -> dict:
    """A wids shard index; urls are relative, which wids resolves against the index's folder."""
    return {"__kind__": "wids-shard-index-v1", "wids_version": 1, "name": name,
            "shardlist": [{"url": s.path, "md5sum": s.md5, "nsamples": s.nsamples, "filesize": s.filesize}
                          for s in shards]}


def _json_bytes(obj: object) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


TRANSLATION_STATS = "translation_stats.json"


class WriteTranslationStats(beam.DoFn):
    """The translate command's summary (requested, cache hits, sent, accepted, rejected per reason)."""

    def __init__(self, output: str, run_id: str):
        self.output, self.run_id = output, run_id

    def process(self, summary: dict) -> Iterator[dict]:
        check_lease(self.output, self.run_id)
        write_bytes_atomic(join(self.output, TRANSLATION_STATS), _json_bytes(summary),
                           run_tmp(self.output, self.run_id))
        delete_tree(run_dir(self.output, self.run_id))
        yield summary


class _WriteRejects(beam.DoFn):
    """All rejections -> rejects.jsonl (sorted), emitting (source, level, reason, images, captions)."""

    def __init__(self, output: str, run_id: str):
        self.output, self.run_id = output, run_id

    def process(self, item: tuple[None, Iterable[Rejection | None]], missing: int = 0) -> Iterator[tuple]:
        if missing:
            return
        _, rejects = item
        ordered = sorted((r for r in rejects if r is not None), key=lambda r: (r.source, r.key, r.level, r.reason))
        summary: Counter = Counter()
        with atomic_create(join(self.output, REJECTS), run_tmp(self.output, self.run_id)) as f:
            for r in ordered:
                f.write((json.dumps(r.to_json(), sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8"))
                summary[(r.source, r.level, r.reason)] += 1
                summary[(r.source, r.level, r.reason, "captions")] += r.captions
        for (source, level, reason, *rest), n in sorted(summary.items()):
            if not rest:
                yield (source, level, reason, n if level == "image" else 0,
                       summary[(source, level, reason, "captions")])


def _read_json(path: str) -> object:
    with FileSystems.open(path, compression_type="uncompressed") as f:
        return json.loads(f.read().decode("utf-8"))


def earlier_shards(output: str) -> set[str]:
    """Shards (relative paths) that earlier runs of this tool wrote into `output`: those its wids
    indexes list, and those killed runs recorded in their run folders. Only shard-shaped paths count,
    so a tampered index cannot point a deletion anywhere else."""
    listed: set[str] = set()
    for split in SPLITS:
        path = join(output, index_name(split))
        if FileSystems.exists(path):
            listed.update(entry["url"] for entry in _read_json(path)["shardlist"])
    for path in files_under(join(output, RUNS_DIR)):
        if path.endswith(f"/{SUPERSEDED}"):
            listed.update(_read_json(path))
        elif "/manifest_parts/" in path and path.endswith(".parquet"):
            listed.add(shard_of_manifest_part(path))
    return {p for p in listed if isinstance(p, str) and _SHARD_PATH.match(p)}


class _Finalize(beam.DoFn):
    def __init__(self, config: RunConfig, run_id: str):
        self.config, self.run_id = config, run_id

    def process(self, _, shards: list[ShardResult], read: dict, rejects: list[tuple],
                translation: dict, missing: int = 0) -> Iterator[dict]:
        if missing:
            return
        out, tmp = self.config.output, run_tmp(self.config.output, self.run_id)
        check_lease(out, self.run_id)
        shards = sorted(shards, key=lambda s: (s.split, s.index))
        # Recorded before the indexes are replaced, so a finalize killed midway still knows them.
        superseded = sorted(earlier_shards(out) - {s.path for s in shards})
        write_bytes_atomic(join(run_dir(out, self.run_id), SUPERSEDED), _json_bytes(superseded), tmp)
        self._write_manifest(shards)
        for split in SPLITS:
            mine = [s for s in shards if s.split == split]
            write_bytes_atomic(join(out, index_name(split)), _json_bytes(wids_index(mine, split)), tmp)
        stats = compute_stats(self.config.plan, read, shards, rejects)
        stats["translation"] = translation
        write_bytes_atomic(join(out, STATS), _json_bytes(stats), tmp)
        config_text = yaml.safe_dump(self.config.to_dict(), sort_keys=True, allow_unicode=True)
        write_bytes_atomic(join(out, CONFIG_COPY), config_text.encode("utf-8"), tmp)
        check_lease(out, self.run_id)
        if superseded:
            log.info("removing %d shards of an earlier run that this run did not write", len(superseded))
            delete_paths([p for p in (join(out, rel) for rel in superseded) if FileSystems.exists(p)])
        delete_tree(join(out, RUNS_DIR))  # this run's folder and any killed run's, whose shards are handled
        write_bytes_atomic(join(out, SUCCESS), _json_bytes({"run_id": self.run_id}), out)  # last
        yield stats

    def _write_manifest(self, shards: list[ShardResult]) -> None:
        """Stream the per-shard manifest parts into one file: memory holds one shard's rows."""
        out = self.config.output
        parts = [manifest_part_path(out, self.run_id, s.split, s.index) for s in shards]
        with atomic_create(join(out, MANIFEST), run_tmp(out, self.run_id)) as f:
            with pq.ParquetWriter(pa.PythonFile(f, mode="w"), MANIFEST_SCHEMA) as writer:
                for part in parts:
                    with FileSystems.open(part, compression_type="uncompressed") as p:
                        writer.write_table(pq.read_table(p, schema=MANIFEST_SCHEMA))


def clear_run_markers(output: str) -> None:
    """Before a run, under its lease: the output is not complete until this run's _SUCCESS, and an
    earlier run's missing-translations report no longer applies."""
    for name in (SUCCESS, MISSING_TEXTS, MISSING_SUMMARY):
        if FileSystems.exists(join(output, name)):
            delete_paths([join(output, name)])


class WriteRunMetadata(beam.PTransform):
    """(shard results, read counts, rejections, translation summary) -> files beside the shards;
    yields stats."""

    def __init__(self, config: RunConfig, run_id: str, gate: Optional[dict] = None):
        """`gate`: {"missing": side input}, when the build must stop on missing translations."""
        super().__init__()
        self.config, self.run_id = config, run_id
        self.gate = gate or {}

    def expand(self, inputs: tuple):
        shards, read_counts, rejections, translation = inputs
        # The None element makes the group exist, so rejects.jsonl is written even when empty.
        reject_summary = ((rejections, shards.pipeline | "Always" >> beam.Create([None]))
                          | "All" >> beam.Flatten()
                          | "OneGroup" >> beam.Map(lambda r: (None, r))
                          | "Collect" >> beam.GroupByKey()
                          | "WriteRejects" >> beam.ParDo(_WriteRejects(self.config.output, self.run_id), **self.gate))
        return (shards.pipeline
                | "Trigger" >> beam.Create([None])
                | "Finalize" >> beam.ParDo(_Finalize(self.config, self.run_id),
                                           shards=beam.pvalue.AsList(shards),
                                           read=beam.pvalue.AsDict(read_counts),
                                           rejects=beam.pvalue.AsList(reject_summary),
                                           translation=beam.pvalue.AsSingleton(translation), **self.gate))
