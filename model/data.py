"""The shard loader: WebDataset tars from the pipeline -> batches of (image, prompt, target) tensors.

Training reads an endless stream: every (rank, worker) draws shards at random with replacement
(resampled, so every rank sees fresh data without splitting a finite list), shuffles each shard's
samples through a buffer, and draws one annotation per image with task-language balancing. Every draw
is a pure function of (seed, stream, shard draw, position), so a checkpoint can store where each stream
is and a resumed run continues with exactly the batches an uninterrupted run would have seen, re-reading
at most one shard per worker. Evaluation reads the eval shards once, split by node and worker.
"""
from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import random
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, Optional

import numpy as np
import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from torchvision.io import ImageReadMode, decode_jpeg

from model.prompts import DECODER_START_BOS, DECODER_START_OFFICIAL, DECODER_STARTS, decoder_prefix, encoder_prompt
from model.modeling import IGNORE_INDEX
from schemas.layout import (IMAGE_EXTENSIONS, JSON_EXTENSION, RESIZE_SQUARE, STATS, index_entries, index_name,
                            resized_extension)
from schemas.sample import Annotation, decode_sample_json, task_language
from transforms.image_pixels import resize, to_rgb


class ImageTransform:
    """Florence-2's preprocessing up to the dtype: a square bicubic resize to `size` (224 pre-training,
    768 fine-tuning), as uint8 [3, size, size]; the model normalizes on its own device (model/pixels.py).

    Called on a PIL image (upright RGB, see decode_image) it resizes; `of_sample` reads a shard sample,
    taking the copy the build resized to this size in the square mode (`<key>.224.jpg`, schemas/layout.py)
    when the sample has one: a small JPEG decoded as it is (9-13x the images per core of the original's
    path on COCO, benchmarks/loader_throughput.py). Other samples are decoded with JPEG's DCT scaling
    while it leaves at least twice `size` on both sides (Pillow's draft: 1/2, 1/4 or 1/8), then resized
    as above.
    Measured on 30 COCO images upscaled to 1920 px: 4x faster than a full decode, mean |difference|
    0.5 of 255 levels (at most 1.4 per image; the copy's JPEG costs 1.7); drafting down to `size` itself
    would be 6x faster but differ by up to 5 levels. COCO's 640 px images are decoded full size, as before."""

    def __init__(self, size: int):
        self.size = size
        self.copy_extension = resized_extension(size, RESIZE_SQUARE)

    def __call__(self, image: Image.Image) -> torch.Tensor:
        image = resize(image, self.size, RESIZE_SQUARE)
        return torch.from_numpy(np.asarray(image, dtype=np.uint8).copy()).permute(2, 0, 1)

    def of_sample(self, sample: Mapping[str, Any]) -> torch.Tensor:
        copy = sample.get(self.copy_extension)
        if copy is not None:
            return decode_jpeg(torch.frombuffer(bytearray(copy), dtype=torch.uint8), mode=ImageReadMode.RGB)
        return self(decode_image(sample, draft=2 * self.size))


def image_transform(size: int) -> ImageTransform:
    """The loader's transform for images of `size` pixels square."""
    return ImageTransform(size)


def decode_image(sample: Mapping[str, Any], draft: Optional[int] = None) -> Image.Image:
    """A shard sample's original image as the model sees it (upright RGB: transforms/image_pixels.py);
    with `draft`, a JPEG is decoded at the smallest DCT scale that is still at least draft x draft."""
    for ext in IMAGE_EXTENSIONS.values():
        if ext in sample:
            image = Image.open(io.BytesIO(sample[ext]))
            if draft is not None:
                image.draft("RGB", (draft, draft))
            return to_rgb(image)
    raise ValueError(f"sample {sample.get('__key__')} has no image ({', '.join(IMAGE_EXTENSIONS.values())}); "
                     f"it holds {', '.join(sorted(k for k in sample if not k.startswith('__')))}")


def _rng(*parts: object) -> random.Random:
    """A generator seeded from its coordinates (never Python's salted hash)."""
    return random.Random(int.from_bytes(hashlib.sha256(":".join(map(str, parts)).encode()).digest()[:8], "big"))


