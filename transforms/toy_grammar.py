"""The toy world's grammar: a scene's caption in en/de/fr/es/ru/zh, exact translations of one another,
and the reverse: the scene attributes a caption in any of them states.

Why a grammar and not word lists: the held-out languages must be real languages in miniature, so
that translation data teaches something captioning needs: gender agreement (de/fr/es/ru), case after
a preposition (de dative, ru instrumental and genitive), noun-adjective order (fr, es), no spaces
(zh). Reading captions back (`read_attributes`) scores generated captions by content, which the
toy study needs because a held-out caption's loss can rise while its content improves.
"""
from __future__ import annotations

import re
from typing import Mapping, Optional

from transforms.toy_scenes import COLOURS, POSITIONS, RELATIONS, SHAPES, SIZES, Scene, Thing

LANGUAGES = ("en", "de", "fr", "es", "ru", "zh")

# --- words ----------------------------------------------------------------------------------------
# Per language: shape -> (noun forms..., gender); colours and sizes -> forms by gender (and case).

_EN = {"circle": "circle", "square": "square", "triangle": "triangle", "star": "star", "diamond": "diamond",
       "cross": "cross", "red": "red", "green": "green", "blue": "blue", "yellow": "yellow", "white": "white",
       "black": "black", "purple": "purple", "orange": "orange", "small": "small", "large": "large"}
_EN_PLACE = {"left": "on the left", "right": "on the right", "top": "at the top", "bottom": "at the bottom",
             "center": "in the middle", "left_of": "to the left of", "right_of": "to the right of",
             "above": "above", "below": "below"}

_DE_NOUN = {"circle": ("Kreis", "m"), "square": ("Quadrat", "n"), "triangle": ("Dreieck", "n"),
            "star": ("Stern", "m"), "diamond": ("Raute", "f"), "cross": ("Kreuz", "n")}
_DE_STEM = {"red": "rot", "green": "grün", "blue": "blau", "yellow": "gelb", "white": "weiß", "black": "schwarz",
            "purple": "violett", "orange": "orangefarben", "small": "klein", "large": "groß"}
_DE_PLACE = {"left": "links", "right": "rechts", "top": "oben", "bottom": "unten", "center": "in der Mitte",
             "left_of": "links von", "right_of": "rechts von", "above": "über", "below": "unter"}

_FR_NOUN = {"circle": ("cercle", "m"), "square": ("carré", "m"), "triangle": ("triangle", "m"),
            "star": ("étoile", "f"), "diamond": ("losange", "m"), "cross": ("croix", "f")}
_FR_ADJ = {"red": ("rouge", "rouge"), "green": ("vert", "verte"), "blue": ("bleu", "bleue"),
           "yellow": ("jaune", "jaune"), "white": ("blanc", "blanche"), "black": ("noir", "noire"),
           "purple": ("violet", "violette"), "orange": ("orange", "orange"), "small": ("petit", "petite"),
           "large": ("grand", "grande")}
_FR_PLACE = {"left": "à gauche", "right": "à droite", "top": "en haut", "bottom": "en bas", "center": "au centre",
             "left_of": "à gauche d'", "right_of": "à droite d'", "above": "au-dessus d'", "below": "en dessous d'"}

_ES_NOUN = {"circle": ("círculo", "m"), "square": ("cuadrado", "m"), "triangle": ("triángulo", "m"),
            "star": ("estrella", "f"), "diamond": ("rombo", "m"), "cross": ("cruz", "f")}
_ES_ADJ = {"red": ("rojo", "roja"), "green": ("verde", "verde"), "blue": ("azul", "azul"),
           "yellow": ("amarillo", "amarilla"), "white": ("blanco", "blanca"), "black": ("negro", "negra"),
           "purple": ("morado", "morada"), "orange": ("naranja", "naranja"), "small": ("pequeño", "pequeña"),
           "large": ("grande", "grande")}
