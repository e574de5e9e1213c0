"""Versioned translation prompts and the translator fingerprint that keys the store.

Standard library only, on purpose: the tiny test translator is trained on exactly these prompts in
another environment (the vLLM venv), which imports this module with the repo root on sys.path.
"""
from __future__ import annotations

import hashlib
import json
import math
from typing import Any

from schemas.languages import LANGUAGE_NAMES

PROMPT_VERSION = "v1"

_PROMPT = "Translate the following English text into {language}. Reply with the translation only.\n\n{text}"
_STRICT_PROMPT = ("Translate the following English text into {language}. Output only the {language} "
                  "translation, on one line, with no quotes, notes or explanations.\n\n{text}")


def translation_messages(text: str, lang: str, strict: bool = False) -> list[dict[str, str]]:
    """Chat messages asking for the translation only; `strict` is the retry after a rejection.

    A single user turn: Gemma's chat template has no system role.
    """
    template = _STRICT_PROMPT if strict else _PROMPT
    return [{"role": "user", "content": template.format(language=LANGUAGE_NAMES[lang], text=text)}]


def max_tokens_for(text: str, cap: int = 512) -> int:
    """Output budget bounded by the source length: a runaway generation costs at most this."""
    return min(cap, 16 + 4 * math.ceil(len(text) / 4))


def translator_fingerprint(model: str, sampling: dict[str, Any]) -> str:
    """Model id + prompt version + sampling settings: a new value means new store entries."""
    payload = json.dumps({"model": model, "prompt_version": PROMPT_VERSION, "sampling": sampling},
                         sort_keys=True)
    return f"{PROMPT_VERSION}-{hashlib.sha256(payload.encode('utf-8')).hexdigest()[:16]}"
