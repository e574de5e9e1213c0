"""Tokenizers trained here, for models trained from scratch where no hub tokenizer can be downloaded
(the tests, the toy world): a Florence-2-like byte-level BPE for the encoder (<s> ... </s>) and a
Gemma-2-like Metaspace BPE for the decoder (<pad>=0, <eos>=1, <bos>=2), saved as transformers fast
tokenizers so a training config names their folders like hub ids."""
from __future__ import annotations

from pathlib import Path
from typing import Iterable


def train_tokenizers(texts: Iterable[str], root: Path, encoder_vocab: int = 1200, decoder_vocab: int = 1500
                     ) -> tuple[Path, Path]:
    """(encoder tokenizer folder, decoder tokenizer folder) under `root`; folders already there are kept."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    texts = list(texts)
    encoder_dir, decoder_dir = root / "encoder-tokenizer", root / "decoder-tokenizer"
    if not encoder_dir.exists():
        bart = Tokenizer(models.BPE())
        bart.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        bart.decoder = decoders.ByteLevel()
        bart.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=encoder_vocab, special_tokens=[
            "<s>", "<pad>", "</s>", "<unk>"], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
        bart.post_processor = processors.TemplateProcessing(single="<s> $A </s>", special_tokens=[
            ("<s>", 0), ("</s>", 2)])
        PreTrainedTokenizerFast(tokenizer_object=bart, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                unk_token="<unk>").save_pretrained(encoder_dir)
    if not decoder_dir.exists():
        gemma = Tokenizer(models.BPE(unk_token="<unk>"))
        gemma.pre_tokenizer = pre_tokenizers.Metaspace()
        gemma.decoder = decoders.Metaspace()
        gemma.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=decoder_vocab, special_tokens=[
            "<pad>", "<eos>", "<bos>", "<unk>"]))
        PreTrainedTokenizerFast(tokenizer_object=gemma, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
                                unk_token="<unk>").save_pretrained(decoder_dir)
    return encoder_dir, decoder_dir
