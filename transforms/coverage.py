"""Coverage assignment: join each valid image with its captions' translations and build the
annotations the plan allows for its split.

Train images get captions only in caption languages and translations for every translation
language; eval images get caption references in every language (so unseen captioning can be
measured) and the translations. An annotation whose translation is not in the store is counted as
missing, per task-language, never dropped silently.

A translation language the plan pairs `other_image` takes its texts from another image's captions:
each image's donor is the next image of its ring — its split's images in one order bucket, in the
plan's seeded order, wrapping around — that shares no caption text with it and no translation into
those languages (`pair_donors`). The bucket's group already holds every text its images use and
their translations, so pairing adds no grouping, no side input and no translation, and stays bounded
by images_per_bucket at any scale.

A translation language the plan pairs `bitext` takes the bitexts matched to the image
(transforms/bitext_pairs.py): a third input, joined to the kept images by content and sent to their
bucket, at most top_n per image.
"""
from __future__ import annotations

import dataclasses
import zlib
from collections import Counter
from typing import Iterable, Iterator, Mapping, Optional, Sequence

import apache_beam as beam

from schemas.coverage import OWN_CAPTION, CoveragePlan
from schemas.records import SPLIT_EVAL, TASK_CAPTION, TASK_TRANSLATION, ImageRef, ValidImage, text_hash
from schemas.sample import CAPTION_HASHES, Annotation, encode_sample_json, task_language
from transforms.bitext_pairs import BitextMatch, BitextsByBucket, bitext_annotations
from transforms.caption_styles import caption_annotations
from transforms.dedup import DUPLICATES, KeepOnePerContent, keep_first, key_rank
from transforms.group_metrics import MeasuredCoGroupByKey, MeasuredCombinePerKey
from transforms.image_texts import ImageTexts
from transforms.sharding import Bucket, BucketBits, BucketOffsets, bucket_of, shard_position


@dataclasses.dataclass(frozen=True, slots=True)
class ShardMember:
    """A sample ready for its shard. Every one is held by the shard shuffle (in memory, on the local
    runners), so it is compact: the sample's JSON member is already encoded and zlib-compressed,
    and the image is still a reference that only the shard writer reads."""

    key: str
    split: str
    source: str
    source_id: str
    image: ImageRef
    image_format: str
    width: int
    height: int
    sha256: str
    captions: int
    annotations: tuple[tuple[str, int], ...]  # (task-lang, count), sorted
    missing: tuple[tuple[str, int], ...]  # (task-lang, count), sorted
    body: bytes  # zlib(JSON member)

    def metadata(self) -> dict:
        """What the sample's JSON and its manifest row say about it besides its annotations."""
        return {"key": self.key, "split": self.split, "source": self.source, "source_id": self.source_id,
                "width": self.width, "height": self.height, "sha256": self.sha256}

    def json_member(self) -> bytes:
        return zlib.decompress(self.body)


def plan_annotations(image: ValidImage, split: str, plan: CoveragePlan,
                     translations: Mapping[str, Mapping[str, str]],
                     donor: Optional[ValidImage] = None,
                     bitexts: Sequence[BitextMatch] = (),
                     texts: ImageTexts = ImageTexts()) -> tuple[list[Annotation], Counter]:
    """Annotations of one image, in (caption index, task, plan language order, caption style) over its
    captions then its description (`texts`: ImageTexts.of_image), then the other_image languages'
    translations of its donor's captions (donor caption index, plan language order), then the bitext
    languages' matched bitexts; and what is missing (for an image without a donor, one translation
    per own caption; a caption of a styled source counts once per language, however many styles it
    would yield)."""
    caption_langs = plan.languages if split == SPLIT_EVAL else plan.caption_languages
    caption_langs = [l for l in plan.languages if l in caption_langs]
    own_langs = [l for l in plan.translation_languages if plan.pairing_of(l) == OWN_CAPTION]
    annotations: list[Annotation] = []
    missing: Counter = Counter()
    for english in texts.of_image(image):
        found = translations.get(english.key, {})
        for lang in caption_langs:
            target = english.text if lang == plan.source_language else found.get(lang)
            if target is None:
                missing[task_language(TASK_CAPTION, lang)] += 1
            else:
                annotations += caption_annotations(target, lang, english.styles)
        annotations += _translations(english.text, found, own_langs, missing)
    paired_langs = plan.other_image_languages
    if paired_langs and donor is None:
        missing.update({task_language(TASK_TRANSLATION, l): len(image.captions) for l in paired_langs})
    for caption in donor.captions if donor is not None else ():
        annotations += _translations(caption, translations.get(texts.caption(donor, caption).key, {}), paired_langs,
                                     missing)
    annotations += bitext_annotations(image, bitexts, plan, missing)
    return annotations, missing


