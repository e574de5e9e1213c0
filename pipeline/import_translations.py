"""florenz-data import-translations SOURCE --store STORE --languages de,fr: pre-made translations (the
paper's released annotations, NLLB output, human translations) into the translation store, under a
fingerprint of their own, so a build uses them without a translator (`store: {path, fingerprint}`).

Why it is shaped like this:
- one store, one set of rules: every translation goes through the checks a translator's answer goes
  through (transforms/translation_checks.py), is stored with its checks version and the cell as given
  (`raw_output`), rejected ones as rejected with their reason; the English is normalized and hashed
  as the pipeline does (schemas/records.py), so a build's lookups find it;
- a fingerprint that cannot be taken for a translator's: it starts with `import-` (a translator's is
  `<prompt version>-<hash>`, schemas/prompts.py); given, or derived from the matched files' names
  and sizes and the text column;
- one entry per (text, language): a text that appears more than once (duplicate captions) has all its
  translations checked, and the one stored is the one a reader would prefer among them (accepted
  before rejected, then by content: translation_store.entry_order, then the raw cell), whatever order
  the rows come in; the others are counted (`duplicates`, and `conflicting_texts` where they differed);
- scales as the translate step: files are matched and read on workers (Parquet per row group, JSONL
  split by Beam's text reader); the per-key choice is a combine (one accumulator per key); entries are
  looked up in the store as the translate step looks up its texts (ReadStoreEntries, a join per key),
  and those not already stored with the same verdict are cut into store parts by
  translate_batches.BatchMisses (groups bounded at any input size) and written by write_store_part,
  named by their content: the same source imported again (after a crash, after compact-store) writes
  nothing (`already_stored`), a changed one only what changed.
- no lease: the import only appends new parts, which compaction and readers already allow at any time
  (compaction deletes only the parts it listed).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import posixpath
import re
from typing import Iterable, Iterator, Mapping, Optional, Sequence

import apache_beam as beam
from apache_beam.coders import BytesCoder
from apache_beam.io.filesystems import FileSystems
from apache_beam.metrics import Metrics
from apache_beam.options.pipeline_options import PipelineOptions

from schemas.arrow import STATUS_ACCEPTED, STATUS_REJECTED
from schemas.config import StoreConfig
from schemas.errors import ConfigError, InputError
from schemas.languages import unsupported_reason
from schemas.records import TranslationOutcome, TranslationRequest, normalize_text, text_hash
from transforms.counting import counter_totals
from transforms.group_metrics import MeasuredCoGroupByKey, MeasuredCombinePerKey
from transforms.source_common import one_line
from transforms.sources import checked_row_groups, matched_paths, row_group_rows
from transforms.translate_batches import Batch, BatchMisses, store_row
from transforms.translation_checks import check_translation
from transforms.translation_store import ReadStoreEntries, StoreEntry, entry_order, write_store_part

COMMAND = "import-translations"  # the namespace of its counters, and how errors name its settings
PREFIX = "import-"
ROWS_PER_PART = 4096
PARQUET, JSONL = "parquet", "jsonl"
_FINGERPRINT = re.compile(r"import-[A-Za-z0-9._-]{1,120}")
_SUFFIXES = {PARQUET: (".parquet", ".pq"), JSONL: (".jsonl", ".ndjson", ".json")}
_COMPRESSED = (".gz", ".bz2", ".zst", ".deflate")


@dataclasses.dataclass(frozen=True)
class ImportSpec:
    """What to read: a file or glob, its format, and where the English and each translation are.
    Wide format: one column per language (`columns`: lang -> column). Long format (`lang_column`
    set): one row per (text, language, translation)."""

    source: str
    format: str
    languages: tuple[str, ...]
    text_column: str = "en"
    columns: tuple[tuple[str, str], ...] = ()  # wide format: (lang, column), every language once
    lang_column: Optional[str] = None  # long format
    translation_column: str = "translation"

    def required(self) -> dict[str, str]:
        """Column -> the option naming it: what every file must hold."""
        if self.lang_column is not None:
            return {self.text_column: "--text-column", self.lang_column: "--lang-column",
                    self.translation_column: "--translation-column"}
        return {self.text_column: "--text-column", **{column: f"--column {lang}" for lang, column in self.columns}}


def source_format(source: str, given: Optional[str]) -> str:
    """parquet or jsonl: as given, else from the source's name (a compression suffix aside)."""
    if given:
        return given
    name = source.lower()
    for suffix in _COMPRESSED:
        name = name.removesuffix(suffix)
    found = [fmt for fmt, suffixes in _SUFFIXES.items() if name.endswith(suffixes)]
    if not found:
        raise ConfigError("--format", f"cannot tell the format of {source} from its name (.parquet, .jsonl, "
                                      ".jsonl.gz ...): give --format parquet or --format jsonl")
    return found[0]


