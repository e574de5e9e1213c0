"""The run's closing writes, after every shard, its manifest part (manifest/) and the rejects'
parts (rejects/) exist: wids indexes, stats.json, the resolved config, the removal of earlier runs'
shards this run did not write again, and the _SUCCESS marker; then the run folders go.

Shards of earlier runs are removed, and only those: a file is removed only when an earlier run of
this tool listed it as its own (in a wids index it wrote, by a manifest part in manifest/ naming it,
or in the superseded list a killed finalize left in its run folder) and it has the shape of a shard;
its manifest part goes with it. Nothing else in the output folder is ever deleted, whatever it is
called.

Finalize runs as one DoFn call, and a runner may retry it after any point of a first attempt: every
write is atomic and deterministic, the superseded list is recorded before anything it names is
removed, and the run folders holding it are removed only after _SUCCESS, so a retry finds what the
first attempt was about to remove and writes the same bytes.
"""
from __future__ import annotations

import json
import logging
from typing import Iterator, Optional

import apache_beam as beam
import yaml
from apache_beam.io.filesystems import FileSystems

from schemas.config import RunConfig
from schemas.layout import (CONFIG_COPY, LEGACY_FILES, MANIFEST_DIR, MISSING_SUMMARY, MISSING_TEXTS, PART_NAME,
                            REJECTS_DIR, RUNS_DIR, STATS, SUCCESS, SUPERSEDED, TRANSLATION_STATS, index_name,
                            IndexEntry, index_entries, manifest_part_of_shard, parse_shard, shard_of_intent,
                            shard_of_manifest_part, wids_index)
from schemas.records import SPLITS
from transforms.accounting import compute_stats
from transforms.atomic import delete_paths, join, write_bytes_atomic
from transforms.lease import check_lease
from transforms.rejects import WriteRejects
from transforms.run_folder import delete_tree, files_under, remove_run_dir, run_dir, run_tmp
from transforms.shard_writer import ShardResult

log = logging.getLogger(__name__)


def _json_bytes(obj: object) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode("utf-8")


class WriteTranslationStats(beam.DoFn):
    """The translate command's summary (requested, cache hits, sent, accepted, rejected per reason), or
    the recaption command's (`name`: RECAPTION_STATS); the run's folder goes once it is written."""

    def __init__(self, output: str, run_id: str, name: str = TRANSLATION_STATS, remove_run: bool = True):
        self.output, self.run_id, self.name, self.remove_run = output, run_id, name, remove_run

    def process(self, summary: dict) -> Iterator[dict]:
        check_lease(self.output, self.run_id)
        write_bytes_atomic(join(self.output, self.name), _json_bytes(summary), run_tmp(self.output, self.run_id))
        if self.remove_run:
            remove_run_dir(self.output, self.run_id)
        yield summary


def _read_json(path: str) -> object:
    with FileSystems.open(path, compression_type="uncompressed") as f:
        return json.loads(f.read().decode("utf-8"))


def earlier_shards(output: str) -> set[str]:
    """Shards (relative paths) that runs of this tool wrote into `output`: those its wids indexes
    list, those its manifest parts name (a killed run's too), those a killed run's intent records
    name (a shard written just before the kill, before its manifest part), and those a killed
    finalize recorded in its run folder. Only shard-shaped paths count, so a tampered index cannot point a deletion
    anywhere else."""
    listed: set = set()
    for split in SPLITS:
        path = join(output, index_name(split))
        if FileSystems.exists(path):
            listed.update(entry.url for entry in index_entries(_read_json(path)))
    listed.update(shard_of_manifest_part(path) for path in files_under(join(output, MANIFEST_DIR)))
    for path in files_under(join(output, RUNS_DIR)):
        if path.endswith(f"/{SUPERSEDED}"):
            listed.update(_read_json(path))
        else:
            listed.add(shard_of_intent(path))
    return {p for p in listed if parse_shard(p)}


def _remove_shards(output: str, shards: list[str]) -> None:
    """Delete these shards and their manifest parts, those still there (a retry finds some gone);
    present files are listed, not probed one by one: thousands of shards on an object store."""
    wanted = {join(output, p) for rel in shards for p in (rel, manifest_part_of_shard(rel))}
    folders = sorted({parse_shard(rel)[0] for rel in shards})  # a split's shards lie in its folder
    present = {p for folder in [*folders, MANIFEST_DIR] for p in files_under(join(output, folder))}
    delete_paths(sorted(wanted & present))


