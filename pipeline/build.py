"""The pipeline graphs.

    build:     sources -> validation (+ staging) -> store lookup -> coverage (dedup, rank) -> shards + metadata
    run:       the same, with the store's misses translated by vLLM on the way
    translate: sources -> validation -> store lookup -> vLLM -> store (no shards)
    recaption: sources -> validation -> distinct images -> description store lookup -> VLM -> description store
               (`run` does this too when the config has a recaption section)

With recaption.use_in_shards, or translator.context, build, run and translate join each valid image
to its accepted description (transforms/image_descriptions.py: `run` takes what its recaption step
found or wrote, the others read the description store); transforms/image_texts.py then says which
English texts an image has (its captions, sent with the description as context; the description as a
caption styled by sentences) and under which store key each is translated and looked up.

With plan.translation_pairing `bitext`, the images' bytes validation read are also embedded and
matched to the config's bitexts (transforms/bitext_pairs.py), and coverage takes the matches as a
third input.

Only two groupings carry whole samples (the coverage step's buckets and the shards), and never image
bytes: the local runners hold every grouping in memory, so their per-sample size is what memory grows
with.
"""
from __future__ import annotations

import dataclasses
from typing import Optional

import apache_beam as beam

from pipeline.dataflow_checks import check_dataflow_served
from schemas.config import RecaptionConfig, RunConfig, TranslatorConfig
from schemas.errors import ConfigError
from schemas.layout import RECAPTION_STATS
from schemas.records import Rejection, SourceRecord
from transforms.atomic import join
from transforms.bitext_pairs import PairBitexts
from transforms.counting import sum_pairs
from transforms.coverage import AssignCoverage
from transforms.finalize import WriteRunMetadata, WriteTranslationStats
from transforms.group_metrics import MeasuredCombinePerKey, MeasuredGroupByKey
from transforms.image_descriptions import AttachDescriptions, StoredDescriptions
from transforms.image_texts import ImageTexts
from transforms.missing import GateOnMissing
from transforms.run_folder import run_staging
from transforms.shard_writer import WRITE_REJECTED, WriteShard
from transforms.sources import ReadSource
from transforms.translate import TranslateTexts
from transforms.validate import IMAGE_BYTES, REJECTED, ValidateRecord


@dataclasses.dataclass(frozen=True)
class ValidatedInputs:
    images: beam.PCollection  # ValidImage; a key listed twice is still twice (coverage keeps one)
    read_counts: beam.PCollection  # (source, (images, captions))
    rejections: beam.PCollection  # Rejection
    image_bytes: Optional[beam.PCollection] = None  # (sha256, bytes) per valid image, when bitexts are matched


def _read_count(element: SourceRecord | Rejection) -> tuple[str, tuple[int, int]]:
    """(source, (images, captions)) as read, before any check."""
    if isinstance(element, Rejection):
        return element.source, (1 if element.level == "image" else 0, element.captions)
    return element.source, (1, len(element.captions))


def read_inputs(p: beam.Pipeline, config: RunConfig, staging: Optional[str] = None,
                image_bytes: bool = False) -> ValidatedInputs:
    """Every source, validated; what was read and what was rejected. `staging`: where validation
    stages the images no byte range of their source holds, for the shard writer (transforms/staging.py);
    only a graph that writes shards passes it. `image_bytes`: also each valid image's bytes, as read."""
    read = [p | ReadSource(spec) for spec in config.sources]
    records = [r["records"] for r in read] | "AllRecords" >> beam.Flatten()
    source_rejects = [r["rejected"] for r in read] | "SourceRejects" >> beam.Flatten()
    read_counts = ((records, source_rejects)
                   | "ReadElements" >> beam.Flatten()
                   | "CountRead" >> beam.Map(_read_count)
                   | "SumRead" >> MeasuredCombinePerKey(sum_pairs))
    outputs = (REJECTED, IMAGE_BYTES) if image_bytes else (REJECTED,)
    validated = records | "Validate" >> beam.ParDo(
        ValidateRecord(config.validation, staging, image_bytes)).with_outputs(*outputs, main="valid")
    rejections = (source_rejects, validated[REJECTED]) | "AllRejections" >> beam.Flatten()
    return ValidatedInputs(validated.valid, read_counts, rejections,
                           validated[IMAGE_BYTES] if image_bytes else None)


def with_descriptions(images: beam.PCollection, config: RunConfig, described: Optional[beam.PCollection] = None
                      ) -> tuple[beam.PCollection, Optional[beam.PCollection]]:
    """The images, each with its accepted description where the build uses descriptions, and the
    join's summary (None where it does not). `described`: (sha256, description) from `run`'s
    recaption step; else the description store's, read without asking the VLM."""
    if not config.uses_descriptions:
        return images, None
    if described is None:
        recaption = config.recaption
        described = images.pipeline | "StoredDescriptions" >> StoredDescriptions(recaption.store,
                                                                                  recaption.request.fingerprint)
    attached = (images, described) | "Descriptions" >> AttachDescriptions()
    return attached["images"], attached["summary"]