# -- task-language balancing -------------------------------------------------------------------------
class AnnotationSampler:
    """Draws one annotation of an image; an annotation's weight is its task-language key's weight.

    "uniform" (the paper's default) weighs each key by 1 / (its annotations in the split), so every key is
    drawn about equally often however many annotations it has; "natural" weighs all annotations alike;
    a mapping gives explicit weights per key (keys it leaves out are never drawn)."""

    def __init__(self, weights: Mapping[str, float]):
        self.weights = dict(weights)

    @classmethod
    def from_setting(cls, setting: str | Mapping[str, float], key_counts: Mapping[str, int]) -> "AnnotationSampler":
        if isinstance(setting, Mapping):
            return cls(setting)
        if setting == "uniform":
            return cls({key: 1.0 / count for key, count in key_counts.items() if count})
        if setting == "natural":
            return cls({key: 1.0 for key in key_counts})
        raise ValueError(f"balance must be 'uniform', 'natural' or a mapping of weights, not {setting!r}")

    def draw(self, annotations: list[Annotation], rng: random.Random) -> Optional[Annotation]:
        weights = [self.weights.get(task_language(a.task, a.lang), 0.0) for a in annotations]
        if not any(weights):
            return None
        return rng.choices(annotations, weights=weights, k=1)[0]


def split_key_counts(output: str, split: str) -> dict[str, int]:
    """Annotations per task-language key in one split of a pipeline output (from its stats.json)."""
    with wds.gopen(output_path(output, STATS), "rb") as f:
        stats = json.load(f)
    return {key: int(count) for key, count in stats["splits"][split]["annotations"].items()}


# -- batching ------------------------------------------------------------------------------------------
@dataclasses.dataclass
class Example:
    image: torch.Tensor
    annotation: Annotation
    key: str
    position: tuple[int, int, int] = (0, 0, 0)  # (stream, shard draw, index after this sample)


class Collator:
    """Tokenizes a list of Examples: encoder prompts with Florence-2's tokenizer, targets with Gemma-2's,
    right padding, labels masked (-100) on padding and on the decoder prefix when one is used.

    `decoder_start` "bos": the decoder starts from [bos] and is scored on target + eos. "eos_bos", the
    official code's (decoder_start_token_id = eos, labels = the tokenizer's [bos] + target + [eos]; its
    src/eval_loss.py lines 196-207): the decoder starts from [eos] and is scored on bos + target + eos.
    A prefix, when used, is given with everything before it and never scored."""

    def __init__(self, encoder_tokenizer, decoder_tokenizer, max_prompt_tokens: int = 128,
                 max_target_tokens: int = 64, use_prefix: bool = False, decoder_start: str = DECODER_START_BOS):
        if decoder_start not in DECODER_STARTS:
            raise ValueError(f"decoder_start must be one of {DECODER_STARTS}, not {decoder_start!r}")
        self.encoder_tokenizer, self.decoder_tokenizer = encoder_tokenizer, decoder_tokenizer
        self.max_prompt_tokens, self.max_target_tokens, self.use_prefix = (max_prompt_tokens, max_target_tokens,
                                                                           use_prefix)
        self.official_start = decoder_start == DECODER_START_OFFICIAL

    def decoder_start(self, annotation: Annotation) -> list[int]:
        """[bos] (official: [eos, bos]) + the prefix tokens: where generation starts."""
        prefix = decoder_prefix(annotation) if self.use_prefix else ""
        ids = self.decoder_tokenizer(prefix, add_special_tokens=False).input_ids if prefix else []
        lead = [self.decoder_tokenizer.eos_token_id] if self.official_start else []
        return [*lead, self.decoder_tokenizer.bos_token_id, *ids]

    def __call__(self, examples: list[Example]) -> dict[str, Any]:
        prompts = self.encoder_tokenizer([encoder_prompt(e.annotation) for e in examples], padding=True,
                                         truncation=True, max_length=self.max_prompt_tokens, return_tensors="pt")
        sequences, label_starts = [], []
        for example in examples:
            start = self.decoder_start(example.annotation)
            target = self.decoder_tokenizer(example.annotation.target, add_special_tokens=False).input_ids
            sequences.append(start + target[: self.max_target_tokens] + [self.decoder_tokenizer.eos_token_id])
            # scored from after the prefix; from bos itself when the official start has no prefix ([eos, bos])
            given = 1 if self.official_start and len(start) == 2 else len(start)
            label_starts.append(given - 1)
        length = max(len(s) for s in sequences) - 1
        pad = self.decoder_tokenizer.pad_token_id
        decoder_input_ids = torch.full((len(examples), length), pad, dtype=torch.long)
        decoder_attention_mask = torch.zeros((len(examples), length), dtype=torch.long)
        labels = torch.full((len(examples), length), IGNORE_INDEX, dtype=torch.long)
        for row, (sequence, label_start) in enumerate(zip(sequences, label_starts)):
            n = len(sequence) - 1
            decoder_input_ids[row, :n] = torch.tensor(sequence[:-1])
            decoder_attention_mask[row, :n] = 1
            labels[row, label_start:n] = torch.tensor(sequence[1 + label_start:])
        return {"pixel_values": torch.stack([e.image for e in examples]), "input_ids": prompts.input_ids,
                "attention_mask": prompts.attention_mask, "decoder_input_ids": decoder_input_ids,
                "decoder_attention_mask": decoder_attention_mask, "labels": labels,
                "keys": [task_language(e.annotation.task, e.annotation.lang) for e in examples],
                "position": examples[-1].position}


