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

import pytest

from tests.helpers import PAPER_PLAN, caption_parquet_source, multi30k_pairs, read_store_rows, write_config

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


def run_translate(tmp: Path, captions, translator: dict, *beam_args: str) -> tuple[dict, dict]:
    """`florenz-data translate`'s pipeline on the DirectRunner (with `beam_args`): the translation summary,
    and the translate step's gauges (namespace "translate")."""
    import apache_beam as beam
    from apache_beam.metrics.metric import MetricsFilter
    from apache_beam.options.pipeline_options import PipelineOptions

    from pipeline.build import translate_store
    from pipeline.output_run import output_run
    from schemas.config import load_config

    config_path = write_config(tmp, [caption_parquet_source(tmp, captions)], PLAN, translator=translator)
    config = load_config(str(config_path))
    with output_run(config, "translate", writes_store=True) as run_id:
        p = beam.Pipeline(options=PipelineOptions(["--runner=DirectRunner", *beam_args]))
        translate_store(p, config, run_id)
        result = p.run()
        result.wait_until_finish()
    gauges = result.metrics().query(MetricsFilter().with_namespace("translate"))["gauges"]
    return (json.loads((tmp / "out" / "translation_stats.json").read_text()),
            {g.key.metric.name: g.committed.value for g in gauges})


def translate(tmp: Path, captions, translator: dict) -> dict:
    return run_translate(tmp, captions, translator)[0]


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
    assert len(read_store_rows(tmp_path / "store")) == 80
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
    assert summary["failed_http_500"] == 20 and read_store_rows(tmp_path / "store") == []
    proc, url = start_fault_server(pairs, tmp_path / "count2")
    try:
        summary = translate(tmp_path, captions[:5], {"model": "fault", "endpoints": [url]})
    finally:
        proc.kill()
    assert summary["translated"] == 20 and len(read_store_rows(tmp_path / "store")) == 20
    again = translate(tmp_path, captions[:5], {"model": "fault", "endpoints": [url]})
    assert again.get("translated", 0) == 0 and again["cache_hits_accepted"] + again.get("cache_hits_rejected", 0) == 20


def test_a_managed_server_that_dies_is_restarted(tmp_path, corpus):
    pairs, captions = corpus
    counter = tmp_path / "count"
    managed = {"command": [sys.executable, FAULT_SERVER], "startup_timeout_s": 30,
               "args": ["--pairs", str(pairs), "--counter", str(counter), "--die-after", "15"],
               "share_across_processes": False}
    summary = translate(tmp_path, captions, {"model": "fault", "managed": managed, "batch_size": 16,
                                             "max_in_flight": 4})
    assert summary["translated"] == 80 and not any(k.startswith("failed_") for k in summary)
    assert len(read_store_rows(tmp_path / "store")) == 80
    assert summary["sent"] > 80  # the requests that hit the dying server were sent again


def translate_step(tmp: Path, requests: list, url: str, name: str, *beam_args: str) -> tuple[dict, set]:
    """The translate step's DoFns alone (batching, TranslateBatches) on `requests`, as one attempt of
    the bundles a runner would retry: {(text hash, lang): (status, translation)} of what it emits, and
    the keys it sent requests for."""
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions

    from schemas.config import StoreConfig, TranslatorConfig
    from transforms.translate_batches import BatchMisses, TranslateBatches

    translator = TranslatorConfig(model="fault", endpoints=(url,), batch_size=8, max_in_flight=4, max_attempts=1)
    store = StoreConfig(str(tmp / "store"), "fp-retry")
    out = tmp / name
    with beam.Pipeline(options=PipelineOptions(["--runner=DirectRunner", *beam_args])) as p:
        (p | beam.Create(requests) | BatchMisses(store.fingerprint, translator.batch_size)
         | beam.ParDo(TranslateBatches(store, translator))
         | beam.Map(lambda o: json.dumps([o.request.text_hash, o.request.lang, o.status, o.translation,
                                          o.requests_sent]))
         | beam.io.WriteToText(str(out), shard_name_template=""))
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    emitted = {(h, lang): (status, translation) for h, lang, status, translation, _ in rows}
    assert len(emitted) == len(rows) == len(requests)  # one outcome per request
    return emitted, {(h, lang) for h, lang, _, _, sent in rows if sent}


def test_a_retried_bundle_sends_nothing_its_first_attempt_stored(tmp_path, corpus):
    """The translate step's DoFns run three times on the same misses, split into bundles differently
    each time, as a runner retrying a failed bundle would. The first attempt dies halfway (its server
    goes down after 50 requests); the second, against a server answering differently, is sent only
    what the first did not store; the third is sent nothing. Every attempt emits what the store holds,
    and the store holds one row per (text, language)."""
    import random

    from schemas.records import TranslationRequest, normalize_text, text_hash
    from tests.helpers import read_store_rows

    pairs, captions = corpus
    texts = sorted({normalize_text(c) for image in captions for c in image})
    requests = [TranslationRequest(text_hash(t), lang, t) for t in texts for lang in ("de", "fr")]
    other = tmp_path / "other_pairs.jsonl"  # another server's answers: other, still valid, translations
    other.write_text("".join(json.dumps({**row, "reference": row["reference"] + " (B)"}, ensure_ascii=False) + "\n"
                             for row in map(json.loads, pairs.read_text().splitlines())))

    proc, url = start_fault_server(pairs, tmp_path / "count1", "--die-after", "50")
    try:
        first, _ = translate_step(tmp_path, requests, url, "first")
    finally:
        proc.kill()
    stored_first = {(r["text_hash"], r["lang"]): (r["status"], r["translation"]) for r in read_store_rows(
        tmp_path / "store")}
    assert 0 < len(stored_first) < len(requests)
    assert {k: v for k, v in first.items() if v[0] != "failed"} == stored_first

    shuffled = random.Random(0).sample(requests, len(requests))
    proc, url = start_fault_server(other, tmp_path / "count2")
    try:
        second, sent = translate_step(tmp_path, shuffled, url, "second", "--direct_num_workers", "2",
                                      "--direct_running_mode", "multi_processing")
        received = requests_received(tmp_path / "count2")
        third, sent_again = translate_step(tmp_path, requests[::-1], url, "third")
    finally:
        proc.kill()
    assert sent == set(second) - set(stored_first) and received >= len(sent)  # only what was not stored
    assert sent_again == set() and requests_received(tmp_path / "count2") == received  # nothing at all
    assert all(v[0] != "failed" for v in second.values()) and third == second
    assert {k: second[k] for k in stored_first} == stored_first  # the first attempt's translations, read back
    rows = read_store_rows(tmp_path / "store")
    assert len(rows) == len({(r["text_hash"], r["lang"]) for r in rows}) == len(requests)  # no duplicate row
    assert {(r["text_hash"], r["lang"]): (r["status"], r["translation"]) for r in rows} == second
