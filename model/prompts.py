"""Encoder prompts and decoder prefixes, as the paper builds them.

Prompt = a language sentence + a task sentence: "The target language is German. What does the image
describe?" for captioning, "... Translate the following text: {english}" for translation (the image is
context). Zero-shot captioning in a language never captioned in training needs a target-language
decoder prefix ("Das Bild zeigt"): the paper's prefixes, as the official code's evaluation gives them
(spravil/caption-via-translation, src/eval.py lines 728-735, Florence2ModelWrapper.process_batch_captioning).
"""
from __future__ import annotations

from schemas.languages import LANGUAGE_NAMES
from schemas.records import TASK_CAPTION
from schemas.sample import STYLE_CAPTION, STYLE_DETAILED, STYLE_MORE_DETAILED, Annotation

CAPTION_TASK = "What does the image describe?"
# The task sentence per caption style (schemas/sample.py), the paper's code's Florence-2 prompts.
STYLE_TASKS = {
    STYLE_CAPTION: CAPTION_TASK,
    STYLE_DETAILED: "Describe in detail what is shown in the image.",
    STYLE_MORE_DETAILED: "Describe with a paragraph what is shown in the image.",
}
TRANSLATION_TASK = "Translate the following text: {source}"
# How the decoder sequence starts (model/data.py Collator): [bos], or the official code's [eos] then a scored bos
DECODER_START_BOS, DECODER_START_OFFICIAL = "bos", "eos_bos"
DECODER_STARTS = (DECODER_START_BOS, DECODER_START_OFFICIAL)
DECODER_PREFIXES = {
    "en": "The image shows", "de": "Das Bild zeigt", "fr": "La photo montre", "es": "La imagen muestra",
    "ru": "На картинке изображен", "zh": "图为",
}


def encoder_prompt(annotation: Annotation) -> str:
    language = f"The target language is {LANGUAGE_NAMES[annotation.lang]}."
    if annotation.task == TASK_CAPTION:
        return f"{language} {STYLE_TASKS[annotation.caption_style]}"
    return f"{language} {TRANSLATION_TASK.format(source=annotation.source)}"


def decoder_prefix(annotation: Annotation) -> str:
    """The target-language prefix for captions ("" for translations, and for languages without one)."""
    return DECODER_PREFIXES.get(annotation.lang, "") if annotation.task == TASK_CAPTION else ""
