"""FlorenzConfig: which Florence-2 and which decoder a Florenz model is made of.

A Florenz model is Florence-2's vision tower, image projection and encoder, and a decoder that speaks
the Gemma-2 tokenizer: Florence-2's own BART decoder with remapped embeddings (0.4B, 1.0B) or a Gemma-2
decoder with gated cross-attention (3.5B, 11.2B). The config is saved beside the weights.
"""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any, Optional

from transformers import Florence2Config, Gemma2Config

CONFIG_NAME = "florenz_config.json"
DECODER_BART = "bart"
DECODER_GEMMA2 = "gemma2"

# The parts a freezing policy names (FlorenzModel.part_of): disjoint, together every parameter. The
# decoder's token embeddings are its LM head (tied); `decoder_layers` is the rest of the decoder (its
# layers' self-attention, MLP and norms, positions, final norm), without the cross-attention.
PARTS = ("vision_tower", "projector", "encoder", "decoder_layers", "decoder_cross_attention", "decoder_embeddings")
LAYERED_PARTS = ("encoder", "decoder_layers", "decoder_cross_attention")  # what scheduled unfreezing can schedule
PAPER_PARTS = {  # the paper's freezing: what trains, per decoder family
    DECODER_BART: ("encoder", "decoder_layers", "decoder_cross_attention", "decoder_embeddings"),
    DECODER_GEMMA2: ("encoder", "decoder_cross_attention", "decoder_embeddings"),
}


@dataclasses.dataclass
class FlorenzConfig:
    florence: Florence2Config
    decoder_vocab_size: int  # the Gemma-2 tokenizer's vocabulary (256000 for the real one)
    gemma: Optional[Gemma2Config] = None  # None: Florence-2's own decoder, remapped
    decoder_pad_token_id: int = 0
    decoder_eos_token_id: int = 1
    decoder_bos_token_id: int = 2
    size: str = "custom"
    vision_tower: str = "davit"  # model/toy_vision.py: "davit" (Florence-2's) or "patch_stem" (toy world)

    @property
    def decoder_kind(self) -> str:
        return DECODER_BART if self.gemma is None else DECODER_GEMMA2

    @property
    def encoder_dim(self) -> int:
        return self.florence.text_config.d_model

    def to_dict(self) -> dict[str, Any]:
        return {"size": self.size, "florence": self.florence.to_dict(),
                "gemma": None if self.gemma is None else self.gemma.to_dict(),
                "decoder_vocab_size": self.decoder_vocab_size, "decoder_pad_token_id": self.decoder_pad_token_id,
                "decoder_eos_token_id": self.decoder_eos_token_id, "decoder_bos_token_id": self.decoder_bos_token_id,
                "vision_tower": self.vision_tower}

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> "FlorenzConfig":
        gemma = raw.get("gemma")
        return cls(florence=Florence2Config(**raw["florence"]), gemma=None if gemma is None else Gemma2Config(**gemma),
                   decoder_vocab_size=raw["decoder_vocab_size"], decoder_pad_token_id=raw["decoder_pad_token_id"],
                   decoder_eos_token_id=raw["decoder_eos_token_id"],
                   decoder_bos_token_id=raw["decoder_bos_token_id"], size=raw.get("size", "custom"),
                   vision_tower=raw.get("vision_tower", "davit"))

    def save(self, directory: str | Path) -> None:
        Path(directory, CONFIG_NAME).write_text(json.dumps(self.to_dict(), indent=2, sort_keys=True))

    @classmethod
    def load(cls, directory: str | Path) -> "FlorenzConfig":
        return cls.from_dict(json.loads(Path(directory, CONFIG_NAME).read_text()))
