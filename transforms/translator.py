"""The translator: a Beam RunInference model handler that sends chat requests to vLLM's
OpenAI-compatible API and checks every output.

Differs from Beam's VLLMChatModelHandler where translation at scale needs it to:
- one failed request does not fail its batch: each request retries HTTP errors and timeouts with
  exponential backoff and full jitter; what still fails is returned as `failed` (not stored, so the
  next run sends it again) instead of raising and losing the batch;
- every output is checked (transforms/translation_checks.py); a rejected one is asked again once
  with a stricter prompt, and a second rejection is final, with its reason;
- per-request `max_tokens` bounded by the source length (Beam has one inference_args dict);
- concurrency is bounded by a semaphore; external endpoints or a managed server (vllm_server.py);
- a failed request keeps its cause: the reason it is counted under (`http_500`, `timeout`,
  `bad_response`...) and one line of the last error (status and the server's body, truncated, with
  the API key masked), which the CLI shows;
- the API key comes from the environment variable `api_key_env` names, read on the worker.
"""
from __future__ import annotations

import asyncio
import json
import random
from typing import Any, Iterable, Optional, Sequence, Union

import openai
import pydantic
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import ModelHandler

from schemas.arrow import STATUS_ACCEPTED, STATUS_REJECTED
from schemas.config import TranslatorConfig
from schemas.errors import ConfigError
from schemas.prompts import max_tokens_for, translation_messages
from schemas.records import STATUS_FAILED, TranslationOutcome, TranslationRequest
from schemas.secrets import api_key_from_env, redact
from transforms.translate import NAMESPACE
from transforms.translation_checks import check_translation
from transforms.vllm_server import EndpointPool, ManagedVLLMServer

_BACKOFF_BASE_S = 0.5
_BACKOFF_CAP_S = 20.0
MAX_DETAIL_CHARS = 300  # one failure's description: what a failed outcome carries and the CLI shows
BAD_RESPONSE = "bad_response"  # a 200 answer that is not a chat completion with a text message

Backend = Union[EndpointPool, ManagedVLLMServer]


class RequestFailed(Exception):
    """A request that exhausted its attempts, or failed for good; `reason` names the last error (the
    counter's suffix) and `detail` describes it in one line."""

    def __init__(self, reason: str, detail: str = ""):
        super().__init__(reason)
        self.reason = reason
        self.detail = detail


class BadResponse(Exception):
    """The server answered, but not with a chat completion holding a text message."""


def _one_line(text: str, limit: int = MAX_DETAIL_CHARS) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= limit else text[:limit - 1] + "…"


def _retryable(error: Exception) -> tuple[bool, str]:
    if isinstance(error, openai.APITimeoutError):
        return True, "timeout"
    if isinstance(error, openai.APIConnectionError):
        return True, "connection_error"
    if isinstance(error, openai.APIStatusError):
        code = error.status_code
        return code == 429 or code >= 500, f"http_{code}"
    if isinstance(error, (BadResponse, json.JSONDecodeError, pydantic.ValidationError,
                          openai.APIResponseValidationError)):
        return False, BAD_RESPONSE
    return False, type(error).__name__


def _describe(error: Exception, timeout_s: float) -> str:
    """One line on what went wrong: the HTTP status and the server's error body, or the error."""
    if isinstance(error, openai.APITimeoutError):
        return f"no answer within request_timeout_s={timeout_s:g} s"
    if isinstance(error, openai.APIConnectionError):
        cause = f": {error.__cause__}" if error.__cause__ is not None else ""
        return f"connection failed{cause}"
    if isinstance(error, openai.APIStatusError):
        try:
            body = error.response.text
        except Exception:  # a streamed or closed body: the client's own message
            body = error.message
        return f"HTTP {error.status_code}: {body}"
    if isinstance(error, BadResponse):
        return str(error)
    if isinstance(error, json.JSONDecodeError):
        return f"the answer is not JSON ({error}): {error.doc[:120]!r}"
    if isinstance(error, (pydantic.ValidationError, openai.APIResponseValidationError)):
        return f"the answer is not a chat completion: {error}"
    return f"{type(error).__name__}: {error}"


def _answer(response: Any) -> str:
    """The text of a chat completion's first choice; BadResponse when there is none."""
    choices = getattr(response, "choices", None)
    if not isinstance(choices, list) or not choices:
        raise BadResponse(f"the answer has no choices: {_one_line(repr(response), 200)}")
    content = getattr(getattr(choices[0], "message", None), "content", None)
    if content is not None and not isinstance(content, str):
        raise BadResponse(f"the answer's message is not text: {_one_line(repr(content), 200)}")
    return content or ""


