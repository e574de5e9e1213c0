"""The toy world's metrics, which separate language choice from content (issue 18).

At toy scale a held-out language's caption loss alone misleads (it can rise while the captions get
better), so per caption language, on the eval images:
- `loss` and `loss_shuffled`: the per-sample caption loss with the right images and with every image
  swapped for the next one in its batch; `grounding_gap` = shuffled - right (> 0: the image is used);
- greedy captions, no decoder prefix (the language is the model's choice): `target_language_share`
  (answers the grammar reads as the asked language, transforms/toy_grammar.language_of),
  `chrf` against the exact reference, `attribute_accuracy` (shape, colour, size, position or relation
  read back from the caption as the asked language and compared with the scene the sample key names:
  right content in the right language), and `content_accuracy` (the same, read in whichever language
  the caption is written in: the content alone, whatever language the model chose).
  Content is read this way rather than after a forced target-language decoder prefix: the toy grammar
  has no content-free opening to force (French "Un"/"Une" already names the shape's gender).
References are the grammar's captions of the eval images' scenes, so arms whose plans label different
languages are scored alike.
"""
from __future__ import annotations

import contextlib
import dataclasses
import re
from collections import defaultdict
from pathlib import Path
from statistics import fmean
from typing import Sequence

import sacrebleu
import torch

from model.data import Example, eval_examples, image_transform, shard_urls
from model.eval_loss import batched, eval_collator, sample_losses
from model.evaluate import load_model
from model.factory import load_tokenizers
from model.generate import generate
from model.train_config import TrainConfig
from schemas.records import SPLIT_EVAL, TASK_CAPTION
from schemas.sample import Annotation, task_language
from transforms.toy_grammar import attribute_accuracy, caption, language_of
from transforms.toy_scenes import scene_of_key

_SCENE_KEY = re.compile(r"toy\d+-\d+$")


def scene_of_sample(key: str):
    """The scene behind a sample key (`<source>_toy<seed>-<index>`)."""
    match = _SCENE_KEY.search(key)
    if match is None:
        raise ValueError(f"sample key {key!r} does not name a toy scene")
    return scene_of_key(match.group())


def _caption_examples(config: TrainConfig, languages: Sequence[str], max_images: int) -> dict[str, list[Example]]:
    """Per language, one captioning example per eval image, its target the grammar's caption of the
    image's scene: every arm of the study is scored on the same images and references, whichever
    languages its own plan labelled (the split follows the image content, not the plan)."""
    examples: dict[str, list[Example]] = defaultdict(list)
    seen: set[str] = set()
    for image in eval_examples(shard_urls(config.data.output, SPLIT_EVAL), image_transform(config.data.image_size),
                               {task_language(TASK_CAPTION, "en")}, max_images):
        if image.key in seen:
            continue
        seen.add(image.key)
        scene = scene_of_sample(image.key)
        for lang in languages:
            examples[lang].append(dataclasses.replace(image, annotation=Annotation(TASK_CAPTION, lang, caption(scene, lang))))
    return examples


@torch.no_grad()
def toy_metrics(config: TrainConfig, checkpoint: Path, languages: Sequence[str], max_images: int = 200,
                batch_size: int = 32, max_new_tokens: int = 40) -> dict[str, dict]:
    """Language -> the metrics above, from the checkpoint's model on the run's eval split."""
    model, device = load_model(checkpoint)
    encoder_tokenizer, decoder_tokenizer = load_tokenizers(config.model)
    collator = eval_collator(config, encoder_tokenizer, decoder_tokenizer, use_prefix=False)
    results: dict[str, dict] = {}
    for lang, examples in sorted(_caption_examples(config, languages, max_images).items()):
        right, shuffled, hypotheses = [], [], []
        for batch in batched(examples, batch_size):
            tensors = collator(batch)
            right += sample_losses(model, tensors, device, contextlib.nullcontext)
            if len(batch) > 1:
                swapped = {**tensors, "pixel_values": tensors["pixel_values"].roll(1, dims=0)}
                shuffled += sample_losses(model, swapped, device, contextlib.nullcontext)
            rows = generate(model, tensors["pixel_values"].to(device), tensors["input_ids"].to(device),
                            tensors["attention_mask"].to(device), collator.decoder_start(batch[0].annotation),
                            decoder_tokenizer.eos_token_id, 1, max_new_tokens)
            hypotheses += [decoder_tokenizer.decode(row, skip_special_tokens=True).strip() for row in rows]
        references = [e.annotation.target for e in examples]
        scenes = [scene_of_sample(e.key) for e in examples]
        written = [language_of(h) for h in hypotheses]  # the language each caption is in (None: none of them)
        results[lang] = {
            "images": len(examples), "loss": fmean(right),
            "loss_shuffled": fmean(shuffled) if shuffled else None,
            "grounding_gap": fmean(shuffled) - fmean(right[:len(shuffled)]) if shuffled else None,
            "target_language_share": fmean(w == lang for w in written),
            "chrf": sacrebleu.corpus_chrf(hypotheses, [references]).score,
            "attribute_accuracy": fmean(attribute_accuracy(h, lang, s) for h, s in zip(hypotheses, scenes)),
            "content_accuracy": fmean(attribute_accuracy(h, w, s) if w else 0.0
                                      for h, w, s in zip(hypotheses, written, scenes)),
            "examples": [{"key": e.key, "hypothesis": h, "reference": r}
                         for e, h, r in list(zip(examples, hypotheses, references))[:3]],
        }
    return results

