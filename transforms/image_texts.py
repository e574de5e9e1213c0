"""An image's English texts as the build translates and annotates them: its captions, and its VLM
description where the build puts descriptions in the shards. One place decides each text's store key
(records.request_key: with translator.context a caption is keyed with its image's description, the
context it is sent with), so the translate step asks for exactly what coverage looks up.
"""
from __future__ import annotations

import dataclasses
from typing import NamedTuple, Optional

from schemas.config import RunConfig
from schemas.records import ValidImage, request_key
from transforms.caption_styles import CaptionStyles, english_styles


class EnglishText(NamedTuple):
    text: str
    context: Optional[str]  # sent with the text to the translator; part of its key
    styles: Optional[list[str]]  # the caption styles it yields (None: one plain <CAPTION>)

    @property
    def key(self) -> str:
        """Its translations' key in the store and in coverage."""
        return request_key(self.text, self.context)


@dataclasses.dataclass(frozen=True)
class ImageTexts:
    """How a build turns an image into English texts: captions styled by their source's caption
    style, with the description as context (`context`), and the description itself as a caption
    styled by sentences (`descriptions`: recaption.use_in_shards)."""

    styles: CaptionStyles = CaptionStyles()
    context: bool = False
    descriptions: bool = False

    @classmethod
    def of(cls, config: RunConfig) -> "ImageTexts":
        return cls(CaptionStyles.of(config), config.translator is not None and config.translator.context,
                   config.recaption is not None and config.recaption.use_in_shards)

    def caption(self, image: ValidImage, caption: str) -> EnglishText:
        """One of the image's own captions; without a description it goes without context."""
        return EnglishText(caption, image.description if self.context else None,
                           self.styles.styles_of(image.source, caption))

    def of_image(self, image: ValidImage) -> list[EnglishText]:
        """Its captions in order, then its description (translated without context: it is the context)."""
        texts = [self.caption(image, c) for c in image.captions]
        if self.descriptions and image.description is not None:
            texts.append(EnglishText(image.description, None, english_styles(image.description, self.styles.min_chars)))
        return texts