def _translations(caption: str, found: Mapping[str, str], langs: Iterable[str], missing: Counter) -> list[Annotation]:
    """The translation annotations of one English caption into `langs`, counting those not found."""
    annotations = []
    for lang in langs:
        if lang in found:
            annotations.append(Annotation(TASK_TRANSLATION, lang, found[lang], source=caption))
        else:
            missing[task_language(TASK_TRANSLATION, lang)] += 1
    return annotations


def pair_donors(ring: Sequence[ValidImage], plan: CoveragePlan, translations: Mapping[str, Mapping[str, str]],
                texts: ImageTexts = ImageTexts()) -> list[Optional[ValidImage]]:
    """Each image's donor for the other_image languages: the next image of `ring` (wrapping around)
    that shares nothing with it — no caption text, no translation into those languages — so no
    target it gets can be its own description; None where no other image qualifies. In a ring
    whose images share nothing this is a cyclic shift: every caption's translations go to exactly
    one other image, and the texts of each language keep their distribution. The walk past images
    that share something is bounded by the ring, one bucket's images of one split."""
    langs = plan.other_image_languages

    def traits(image: ValidImage) -> set[tuple[str, str]]:
        own = set()
        for caption in image.captions:
            found = translations.get(texts.caption(image, caption).key, {})
            own.add(("", text_hash(caption)))
            own.update((lang, found[lang]) for lang in langs if lang in found)
        return own

    shared = [traits(image) for image in ring]
    n = len(ring)
    return [next((ring[(i + step) % n] for step in range(1, n) if shared[i].isdisjoint(shared[(i + step) % n])),
                 None) for i in range(n)]


def shard_member(image: ValidImage, split: str, plan: CoveragePlan,
                 translations: Mapping[str, Mapping[str, str]], donor: Optional[ValidImage] = None,
                 bitexts: Sequence[BitextMatch] = (), texts: ImageTexts = ImageTexts()) -> ShardMember:
    """The image's sample; where the plan pairs other images, its JSON also lists the text hashes of
    the image's own captions (`caption_hashes`), so that `verify` can tell that no paired
    translation translates one of them."""
    annotations, missing = plan_annotations(image, split, plan, translations, donor, bitexts, texts)
    for task_lang, n in missing.items():
        beam.metrics.Metrics.counter("coverage", f"missing_{task_lang}").inc(n)
    counts = Counter(task_language(a.task, a.lang) for a in annotations)
    member = ShardMember(image.key, split, image.source, image.source_id, image.image, image.image_format,
                         image.width, image.height, image.sha256, len(image.captions),
                         tuple(sorted(counts.items())), tuple(sorted(missing.items())), b"")
    metadata = member.metadata()
    if plan.other_image_languages:
        metadata[CAPTION_HASHES] = sorted({text_hash(c) for c in image.captions})
    body = encode_sample_json(metadata, annotations)
    return dataclasses.replace(member, body=zlib.compress(body, 1))


def _uses(image: ValidImage, plan: CoveragePlan, bits: int, texts: ImageTexts) -> Iterator[tuple[str, int]]:
    """(request key, bucket) per distinct text of the image: where the text's translations must go."""
    bucket = bucket_of(plan, image.key, bits)
    for key in sorted({english.key for english in texts.of_image(image)}):
        yield key, bucket


class _BucketSet(beam.CombineFn):
    """Bucket indexes -> the sorted distinct ones: where one text is used, however many images use
    it (a text in every bucket costs 2^b small ints, and the combine runs before the shuffle)."""

    def create_accumulator(self) -> set[int]:
        return set()

    def add_input(self, acc: set[int], bucket: int) -> set[int]:
        acc.add(bucket)
        return acc

    def merge_accumulators(self, accs: Iterable[set[int]]) -> set[int]:
        return set().union(*accs)

    def extract_output(self, acc: set[int]) -> tuple[int, ...]:
        return tuple(sorted(acc))


