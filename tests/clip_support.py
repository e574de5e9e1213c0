"""A tiny random CLIP built here (no download): a byte-level BPE tokenizer trained on the sentences
it will embed, a 2-layer text and vision tower with 32-dim projections, and an image processor for
32 px inputs, saved with save_pretrained like any CLIP folder."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

PROJECTION = 32


def tiny_clip(folder: Path, sentences: Iterable[str]) -> Path:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import (CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPTextConfig, CLIPVisionConfig,
                              PreTrainedTokenizerFast)

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(sentences, trainers.BpeTrainer(vocab_size=800, special_tokens=[
        "<pad>", "<s>", "<unk>", "</s>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    bpe.post_processor = processors.TemplateProcessing(single="<s> $A </s>", special_tokens=[("<s>", 1), ("</s>", 3)])
    PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                            unk_token="<unk>").save_pretrained(folder)
    tower = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                 projection_dim=PROJECTION)
    config = CLIPConfig(text_config=CLIPTextConfig(vocab_size=bpe.get_vocab_size(), max_position_embeddings=64,
                                                   pad_token_id=0, bos_token_id=1, eos_token_id=3, **tower).to_dict(),
                        vision_config=CLIPVisionConfig(image_size=32, patch_size=8, **tower).to_dict(),
                        projection_dim=PROJECTION)
    torch.manual_seed(0)
    CLIPModel(config).save_pretrained(folder)
    CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32}).save_pretrained(folder)
    return folder


def unit_vectors(folder: Path, modality: str, rows: Sequence) -> np.ndarray:
    """The model's vectors for `rows` (image bytes or sentences), made outside Beam in one batch,
    normalised: what a brute-force reference scores."""
    from transforms.embeddings import ClipEmbeddings

    handler = ClipEmbeddings(str(folder), modality, len(rows))
    vectors = np.stack(handler.run_inference(list(rows), handler.load_model()))
    return vectors / np.linalg.norm(vectors, axis=1, keepdims=True)