_ES_PLACE = {"left": "a la izquierda", "right": "a la derecha", "top": "arriba", "bottom": "abajo",
             "center": "en el centro", "left_of": "a la izquierda de", "right_of": "a la derecha de",
             "above": "encima de", "below": "debajo de"}

# Russian nouns: nominative, instrumental, genitive; adjectives: the same cases, masculine then feminine.
_RU_NOUN = {"circle": ("круг", "кругом", "круга", "m"), "square": ("квадрат", "квадратом", "квадрата", "m"),
            "triangle": ("треугольник", "треугольником", "треугольника", "m"),
            "star": ("звезда", "звездой", "звезды", "f"), "diamond": ("ромб", "ромбом", "ромба", "m"),
            "cross": ("крест", "крестом", "креста", "m")}
_RU_STEM = {"red": ("красн", "hard"), "green": ("зелён", "hard"), "blue": ("син", "soft"), "yellow": ("жёлт", "hard"),
            "white": ("бел", "hard"), "black": ("чёрн", "hard"), "purple": ("фиолетов", "hard"),
            "orange": ("оранжев", "hard"), "small": ("маленьк", "velar"), "large": ("больш", "stressed")}
_RU_ENDINGS = {  # (nominative, instrumental, genitive) x (masculine, feminine)
    "hard": (("ый", "ая"), ("ым", "ой"), ("ого", "ой")), "soft": (("ий", "яя"), ("им", "ей"), ("его", "ей")),
    "velar": (("ий", "ая"), ("им", "ой"), ("ого", "ой")), "stressed": (("ой", "ая"), ("им", "ой"), ("ого", "ой"))}
_RU_PLACE = {"left": "слева", "right": "справа", "top": "сверху", "bottom": "снизу", "center": "в центре",
             "left_of": "слева от", "right_of": "справа от", "above": "над", "below": "под"}
_RU_CASE = {"left_of": 2, "right_of": 2, "above": 1, "below": 1}  # genitive after от, instrumental after над/под

_ZH = {"circle": "圆形", "square": "正方形", "triangle": "三角形", "star": "星形", "diamond": "菱形", "cross": "十字形",
       "red": "红色", "green": "绿色", "blue": "蓝色", "yellow": "黄色", "white": "白色", "black": "黑色",
       "purple": "紫色", "orange": "橙色", "small": "小的", "large": "大的"}
_ZH_PLACE = {"left": "左边", "right": "右边", "top": "上边", "bottom": "下边", "center": "中间",
             "left_of": "的左边", "right_of": "的右边", "above": "的上面", "below": "的下面"}


# --- phrases --------------------------------------------------------------------------------------

def _en(thing: Thing) -> str:
    return f"a {_EN[thing.size]} {_EN[thing.colour]} {_EN[thing.shape]}"


def _de(thing: Thing, dative: bool = False) -> str:
    noun, gender = _DE_NOUN[thing.shape]
    if dative:
        article, ending = ("einer" if gender == "f" else "einem"), "en"
    else:
        article, ending = ("eine" if gender == "f" else "ein"), {"m": "er", "n": "es", "f": "e"}[gender]
    return f"{article} {_DE_STEM[thing.size]}{ending} {_DE_STEM[thing.colour]}{ending} {noun}"


def _fr(thing: Thing) -> str:
    noun, gender = _FR_NOUN[thing.shape]
    g = gender == "f"
    return f"{'une' if g else 'un'} {_FR_ADJ[thing.size][g]} {noun} {_FR_ADJ[thing.colour][g]}"


def _es(thing: Thing) -> str:
    noun, gender = _ES_NOUN[thing.shape]
    g = gender == "f"
    return f"{'una' if g else 'un'} {noun} {_ES_ADJ[thing.colour][g]} {_ES_ADJ[thing.size][g]}"


