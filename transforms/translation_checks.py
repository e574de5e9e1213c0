"""Checks on every LLM translation of an English caption: clean the answer, then reject what is not
a one-line translation into the right language.

Pure functions, no Beam: the translator calls them per output, and eval-translator reports their
reasons. The reasons, in the order they are checked: empty, multiple_lines, copy_of_source,
wrong_script, length_ratio, wrong_language, repetition. Cheap before costly: an answer far longer than
the length bound allows (the bound plus `output_slack_chars` for preambles, quotes and notes) is
rejected as length_ratio before it is even cleaned, and the length bound is checked before language
detection (langdetect takes seconds on a megabyte) and the repetition checks, so what a server
answers costs at most linear time in the source's length.
"""
from __future__ import annotations

import dataclasses
import re
import unicodedata
import zlib
from typing import Mapping, Optional

from langdetect import DetectorFactory, LangDetectException, detect_langs

from schemas.records import normalize_text

# Part of every stored row (see transforms/translation_store.py): bump it whenever a check or a
# threshold changes what is accepted, so that `florenz-data recheck` re-judges the store under it.
CHECKS_VERSION = 1

DetectorFactory.seed = 0  # langdetect is random without it; we need the same verdict every run

EMPTY = "empty"
MULTIPLE_LINES = "multiple_lines"
COPY_OF_SOURCE = "copy_of_source"
WRONG_SCRIPT = "wrong_script"
WRONG_LANGUAGE = "wrong_language"
LENGTH_RATIO = "length_ratio"
REPETITION = "repetition"
REASONS = (EMPTY, MULTIPLE_LINES, COPY_OF_SOURCE, WRONG_SCRIPT, LENGTH_RATIO, WRONG_LANGUAGE, REPETITION)

# Preambles instruction-tuned models put before the answer; matched at the start only.
_PREAMBLES = [re.compile(p, re.IGNORECASE) for p in (
    r"^(sure|certainly|of course|okay|ok)[!,.]?\s*",
    r"^here(?: is|'s| are) (?:the |a |my )?(?:\w+ )?translations?(?: \w+)*\s*[:：]\s*",
    r"^(?:\w+ )?translation(?: into \w+)?\s*[:：]\s*",
    r"^(?:voici la traduction|traduction)\s*[:：]\s*",
    r"^(?:hier ist die übersetzung|übersetzung)\s*[:：]\s*",
    r"^(?:aquí está la traducción|traducción)\s*[:：]\s*",
    r"^(?:вот перевод|перевод)\s*[:：]\s*",
    r"^(?:翻译|译文)\s*[:：]\s*",
)]
_QUOTES = {'"': '"', "'": "'", "“": "”", "„": "“", "«": "»", "‹": "›", "「": "」", "『": "』", "”": "”", "‚": "‘"}
# No leading \s*: re.sub would retry it at every space of a long run (quadratic); rstrip() instead.
_TRAILING_NOTE = re.compile(r"\((?:note|remarque|hinweis|nota|примечание)\b[^)]*\)\s*$", re.IGNORECASE)

# Unicode script each target language must be written in (by unicodedata name prefix).
_SCRIPTS = {"zh": ("CJK",), "ja": ("CJK", "HIRAGANA", "KATAKANA"), "ko": ("HANGUL",),
            "ru": ("CYRILLIC",), "uk": ("CYRILLIC",), "bg": ("CYRILLIC",), "sr": ("CYRILLIC",),
            "ar": ("ARABIC",), "fa": ("ARABIC",), "hi": ("DEVANAGARI",), "el": ("GREEK",),
            "he": ("HEBREW",), "th": ("THAI",)}
_LATIN = ("LATIN",)

# Languages langdetect confuses on caption-length text: a verdict for a sibling is no evidence.
_SIBLINGS = [frozenset(g) for g in ({"cs", "sk", "hr", "sr", "bs", "sl"}, {"no", "nb", "nn", "da", "sv"},
                                    {"es", "ca", "gl", "pt"}, {"id", "ms", "tl"}, {"nl", "af"})]


def _siblings(a: str, b: str) -> bool:
    return any(a in group and b in group for group in _SIBLINGS)


