"""florenz-eval CONFIG: generate on the eval shards and score every task × language.

Translation: BLEU and chrF (sacrebleu; the "zh" tokenizer for Chinese) against the stored translation.
Captioning: CIDEr-D (pycocoevalcap's scorer) against all of the image's captions in that language, with
a light tokenization (lower case, punctuation removed; characters for Chinese) instead of the Java PTB
tokenizer. Held-out caption languages are scored like the others: that is the unseen-pair result.
Writes a results JSON (per key, and per test set: the config's eval.test_sets, by default seen/unseen
captioning and seen translation). Captions start with the language's prefix when eval.generate_prefix
(or --prefix) says so, as the official evaluation's --use_prefix.

--contrastive FILE.jsonl instead measures CoMMuTE-style disambiguation accuracy (model/contrastive.py).
"""
from __future__ import annotations

import argparse
import contextlib
import json
import re
import sys
from collections import defaultdict
from pathlib import Path
from typing import Optional

import sacrebleu
import torch
from pycocoevalcap.cider.cider import Cider

from model.checkpoint import CheckpointError, latest_checkpoint
from model.data import Example, eval_examples, image_transform, shard_urls
from model.contrastive import ContrastiveInputError, contrastive_accuracy, read_items
from model.eval_loss import batched, eval_collator, output_plan, test_sets
from model.generate import generate
from model.modeling import FlorenzModel
from model.factory import load_tokenizers
from model.train_config import TrainConfig, load_train_config
from schemas.errors import ConfigError
from schemas.records import SPLIT_EVAL, TASK_CAPTION
from schemas.sample import STYLE_CAPTION, task_language

_PUNCTUATION = re.compile(r"[^\w\s]", re.UNICODE)


def caption_tokens(text: str, lang: str) -> str:
    text = _PUNCTUATION.sub(" ", text.lower())
    return " ".join(text.replace(" ", "")) if lang in ("zh", "ja") else " ".join(text.split())


def score_key(task: str, lang: str, hypotheses: dict[str, str], references: dict[str, list[str]]) -> dict:
    ids = sorted(hypotheses)
    if task == TASK_CAPTION:
        gts = {i: [caption_tokens(r, lang) for r in references[i]] for i in ids}
        res = {i: [caption_tokens(hypotheses[i], lang)] for i in ids}
        cider, _ = Cider().compute_score(gts, res)
        return {"n": len(ids), "cider": 100 * float(cider)}
    hyps = [hypotheses[i] for i in ids]
    refs = [[references[i][0] for i in ids]]
    bleu = sacrebleu.corpus_bleu(hyps, refs, tokenize="zh" if lang == "zh" else "13a")
    return {"n": len(ids), "bleu": bleu.score, "chrf": sacrebleu.corpus_chrf(hyps, refs).score}


def _item(example: Example) -> str:
    """What one hypothesis is scored as: an image's caption in one style (a `<CAPTION>` is named by the
    image alone, as before styles), or the translation of one source text."""
    annotation = example.annotation
    if annotation.task != TASK_CAPTION:
        return f"{example.key}|{annotation.source}"
    return example.key if annotation.caption_style == STYLE_CAPTION else f"{example.key}|{annotation.style}"


def load_model(checkpoint: Path) -> tuple[FlorenzModel, torch.device]:
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return FlorenzModel.from_pretrained(checkpoint / "model", device=device).eval(), device