def make_spec(source: str, languages: str, text_column: str = "en", columns: Sequence[str] = (),
              lang_column: Optional[str] = None, translation_column: str = "translation",
              fmt: Optional[str] = None) -> ImportSpec:
    """The command's options as an ImportSpec; ConfigError naming the option that is wrong."""
    langs = tuple(dict.fromkeys(l.strip() for l in languages.split(",") if l.strip()))
    if not langs:
        raise ConfigError("--languages", "name at least one target language, e.g. --languages de,fr")
    for lang in langs:
        reason = "English is the source language, not a target" if lang == "en" else unsupported_reason(lang)
        if reason:
            raise ConfigError("--languages", reason)
    mapping = dict.fromkeys(langs, "")
    for item in columns:
        lang, sep, column = item.partition("=")
        if not sep or not column:
            raise ConfigError("--column", f"{item!r}: expected LANG=COLUMN, e.g. de=german")
        if lang not in mapping:
            raise ConfigError("--column", f"{item!r}: {lang!r} is not one of --languages {','.join(langs)}")
        if lang_column is not None:
            raise ConfigError("--column", "a long-format source (--lang-column) has one --translation-column")
        mapping[lang] = column
    return ImportSpec(source, source_format(source, fmt), langs, text_column,
                      tuple((lang, column or lang) for lang, column in mapping.items()), lang_column,
                      translation_column)


def derived_fingerprint(spec: ImportSpec) -> str:
    """import-<name of the first file>-<hash of the matched files' names and sizes and the text
    column>: the same files give the same fingerprint wherever they are copied to."""
    matches = sorted(FileSystems.match([spec.source])[0].metadata_list, key=lambda m: m.path)
    if not matches:
        raise InputError(spec.source, f"{COMMAND} SOURCE: the pattern matches no files")
    listing = [(posixpath.basename(m.path), m.size_in_bytes) for m in matches]
    digest = hashlib.sha256(json.dumps([spec.text_column, listing]).encode("utf-8")).hexdigest()[:12]
    stem = re.sub(r"[^A-Za-z0-9_-]+", "-", listing[0][0].split(".")[0]).strip("-")[:40] or "source"
    return f"{PREFIX}{stem}-{digest}"


def check_fingerprint(fingerprint: str) -> str:
    if not _FINGERPRINT.fullmatch(fingerprint):
        raise ConfigError("--fingerprint", f"{fingerprint!r}: an imported set's fingerprint is import-<name> "
                                           "(letters, digits, . _ -), e.g. import-nllb-200, so it is never taken "
                                           "for a translator's")
    return fingerprint


# -- reading --------------------------------------------------------------------------------------
def _count(name: str, n: int = 1) -> None:
    Metrics.counter(COMMAND, name).inc(n)


def check_jsonl_head(path: str, spec: ImportSpec) -> Iterator[str]:
    """The file, after checking that its first line is a JSON object holding every required column
    (a key absent from a later line is a missing cell, counted)."""
    with FileSystems.open(path) as f:  # compression from the name, as the text reader decides it
        try:
            line = next((l for l in iter(f.readline, b"") if l.strip()), b"")
            head = json.loads(line.decode("utf-8")) if line else {}
        except (UnicodeDecodeError, ValueError, OSError) as e:
            raise InputError(path, f"{COMMAND}: not a JSONL file (its first line is not JSON: {one_line(e)})") from None
    if not isinstance(head, dict):
        raise InputError(path, f"{COMMAND}: not a JSONL file (its first line is not a JSON object)")
    for column, option in spec.required().items():
        if column not in head:
            raise InputError(path, f"{COMMAND} {option}: column {column!r} is not in the file; its first line's "
                                   f"columns are {sorted(head)}")
    yield path