def _translate(images: beam.PCollection, config: RunConfig, translator: Optional[TranslatorConfig]) -> dict:
    if translator is not None:
        check_dataflow_served(images.pipeline, translator)
    plan, texts = config.plan, ImageTexts.of(config)
    # Each English text (captions, with their context; the description) with the languages its image's
    # split needs from the translator (bitext-paired languages only where they are caption references
    # or captions).
    english = images | "EnglishTexts" >> beam.FlatMap(
        lambda im: [(t.text, plan.translator_languages(plan.split_of(im.key, im.sha256)), t.context)
                    for t in texts.of_image(im)])
    return english | "Translations" >> TranslateTexts(config.store, translator, plan.translation_languages)


def require_translator(config: RunConfig, command: str) -> TranslatorConfig:
    """The config's translator, or a ConfigError naming the field: `translate` and `run` exist to send
    captions to a server, so without one they refuse rather than quietly do less."""
    if config.translator is None:
        raise ConfigError("translator", f"`{command}` sends captions to a vLLM server and the config has no "
                                        "translator section (translator.model with translator.endpoints or "
                                        "translator.managed); to build shards from the store alone run "
                                        "`florenz-data build CONFIG`")
    return config.translator


def build_shards(p: beam.Pipeline, config: RunConfig, run_id: str, translate: bool = False,
                 allow_missing: bool = False) -> beam.PCollection:
    """Add the whole build to `p` (translating store misses when `translate`); returns the stats.
    `run_id` names the run that holds the output's lease (transforms/lease.py): its temporary files
    live in its own run folder, and it marks the output complete only while it holds the lease.

    Unless `allow_missing`, a translation the plan needs that is neither stored nor translated now
    stops the build before it writes anything: every writing step takes the count of missing
    translations as a side input (so runs after it is known) and writes nothing when it is not 0;
    the missing texts are listed in OUTPUT/missing_translations/ instead. With `allow_missing`
    the annotations are left out and counted (stats.json: missing_translation)."""
    staging = run_staging(config.output, run_id)
    pair_bitexts = bool(config.plan.bitext_languages)
    inputs = read_inputs(p, config, staging, image_bytes=pair_bitexts)
    recaption, described = None, None  # `run` describes the images too when the config has a recaption section
    if translate and config.recaption is not None:
        recaption, described = _recaption(inputs.images, config, run_id, remove_run=False)
    images, descriptions = with_descriptions(inputs.images, config, described)
    translated = _translate(images, config, require_translator(config, "run") if translate else None)
    gate = {} if allow_missing else {
        "missing": translated["missing"] | "GateOnMissing" >> GateOnMissing(config.output, run_id)}
    coverage_inputs = (images, translated["translations"])
    if pair_bitexts:
        bitexts = inputs.image_bytes | "PairBitexts" >> PairBitexts(config.bitext, join(staging, "bitext"))
        coverage_inputs += (bitexts["matches"],)
    planned = coverage_inputs | "Coverage" >> AssignCoverage(config.plan, ImageTexts.of(config))
    written = (planned["members"]
               | "GroupShards" >> MeasuredGroupByKey()
               | "WriteShards" >> beam.ParDo(WriteShard(config.output, run_id, config.resized), **gate).with_outputs(
                   WRITE_REJECTED, main="shards"))
    shards = written.shards
    rejections = ((inputs.rejections, planned["duplicates"], written[WRITE_REJECTED])
                  | "WithDuplicates" >> beam.Flatten())
    return ((shards, inputs.read_counts, rejections, translated["summary"])
            | "Finalize" >> WriteRunMetadata(config, run_id, gate, recaption, descriptions))


def require_recaption(config: RunConfig) -> RecaptionConfig:
    """The config's recaption section, or a ConfigError naming it."""
    if config.recaption is None:
        raise ConfigError("recaption", "`recaption` sends images to a vision-language model served by vLLM and the "
                                       "config has no recaption section (recaption.store with recaption.endpoints "
                                       "or recaption.managed)")
    return config.recaption


def _recaption(images: beam.PCollection, config: RunConfig, run_id: str,
               remove_run: bool) -> tuple[beam.PCollection, beam.PCollection]:
    """Describe the images the store lacks; writes recaption_stats.json; returns the summary, once
    written, and (sha256, description) of every image with an accepted one."""
    from transforms.recaption import Recaption  # the HTTP client: only graphs that recaption need it

    recaption = require_recaption(config)
    check_dataflow_served(images.pipeline, recaption)
    described = images | "Recaption" >> Recaption(recaption)
    summary = described["summary"] | "WriteRecaptionStats" >> beam.ParDo(
        WriteTranslationStats(config.output, run_id, RECAPTION_STATS, remove_run))
    return summary, described["descriptions"]


def recaption_store(p: beam.Pipeline, config: RunConfig, run_id: str) -> beam.PCollection:
    """Fill the description store for every distinct image the sources hold; returns the summary."""
    return _recaption(read_inputs(p, config).images, config, run_id, remove_run=True)[0]


def translate_store(p: beam.Pipeline, config: RunConfig, run_id: str) -> beam.PCollection:
    """Fill the store for every caption the sources hold; returns the translation summary."""
    images, _ = with_descriptions(read_inputs(p, config).images, config)
    translated = _translate(images, config, require_translator(config, "translate"))
    return translated["summary"] | "WriteStats" >> beam.ParDo(WriteTranslationStats(config.output, run_id))
