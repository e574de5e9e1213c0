"""Train a tiny Gemma-2 translator that memorizes a few hundred Multi30K en->de / en->fr pairs, so
tests can run the real vLLM server and get real German and French for known captions.

Everything is built here: a byte-level BPE tokenizer trained on the prompts and targets, a Gemma-2
chat template, and a small Gemma2ForCausalLM trained with the loss on the answer only. The prompts
are exactly the pipeline's (schemas/prompts.py), both the normal and the strict retry variant.

    .venv-vllm/bin/python scripts/train_tiny_translator.py --out DIR [--pairs 128] [--untrained]

Writes DIR/{config.json, model.safetensors, tokenizer files, generation_config.json, pairs.jsonl}.
"""
from __future__ import annotations

import argparse
import gzip
import json
import random
import sys
import time
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import Gemma2Config, Gemma2ForCausalLM, GenerationConfig, PreTrainedTokenizerFast

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from schemas.prompts import RequestTemplate  # noqa: E402  (standard library only)

SPECIAL = ["<pad>", "<bos>", "<eos>", "<start_of_turn>", "<end_of_turn>"]
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<start_of_turn>"
    "{{ 'model' if message['role'] == 'assistant' else message['role'] }}\n"
    "{{ message['content'] }}<end_of_turn>\n{% endfor %}"
    "{% if add_generation_prompt %}<start_of_turn>model\n{% endif %}")
LANGS = ("de", "fr")
# The prompts only: a template's messages do not depend on the model name.
translation_messages = RequestTemplate(model="tiny-translator").messages


def read_pairs(data: Path, n: int) -> list[tuple[str, dict[str, str]]]:
    """The first n training sentences of 4-12 words (and > 25 characters, the pipeline's caption
    rule) with their German and French references."""
    def lines(code: str) -> list[str]:
        with gzip.open(data / "raw" / f"train.{code}.gz", "rt", encoding="utf-8") as f:
            return [line.strip() for line in f]
    english, refs = lines("en"), {lang: lines(lang) for lang in LANGS}
    chosen, seen = [], set()
    for i, en in enumerate(english):
        if 4 <= len(en.split()) <= 12 and len(en) > 25 and en not in seen and "\n" not in en:
            seen.add(en)
            chosen.append((en, {lang: refs[lang][i] for lang in LANGS}))
            if len(chosen) == n:
                break
    return chosen


def build_tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    core = Tokenizer(models.BPE(unk_token=None))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    core.train_from_iterator(texts, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<bos>", eos_token="<end_of_turn>",
                                        pad_token="<pad>", additional_special_tokens=["<start_of_turn>", "<eos>"])
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def examples(pairs, tokenizer) -> list[tuple[list[int], int]]:
    """(token ids, prompt length) for each (sentence, language). Only the first prompt: the strict
    retry is sent after a rejection, which the memorized pairs do not get."""
    out = []
    for en, refs in pairs:
        for lang in LANGS:
            prompt = tokenizer.apply_chat_template(translation_messages(en, lang), tokenize=False,
                                                   add_generation_prompt=True)
            prompt_ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
            answer_ids = tokenizer(refs[lang], add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
            out.append((prompt_ids + answer_ids, len(prompt_ids)))
    return out


def train(model, data, pad_id: int, epochs: int, batch_size: int, lr: float) -> None:
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    steps = epochs * ((len(data) + batch_size - 1) // batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=steps, pct_start=0.05)
    rng = random.Random(0)
    model.train()
    for epoch in range(epochs):
        rng.shuffle(data)
        total = 0.0
        for start in range(0, len(data), batch_size):
            batch = data[start:start + batch_size]
            width = max(len(ids) for ids, _ in batch)
            input_ids = torch.full((len(batch), width), pad_id)
            labels = torch.full((len(batch), width), -100)
            mask = torch.zeros((len(batch), width), dtype=torch.long)
            for row, (ids, prompt_len) in enumerate(batch):
                input_ids[row, :len(ids)] = torch.tensor(ids)
                labels[row, prompt_len:len(ids)] = torch.tensor(ids[prompt_len:])
                mask[row, :len(ids)] = 1
            loss = model(input_ids=input_ids, attention_mask=mask, labels=labels).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            optimizer.step()
            schedule.step()
            optimizer.zero_grad()
            total += loss.item() * len(batch)
        if epoch % 10 == 0 or epoch == epochs - 1:
            print(f"epoch {epoch:4d}  loss {total / len(data):.4f}", flush=True)


@torch.no_grad()
def exact_match(model, tokenizer, pairs) -> float:
    model.eval()
    hits = total = 0
    for en, refs in pairs:
        for lang in LANGS:
            prompt = tokenizer.apply_chat_template(translation_messages(en, lang), tokenize=False,
                                                   add_generation_prompt=True)
            ids = tokenizer(prompt, add_special_tokens=False, return_tensors="pt")["input_ids"]
            out = model.generate(ids, max_new_tokens=64, do_sample=False, eos_token_id=tokenizer.eos_token_id)
            text = tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True).strip()
            hits += text == refs[lang]
            total += 1
    return hits / total


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "multi30k"))
    parser.add_argument("--pairs", type=int, default=128)
    parser.add_argument("--epochs", type=int, default=80)
    parser.add_argument("--untrained", action="store_true", help="save the random model: its output is garbage")
    parser.add_argument("--hidden", type=int, default=128, help="model width (a larger random model for benchmarks)")
    parser.add_argument("--layers", type=int, default=3)
    args = parser.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(max(1, torch.get_num_threads()))
    pairs = read_pairs(Path(args.data), args.pairs)
    corpus = [translation_messages(en, lang, strict)[0]["content"] for en, _ in pairs for lang in LANGS
              for strict in (False, True)] + [refs[lang] for _, refs in pairs for lang in LANGS]
    tokenizer = build_tokenizer(corpus, vocab_size=3000)
    # head_dim 32: vLLM's CPU attention kernels support only some head sizes (40 fails).
    config = Gemma2Config(vocab_size=len(tokenizer), hidden_size=args.hidden, intermediate_size=4 * args.hidden,
                          num_hidden_layers=args.layers, num_attention_heads=args.hidden // 32,
                          num_key_value_heads=max(1, args.hidden // 64), head_dim=32, max_position_embeddings=512,
                          sliding_window=512, query_pre_attn_scalar=32, pad_token_id=tokenizer.pad_token_id,
                          bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                          torch_dtype="float32")
    model = Gemma2ForCausalLM(config)
    started = time.time()
    if not args.untrained:
        train(model, examples(pairs, tokenizer), tokenizer.pad_token_id, args.epochs, batch_size=16, lr=3e-3)
        print(f"trained in {time.time() - started:.0f} s; exact match (HF greedy): "
              f"{exact_match(model, tokenizer, pairs):.3f}", flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model.generation_config = GenerationConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                               pad_token_id=tokenizer.pad_token_id)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    with open(out / "pairs.jsonl", "w", encoding="utf-8") as f:
        for en, refs in pairs:
            for lang in LANGS:
                f.write(json.dumps({"en": en, "lang": lang, "reference": refs[lang]}, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
