"""The dispatcher: where a worker's requests to a served model go out (translations, or the recaption
stage's descriptions: the client class it is given answers one request). One per worker VM, shared by its SDK
processes and their threads (Beam's multi_process_shared, as RunInference shares a model), owning
the server (the managed one, or the endpoints), the admission slots per server, and a persistent
event loop that every bundle feeds.

Why: a semaphore per batch let every batch of every process put its own `concurrency` on one
server, and a batch that waits for its slowest request left the server draining between batches.
Here batches are tickets on one loop: a bundle submits a batch and carries on, collects the
batches that are done, and the loop keeps each server at its limit across batch, bundle and
process boundaries (transforms/translate_batches.py).
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import dataclasses
import itertools
import threading
from typing import Any, Optional, Sequence

from apache_beam.metrics import Metrics
from apache_beam.utils import multi_process_shared, shared

from schemas.config import ServedModel
from schemas.errors import ConfigError
from schemas.secrets import api_key_from_env
from transforms.admission import Admission, in_flight_limit, refuse_one_server_per_process_on_one_gpu
from transforms.translate import NAMESPACE
from transforms.translation_client import ChatClient, TranslationClient
from transforms.vllm_server import EndpointPool, ManagedVLLMServer

_PER_PROCESS = shared.Shared()  # dispatchers of processes that each run their own managed server


def require_api_key_env(config: ServedModel) -> None:
    """Where the pipeline is launched: the variable `api_key_env` names must be set there (each worker
    reads it again itself, so the key is never part of the serialized pipeline)."""
    if config.api_key_env and api_key_from_env(config.api_key_env) is None:
        raise ConfigError(f"{config.SECTION}.api_key_env", f"names the environment variable {config.api_key_env}, "
                                                    "which is not set (or empty); set it to the server's API key")


def _worker_api_key(config: ServedModel) -> Optional[str]:
    """The key from the variable the config names, read on the worker; None without api_key_env."""
    key = api_key_from_env(config.api_key_env)
    if config.api_key_env and key is None:
        raise RuntimeError(f"{config.SECTION}.api_key_env names the environment variable {config.api_key_env}, "
                           "which is not set (or empty) on this worker")
    return key


@dataclasses.dataclass(frozen=True)
class BatchResult:
    outcomes: list[Any]  # the client's outcomes (TranslationOutcome...), in the order of the batch's requests
    http_retries: int  # requests sent again after an HTTP error or a timeout


def count_result(result: BatchResult, namespace: str = NAMESPACE) -> None:
    """The Beam counters of one answered batch: HTTP requests sent, retries after errors, strict retries."""
    Metrics.counter(namespace, "sent").inc(sum(o.requests_sent for o in result.outcomes))
    Metrics.counter(namespace, "http_retries").inc(result.http_retries)
    Metrics.counter(namespace, "retried").inc(sum(o.strict_retry for o in result.outcomes))


class Dispatcher:
    """Answers batches submitted from any thread (or, through its proxy, any process) on its own
    event loop, one request at a time through `client` (a ChatClient class); starts the managed
    server, if any, when it is made."""

    def __init__(self, config: ServedModel, client: type[ChatClient] = TranslationClient):
        api_key = _worker_api_key(config)
        refuse_one_server_per_process_on_one_gpu(config)
        backend = (ManagedVLLMServer(config.model, config.managed, api_key) if config.managed is not None
                   else EndpointPool(config.endpoints))
        self._limit = in_flight_limit(config)
        self._admission = Admission({server: self._limit for server in backend.servers})
        self._client = client(config, backend, self._admission, api_key)
        for server in backend.servers:
            backend.base_url(server)  # a managed server starts now, and a failed start fails the load
        self._loop = asyncio.new_event_loop()
        threading.Thread(target=self._loop.run_forever, name=f"{config.SECTION}-dispatcher", daemon=True).start()
        self._tickets: dict[int, concurrent.futures.Future] = {}
        self._unanswered: dict[int, int] = {}  # ticket -> its requests without an outcome yet
        self._numbers = itertools.count()
        self._callers: set[int] = set()
        self._progress = threading.Condition()  # notified as requests are answered and batches done

    async def _answer(self, ticket: int, requests: list[Any]) -> BatchResult:
        async def one(request: Any) -> tuple[Any, int]:
            try:
                return await self._client.answer(request)
            finally:
                with self._progress:
                    if ticket in self._unanswered:  # not cancelled
                        self._unanswered[ticket] -= 1
                    self._progress.notify_all()

        done = await asyncio.gather(*(one(r) for r in requests))
        return BatchResult([outcome for outcome, _ in done], sum(retries for _, retries in done))

    def _notify(self, _: concurrent.futures.Future) -> None:
        with self._progress:
            self._progress.notify_all()

    def submit(self, requests: Sequence[Any], caller: int) -> int:
        """Start answering a batch; returns its ticket at once. `caller`: the submitting process's id."""
        with self._progress:
            ticket = next(self._numbers)
            self._callers.add(caller)
            self._unanswered[ticket] = len(requests)
            future = asyncio.run_coroutine_threadsafe(self._answer(ticket, list(requests)), self._loop)
            self._tickets[ticket] = future
        future.add_done_callback(self._notify)
        return ticket

    def wait(self, tickets: Sequence[int], unanswered_at_most: Optional[int] = None) -> None:
        """Block until one of `tickets` is done or, given a number, until at most that many of their
        requests are still unanswered (a caller keeping the servers full submits more then)."""
        def ready() -> bool:
            if any(self._tickets[t].done() for t in tickets):
                return True
            return unanswered_at_most is not None and sum(self._unanswered[t] for t in tickets) <= unanswered_at_most

        with self._progress:
            self._progress.wait_for(ready)

    def collect(self, tickets: Sequence[int]) -> tuple[list[tuple[int, BatchResult]], int]:
        """The results of those of `tickets` that are done (each handed out once), and how many
        requests of the others are still unanswered."""
        with self._progress:
            done = [t for t in tickets if self._tickets[t].done()]
            for ticket in done:
                del self._unanswered[ticket]
            futures = [self._tickets.pop(t) for t in done]
            unanswered = sum(self._unanswered[t] for t in tickets if t in self._unanswered)
        return [(t, future.result()) for t, future in zip(done, futures)], unanswered

    def cancel(self, tickets: Sequence[int]) -> None:
        """Drop batches nobody will collect (a bundle that failed): their requests stop taking slots."""
        with self._progress:
            futures = [self._tickets.pop(t) for t in tickets if t in self._tickets]
            for ticket in tickets:
                self._unanswered.pop(ticket, None)
        for future in futures:
            future.cancel()

    def translate(self, requests: Sequence[Any], caller: int) -> BatchResult:
        """One batch, start to end (RunInference's synchronous call)."""
        ticket = self.submit(requests, caller)
        self.wait([ticket])
        return self.collect([ticket])[0][0][1]

    def status(self) -> dict[str, int]:
        """The limit per server, the most requests one server has held, and how many processes fed it."""
        return {"max_in_flight": self._limit, "peak_in_flight": max(self._admission.peak.values()),
                "processes": len(self._callers)}


def shares_across_processes(config: ServedModel) -> bool:
    """One dispatcher per VM, unless each SDK process runs a managed server of its own."""
    return config.managed is None or config.managed.share_across_processes


def acquire_dispatcher(config: ServedModel, tag: str, client: type[ChatClient] = TranslationClient) -> Dispatcher:
    """The dispatcher for `tag` (one per pipeline and stage): the VM's, through a proxy, or this process's."""
    if shares_across_processes(config):
        return multi_process_shared.MultiProcessShared(lambda: Dispatcher(config, client), tag=tag,
                                                       always_proxy=True).acquire()
    return _PER_PROCESS.acquire(lambda: Dispatcher(config, client), tag=tag)
