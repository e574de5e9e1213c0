"""Context-enhanced translation: a request's context rides along as "{caption} ### ({context})", the
answer's bracketed part is cut off, an answer that lost it is asked again without context (counted),
the context is part of the store key and of the fingerprint, and templates without context keep
their fingerprints. Against the loopback server (what is sent, what is stored) and the real tiny
translator, which was trained without contexts, so its answers lose them and the fallback runs."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import apache_beam as beam
import pytest
from apache_beam.options.pipeline_options import PipelineOptions

from schemas.config import StoreConfig, TranslatorConfig
from schemas.errors import ConfigError
from schemas.prompts import CONTEXT_FORMAT, RequestTemplate
from schemas.records import TranslationRequest, normalize_text, request_key, text_hash
from tests.helpers import caption_parquet_source, read_store_rows, run_build, write_config
from tests.test_translate_faults import PLAN, corpus, start_fault_server  # noqa: F401 (fixture)
from tests.vllm_support import memorized_pairs, requests_received
from tests.vllm_support import trained  # noqa: F401 (fixture)
from transforms.translate import Summarize, _outcome_counts
from transforms.translate_batches import BatchMisses, TranslateBatches

PLAIN = RequestTemplate(model="m")
WITH_CONTEXT = dataclasses.replace(PLAIN, context_format=CONTEXT_FORMAT)
CAPTION = "A man in a hat plays a guitar."
CONTEXT = "A street musician in a straw hat plays an acoustic guitar in front of a bakery."


def test_the_context_is_sent_in_brackets_and_is_part_of_the_fingerprint():
    assert WITH_CONTEXT.fingerprint != PLAIN.fingerprint
    assert "context_format" not in json.loads(PLAIN.canonical_json())  # old stores keep their fingerprint
    sent = WITH_CONTEXT.body(CAPTION, "de", context=CONTEXT)
    assert sent["messages"][0]["content"].endswith(f"\n\n{CAPTION} ### ({CONTEXT})")
    assert sent["max_tokens"] > PLAIN.body(CAPTION, "de")["max_tokens"]  # the budget covers the context's answer
    # no context, or a template that sends none: the plain request
    assert WITH_CONTEXT.body(CAPTION, "de") == PLAIN.body(CAPTION, "de") == PLAIN.body(CAPTION, "de", context=CONTEXT)
    assert TranslatorConfig(model="m", endpoints=("http://h:1/v1",), context=True).request == WITH_CONTEXT
    assert TranslatorConfig(model="m", endpoints=("http://h:1/v1",)).request == PLAIN


@pytest.mark.parametrize("answer, caption", [
    ("Ein Mann mit Hut spielt Gitarre. ### (Ein Straßenmusiker mit Strohhut spielt Gitarre.)",
     "Ein Mann mit Hut spielt Gitarre."),
    ("Ein Mann spielt Gitarre.###(Ein Musiker.)", "Ein Mann spielt Gitarre."),
    ("Ein Mann (mit Hut) spielt. ### (Ein Musiker (mit Hut).)", "Ein Mann (mit Hut) spielt."),
    ("Ein Mann mit Hut spielt Gitarre.", None),  # the context is gone
    ("Ein Mann mit Hut spielt Gitarre. ### Ein Musiker.", None),  # no brackets
    ("Ein Mann mit Hut spielt Gitarre. ### (Ein Musiker.) Er singt.", None),  # something after them
    ("### (Ein Musiker.)", None),  # nothing but the context
])
def test_the_bracketed_part_is_cut_off_and_a_lost_structure_is_none(answer, caption):
    assert WITH_CONTEXT.without_context(answer) == caption


def test_the_context_is_part_of_the_store_key():
    text = normalize_text(CAPTION)
    assert request_key(text) == text_hash(text)
    keys = {request_key(text), request_key(text, CONTEXT), request_key(text, "Another caption of the image."),
            request_key(f"{text} {CONTEXT}")}
    assert len(keys) == 4


def test_contexts_without_a_recaption_section_are_refused(tmp_path):
    """The context of an image's captions is its description: without a description store there is
    none to send, so the config is refused, naming the field."""
    config = write_config(tmp_path, [caption_parquet_source(tmp_path, [["a caption long enough to be kept"]])],
                          PLAN, translator={"model": "m", "endpoints": ["http://127.0.0.1:9/v1"], "context": True})
    with pytest.raises(ConfigError, match="translator.context: is true, but the config has no recaption section"):
        run_build(config)


def translate_requests(tmp: Path, requests: list[TranslationRequest], translator: TranslatorConfig) -> dict:
    """The translate step's DoFns (batching, TranslateBatches) on `requests`, on the DirectRunner:
    the translation summary's counts and the outcomes by (key, lang)."""
    store = StoreConfig(str(tmp / "store"), translator.request.fingerprint)
    with beam.Pipeline(options=PipelineOptions(["--runner=DirectRunner"])) as p:
        outcomes = (p | beam.Create(requests) | BatchMisses(store.fingerprint, translator.batch_size)
                    | beam.ParDo(TranslateBatches(store, translator)))
        (outcomes | beam.Map(_outcome_counts) | beam.CombineGlobally(Summarize())
         | "Summary" >> beam.Map(json.dumps) | "WriteSummary" >> beam.io.WriteToText(str(tmp / "summary"),
                                                                                    shard_name_template=""))
        (outcomes | beam.Map(lambda o: json.dumps([o.request.text_hash, o.request.lang, o.status, o.translation,
                                                   o.context_fallback, o.requests_sent]))
         | "WriteOutcomes" >> beam.io.WriteToText(str(tmp / "outcomes"), shard_name_template=""))
    rows = [json.loads(line) for line in (tmp / "outcomes").read_text().splitlines()]
    return {"summary": json.loads((tmp / "summary").read_text()),
            "outcomes": {(h, lang): (status, translation, fallback, sent)
                         for h, lang, status, translation, fallback, sent in rows}}


