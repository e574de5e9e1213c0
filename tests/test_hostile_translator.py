"""Hostile-input cases for the translation stage (harness: tests/hostile.py). Each case is a real
`florenz-data translate` or `run` in its own process against tests/fault_server.py (a stand-in for
vLLM that injects the fault) on real Multi30K captions paired with real COCO images.

- secrets: the API key comes only from the environment (translator.api_key_env), reaches an
  authenticated server (the client and a managed server), and appears in no log line, no output and
  no file under the output or the store; configs that hold a secret themselves are refused.
- failures without their cause: every failed request is counted per reason with one example of its
  cause, and `translate` and `run` exit non-zero saying the translator failed and why.
- smaller: a 1 MB answer is rejected by length before any detector runs.
"""
from __future__ import annotations

import contextlib
import json
import logging
import secrets as token
import sys
import time
from pathlib import Path
from typing import Iterator

import pytest

from tests.helpers import caption_parquet_source, read_store_rows, write_config
from tests.hostile import expect, run_cli
from tests.test_translate_faults import FAULT_SERVER, PLAN, make_corpus, start_fault_server

KEY_ENV = "FLORENZ_TEST_TRANSLATOR_KEY"
SMALL_RUN = {"batch_size": 8, "concurrency": 8}


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> tuple[Path, list[list[str]]]:
    """4 images with 2 real English captions each (16 requests for de + fr), and their references."""
    return make_corpus(tmp_path_factory.mktemp("corpus"), 4)


@contextlib.contextmanager
def fault_server(tmp: Path, pairs: Path, *faults: str) -> Iterator[str]:
    proc, url = start_fault_server(pairs, tmp / "requests", *faults)
    try:
        yield url
    finally:
        proc.kill()
        proc.wait()


def config_for(tmp: Path, captions, translator: dict) -> Path:
    return write_config(tmp, [caption_parquet_source(tmp, captions)], PLAN, translator={"model": "fault",
                                                                                         **translator})


def translation_stats(tmp: Path) -> dict:
    return json.loads((tmp / "out" / "translation_stats.json").read_text(encoding="utf-8"))


# --- secrets -------------------------------------------------------------------------------------

def test_an_authenticated_server_is_reached_only_with_the_key_from_the_environment(tmp_path, corpus):
    pairs, captions = corpus
    key = f"sk-florenz-{token.token_hex(16)}"
    scan = [tmp_path / "out", tmp_path / "store"]
    with fault_server(tmp_path, pairs, "--api-key", key) as url:
        without = run_cli("translate", config_for(tmp_path, captions, {"endpoints": [url], **SMALL_RUN}))
        expect(without, "clear_error", "secrets", mentions=["failed_http_401: 16", "HTTP 401", "api_key_env"],
               secrets=[key], scan=scan)
        assert read_store_rows(tmp_path / "store") == []
        config = config_for(tmp_path, captions, {"endpoints": [url], "api_key_env": KEY_ENV, **SMALL_RUN})
        with_key = run_cli("translate", config, env={KEY_ENV: key})
    expect(with_key, "handled", "secrets", secrets=[key], scan=scan)
    summary = translation_stats(tmp_path)
    assert summary["translated"] == 16 and summary["accepted"] >= 15 and not any(k.startswith("failed_") for k in summary)
    assert len(read_store_rows(tmp_path / "store")) == 16


def test_an_unset_key_variable_is_refused_before_any_request(tmp_path, corpus):
    pairs, captions = corpus
    with fault_server(tmp_path, pairs) as url:
        config = config_for(tmp_path, captions, {"endpoints": [url], "api_key_env": KEY_ENV, **SMALL_RUN})
        for command in ("translate", "eval-translator"):
            extra = ["--reference", "multi30k:de", "--limit", "4"] if command == "eval-translator" else []
            result = run_cli(command, config, *extra, env={KEY_ENV: ""})
            expect(result, "clear_error", "secrets", mentions=["translator.api_key_env", KEY_ENV, "not set"])
    assert not (tmp_path / "requests").exists() or (tmp_path / "requests").read_text() == ""


def test_a_managed_server_is_started_with_the_key_and_the_launch_log_masks_it(tmp_path, corpus):
    pairs, captions = corpus
    key = f"sk-florenz-{token.token_hex(16)}"
    managed = {"command": [sys.executable, FAULT_SERVER], "startup_timeout_s": 30, "share_across_processes": False,
               "args": ["--pairs", str(pairs), "--counter", str(tmp_path / "requests")]}
    config = config_for(tmp_path, captions, {"managed": managed, "api_key_env": KEY_ENV, **SMALL_RUN})
    done = run_cli("run", config, env={KEY_ENV: key})  # the build writes OUTPUT/config.yaml too
    expect(done, "handled", "secrets", mentions=["starting vLLM server", "--api-key ***"], secrets=[key],
           scan=[tmp_path / "out", tmp_path / "store"])
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert stats["translation"]["translated"] == 16 and not any(k.startswith("failed_") for k in stats["translation"])
    published = (tmp_path / "out" / "config.yaml").read_text()
    assert f"api_key_env: {KEY_ENV}" in published