def _ru(thing: Thing, case: int = 0) -> str:
    *nouns, gender = _RU_NOUN[thing.shape]
    g = gender == "f"

    def adjective(value: str) -> str:
        stem, kind = _RU_STEM[value]
        return stem + _RU_ENDINGS[kind][case][g]

    return f"{adjective(thing.size)} {adjective(thing.colour)} {nouns[case]}"


def _zh(thing: Thing) -> str:
    return f"一个{_ZH[thing.size]}{_ZH[thing.colour]}{_ZH[thing.shape]}"


def _capital(text: str) -> str:
    return text[:1].upper() + text[1:]


def caption(scene: Scene, lang: str) -> str:
    """The scene's caption in `lang`; the six languages' captions are exact translations of each other."""
    a, b = scene.first, scene.second
    if lang == "en":
        text = f"{_en(a)} {_EN_PLACE[scene.position]}" if b is None else f"{_en(a)} {_EN_PLACE[scene.relation]} {_en(b)}"
    elif lang == "de":
        text = (f"{_de(a)} {_DE_PLACE[scene.position]}" if b is None
                else f"{_de(a)} {_DE_PLACE[scene.relation]} {_de(b, dative=True)}")
    elif lang == "fr":
        text = f"{_fr(a)} {_FR_PLACE[scene.position]}" if b is None else f"{_fr(a)} {_FR_PLACE[scene.relation]}{_fr(b)}"
    elif lang == "es":
        text = f"{_es(a)} {_ES_PLACE[scene.position]}" if b is None else f"{_es(a)} {_ES_PLACE[scene.relation]} {_es(b)}"
    elif lang == "ru":
        text = (f"{_ru(a)} {_RU_PLACE[scene.position]}" if b is None
                else f"{_ru(a)} {_RU_PLACE[scene.relation]} {_ru(b, _RU_CASE[scene.relation])}")
    elif lang == "zh":
        return (f"{_ZH_PLACE[scene.position]}有{_zh(a)}。" if b is None
                else f"{_zh(a)}在{_zh(b)}{_ZH_PLACE[scene.relation]}。")
    else:
        raise ValueError(f"the toy grammar has no language {lang!r}; it has {', '.join(LANGUAGES)}")
    return _capital(text) + "."


# --- reading a caption back -----------------------------------------------------------------------

def _word_forms(lang: str, value: str) -> set[str]:
    """Every form of a shape, colour or size word in `lang` (lower case; zh as written)."""
    if lang == "en":
        return {_EN[value]}
    if lang == "zh":
        return {_ZH[value]}
    if lang == "de":
        return {_DE_NOUN[value][0].lower()} if value in _DE_NOUN else {_DE_STEM[value] + e for e in ("e", "er", "es", "en")}
    if lang in ("fr", "es"):
        nouns, adjectives = (_FR_NOUN, _FR_ADJ) if lang == "fr" else (_ES_NOUN, _ES_ADJ)
        return {nouns[value][0]} if value in nouns else set(adjectives[value])
    if value in _RU_NOUN:
        return set(_RU_NOUN[value][:3])
    stem, kind = _RU_STEM[value]
    return {stem + ending for case in _RU_ENDINGS[kind] for ending in case}


def _forms(lang: str) -> dict[str, dict[str, set[str]]]:
    """kind ("shape", "colour", "size", "place") -> value -> every form of it in `lang`."""
    places = {"en": _EN_PLACE, "de": _DE_PLACE, "fr": _FR_PLACE, "es": _ES_PLACE, "ru": _RU_PLACE, "zh": _ZH_PLACE}[lang]
    return {"shape": {v: _word_forms(lang, v) for v in SHAPES}, "colour": {v: _word_forms(lang, v) for v in COLOURS},
            "size": {v: _word_forms(lang, v) for v in SIZES},
            "place": {v: {places[v].lower().rstrip("'")} for v in (*POSITIONS, *RELATIONS)}}


