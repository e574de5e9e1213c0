"""Coverage assignment: join each valid image with its captions' translations and build the
annotations the plan allows for its split.

Train images get captions only in caption languages and translations for every translation
language; eval images get caption references in every language (so unseen captioning can be
measured) and the translations. An annotation whose translation is not in the store is counted as
missing, per task-language, never dropped silently.
"""
from __future__ import annotations

import dataclasses
from collections import Counter
from typing import Iterator, Mapping

import apache_beam as beam

from schemas.coverage import CoveragePlan
from schemas.records import SPLIT_EVAL, TASK_CAPTION, TASK_TRANSLATION, ValidImage, text_hash
from schemas.sample import Annotation, task_language


@dataclasses.dataclass(frozen=True)
class PlannedSample:
    """A valid image with its split, shuffle order and annotations, ready for a shard."""

    image: ValidImage
    split: str
    order: int
    annotations: tuple[Annotation, ...]
    missing: tuple[tuple[str, int], ...]  # (task-lang, count), sorted


def plan_annotations(image: ValidImage, split: str, plan: CoveragePlan,
                     translations: Mapping[str, Mapping[str, str]]) -> tuple[list[Annotation], Counter]:
    """Annotations of one image, in (caption index, task, plan language order), and what is missing."""
    caption_langs = plan.languages if split == SPLIT_EVAL else plan.caption_languages
    caption_langs = [l for l in plan.languages if l in caption_langs]
    annotations: list[Annotation] = []
    missing: Counter = Counter()
    for caption in image.captions:
        found = translations.get(text_hash(caption), {})
        for lang in caption_langs:
            target = caption if lang == plan.source_language else found.get(lang)
            if target is None:
                missing[task_language(TASK_CAPTION, lang)] += 1
            else:
                annotations.append(Annotation(TASK_CAPTION, lang, target))
        for lang in plan.translation_languages:
            if lang in found:
                annotations.append(Annotation(TASK_TRANSLATION, lang, found[lang], source=caption))
            else:
                missing[task_language(TASK_TRANSLATION, lang)] += 1
    return annotations, missing


def _uses(image: ValidImage) -> Iterator[tuple[str, str]]:
    for h in sorted({text_hash(c) for c in image.captions}):
        yield h, image.key


def _fan_out(item: tuple[str, dict]) -> Iterator[tuple[str, tuple[str, dict[str, str]]]]:
    """(text_hash, {uses, store}) -> (image key, (text_hash, {lang: translation})) per use."""
    text, grouped = item
    found = dict(grouped["store"])
    for key in grouped["uses"]:
        yield key, (text, found)


class _BuildSample(beam.DoFn):
    def __init__(self, plan: CoveragePlan):
        self.plan = plan

    def process(self, item: tuple[str, dict]) -> Iterator[tuple[str, PlannedSample]]:
        key, grouped = item
        (image,) = grouped["image"]
        translations = dict(grouped["translations"])
        split = self.plan.split_of(key)
        annotations, missing = plan_annotations(image, split, self.plan, translations)
        for task_lang, n in missing.items():
            beam.metrics.Metrics.counter("coverage", f"missing_{task_lang}").inc(n)
        yield key, PlannedSample(image, split, self.plan.order_of(key), tuple(annotations),
                                 tuple(sorted(missing.items())))


class AssignCoverage(beam.PTransform):
    """ValidImage (unique keys) + store entries (text_hash, (lang, translation)) -> (key, PlannedSample)."""

    def __init__(self, plan: CoveragePlan):
        super().__init__()
        self.plan = plan

    def expand(self, inputs: tuple):
        images, store = inputs
        uses = images | "CaptionUses" >> beam.FlatMap(_uses)
        per_image = ({"uses": uses, "store": store}
                     | "JoinStore" >> beam.CoGroupByKey()
                     | "FanOut" >> beam.FlatMap(_fan_out))
        return ({"image": images | "ByKey" >> beam.Map(lambda im: (im.key, im)),
                 "translations": per_image}
                | "JoinImages" >> beam.CoGroupByKey()
                | "Build" >> beam.ParDo(_BuildSample(self.plan)))

