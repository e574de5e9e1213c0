"""Compaction of the translation store: a partition's many appended parts (one per translate batch)
become a few large files, one row per key, and the old flat layout (STORE/part-*.parquet) moves into
partitions on the way. The same steps re-judge the store under the current checks (`recheck`).

Why: at CC12M scale the translate stage leaves ~1.17 M parts of 256 rows; every build lists and opens
each of them. Compacted, a (fingerprint, lang) partition of 60 M entries is 60 files of 1 M rows.

Steps, each spread over workers:
- list every input: per partition its appended parts (16 slices) and compacted parts; when
  migrating, the flat parts (16 slices);
- choose: a partition that is exactly one complete compacted generation is left alone; any other is
  rewritten whole (an appended part holds keys of every bucket); migrating rewrites every partition.
  Rechecking instead reads every listed part and rewrites the partitions holding a verdict of older
  checks that can be judged again (so a second recheck rewrites nothing);
- read each input per row group, every column; judge each verdict of older checks again
  (transforms/store_verdicts.py: every rewritten row is stored as a reader would judge it, so a
  reader resolves a key the same before and after), counted per change (recheck's report); count rows
  per partition: n = ceil(rows / rows_per_file) files for it (a side input);
- bucket k = crc32(text_hash) mod n; one worker per bucket sorts it by text_hash in Arrow (rows_per_file
  rows at ~250 B: ~250 MB at the default), keeps one row per key in prefer_entry's order, and writes
  part-compacted-<generation>-<k>-of-<n>.parquet (temporary name, then rename; a retried bundle
  writes the same bytes to the same name);
- only once every file is written (a side input of their count waits for all of them) are the chosen
  inputs deleted: never a part written after the listing (a translate run may append meanwhile).

A build reading meanwhile sees the old parts, or the new ones, or both (duplicates it resolves as
compaction did); never neither (transforms/translation_store.py, ReadStoreEntries). The caller holds
the store's lease (pipeline/compact_store.py), so one compaction runs at a time and generations
(run ids, which sort by start time) increase.
"""
from __future__ import annotations

import dataclasses
import itertools
import math
import zlib
from operator import itemgetter
from typing import Iterable, Iterator, NamedTuple, Optional, Sequence

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from schemas.arrow import TRANSLATION_SCHEMA
from transforms.atomic import atomic_create, delete_paths, join
from transforms.store_verdicts import REJUDGED, STALE, change_name, checks_version, current_verdict
from transforms.translation_store import (APPENDED_SLICES, COMPACTED_PART, TMP, compacted_name, entry_order,
                                          flat_parts, list_appended, list_compacted, part_path, partition_dir,
                                          read_row_group, row_group_count)

ROWS_PER_FILE = 1_000_000
ROW_GROUP_ROWS = 65_536
METRICS = "compact-store"
COMPACTED = "compacted"  # the listing item of a partition's compacted parts
VALUE_FIELDS = ("text_hash", "source_text", "translation", "status", "reason", "raw_output", "checks_version")
_VALUE_SCHEMA = pa.schema([TRANSLATION_SCHEMA.field(name) for name in VALUE_FIELDS])


class InputPart(NamedTuple):
    partition: Optional[tuple[str, str]]  # (fingerprint, lang); None for a part of the old flat layout
    path: str


def bucket_of(text_hash: str, files: int) -> int:
    """The compacted file of a key: stable across runs and machines (not Python's salted hash())."""
    return zlib.crc32(text_hash.encode("utf-8")) % files


def one_complete_generation(names: Iterable[str]) -> bool:
    """Whether part names are exactly the n files of one compacted generation."""
    parsed = [COMPACTED_PART.fullmatch(name) for name in names]
    if not parsed or None in parsed:
        return False
    generations = {(m["generation"], int(m["n"])) for m in parsed}
    if len(generations) != 1:
        return False
    ((_, n),) = generations
    return sorted(int(m["k"]) for m in parsed) == list(range(n))


def _count(name: str, value: int = 1) -> None:
    beam.metrics.Metrics.counter(METRICS, name).inc(value)


def _list_inputs(item: tuple[Optional[tuple[str, str]], str], store: str) -> Iterator[InputPart]:
    partition, slice_ = item
    if partition is None:
        paths = flat_parts(store, slice_)
    elif slice_ == COMPACTED:
        paths = list_compacted(partition_dir(store, *partition))
    else:
        paths = list_appended(partition_dir(store, *partition), slice_)
    for path in paths:
        yield InputPart(partition, path)


