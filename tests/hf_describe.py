"""transformers' greedy `generate` on a LLaVA(-NeXT) folder, for the recaption tests' reference answer.
Run with the vLLM venv's python (the project venv has no LLaVA processor stack beside vLLM's torch):

    .venv-vllm/bin/python tests/hf_describe.py MODEL_DIR IMAGE_FILE TEMPLATE_JSON

IMAGE_FILE holds the exact bytes the pipeline sent; TEMPLATE_JSON is a DescriptionTemplate's
canonical JSON. Prints {"answer": ...}: the continuation after the answer prefix, special tokens dropped.
"""
from __future__ import annotations

import io
import json
import sys
from pathlib import Path

import torch
from PIL import Image
from transformers import AutoProcessor, LlavaNextForConditionalGeneration

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from schemas.recaption_prompts import DescriptionTemplate  # noqa: E402


def main() -> None:
    model_dir, image_file, template_json = sys.argv[1:4]
    template = DescriptionTemplate(**json.loads(template_json))
    processor = AutoProcessor.from_pretrained(model_dir)
    model = LlavaNextForConditionalGeneration.from_pretrained(model_dir, dtype=torch.float32).eval()
    image = Image.open(io.BytesIO(Path(image_file).read_bytes())).convert("RGB")
    messages = template.messages("unused")
    messages[0]["content"][0] = {"type": "image"}
    prompt = processor.apply_chat_template(messages, continue_final_message=bool(template.answer_prefix),
                                           add_generation_prompt=not template.answer_prefix)
    inputs = processor(images=image, text=prompt, return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=template.max_tokens, do_sample=False)
    answer = processor.tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True)
    print(json.dumps({"answer": answer, "prompt_tokens": int(inputs["input_ids"].shape[1])}))


if __name__ == "__main__":
    main()