def evaluate(config: TrainConfig, checkpoint: Path, num_beams: int, use_prefix: bool, max_images: int,
             max_new_tokens: int, batch_size: int) -> dict:
    model, device = load_model(checkpoint)
    encoder_tokenizer, decoder_tokenizer = load_tokenizers(config.model)
    collator = eval_collator(config, encoder_tokenizer, decoder_tokenizer, use_prefix)
    sets = test_sets(output_plan(config.data.output), config.eval.test_sets)
    # One hypothesis per (image, key, caption style): the first annotation of that item is the input;
    # all of the item's are references, so a detailed caption is scored against detailed references.
    inputs: dict[str, list[Example]] = defaultdict(list)
    references: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    seen: set[tuple[str, str]] = set()
    for example in eval_examples(shard_urls(config.data.output, SPLIT_EVAL), image_transform(config.data.image_size),
                                 set().union(*sets.values()), max_images):
        key = task_language(example.annotation.task, example.annotation.lang)
        item = _item(example)
        references[key][item].append(example.annotation.target)
        if (key, item) not in seen:
            seen.add((key, item))
            inputs[key].append(example)
    results: dict = {"checkpoint": str(checkpoint), "beams": num_beams, "decoder_prefix": use_prefix, "keys": {}}
    for key, examples in sorted(inputs.items()):
        hypotheses = {}
        for batch in batched(examples, batch_size):
            tensors = collator(batch)
            rows = generate(model, tensors["pixel_values"].to(device), tensors["input_ids"].to(device),
                            tensors["attention_mask"].to(device), collator.decoder_start(batch[0].annotation),
                            decoder_tokenizer.eos_token_id, num_beams, max_new_tokens)
            for example, row in zip(batch, rows):
                hypotheses[_item(example)] = decoder_tokenizer.decode(row, skip_special_tokens=True).strip()
        task, lang = key.split("-", 1)
        results["keys"][key] = {**score_key(task, lang, hypotheses, references[key]),
                                "examples": [{"id": i, "hypothesis": h, "references": references[key][i]}
                                             for i, h in sorted(hypotheses.items())[:3]]}
    for name, keys in sets.items():
        scored = [results["keys"][k] for k in keys if k in results["keys"]]
        metric = "cider" if next(iter(keys)).startswith(TASK_CAPTION) else "bleu"
        if scored:
            results[name] = {metric: sum(s[metric] for s in scored) / len(scored),
                             "keys": sorted(k for k in keys if k in results["keys"])}
    return results


def evaluate_contrastive(config: TrainConfig, checkpoint: Path, items_path: str, batch_size: int) -> dict:
    """Contrastive disambiguation accuracy of a checkpoint on a JSONL of items (model/contrastive.py)."""
    items = read_items(items_path)
    model, device = load_model(checkpoint)
    collator = eval_collator(config, *load_tokenizers(config.model), use_prefix=False)
    result = contrastive_accuracy(model, items, image_transform(config.data.image_size), collator, batch_size, device,
                                  contextlib.nullcontext)
    return {"checkpoint": str(checkpoint), "items": items_path, "contrastive": result}


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="florenz-eval", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="the run's training config")
    parser.add_argument("--checkpoint", default=None, help="a checkpoint folder (default: the run's latest)")
    parser.add_argument("--beams", type=int, default=1, help="1: greedy")
    parser.add_argument("--prefix", action=argparse.BooleanOptionalAction, default=None,
                        help="start captions with the language's prefix (default: the config's eval.generate_prefix)")
    parser.add_argument("--max-images", type=int, default=None)
    parser.add_argument("--max-new-tokens", type=int, default=128, help="the official evaluation's 128")
    parser.add_argument("--contrastive", default=None, metavar="JSONL",
                        help="measure contrastive disambiguation accuracy on these items instead of generating")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--results", default=None, help="results JSON (default: RUN/eval-<step>.json)")
    args = parser.parse_args(argv)
    try:
        config = load_train_config(args.config)
    except ConfigError as error:  # one line naming the field, as florenz-data's
        print(f"config error: {error}", file=sys.stderr)
        return 2
    try:
        checkpoint = (Path(args.checkpoint) if args.checkpoint
                      else latest_checkpoint(Path(config.run.out, "checkpoints")))
        if checkpoint is None:
            parser.error(f"no checkpoint in {config.run.out}/checkpoints")
        if args.contrastive:
            results = evaluate_contrastive(config, checkpoint, args.contrastive, args.batch_size)
        else:
            prefix = config.eval.generate_prefix if args.prefix is None else args.prefix
            results = evaluate(config, checkpoint, args.beams, prefix, args.max_images, args.max_new_tokens,
                               args.batch_size)
    except CheckpointError as error:  # a checkpoint or `latest` pointer that cannot be loaded
        print(f"checkpoint error: {error}", file=sys.stderr)
        return 2
    except ConfigError as error:  # a setting the data contradicts (eval.test_sets naming a key it lacks)
        print(f"config error: {error}", file=sys.stderr)
        return 2
    except ContrastiveInputError as error:
        print(f"contrastive input error: {error}", file=sys.stderr)
        return 2
    name = "contrastive" if args.contrastive else "eval"
    path = Path(args.results or Path(config.run.out, f"{name}-{checkpoint.name}.json"))
    path.write_text(json.dumps(results, indent=2, ensure_ascii=False, sort_keys=True))
    summary = results["contrastive"] if args.contrastive else results
    print(json.dumps({k: v for k, v in summary.items() if k not in ("keys", "items")}, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
