"""Florenz from pretrained checkpoints: Florence-2 (+ Gemma-2) through transformers' from_pretrained.

For the Florence-2 decoder sizes the decoder's embeddings and LM head are remapped to the Gemma-2
tokenizer, as the reference implementation does: each Gemma-2 token is spelled out and tokenized with
Florence-2's tokenizer, and its new row is the mean of those tokens' rows (a token both vocabularies
share keeps its vector). The encoder keeps Florence-2's vocabulary and tokenizer.
"""
from __future__ import annotations

from typing import Optional

import torch
from transformers import Florence2ForConditionalGeneration, Gemma2ForCausalLM

from model.configuration import FlorenzConfig
from model.modeling import FlorenzModel

SENTENCEPIECE_SPACE = "▁"


def token_matching(encoder_tokenizer, decoder_tokenizer) -> dict[int, list[int]]:
    """Gemma-2 token id -> the Florence-2 token ids spelling the same text (special tokens by role)."""
    matching = {}
    for role in ("bos", "eos", "pad", "unk"):
        new, old = getattr(decoder_tokenizer, f"{role}_token_id"), getattr(encoder_tokenizer, f"{role}_token_id")
        if new is not None and old is not None:
            matching[new] = [old]
    vocab = decoder_tokenizer.get_vocab()
    pieces = [(token_id, token.replace(SENTENCEPIECE_SPACE, " ")) for token, token_id in vocab.items()
              if token_id not in matching]
    encoded = encoder_tokenizer([text for _, text in pieces], add_special_tokens=False).input_ids
    for (token_id, _), ids in zip(pieces, encoded):
        matching[token_id] = ids or [encoder_tokenizer.unk_token_id]
    return matching


@torch.no_grad()
def remap_embeddings(old: torch.Tensor, matching: dict[int, list[int]], new: torch.Tensor) -> None:
    """Fill `new` (decoder vocab × dim) with the mean of the matched rows of `old`; rows without a
    match keep their random initialisation."""
    by_length: dict[int, list[tuple[int, list[int]]]] = {}
    for token_id, ids in matching.items():
        by_length.setdefault(len(ids), []).append((token_id, ids))
    for length, items in by_length.items():
        rows = torch.tensor([token_id for token_id, _ in items])
        sources = torch.tensor([ids for _, ids in items]).flatten()
        new[rows] = old[sources].view(len(items), length, -1).mean(dim=1).to(new.dtype)


def florenz_from_pretrained(florence_id: str, encoder_tokenizer, decoder_tokenizer, gemma_id: Optional[str] = None,
                            size: str = "custom", dtype: torch.dtype = torch.float32) -> FlorenzModel:
    """A Florenz model from a Florence-2 checkpoint and, for the large sizes, a Gemma-2 checkpoint
    (hub ids or local folders)."""
    florence = Florence2ForConditionalGeneration.from_pretrained(florence_id, dtype=dtype)
    gemma = Gemma2ForCausalLM.from_pretrained(gemma_id, dtype=dtype) if gemma_id else None
    config = FlorenzConfig(florence=florence.config, gemma=None if gemma is None else gemma.config,
                           decoder_vocab_size=len(decoder_tokenizer),
                           decoder_pad_token_id=decoder_tokenizer.pad_token_id,
                           decoder_eos_token_id=decoder_tokenizer.eos_token_id,
                           decoder_bos_token_id=decoder_tokenizer.bos_token_id, size=size)
    florence_embeddings = florence.model.language_model.shared.weight.detach().clone()
    model = FlorenzModel(config, florence=florence, gemma=gemma).to(dtype)
    if gemma is None:
        remap_embeddings(florence_embeddings, token_matching(encoder_tokenizer, decoder_tokenizer),
                         model.decoder.embed_tokens.weight)
    return model
