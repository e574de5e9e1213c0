"""Each valid image with its accepted VLM description, for a build that puts descriptions in the
shards or sends them as its captions' context (RunConfig.uses_descriptions).

    images by sha256 + accepted descriptions by sha256 -> one grouping by content -> images with
    `description` set, or counted (missing_description) and passed on without one

The grouping holds one image content's copies and at most one description (the store keeps one
entry per image and fingerprint; Recaption emits each image's once): bounded by how often one
content repeats, as KeepOnePerContent's is. No image is dropped here: one without an accepted
description (none stored, or its description rejected) keeps its captions, translated without
context.
"""
from __future__ import annotations

import dataclasses
from typing import Iterator

import apache_beam as beam

from schemas.arrow import STATUS_ACCEPTED
from transforms.description_store import NAMESPACE, ReadDescriptions
from transforms.group_metrics import MeasuredCoGroupByKey
from transforms.translate import Summarize

MISSING_DESCRIPTION = "missing_description"
COUNTS = "counts"


def _attach(item: tuple[str, dict]) -> Iterator:
    """The content's images, each with the description (main output), and one count dict per image (COUNTS)."""
    _, grouped = item
    description = min(grouped["description"], default=None)  # one; were there two, the same one whatever the order
    for image in grouped["image"]:
        if description is None:
            beam.metrics.Metrics.counter(NAMESPACE, MISSING_DESCRIPTION).inc()
        yield dataclasses.replace(image, description=description)
        counted = "with_description" if description is not None else MISSING_DESCRIPTION
        yield beam.pvalue.TaggedOutput(COUNTS, {"images": 1, counted: 1})


def _balance(summary: dict) -> dict:
    summary = {key: summary.get(key, 0) for key in ("images", "with_description", MISSING_DESCRIPTION)}
    summary["balanced"] = summary["images"] == summary["with_description"] + summary[MISSING_DESCRIPTION]
    return summary


def _accepted(item: tuple) -> Iterator[tuple[str, str]]:
    sha, entry = item
    if entry.status == STATUS_ACCEPTED:
        yield sha, entry.description


class StoredDescriptions(beam.PTransform):
    """(image sha256, description) of the store's accepted descriptions under `fingerprint`, for a
    graph that reads descriptions without asking the VLM."""

    def __init__(self, store: str, fingerprint: str):
        super().__init__()
        self.store, self.fingerprint = store, fingerprint

    def expand(self, pbegin):
        return (pbegin | "Read" >> ReadDescriptions(self.store, self.fingerprint)
                | "Accepted" >> beam.FlatMap(_accepted))


class AttachDescriptions(beam.PTransform):
    """(ValidImages, (sha256, description) accepted) -> {"images": every image, `description` set where
    it has one; "summary": one dict: images (valid images, copies included), with_description,
    missing_description, balanced}."""

    def expand(self, inputs):
        images, descriptions = inputs
        joined = ({"image": images | "BySha256" >> beam.Map(lambda im: (im.sha256, im)),
                   "description": descriptions}
                  | "JoinDescriptions" >> MeasuredCoGroupByKey()
                  | "Attach" >> beam.FlatMap(_attach).with_outputs(COUNTS, main="images"))
        summary = (joined[COUNTS]
                   | "Sum" >> beam.CombineGlobally(Summarize())
                   | "Balance" >> beam.Map(_balance))
        return {"images": joined.images, "summary": summary}
