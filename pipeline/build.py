"""The build graph: sources -> validation -> unique keys -> coverage (with the translation store)
-> shards -> manifest, indexes, rejects and stats."""
from __future__ import annotations

import apache_beam as beam

from schemas.config import RunConfig
from schemas.records import Rejection, SourceRecord
from transforms.coverage import AssignCoverage
from transforms.dedup import DedupKeys
from transforms.finalize import WriteRunMetadata
from transforms.shard_writer import WriteShard
from transforms.sharding import AssignShards
from transforms.sources import ReadSource
from transforms.translation_store import ReadTranslations
from transforms.validate import REJECTED, ValidateRecord


def _read_count(element: SourceRecord | Rejection) -> tuple[str, tuple[int, int]]:
    """(source, (images, captions)) as read, before any check."""
    if isinstance(element, Rejection):
        return element.source, (1 if element.level == "image" else 0, element.captions)
    return element.source, (1, len(element.captions))


def _sum_pairs(pairs) -> tuple[int, int]:
    images = captions = 0
    for i, c in pairs:
        images += i
        captions += c
    return images, captions


def build_shards(p: beam.Pipeline, config: RunConfig) -> beam.PCollection:
    """Add the whole build to `p`; returns the PCollection holding the run's stats dict."""
    read = [p | ReadSource(spec) for spec in config.sources]
    records = [r["records"] for r in read] | "AllRecords" >> beam.Flatten()
    source_rejects = [r["rejected"] for r in read] | "SourceRejects" >> beam.Flatten()
    read_counts = ((records, source_rejects)
                   | "ReadElements" >> beam.Flatten()
                   | "CountRead" >> beam.Map(_read_count)
                   | "SumRead" >> beam.CombinePerKey(_sum_pairs))
    validated = records | "Validate" >> beam.ParDo(ValidateRecord(config.validation)).with_outputs(
        REJECTED, main="valid")
    unique = validated.valid | "UniqueKeys" >> DedupKeys()
    store = p | "ReadStore" >> ReadTranslations(config.store, config.plan.translation_languages)
    shards = ((unique.images, store)
              | "Coverage" >> AssignCoverage(config.plan)
              | "AssignShards" >> AssignShards(config.plan.shard_size)
              | "GroupShards" >> beam.GroupByKey()
              | "WriteShards" >> beam.ParDo(WriteShard(config.output)))
    rejections = ((source_rejects, validated[REJECTED], unique[REJECTED])
                  | "AllRejections" >> beam.Flatten())
    return (shards, read_counts, rejections) | "Finalize" >> WriteRunMetadata(config)