def parse_jsonl_line(item: tuple[str, bytes]) -> Iterator[dict]:
    path, line = item
    if not line.strip():
        return
    try:
        row = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, ValueError) as e:
        raise InputError(path, f"{COMMAND}: a line is not JSON ({one_line(e)}): {line[:80]!r}") from None
    if not isinstance(row, dict):
        raise InputError(path, f"{COMMAND}: a line is not a JSON object: {line[:80]!r}")
    yield row


class ReadRows(beam.PTransform):
    """The source's rows as dicts of its columns: files matched on a worker, each checked (Parquet: its
    footer; JSONL: its first line) before it is read, so a wrong file or column is named; Parquet read
    per row group, JSONL split by Beam's text reader."""

    def __init__(self, spec: ImportSpec):
        super().__init__()
        self.spec = spec

    def expand(self, pbegin):
        spec = self.spec
        paths = (pbegin | "Pattern" >> beam.Create([spec.source])
                 | "Match" >> beam.FlatMap(matched_paths, f"{COMMAND} SOURCE")
                 | "SpreadFiles" >> beam.Reshuffle())
        if spec.format == PARQUET:
            columns = list(spec.required())
            return (paths
                    | "RowGroups" >> beam.FlatMap(checked_row_groups, spec.required(), COMMAND)
                    | "SpreadRowGroups" >> beam.Reshuffle()
                    | "ReadRowGroups" >> beam.FlatMap(lambda item: row_group_rows(*item, columns, COMMAND)))
        return (paths
                | "CheckHeads" >> beam.FlatMap(check_jsonl_head, spec)
                | "ReadLines" >> beam.io.ReadAllFromText(with_filename=True, coder=BytesCoder())
                | "ParseLines" >> beam.FlatMap(parse_jsonl_line))


# -- judging --------------------------------------------------------------------------------------
def cells(row: Mapping[str, object], spec: ImportSpec) -> Iterator[tuple[tuple[str, str], TranslationOutcome]]:
    """((text_hash, lang), checked outcome) for each translation a row holds; what cannot be judged is
    counted as skipped_<why> instead: a missing or non-text English (missing_text, not_text), a null
    or absent translation (missing_translation), a long-format row of another language
    (other_language). An empty translation is judged (and rejected as `empty`), as an empty answer
    would be."""
    _count("rows_read")
    if spec.lang_column is not None:
        pairs = [(row.get(spec.lang_column), row.get(spec.translation_column))]
    else:
        pairs = [(lang, row.get(column)) for lang, column in spec.columns]
    english = row.get(spec.text_column)
    for lang, cell in pairs:
        _count("translations_read")
        if lang not in spec.languages:
            _count("skipped_other_language")
            continue
        if english is None or cell is None:
            _count("skipped_missing_text" if english is None else "skipped_missing_translation")
            continue
        if not isinstance(english, str) or not isinstance(cell, str):
            _count("skipped_not_text")
            continue
        text = normalize_text(english)
        if not text:
            _count("skipped_missing_text")
            continue
        request = TranslationRequest(text_hash(text), lang, text)
        result = check_translation(text, cell, lang)
        status = STATUS_ACCEPTED if result.text is not None else STATUS_REJECTED
        yield (request.text_hash, lang), TranslationOutcome(request, status, result.text, result.reason, cell)


def _preference(outcome: TranslationOutcome) -> tuple:
    """The store's preference among entries of one key, then the raw cell: a total order."""
    return entry_order(outcome.status, outcome.translation, outcome.reason), outcome.raw_output


Picked = tuple[Optional[TranslationOutcome], int, bool]  # (preferred outcome, outcomes seen, cells differed)