@pytest.mark.parametrize("where, field", [
    ("endpoint_userinfo", "translator.endpoints[0]"),
    ("managed_args", "translator.managed.args"),
    ("managed_args_equals", "translator.managed.args"),
])
def test_a_config_holding_a_secret_is_refused_naming_the_field(tmp_path, corpus, where, field):
    pairs, captions = corpus
    password = f"pw-{token.token_hex(12)}"
    translator = {
        "endpoint_userinfo": {"endpoints": [f"http://translator:{password}@127.0.0.1:9/v1"]},
        "managed_args": {"managed": {"command": [sys.executable, FAULT_SERVER], "args": ["--api-key", password]}},
        "managed_args_equals": {"managed": {"command": [sys.executable, FAULT_SERVER],
                                            "args": [f"--api-key={password}"]}},
    }[where]
    done = run_cli("run", config_for(tmp_path, captions, translator))
    expect(done, "clear_error", "secrets", mentions=[f"config error: {field}", "api_key_env"], secrets=[password],
           scan=[tmp_path / "out", tmp_path / "store"])


@pytest.mark.parametrize("managed, field", [
    ({"args": ["--api_key", "k-123456"]}, "args"),  # vLLM reads --api_key as --api-key
    ({"args": ["--api-k=k-123456"]}, "args"),  # and argparse takes an abbreviation
    ({"command": ["vllm", "serve", "--api-key", "k-123456"]}, "command"),
])
def test_every_spelling_of_a_key_in_the_managed_command_is_refused(tmp_path, managed, field):
    from schemas.config import RunConfig
    from schemas.errors import ConfigError

    raw = {"output": str(tmp_path / "out"), "store": {"path": str(tmp_path / "store")},
           "sources": [{"type": "coco", "name": "c", "captions": "c.json", "images": "i"}],
           "plan": {"languages": ["en", "de"], "caption_languages": ["en"], "translation_languages": ["de"]},
           "translator": {"model": "m", "managed": managed}}
    with pytest.raises(ConfigError) as refused:
        RunConfig.from_dict(raw, str(tmp_path))
    assert refused.value.field == f"translator.managed.{field}" and "k-123456" not in str(refused.value)


def test_an_api_key_env_that_is_unset_or_not_a_variable_name_is_refused(tmp_path, corpus, monkeypatch):
    pairs, captions = corpus
    monkeypatch.delenv(KEY_ENV, raising=False)
    with fault_server(tmp_path, pairs) as url:
        unset = run_cli("translate", config_for(tmp_path, captions, {"endpoints": [url], "api_key_env": KEY_ENV}))
        expect(unset, "clear_error", "secrets", mentions=["config error: translator.api_key_env", KEY_ENV])
        key = f"sk-{token.token_hex(16)}"  # the key itself where its variable's name belongs
        pasted = run_cli("translate", config_for(tmp_path, captions, {"endpoints": [url], "api_key_env": key}))
    expect(pasted, "clear_error", "secrets", mentions=["config error: translator.api_key_env"], secrets=[key],
           scan=[tmp_path / "out", tmp_path / "store"])
    assert requests_sent(tmp_path) == 0


def requests_sent(tmp: Path) -> int:
    path = tmp / "requests"
    return len(path.read_text().splitlines()) if path.exists() else 0


def test_the_log_filter_masks_the_key_and_url_passwords_in_every_record(monkeypatch):
    from schemas.secrets import RedactingFilter, api_key_from_env

    key = f"sk-{token.token_hex(16)}"
    monkeypatch.setenv(KEY_ENV, key)
    assert api_key_from_env(KEY_ENV) == key  # reading it watches it
    records = []
    handler = logging.Handler()
    handler.emit = lambda record: records.append(logging.Formatter("%(message)s").format(record))
    handler.addFilter(RedactingFilter())
    logger = logging.getLogger("test_hostile_translator.redaction")
    logger.addHandler(handler)
    try:
        logger.warning("key %s at %s", key, "https://user:hunter22@host:8000/v1")
        try:
            raise RuntimeError(f"failed with Authorization: Bearer {key}")
        except RuntimeError:
            logger.exception("request failed")
    finally:
        logger.removeHandler(handler)
    text = "\n".join(records)
    assert key not in text and "hunter22" not in text and "user:" not in text
    assert "key *** at https://***@host:8000/v1" in text and "Bearer ***" in text


