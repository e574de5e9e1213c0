"""Checks on every VLM description: build the description the paper keeps (the answer prefix, then
the model's words), cut an answer that hit max_tokens back to its last whole sentence, and reject
what is no usable English description, with a reason.

Pure functions, no Beam. The reasons, in the order they are checked: empty, too_long, copy_of_prompt,
too_short, wrong_language, repetition. Cheap before costly: the length bound before language ID and the
repetition checks. Language ID and the repetition measures are the translation checks' own
(transforms/translation_checks.py): both detectors must object to call a text not English.

A truncated answer (finish_reason "length") keeps everything up to its last sentence end (. ! ?) after
the prefix; one with no sentence end at all is kept whole (`truncated` tells which happened).
"""
from __future__ import annotations

import dataclasses
import re
import zlib
from typing import Optional

from schemas.config import DescriptionChecks
from schemas.descriptions import DESCRIPTION_LANG
from schemas.recaption_prompts import DescriptionTemplate
from schemas.records import normalize_text
from transforms.translation_checks import CheckRules, comparable, language_rules, repeats, wrong_language

# Part of every stored row and of every part's name: bump it when a check changes what is accepted.
CHECKS_VERSION = 1
CHECKS_TAG = f"description-{CHECKS_VERSION}"  # in batch names (translate_batches.batch_name)

EMPTY = "empty"
TOO_LONG = "too_long"
COPY_OF_PROMPT = "copy_of_prompt"
TOO_SHORT = "too_short"
WRONG_LANGUAGE = "wrong_language"
REPETITION = "repetition"
REASONS = (EMPTY, TOO_LONG, COPY_OF_PROMPT, TOO_SHORT, WRONG_LANGUAGE, REPETITION)

_SENTENCE_END = re.compile(r"[.!?](?=[\"')\]]*(\s|$))")
_RULES = CheckRules()  # detection thresholds calibrated for the translation checks


@dataclasses.dataclass(frozen=True)
class DescriptionCheck:
    description: Optional[str]  # when accepted
    reason: Optional[str]  # one of REASONS, when rejected
    truncated: str = ""  # "cut": cut back to its last whole sentence; "kept": truncated with none to cut to


def whole_sentences(text: str, keep_before: int = 0) -> tuple[str, bool]:
    """`text` up to its last sentence end at or after `keep_before` (the prefix's length), and
    whether there was one; the text itself when there is none."""
    ends = [m.end() for m in _SENTENCE_END.finditer(text) if m.start() >= keep_before]
    return (text[:ends[-1]], True) if ends else (text, False)


def check_description(answer: str, finish_reason: Optional[str], template: DescriptionTemplate,
                      checks: DescriptionChecks, caption: Optional[str] = None) -> DescriptionCheck:
    """Accept (the description) or reject (reason) one answer to `template`'s request."""
    words = normalize_text(answer)
    if not words:
        return DescriptionCheck(None, EMPTY)
    description = normalize_text(template.description(answer))
    truncated = ""
    if finish_reason == "length":
        description, cut = whole_sentences(description, len(template.answer_prefix))
        truncated = "cut" if cut else "kept"
    if len(description) > checks.max_chars:
        return DescriptionCheck(None, TOO_LONG, truncated)
    prompt = comparable(template.prompt_text(caption))
    if prompt and (prompt in comparable(words) or comparable(words) in prompt):
        return DescriptionCheck(None, COPY_OF_PROMPT, truncated)
    if len(description.split()) < checks.min_words:
        return DescriptionCheck(None, TOO_SHORT, truncated)
    if len(description) >= _RULES.detect_min_chars and wrong_language(description, language_rules(DESCRIPTION_LANG)):
        return DescriptionCheck(None, WRONG_LANGUAGE, truncated)
    data = description.encode("utf-8")
    compressible = len(description) >= _RULES.repetition_min_chars and \
        len(data) / len(zlib.compress(data)) > checks.max_compression_ratio
    if compressible or repeats(description, checks.max_consecutive_repeats):
        return DescriptionCheck(None, REPETITION, truncated)
    return DescriptionCheck(description, None, truncated)
