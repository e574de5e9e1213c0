"""Bitexts matched to the build's images, turned into translation samples (plan.translation_pairing:
bitext; README, "Bitexts matched to images").

`PairBitexts` embeds the images validation already read (their bytes come from validation's
IMAGE_BYTES output, fused behind it: no image is read twice) keyed by content sha256, and the
bitexts' English sides; runs the exact top-N matcher with the use cap (transforms/bitext_match.py);
and brings each matched bitext's text back to the images it serves through one grouping by bitext
id, holding one copy of the bitext and at most use_cap images. `BitextsByBucket` then joins each
image's matches (at most top_n) to the image kept for that content and sends them to its order
bucket, where coverage (transforms/coverage.py) writes them as annotations with `bitext_annotations`.

An image listed twice with the same bytes is embedded twice (validation sees both copies) and kept
once: the matcher stages one vector per sha256. Reading the kept images' bytes again after
deduplication would cost a second read of every image to save a forward pass for the rare copy.
"""
from __future__ import annotations

from collections import Counter
from typing import Iterable, Iterator, Optional, Sequence

import apache_beam as beam

from schemas.bitext import Bitext, BitextConfig
from schemas.coverage import CoveragePlan
from schemas.languages import sentence_joiner
from schemas.records import TASK_TRANSLATION, ValidImage
from schemas.sample import Annotation, task_language
from transforms.bitext_match import IMAGES, TEXTS, MatchBitexts
from transforms.bitext_source import ReadBitexts
from transforms.group_metrics import MeasuredCoGroupByKey, MeasuredGroupByKey
from transforms.sharding import bucket_of

BitextMatch = tuple[float, Bitext]  # (image - English side cosine, the bitext)
_BITEXT, _USER = 0, 1


def best_matches(matches: Iterable[BitextMatch]) -> tuple[BitextMatch, ...]:
    """Similarity descending, ties by bitext id: the matcher's order."""
    return tuple(sorted(matches, key=lambda m: (-m[0], m[1].id)))


def _serve(item: tuple[str, Iterable[tuple[int, object]]]) -> Iterator[tuple[str, BitextMatch]]:
    """(bitext id, its copies and its users (image sha256, similarity)) -> (sha256, (similarity, bitext))
    per user. Streams the group: a bitext repeated in the corpus is held once, and its users are at
    most use_cap."""
    bitext_id, values = item
    bitext: Optional[Bitext] = None
    users: list[tuple[str, float]] = []
    for tag, value in values:
        if tag == _BITEXT:
            bitext = bitext or value
        else:
            users.append(value)
    if bitext is None and users:  # the matcher is given only ids read with their text
        raise ValueError(f"bitext {bitext_id} was matched to {len(users)} images but never read")
    for sha, similarity in users:
        yield sha, (similarity, bitext)


def _count_rejection(rejection) -> None:
    beam.metrics.Metrics.counter("bitext", rejection.reason).inc()


class PairBitexts(beam.PTransform):
    """(image sha256, image bytes) -> {"matches": (sha256, (similarity, Bitext)), at most top_n per
    image; "rejected": Rejections of bitext rows (also Beam counters in namespace "bitext")}.
    `staging` is a folder of this run's own for the matcher's blocks."""

    def __init__(self, config: BitextConfig, staging: str):
        super().__init__()
        self.config, self.staging = config, staging

    def expand(self, image_bytes):
        # Here, not at the top: Beam's RunInference module imports torch (~500 MB of RSS), which every
        # build would pay through transforms/coverage.py's import of this module.
        from transforms.embeddings import Embed

        config = self.config
        read = image_bytes.pipeline | "ReadBitexts" >> ReadBitexts(config.source)
        bitexts = read["bitexts"]
        texts = (bitexts | "EnglishSides" >> beam.Map(lambda b: (b.id, b.en))
                 | "EmbedTexts" >> Embed(config.model, "text", config.batch_size))
        images = image_bytes | "EmbedImages" >> Embed(config.model, "image", config.batch_size)
        matches = {IMAGES: images, TEXTS: texts} | "Match" >> MatchBitexts(config.matching, self.staging)
        users = matches | "Users" >> beam.FlatMap(
            lambda kv: [(bitext_id, (_USER, (kv[0], sim))) for sim, bitext_id in kv[1]])
        copies = bitexts | "Copies" >> beam.Map(lambda b: (b.id, (_BITEXT, b)))
        served = ((copies, users) | "CopiesAndUsers" >> beam.Flatten()
                  | "JoinBitexts" >> MeasuredGroupByKey()
                  | "Serve" >> beam.FlatMap(_serve))
        read["rejected"] | "CountRejected" >> beam.Map(_count_rejection)
        return {"matches": served, "rejected": read["rejected"]}


def _to_bucket(item: tuple[str, dict], plan: CoveragePlan, bits: int) -> Iterator[tuple[int, tuple]]:
    """(sha256, {kept image's key, its matches}) -> (bucket, ((key, sha256), matches best first)): two
    images under one key (of which coverage keeps one) keep their own matches."""
    sha, grouped = item
    matches = best_matches(grouped["match"])
    for key in grouped["key"]:
        if matches:
            yield bucket_of(plan, key, bits), ((key, sha), matches)


class BitextsByBucket(beam.PTransform):
    """(images kept once per content, matches (sha256, (similarity, Bitext))) -> (order bucket, ((key,
    sha256), matches)): the grouping by sha256 holds one image's key and its at most top_n matches."""

    def __init__(self, plan: CoveragePlan, bits: beam.pvalue.AsSingleton):
        super().__init__()
        self.plan, self.bits = plan, bits

    def expand(self, inputs):
        images, matches = inputs
        keys = images | "KeyOfContent" >> beam.Map(lambda im: (im.sha256, im.key))
        return ({"key": keys, "match": matches}
                | "JoinImages" >> MeasuredCoGroupByKey()
                | "ToBuckets" >> beam.FlatMap(_to_bucket, plan=self.plan, bits=self.bits))


def paragraph_of(key: str, matches: Sequence[BitextMatch], plan: CoveragePlan) -> tuple[BitextMatch, ...]:
    """The bitexts of the image's fake paragraph: 2..len(matches) of them, how many and which drawn
    from (seed, key) alone; empty with fewer than 2 matches."""
    if len(matches) < 2:
        return ()
    n = 2 + plan.seeded("paragraph-length", key) % (len(matches) - 1)
    return tuple(sorted(matches, key=lambda m: plan.seeded("paragraph", key, m[1].id))[:n])


def bitext_annotations(image: ValidImage, matches: Sequence[BitextMatch], plan: CoveragePlan,
                       missing: Counter) -> list[Annotation]:
    """Per bitext-paired language (plan order): each matched bitext (best first) as a translation,
    then one paragraph of several of them (English sides joined by a space, targets by the
    language's joiner: none in Chinese or Japanese), its similarity the lowest of its parts. An
    image with no match counts one missing translation per language."""
    annotations = []
    paragraph = paragraph_of(image.key, matches, plan)
    for lang in plan.bitext_languages:
        if not matches:
            missing[task_language(TASK_TRANSLATION, lang)] += 1
        for similarity, bitext in matches:
            annotations.append(Annotation(TASK_TRANSLATION, lang, dict(bitext.translations)[lang], source=bitext.en,
                                          similarity=similarity))
        if paragraph:
            annotations.append(Annotation(
                TASK_TRANSLATION, lang, sentence_joiner(lang).join(dict(b.translations)[lang] for _, b in paragraph),
                source=" ".join(b.en for _, b in paragraph), similarity=min(s for s, _ in paragraph)))
    return annotations
