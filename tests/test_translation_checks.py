"""Translation checks: human references (Multi30K) pass, each kind of bad output is rejected with
its reason."""
from __future__ import annotations

import gzip
from collections import Counter

import pytest

from tests.helpers import MULTI30K
from transforms.translation_checks import (COPY_OF_SOURCE, EMPTY, LENGTH_RATIO, MULTIPLE_LINES, REPETITION,
                                           WRONG_LANGUAGE, WRONG_SCRIPT, check_translation, clean_translation)


def lines(split: str, code: str) -> list[str]:
    path = MULTI30K / "raw" / f"{split}.{code}.gz"
    if not path.exists():
        pytest.skip(f"Multi30K not found at {MULTI30K}")
    with gzip.open(path, "rt", encoding="utf-8") as f:
        return [line.strip() for line in f]


@pytest.mark.parametrize("split", ["val", "test_2016_flickr"])
@pytest.mark.parametrize("lang, minimum", [("de", 0.995), ("fr", 0.995), ("cs", 0.99)])
def test_human_references_are_accepted(split, lang, minimum):
    english, references = lines(split, "en"), lines(split, lang)
    results = [check_translation(en, ref, lang) for en, ref in zip(english, references)]
    accepted = sum(r.text is not None for r in results) / len(results)
    rejected = Counter(r.reason for r in results if r.reason)
    assert accepted >= minimum, (accepted, rejected)  # measured (checks v2): 1.000 for all three


def test_a_reference_in_the_wrong_language_is_rejected():
    english, german = lines("val", "en"), lines("val", "de")
    reasons = Counter(check_translation(en, de, "fr").reason for en, de in zip(english, german))
    assert reasons[WRONG_LANGUAGE] / len(english) > 0.98
    assert check_translation(english[0], german[0], "ru").reason == WRONG_SCRIPT
    assert check_translation(english[0], german[0], "zh").reason == WRONG_SCRIPT


@pytest.mark.parametrize("output, reason", [
    ("", EMPTY), ('""', EMPTY), ("   ", EMPTY),
    ("Ein Hund läuft.\nA dog runs.", MULTIPLE_LINES),
    ("A brown dog is running across a green meadow.", COPY_OF_SOURCE),
    ("a brown dog is running across a green meadow", COPY_OF_SOURCE),
    ("Der Hund Der Hund Der Hund Der Hund Der Hund Der Hund", REPETITION),
    ("Ein brauner Hund rennt über eine grüne Wiese. " * 6, LENGTH_RATIO),
    ("Ein brauner Hund rennt rennt rennt rennt über eine Wiese.", REPETITION),
    ("Hund.", LENGTH_RATIO),
])
def test_bad_outputs_are_rejected_with_their_reason(output, reason):
    assert check_translation("A brown dog is running across a green meadow.", output, "de").reason == reason


@pytest.mark.parametrize("output", [
    'Here is the translation: "Ein Hund läuft über eine Wiese."',
    "Sure! Here's the German translation: Ein Hund läuft über eine Wiese.",
    "„Ein Hund läuft über eine Wiese.“",
    "Übersetzung: Ein Hund läuft über eine Wiese. (Note: literal translation)",
    "  Ein   Hund läuft über eine Wiese.  ",
])
def test_preambles_quotes_and_notes_are_stripped(output):
    result = check_translation("A dog runs across a meadow.", output, "de")
    assert result.text == "Ein Hund läuft über eine Wiese."
    assert clean_translation("«Un chien court.»") == "Un chien court."


@pytest.mark.parametrize("source, output, lang", [
    ("A dog is running through the grass.", "Собака бежит по траве.", "ru"),
    ("Two children are playing football in a park.", "Двое детей играют в футбол в парке.", "ru"),
    ("A dog is running through the grass.", "一只狗在草地上奔跑。", "zh"),
    ("A man is riding a bicycle down the street.", "一个男人在街上骑自行车。", "zh"),
    ("A woman is reading a book on a bench.", "Una mujer está leyendo un libro en un banco.", "es"),
])
def test_correct_translations_in_other_scripts_are_accepted(source, output, lang):
    assert check_translation(source, output, lang).text == output


def test_chinese_in_latin_script_and_english_as_russian_are_wrong_script():
    assert check_translation("A dog runs.", "Yi zhi gou zai pao.", "zh").reason == WRONG_SCRIPT
    assert check_translation("A dog runs.", "Le chien court vite.", "ru").reason == WRONG_SCRIPT
