"""Coverage assignment: join each valid image with its captions' translations and build the
annotations the plan allows for its split.

Train images get captions only in caption languages and translations for every translation
language; eval images get caption references in every language (so unseen captioning can be
measured) and the translations. An annotation whose translation is not in the store is counted as
missing, per task-language, never dropped silently.
"""
from __future__ import annotations

import dataclasses
import zlib
from collections import Counter
from typing import Iterable, Iterator, Mapping

import apache_beam as beam

from schemas.coverage import CoveragePlan
from schemas.records import SPLIT_EVAL, TASK_CAPTION, TASK_TRANSLATION, ImageRef, ValidImage, text_hash
from schemas.sample import Annotation, encode_sample_json, task_language
from transforms.dedup import DUPLICATES, KeepOnePerContent, keep_first, key_rank
from transforms.group_metrics import MeasuredCoGroupByKey, MeasuredCombinePerKey
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


def shard_member(image: ValidImage, split: str, plan: CoveragePlan,
                 translations: Mapping[str, Mapping[str, str]]) -> ShardMember:
    annotations, missing = plan_annotations(image, split, plan, translations)
    for task_lang, n in missing.items():
        beam.metrics.Metrics.counter("coverage", f"missing_{task_lang}").inc(n)
    counts = Counter(task_language(a.task, a.lang) for a in annotations)
    member = ShardMember(image.key, split, image.source, image.source_id, image.image, image.image_format,
                         image.width, image.height, image.sha256, len(image.captions),
                         tuple(sorted(counts.items())), tuple(sorted(missing.items())), b"")
    body = encode_sample_json(member.metadata(), annotations)
    return dataclasses.replace(member, body=zlib.compress(body, 1))


def _uses(image: ValidImage, plan: CoveragePlan, bits: int) -> Iterator[tuple[str, int]]:
    """(text_hash, bucket) per distinct caption: where the caption's translations must go."""
    bucket = bucket_of(plan, image.key, bits)
    for h in sorted({text_hash(c) for c in image.captions}):
        yield h, bucket


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
    per unique key, ranked within its split by (order, key); duplicate keys to `duplicates`."""

    def __init__(self, plan: CoveragePlan):
        self.plan = plan

    def process(self, item: tuple[int, dict], offsets: Mapping[Bucket, int]) -> Iterator:
        bucket, grouped = item
        images: dict[str, list[ValidImage]] = {}
        for image in grouped["image"]:
            images.setdefault(image.key, []).append(image)
        translations = {text: dict(found) for text, found in grouped["translations"]}
        rank_in_split: dict[str, int] = {}
        for key in sorted(images, key=lambda k: (self.plan.order_of(k), k)):
            image, duplicates = keep_first(key, images[key])
            for rejection in duplicates:
                yield beam.pvalue.TaggedOutput(DUPLICATES, rejection)
            split = self.plan.split_of(key, image.sha256)
            i = rank_in_split[split] = rank_in_split.get(split, -1) + 1
            shard, position = shard_position(offsets[(split, bucket)] + i, self.plan.shard_size)
            yield (split, shard), (position, shard_member(image, split, self.plan, translations))


class AssignCoverage(beam.PTransform):
    """ValidImage (duplicate keys and bytes allowed) + store entries (text_hash, (lang, translation))
    -> {"members": ((split, shard), (position, ShardMember)), "duplicates": Rejections of duplicate
    images and keys}.

    Images are first kept once per content (a grouping by sha256); then one grouping brings each
    order bucket's images, their translations and their ranks together; the translations reach it
    through a join on text hash: the buckets that use a text (combined before the shuffle) meet its
    store entries, and each such bucket gets the text's translations once."""

    def __init__(self, plan: CoveragePlan):
        super().__init__()
        self.plan = plan

    def expand(self, inputs: tuple):
        all_images, store = inputs
        plan = self.plan
        unique = all_images | "KeepOnePerContent" >> KeepOnePerContent(plan)
        images = unique["images"]
        bits = images | "BucketBits" >> BucketBits(plan)
        buckets = (images
                   | "CaptionUses" >> beam.FlatMap(_uses, plan=plan, bits=bits)
                   | "TextBuckets" >> MeasuredCombinePerKey(_BucketSet()))
        translations = ({"buckets": buckets, "store": store}
                        | "JoinStore" >> MeasuredCoGroupByKey()
                        | "FanOut" >> beam.FlatMap(_fan_out))
        offsets = (images | "RankedKeys" >> beam.Map(lambda im: (im.key, key_rank(im)))
                   | "Offsets" >> BucketOffsets(plan, bits))
        by_bucket = images | "ByBucket" >> beam.Map(lambda im, b: (bucket_of(plan, im.key, b), im), b=bits)
        planned = ({"image": by_bucket, "translations": translations}
                   | "JoinBuckets" >> MeasuredCoGroupByKey()
                   | "PlanBuckets" >> beam.ParDo(_PlanBucket(plan), offsets=offsets).with_outputs(
                       DUPLICATES, main="members"))
        duplicates = (unique["duplicates"], planned[DUPLICATES]) | "AllDuplicates" >> beam.Flatten()
        return {"members": planned.members, "duplicates": duplicates}
