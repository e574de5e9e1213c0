"""Fault injection for the translation stage: HTTP 500s, hanging requests and a managed server that
dies mid-run. The server is a test double (tests/fault_server.py) answering with real Multi30K
references; the success path against a real vLLM server is in test_vllm_translate.py."""
from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from tests.helpers import PAPER_PLAN, caption_parquet_source, multi30k_pairs, write_config

FAULT_SERVER = str(Path(__file__).with_name("fault_server.py"))
PLAN = {**PAPER_PLAN, "languages": ["en", "de", "fr"], "caption_languages": ["en", "de"],
        "translation_languages": ["de", "fr"]}


def make_corpus(tmp: Path, images: int) -> tuple[Path, list[list[str]]]:
    """`images` images with 2 real English captions each, and a pairs file with their de/fr references
    (what the fault server answers with)."""
    de = multi30k_pairs("val", "de", 2 * images)
    fr = dict(multi30k_pairs("val", "fr", 200))
    rows = [{"en": en, "lang": "de", "reference": ref} for en, ref in de]
    rows += [{"en": en, "lang": "fr", "reference": fr[en]} for en, _ in de if en in fr]
    pairs = tmp / "pairs.jsonl"
    pairs.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
    return pairs, [[de[2 * i][0], de[2 * i + 1][0]] for i in range(images)]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, list[list[str]]]:
    return make_corpus(tmp_path_factory.mktemp("corpus"), 20)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_fault_server(pairs: Path, counter: Path, *faults: str) -> tuple[subprocess.Popen, str]:
    port = free_port()
    proc = subprocess.Popen([sys.executable, FAULT_SERVER, "--model", "fault", "--port", str(port),
                             "--pairs", str(pairs), "--counter", str(counter), *faults])
    for _ in range(100):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, f"http://127.0.0.1:{port}/v1"
        except OSError:
            time.sleep(0.1)
    proc.kill()
    raise RuntimeError("fault server did not start")


def translate(tmp: Path, captions, translator: dict) -> dict:
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.testing.test_pipeline import TestPipeline

    from pipeline.build import translate_store
    from pipeline.output_run import output_run
    from schemas.config import load_config

    config_path = write_config(tmp, [caption_parquet_source(tmp, captions)], PLAN, translator=translator)
    config = load_config(str(config_path))
    with output_run(config, "translate", writes_store=True) as run_id, \
            TestPipeline(options=PipelineOptions(["--runner=DirectRunner"])) as p:
        translate_store(p, config, run_id)
    return json.loads((tmp / "out" / "translation_stats.json").read_text())


def stored(tmp: Path) -> list[dict]:
    rows = []
    for part in sorted((tmp / "store").glob("part-*.parquet")):
        rows += pq.read_table(part).to_pylist()
    return rows


def requests_received(counter: Path) -> int:
    return len(counter.read_text().splitlines()) if counter.exists() else 0


def test_http_500s_are_retried_and_nothing_is_lost(tmp_path, corpus):
    pairs, captions = corpus
    proc, url = start_fault_server(pairs, tmp_path / "count", "--fail-first", "3")
    try:
        summary = translate(tmp_path, captions, {"model": "fault", "endpoints": [url], "batch_size": 16})
    finally:
        proc.kill()
    assert summary["requested"] == 80 and summary["translated"] == 80
    assert summary["accepted"] + sum(v for k, v in summary.items() if k.startswith("rejected_")) == 80
    assert summary["sent"] == requests_received(tmp_path / "count") >= 80 + 3
    assert not any(k.startswith("failed_") for k in summary)
    assert len(stored(tmp_path)) == 80
    assert summary["accepted"] >= 76  # real references pass the checks


def test_hanging_requests_time_out_and_are_retried(tmp_path, corpus):
    pairs, captions = corpus
    proc, url = start_fault_server(pairs, tmp_path / "count", "--hang-first", "3")
    try:
        summary = translate(tmp_path, captions[:5], {"model": "fault", "endpoints": [url],
                                                     "request_timeout_s": 1.0, "batch_size": 8})
    finally:
        proc.kill()
    assert summary["translated"] == 20 and not any(k.startswith("failed_") for k in summary)
    assert summary["sent"] >= 23


def test_a_server_failing_for_good_loses_nothing_and_a_rerun_sends_only_the_failures(tmp_path, corpus):
    pairs, captions = corpus
    proc, url = start_fault_server(pairs, tmp_path / "count", "--fail-first", "1000000")
    try:
        summary = translate(tmp_path, captions[:5], {"model": "fault", "endpoints": [url], "max_attempts": 2})
    finally:
        proc.kill()
    assert summary["failed_http_500"] == 20 and stored(tmp_path) == []
    proc, url = start_fault_server(pairs, tmp_path / "count2")
    try:
        summary = translate(tmp_path, captions[:5], {"model": "fault", "endpoints": [url]})
    finally:
        proc.kill()
    assert summary["translated"] == 20 and len(stored(tmp_path)) == 20
    again = translate(tmp_path, captions[:5], {"model": "fault", "endpoints": [url]})
    assert again.get("translated", 0) == 0 and again["cache_hits_accepted"] + again.get("cache_hits_rejected", 0) == 20


def test_a_managed_server_that_dies_is_restarted(tmp_path, corpus):
    pairs, captions = corpus
    counter = tmp_path / "count"
    managed = {"command": [sys.executable, FAULT_SERVER], "startup_timeout_s": 30,
               "args": ["--pairs", str(pairs), "--counter", str(counter), "--die-after", "15"],
               "share_across_processes": False}
    summary = translate(tmp_path, captions, {"model": "fault", "managed": managed, "batch_size": 16,
                                             "concurrency": 4})
    assert summary["translated"] == 80 and not any(k.startswith("failed_") for k in summary)
    assert len(stored(tmp_path)) == 80
    assert summary["sent"] > 80  # the requests that hit the dying server were sent again