# --- failures without their cause ----------------------------------------------------------------

FAULTS = {  # name: (server flags, translator settings, counter, text the example must hold)
    "http_500": (["--fail-first", "1000000"], {"max_attempts": 2}, "failed_http_500", "HTTP 500: "),
    "http_429": (["--fail-first", "1000000", "--fail-status", "429"], {"max_attempts": 2}, "failed_http_429",
                 "HTTP 429: "),
    "http_400": (["--fail-first", "1000000", "--fail-status", "400"], {}, "failed_http_400",
                 "injected failure (HTTP 400)"),
    "garbage": (["--bad-response", "garbage"], {}, "failed_bad_response", "not JSON"),
    "empty_choices": (["--bad-response", "empty_choices"], {}, "failed_bad_response", "no choices"),
    "content_not_text": (["--bad-response", "content_not_text"], {}, "failed_bad_response", "not text"),
    "hang": (["--hang-first", "1000000"], {"request_timeout_s": 1, "max_attempts": 1}, "failed_timeout",
             "request_timeout_s=1 s"),
}


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_translate_fails_with_the_cause_when_every_request_fails(tmp_path, corpus, fault):
    pairs, captions = corpus
    flags, settings, counter, example = FAULTS[fault]
    with fault_server(tmp_path, pairs, *flags) as url:
        done = run_cli("translate", config_for(tmp_path, captions, {"endpoints": [url], **SMALL_RUN, **settings}))
    expect(done, "clear_error", "failures without their cause",
           mentions=[f"{counter}: 16, e.g. ", example, "not stored", "florenz-data translate"])
    summary = translation_stats(tmp_path)
    assert summary[counter] == 16 and example in summary["failure_examples"][counter]
    assert read_store_rows(tmp_path / "store") == []


def test_run_stops_saying_the_translator_failed_and_why(tmp_path, corpus):
    pairs, captions = corpus
    with fault_server(tmp_path, pairs, "--fail-first", "1000000") as url:
        config = config_for(tmp_path, captions, {"endpoints": [url], "max_attempts": 2, **SMALL_RUN})
        stopped = run_cli("run", config)
        expect(stopped, "clear_error", "failures without their cause",
               mentions=["the translator failed on 16", "failed_http_500: 16, e.g. HTTP 500: ",
                         "injected failure", "not stored"])
        assert "Translate only these with" not in stopped.output  # not "run the command you just ran"
        missing = json.loads((tmp_path / "out" / "missing_translations.json").read_text())
        assert missing["per_reason"] == {"failed_http_500": 16} and "HTTP 500" in missing["examples"]["failed_http_500"]
        allowed = run_cli("run", config, "--allow-missing-translations")
    expect(allowed, "clear_error", "failures without their cause",
           mentions=["failed_http_500: 16, e.g. HTTP 500: ", "left out", "not stored"])
    stats = json.loads((tmp_path / "out" / "stats.json").read_text())
    assert stats["translation"]["failed_http_500"] == 16 and read_store_rows(tmp_path / "store") == []


# --- smaller -------------------------------------------------------------------------------------

def test_an_oversized_answer_is_rejected_by_length_before_any_detector(monkeypatch):
    from transforms import translation_checks as checks

    def detector_called(*_):
        raise AssertionError("a detector ran on an answer the length bound rejects")

    monkeypatch.setattr(checks, "_langdetect", detector_called)
    monkeypatch.setattr(checks, "_fasttext", detector_called)
    monkeypatch.setattr(checks, "script_share", detector_called)
    monkeypatch.setattr(checks, "clean_translation", detector_called)
    source = "A brown dog is running across a green meadow by the river."
    answer = ("Ein brauner Hund rennt über eine grüne Wiese am Fluss. " * 20000)[:1_000_000]
    start = time.process_time()
    assert checks.check_translation(source, answer, "de").reason == checks.LENGTH_RATIO
    assert time.process_time() - start < 0.05  # was ~3 s: langdetect over the whole megabyte


def test_a_megabyte_answer_is_a_counted_length_rejection(tmp_path, corpus):
    pairs, captions = corpus
    with fault_server(tmp_path, pairs, "--answer-chars", "1000000") as url:
        started = time.monotonic()
        done = run_cli("translate", config_for(tmp_path, captions, {"endpoints": [url], **SMALL_RUN}))
        took = time.monotonic() - started
    expect(done, "counted_rejection", "smaller")
    summary = translation_stats(tmp_path)
    assert summary["rejected_length_ratio"] == 16 and summary["retried"] == 16 and summary["sent"] == 32
    rows = read_store_rows(tmp_path / "store")
    assert len(rows) == 16 and {(r["status"], r["reason"]) for r in rows} == {("rejected", "length_ratio")}
    assert took < 120, took