# -- the training stream -------------------------------------------------------------------------------
def shard_samples(url: str) -> Iterator[dict]:
    """The raw samples (bytes, not decoded) of one tar, in order; local paths, gs://, http(s)."""
    yield from wds.tarfile_samples([{"url": url}])


def _shuffled(samples: Iterable[dict], buffer: int, rng: random.Random) -> Iterator[dict]:
    pool: list[dict] = []
    for sample in samples:
        pool.append(sample)
        if len(pool) >= buffer:
            yield pool.pop(rng.randrange(len(pool)))
    while pool:
        yield pool.pop(rng.randrange(len(pool)))


class ResumableShardStream(IterableDataset):
    """Endless training examples from resampled shards; see the module docstring.

    `start` maps a stream id to (shard draw, samples already taken from it); `rotation` is the number of
    batches this rank had consumed, so that after a resume the DataLoader's worker 0 plays the stream
    whose turn it was."""

    def __init__(self, urls: list[str], sampler: AnnotationSampler, transform: ImageTransform, seed: int,
                 rank: int = 0, shuffle_buffer: int = 256, start: Optional[Mapping[int, tuple[int, int]]] = None,
                 rotation: int = 0):
        if not urls:
            raise ValueError("no training shards")
        self.urls, self.sampler, self.transform, self.seed, self.rank = urls, sampler, transform, seed, rank
        self.shuffle_buffer, self.start, self.rotation = shuffle_buffer, dict(start or {}), rotation

    def stream_id(self) -> tuple[int, int]:
        info = get_worker_info()
        workers, worker = (1, 0) if info is None else (info.num_workers, info.id)
        return self.rank * workers + (worker + self.rotation) % workers, workers

    def __iter__(self) -> Iterator[Example]:
        stream, _ = self.stream_id()
        draw, skip = self.start.get(stream, (0, 0))
        while True:
            shard_rng = _rng(self.seed, "shard", stream, draw)
            url = self.urls[shard_rng.randrange(len(self.urls))]
            for index, sample in enumerate(_shuffled(shard_samples(url), self.shuffle_buffer, shard_rng)):
                if index < skip:
                    continue
                _, annotations = decode_sample_json(sample[JSON_EXTENSION])
                annotation = self.sampler.draw(annotations, _rng(self.seed, "annotation", stream, draw, index))
                if annotation is not None:
                    yield Example(self.transform.of_sample(sample), annotation, sample["__key__"],
                                  (stream, draw, index + 1))
            draw, skip = draw + 1, 0


def train_loader(dataset: ResumableShardStream, collator: Collator, batch_size: int, workers: int) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, num_workers=workers, collate_fn=collator,
                      persistent_workers=False, pin_memory=torch.cuda.is_available(),
                      prefetch_factor=2 if workers else None)


# -- evaluation ----------------------------------------------------------------------------------------
def eval_samples(urls: list[str]) -> wds.WebDataset:
    """Every eval image once, in shard order, split across nodes and workers."""
    return wds.WebDataset(urls, shardshuffle=False, nodesplitter=wds.split_by_node,
                          workersplitter=wds.split_by_worker, empty_check=False)


def eval_examples(urls: list[str], transform: ImageTransform, keys_wanted: Optional[set[str]] = None,
                  max_images: Optional[int] = None) -> Iterator[Example]:
    """One Example per (image, annotation) of the eval shards, every annotation included, from the first
    `max_images` images that have one of the keys wanted."""
    images = 0
    for sample in eval_samples(urls):
        if max_images is not None and images >= max_images:
            return
        _, annotations = decode_sample_json(sample[JSON_EXTENSION])
        chosen = [a for a in annotations if keys_wanted is None or task_language(a.task, a.lang) in keys_wanted]
        if chosen:
            images += 1
            image = transform.of_sample(sample)
            for annotation in chosen:
                yield Example(image, annotation, sample["__key__"])


def output_path(output: str, relpath: str) -> str:
    """A file of a pipeline output (schemas/layout.py names them), joined as the pipeline joined it when
    writing: Beam's FileSystems.join, right for local folders, gs:// and s3:// alike."""
    from apache_beam.io.filesystems import FileSystems

    return FileSystems.join(output, relpath)


def shard_urls(output: str, split: str) -> list[str]:
    """The shards of one split of a pipeline output, from its wids index (local path or gs://)."""
    with wds.gopen(output_path(output, index_name(split)), "rb") as f:
        index = json.load(f)
    return [output_path(output, entry.url) for entry in index_entries(index)]
