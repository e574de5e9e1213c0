"""`florenz-data eval-translator`: translate a parallel test set through the same handler and
checks the pipeline uses, and report BLEU / chrF (sacrebleu) and rejection rates per reason, so users
can choose a model. Rejected and failed outputs count as empty hypotheses in the "all" scores (a model
whose outputs get rejected is worse), and are left out of the "accepted" scores."""
from __future__ import annotations

import dataclasses
import json
import os
import tempfile
from collections import Counter
from pathlib import Path
from typing import Optional

import apache_beam as beam
import sacrebleu
from apache_beam.io.filesystems import FileSystems
from apache_beam.ml.inference.base import RunInference
from apache_beam.options.pipeline_options import PipelineOptions

from schemas.arrow import STATUS_ACCEPTED
from schemas.config import TranslatorConfig
from schemas.records import TranslationOutcome, TranslationRequest, normalize_text, text_hash
from transforms.translator import VLLMTranslationHandler

DEFAULT_MULTI30K = str(Path(os.environ.get("FLORENZ_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"))
                       / "multi30k")


def read_multi30k(root: str, lang: str, split: str, limit: Optional[int]) -> list[tuple[str, str]]:
    """(English, reference) pairs, line-aligned from raw/{split}.{en,lang}.gz (local or a bucket)."""
    def lines(code: str) -> list[str]:
        path = FileSystems.join(root, "raw", f"{split}.{code}.gz")
        with FileSystems.open(path, compression_type="gzip") as f:
            return f.read().decode("utf-8").splitlines()
    pairs = list(zip(lines("en"), lines(lang)))
    return pairs[:limit] if limit else pairs


def score(pairs: list[tuple[str, str]], outcomes: list[TranslationOutcome], lang: str) -> dict:
    """BLEU/chrF over all pairs and over accepted ones, plus outcome counts per reason."""
    by_hash = {o.request.text_hash: o for o in outcomes}
    hyps, refs, acc_hyps, acc_refs = [], [], [], []
    for english, reference in pairs:
        outcome = by_hash[text_hash(normalize_text(english))]
        accepted = outcome.status == STATUS_ACCEPTED
        hyps.append(outcome.translation if accepted else "")
        refs.append(reference)
        if accepted:
            acc_hyps.append(outcome.translation)
            acc_refs.append(reference)
    tokenize = "zh" if lang == "zh" else "13a"
    result = Counter(o.status if o.status == STATUS_ACCEPTED else f"{o.status}_{o.reason}" for o in outcomes)
    report = {"lang": lang, "pairs": len(pairs), "unique_sources": len(outcomes), "outcomes": dict(sorted(result.items())),
              "acceptance_rate": result[STATUS_ACCEPTED] / max(1, len(outcomes)),
              "all": {"bleu": sacrebleu.corpus_bleu(hyps, [refs], tokenize=tokenize).score,
                      "chrf": sacrebleu.corpus_chrf(hyps, [refs]).score}}
    if acc_hyps:
        report["accepted"] = {"bleu": sacrebleu.corpus_bleu(acc_hyps, [acc_refs], tokenize=tokenize).score,
                              "chrf": sacrebleu.corpus_chrf(acc_hyps, [acc_refs]).score}
    return report


def evaluate_translator(translator: TranslatorConfig, pairs: list[tuple[str, str]], lang: str,
                        beam_args: list[str]) -> dict:
    """Run the unique English sources through the translator on Beam and score the outcomes."""
    unique = sorted({normalize_text(en) for en, _ in pairs})
    requests = [TranslationRequest(text_hash(t), lang, t) for t in unique]
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "outcomes.jsonl")
        with beam.Pipeline(options=PipelineOptions(beam_args)) as p:
            (p | beam.Create(requests) | RunInference(VLLMTranslationHandler(translator))
             | beam.Map(lambda o: json.dumps(dataclasses.asdict(o), ensure_ascii=False))
             | beam.io.WriteToText(path, shard_name_template=""))
        with open(path, encoding="utf-8") as f:
            rows = [json.loads(line) for line in f]
    outcomes = [TranslationOutcome(**{**r, "request": TranslationRequest(**r["request"])}) for r in rows]
    return score(pairs, outcomes, lang)
