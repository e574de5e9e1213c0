"""Recaption: each distinct image (by content hash) gets a detailed English description from a VLM,
once per request fingerprint, kept in the append-only description store
(transforms/description_store.py).

    valid images -> one request per sha256 -> store lookup -> misses in deterministic batches
                 -> the worker's dispatcher (the translator's admission, event loop and tickets,
                    with DescriptionClient) -> checks -> store parts -> counts

A re-run, or a run killed and restarted, finds what earlier runs stored and sends only the rest; a
retried bundle reads the part its first attempt wrote (translate_batches.AnswerBatches). Failed
requests are not stored (asked again next run), counted per reason with one example of each cause.
The summary holds images == described + rejected + failed (`balanced`), cache hits included.
"""
from __future__ import annotations

from typing import Iterator

import apache_beam as beam

from schemas.arrow import STATUS_ACCEPTED
from schemas.config import RecaptionConfig
from schemas.descriptions import DescriptionOutcome, DescriptionRequest
from schemas.records import STATUS_FAILED, ValidImage
from transforms.description_checks import CHECKS_TAG
from transforms.description_store import NAMESPACE, DescriptionParts, ReadDescriptions
from transforms.group_metrics import MeasuredCoGroupByKey, MeasuredCombinePerKey
from transforms.translate import FAILURE_EXAMPLES, Summarize
from transforms.translate_batches import AnswerBatches, BatchMisses

MISSES = "misses"
STORED = "stored"  # (sha256, description) of the needed images the store holds accepted
STATUS_COUNTS = {STATUS_ACCEPTED: "described", "rejected": "rejected", STATUS_FAILED: "failed"}


def request_of(image: ValidImage) -> tuple[str, DescriptionRequest]:
    """The image's request, keyed by its hash; the first accepted caption is the short caption."""
    return image.sha256, DescriptionRequest(image.sha256, image.image, image.captions[0] if image.captions else None)


def _first(requests) -> DescriptionRequest:
    """One request per content hash, the same whichever copy arrives first (by where it lies)."""
    return min(requests, key=lambda r: (r.image.name, r.image.offset, r.caption or ""))


def _classify(item: tuple[str, dict]) -> Iterator:
    """A needed image with a stored verdict: counted (main output), and its description (STORED) when
    accepted; without one: a miss."""
    sha, grouped = item
    requests = list(grouped["need"])
    if not requests:
        return  # stored, but not among this run's images
    entries = list(grouped["store"])
    if entries:
        status = entries[0].status
        yield {"images": 1, STATUS_COUNTS[status]: 1, "cache_hits": 1, f"cache_hits_{status}": 1}
        if status == STATUS_ACCEPTED:
            yield beam.pvalue.TaggedOutput(STORED, (sha, entries[0].description))
    else:
        yield beam.pvalue.TaggedOutput(MISSES, requests[0])


def _outcome_counts(outcome: DescriptionOutcome) -> dict:
    """What one asked image adds to the summary (and to Beam's metrics)."""
    kind = STATUS_COUNTS[outcome.status]
    name = kind if outcome.status == STATUS_ACCEPTED else f"{kind}_{outcome.reason}"
    beam.metrics.Metrics.counter(NAMESPACE, name).inc()
    counts: dict = {"images": 1, "requested": 1, kind: 1, "sent": outcome.requests_sent}
    if name != kind:
        counts[name] = 1
    if outcome.status == STATUS_FAILED:
        counts[FAILURE_EXAMPLES] = {name: outcome.raw_output or ""}
    elif outcome.finish_reason == "length":
        counts["hit_max_tokens"] = 1
    return counts


def _balance(summary: dict, images_in: int) -> dict:
    """The summary with its accounting: every distinct image described, rejected or failed."""
    summary = {"images_read": images_in, **summary}
    for key in ("images", "described", "rejected", "failed", "cache_hits", "requested", "sent"):
        summary.setdefault(key, 0)
    summary["balanced"] = summary["images"] == summary["described"] + summary["rejected"] + summary["failed"]
    return summary


def _accepted(item) -> Iterator[tuple[str, str]]:
    if isinstance(item, DescriptionOutcome) and item.status == STATUS_ACCEPTED:
        yield item.request.image_sha256, item.description


class Recaption(beam.PTransform):
    """ValidImages -> {"descriptions": (image sha256, description) accepted, stored or asked now, one
    per distinct image; "summary":
    one dict: images_read, images (distinct), described, rejected, failed (with _<reason> each),
    cache_hits, requested, sent, hit_max_tokens, balanced, and FAILURE_EXAMPLES when requests failed}."""

    def __init__(self, config: RecaptionConfig):
        super().__init__()
        self.config = config

    def expand(self, images):
        config = self.config
        fingerprint = config.request.fingerprint
        needed = (images
                  | "Requests" >> beam.Map(request_of)
                  | "OnePerImage" >> MeasuredCombinePerKey(_first))
        stored = images.pipeline | "ReadDescriptions" >> ReadDescriptions(config.store, fingerprint)
        looked_up = ({"need": needed, "store": stored}
                     | "Lookup" >> MeasuredCoGroupByKey()
                     | "Classify" >> beam.FlatMap(_classify).with_outputs(MISSES, STORED, main="hits"))
        answer = beam.ParDo(AnswerBatches(DescriptionParts(config.store, fingerprint), config))
        if config.managed is not None and config.accelerator:  # only this step on GPU workers (Dataflow)
            answer = answer.with_resource_hints(accelerator=config.accelerator)
        outcomes = (looked_up[MISSES]
                    | "Batches" >> BatchMisses(fingerprint, config.batch_size, CHECKS_TAG)
                    | "Describe" >> answer)
        counts = (looked_up.hits, outcomes | "OutcomeCounts" >> beam.Map(_outcome_counts)) | "AllCounts" >> beam.Flatten()
        images_in = beam.pvalue.AsSingleton(images | "CountRead" >> beam.combiners.Count.Globally())
        summary = (counts
                   | "Sum" >> beam.CombineGlobally(Summarize())
                   | "Balance" >> beam.Map(_balance, images_in))
        descriptions = ((looked_up[STORED], outcomes | "Accepted" >> beam.FlatMap(_accepted))
                        | "AllDescriptions" >> beam.Flatten())
        return {"descriptions": descriptions, "summary": summary}