def context_requests(texts: list[str], lang: str) -> list[TranslationRequest]:
    """Each text with the next one as its context (another caption of the image), and each alone."""
    texts = [normalize_text(t) for t in texts]
    contexts = texts[1:] + texts[:1]
    return ([TranslationRequest(request_key(t, c), lang, t, c) for t, c in zip(texts, contexts)]
            + [TranslationRequest(request_key(t), lang, t) for t in texts])


def test_what_the_loopback_server_receives_is_the_context_template_and_the_store_is_keyed_by_both(
        tmp_path, corpus):  # noqa: F811
    """The loopback server echoes what it does not know (a text with its context), keeping the
    structure: the client cuts the context off, the checks judge the English text alone (a copy:
    rejected, once more with the strict prompt, still with its context), and the store holds it under
    the context fingerprint and the (text, context) key, next to the same text's plain entry."""
    pairs, captions = corpus
    texts = [captions[0][0], captions[0][1]]
    bodies = tmp_path / "bodies.jsonl"
    proc, url = start_fault_server(pairs, tmp_path / "count", "--bodies", str(bodies))
    translator = TranslatorConfig(model="fault", endpoints=(url,), context=True, batch_size=8)
    requests = context_requests(texts, "de")
    try:
        result = translate_requests(tmp_path, requests, translator)
    finally:
        proc.kill()
    template = translator.request
    received = [json.loads(line) for line in bodies.read_text().splitlines()]
    expected = [template.body(r.text, "de", strict, r.context) for r in requests for strict in (False, True)
                if r.context is not None or not strict]  # a known plain text is accepted at once
    assert sorted(json.dumps(b, sort_keys=True) for b in received) == \
        sorted(json.dumps(b, sort_keys=True) for b in expected)
    summary = result["summary"]
    assert summary["with_context"] == 2 and "context_fallback" not in summary and summary["sent"] == len(received)
    rows = {(r["text_hash"], r["lang"]): r for r in read_store_rows(tmp_path / "store")}
    assert set(rows) == {(r.text_hash, "de") for r in requests}
    for r in requests:
        row = rows[(r.text_hash, "de")]
        assert row["fingerprint"] == template.fingerprint and row["source_text"] == r.text
        if r.context is not None:  # the answer judged: the echo with its context cut off
            assert (row["status"], row["raw_output"]) == ("rejected", r.text)
        else:
            assert row["status"] == "accepted"


def test_the_tiny_translator_loses_the_context_and_the_caption_is_asked_again_without(tmp_path, trained):
    """The real tiny translator never saw a context in training: an answer that lost the bracketed
    part is not trusted, the caption is asked again without context, and that answer is the plain
    request's (greedy decoding) and is counted as a fallback."""
    model, url = trained
    english = sorted({p["en"] for p in memorized_pairs(model) if p["lang"] == "de"})[:6]
    translator = TranslatorConfig(model=str(model), endpoints=(url,), context=True, batch_size=8)
    requests = context_requests(english, "de")
    before = requests_received(url)
    result = translate_requests(tmp_path, requests, translator)
    summary, outcomes = result["summary"], result["outcomes"]
    assert requests_received(url) - before == summary["sent"]
    assert summary["with_context"] == len(english) and summary["requested"] == len(requests)
    with_context = [r for r in requests if r.context is not None]
    fallbacks = [r for r in with_context if outcomes[(r.text_hash, "de")][2]]
    assert summary.get("context_fallback", 0) == len(fallbacks) >= len(english) // 2
    plain = {r.text: outcomes[(r.text_hash, "de")] for r in requests if r.context is None}
    for r in fallbacks:  # asked again without context: the plain answer (and verdict), one request more
        status, translation, _, sent = outcomes[(r.text_hash, "de")]
        assert (status, translation) == plain[r.text][:2]
        assert sent >= plain[r.text][3] + 1
    assert all(not fallback for _, _, fallback, _ in plain.values())
    assert {row["fingerprint"] for row in read_store_rows(tmp_path / "store")} == {translator.request.fingerprint}
