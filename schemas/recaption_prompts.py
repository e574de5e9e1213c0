"""The recaption request, and the fingerprint that keys the description store, from one object.

`DescriptionTemplate` holds everything that shapes a description: the VLM, the prompt, the answer
prefix, sampling and how the image is prepared (longest side, JPEG quality). It renders the
chat-completions body for one image and its canonical JSON hashes to the fingerprint, so a request
cannot change without the key changing. The defaults are the paper's fine-tuning set
(llama3-llava-next-8b, temperature 0, 64 new tokens, the prompt and prefix below); the image size is ours
(LLaVA-NeXT tiles at most 672 px, so 768 loses nothing).

Standard library only, on purpose: the tiny test VLM is built in the vLLM venv
(scripts/build_tiny_vlm.py), which imports this module with the repo root on sys.path.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
from typing import Any, Optional

DESCRIPTION_PROMPT_VERSION = "d1"
# The paper's lmms-lab/llama3-llava-next-8b, converted to transformers' LlavaNext format, which vLLM
# serves (the lmms-lab repository holds the original LLaVA code's LlavaLlamaForCausalLM checkpoint).
DEFAULT_MODEL = "llava-hf/llama3-llava-next-8b-hf"
DEFAULT_PROMPT = ("Describe the image in detail. If you see text or objects, describe them in detail, as well as "
                  "all other aspects of the foreground and background.")
DEFAULT_ANSWER_PREFIX = "The image shows"
CAPTION_FIELD = "{caption}"  # a prompt holding it gets the source's own (short) caption there


@dataclasses.dataclass(frozen=True)
class DescriptionTemplate:
    """How the VLM is asked: every field shapes outputs, so every field is in the fingerprint."""

    model: str = DEFAULT_MODEL
    prompt: str = DEFAULT_PROMPT
    answer_prefix: str = DEFAULT_ANSWER_PREFIX
    max_tokens: int = 64
    temperature: float = 0.0
    image_max_side: int = 768  # the image is resized to fit (never enlarged) and sent as JPEG
    jpeg_quality: int = 90
    prompt_version: str = DESCRIPTION_PROMPT_VERSION

    @property
    def uses_caption(self) -> bool:
        return CAPTION_FIELD in self.prompt

    def prompt_text(self, caption: Optional[str]) -> str:
        """The user's text: the prompt, with the short caption where it asks for one."""
        return self.prompt.replace(CAPTION_FIELD, caption or "") if self.uses_caption else self.prompt

    def messages(self, image_url: str, caption: Optional[str] = None) -> list[dict[str, Any]]:
        """The image as an OpenAI image part, then the prompt; an assistant turn started with the
        answer prefix, which the model continues (vLLM's continue_final_message)."""
        user = [{"type": "image_url", "image_url": {"url": image_url}},
                {"type": "text", "text": self.prompt_text(caption)}]
        turns: list[dict[str, Any]] = [{"role": "user", "content": user}]
        if self.answer_prefix:
            turns.append({"role": "assistant", "content": self.answer_prefix})
        return turns

    def body(self, image_url: str, caption: Optional[str] = None) -> dict[str, Any]:
        """The chat-completions request body (vLLM's OpenAI-compatible API) for one image."""
        continued = bool(self.answer_prefix)
        return {"model": self.model, "messages": self.messages(image_url, caption), "temperature": self.temperature,
                "max_tokens": self.max_tokens,
                "extra_body": {"continue_final_message": continued, "add_generation_prompt": not continued}}

    def description(self, answer: str) -> str:
        """The description as the paper keeps it: the prefix, then the model's continuation."""
        if not self.answer_prefix:
            return answer.strip()
        answer = answer.rstrip()
        joiner = "" if not answer or answer[0].isspace() or answer[0] in ",.;:" else " "
        return (self.answer_prefix + joiner + answer).strip()

    def canonical_json(self) -> str:
        return json.dumps(dataclasses.asdict(self), sort_keys=True, ensure_ascii=True, separators=(",", ":"))

    @property
    def fingerprint(self) -> str:
        """`<prompt version>-<16 hex of sha256(canonical JSON)>`: a new value means new store entries."""
        digest = hashlib.sha256(self.canonical_json().encode("utf-8")).hexdigest()[:16]
        return f"{self.prompt_version}-{digest}"
