"""One sample per image: the same bytes listed under two ids (two sources listing one dataset, two ids
in one source) must not become two samples — least of all one in train and one in eval — and one id
listed twice must not become two samples either.

Content duplicates meet in a grouping by the image's sha256 (`KeepOnePerContent`); key duplicates
(different bytes under one key) meet in the coverage step's bucket grouping (`keep_first`). Both keep
the smallest image by a total order, so the choice never depends on arrival order.
"""
from __future__ import annotations

from typing import Iterable, Iterator

import apache_beam as beam

from schemas.coverage import CoveragePlan
from schemas.records import Rejection, ValidImage
from transforms.group_metrics import MeasuredGroupByKey

DUPLICATES = "duplicates"
DUPLICATE_IMAGE = "duplicate_image"
DUPLICATE_KEY = "duplicate_key"


def key_rank(image: ValidImage) -> tuple[str, str]:
    """Which of several images under one key is kept: the smallest (source_id, sha256)."""
    return image.source_id, image.sha256


def keep_first(key: str, images: Iterable[ValidImage]) -> tuple[ValidImage, list[Rejection]]:
    """The image `key_rank` keeps, whatever the arrival order, and a rejection for each other."""
    ordered = sorted(images, key=key_rank)
    rejections = [Rejection(dup.source, key, "image", DUPLICATE_KEY, f"source_id {dup.source_id}", len(dup.captions))
                  for dup in ordered[1:]]
    return ordered[0], rejections


class _KeepOne(beam.DoFn):
    """(sha256, images with those bytes) -> the one kept; a `duplicate_image` rejection per other.

    Streams the group, holding one image, so a placeholder image repeated under 100k keys (common in
    web-scraped data) costs no memory. The kept one is the smallest by (key not listed for evaluation,
    key, source_id, captions): a key the plan lists for evaluation wins, so the user's eval list is
    honoured whichever copy it names."""

    def __init__(self, plan: CoveragePlan):
        self.plan = plan

    def _rank(self, image: ValidImage) -> tuple:
        return not self.plan.is_eval_key(image.key), image.key, image.source_id, image.captions

    def process(self, item: tuple[str, Iterable[ValidImage]]) -> Iterator:
        sha, images = item
        kept = None
        for image in images:
            if kept is None:
                kept = image
                continue
            if self._rank(image) < self._rank(kept):
                image, kept = kept, image
            beam.metrics.Metrics.counter("dedup", DUPLICATE_IMAGE).inc()
            yield beam.pvalue.TaggedOutput(DUPLICATES, Rejection(
                image.source, image.key, "image", DUPLICATE_IMAGE,
                f"the same bytes (sha256 {sha[:16]}...) are kept under another key", len(image.captions)))
        yield kept


class KeepOnePerContent(beam.PTransform):
    """ValidImage -> {"images": one ValidImage per distinct content, "duplicates": Rejections}."""

    def __init__(self, plan: CoveragePlan):
        super().__init__()
        self.plan = plan

    def expand(self, images):
        kept = (images
                | "ByContent" >> beam.Map(lambda im: (im.sha256, im))
                | "GroupContent" >> MeasuredGroupByKey()
                | "KeepOne" >> beam.ParDo(_KeepOne(self.plan)).with_outputs(DUPLICATES, main="images"))
        return {"images": kept.images, "duplicates": kept[DUPLICATES]}
