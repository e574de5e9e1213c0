"""The store fingerprint is derived from the request: one object (schemas/prompts.py RequestTemplate)
renders the chat-completions body the client sends and hashes to the fingerprint, so changing what
is sent changes the key, and the same config gives the same key in every process."""
from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys

import pytest

from schemas.prompts import RequestTemplate
from tests.helpers import REPO, read_store_rows
from tests.test_translate_faults import corpus, start_fault_server, translate  # noqa: F401 (fixture)

BASE = RequestTemplate(model="m")


@pytest.mark.parametrize("change, body_field", [
    ({"temperature": 0.7}, "temperature"),
    ({"stop": ("\n", "###")}, "stop"),
    ({"max_tokens_cap": 20}, "max_tokens"),
    ({"max_tokens_base": 8}, "max_tokens"),
    ({"prompt": "Into {language}, please:\n\n{text}"}, "messages"),
    ({"model": "other"}, "model"),
])
def test_a_changed_request_setting_changes_the_fingerprint_and_the_body(change, body_field):
    changed = dataclasses.replace(BASE, **change)
    text = "A brown dog runs quickly across the green meadow by the river."
    assert changed.fingerprint != BASE.fingerprint
    before, after = BASE.body(text, "de"), changed.body(text, "de")
    assert {k for k in before if before[k] != after[k]} == {body_field}
    assert dataclasses.replace(changed, **{k: getattr(BASE, k) for k in change}).fingerprint == BASE.fingerprint


def test_the_strict_retry_prompt_is_part_of_the_fingerprint():
    changed = dataclasses.replace(BASE, strict_prompt="Only {language}:\n\n{text}")
    assert changed.fingerprint != BASE.fingerprint
    assert changed.body("x", "de") == BASE.body("x", "de") and changed.body("x", "de", True) != BASE.body("x", "de", True)


def test_the_same_config_gives_the_same_fingerprint_in_every_process(tmp_path):
    from schemas.config import load_config
    from tests.helpers import caption_parquet_source, write_config
    from tests.test_translate_faults import PLAN

    translator = {"model": "org/some-model", "endpoints": ["http://127.0.0.1:9/v1"], "max_tokens_cap": 128}
    path = write_config(tmp_path, [caption_parquet_source(tmp_path, [["a caption long enough to be kept here"]])],
                        PLAN, translator=translator)
    here = load_config(str(path)).store.fingerprint
    code = f"from schemas.config import load_config; print(load_config({str(path)!r}).store.fingerprint)"
    for seed in ("1", "2"):  # Python's salted hash() must play no part
        env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONHASHSEED": seed}
        done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
        assert done.stdout.strip() == here


def test_the_body_sent_is_the_templates_and_a_new_setting_is_a_new_store_key(tmp_path, corpus):  # noqa: F811
    """Through the real client and the loopback server: every body received is exactly what the
    config's template renders, and changing max_tokens_cap changes both the bodies and the key."""
    from schemas.config import TranslatorConfig
    from schemas.records import normalize_text

    pairs, captions = corpus
    english = {normalize_text(t) for caption in captions for t in caption}
    sent, stored = {}, set()
    for cap in (512, 24):
        bodies = tmp_path / f"bodies-{cap}.jsonl"
        proc, url = start_fault_server(pairs, tmp_path / f"count-{cap}", "--bodies", str(bodies))
        try:
            run = tmp_path / f"cap-{cap}"
            run.mkdir()
            summary = translate(run, captions, {"model": "fault", "endpoints": [url], "max_tokens_cap": cap})
        finally:
            proc.kill()
        sent[cap] = [json.loads(line) for line in bodies.read_text().splitlines()]
        assert summary["sent"] == len(sent[cap]) >= 80
        template = TranslatorConfig(model="fault", endpoints=(url,), max_tokens_cap=cap).request
        expected = [template.body(text, lang, strict) for text in english for lang in ("de", "fr")
                    for strict in (False, True)]
        assert all(body in expected for body in sent[cap])
        assert {row["fingerprint"] for row in read_store_rows(run / "store")} == {template.fingerprint}
        stored.add(template.fingerprint)
    assert {b["max_tokens"] for b in sent[24]} == {24}
    assert max(b["max_tokens"] for b in sent[512]) > 24
    assert len(stored) == 2
