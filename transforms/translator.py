"""The translator: a Beam RunInference model handler that sends chat requests to vLLM's
OpenAI-compatible API and checks every output.

Differs from Beam's VLLMChatModelHandler where translation at scale needs it to:
- one failed request does not fail its batch: each request retries HTTP errors and timeouts with
  exponential backoff and full jitter; what still fails is returned as `failed` (not stored, so the
  next run sends it again) instead of raising and losing the batch;
- every output is checked (transforms/translation_checks.py); a rejected one is asked again once
  with a stricter prompt, and a second rejection is final, with its reason;
- per-request `max_tokens` bounded by the source length (Beam has one inference_args dict);
- concurrency is bounded by a semaphore; external endpoints or a managed server (vllm_server.py).
"""
from __future__ import annotations

import asyncio
import random
from typing import Any, Iterable, Optional, Sequence, Union

import openai
from apache_beam.metrics import Metrics
from apache_beam.ml.inference.base import ModelHandler

from schemas.arrow import STATUS_ACCEPTED, STATUS_REJECTED
from schemas.config import TranslatorConfig
from schemas.prompts import max_tokens_for, translation_messages
from schemas.records import STATUS_FAILED, TranslationOutcome, TranslationRequest
from transforms.translate import NAMESPACE
from transforms.translation_checks import check_translation
from transforms.vllm_server import EndpointPool, ManagedVLLMServer

_BACKOFF_BASE_S = 0.5
_BACKOFF_CAP_S = 20.0

Backend = Union[EndpointPool, ManagedVLLMServer]


class RequestFailed(Exception):
    """A request that exhausted its attempts; `reason` names the last error."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


def _retryable(error: Exception) -> tuple[bool, str]:
    if isinstance(error, openai.APITimeoutError):
        return True, "timeout"
    if isinstance(error, openai.APIConnectionError):
        return True, "connection_error"
    if isinstance(error, openai.APIStatusError):
        code = error.status_code
        return code == 429 or code >= 500, f"http_{code}"
    return False, type(error).__name__


class VLLMTranslationHandler(ModelHandler[TranslationRequest, TranslationOutcome, Backend]):
    def __init__(self, config: TranslatorConfig):
        super().__init__()
        self.config = config
        self._sent = Metrics.counter(NAMESPACE, "sent")
        self._http_retries = Metrics.counter(NAMESPACE, "http_retries")
        self._strict_retries = Metrics.counter(NAMESPACE, "retried")

    def load_model(self) -> Backend:
        if self.config.managed is not None:
            return ManagedVLLMServer(self.config.model, self.config.managed)
        return EndpointPool(self.config.endpoints)

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

        def client_for(url: str) -> openai.AsyncOpenAI:
            if url not in clients:
                clients[url] = openai.AsyncOpenAI(base_url=url, api_key="EMPTY", max_retries=0,
                                                  timeout=self.config.request_timeout_s)
            return clients[url]

        async def complete(request: TranslationRequest, strict: bool, sent: list[int]) -> str:
            error_reason = "no_attempt"
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
                    return response.choices[0].message.content or ""
                except Exception as error:  # sorted into retryable or final just below
                    retry, error_reason = _retryable(error)
                    if not retry:
                        raise RequestFailed(error_reason) from error
                    await asyncio.to_thread(backend.recover, url)
            raise RequestFailed(error_reason)

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
            except RequestFailed as failure:
                return TranslationOutcome(request, STATUS_FAILED, reason=failure.reason, requests_sent=sent[0])
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
