"""Admission: how many translation requests one vLLM server may hold at once, and the slots that
enforce it for every process and thread of a worker VM.

vLLM runs at most `--max-num-seqs` sequences and queues the rest, and a queued request's client
timeout keeps running: more in flight than the server runs turns into timeouts and failed requests,
not throughput (8 SDK processes x 256 requests per batch once put 2,048 on one L4). So the limit is
per server (each endpoint URL, or the managed server), held by the one dispatcher that all SDK
processes of a VM share (transforms/dispatcher.py), never per batch or per process.
"""
from __future__ import annotations

import asyncio
import os
import subprocess
from typing import Mapping, Optional, Sequence

from schemas.config import ServedModel
from schemas.errors import ConfigError

# Endpoints: vLLM's --max-num-seqs default for its OpenAI server on GPUs under 70 GiB (the L4);
# set max_in_flight (translator, recaption) to the servers' own value.
DEFAULT_ENDPOINT_IN_FLIGHT = 256


def _nvidia_smi(*args: str) -> list[str]:
    """nvidia-smi's output lines; none where it is missing or fails (no GPU, no driver)."""
    try:
        done = subprocess.run(["nvidia-smi", *args], capture_output=True, text=True, timeout=30, check=True)
    except (OSError, subprocess.SubprocessError):
        return []
    return [line.strip() for line in done.stdout.splitlines() if line.strip()]


def visible_gpus() -> int:
    """GPUs a server started here can use: CUDA_VISIBLE_DEVICES when it is set (read as CUDA reads
    it: ids up to the first invalid one, so "" and "-1" hide every device), else nvidia-smi's list."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is None:
        return sum(1 for line in _nvidia_smi("-L") if line.startswith("GPU "))
    count = 0
    for device in env.split(","):
        if not device.strip() or device.strip().startswith("-"):
            break
        count += 1
    return count


def vllm_default_max_num_seqs() -> int:
    """vLLM's own default --max-num-seqs for its OpenAI server (vllm/engine/arg_utils.py,
    get_batch_defaults, 0.32): 128 on the CPU backend, 1024 on a GPU of 70 GiB or more other than an
    A100, 256 below that (L4, A10, A100)."""
    if visible_gpus() == 0:
        return 128
    for line in _nvidia_smi("--query-gpu=name,memory.total", "--format=csv,noheader,nounits")[:1]:
        name, _, memory_mib = line.rpartition(",")
        if memory_mib.strip().isdigit() and int(memory_mib) >= 70 * 1024 and "a100" not in name.lower():
            return 1024
    return 256


def max_num_seqs_in(args: Sequence[str]) -> Optional[int]:
    """The value of --max-num-seqs in a server's arguments (either spelling), if given."""
    for i, arg in enumerate(args):
        value = arg.split("=", 1)[1] if arg.startswith("--max-num-seqs=") else (
            args[i + 1] if arg == "--max-num-seqs" and i + 1 < len(args) else None)
        if value is not None and value.isdigit() and int(value) > 0:
            return int(value)
    return None


def in_flight_limit(config: ServedModel) -> int:
    """Requests one server may hold: max_in_flight of the section; else a managed server's --max-num-seqs
    (from its args, or vLLM's default on this machine); else DEFAULT_ENDPOINT_IN_FLIGHT."""
    if config.max_in_flight is not None:
        return config.max_in_flight
    if config.managed is not None:
        return max_num_seqs_in(config.managed.args) or vllm_default_max_num_seqs()
    return DEFAULT_ENDPOINT_IN_FLIGHT


def refuse_one_server_per_process_on_one_gpu(config: ServedModel) -> None:
    """share_across_processes: false starts a server in every SDK process; on a worker with one GPU
    they would all load the model onto it (Dataflow runs one SDK process per vCPU)."""
    if config.managed is not None and not config.managed.share_across_processes and visible_gpus() == 1:
        raise ConfigError(f"{config.SECTION}.managed.share_across_processes",
                          "is false, which starts one vLLM server per SDK process, but this worker has one GPU "
                          "(CUDA_VISIBLE_DEVICES / nvidia-smi): every process would load the model onto it; set it "
                          "to true (one server per worker, shared by its processes)")


class Admission:
    """Slots per server on the dispatcher's event loop: a request takes one before it is sent and gives
    it back when answered. It goes to the server with the most free slots, avoiding the one that just
    failed it where another has room; the peak number in flight is kept per server."""

    def __init__(self, limits: Mapping[str, int]):
        self.limits = dict(limits)
        self.in_flight = {server: 0 for server in limits}
        self.peak = dict(self.in_flight)
        self._slots = {server: asyncio.Semaphore(limit) for server, limit in limits.items()}

    def _choose(self, avoid: Optional[str]) -> str:
        servers: Sequence[str] = [s for s in self.limits if s != avoid] or list(self.limits)
        return max(servers, key=lambda s: self.limits[s] - self.in_flight[s])

    async def acquire(self, avoid: Optional[str] = None) -> str:
        server = self._choose(avoid)
        await self._slots[server].acquire()
        self.in_flight[server] += 1
        self.peak[server] = max(self.peak[server], self.in_flight[server])
        return server

    def release(self, server: str) -> None:
        self.in_flight[server] -= 1
        self._slots[server].release()