def _fan_out(item: tuple[str, dict]) -> Iterator[tuple[int, tuple[str, tuple[tuple[str, str], ...]]]]:
    """(text_hash, {buckets, store}) -> (bucket, (text_hash, ((lang, translation), ...))) per bucket
    using the text."""
    text, grouped = item
    found = tuple(sorted(dict(grouped["store"]).items()))
    if found:  # else nothing to carry: the bucket counts what is missing on its own
        for buckets in grouped["buckets"]:
            for bucket in buckets:
                yield bucket, (text, found)


class _PlanBucket(beam.DoFn):
    """One order bucket's images and their translations -> ((split, shard), (position, ShardMember))
    per unique key, ranked within its split by (order, key); duplicate keys to `duplicates`. The
    images of one split, in that order, are the ring that `pair_donors` pairs them in."""

    def __init__(self, plan: CoveragePlan, texts: ImageTexts):
        self.plan = plan
        self.texts = texts

    def process(self, item: tuple[int, dict], offsets: Mapping[Bucket, int]) -> Iterator:
        bucket, grouped = item
        images: dict[str, list[ValidImage]] = {}
        for image in grouped["image"]:
            images.setdefault(image.key, []).append(image)
        translations = {text: dict(found) for text, found in grouped["translations"]}
        bitexts = dict(grouped.get("bitexts", ()))
        rings: dict[str, list[ValidImage]] = {}  # per split, in plan order
        for key in sorted(images, key=lambda k: (self.plan.order_of(k), k)):
            image, duplicates = keep_first(key, images[key])
            for rejection in duplicates:
                yield beam.pvalue.TaggedOutput(DUPLICATES, rejection)
            rings.setdefault(self.plan.split_of(key, image.sha256), []).append(image)
        paired = self.plan.other_image_languages
        for split, ring in sorted(rings.items()):
            donors = pair_donors(ring, self.plan, translations, self.texts) if paired else [None] * len(ring)
            for i, (image, donor) in enumerate(zip(ring, donors)):
                shard, position = shard_position(offsets[(split, bucket)] + i, self.plan.shard_size)
                yield (split, shard), (position, shard_member(image, split, self.plan, translations, donor,
                                                              bitexts.get((image.key, image.sha256), ()),
                                                              self.texts))


class AssignCoverage(beam.PTransform):
    """ValidImage (duplicate keys and bytes allowed) + store entries (text_hash, (lang, translation))
    [+ bitext matches (sha256, (similarity, Bitext)), when the plan pairs a language by bitext]
    -> {"members": ((split, shard), (position, ShardMember)), "duplicates": Rejections of duplicate
    images and keys}.

    Images are first kept once per content (a grouping by sha256); then one grouping brings each
    order bucket's images, their translations and their ranks together; the translations reach it
    through a join on text hash: the buckets that use a text (combined before the shuffle) meet its
    store entries, and each such bucket gets the text's translations once."""

    def __init__(self, plan: CoveragePlan, texts: ImageTexts = ImageTexts()):
        super().__init__()
        self.plan = plan
        self.texts = texts

    def expand(self, inputs: tuple):
        all_images, store, *matches = inputs
        plan = self.plan
        unique = all_images | "KeepOnePerContent" >> KeepOnePerContent(plan)
        images = unique["images"]
        bits = images | "BucketBits" >> BucketBits(plan)
        buckets = (images
                   | "CaptionUses" >> beam.FlatMap(_uses, plan=plan, bits=bits, texts=self.texts)
                   | "TextBuckets" >> MeasuredCombinePerKey(_BucketSet()))
        translations = ({"buckets": buckets, "store": store}
                        | "JoinStore" >> MeasuredCoGroupByKey()
                        | "FanOut" >> beam.FlatMap(_fan_out))
        offsets = (images | "RankedKeys" >> beam.Map(lambda im: (im.key, key_rank(im)))
                   | "Offsets" >> BucketOffsets(plan, bits))
        by_bucket = images | "ByBucket" >> beam.Map(lambda im, b: (bucket_of(plan, im.key, b), im), b=bits)
        groups = {"image": by_bucket, "translations": translations}
        if matches:
            groups["bitexts"] = (images, matches[0]) | "BitextsByBucket" >> BitextsByBucket(plan, bits)
        planned = (groups
                   | "JoinBuckets" >> MeasuredCoGroupByKey()
                   | "PlanBuckets" >> beam.ParDo(_PlanBucket(plan, self.texts), offsets=offsets).with_outputs(
                       DUPLICATES, main="members"))
        duplicates = (unique["duplicates"], planned[DUPLICATES]) | "AllDuplicates" >> beam.Flatten()
        return {"members": planned.members, "duplicates": duplicates}
