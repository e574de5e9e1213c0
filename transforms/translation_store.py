"""The translation store: Parquet parts keyed by (text hash, language, translator fingerprint), in
hive-style partitions STORE/fingerprint=<fp>/lang=<lang>/part-*.parquet.

Why this layout: a build needs one fingerprint and its languages, so it lists and reads only those
folders (and only five columns, seven where verdicts of older checks are judged again); and anyone
can read the store without this project's code, `pyarrow.dataset.dataset(STORE, partitioning="hive")`
or HF `datasets.load_dataset("parquet", data_files="STORE/fingerprint=<fp>/lang=de/*.parquet")`: every
file holds all of TRANSLATION_SCHEMA's columns, the partition's two included (HF reads no partition
from a path; `pyarrow.parquet.read_table(STORE)` then needs partitioning=None, its dictionary-typed
partition columns do not merge with the files' strings), except raw_output and checks_version in
parts written before those existed.

A partition holds two kinds of part, each written whole (temporary name, then rename) and never
changed afterwards:
- appended parts, part-<name>.parquet, one per translate batch; <name> starts with two hex digits
  (by default it is the part's content hash), so a partition's appended parts list in 16 slices, by
  the first digit (the second keeps compacted parts out);
- compacted parts, part-compacted-<generation>-<k>-of-<n>.parquet (transforms/store_compaction.py):
  bucket k of n of the partition's keys by text_hash, one row per key; generations sort by time.

Every row keeps the text its verdict was judged from (`raw_output`) and the checks version that
judged it (`checks_version`); parts written before those columns existed lack them and read as null.
Readers never use a verdict of older checks as it is: it is judged again as it is read
(transforms/store_verdicts.py, counted as `rejudged_on_read`; `florenz-data recheck` stores the new
verdicts once), or, when nothing is left to judge, the entry is stale and counts as not stored.

Where a key has several entries (two runs raced, a rejection was retried, a part and the compacted
part replacing it are both read), judged as above, a current entry beats a stale one, an accepted one
a rejected one, and ties go by content (`prefer_entry`), so every read, and compaction, picks the same
one.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import logging
import re
from collections import defaultdict
from typing import Iterable, Iterator, Mapping, NamedTuple, Optional
from urllib.parse import quote

import apache_beam as beam
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.io.filesystems import FileSystems

from schemas.arrow import ADDED_COLUMNS, STATUS_ACCEPTED, TRANSLATION_SCHEMA
from schemas.config import StoreConfig
from schemas.errors import InputError
from transforms.atomic import glob_escape, join, write_bytes_atomic
from transforms.group_metrics import MeasuredCombinePerKey
from transforms.range_reader import open_ranged
from transforms.store_verdicts import REJUDGED, STALE, checks_version, current_verdict

TMP = "_tmp"  # temporary names of the store's atomic writes; readers skip "_" folders
APPENDED_SLICES = tuple("0123456789abcdef")
_APPENDED_NAME = re.compile(r"[0-9a-f]{2}[0-9a-z_-]*")
COMPACTED_PART = re.compile(r"part-compacted-(?P<generation>[0-9A-Za-z_-]+)-(?P<k>\d{5})-of-(?P<n>\d{5})\.parquet")
REREADS = 2  # times a build re-lists a partition whose listed parts vanished (compacted meanwhile)
METRICS = "store"
log = logging.getLogger(__name__)


def partition_dir(store: str, fingerprint: str, lang: str) -> str:
    """STORE/fingerprint=<fp>/lang=<lang>, each value escaped for one path segment as hive
    partitioning reads it back (percent-encoding: pyarrow's segment_encoding="uri")."""
    return join(store, f"fingerprint={quote(fingerprint, safe='')}", f"lang={quote(lang, safe='')}")


def compacted_name(generation: str, k: int, n: int) -> str:
    return f"compacted-{generation}-{k:05d}-of-{n:05d}"


def part_file(name: str) -> str:
    """part-<name>.parquet. An appended part's name starts with two hex digits: readers list appended
    parts by those two digits, so any other name would go unread (the description store's too)."""
    if not (_APPENDED_NAME.fullmatch(name) or COMPACTED_PART.fullmatch(f"part-{name}.parquet")):
        raise ValueError(f"store part name {name!r}: must match {_APPENDED_NAME.pattern} (two hex digits first)")
    return f"part-{name}.parquet"


def part_path(store: str, fingerprint: str, lang: str, name: str) -> str:
    """STORE/fingerprint=<fp>/lang=<lang>/part-<name>.parquet."""
    return join(partition_dir(store, fingerprint, lang), part_file(name))


def parquet_bytes(rows: Iterable[Mapping[str, object]], schema: pa.Schema = TRANSLATION_SCHEMA) -> bytes:
    """Rows of `schema` (the translation store's, or the description store's) as one Parquet file, in
    a fixed order (so the same rows give the same bytes)."""
    ordered = sorted(rows, key=lambda r: tuple(str(r.get(f.name) or "") for f in schema))
    buffer = io.BytesIO()
    pq.write_table(pa.Table.from_pylist(ordered, schema=schema), buffer, compression="zstd")
    return buffer.getvalue()


def write_store_part(store: str, fingerprint: str, lang: str, rows: Iterable[Mapping[str, object]],
                     name: Optional[str] = None) -> str:
    """Append one part holding `rows` (dicts of TRANSLATION_SCHEMA's fields, all of `fingerprint` and
    `lang`, each with the checks version that judged it); returns its path. `name` defaults to the
    content hash; writing a name again writes the same rows again (a retried bundle), which replaces
    the part with identical content."""
    rows = list(rows)
    unversioned = next((r for r in rows if r.get("checks_version") is None), None)
    if unversioned is not None:
        raise ValueError(f"store row {unversioned['text_hash']} ({fingerprint!r}, {lang!r}) has no checks_version: "
                         "every new verdict names the checks version that judged it")
    stray = sorted({(r["fingerprint"], r["lang"]) for r in rows} - {(fingerprint, lang)})
    if stray:
        raise ValueError(f"store part of ({fingerprint!r}, {lang!r}) given rows of {stray}")
    data = parquet_bytes(rows)
    path = part_path(store, fingerprint, lang, name or hashlib.sha256(data).hexdigest()[:24])
    write_bytes_atomic(path, data, join(store, TMP))
    return path


def write_store_rows(store: str, rows: Iterable[Mapping[str, object]]) -> list[str]:
    """Rows of any fingerprints and languages, one appended part per (fingerprint, lang)."""
    grouped: dict[tuple[str, str], list] = defaultdict(list)
    for row in rows:
        grouped[(row["fingerprint"], row["lang"])].append(row)
    return [write_store_part(store, fp, lang, part) for (fp, lang), part in sorted(grouped.items())]


def part_exists(store: str, fingerprint: str, lang: str, name: str) -> bool:
    return FileSystems.exists(part_path(store, fingerprint, lang, name))


def read_part(path: str) -> list[dict]:
    """The rows of one part (every column of TRANSLATION_SCHEMA; those it predates are None)."""
    with open_ranged(path) as f:
        table = pq.read_table(f)
    return [{**dict.fromkeys(TRANSLATION_SCHEMA.names), **row} for row in table.to_pylist()]


# -- listing --------------------------------------------------------------------------------------
def _match(pattern: str, limit: Optional[int] = None) -> list[str]:
    return sorted(m.path for m in FileSystems.match([pattern], [limit])[0].metadata_list)


def list_appended(directory: str, slice_: str) -> list[str]:
    """The appended parts of one partition whose names start with the hex digit `slice_` (and a
    second hex digit, which no compacted part's name has)."""
    return _match(join(glob_escape(directory), f"part-{slice_}[0-9a-f]*.parquet"))


def list_compacted(directory: str) -> list[str]:
    """The compacted parts of one partition, listed twice in a row, the union: a generation that
    compaction replaces during the first listing had its successor written before it went, so the
    second listing holds the successor."""
    pattern = join(glob_escape(directory), "part-compacted-*.parquet")
    return sorted(set(_match(pattern)) | set(_match(pattern)))


def partition_parts(directory: str) -> list[str]:
    """All parts of one partition as one consistent set, appended parts listed before compacted ones
    (see ReadStoreEntries); for readers outside a pipeline (the report)."""
    appended = _match(join(glob_escape(directory), "part-[0-9a-f][0-9a-f]*.parquet"))
    return appended + list_compacted(directory)


def flat_parts(store: str, slice_: str = "", limit: Optional[int] = None) -> list[str]:
    """Parts of the old flat layout, STORE/part-<content hash>.parquet (every fingerprint and language
    in one folder), whose names start with `slice_`."""
    return _match(join(glob_escape(store), f"part-{slice_}*.parquet"), limit)


FLAT_LAYOUT = ("translation store in the old flat layout (part-*.parquet directly inside it): builds read only "
               "its fingerprint=<fp>/lang=<lang>/ folders, so its entries would be translated again; run "
               "`florenz-data compact-store {store}` once to move them there")


def refuse_flat_layout(store: str) -> None:
    if flat_parts(store, limit=1):
        raise InputError(store, FLAT_LAYOUT.format(store=store))


# -- reading --------------------------------------------------------------------------------------
_DAMAGED_PART = ("store parts are written whole (temporary name, then rename), so this one was damaged after it "
                 "was written (a partial copy or sync?): restore it from where the store was copied from, or move "
                 "it out of the store folder; the translations it held are then missing and `florenz-data "
                 "translate` sends them again")
GONE = "gone"  # tagged output: the partition of a listed part that was deleted before it was read
ENTRY_COLUMNS = ["text_hash", "status", "translation", "reason", "checks_version"]
JUDGE_COLUMNS = ("source_text", "raw_output")  # what judging a verdict of older checks again also needs


def _one_line(error: BaseException) -> str:
    return " ".join(f"{type(error).__name__}: {error}".split())


@dataclasses.dataclass(frozen=True)
class StoreEntry:
    status: str  # accepted | rejected
    translation: Optional[str]
    reason: Optional[str]
    rejudged: bool = False  # stored under older checks, judged again as it was read
    stale: bool = False  # stored under older checks with nothing to judge again: not a decision


def entry_order(status: str, translation: Optional[str], reason: Optional[str], stale: bool = False) -> tuple:
    """The order in which entries of one key are preferred (smallest first), total so that the choice
    never depends on the order entries arrive in: a current verdict beats a stale one, accepted beats
    rejected; then by content."""
    return (stale, status != STATUS_ACCEPTED, translation or "", reason or "", status, translation is None,
            reason is None)


def prefer_entry(entries: Iterable[StoreEntry]) -> StoreEntry:
    """One entry per key, whatever the part order."""
    return min(entries, key=lambda e: (entry_order(e.status, e.translation, e.reason, e.stale), e.rejudged))


def judged_entry(where: str, lang: str, row: Mapping[str, object]) -> StoreEntry:
    """One stored row as an entry under the current checks (transforms/store_verdicts.py); counted in
    namespace "store": rejudged_on_read, changed_on_read, stale_on_read."""
    verdict = current_verdict(where, lang, row.get("source_text"), row["status"], row["translation"],
                              row["reason"], row.get("raw_output"), row["checks_version"])
    if verdict.kind == REJUDGED:
        beam.metrics.Metrics.counter(METRICS, "rejudged_on_read").inc()
        if (verdict.status, verdict.reason) != (row["status"], row["reason"]):
            beam.metrics.Metrics.counter(METRICS, "changed_on_read").inc()
    elif verdict.kind == STALE:
        beam.metrics.Metrics.counter(METRICS, "stale_on_read").inc()
    return StoreEntry(verdict.status, verdict.translation, verdict.reason, verdict.kind == REJUDGED,
                      verdict.kind == STALE)


class Partition(NamedTuple):
    lang: str
    directory: str


class PartRef(NamedTuple):
    partition: Partition
    path: str


def row_group_count(path: str) -> int:
    """Row groups of one part, from its footer; FileNotFoundError if it is gone, InputError naming it
    and saying what to do if it is not readable Parquet."""
    with open_ranged(path) as f:
        try:
            return pq.ParquetFile(f).num_row_groups
        except FileNotFoundError:
            raise
        except Exception as e:  # pyarrow: ArrowInvalid, OSError
            raise InputError(path, f"translation store part is not readable Parquet ({_one_line(e)}); "
                                   f"{_DAMAGED_PART}") from None


def _all_current(parquet: pq.ParquetFile, group: int) -> bool:
    """Whether the footer's statistics show every row of the row group judged under the current checks."""
    names = parquet.schema_arrow.names
    if "checks_version" not in names:
        return False
    stats = parquet.metadata.row_group(group).column(names.index("checks_version")).statistics
    return bool(stats is not None and stats.has_min_max and stats.null_count == 0
                and stats.min == stats.max == checks_version())


def read_row_group(path: str, group: int, columns: list[str], unless_current: tuple[str, ...] = ()) -> Iterator[dict]:
    """The rows (dicts of `columns`, and of `unless_current` where the footer does not show every row
    judged under the current checks) of one row group of one part; FileNotFoundError if it is gone.
    Columns the part predates (ADDED_COLUMNS) read as None."""
    with open_ranged(path) as f:
        try:
            parquet = pq.ParquetFile(f)
            wanted = columns if _all_current(parquet, group) else [*columns, *unless_current]
            names = parquet.schema_arrow.names
            lacking = [c for c in wanted if c not in names]
            required = [c for c in lacking if c not in ADDED_COLUMNS]
            if required:
                raise InputError(path, f"translation store part has no column {', '.join(required)} (its columns: "
                                       f"{', '.join(names)}); {_DAMAGED_PART}")
            present = [c for c in wanted if c in names]
            for batch in parquet.iter_batches(batch_size=4096, row_groups=[group], columns=present):
                for row in batch.to_pylist():
                    yield {**dict.fromkeys(lacking), **row}
        except (FileNotFoundError, InputError):
            raise
        except (OSError, ValueError) as e:  # pyarrow: ArrowInvalid (ValueError), ArrowIOError (OSError)
            raise InputError(path, f"translation store part: row group {group} cannot be read "
                                   f"({_one_line(e)}); {_DAMAGED_PART}") from None


def part_row_groups(part: PartRef) -> Iterator:
    """(part, row group index) for each row group of one part; its partition on GONE if the part was
    deleted since it was listed."""
    try:
        groups = row_group_count(part.path)
    except FileNotFoundError:
        yield beam.pvalue.TaggedOutput(GONE, part.partition)
        return
    for index in range(groups):
        yield part, index


def read_entries(item: tuple[PartRef, int]) -> Iterator:
    """((text_hash, lang), StoreEntry) of one row group of one part; its partition on GONE if the
    part was deleted since it was listed."""
    part, group = item
    try:
        rows = list(read_row_group(part.path, group, ENTRY_COLUMNS, unless_current=JUDGE_COLUMNS))
    except FileNotFoundError:
        yield beam.pvalue.TaggedOutput(GONE, part.partition)
        return
    for r in rows:
        yield (r["text_hash"], part.partition.lang), judged_entry(part.path, part.partition.lang, r)


class _ReadParts(beam.PTransform):
    """PartRefs -> {"entries": ((text_hash, lang), StoreEntry), GONE: Partition of each part that
    vanished before it was read}; spread over workers per part, then per row group."""

    def expand(self, parts):
        footers = (parts
                   | "SpreadParts" >> beam.Reshuffle()
                   | "RowGroups" >> beam.FlatMap(part_row_groups).with_outputs(GONE, main="groups"))
        read = (footers.groups
                | "SpreadRowGroups" >> beam.Reshuffle()
                | "ReadRowGroups" >> beam.FlatMap(read_entries).with_outputs(GONE, main="entries"))
        gone = ((footers[GONE], read[GONE])
                | "AllGone" >> beam.Flatten()
                | "CountGone" >> beam.Map(_count_gone)
                | "OnePerPartition" >> beam.Distinct())
        return {"entries": read.entries, GONE: gone}


def _count_gone(partition: Partition) -> Partition:
    beam.metrics.Metrics.counter(METRICS, "parts_gone").inc()
    return partition


def _relist(partition: Partition) -> Iterator[PartRef]:
    for path in list_compacted(partition.directory):
        yield PartRef(partition, path)


def _reread(partition: Partition) -> Iterator[PartRef]:
    log.warning("%s: store parts were compacted while this run read them; reading its compacted parts again",
                partition.directory)
    return _relist(partition)


def _too_many_compactions(partition: Partition) -> None:
    raise InputError(partition.directory, f"translation store parts vanished while this run read them, "
                                          f"{REREADS + 1} times over (compact-store ran again and again?); "
                                          "run it again")


class ReadListedParts(beam.PTransform):
    """PartRefs listed earlier -> ((text_hash, lang), StoreEntry) of all of them, parts that compaction
    deleted meanwhile included: their partition's compacted parts are listed again and read, up to
    REREADS times, and the run stops (InputError) rather than go on without them."""

    def expand(self, parts):
        entries = []
        for level in range(REREADS + 1):
            suffix = str(level) if level else ""
            read = parts | f"Read{suffix}" >> _ReadParts()
            entries.append(read["entries"])
            if level == REREADS:
                _ = read[GONE] | "TooManyCompactions" >> beam.Map(_too_many_compactions)
            else:
                parts = read[GONE] | f"Relist{level + 1}" >> beam.FlatMap(_reread)
        return entries | "AllEntries" >> beam.Flatten()


def _list_appended_slice(item: tuple[Optional[Partition], str], store: str) -> Iterator[PartRef]:
    """The appended parts of one slice of one partition; the item without a partition checks that
    the store is not in the old flat layout."""
    partition, slice_ = item
    if partition is None:
        refuse_flat_layout(store)
        return
    for path in list_appended(partition.directory, slice_):
        yield PartRef(partition, path)


def _list_compacted(partition: Partition, _appended_listed: int) -> Iterator[PartRef]:
    return _relist(partition)


class ReadStoreEntries(beam.PTransform):
    """((text_hash, lang), StoreEntry) for one translator fingerprint and the given languages, one per
    key (prefer_entry).

    Nothing is listed while the graph is built. Workers list each language's partition, its appended
    parts in 16 slices (by the first hex digit of their names), and a check that the store is not in
    the old flat layout (refused, naming the command that migrates it); then read each part's footer,
    then each row group, five columns (two more where its footer shows verdicts of older checks, which
    are judged again: judged_entry). At CC12M scale (300 M entries, 5 languages, one fingerprint)
    an uncompacted store holds ~1.17 M parts of 256 rows: one listing slice is ~15 k names (~1.5 MB);
    compacted (1 M rows per file), a partition is ~60 files. One worker holds at most one slice's names,
    one partition's compacted names or one row group (64k rows of 5 to 7 columns), and OnePerKey combines
    per key across workers: no worker lists or reads the whole store.

    Correct while compact-store runs, which writes a generation's compacted parts before it deletes
    the parts they replace:
    1. compacted parts are listed only after every appended slice is (a side input waits for them),
       the reverse of compaction's order: an appended part missing from its listing was deleted
       before that listing, so its replacement was written before it too and the compacted listing,
       later, holds it;
    2. compacted parts are listed twice in a row (list_compacted), for a generation replaced meanwhile;
    3. a listed part gone when read makes its partition's compacted parts be listed and read again
       (ReadListedParts): its replacement was written before it went.
    Reading a part and its replacement both gives duplicates, which OnePerKey resolves as compaction
    did, so the result is the same as from either alone."""

    def __init__(self, store: StoreConfig, languages: Iterable[str]):
        super().__init__()
        self.store = store
        self.languages = frozenset(languages)

    def expand(self, pbegin):
        partitions = [Partition(lang, partition_dir(self.store.path, self.store.fingerprint, lang))
                      for lang in sorted(self.languages)]
        slices = [(None, "")] + [(p, s) for p in partitions for s in APPENDED_SLICES]
        appended = (pbegin
                    | "AppendedSlices" >> beam.Create(slices)
                    | "SpreadSlices" >> beam.Reshuffle()
                    | "ListAppended" >> beam.FlatMap(_list_appended_slice, self.store.path))
        listed = beam.pvalue.AsSingleton(appended | "CountAppended" >> beam.combiners.Count.Globally())
        compacted = (pbegin
                     | "Partitions" >> beam.Create(partitions)
                     | "ListCompacted" >> beam.FlatMap(_list_compacted, listed))
        return ((appended, compacted)
                | "AllParts" >> beam.Flatten()
                | "ReadParts" >> ReadListedParts()
                | "OnePerKey" >> MeasuredCombinePerKey(prefer_entry))