def _words(text: str) -> list[str]:
    return re.findall(r"[\w-]+", text.lower().replace("'", " "))


_FORMS: dict[str, dict[str, dict[str, set[str]]]] = {}


def read_attributes(text: str, lang: str) -> dict:
    """The attributes a caption states, in the shape of Scene.attributes(): objects in the order they
    are named (the first named is the first object in every language's template), the place phrase
    that matches longest; values the caption does not state are None."""
    if lang not in _FORMS:
        _FORMS[lang] = _forms(lang)
    forms = _FORMS[lang]
    found: dict[str, list[tuple[int, str]]] = {kind: [] for kind in forms}
    if lang == "zh":
        for kind, values in forms.items():
            for value, spellings in values.items():
                for spelling in spellings:
                    found[kind] += [(m.start(), value) for m in re.finditer(re.escape(spelling), text)]
    else:
        words = _words(text)
        for kind, values in forms.items():
            for value, spellings in values.items():
                for spelling in spellings:
                    target = _words(spelling)
                    found[kind] += [(i, value) for i in range(len(words)) if words[i:i + len(target)] == target]
    for kind in ("shape", "colour", "size"):
        found[kind].sort()
    things = [{kind: (found[kind][i][1] if len(found[kind]) > i else None) for kind in ("shape", "colour", "size")}
              for i in range(2)]
    two = len(found["shape"]) >= 2
    place = _longest_place(found["place"], forms["place"], two)
    out = {"first": things[0]}
    if two:
        out.update(second=things[1], relation=place)
    else:
        out["position"] = place
    return out


def _longest_place(hits: list[tuple[int, str]], spellings: Mapping[str, set[str]], two: bool) -> Optional[str]:
    """The place named: a relation when two objects are named, else a position; the longest phrase wins
    ("links von" over "links")."""
    wanted = [value for _, value in hits if (value in RELATIONS) == two]
    return max(wanted, key=lambda value: max(len(s) for s in spellings[value]), default=None)


def attribute_accuracy(text: str, lang: str, scene: Scene) -> float:
    """Share of the scene's attributes (3 per object, plus position or relation) the caption states right."""
    said, truth = read_attributes(text, lang), scene.attributes()
    checks = [said.get("first", {}).get(k) == truth["first"][k] for k in ("shape", "colour", "size")]
    if scene.second is None:
        checks.append(said.get("position") == truth["position"])
    else:
        checks += [(said.get("second") or {}).get(k) == truth["second"][k] for k in ("shape", "colour", "size")]
        checks.append(said.get("relation") == truth["relation"])
    return sum(checks) / len(checks)


_VOCABULARY: dict[str, frozenset[str]] = {}


def _vocabulary(lang: str) -> frozenset[str]:
    """Every word the grammar writes in `lang` (lower case)."""
    if lang not in _VOCABULARY:
        from transforms.toy_scenes import every_scene

        _VOCABULARY[lang] = frozenset(word for scene in every_scene() for word in _words(caption(scene, lang)))
    return _VOCABULARY[lang]


def _cjk_share(text: str) -> float:
    letters = [c for c in text if c.isalpha()]
    return sum("\u4e00" <= c <= "\u9fff" for c in letters) / len(letters) if letters else 0.0


def language_of(text: str) -> Optional[str]:
    """The toy language a text is written in: zh when most of its letters are CJK, else the language
    whose vocabulary holds most of its words (at least half of them); None when none does. Exact for
    the grammar's own sentences, and what the study uses to tell which language a model answered in."""
    if _cjk_share(text) > 0.5:
        return "zh"
    words = _words(text)
    if not words:
        return None
    shares = {lang: sum(w in _vocabulary(lang) for w in words) / len(words) for lang in LANGUAGES if lang != "zh"}
    best = max(shares, key=lambda lang: (shares[lang], -LANGUAGES.index(lang)))
    return best if shares[best] >= 0.5 else None
