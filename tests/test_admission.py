"""Admission per server (issue 13): one limit per server, shared by every SDK process and thread of a
worker, reached and never passed, across batch boundaries; a busy server is never restarted by a
health check; one server per process on one GPU is refused. Against tests/fault_server.py, a
loopback server that records the peak and the time-weighted mean number of requests in flight; the
real vLLM server's own gauge is read in test_vllm_translate.py."""
from __future__ import annotations

import json
import socket
import sys
import urllib.request

import pytest

from tests.test_translate_faults import FAULT_SERVER, make_corpus, run_translate, start_fault_server

TWO_PROCESSES = ("--direct_num_workers", "2", "--direct_running_mode", "multi_processing")


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """40 images with 2 real English captions each: 160 requests for de + fr."""
    return make_corpus(tmp_path_factory.mktemp("corpus"), 40)


def server_stats(url: str) -> dict:
    with urllib.request.urlopen(url.removesuffix("/v1") + "/stats", timeout=10) as r:
        return json.loads(r.read())


def translated_all(summary: dict, n: int) -> bool:
    return summary["translated"] == n and not any(k.startswith("failed_") for k in summary)


def test_two_sdk_processes_put_at_most_max_in_flight_on_one_server(tmp_path, corpus):
    """Before: a semaphore per batch, so 2 processes x `concurrency` reached one server."""
    pairs, captions = corpus
    proc, url = start_fault_server(pairs, tmp_path / "count", "--delay", "0.2")
    try:
        summary, gauges = run_translate(tmp_path, captions, {"model": "fault", "endpoints": [url], "batch_size": 8,
                                                             "max_in_flight": 4}, *TWO_PROCESSES)
        stats = server_stats(url)
    finally:
        proc.kill()
    assert translated_all(summary, 160)
    assert gauges["server_processes"] == 2  # both SDK processes fed the one dispatcher of this machine
    assert stats["peak_in_flight"] == gauges["server_peak_in_flight"] == 4  # the limit, reached, never passed


def test_one_bundle_keeps_the_server_at_its_limit_across_batches(tmp_path, corpus):
    """Before: a batch waited for its slowest request, so at most batch_size were in flight, and none
    while one batch drained and the next had not started."""
    pairs, captions = corpus
    proc, url = start_fault_server(pairs, tmp_path / "count", "--delay", "0.5")
    try:
        summary, _ = run_translate(tmp_path, captions, {"model": "fault", "endpoints": [url], "batch_size": 4,
                                                        "max_in_flight": 8})
        stats = server_stats(url)
    finally:
        proc.kill()
    assert translated_all(summary, 160)
    assert stats["peak_in_flight"] == 8  # two batches' worth at once
    assert stats["mean_in_flight"] >= 0.85 * 8, stats  # and kept there, start-up and the last batch included


def test_a_busy_server_answering_health_late_is_not_restarted(tmp_path, corpus):
    """Two requests hang past request_timeout_s; their retries ask whether to restart the server,
    whose /health now takes 10 s (it is busy): it is alive and listening, so it is left to work."""
    pairs, captions = corpus
    starts = tmp_path / "starts"
    managed = {"command": [sys.executable, FAULT_SERVER], "startup_timeout_s": 30, "share_across_processes": False,
               "args": ["--pairs", str(pairs), "--starts-file", str(starts), "--slow-health", "10",
                        "--hang-first", "2", "--delay", "0.3"]}
    summary, _ = run_translate(tmp_path, captions[:5], {"model": "fault", "managed": managed, "batch_size": 8,
                                                        "max_in_flight": 4, "request_timeout_s": 1.5})
    assert len(starts.read_text().splitlines()) == 1  # started once, never restarted
    assert translated_all(summary, 20) and summary["sent"] >= 22  # the hung requests were sent again


def test_only_a_port_that_refuses_connections_counts_as_dead():
    from transforms.vllm_server import _refuses_connections

    with socket.socket() as busy:  # listening, never accepting: a server too busy to answer
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        assert not _refuses_connections(port)
    assert _refuses_connections(port)  # closed: nothing listens


@pytest.mark.parametrize("devices, gpus", [("", 0), ("-1", 0), ("0", 1), ("0,1", 2), ("1,-1,2", 1)])
def test_visible_gpus_reads_cuda_visible_devices_as_cuda_does(monkeypatch, devices, gpus):
    from transforms.admission import visible_gpus

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", devices)
    assert visible_gpus() == gpus


def test_one_server_per_process_on_a_worker_with_one_gpu_is_refused(monkeypatch):
    from schemas.config import ManagedServer, TranslatorConfig
    from schemas.errors import ConfigError
    from transforms.dispatcher import Dispatcher

    config = TranslatorConfig(model="m", managed=ManagedServer(command=("false",), share_across_processes=False,
                                                               startup_timeout_s=5))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    with pytest.raises(ConfigError, match="share_across_processes.*one GPU"):
        Dispatcher(config)  # refused before any server starts
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1")
    with pytest.raises(RuntimeError, match="exited with 1 during start-up"):
        Dispatcher(config)  # two GPUs: not refused, so the (failing) server is started


def test_a_config_giving_workers_one_gpu_refuses_one_server_per_process(tmp_path):
    from schemas.config import load_config
    from schemas.errors import ConfigError
    from tests.helpers import caption_parquet_source, write_config
    from tests.test_translate_faults import PLAN

    translator = {"model": "m", "managed": {"share_across_processes": False},
                  "accelerator": "type:nvidia-l4;count:1;machine_type:g2-standard-8"}
    config = write_config(tmp_path, [caption_parquet_source(tmp_path, [["a caption long enough to be kept here"]])],
                          PLAN, translator=translator)
    with pytest.raises(ConfigError, match="translator.managed.share_across_processes"):
        load_config(str(config))


@pytest.mark.parametrize("translator, devices, limit", [
    ({"max_in_flight": 12, "endpoints": ("http://x/v1",)}, None, 12),
    ({"endpoints": ("http://x/v1",)}, None, 256),  # endpoints: vLLM's default on an L4
    ({"managed": ("--max-num-seqs", "48")}, None, 48),
    ({"managed": ("--dtype", "float32", "--max-num-seqs=7")}, None, 7),
    ({"managed": ()}, "", 128),  # vLLM's default on the CPU backend
])
def test_the_limit_defaults_to_the_servers_max_num_seqs(monkeypatch, translator, devices, limit):
    from schemas.config import ManagedServer, TranslatorConfig
    from transforms.admission import in_flight_limit

    if devices is not None:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", devices)
    if "managed" in translator:
        translator = {**translator, "managed": ManagedServer(args=translator["managed"])}
    assert in_flight_limit(TranslatorConfig(model="m", **translator)) == limit
