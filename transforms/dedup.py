"""One image per sample key: the same image listed twice in a source must not become two samples."""
from __future__ import annotations

from typing import Iterable, Iterator

import apache_beam as beam

from schemas.records import Rejection, ValidImage

REJECTED = "rejected"


def _keep_first(item: tuple[str, Iterable[ValidImage]]) -> Iterator:
    """Keep the smallest (source_id, sha256), whatever the arrival order; reject the others."""
    key, images = item
    ordered = sorted(images, key=lambda im: (im.source_id, im.sha256))
    yield ordered[0]
    for dup in ordered[1:]:
        yield beam.pvalue.TaggedOutput(REJECTED, Rejection(dup.source, key, "image", "duplicate_key",
                                                           f"source_id {dup.source_id}", len(dup.captions)))


class DedupKeys(beam.PTransform):
    """ValidImage -> ValidImage with unique keys (main) and `rejected` duplicates."""

    def expand(self, images):
        return (images
                | "ByKey" >> beam.Map(lambda im: (im.key, im))
                | "Group" >> beam.GroupByKey()
                | "KeepFirst" >> beam.FlatMap(_keep_first).with_outputs(REJECTED, main="images"))