class VLLMTranslationHandler(ModelHandler[TranslationRequest, TranslationOutcome, Backend]):
    def __init__(self, config: TranslatorConfig):
        """Built where the pipeline is launched: the variable `api_key_env` names must be set there (each
        worker reads it again itself, so the key is never part of the serialized pipeline)."""
        super().__init__()
        if config.api_key_env and api_key_from_env(config.api_key_env) is None:
            raise ConfigError("translator.api_key_env", f"names the environment variable {config.api_key_env}, "
                                                        "which is not set (or empty); set it to the server's API key")
        self.config = config
        self._sent = Metrics.counter(NAMESPACE, "sent")
        self._http_retries = Metrics.counter(NAMESPACE, "http_retries")
        self._strict_retries = Metrics.counter(NAMESPACE, "retried")

    def load_model(self) -> Backend:
        api_key = self._api_key()
        if self.config.managed is not None:
            return ManagedVLLMServer(self.config.model, self.config.managed, api_key)
        return EndpointPool(self.config.endpoints)

    def _api_key(self) -> Optional[str]:
        """The key from the environment variable the config names (read here, on the worker, so it
        is never part of the pipeline's serialized graph); None without api_key_env."""
        name = self.config.api_key_env
        key = api_key_from_env(name)
        if name and key is None:
            raise RuntimeError(f"translator.api_key_env names the environment variable {name}, "
                               "which is not set (or empty) on this worker")
        return key

    def share_model_across_processes(self) -> bool:
        return self.config.managed is not None and self.config.managed.share_across_processes

    def batch_elements_kwargs(self) -> dict[str, Any]:
        # Fixed-size batches: BatchElements would otherwise start at 1 and grow, starving vLLM.
        return {"min_batch_size": self.config.batch_size, "max_batch_size": self.config.batch_size}

    def get_metrics_namespace(self) -> str:
        return NAMESPACE

    def run_inference(self, batch: Sequence[TranslationRequest], model: Backend,
                      inference_args: Optional[dict[str, Any]] = None) -> Iterable[TranslationOutcome]:
        return asyncio.run(self._translate_batch(batch, model))

    async def _translate_batch(self, batch: Sequence[TranslationRequest], backend: Backend) -> list[TranslationOutcome]:
        limit = asyncio.Semaphore(self.config.concurrency)
        clients: dict[str, openai.AsyncOpenAI] = {}
        api_key = self._api_key()

        def client_for(url: str) -> openai.AsyncOpenAI:
            if url not in clients:
                clients[url] = openai.AsyncOpenAI(base_url=url, api_key=api_key or "EMPTY", max_retries=0,
                                                  timeout=self.config.request_timeout_s)
            return clients[url]

        def failure(error: Exception, reason: str) -> RequestFailed:
            detail = _one_line(redact(_describe(error, self.config.request_timeout_s), [api_key]))
            return RequestFailed(reason, detail)

        async def complete(request: TranslationRequest, strict: bool, sent: list[int]) -> str:
            error_reason, error_detail = "no_attempt", ""
            for attempt in range(self.config.max_attempts):
                if attempt:
                    self._http_retries.inc()
                    await asyncio.sleep(random.uniform(0, min(_BACKOFF_CAP_S, _BACKOFF_BASE_S * 2 ** attempt)))
                url = await asyncio.to_thread(backend.base_url)
                try:
                    self._sent.inc()
                    sent[0] += 1
                    async with limit:
                        response = await client_for(url).chat.completions.create(
                            model=self.config.model, temperature=0.0, stop=["\n"],
                            max_tokens=max_tokens_for(request.text, self.config.max_tokens_cap),
                            messages=translation_messages(request.text, request.lang, strict=strict))
                    return _answer(response)
                except Exception as error:  # sorted into retryable or final just below
                    retry, error_reason = _retryable(error)
                    if not retry:
                        raise failure(error, error_reason) from error
                    error_detail = failure(error, error_reason).detail
                    await asyncio.to_thread(backend.recover, url)
            raise RequestFailed(error_reason, error_detail)

        async def translate(request: TranslationRequest) -> TranslationOutcome:
            sent = [0]
            try:
                output = await complete(request, False, sent)
                result = check_translation(request.text, output, request.lang)
                if result.text is not None:
                    return TranslationOutcome(request, STATUS_ACCEPTED, result.text, requests_sent=sent[0])
                self._strict_retries.inc()
                output = await complete(request, True, sent)
                result = check_translation(request.text, output, request.lang)
            except RequestFailed as failed:  # raw_output: the cause, in one line (failures are never stored)
                return TranslationOutcome(request, STATUS_FAILED, reason=failed.reason, raw_output=failed.detail,
                                          requests_sent=sent[0])
            if result.text is not None:
                return TranslationOutcome(request, STATUS_ACCEPTED, result.text, strict_retry=True,
                                          requests_sent=sent[0])
            return TranslationOutcome(request, STATUS_REJECTED, reason=result.reason, raw_output=output,
                                      strict_retry=True, requests_sent=sent[0])

        try:
            return list(await asyncio.gather(*(translate(r) for r in batch)))
        finally:
            for client in clients.values():
                await client.close()