class _NeedsRewrite(beam.CombineFn):
    """A partition's listed part names -> whether to rewrite it: unless it is one complete compacted
    generation. The accumulator is the compacted names seen (few), or None once another part is."""

    def create_accumulator(self) -> Optional[frozenset]:
        return frozenset()

    def add_input(self, acc: Optional[frozenset], name: str) -> Optional[frozenset]:
        if acc is None or not COMPACTED_PART.fullmatch(name):
            return None
        return acc | {name}

    def merge_accumulators(self, accs: Iterable[Optional[frozenset]]) -> Optional[frozenset]:
        accs = list(accs)
        return None if None in accs else frozenset().union(*accs)

    def extract_output(self, acc: Optional[frozenset]) -> bool:
        return acc is None or not one_complete_generation(acc)


def _chosen(part: InputPart, rewrite: dict, migrating: bool) -> bool:
    return migrating or part.partition is None or rewrite.get(part.partition, False)


def _rejudged(partition: tuple[str, str], _values: tuple, kind: str) -> tuple[tuple[str, str], bool]:
    return partition, kind == REJUDGED


def _row_chosen(row: tuple[tuple[str, str], tuple, str], rewrite: dict, migrating: bool) -> bool:
    return migrating or rewrite.get(row[0], False)


def _row_groups(part: InputPart) -> Iterator[tuple[str, int]]:
    _count("parts_read")
    for group in range(row_group_count(part.path)):
        yield part.path, group


def _rows(item: tuple[str, int]) -> Iterator[tuple[tuple[str, str], tuple, str]]:
    """((fingerprint, lang), row values, kind) of one row group, each verdict as the current checks
    judge it (kind: store_verdicts.CURRENT, REJUDGED or STALE); a row goes to the partition it names."""
    path, group = item
    count = 0
    for r in read_row_group(path, group, TRANSLATION_SCHEMA.names):
        count += 1
        verdict = current_verdict(path, r["lang"], r["source_text"], r["status"], r["translation"], r["reason"],
                                  r["raw_output"], r["checks_version"])
        if verdict.kind == REJUDGED:
            _count("rejudged")
            _count(change_name((r["status"], r["reason"]), verdict))
        elif verdict.kind == STALE:
            _count("not_rejudgeable")
        judged = {**r, **dataclasses.asdict(verdict)}
        yield (r["fingerprint"], r["lang"]), tuple(judged[name] for name in VALUE_FIELDS), verdict.kind
    _count("rows_read", count)


def _bucketed(item: tuple[tuple[str, str], tuple], files: dict) -> tuple[tuple[str, str, int], tuple]:
    (fingerprint, lang), row = item
    return (fingerprint, lang, bucket_of(row[0], files[(fingerprint, lang)])), row


def _chunks(items: Iterable, size: int) -> Iterator[list]:
    iterator = iter(items)
    while chunk := list(itertools.islice(iterator, size)):
        yield chunk


def bucket_table(rows: Iterable[tuple]) -> pa.Table:
    """One bucket's row values in Arrow, converted ROW_GROUP_ROWS at a time (far smaller than tuples)."""
    batches = [pa.RecordBatch.from_arrays([pa.array(column, field.type)
                                           for column, field in zip(zip(*chunk), _VALUE_SCHEMA)],
                                          schema=_VALUE_SCHEMA)
               for chunk in _chunks(rows, ROW_GROUP_ROWS)]
    return pa.Table.from_batches(batches, schema=_VALUE_SCHEMA)


def resolved_rows(table: pa.Table) -> Iterator[tuple]:
    """One row per text_hash, by text_hash: of several (judged), the one prefer_entry picks (ties by
    source text, then by the judged answer)."""
    ordered = table.sort_by("text_hash")
    rows = (row for batch in ordered.to_batches(max_chunksize=ROW_GROUP_ROWS)
            for row in zip(*(column.to_pylist() for column in batch.columns)))
    current = checks_version()
    for _, same in itertools.groupby(rows, key=itemgetter(0)):
        yield min(same, key=lambda r: (entry_order(r[3], r[2], r[4], r[6] != current), r[1], r[5] or "",
                                       r[5] is None))


