"""The translation request, and the translator fingerprint that keys the store, from one object.

`RequestTemplate` holds everything that shapes what the translator is sent: model, prompt
templates, sampling, and how a context rides along. It renders the chat-completions body for one
(text, language, strict, context) and its canonical JSON hashes to the fingerprint, so a request
cannot change without the key changing.

Context-enhanced translation (the paper's fine-tuning set): the caption is sent as
"{caption} ### ({context})", the context (a detailed description of the image, or another caption of
it) helping the translator choose words; the answer's bracketed part is cut off. An answer that lost
that structure is not trusted to be the caption alone, and the caption is asked again without
context (transforms/translation_client.py).
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
import re
from typing import Any, Optional

from schemas.languages import LANGUAGE_NAMES

PROMPT_VERSION = "v1"

_PROMPT = "Translate the following English text into {language}. Reply with the translation only.\n\n{text}"
_STRICT_PROMPT = ("Translate the following English text into {language}. Output only the {language} "
                  "translation, on one line, with no quotes, notes or explanations.\n\n{text}")
# The output budget's rule, named in the fingerprint: changing `max_tokens` below means changing this.
_MAX_TOKENS_RULE = "min(cap, base + 4 * ceil(len(text) / 4))"
CONTEXT_FORMAT = "{text} ### ({context})"  # the paper's code's; `text` first, `context` last


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
    # How a request's context is sent with its text ("": contexts are not sent). Left out of the
    # fingerprint when empty, so the stores of templates without context keep their keys.
    context_format: str = ""

    def source(self, text: str, context: Optional[str] = None) -> str:
        """What is translated: the text, or the text and its context in the context format."""
        if context is None or not self.context_format:
            return text
        return self.context_format.format(text=text, context=context)

    def without_context(self, answer: str) -> Optional[str]:
        """The translation of the text alone: the answer up to the context format's separator, when the
        answer kept the format's structure around a context (spacing may differ); None when it lost it."""
        between, after = self.context_format.split("{text}", 1)[1].split("{context}", 1)
        flexible = [r"\s*".join(map(re.escape, part.split())) for part in (between, after)]
        match = re.fullmatch(rf"(?s)\s*(.*?)\s*{flexible[0]}.*{flexible[1]}\s*", answer)
        return match.group(1) if match and match.group(1) else None

    def messages(self, text: str, lang: str, strict: bool = False,
                 context: Optional[str] = None) -> list[dict[str, str]]:
        """Chat messages asking for the translation only: a single user turn, as Gemma's chat template
        has no system role."""
        template = self.strict_prompt if strict else self.prompt
        content = template.format(language=LANGUAGE_NAMES[lang], text=self.source(text, context))
        return [{"role": "user", "content": content}]

    def max_tokens(self, text: str) -> int:
        """Output budget bounded by the source length: a runaway generation costs at most this."""
        return min(self.max_tokens_cap, self.max_tokens_base + 4 * math.ceil(len(text) / 4))

    def body(self, text: str, lang: str, strict: bool = False, context: Optional[str] = None) -> dict[str, Any]:
        """The chat-completions request body (vLLM's OpenAI-compatible API) for one translation; the
        output budget follows what is sent, the context included."""
        return {"model": self.model, "messages": self.messages(text, lang, strict, context),
                "temperature": self.temperature, "stop": list(self.stop),
                "max_tokens": self.max_tokens(self.source(text, context))}

    def canonical_json(self) -> str:
        """Every field, as sorted JSON: what the fingerprint hashes (an empty context_format left out)."""
        fields = dataclasses.asdict(self)
        if not self.context_format:
            del fields["context_format"]
        return json.dumps(fields, sort_keys=True, ensure_ascii=True, separators=(",", ":"))

    @property
    def fingerprint(self) -> str:
        """`<prompt version>-<16 hex of sha256(canonical JSON)>`: a new value means new store entries."""
        digest = hashlib.sha256(self.canonical_json().encode("utf-8")).hexdigest()[:16]
        return f"{self.prompt_version}-{digest}"
