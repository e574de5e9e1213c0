"""Read a bitext corpus (schemas/bitext.py, BitextSource): Parquet files per row group, or TSV files
with a header row, streamed; each row becomes a Bitext or a counted Rejection with its reason.

A row whose English side is shorter than min_en_chars is `bitext_en_too_short` (the paper's
translation samples have an English side over 25 characters); a row with a null or non-text cell,
or a TSV line with the wrong number of fields, is `record_malformed`. A file that cannot be read, or
lacks a configured column, is an InputError naming it.
"""
from __future__ import annotations

import codecs
import csv
from typing import Iterator, Union

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from schemas.bitext import Bitext, BitextSource
from schemas.errors import InputError
from schemas.records import Rejection
from transforms.source_common import MALFORMED, REJECTED
from transforms.sources import _Route, checked_row_groups, matched_paths, row_group_rows

SOURCE = "bitext"  # the `source` of its rejections
TOO_SHORT = "bitext_en_too_short"
BitextOutput = Union[Bitext, Rejection]


def _columns(spec: BitextSource) -> dict[str, str]:
    """Configured column -> the config field naming it."""
    return {spec.en_column: "en_column", **{column: f"columns.{lang}" for lang, column in spec.columns.items()}}


def parse_row(spec: BitextSource, row: dict, where: str) -> BitextOutput:
    """One row (column -> cell) -> a Bitext, or a rejection saying why not; `where` names the row."""
    cells = {column: row.get(column) for column in _columns(spec)}
    bad = [column for column, cell in cells.items() if not isinstance(cell, str)]
    if bad:
        return Rejection(SOURCE, where, "bitext", MALFORMED,
                         f"{where}: column {bad[0]!r} holds {type(cells[bad[0]]).__name__}, not text")
    en = cells[spec.en_column].strip()
    translations = tuple((lang, cells[column].strip()) for lang, column in spec.columns.items())
    bitext = Bitext.of(en, translations)
    if len(en) < spec.min_en_chars:
        return Rejection(SOURCE, bitext.id, "bitext", TOO_SHORT,
                         f"{where}: English side has {len(en)} characters, fewer than {spec.min_en_chars}")
    return bitext


def parquet_bitexts(spec: BitextSource, item: tuple[str, int]) -> Iterator[BitextOutput]:
    path, group = item
    for index, row in enumerate(row_group_rows(path, group, list(_columns(spec)), "bitext source")):
        yield parse_row(spec, row, f"{path} row group {group} row {index}")


def tsv_bitexts(spec: BitextSource, path: str) -> Iterator[BitextOutput]:
    """Rows of one TSV file, streamed (a quote is text: corpus sentences hold unbalanced quotes)."""
    with FileSystems.open(path) as raw:  # compression from the name (.gz, .bz2)
        reader = csv.reader(codecs.getreader("utf-8")(raw, errors="strict"), delimiter="\t",
                            quoting=csv.QUOTE_NONE)
        try:
            header = next(reader, None)
            if header is None:
                raise InputError(path, "bitext source: the file is empty; a header row names its columns")
            missing = [(c, f) for c, f in _columns(spec).items() if c not in header]
            if missing:
                raise InputError(path, f"bitext source {missing[0][1]}: column {missing[0][0]!r} is not in the "
                                       f"header row {header}")
            for line, fields in enumerate(reader, start=2):
                where = f"{path} line {line}"
                if len(fields) != len(header):
                    yield Rejection(SOURCE, where, "bitext", MALFORMED,
                                    f"{where}: {len(fields)} tab-separated fields, the header has {len(header)}")
                else:
                    yield parse_row(spec, dict(zip(header, fields)), where)
        except UnicodeDecodeError as e:
            raise InputError(path, f"bitext source: not UTF-8 ({e})") from None


class ReadBitexts(beam.PTransform):
    """The configured bitext files; returns {"bitexts": Bitext, "rejected": Rejection}."""

    def __init__(self, spec: BitextSource):
        super().__init__()
        self.spec = spec

    def expand(self, pbegin):
        spec = self.spec
        files = (pbegin
                 | "Pattern" >> beam.Create([spec.files])
                 | "Match" >> beam.FlatMap(matched_paths, "bitext source field files")
                 | "SpreadFiles" >> beam.Reshuffle())
        if spec.format == "tsv":
            rows = files | "ReadTsv" >> beam.FlatMap(lambda path, s=spec: tsv_bitexts(s, path))
        else:
            rows = (files
                    | "RowGroups" >> beam.FlatMap(lambda path, s=spec: checked_row_groups(path, _columns(s),
                                                                                         "bitext source"))
                    | "SpreadRowGroups" >> beam.Reshuffle()
                    | "ReadRowGroups" >> beam.FlatMap(lambda item, s=spec: parquet_bitexts(s, item)))
        routed = rows | "Route" >> beam.ParDo(_Route()).with_outputs(REJECTED, main="bitexts")
        return {"bitexts": routed.bitexts, "rejected": routed[REJECTED]}
