"""The translation request, and the translator fingerprint that keys the store, from one object.

`RequestTemplate` holds everything that shapes what the translator is sent: model, prompt
templates, sampling. It renders the chat-completions body for one (text, language, strict) and its
canonical JSON hashes to the fingerprint, so a request cannot change without the key changing.
Every place that asks the translator (the pipeline's client, benchmarks/vllm_offline.py, the tiny
translator's training) renders through it.

Standard library only, on purpose: the tiny test translator is trained on exactly these prompts in
another environment (the vLLM venv), which imports this module with the repo root on sys.path.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import math
from typing import Any

from schemas.languages import LANGUAGE_NAMES

PROMPT_VERSION = "v1"

_PROMPT = "Translate the following English text into {language}. Reply with the translation only.\n\n{text}"
_STRICT_PROMPT = ("Translate the following English text into {language}. Output only the {language} "
                  "translation, on one line, with no quotes, notes or explanations.\n\n{text}")
# The output budget's rule, named in the fingerprint: changing `max_tokens` below means changing this.
_MAX_TOKENS_RULE = "min(cap, base + 4 * ceil(len(text) / 4))"


@dataclasses.dataclass(frozen=True)
class RequestTemplate:
    """How the translator is asked: every field shapes outputs, so every field is in the fingerprint."""

    model: str
    max_tokens_cap: int = 512
    max_tokens_base: int = 16
    temperature: float = 0.0
    stop: tuple[str, ...] = ("\n",)
    prompt_version: str = PROMPT_VERSION
    prompt: str = _PROMPT
    strict_prompt: str = _STRICT_PROMPT  # the retry after a rejection
    max_tokens_rule: str = _MAX_TOKENS_RULE

    def messages(self, text: str, lang: str, strict: bool = False) -> list[dict[str, str]]:
        """Chat messages asking for the translation only: a single user turn, as Gemma's chat template
        has no system role."""
        template = self.strict_prompt if strict else self.prompt
        return [{"role": "user", "content": template.format(language=LANGUAGE_NAMES[lang], text=text)}]

    def max_tokens(self, text: str) -> int:
        """Output budget bounded by the source length: a runaway generation costs at most this."""
        return min(self.max_tokens_cap, self.max_tokens_base + 4 * math.ceil(len(text) / 4))

    def body(self, text: str, lang: str, strict: bool = False) -> dict[str, Any]:
        """The chat-completions request body (vLLM's OpenAI-compatible API) for one translation."""
        return {"model": self.model, "messages": self.messages(text, lang, strict), "temperature": self.temperature,
                "stop": list(self.stop), "max_tokens": self.max_tokens(text)}

    def canonical_json(self) -> str:
        """Every field, as sorted JSON: what the fingerprint hashes."""
        return json.dumps(dataclasses.asdict(self), sort_keys=True, ensure_ascii=True, separators=(",", ":"))

    @property
    def fingerprint(self) -> str:
        """`<prompt version>-<16 hex of sha256(canonical JSON)>`: a new value means new store entries."""
        digest = hashlib.sha256(self.canonical_json().encode("utf-8")).hexdigest()[:16]
        return f"{self.prompt_version}-{digest}"
