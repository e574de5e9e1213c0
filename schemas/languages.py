"""ISO 639-1 codes, and the one table of what the project knows about each target language.

A language is usable in a plan only with complete rules: the English name the prompts use, the
Unicode script(s) its text is written in, the bounds of a translation's length relative to the
English source, and the codes both language detectors answer for it (transforms/translation_checks.py
reads nothing about a language from anywhere else), and the sentence rules that split its captions
into styles (transforms/caption_styles.py). Standard library only, on purpose: the tiny test
translator's environment imports this module through schemas/prompts.py.
"""
from __future__ import annotations

import dataclasses
from typing import Mapping, Optional

ISO_639_1 = frozenset(
    """aa ab ae af ak am an ar as av ay az ba be bg bh bi bm bn bo br bs ca ce ch co cr cs cu cv cy
    da de dv dz ee el en eo es et eu fa ff fi fj fo fr fy ga gd gl gn gu gv ha he hi ho hr ht hu hy
    hz ia id ie ig ii ik io is it iu ja jv ka kg ki kj kk kl km kn ko kr ks ku kv kw ky la lb lg li
    ln lo lt lu lv mg mh mi mk ml mn mr ms mt my na nb nd ne ng nl nn no nr nv ny oc oj om or os pa
    pi pl ps pt qu rm rn ro ru rw sa sc sd se sg si sk sl sm sn so sq sr ss st su sv sw ta te tg th
    ti tk tl tn to tr ts tt tw ty ug uk ur uz ve vi vo wa wo xh yi yo za zh zu""".split()
)

# Scripts written without spaces between words: there one letter, not one run of letters, is the
# unit the script check counts (a Han character carries about what a Latin word does).
UNSPACED_SCRIPTS = frozenset({"Han", "Hiragana", "Katakana", "Thai"})

# Character-length bounds (translation / English source). Alphabetic scripts share one; the
# logographic and syllabic ones are far shorter. Checked on human references (Multi30K de/fr/cs,
# CoMMuTE de/fr/cs/ru/zh/ar: benchmarks/language_id_calibration.py): they reject 1 of 96,818; the
# other languages of a family inherit its bounds, uncalibrated.
_ALPHABETIC = (0.3, 2.6)
_CHINESE = (0.08, 1.0)
_JAPANESE = (0.1, 1.2)
_KOREAN = (0.12, 1.3)


@dataclasses.dataclass(frozen=True)
class LanguageRules:
    """Everything a translation into one language is asked and checked with."""

    code: str  # ISO 639-1
    name: str  # English name, as the prompts say it ("German")
    scripts: tuple[str, ...]  # Unicode script names (as \\p{scx=...} takes them) its letters are in
    length_ratio: tuple[float, float]  # translation / source characters, inclusive bounds
    langdetect: tuple[str, ...]  # what langdetect answers for it
    fasttext: tuple[str, ...]  # what fastText lid.176 answers for it
    # The pysbd language whose rules split its sentences (caption styles, transforms/caption_styles.py):
    # its own code where pysbd has rules for it, else a language of its script or family with them.
    sentences: str = ""

    def problems(self) -> list[str]:
        """What is missing or inconsistent in these rules (empty when complete)."""
        found = []
        if self.code not in ISO_639_1:
            found.append("not an ISO 639-1 code")
        if not self.name:
            found.append("no prompt name")
        if not self.scripts:
            found.append("no script")
        low, high = self.length_ratio
        if not 0 < low < high:
            found.append(f"length_ratio {self.length_ratio} is not 0 < low < high")
        if not self.langdetect or not self.fasttext:
            found.append("a detector has no code for it")
        if not self.sentences:
            found.append("no sentence rules")
        return found


def _rules(code: str, name: str, scripts: str, length_ratio: tuple[float, float] = _ALPHABETIC,
           langdetect: Optional[tuple[str, ...]] = None, fasttext: Optional[tuple[str, ...]] = None,
           sentences: Optional[str] = None) -> LanguageRules:
    """One table row; the detectors' codes and the sentence rules default to the ISO code."""
    return LanguageRules(code, name, tuple(scripts.split()), length_ratio, langdetect or (code,), fasttext or (code,),
                         sentences or code)


