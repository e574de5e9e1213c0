"""Translate once: unique English texts -> store lookup -> only the misses go to vLLM -> every
outcome (accepted or rejected, with reason) is appended to the store as atomic Parquet parts.

A stored verdict of older checks is judged again as the store is read (transforms/store_verdicts.py);
one that cannot be (a rejection stored before raw answers were kept) is stale: a miss, sent again by
a translator, else missing (`stale_verdict`), never used as a rejection.

A re-run, or a run killed and restarted, finds what earlier runs stored and sends only the rest; at
most the batches in flight when a run was killed are sent again, and a retried bundle sends nothing
its first attempt stored (transforms/translate_batches.py). Requests that failed (after their
retries) are not stored: they are counted per reason (`failed_http_500`...), one example of each
reason's cause is kept in the summary (`failure_examples`, bounded by the number of reasons, not by the
input), and they are passed on as missing, with that cause.
"""
from __future__ import annotations

import logging
from collections import Counter
from typing import Iterable, Iterator, Optional

import apache_beam as beam

from schemas.arrow import STATUS_ACCEPTED
from schemas.config import StoreConfig, TranslatorConfig
from schemas.records import STATUS_FAILED, TranslationOutcome, TranslationRequest, request_key
from transforms.group_metrics import MeasuredCoGroupByKey, MeasuredCombinePerKey
from transforms.missing import NOT_IN_STORE, STALE_VERDICT, MissingTranslation
from transforms.translation_store import ReadStoreEntries, StoreEntry

MISSES = "misses"
STALE = "stale"  # needed keys whose only stored verdicts are stale
NAMESPACE = "translate"  # Beam metrics of the translate stage
FAILURE_EXAMPLES = "failure_examples"  # summary key: failed_<reason> -> one example of its cause
log = logging.getLogger(__name__)


def _classify(item: tuple[tuple[str, str], dict], retry_rejected: bool) -> Iterator:
    """Per needed (text, lang): a store hit (main output, with its counts), a miss to translate, or a
    stale one (STALE: a miss whose stored verdict is of older checks and cannot be judged again)."""
    (hash_, lang), grouped = item
    texts = list(grouped["need"])
    if not texts:
        return  # stored, but not needed by this run
    entries: list[StoreEntry] = list(grouped["store"])
    entry = entries[0] if entries else None
    text, context = texts[0]
    request = TranslationRequest(hash_, lang, text, context)
    if entry is not None and entry.stale:
        yield beam.pvalue.TaggedOutput(STALE, request)
    elif entry is not None and (entry.status == STATUS_ACCEPTED or not retry_rejected):
        counts = {"requested": 1, f"cache_hits_{entry.status}": 1}
        yield (hash_, lang, entry), {**counts, "rejudged_on_read": 1} if entry.rejudged else counts
    else:
        yield beam.pvalue.TaggedOutput(MISSES, request)


def _outcome_counts(outcome: TranslationOutcome) -> dict:
    """The counts one translated request contributes to the summary (and to Beam metrics); a failure
    also brings its cause (FAILURE_EXAMPLES), of which the summary keeps one per reason."""
    result = STATUS_ACCEPTED if outcome.status == STATUS_ACCEPTED else f"{outcome.status}_{outcome.reason}"
    beam.metrics.Metrics.counter(NAMESPACE, result).inc()
    counts: dict = Counter({"requested": 1, "translated": 1, result: 1, "sent": outcome.requests_sent})
    if outcome.strict_retry:
        counts["retried"] += 1
    # Context-enhanced translation: requests sent with a context, and those whose answer lost it
    for name, happened in (("with_context", outcome.request.context is not None),
                           ("context_fallback", outcome.context_fallback)):
        if happened:
            beam.metrics.Metrics.counter(NAMESPACE, name).inc()
            counts[name] += 1
    if outcome.status == STATUS_FAILED:
        counts[FAILURE_EXAMPLES] = {result: outcome.raw_output or ""}
    return counts


class Summarize(beam.CombineFn):
    """Count dicts -> one dict of per-key sums (keys sorted), plus FAILURE_EXAMPLES: for each failure
    reason, one example of its cause (the smallest, so the choice does not depend on bundling)."""

    def create_accumulator(self) -> tuple[Counter, dict]:
        return Counter(), {}

    def add_input(self, acc: tuple[Counter, dict], counts: dict) -> tuple[Counter, dict]:
        total, examples = acc
        for key, value in counts.items():
            if key == FAILURE_EXAMPLES:
                for reason, example in value.items():
                    examples[reason] = min(examples.get(reason, example), example)
            else:
                total[key] += value
        return acc

    def merge_accumulators(self, accs: Iterable[tuple[Counter, dict]]) -> tuple[Counter, dict]:
        merged = self.create_accumulator()
        for total, examples in accs:
            self.add_input(merged, {**total, FAILURE_EXAMPLES: examples})
        return merged

    def extract_output(self, acc: tuple[Counter, dict]) -> dict:
        total, examples = acc
        summary: dict = dict(sorted(total.items()))
        if examples:
            summary[FAILURE_EXAMPLES] = dict(sorted(examples.items()))
        return summary


class _UniqueText(beam.CombineFn):
    """(text, context, languages) of one request key -> ((text, context): the smallest spelling,
    every language asked for it), so a text used where it needs fewer languages and where it needs
    more is requested once per language."""

    def create_accumulator(self) -> tuple[Optional[tuple], frozenset]:
        return None, frozenset()

    def add_input(self, acc: tuple, element: tuple) -> tuple:
        text, context, langs = element
        return ((text, context) if acc[0] is None else min(acc[0], (text, context))), acc[1] | frozenset(langs)

    def merge_accumulators(self, accs: Iterable[tuple]) -> tuple:
        merged = self.create_accumulator()
        for text, langs in accs:
            if text is not None:
                merged = self.add_input(merged, (*text, langs))
        return merged

    def extract_output(self, acc: tuple) -> tuple[Optional[tuple], frozenset]:
        return acc


