"""The run's closing writes, after every shard exists: manifest.parquet, wids indexes, rejects,
stats.json, the resolved config, and the _SUCCESS marker last. Stale files of an earlier run
(shards beyond this run's count, temporary files) are removed.
"""
from __future__ import annotations

import json
import logging
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
from transforms.atomic import TMP_DIR, atomic_create, join, write_bytes_atomic
from transforms.missing import MISSING_SUMMARY, MISSING_TEXTS
from transforms.shard_writer import MANIFEST_PARTS_DIR, ShardResult, manifest_part_path

MANIFEST = "manifest.parquet"
STATS = "stats.json"
REJECTS = "rejects.jsonl"
CONFIG_COPY = "config.yaml"
SUCCESS = "_SUCCESS"
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

    def __init__(self, output: str):
        self.output = output

    def process(self, summary: dict) -> Iterator[dict]:
        write_bytes_atomic(join(self.output, TRANSLATION_STATS), _json_bytes(summary), join(self.output, TMP_DIR))
        _delete_tree(join(self.output, TMP_DIR))
        yield summary


class _WriteRejects(beam.DoFn):
    """All rejections -> rejects.jsonl (sorted), emitting (source, level, reason, images, captions)."""

    def __init__(self, output: str):
        self.output = output

    def process(self, item: tuple[None, Iterable[Rejection | None]], missing: int = 0) -> Iterator[tuple]:
        if missing:
            return
        _, rejects = item
        ordered = sorted((r for r in rejects if r is not None), key=lambda r: (r.source, r.key, r.level, r.reason))
        summary: Counter = Counter()
        with atomic_create(join(self.output, REJECTS), join(self.output, TMP_DIR)) as f:
            for r in ordered:
                f.write((json.dumps(r.to_json(), sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8"))
                summary[(r.source, r.level, r.reason)] += 1
                summary[(r.source, r.level, r.reason, "captions")] += r.captions
        for (source, level, reason, *rest), n in sorted(summary.items()):
            if not rest:
                yield (source, level, reason, n if level == "image" else 0,
                       summary[(source, level, reason, "captions")])


class _Finalize(beam.DoFn):
    def __init__(self, config: RunConfig):
        self.config = config

    def process(self, _, shards: list[ShardResult], read: dict, rejects: list[tuple],
                translation: dict, missing: int = 0) -> Iterator[dict]:
        if missing:
            return
        out = self.config.output
        shards = sorted(shards, key=lambda s: (s.split, s.index))
        self._write_manifest(shards)
        for split in SPLITS:
            mine = [s for s in shards if s.split == split]
            write_bytes_atomic(join(out, index_name(split)), _json_bytes(wids_index(mine, split)), join(out, TMP_DIR))
            self._remove_stale_shards(split, {s.path for s in mine})
        stats = compute_stats(self.config.plan, read, shards, rejects)
        stats["translation"] = translation
        write_bytes_atomic(join(out, STATS), _json_bytes(stats), join(out, TMP_DIR))
        config_text = yaml.safe_dump(self.config.to_dict(), sort_keys=True, allow_unicode=True)
        write_bytes_atomic(join(out, CONFIG_COPY), config_text.encode("utf-8"), join(out, TMP_DIR))
        _delete_tree(join(out, TMP_DIR))
        FileSystems.create(join(out, SUCCESS)).close()  # last: the run is complete
        yield stats

    def _write_manifest(self, shards: list[ShardResult]) -> None:
        """Stream the per-shard manifest parts into one file: memory holds one shard's rows."""
        out = self.config.output
        parts = [manifest_part_path(out, s.split, s.index) for s in shards]
        with atomic_create(join(out, MANIFEST), join(out, TMP_DIR)) as f:
            with pq.ParquetWriter(pa.PythonFile(f, mode="w"), MANIFEST_SCHEMA) as writer:
                for part in parts:
                    with FileSystems.open(part, compression_type="uncompressed") as p:
                        writer.write_table(pq.read_table(p, schema=MANIFEST_SCHEMA))
        _delete_tree(join(out, MANIFEST_PARTS_DIR))

    def _remove_stale_shards(self, split: str, current: set[str]) -> None:
        pattern = join(self.config.output, split, "*.tar")
        stale = [m.path for m in FileSystems.match([pattern])[0].metadata_list
                 if f"{split}/{m.path.rsplit('/', 1)[-1]}" not in current]
        if stale:
            log.info("removing %d stale shards of an earlier run in %s/", len(stale), split)
            FileSystems.delete(stale)


def _delete_tree(path: str) -> None:
    if FileSystems.exists(path):
        FileSystems.delete([path])


def clear_run_markers(output: str) -> None:
    """Before a run: the output is not complete until this run's _SUCCESS; drop leftovers of a
    killed run (temporary files, manifest parts)."""
    for path in (join(output, SUCCESS), join(output, TMP_DIR), join(output, MANIFEST_PARTS_DIR),
                 join(output, MISSING_TEXTS), join(output, MISSING_SUMMARY)):
        _delete_tree(path)


class WriteRunMetadata(beam.PTransform):
    """(shard results, read counts, rejections, translation summary) -> files beside the shards;
    yields stats."""

    def __init__(self, config: RunConfig, gate: Optional[dict] = None):
        """`gate`: {"missing": side input}, when the build must stop on missing translations."""
        super().__init__()
        self.config = config
        self.gate = gate or {}

    def expand(self, inputs: tuple):
        shards, read_counts, rejections, translation = inputs
        # The None element makes the group exist, so rejects.jsonl is written even when empty.
        reject_summary = ((rejections, shards.pipeline | "Always" >> beam.Create([None]))
                          | "All" >> beam.Flatten()
                          | "OneGroup" >> beam.Map(lambda r: (None, r))
                          | "Collect" >> beam.GroupByKey()
                          | "WriteRejects" >> beam.ParDo(_WriteRejects(self.config.output), **self.gate))
        return (shards.pipeline
                | "Trigger" >> beam.Create([None])
                | "Finalize" >> beam.ParDo(_Finalize(self.config),
                                           shards=beam.pvalue.AsList(shards),
                                           read=beam.pvalue.AsDict(read_counts),
                                           rejects=beam.pvalue.AsList(reject_summary),
                                           translation=beam.pvalue.AsSingleton(translation), **self.gate))