class _WriteBucket(beam.DoFn):
    """((fingerprint, lang, k), row values) -> the compacted file of that bucket, written whole."""

    def __init__(self, store: str, generation: str):
        self.store = store
        self.generation = generation

    def process(self, element, files: dict) -> Iterator[str]:
        (fingerprint, lang, k), rows = element
        n = files[(fingerprint, lang)]
        path = part_path(self.store, fingerprint, lang, compacted_name(self.generation, k, n))
        written = 0
        with atomic_create(path, join(self.store, TMP)) as f, \
                pq.ParquetWriter(f, TRANSLATION_SCHEMA, compression="zstd") as writer:
            for chunk in _chunks(resolved_rows(bucket_table(rows)), ROW_GROUP_ROWS):
                columns = {**dict(zip(VALUE_FIELDS, zip(*chunk))), "fingerprint": [fingerprint] * len(chunk),
                           "lang": [lang] * len(chunk)}
                writer.write_table(pa.Table.from_pydict({name: list(columns[name]) for name in TRANSLATION_SCHEMA.names},
                                                        schema=TRANSLATION_SCHEMA), row_group_size=ROW_GROUP_ROWS)
                written += len(chunk)
        _count("files_written")
        _count("rows_written", written)
        yield path


def _delete(paths: list[str], _all_written: int) -> None:
    """Delete replaced parts; a retried bundle finds some of them deleted already."""
    try:
        delete_paths(paths)
    except Exception:  # BeamIOError: some were gone; delete the rest
        delete_paths([p for p in paths if FileSystems.exists(p)])
    _count("parts_deleted", len(paths))


class CompactStore(beam.PTransform):
    """Compact the given (fingerprint, lang) partitions of `store` (and, when `migrate_flat`, move the
    old flat layout's parts into partitions); writes generation `generation`'s files, then deletes what
    they replace. Returns the written paths.

    `recheck`: choose the partitions to rewrite by their rows instead of their part names: those that
    hold a verdict of older checks that can be judged again (every listed part is read to know)."""

    def __init__(self, store: str, partitions: Sequence[tuple[str, str]], migrate_flat: bool, generation: str,
                 rows_per_file: int = ROWS_PER_FILE, recheck: bool = False):
        super().__init__()
        self.store, self.partitions, self.migrate_flat = store, list(partitions), migrate_flat
        self.generation, self.rows_per_file, self.recheck = generation, rows_per_file, recheck

    def expand(self, pbegin):
        slices = [(p, s) for p in self.partitions for s in (*APPENDED_SLICES, COMPACTED)]
        if self.migrate_flat:
            slices += [(None, s) for s in APPENDED_SLICES]
        inputs = (pbegin
                  | "Slices" >> beam.Create(slices)
                  | "SpreadSlices" >> beam.Reshuffle()
                  | "ListInputs" >> beam.FlatMap(_list_inputs, self.store))
        if self.recheck:
            read = inputs
        else:
            rewrite = (inputs
                       | "Partitioned" >> beam.Filter(lambda part: part.partition is not None)
                       | "Names" >> beam.Map(lambda part: (part.partition, part.path.rsplit("/", 1)[-1]))
                       | "NeedsRewrite" >> beam.CombinePerKey(_NeedsRewrite()))
            read = inputs | "Chosen" >> beam.Filter(_chosen, beam.pvalue.AsDict(rewrite), self.migrate_flat)
        judged = (read
                  | "SpreadParts" >> beam.Reshuffle()
                  | "RowGroups" >> beam.FlatMap(_row_groups)
                  | "SpreadRowGroups" >> beam.Reshuffle()
                  | "Rows" >> beam.FlatMap(_rows))
        if self.recheck:
            rewrite = beam.pvalue.AsDict(judged
                                         | "Rejudged" >> beam.MapTuple(_rejudged)
                                         | "AnyRejudged" >> beam.CombinePerKey(any))
            chosen = inputs | "Chosen" >> beam.Filter(_chosen, rewrite, self.migrate_flat)
            judged = judged | "ChosenRows" >> beam.Filter(_row_chosen, rewrite, self.migrate_flat)
        else:
            chosen = read
        rows = judged | "Values" >> beam.MapTuple(lambda partition, values, _: (partition, values))
        per_file = self.rows_per_file
        files = beam.pvalue.AsDict(
            rows
            | "PartitionOf" >> beam.Keys()
            | "RowsPerPartition" >> beam.combiners.Count.PerElement()
            | "Files" >> beam.MapTuple(lambda partition, count: (partition, max(1, math.ceil(count / per_file)))))
        written = (rows
                   | "Bucket" >> beam.Map(_bucketed, files)
                   | "GroupBuckets" >> beam.GroupByKey()
                   | "WriteBuckets" >> beam.ParDo(_WriteBucket(self.store, self.generation), files))
        all_written = beam.pvalue.AsSingleton(written | "CountWritten" >> beam.combiners.Count.Globally())
        _ = (chosen
             | "Paths" >> beam.Map(lambda part: part.path)
             | "DeleteBatches" >> beam.BatchElements(min_batch_size=1, max_batch_size=1000)
             | "DeleteReplaced" >> beam.Map(_delete, all_written))
        return written