class _Finalize(beam.DoFn):
    """One call, after everything else is written: the output's closing files (module docstring)."""

    def __init__(self, config: RunConfig, run_id: str):
        self.config, self.run_id = config, run_id

    def process(self, _, shards: list[ShardResult], read: dict, rejects: list[tuple],
                translation: dict, missing: int = 0, recaption: Optional[dict] = None,
                descriptions: Optional[dict] = None) -> Iterator[dict]:
        if missing:
            return
        out, tmp = self.config.output, run_tmp(self.config.output, self.run_id)
        check_lease(out, self.run_id)
        shards = sorted(shards, key=lambda s: (s.split, s.index))
        # Recorded before the indexes are replaced and anything is removed, so a finalize killed or
        # retried midway still knows them: its run folder goes only after _SUCCESS.
        superseded = sorted(earlier_shards(out) - {s.path for s in shards})
        write_bytes_atomic(join(run_dir(out, self.run_id), SUPERSEDED), _json_bytes(superseded), tmp)
        for split in SPLITS:
            mine = [s for s in shards if s.split == split]
            index = wids_index(split, [IndexEntry(s.path, s.md5, s.nsamples, s.filesize) for s in mine])
            write_bytes_atomic(join(out, index_name(split)), _json_bytes(index), tmp)
        stats = compute_stats(self.config.plan, read, shards, rejects)
        stats["translation"] = translation
        if recaption is not None:  # `run` with a recaption section: its summary, already in recaption_stats.json
            stats["recaption"] = recaption
        if descriptions is not None:  # the build used descriptions: how many images had one
            stats["descriptions"] = descriptions
        write_bytes_atomic(join(out, STATS), _json_bytes(stats), tmp)
        config_text = yaml.safe_dump(self.config.to_dict(), sort_keys=True, allow_unicode=True)
        write_bytes_atomic(join(out, CONFIG_COPY), config_text.encode("utf-8"), tmp)
        check_lease(out, self.run_id)
        if superseded:
            log.info("removing %d shards of an earlier run that this run did not write", len(superseded))
            _remove_shards(out, superseded)
        write_bytes_atomic(join(out, SUCCESS), _json_bytes({"run_id": self.run_id}), out)  # the output's last
        delete_tree(join(out, RUNS_DIR))  # this run's folder and any killed run's, whose shards are handled
        yield stats


def clear_run_markers(output: str) -> None:
    """Before a run, under its lease: the output is not complete until this run's _SUCCESS, and an
    earlier run's rejects and missing-translations report no longer apply (this run writes only the
    parts it has records for, so an earlier part left in place would mix in). Only part-shaped files
    are deleted from those folders; the single files of the older layout go too."""
    files = [join(output, name) for name in (SUCCESS, MISSING_SUMMARY, *LEGACY_FILES)]
    parts = [p for folder in (REJECTS_DIR, MISSING_TEXTS) for p in files_under(join(output, folder))
             if PART_NAME.match(p.rsplit("/", 1)[-1])]
    delete_paths([p for p in files if FileSystems.exists(p)] + parts)


class WriteRunMetadata(beam.PTransform):
    """(shard results, read counts, rejections, translation summary) -> files beside the shards;
    yields stats."""

    def __init__(self, config: RunConfig, run_id: str, gate: Optional[dict] = None,
                 recaption: Optional[beam.PCollection] = None, descriptions: Optional[beam.PCollection] = None):
        """`gate`: {"missing": side input}, when the build must stop on missing translations;
        `recaption`: the recaption summary, once written (finalize waits for it: the run folder it
        used goes with finalize); `descriptions`: the summary of joining images to descriptions."""
        super().__init__()
        self.config, self.run_id = config, run_id
        self.gate = gate or {}
        self.summaries = {name: pc for name, pc in (("recaption", recaption), ("descriptions", descriptions))
                          if pc is not None}

    def expand(self, inputs: tuple):
        shards, read_counts, rejections, translation = inputs
        reject_summary = rejections | "Rejects" >> WriteRejects(self.config.output, self.run_id, self.gate)
        return (shards.pipeline
                | "Trigger" >> beam.Create([None])
                | "Finalize" >> beam.ParDo(_Finalize(self.config, self.run_id),
                                           shards=beam.pvalue.AsList(shards),
                                           read=beam.pvalue.AsDict(read_counts),
                                           rejects=beam.pvalue.AsList(reject_summary),
                                           translation=beam.pvalue.AsSingleton(translation), **self.gate,
                                           **{name: beam.pvalue.AsSingleton(pc) for name, pc in self.summaries.items()}))