class PickOne(beam.CombineFn):
    """One key's outcomes -> (the preferred one, how many there were, whether their cells differed);
    the accumulator is that same triple, so a key's state stays one outcome however often it appears."""

    def create_accumulator(self) -> Picked:
        return None, 0, False

    def add_input(self, acc: Picked, outcome: TranslationOutcome) -> Picked:
        return self.merge_accumulators([acc, (outcome, 1, False)])

    def merge_accumulators(self, accs: Iterable[Picked]) -> Picked:
        best, n, differ = None, 0, False
        for other, m, other_differ in accs:
            if other is None:
                continue
            differ = differ or other_differ or (best is not None and best.raw_output != other.raw_output)
            best = other if best is None or _preference(other) < _preference(best) else best
            n += m
        return best, n, differ

    def extract_output(self, acc: Picked) -> Picked:
        return acc


@dataclasses.dataclass(frozen=True)
class Imported:
    """The verdict stored for one (text, language), keyed as BatchMisses cuts parts."""

    outcome: TranslationOutcome

    @property
    def text_hash(self) -> str:
        return self.outcome.request.text_hash

    @property
    def lang(self) -> str:
        return self.outcome.request.lang


def unless_stored(item: tuple[tuple[str, str], Mapping[str, Iterable]]) -> Iterator[Imported]:
    """One key's chosen verdict (counted), unless the store already holds that very verdict under this
    fingerprint (`already_stored`): so importing again, after a crash, or after compact-store merged
    the parts, writes nothing, and a changed source writes only what changed."""
    picked = list(item[1]["new"])
    if not picked:
        return  # stored, not in this source
    ((outcome, n, differ),) = picked
    _count(STATUS_ACCEPTED if outcome.status == STATUS_ACCEPTED else f"{STATUS_REJECTED}_{outcome.reason}")
    _count("duplicates", n - 1)
    _count("conflicting_texts", int(differ))
    entry: Optional[StoreEntry] = next(iter(item[1]["stored"]), None)
    if entry is not None and not entry.stale and \
            (entry.status, entry.translation, entry.reason) == (outcome.status, outcome.translation, outcome.reason):
        _count("already_stored")
        return
    yield Imported(outcome)


def write_part(batch: Batch, store: str, fingerprint: str) -> None:
    """One part of a batch's entries, named by its content (a retried bundle writes the same bytes)."""
    write_store_part(store, fingerprint, batch.lang, [store_row(e.outcome, fingerprint) for e in batch.requests])
    _count("parts_written")


def build_import(p: beam.Pipeline, spec: ImportSpec, store: str, fingerprint: str, rows_per_part: int) -> None:
    """read -> check every cell -> one verdict per (text, language) -> not already stored -> parts."""
    picked = (p
              | "Read" >> ReadRows(spec)
              | "Check" >> beam.FlatMap(cells, spec)
              | "OnePerKey" >> MeasuredCombinePerKey(PickOne()))
    stored = p | "ReadStore" >> ReadStoreEntries(StoreConfig(path=store, fingerprint=fingerprint), spec.languages)
    _ = ({"new": picked, "stored": stored}
         | "Lookup" >> MeasuredCoGroupByKey()
         | "UnlessStored" >> beam.FlatMap(unless_stored)
         | "Parts" >> BatchMisses(fingerprint, rows_per_part)
         | "Write" >> beam.Map(write_part, store, fingerprint))


def import_translations(spec: ImportSpec, store: str, fingerprint: Optional[str], beam_args: Sequence[str],
                        rows_per_part: Optional[int] = None) -> dict:
    """Run the import; returns its counts with the fingerprint it stored under (what a build's
    `store.fingerprint` names)."""
    rows_per_part = ROWS_PER_PART if rows_per_part is None else rows_per_part
    if rows_per_part < 1:
        raise ConfigError("--rows-per-part", "must be at least 1")
    fingerprint = check_fingerprint(fingerprint) if fingerprint else derived_fingerprint(spec)
    p = beam.Pipeline(options=PipelineOptions(list(beam_args)))
    build_import(p, spec, store, fingerprint, rows_per_part)
    result = p.run()
    result.wait_until_finish()
    return {"fingerprint": fingerprint, "store": store, "languages": list(spec.languages),
            "counts": counter_totals(result, COMMAND)}
