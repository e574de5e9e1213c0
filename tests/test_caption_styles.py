"""Caption styles: sentences split offline by each language's rules (abbreviations kept whole, Chinese
split at 。), the styles one text yields (first sentence, then the whole text by its sentence count,
only texts longer than 25 characters), English capitalised; the styles reach the shards (a
`by_sentences` source only: COCO's stay plain <CAPTION>s), pass `verify`, and set the encoder prompt."""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pysbd.languages
import pytest

from model.prompts import STYLE_TASKS, encoder_prompt
from pipeline.verify import iter_tar_samples, verify_output
from schemas.languages import LANGUAGES
from schemas.records import TASK_CAPTION, TASK_TRANSLATION
from schemas.sample import STYLE_CAPTION, STYLE_DETAILED, STYLE_MORE_DETAILED, STYLES, Annotation
from tests.helpers import PAPER_PLAN, caption_parquet_source, fill_store, run_build, write_config
from transforms.caption_styles import caption_annotations, english_styles, split_sentences

SPLITS = {
    "en": ("Dr. Smith stands next to a red car, e.g. a sedan. The car is parked on a quiet street.",
           ["Dr. Smith stands next to a red car, e.g. a sedan.", "The car is parked on a quiet street."]),
    "de": ("Ein Mann steht z. B. neben einem roten Auto. Das Auto parkt auf einer Straße. Dr. Müller schaut zu.",
           ["Ein Mann steht z. B. neben einem roten Auto.", "Das Auto parkt auf einer Straße.",
            "Dr. Müller schaut zu."]),
    "fr": ("Un homme se tient à côté d'une voiture rouge. La voiture est garée dans la rue, p. ex. en ville.",
           ["Un homme se tient à côté d'une voiture rouge.", "La voiture est garée dans la rue, p. ex. en ville."]),
    "es": ("Un hombre está junto a un coche rojo. ¿Dónde está el coche? Está aparcado en la calle, aprox. a las cinco.",
           ["Un hombre está junto a un coche rojo.", "¿Dónde está el coche?",
            "Está aparcado en la calle, aprox. a las cinco."]),
    "ru": ("Мужчина стоит рядом с красной машиной. Машина припаркована на улице, т. е. в городе!",
           ["Мужчина стоит рядом с красной машиной.", "Машина припаркована на улице, т. е. в городе!"]),
    "zh": ("一个男人站在红色汽车旁边。汽车停在安静的街道上！树木排列在路边。",
           ["一个男人站在红色汽车旁边。", "汽车停在安静的街道上！", "树木排列在路边。"]),
}


@pytest.mark.parametrize("lang", sorted(SPLITS))
def test_sentences_split_by_the_language_rules_and_abbreviations_stay_whole(lang):
    text, sentences = SPLITS[lang]
    assert split_sentences(text, lang) == sentences


def test_english_sentences_are_capitalised_and_other_languages_kept_as_written():
    assert split_sentences("a dog runs on the grass. the ball is red.", "en") == \
        ["A dog runs on the grass.", "The ball is red."]
    # A lowercase start in a translation continues the sentence (an abbreviation pysbd does not know).
    assert split_sentences("Ein Hund läuft, bzw. rennt. über die Wiese.", "de") == \
        ["Ein Hund läuft, bzw. rennt. über die Wiese."]


def test_every_language_names_sentence_rules_that_pysbd_has():
    assert {rules.sentences for rules in LANGUAGES.values()} <= set(pysbd.languages.LANGUAGE_CODES)
    own = {code for code, rules in LANGUAGES.items() if rules.sentences == code}
    assert {"en", "de", "fr", "es", "ru", "zh", "ja"} <= own
    assert LANGUAGES["uk"].sentences == "ru" and LANGUAGES["pt"].sentences == "es"
    assert split_sentences("Чоловік стоїть біля червоного автомобіля. Автомобіль стоїть на вулиці.", "uk") == \
        ["Чоловік стоїть біля червоного автомобіля.", "Автомобіль стоїть на вулиці."]


@pytest.mark.parametrize("text, styles", [
    ("A man rides a brown horse along the beach.", [STYLE_CAPTION]),
    ("A man rides a brown horse. The beach is empty.", [STYLE_CAPTION, STYLE_DETAILED]),
    ("A man rides a brown horse. The beach is empty. Waves roll in.", [STYLE_CAPTION, STYLE_MORE_DETAILED]),
    ("A man rides a brown horse. The beach is empty. Waves roll in. Dr. Who waves.",
     [STYLE_CAPTION, STYLE_MORE_DETAILED]),
    # a first sentence of 25 characters or fewer is no caption; the whole text still is
    ("A man rides a horse. The beach behind him is empty.", [STYLE_DETAILED]),
    ("A horse. A beach.", []),
])
def test_styles_follow_the_sentence_count_and_the_25_character_rule(text, styles):
    assert english_styles(text, min_chars=26) == styles


def test_a_translation_gets_the_english_texts_styles_with_its_own_first_sentence():
    styles = english_styles("a man rides a brown horse. the beach is empty. waves roll in.", 26)
    zh = caption_annotations("一个男人骑着一匹棕色的马。海滩空无一人。海浪涌来。", "zh", styles)
    assert [(a.style, a.target) for a in zh] == [
        (STYLE_CAPTION, "一个男人骑着一匹棕色的马。"),
        (STYLE_MORE_DETAILED, "一个男人骑着一匹棕色的马。海滩空无一人。海浪涌来。")]
    en = caption_annotations("a man rides a brown horse. the beach is empty. waves roll in.", "en", styles)
    assert [a.target for a in en] == ["A man rides a brown horse.",
                                      "A man rides a brown horse. The beach is empty. Waves roll in."]
    assert caption_annotations("a short human caption of a horse", "en", None) == \
        [Annotation(TASK_CAPTION, "en", "a short human caption of a horse")]


