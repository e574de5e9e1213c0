"""The Florenz sizes of the paper (0.4B, 1.0B, 3.5B, 11.2B) and tiny ones for tests, as configs.

The numbers are those of the public checkpoints (microsoft/Florence-2-base|large, google/gemma-2-2b|9b),
so a random model of a size has the paper's parameter count and a pretrained one loads into it
(florence-community/* are the Florence-2 checkpoints converted for transformers' native classes).
"""
from __future__ import annotations

from transformers import Florence2Config, Gemma2Config

from model.configuration import FlorenzConfig
from model.toy_vision import DAVIT, PATCH_STEM

GEMMA2_VOCAB = 256000
FLORENCE2_VOCAB = 51289

PRETRAINED = {  # size -> (Florence-2 checkpoint, Gemma-2 checkpoint or None)
    "florenz-0.4b": ("florence-community/Florence-2-base", None),
    "florenz-1.0b": ("florence-community/Florence-2-large", None),
    "florenz-3.5b": ("florence-community/Florence-2-large", "google/gemma-2-2b"),
    "florenz-11.2b": ("florence-community/Florence-2-large", "google/gemma-2-9b"),
}


def _florence(vision_dims: list[int], vision_heads: list[int], depths: list[int], d_model: int, layers: int,
              heads: int, ffn: int, vocab: int = FLORENCE2_VOCAB, init_std: float = 0.02) -> Florence2Config:
    vision = {"embed_dim": vision_dims, "num_heads": vision_heads, "num_groups": vision_heads, "depths": depths,
              "projection_dim": d_model}
    text = {"d_model": d_model, "encoder_layers": layers, "decoder_layers": layers, "encoder_attention_heads": heads,
            "decoder_attention_heads": heads, "encoder_ffn_dim": ffn, "decoder_ffn_dim": ffn, "vocab_size": vocab,
            "init_std": init_std}
    return Florence2Config(vision_config=vision, text_config=text, image_token_id=vocab - 1)


def florence2_base() -> Florence2Config:
    return _florence([128, 256, 512, 1024], [4, 8, 16, 32], [1, 1, 9, 1], 768, 6, 12, 3072)


def florence2_large() -> Florence2Config:
    return _florence([256, 512, 1024, 2048], [8, 16, 32, 64], [1, 1, 9, 1], 1024, 12, 16, 4096)


def gemma2(hidden: int, layers: int, heads: int, kv_heads: int, intermediate: int, head_dim: int = 256,
           vocab: int = GEMMA2_VOCAB) -> Gemma2Config:
    return Gemma2Config(vocab_size=vocab, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                        num_key_value_heads=kv_heads, intermediate_size=intermediate, head_dim=head_dim,
                        pad_token_id=0, eos_token_id=1, bos_token_id=2)


def tiny_florence(encoder_vocab: int) -> Florence2Config:
    return _florence([16, 32, 32, 64], [1, 2, 2, 4], [1, 1, 1, 1], 64, 2, 4, 128, vocab=encoder_vocab)


def _toy(d_model: int, layers: int, heads: int, ffn: int):
    """A toy-world size: Florence-2-shaped encoder and decoder trained from scratch, whose vision tower
    is the patch stem (model/toy_vision.py), so its DaViT dims only set the stem's widths.

    Weights start at std d_model^-0.5 (fan-in), not BART's 0.02: at d_model 48-160 the 0.02 init leaves the
    decoder's cross-attention adding ~2 % to its residual stream, the decoder learns the captions' marginal
    distribution first and the image's gradient then vanishes (stem gradient ~1e-6; loss with shuffled images
    equal to the right ones after 800 steps). With fan-in init toy-s grounds within 100 steps."""
    return lambda enc, dec: (_florence([d_model] * 4, [1] * 4, [1] * 4, d_model, layers, heads, ffn, vocab=enc,
                                       init_std=d_model ** -0.5), None)


_TOY_SIZES = {"toy-s": _toy(48, 1, 2, 96), "toy-m": _toy(96, 2, 4, 192), "toy-l": _toy(160, 3, 4, 320)}
_BUILDERS = {  # size -> (encoder vocab, decoder vocab) -> (Florence-2 config, Gemma-2 config or None)
    "florenz-0.4b": lambda enc, dec: (florence2_base(), None),
    "florenz-1.0b": lambda enc, dec: (florence2_large(), None),
    "florenz-3.5b": lambda enc, dec: (florence2_large(), gemma2(2304, 26, 8, 4, 9216, vocab=dec)),
    "florenz-11.2b": lambda enc, dec: (florence2_large(), gemma2(3584, 42, 16, 8, 14336, vocab=dec)),
    "tiny": lambda enc, dec: (tiny_florence(enc), None),
    "tiny-gemma": lambda enc, dec: (tiny_florence(enc), gemma2(64, 2, 2, 1, 128, head_dim=32, vocab=dec)),
    **_TOY_SIZES,
}
SIZES = tuple(_BUILDERS)  # what a training config's model.size may name


def florenz_config(size: str, decoder_vocab_size: int = GEMMA2_VOCAB, encoder_vocab_size: int = FLORENCE2_VOCAB
                   ) -> FlorenzConfig:
    """A size's config; the tiny sizes take their vocabularies from the tokenizers the tests train."""
    if size not in _BUILDERS:
        raise ValueError(f"unknown Florenz size {size!r}; known: {', '.join(SIZES)}")
    florence, gemma = _BUILDERS[size](encoder_vocab_size, decoder_vocab_size)
    return FlorenzConfig(florence=florence, gemma=gemma, decoder_vocab_size=decoder_vocab_size, size=size,
                         vision_tower=PATCH_STEM if size in _TOY_SIZES else DAVIT)


def decoder_kind(size: str) -> str:
    """The decoder family of a size (configuration.DECODER_*), which decides its paper freezing."""
    return florenz_config(size).decoder_kind
