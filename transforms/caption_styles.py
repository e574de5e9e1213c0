"""Caption styles, as the paper's code builds them: a text is split into sentences, its first
sentence is a `<CAPTION>`, and the whole text is also a `<DETAILED_CAPTION>` when it has two
sentences, a `<MORE_DETAILED_CAPTION>` when it has three or more. One text so yields one or two
samples (Fig. 2 of the paper trains on both the short caption and the detailed one).

Sentences are split offline by pysbd's rules (no model download, unlike NLTK's punkt), with the rules
languages.py names for each language (its own, or a language of its script or family where pysbd has
none). pysbd splits after abbreviations it does not know ("p. ex.", "т. е."): in a translation, a
piece starting with a lowercase letter continues the sentence before it, as the translator starts
sentences in upper case. Not in English: web and model captions often start sentences in lower case
(they are capitalised here), and pysbd's English rules know the abbreviations.

Which sample a text yields is decided on the English text, so every language gets the same styles of
one caption: a style's sample is kept only when its English text has at least `min_chars` characters
(validation's min_caption_chars, 26: the paper's "longer than 25"); its target in another language is
the translation's own first sentence, or the whole translation. English sentences are capitalised.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Optional

import pysbd

from schemas.config import RunConfig
from schemas.languages import LANGUAGES
from schemas.records import TASK_CAPTION
from schemas.sample import STYLE_CAPTION, STYLE_DETAILED, STYLE_MORE_DETAILED, Annotation

SOURCE_LANGUAGE = "en"
BY_SENTENCES = "by_sentences"  # a source's caption_style that splits its captions (schemas/config.py)


@functools.lru_cache(maxsize=None)
def _segmenter(lang: str) -> pysbd.Segmenter:
    return pysbd.Segmenter(language=LANGUAGES[lang].sentences, clean=False)


def split_sentences(text: str, lang: str) -> list[str]:
    """The sentences of `text` by the language's rules, stripped; English ones capitalised."""
    sentences: list[str] = []
    for piece in (p.strip() for p in _segmenter(lang).segment(text)):
        if not piece:
            continue
        first_letter = next((ch for ch in piece if ch.isalpha()), "")
        if sentences and first_letter.islower() and lang != SOURCE_LANGUAGE:
            sentences[-1] = f"{sentences[-1]} {piece}"
        else:
            sentences.append(piece)
    if lang == SOURCE_LANGUAGE:
        sentences = [s[0].upper() + s[1:] for s in sentences]
    return sentences


def whole_style(sentences: int) -> Optional[str]:
    """The style of a whole text of this many sentences (None: its first sentence is all of it)."""
    return STYLE_MORE_DETAILED if sentences >= 3 else STYLE_DETAILED if sentences == 2 else None


def english_styles(english: str, min_chars: int) -> list[str]:
    """The styles one English text yields: its first sentence's, then its whole text's."""
    sentences = split_sentences(english, SOURCE_LANGUAGE)
    if not sentences:
        return []
    styles = [STYLE_CAPTION] if len(sentences[0]) >= min_chars else []
    whole = whole_style(len(sentences))
    if whole is not None and len(" ".join(sentences)) >= min_chars:
        styles.append(whole)
    return styles


def caption_annotations(target: str, lang: str, styles: Optional[list[str]]) -> list[Annotation]:
    """The caption annotations in `lang` of one caption whose text there is `target`: one plain
    `<CAPTION>` (no style key in the JSON, as before styles) when `styles` is None, else one per style."""
    if styles is None:
        return [Annotation(TASK_CAPTION, lang, target)]
    sentences = split_sentences(target, lang) or [target]
    whole = " ".join(sentences) if lang == SOURCE_LANGUAGE else target  # English: capitalised
    return [Annotation(TASK_CAPTION, lang, sentences[0] if style == STYLE_CAPTION else whole, style=style)
            for style in styles]


@dataclasses.dataclass(frozen=True)
class CaptionStyles:
    """Which sources' captions are split into styles (the others' each stay one `<CAPTION>`), and the
    shortest text a styled sample may have."""

    by_sentences: frozenset[str] = frozenset()
    min_chars: int = 26

    @classmethod
    def of(cls, config: RunConfig) -> "CaptionStyles":
        """The run's styles: its `by_sentences` sources, and validation's shortest caption (the paper's > 25)."""
        return cls(frozenset(s.name for s in config.sources if s.caption_style == BY_SENTENCES),
                   config.validation.min_caption_chars)

    def styles_of(self, source: str, english: str) -> Optional[list[str]]:
        """The styles an English caption of `source` yields; None where its source keeps captions whole."""
        return english_styles(english, self.min_chars) if source in self.by_sentences else None
