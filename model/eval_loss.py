"""Eval cross-entropy per test set on the eval shards, the quantities the scaling laws are fitted to.

Averaged as the paper does (spravil/caption-via-translation, src/eval_loss.py lines 221-234 and
summarize_results, lines 238-266): each sample's loss is the mean over its scored tokens, a key's loss the
mean over its samples, and a test set's loss the mean over all samples of its keys (the per-key means
weighted by their sample counts), so a long caption counts as much as a short one.
"""
from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Iterable, Iterator, Mapping
from typing import Optional

import torch
import webdataset as wds
import yaml

from model.data import Collator, Example, eval_examples, output_path, shard_urls
from model.train_config import TestSet, TrainConfig
from schemas.coverage import CoveragePlan
from schemas.errors import ConfigError
from schemas.layout import CONFIG_COPY
from schemas.records import SPLIT_EVAL, TASK_CAPTION, TASK_TRANSLATION
from schemas.sample import task_language

SEEN_CAPTION, SEEN_TRANSLATION, UNSEEN_CAPTION = "seen_caption", "seen_translation", "unseen_caption"


def output_plan(output: str) -> CoveragePlan:
    """The coverage plan a pipeline output was built with (its resolved config.yaml)."""
    with wds.gopen(output_path(output, CONFIG_COPY), "rb") as f:
        return CoveragePlan.from_dict(yaml.safe_load(f)["plan"])


def test_sets(plan: CoveragePlan, configured: Optional[Mapping[str, TestSet]] = None) -> dict[str, set[str]]:
    """Test set name -> its task-language keys: the configured sets (`eval.test_sets`), or by default
    every seen caption, seen translation and held-out caption language of the plan. A configured key the
    plan never puts in the eval split is refused naming the field, so a typo cannot give an empty set."""
    derived = {
        SEEN_CAPTION: {task_language(TASK_CAPTION, lang) for lang in plan.caption_languages},
        SEEN_TRANSLATION: {task_language(TASK_TRANSLATION, lang) for lang in plan.translation_languages},
        UNSEEN_CAPTION: {task_language(TASK_CAPTION, lang) for lang in plan.held_out_caption_languages},
    }
    if configured is None:
        return derived
    available = set().union(*derived.values())
    sets = {}
    for name, test_set in configured.items():
        keys = {task_language(test_set.task, lang) for lang in test_set.languages}
        if missing := sorted(keys - available):
            raise ConfigError(f"train.eval.test_sets.{name}.languages", f"{', '.join(missing)} not in the data's "
                              f"eval split (it has {', '.join(sorted(available))})")
        sets[name] = keys
    return sets


def eval_collator(config: TrainConfig, encoder_tokenizer, decoder_tokenizer, use_prefix: bool) -> Collator:
    """The collator evaluation scores or generates with: the run's decoder start, the eval target length."""
    return Collator(encoder_tokenizer, decoder_tokenizer, config.data.max_prompt_tokens, config.eval.max_target_tokens,
                    use_prefix, config.data.decoder_start)


def batched(examples: Iterable[Example], size: int) -> Iterator[list[Example]]:
    iterator = iter(examples)
    while batch := list(itertools.islice(iterator, size)):
        yield batch


def sample_losses(model, tensors: dict, device: torch.device, autocast) -> list[float]:
    """Each sample's mean cross-entropy over its scored tokens (the paper's per-sample loss)."""
    inputs = {k: v.to(device) for k, v in tensors.items() if isinstance(v, torch.Tensor)}
    with autocast():
        losses, tokens = model.token_losses(**inputs)
    return (losses / tokens.clamp(min=1)).tolist()


@torch.no_grad()
def evaluate_loss(model, output: str, transform, collator: Collator, batch_size: int, max_images: int,
                  device: torch.device, autocast, configured: Optional[Mapping[str, TestSet]] = None
                  ) -> dict[str, float]:
    """Per-sample mean cross-entropy averaged per test set and per task-language key ("loss/<set>",
    "loss/<key>"); `configured`: the config's eval.test_sets (None: from the data's plan)."""
    urls = shard_urls(output, SPLIT_EVAL)
    if not urls:  # an output built without an eval split
        return {}
    sets = test_sets(output_plan(output), configured)
    totals: dict[str, list[float]] = defaultdict(lambda: [0.0, 0])  # key -> [sum of sample losses, samples]
    was_training = model.training
    model.eval()
    for batch in batched(eval_examples(urls, transform, set().union(*sets.values()), max_images), batch_size):
        tensors = collator(batch)
        for key, loss in zip(tensors["keys"], sample_losses(model, tensors, device, autocast)):
            totals[key][0] += loss
            totals[key][1] += 1
    model.train(was_training)
    if torch.distributed.is_initialized():  # every process read its own part of the eval shards
        gathered: list = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(gathered, dict(totals))
        totals = defaultdict(lambda: [0.0, 0])
        for part in gathered:
            for key, (loss, count) in part.items():
                totals[key][0] += loss
                totals[key][1] += count
    result = {f"loss/{key}": loss / count for key, (loss, count) in sorted(totals.items()) if count}
    for name, keys in sets.items():
        loss = sum(totals[k][0] for k in keys if k in totals)
        count = sum(totals[k][1] for k in keys if k in totals)
        if count:
            result[f"loss/{name}"] = loss / count
    return result