@dataclasses.dataclass(frozen=True)
class CheckRules:
    """Thresholds; defaults calibrated on Multi30K human references (see tests)."""

    min_script_share: float = 0.8  # letters in the target's script
    detect_min_chars: int = 25  # below this, langdetect is too unreliable to overrule
    wrong_language_prob: float = 0.9  # another language this sure, and ...
    target_language_max_prob: float = 0.05  # ... the target this unlikely: reject
    # target/source character-length ratio bounds
    length_ratio: Mapping[str, tuple[float, float]] = dataclasses.field(default_factory=lambda: {
        "zh": (0.08, 1.0), "ja": (0.1, 1.2), "ko": (0.12, 1.3)})
    default_length_ratio: tuple[float, float] = (0.3, 2.6)
    # what an answer may carry beyond the upper length bound before cleaning (preamble, quotes, a note)
    output_slack_chars: int = 500
    repetition_min_chars: int = 30
    max_compression_ratio: float = 2.6  # zlib: a repetition loop compresses far better than prose
    max_consecutive_repeats: int = 3  # the same word n-gram this many times in a row


@dataclasses.dataclass(frozen=True)
class CheckResult:
    text: Optional[str]  # the cleaned translation, when accepted
    reason: Optional[str]  # one of REASONS, when rejected


def clean_translation(output: str) -> str:
    """Strip preambles, wrapping quotes and trailing notes; keep inner newlines for the line check."""
    text = output.strip()
    changed = True
    while changed and text:
        changed = False
        for preamble in _PREAMBLES:
            stripped = preamble.sub("", text, count=1).strip()
            if stripped != text and stripped:
                text, changed = stripped, True
        note = _TRAILING_NOTE.search(text) if text.endswith(")") else None
        if note:
            text = text[:note.start()].strip()
        if len(text) >= 2 and _QUOTES.get(text[0]) == text[-1]:
            text, changed = text[1:-1].strip(), True
    return text


def _comparable(text: str) -> str:
    return "".join(ch for ch in text.lower() if ch.isalnum())


def _script_share(text: str, scripts: tuple[str, ...]) -> float:
    letters = [ch for ch in text if ch.isalpha()]
    if not letters:
        return 0.0
    inside = sum(1 for ch in letters if unicodedata.name(ch, "").startswith(scripts))
    return inside / len(letters)


def _langdetect(text: str) -> dict[str, float]:
    try:
        return {(l.lang.split("-")[0]): l.prob for l in detect_langs(text)}
    except LangDetectException:
        return {}


def _repeats(text: str, limit: int) -> bool:
    """A word n-gram (n = 1..4) repeated `limit` times in a row: the classic decoding loop."""
    words = text.lower().split()
    for n in range(1, 5):
        for start in range(0, len(words) - n * limit + 1):
            gram = words[start:start + n]
            if all(words[start + k * n:start + (k + 1) * n] == gram for k in range(1, limit)):
                return True
    return False


def check_translation(source: str, output: str, lang: str, rules: CheckRules = CheckRules()) -> CheckResult:
    """Accept (cleaned text) or reject (reason) one translation of `source` into `lang`."""
    low, high = rules.length_ratio.get(lang, rules.default_length_ratio)
    if len(output) > high * max(1, len(source)) + rules.output_slack_chars:
        return CheckResult(None, LENGTH_RATIO)  # before cleaning: cleaning and detection cost grows with it
    text = clean_translation(output)
    if not normalize_text(text):
        return CheckResult(None, EMPTY)
    if "\n" in text or "\r" in text:
        return CheckResult(None, MULTIPLE_LINES)
    text = normalize_text(text)
    if _comparable(text) == _comparable(source):
        return CheckResult(None, COPY_OF_SOURCE)
    if _script_share(text, _SCRIPTS.get(lang, _LATIN)) < rules.min_script_share:
        return CheckResult(None, WRONG_SCRIPT)
    if not low <= len(text) / max(1, len(source)) <= high:
        return CheckResult(None, LENGTH_RATIO)
    if len(text) >= rules.detect_min_chars:
        probs = _langdetect(text)
        top = max(probs, key=probs.get) if probs else lang
        if (top != lang and not _siblings(top, lang) and probs[top] >= rules.wrong_language_prob
                and probs.get(lang, 0.0) <= rules.target_language_max_prob):
            return CheckResult(None, WRONG_LANGUAGE)
    compressible = len(text) >= rules.repetition_min_chars and \
        len(text.encode("utf-8")) / len(zlib.compress(text.encode("utf-8"))) > rules.max_compression_ratio
    if compressible or _repeats(text, rules.max_consecutive_repeats):
        return CheckResult(None, REPETITION)
    return CheckResult(text, None)