# Every language both detectors know (langdetect's 55 profiles, all in lid.176).
LANGUAGES: Mapping[str, LanguageRules] = {r.code: r for r in (
    _rules("af", "Afrikaans", "Latin", sentences="en"),
    _rules("ar", "Arabic", "Arabic"),
    _rules("bg", "Bulgarian", "Cyrillic"),
    _rules("bn", "Bengali", "Bengali", sentences="hi"),
    _rules("ca", "Catalan", "Latin", sentences="es"),
    _rules("cs", "Czech", "Latin", sentences="sk"),
    _rules("cy", "Welsh", "Latin", sentences="en"),
    _rules("da", "Danish", "Latin"),
    _rules("de", "German", "Latin"),
    _rules("el", "Greek", "Greek"),
    _rules("en", "English", "Latin"),
    _rules("es", "Spanish", "Latin"),
    _rules("et", "Estonian", "Latin", sentences="en"),
    _rules("fa", "Persian", "Arabic"),
    _rules("fi", "Finnish", "Latin", sentences="en"),
    _rules("fr", "French", "Latin"),
    _rules("gu", "Gujarati", "Gujarati", sentences="en"),
    _rules("he", "Hebrew", "Hebrew", sentences="en"),
    _rules("hi", "Hindi", "Devanagari"),
    _rules("hr", "Croatian", "Latin", sentences="en"),
    _rules("hu", "Hungarian", "Latin", sentences="en"),
    _rules("id", "Indonesian", "Latin", sentences="en"),
    _rules("it", "Italian", "Latin"),
    _rules("ja", "Japanese", "Han Hiragana Katakana", _JAPANESE),
    _rules("kn", "Kannada", "Kannada", sentences="en"),
    _rules("ko", "Korean", "Hangul", _KOREAN, sentences="en"),
    _rules("lt", "Lithuanian", "Latin", sentences="en"),
    _rules("lv", "Latvian", "Latin", sentences="en"),
    _rules("mk", "Macedonian", "Cyrillic", sentences="bg"),
    _rules("ml", "Malayalam", "Malayalam", sentences="en"),
    _rules("mr", "Marathi", "Devanagari"),
    _rules("ne", "Nepali", "Devanagari", sentences="hi"),
    _rules("nl", "Dutch", "Latin"),
    _rules("no", "Norwegian", "Latin", fasttext=("no", "nn"), sentences="da"),
    _rules("pa", "Punjabi", "Gurmukhi", sentences="hi"),
    _rules("pl", "Polish", "Latin"),
    _rules("pt", "Portuguese", "Latin", sentences="es"),
    _rules("ro", "Romanian", "Latin", sentences="en"),
    _rules("ru", "Russian", "Cyrillic"),
    _rules("sk", "Slovak", "Latin"),
    _rules("sl", "Slovenian", "Latin", sentences="en"),
    _rules("so", "Somali", "Latin", sentences="en"),
    _rules("sq", "Albanian", "Latin", sentences="en"),
    _rules("sv", "Swedish", "Latin", sentences="da"),
    _rules("sw", "Swahili", "Latin", sentences="en"),
    _rules("ta", "Tamil", "Tamil", sentences="en"),
    _rules("te", "Telugu", "Telugu", sentences="en"),
    _rules("th", "Thai", "Thai", sentences="en"),
    _rules("tl", "Tagalog", "Latin", sentences="en"),
    _rules("tr", "Turkish", "Latin", sentences="en"),
    _rules("uk", "Ukrainian", "Cyrillic", sentences="ru"),
    _rules("ur", "Urdu", "Arabic"),
    _rules("vi", "Vietnamese", "Latin", sentences="en"),
    _rules("zh", "Chinese", "Han", _CHINESE, langdetect=("zh-cn", "zh-tw")),
)}

# English names used in prompts and in the paper's encoder prompts.
LANGUAGE_NAMES = {code: rules.name for code, rules in LANGUAGES.items()}


def unsupported_reason(code: str) -> Optional[str]:
    """Why a plan may not name `code` (None when it may): the translator can be asked for a language
    and its outputs checked only when the table holds complete rules for it."""
    if code not in ISO_639_1:
        return f"{code!r} is not an ISO 639-1 language code"
    rules = LANGUAGES.get(code)
    if rules is None:
        return (f"{code!r} has no prompt name or translation checks here; supported: "
                f"{', '.join(sorted(LANGUAGES))}")
    problems = rules.problems()
    if problems:
        return f"{code!r} has incomplete rules: {'; '.join(problems)}"
    return None


# Scripts whose sentences follow each other without a space (Chinese, Japanese); Thai, though written
# without spaces between words, puts one between sentences.
_UNSPACED_SENTENCES = frozenset({"Han", "Hiragana", "Katakana"})


def sentence_joiner(code: str) -> str:
    """What goes between two sentences of `code` written one after the other: nothing in Chinese or
    Japanese, a space elsewhere."""
    rules = LANGUAGES.get(code)
    return "" if rules is not None and set(rules.scripts) <= _UNSPACED_SENTENCES else " "
