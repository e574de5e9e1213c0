"""CoMMuTE-style contrastive disambiguation: does the image make the model prefer the right translation?

Each item is an image, an ambiguous English source ("He finally made it to the bank.") and two
translations, the correct one for this image and the one for the other reading. The model is scored on
both as a translation target (the translation prompt, the image as context); an item counts as right
when the correct translation's per-sample mean cross-entropy is strictly lower. As the official code
(spravil/caption-via-translation, src/eval.py: Florence2ModelWrapper.get_perplexity lines 834-884,
eval_lexical_ambiguity_commute lines 1967-1997), which compares exp(mean cross-entropy), the same order,
and reports the share in percent.

Input: JSONL, one object per line with `image` (a path, relative ones against the file's folder),
`source`, `correct`, `incorrect` and `lang` (the translation's language code). CoMMuTE's own layout
(`en-xx/{img.order, src.en, correct.xx, incorrect.xx}` and an images folder) converts to it with
`python -m model.contrastive CoMMuTE/en-de --images CoMMuTE/images --out commute-de.jsonl`.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Optional

import torch
from PIL import Image

from model.data import Collator, Example
from model.eval_loss import batched, sample_losses
from schemas.languages import LANGUAGE_NAMES
from schemas.records import TASK_TRANSLATION
from schemas.sample import Annotation
from transforms.image_pixels import to_rgb

FIELDS = ("image", "source", "correct", "incorrect", "lang")


@dataclasses.dataclass(frozen=True)
class ContrastiveItem:
    image: Path
    source: str
    correct: str
    incorrect: str
    lang: str


class ContrastiveInputError(ValueError):
    """A line of the JSONL that cannot be used, named by file and line."""


def read_items(path: str | Path) -> list[ContrastiveItem]:
    """The items of a JSONL file; a line that is not an object with the five string fields, names an
    unknown language or a missing image is refused naming the file, line and field."""
    path = Path(path)
    items = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        where = f"{path}:{number}"
        try:
            row = json.loads(line)
        except json.JSONDecodeError as error:
            raise ContrastiveInputError(f"{where}: not JSON ({error.msg})") from None
        if not isinstance(row, dict):
            raise ContrastiveInputError(f"{where}: must be a JSON object with {', '.join(FIELDS)}")
        for field in FIELDS:
            if not isinstance(row.get(field), str) or not row[field].strip():
                raise ContrastiveInputError(f"{where}: {field} must be a non-empty string")
        if row["lang"] not in LANGUAGE_NAMES:
            raise ContrastiveInputError(f"{where}: lang {row['lang']!r} is not a supported language code")
        image = path.parent / row["image"]
        if not image.is_file():
            raise ContrastiveInputError(f"{where}: image {image} does not exist")
        items.append(ContrastiveItem(image, row["source"], row["correct"], row["incorrect"], row["lang"]))
    if not items:
        raise ContrastiveInputError(f"{path}: no items")
    return items


def _example(item: ContrastiveItem, image: torch.Tensor, target: str) -> Example:
    return Example(image, Annotation(TASK_TRANSLATION, item.lang, target, item.source), str(item.image))


@torch.no_grad()
def contrastive_accuracy(model, items: list[ContrastiveItem], transform: Callable, collator: Collator,
                         batch_size: int, device: torch.device, autocast) -> dict:
    """Accuracy (percent) and each item's two losses; the correct and incorrect targets of a batch's
    items are scored in one forward pass."""
    was_training = model.training
    model.eval()
    scored = []
    for batch in batched(items, batch_size):
        images = [transform(to_rgb(Image.open(item.image))) for item in batch]
        examples = ([_example(i, x, i.correct) for i, x in zip(batch, images)]
                    + [_example(i, x, i.incorrect) for i, x in zip(batch, images)])
        losses = sample_losses(model, collator(examples), device, autocast)
        scored += [{"image": str(i.image), "source": i.source, "loss_correct": c, "loss_incorrect": w,
                    "right": c < w}
                   for i, c, w in zip(batch, losses[: len(batch)], losses[len(batch):])]
    model.train(was_training)
    return {"n": len(scored), "accuracy": 100 * sum(s["right"] for s in scored) / len(scored), "items": scored}


def commute_rows(pair: Path, images: Path) -> list[dict[str, str]]:
    """The JSONL rows of one CoMMuTE language pair folder (`en-de`): line i of img.order, src.en,
    correct.de and incorrect.de is item i; images are named as in img.order inside `images`."""
    lang = pair.name.split("-", 1)[1].split("_", 1)[0]  # en-fr_dev: the dev set of French
    columns = {name: (pair / file).read_text(encoding="utf-8").splitlines()
               for name, file in (("image", "img.order"), ("source", "src.en"), ("correct", f"correct.{lang}"),
                                  ("incorrect", f"incorrect.{lang}"))}
    if len({len(lines) for lines in columns.values()}) != 1:
        raise ContrastiveInputError(f"{pair}: img.order, src.en, correct.{lang} and incorrect.{lang} differ in length")
    return [{"image": str(images / image), "source": source, "correct": correct, "incorrect": incorrect,
             "lang": lang} for image, source, correct, incorrect in zip(*columns.values())]


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m model.contrastive",
                                     description="Convert a CoMMuTE language pair folder to the JSONL florenz-eval "
                                                 "--contrastive reads.")
    parser.add_argument("pair", type=Path, help="a CoMMuTE folder such as CoMMuTE/en-de")
    parser.add_argument("--images", type=Path, required=True, help="CoMMuTE's images folder")
    parser.add_argument("--out", type=Path, required=True, help="the JSONL to write")
    args = parser.parse_args(argv)
    try:
        rows = commute_rows(args.pair, Path(os.path.abspath(args.images)))
    except (ContrastiveInputError, OSError) as error:
        print(f"contrastive input error: {error}", file=sys.stderr)
        return 2
    args.out.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    print(f"{len(rows)} items -> {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
