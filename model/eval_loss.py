"""Eval cross-entropy per test set on the eval shards: seen captioning, seen translation and unseen
captioning (the held-out languages), the quantities the scaling laws are fitted to."""
from __future__ import annotations

import itertools
from collections import defaultdict
from collections.abc import Iterable, Iterator

import torch
import webdataset as wds
import yaml

from model.data import Collator, Example, eval_examples, output_path, shard_urls
from schemas.coverage import CoveragePlan
from schemas.layout import CONFIG_COPY
from schemas.records import SPLIT_EVAL, TASK_CAPTION, TASK_TRANSLATION
from schemas.sample import task_language

SEEN_CAPTION, SEEN_TRANSLATION, UNSEEN_CAPTION = "seen_caption", "seen_translation", "unseen_caption"


def output_plan(output: str) -> CoveragePlan:
    """The coverage plan a pipeline output was built with (its resolved config.yaml)."""
    with wds.gopen(output_path(output, CONFIG_COPY), "rb") as f:
        return CoveragePlan.from_dict(yaml.safe_load(f)["plan"])


def test_sets(plan: CoveragePlan) -> dict[str, set[str]]:
    """Test set name -> its task-language keys."""
    return {
        SEEN_CAPTION: {task_language(TASK_CAPTION, lang) for lang in plan.caption_languages},
        SEEN_TRANSLATION: {task_language(TASK_TRANSLATION, lang) for lang in plan.translation_languages},
        UNSEEN_CAPTION: {task_language(TASK_CAPTION, lang) for lang in plan.held_out_caption_languages},
    }


def batched(examples: Iterable[Example], size: int) -> Iterator[list[Example]]:
    iterator = iter(examples)
    while batch := list(itertools.islice(iterator, size)):
        yield batch


@torch.no_grad()
def evaluate_loss(model, output: str, transform, collator: Collator, batch_size: int, max_images: int,
                  device: torch.device, autocast) -> dict[str, float]:
    """Mean token cross-entropy per test set and per task-language key ("loss/<set>", "loss/<key>")."""
    urls = shard_urls(output, SPLIT_EVAL)
    if not urls:  # an output built without an eval split
        return {}
    sets = test_sets(output_plan(output))
    wanted = set().union(*sets.values())
    totals: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
    examples = eval_examples(urls, transform, wanted, max_images)
    was_training = model.training
    model.eval()
    for batch in batched(examples, batch_size):
        tensors = collator(batch)
        inputs = {k: v.to(device) for k, v in tensors.items() if isinstance(v, torch.Tensor)}
        with autocast():
            losses, tokens = model.token_losses(**inputs)
        for key, loss, count in zip(tensors["keys"], losses.tolist(), tokens.tolist()):
            totals[key][0] += loss
            totals[key][1] += count
    model.train(was_training)
    if torch.distributed.is_initialized():  # every process read its own part of the eval shards
        gathered: list = [None] * torch.distributed.get_world_size()
        torch.distributed.all_gather_object(gathered, dict(totals))
        totals = defaultdict(lambda: [0.0, 0.0])
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
