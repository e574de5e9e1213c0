"""One translation over vLLM's OpenAI-compatible API, on the dispatcher's event loop: a slot from
admission, the chat request with retries, the output checks, one retry with a stricter prompt. The
request machinery (ChatClient) also carries the recaption stage's requests (transforms/description_client.py).

Differs from Beam's VLLMChatModelHandler where translation at scale needs it to:
- one failed request does not fail its batch: each request retries HTTP errors and timeouts with
  exponential backoff and full jitter; what still fails is returned as `failed` (not stored, so the
  next run sends it again) instead of raising and losing the batch;
- every output is checked (transforms/translation_checks.py); a rejected one is asked again once
  with a stricter prompt, and a second rejection is final, with its reason;
- a request with a context, where the translator sends contexts, is sent as "{text} ### ({context})"
  and the answer's bracketed part is cut off; an answer that lost that structure is asked again
  without the context (`context_fallback`), as the paper's code does, and so is the strict retry of
  a request whose first answer needed that;
- per-request `max_tokens` bounded by the source length (Beam has one inference_args dict);
- a request holds a server slot only while it is sent and answered (transforms/admission.py); the
  backoff between attempts and the checks hold none. The checks run on the loop's thread: langdetect
  loads its profiles on first use without a lock, and two threads doing that at once corrupt them
  (seen here: good translations rejected as wrong_language, then asked again with the strict prompt);
- a failed request keeps its cause: the reason it is counted under (`http_500`, `timeout`,
  `bad_response`...) and one line of the last error (status and the server's body, truncated, with
  the API key masked), which the CLI shows.
"""
from __future__ import annotations

import asyncio
import json
import random
from typing import Any, Optional, Union

import openai
import pydantic

from schemas.arrow import STATUS_ACCEPTED, STATUS_REJECTED
from schemas.config import ServedModel, TranslatorConfig
from schemas.records import STATUS_FAILED, TranslationOutcome, TranslationRequest
from schemas.secrets import redact
from transforms.admission import Admission
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


class ChatClient:
    """Chat completions on one event loop, for any request kind (TranslationClient, the recaption
    stage's DescriptionClient): admission slots, retries with backoff, failure reasons. Its HTTP
    clients (one per base URL, with their connection pools) live as long as it does, not one batch.
    A subclass's `answer(request)` returns (outcome, HTTP retries); the dispatcher calls it."""

    def __init__(self, config: ServedModel, backend: Backend, admission: Admission, api_key: Optional[str]):
        self.config = config
        self.backend = backend
        self.admission = admission
        self._api_key = api_key
        self._clients: dict[str, openai.AsyncOpenAI] = {}

    def _client(self, url: str) -> openai.AsyncOpenAI:
        if url not in self._clients:
            self._clients[url] = openai.AsyncOpenAI(base_url=url, api_key=self._api_key or "EMPTY", max_retries=0,
                                                    timeout=self.config.request_timeout_s)
        return self._clients[url]

    def _failure(self, error: Exception, reason: str) -> RequestFailed:
        detail = _one_line(redact(_describe(error, self.config.request_timeout_s), [self._api_key]))
        return RequestFailed(reason, detail)

    async def _complete(self, body: dict[str, Any], sent: list[int]) -> Any:
        """The server's chat completion for `body`, after up to max_attempts attempts; `sent` counts
        [requests, retries]."""
        error_reason, error_detail, failed_server = "no_attempt", "", None
        for attempt in range(self.config.max_attempts):
            if attempt:
                sent[1] += 1
                await asyncio.sleep(random.uniform(0, min(_BACKOFF_CAP_S, _BACKOFF_BASE_S * 2 ** attempt)))
            server = await self.admission.acquire(avoid=failed_server)
            try:
                url = await asyncio.to_thread(self.backend.base_url, server)
                sent[0] += 1
                response = await self._client(url).chat.completions.create(**body)
                _answer(response)  # a 200 that is no chat completion fails here, with its reason
                return response
            except Exception as error:  # sorted into retryable or final just below
                retry, error_reason = _retryable(error)
                if not retry:
                    raise self._failure(error, error_reason) from error
                error_detail, failed_server = self._failure(error, error_reason).detail, server
            finally:
                self.admission.release(server)
            await asyncio.to_thread(self.backend.recover, failed_server, url)
        raise RequestFailed(error_reason, error_detail)

    async def close(self) -> None:
        for client in self._clients.values():
            await client.close()


class TranslationClient(ChatClient):
    """Translates requests one by one: the checks, one retry with a stricter prompt, and with
    translator.context the request's context, falling back to the text alone when the answer loses it."""

    def __init__(self, config: TranslatorConfig, backend: Backend, admission: Admission, api_key: Optional[str]):
        super().__init__(config, backend, admission, api_key)
        self._request = config.request  # the body sent is the one the store fingerprint hashes

    async def _translation(self, request: TranslationRequest, strict: bool, sent: list[int],
                           context: Optional[str] = None) -> str:
        return _answer(await self._complete(self._request.body(request.text, request.lang, strict, context), sent))

    async def _ask(self, request: TranslationRequest, strict: bool, sent: list[int],
                   with_context: bool) -> tuple[str, bool]:
        """The answer for the text alone, and whether it came with the context: with the context, its
        bracketed part cut off; asked again without when it lost that part (or `with_context` is false)."""
        if with_context:
            answer = self._request.without_context(await self._translation(request, strict, sent, request.context))
            if answer is not None:
                return answer, True
        return await self._translation(request, strict, sent), False

    async def answer(self, request: TranslationRequest) -> tuple[TranslationOutcome, int]:
        """The request's outcome, and how many of its HTTP requests were retries after an error. The
        raw output kept is the answer the checks judged (a context's part cut off), so a stored verdict
        can be judged again from it alone (transforms/store_verdicts.py)."""
        sent = [0, 0]
        wants_context = request.context is not None and bool(self._request.context_format)
        try:
            output, kept = await self._ask(request, False, sent, wants_context)
            fallback = wants_context and not kept
            result = check_translation(request.text, output, request.lang)
            if result.text is not None:
                return TranslationOutcome(request, STATUS_ACCEPTED, result.text, raw_output=output,
                                          requests_sent=sent[0], context_fallback=fallback), sent[1]
            output, kept = await self._ask(request, True, sent, wants_context and not fallback)
            fallback = wants_context and not kept
            result = check_translation(request.text, output, request.lang)
        except RequestFailed as failed:  # raw_output: the cause, in one line (failures are never stored)
            return TranslationOutcome(request, STATUS_FAILED, reason=failed.reason, raw_output=failed.detail,
                                      requests_sent=sent[0]), sent[1]
        if result.text is not None:
            return TranslationOutcome(request, STATUS_ACCEPTED, result.text, raw_output=output, strict_retry=True,
                                      requests_sent=sent[0], context_fallback=fallback), sent[1]
        return TranslationOutcome(request, STATUS_REJECTED, reason=result.reason, raw_output=output,
                                  strict_retry=True, requests_sent=sent[0], context_fallback=fallback), sent[1]