def _keyed(text: str | tuple, languages: tuple[str, ...]) -> tuple[str, tuple]:
    """(request key, (text, context, languages)) of a text alone (into every language), of (text, its
    languages), or of (text, its languages, its context)."""
    if isinstance(text, str):
        return request_key(text), (text, None, languages)
    text, langs, context = (*text, None)[:3]
    return request_key(text, context), (text, context, langs)


def _accepted_new(outcome: TranslationOutcome) -> Iterator[tuple[str, tuple[str, str]]]:
    if outcome.status == STATUS_ACCEPTED:
        yield outcome.request.text_hash, (outcome.request.lang, outcome.translation)


def _accepted_hit(item: tuple[str, str, StoreEntry]) -> Iterator[tuple[str, tuple[str, str]]]:
    hash_, lang, entry = item
    if entry.status == STATUS_ACCEPTED:
        yield hash_, (lang, entry.translation)


def _with_accelerator(transform: beam.PTransform, translator: TranslatorConfig) -> beam.PTransform:
    """The translate step with the translator's accelerator hint, when it starts its own server: on
    Dataflow only this step then runs on GPU workers (right fitting), the rest on CPU workers."""
    if translator.managed is not None and translator.accelerator:
        return transform.with_resource_hints(accelerator=translator.accelerator)
    return transform


class TranslateTexts(beam.PTransform):
    """Normalized English texts, each alone (into every language), as (text, its languages) or as (text,
    its languages, its context: sent with it, schemas/prompts.py) -> {"translations": (request key
    (records.request_key), (lang, translation)) accepted, from
    the store or new; "summary": one dict of counts (requested, cache hits, rejudged_on_read: hits
    whose verdict of older checks was judged again, stale_verdict: stored verdicts that could not be,
    translated, accepted, rejected_<reason>, failed_<reason>, retried) with FAILURE_EXAMPLES when
    requests failed; "missing": a MissingTranslation per request with no decided outcome (not in the
    store, or stale, and no translator; or failed for good: with the failure's reason and cause)}."""

    def __init__(self, store: StoreConfig, translator: Optional[TranslatorConfig], languages: Iterable[str]):
        super().__init__()
        self.store = store
        self.translator = translator
        self.languages = tuple(languages)

    def expand(self, texts):
        languages = self.languages
        needed = (texts
                  | "Hash" >> beam.Map(_keyed, languages)
                  | "Unique" >> MeasuredCombinePerKey(_UniqueText())
                  | "PerLanguage" >> beam.FlatMap(lambda kv: [((kv[0], lang), kv[1][0]) for lang in languages
                                                             if lang in kv[1][1]]))
        stored = texts.pipeline | "ReadStore" >> ReadStoreEntries(self.store, languages)
        retry = self.translator is not None and self.translator.retry_rejected
        looked_up = ({"need": needed, "store": stored}
                     | "Lookup" >> MeasuredCoGroupByKey()
                     | "Classify" >> beam.FlatMap(_classify, retry_rejected=retry).with_outputs(MISSES, STALE,
                                                                                              main="hits"))
        hits = looked_up.hits | "HitEntries" >> beam.Map(lambda hit: hit[0])
        counts = [looked_up.hits | "HitCounts" >> beam.Map(lambda hit: hit[1])]
        translations = [hits | "HitTranslations" >> beam.FlatMap(_accepted_hit)]
        if self.translator is not None:
            # Imported here: the HTTP client, which a build that only reads the store does not need.
            from transforms.translate_batches import BatchMisses, TranslateBatches

            counts.append(looked_up[STALE] | "StaleCounts" >> beam.Map(lambda r: {STALE_VERDICT: 1}))
            outcomes = ((looked_up[MISSES], looked_up[STALE])
                        | "MissesAndStale" >> beam.Flatten()
                        | "Batches" >> BatchMisses(self.store.fingerprint, self.translator.batch_size)
                        | "Translate" >> _with_accelerator(beam.ParDo(TranslateBatches(self.store, self.translator)),
                                                           self.translator))
            counts.append(outcomes | "OutcomeCounts" >> beam.Map(_outcome_counts))
            translations.append(outcomes | "NewTranslations" >> beam.FlatMap(_accepted_new))
            missing = (outcomes | "StillMissing" >> beam.Filter(lambda o: o.status == STATUS_FAILED)
                       | "FailedRequests" >> beam.Map(
                           lambda o: MissingTranslation(o.request, f"{o.status}_{o.reason}", o.raw_output)))
        else:
            missing = []
            for tag, reason, label in ((MISSES, NOT_IN_STORE, "NotInStore"), (STALE, STALE_VERDICT, "Stale")):
                counts.append(looked_up[tag] | f"{label}Counts" >> beam.Map(
                    lambda r, reason=reason: {"requested": 1, reason: 1}))
                missing.append(looked_up[tag] | f"{label}Missing" >> beam.Map(MissingTranslation, reason))
            missing = missing | "AllMissing" >> beam.Flatten()
        summary = counts | "AllCounts" >> beam.Flatten() | "Sum" >> beam.CombineGlobally(Summarize())
        return {"translations": translations | "AllTranslations" >> beam.Flatten(), "summary": summary,
                "missing": missing}
