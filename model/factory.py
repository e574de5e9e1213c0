"""Tokenizers and a Florenz model as a training config asks for them: random, pretrained, or resumed."""
from __future__ import annotations

import dataclasses

import torch
from transformers import AutoTokenizer

from model.modeling import FlorenzModel
from model.pretrained import florenz_from_pretrained
from model.sizes import PRETRAINED, florenz_config
from model.train_config import ModelConfig


def load_tokenizers(config: ModelConfig):
    """(encoder tokenizer: Florence-2's, decoder tokenizer: Gemma-2's), hub ids or folders."""
    return (AutoTokenizer.from_pretrained(config.encoder_tokenizer),
            AutoTokenizer.from_pretrained(config.decoder_tokenizer))


def build_model(config: ModelConfig, encoder_tokenizer, decoder_tokenizer, device: torch.device) -> FlorenzModel:
    if config.init == "random":
        florenz = florenz_config(config.size, decoder_vocab_size=len(decoder_tokenizer),
                                 encoder_vocab_size=len(encoder_tokenizer))
        florenz = dataclasses.replace(florenz, decoder_pad_token_id=decoder_tokenizer.pad_token_id,
                                      decoder_eos_token_id=decoder_tokenizer.eos_token_id,
                                      decoder_bos_token_id=decoder_tokenizer.bos_token_id)
        with torch.device(device):
            return FlorenzModel(florenz)
    if config.init == "pretrained":
        florence, gemma = PRETRAINED.get(config.size, (None, None))
        florence, gemma = config.florence or florence, config.gemma or gemma
        if florence is None:
            raise ValueError(f"size {config.size!r} has no default checkpoints: set model.florence (and model.gemma)")
        return florenz_from_pretrained(florence, encoder_tokenizer, decoder_tokenizer, gemma_id=gemma,
                                       size=config.size).to(device)
    return FlorenzModel.from_pretrained(config.init, device=device)