def test_the_style_survives_the_json_and_sets_the_encoder_prompt():
    for style in STYLES:
        annotation = Annotation(TASK_CAPTION, "de", "Ein Pferd.", style=style)
        assert Annotation.from_json(json.loads(json.dumps(annotation.to_json()))) == annotation
        assert encoder_prompt(annotation) == f"The target language is German. {STYLE_TASKS[style]}"
    assert encoder_prompt(Annotation(TASK_CAPTION, "de", "Ein Pferd.")).endswith("What does the image describe?")
    assert "style" not in Annotation(TASK_CAPTION, "de", "Ein Pferd.").to_json()
    with pytest.raises(ValueError, match="style"):
        Annotation.from_json({"task": TASK_CAPTION, "lang": "de", "target": "x", "style": "<OCR>"})
    with pytest.raises(ValueError, match="style"):
        Annotation.from_json({"task": TASK_TRANSLATION, "lang": "de", "target": "x", "source": "y",
                              "style": STYLE_CAPTION})


LONG_CAPTIONS = [
    ["A brown dog runs across a green field. It carries a red ball in its mouth. The sun is setting."],
    ["Two children play on a sandy beach. A large wave approaches them from the sea."],
    ["An old man reads a newspaper on a park bench beside a small fountain."],
    ["A cat sleeps on a windowsill. Dr. Brown's garden, e.g. roses and tulips, lies behind it."],
]


SHORT_CAPTIONS = [["A man rides a brown horse. The beach is empty."], ["Two dogs play in the snow. One is black."]]


def parquet_source(tmp: Path, name: str, captions: list[list[str]], first_image: int, style: str) -> dict:
    """A Parquet source of `captions` on real COCO images from `first_image` on (no two sources share an
    image: a build keeps one image per content)."""
    source = caption_parquet_source(tmp, captions, name)
    images = sorted(p.name for p in Path(source["image_root"]).glob("*.jpg"))[first_image:first_image + len(captions)]
    table = pq.read_table(source["files"])
    pq.write_table(table.set_column(table.schema.get_field_index("path"), "path", pa.array(images)), source["files"])
    return {**source, "caption_style": style}


def test_styles_reach_the_shards_for_by_sentences_sources_only(tmp_path):
    sources = [parquet_source(tmp_path, "long", LONG_CAPTIONS, 0, "by_sentences"),
               parquet_source(tmp_path, "human", SHORT_CAPTIONS, len(LONG_CAPTIONS), "short")]
    fill_store(tmp_path / "store", [c for caps in LONG_CAPTIONS + SHORT_CAPTIONS for c in caps],
               PAPER_PLAN["translation_languages"])
    run_build(write_config(tmp_path, sources, {**PAPER_PLAN, "eval_fraction": 0.3}))
    assert verify_output(str(tmp_path / "out")) == []
    styles: dict[str, dict[str, list[tuple[str, str]]]] = {}
    for tar in sorted((tmp_path / "out").rglob("*.tar")):
        for key, members in iter_tar_samples(tar.read_bytes()):
            for a in json.loads(members["json"])["annotations"]:
                if a["task"] == TASK_CAPTION:
                    styles.setdefault(key, {}).setdefault(a["lang"], []).append((a.get("style"), a["target"]))
    assert sorted(styles) == ["human_img000", "human_img001", *(f"long_img00{i}" for i in range(4))]
    # a `short` source's two-sentence caption stays one plain caption
    assert styles["human_img000"]["en"] == [(None, SHORT_CAPTIONS[0][0])]
    assert styles["human_img001"]["de"] == [(None, f"[de] {SHORT_CAPTIONS[1][0]}")]
    assert styles["long_img000"]["en"] == [(STYLE_CAPTION, "A brown dog runs across a green field."),
                                           (STYLE_MORE_DETAILED, LONG_CAPTIONS[0][0])]
    assert styles["long_img001"]["de"] == [(STYLE_CAPTION, "[de] Two children play on a sandy beach."),
                                           (STYLE_DETAILED, f"[de] {LONG_CAPTIONS[1][0]}")]
    assert styles["long_img002"]["en"] == [(STYLE_CAPTION, LONG_CAPTIONS[2][0])]
    assert styles["long_img003"]["en"][0] == (STYLE_CAPTION, "A cat sleeps on a windowsill.")


def test_eval_scores_each_style_against_the_references_of_that_style():
    from model.data import Example
    from model.evaluate import _item

    def item(style, task=TASK_CAPTION, source=None):
        return _item(Example(None, Annotation(task, "de", "Ein Pferd.", source=source, style=style), "img1"))

    assert item(None) == item(STYLE_CAPTION) == "img1"  # a plain caption is a <CAPTION>, as before styles
    assert len({item(STYLE_CAPTION), item(STYLE_DETAILED), item(STYLE_MORE_DETAILED)}) == 3
    assert item(None, TASK_TRANSLATION, "A horse.") == "img1|A horse."
