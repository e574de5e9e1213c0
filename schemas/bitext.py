"""The `bitext` config section: a parallel corpus (e.g. a CCMatrix export) whose English sides are
matched to the images in one CLIP-style embedding space, each image taking its top-N bitexts as
translation samples (the paper's held-out-language regime; transforms/bitext_match.py).
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Annotated, Literal, Optional

from pydantic import Field, model_validator

from schemas.coverage import CoveragePlan
from schemas.contract import Language, NonNegativeInt, Path, PositiveInt, Text, config_model, described
from schemas.errors import ConfigError

MAX_BLOCK = 1 << 20
# Rows per block: one worker holds one image block and one text block (and their product) at a time.
BlockSize = Annotated[int, Field(strict=True, ge=1, le=MAX_BLOCK), described(f"an integer in [1, {MAX_BLOCK}]")]


@config_model
class BitextSource:
    """Parquet files, or TSV files with a header row, holding an English column and one column per
    target language. Rows whose English side has fewer than min_en_chars characters are rejected and
    counted (the paper keeps pairs with an English side over 25 characters)."""

    files: Path  # a glob
    columns: Annotated[dict[Language, Text], Field(min_length=1),
                       described("a mapping from target language to its column, e.g. {de: de}")]
    format: Literal["parquet", "tsv"] = "parquet"
    en_column: Text = "en"
    min_en_chars: NonNegativeInt = 26


@config_model
class BitextMatching:
    """How many bitexts an image gets, how many images one bitext may serve, and the block sizes of
    the exact search."""

    top_n: PositiveInt = 4
    # A bitext may serve at most this many images (the closest ones): a hub near every image would
    # otherwise become every image's translation sample. None: no cap.
    use_cap: Optional[PositiveInt] = None
    # Bitexts searched per image when use_cap is set, so an image that loses some to closer images
    # still has others; None: 2 x top_n.
    candidates: Optional[PositiveInt] = None
    image_block: BlockSize = 1024
    text_block: BlockSize = 16384

    @model_validator(mode="after")
    def _enough_candidates(self) -> "BitextMatching":
        if self.candidates is not None and self.use_cap is None:
            raise ConfigError("candidates", "is only used with use_cap; without a cap each image searches top_n")
        if self.candidates is not None and self.candidates < self.top_n:
            raise ConfigError("candidates", f"is {self.candidates}, fewer than top_n ({self.top_n})")
        return self

    @property
    def searched(self) -> int:
        """Bitexts kept per image by the search, before the use cap."""
        if self.use_cap is None:
            return self.top_n
        return self.candidates or 2 * self.top_n


@config_model
class BitextConfig:
    source: BitextSource
    # The CLIP/SigLIP model folder (save_pretrained: weights, tokenizer, image processor), local or a
    # URI (gs://, s3://; copied once per worker).
    model: Path
    matching: BitextMatching = BitextMatching()
    batch_size: PositiveInt = 64  # images or sentences per forward pass


@dataclasses.dataclass(frozen=True)
class Bitext:
    """One parallel sentence pair (or tuple): the English side and its translations by language. The
    id is a hash of the content, so the same pair has the same id in every file, run and worker."""

    id: str
    en: str
    translations: tuple[tuple[str, str], ...]  # (language, text), in the config's column order

    @classmethod
    def of(cls, en: str, translations: tuple[tuple[str, str], ...]) -> "Bitext":
        digest = hashlib.sha256(json.dumps([en, translations], ensure_ascii=False).encode("utf-8")).hexdigest()
        return cls(f"bt-{digest[:20]}", en, translations)


def check_bitext_plan(plan: CoveragePlan, bitext: Optional[BitextConfig]) -> None:
    """A plan that pairs a language by bitext needs a bitext section with a column for it, and a use
    cap: the build joins each bitext with the images it serves in one group, which the cap bounds
    (without it a hub bitext near every image would be one group as large as the input)."""
    langs = plan.bitext_languages
    if not langs:
        return
    if bitext is None:
        raise ConfigError("bitext", f"plan.translation_pairing pairs {list(langs)} by bitext, and the config has "
                                    "no bitext section (source, model) to match bitexts to the images")
    outside = [lang for lang in langs if lang not in bitext.source.columns]
    if outside:
        raise ConfigError("bitext.source.columns", f"has no column for {outside[0]!r}, which "
                                                   "plan.translation_pairing pairs by bitext")
    if bitext.matching.use_cap is None:
        raise ConfigError("bitext.matching.use_cap", "is required when plan.translation_pairing uses bitext: the "
                                                     "build joins each bitext with the images it serves in one "
                                                     "group, which the cap bounds")
