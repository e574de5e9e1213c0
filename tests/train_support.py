"""Fixtures for the training side: tokenizers trained here (Florence-2-like byte-level BPE for the
encoder, Gemma-2-like SentencePiece-style BPE for the decoder), pipeline outputs built from the real
COCO sample with a filled store, and tiny training configs."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.helpers import PAPER_PLAN, coco_captions, coco_source, fake_translation, fill_store, run_build, \
    write_config


def corpus_texts() -> list[str]:
    captions = [a["caption"] for a in coco_captions()["annotations"]]
    from model.prompts import CAPTION_TASK, DECODER_PREFIXES, TRANSLATION_TASK
    from schemas.languages import LANGUAGE_NAMES
    langs = PAPER_PLAN["languages"]
    return (captions + [fake_translation(c, l) for c in captions for l in langs]
            + [f"The target language is {LANGUAGE_NAMES[l]}. {CAPTION_TASK} {TRANSLATION_TASK}" for l in langs]
            + list(DECODER_PREFIXES.values()))


def train_tokenizers(root: Path) -> tuple[Path, Path]:
    """(encoder tokenizer folder, decoder tokenizer folder), trained on the COCO sample's texts."""
    from model.local_tokenizers import train_tokenizers as train

    return train(corpus_texts(), root)


def build_translated_output(tmp: Path, plan: dict | None = None) -> Path:
    """The paper's plan over the real COCO sample, every caption 'translated' (a store fixture), with
    an eval split: the pipeline's own build writes the shards."""
    plan = plan or {**PAPER_PLAN, "eval_fraction": 0.2, "shard_size": 16}
    captions = [a["caption"] for a in coco_captions()["annotations"]]
    fill_store(tmp / "store", captions, [l for l in plan["languages"] if l != "en"])
    run_build(write_config(tmp, [coco_source()], plan))
    return tmp / "out"


def train_config(tmp: Path, output: Path, tokenizers: tuple[Path, Path], **overrides: Any) -> Path:
    """A tiny training config; `overrides` are dotted keys ("optim.steps": 20)."""
    config: dict[str, Any] = {
        "data": {"output": str(output), "image_size": 64, "batch_size": 4, "workers": 0, "shuffle_buffer": 16,
                 "eval_images": 8, "max_target_tokens": 32},
        "model": {"size": "tiny", "init": "random", "encoder_tokenizer": str(tokenizers[0]),
                  "decoder_tokenizer": str(tokenizers[1])},
        "optim": {"steps": 20, "lr": 1e-3, "warmup_steps": 5, "weight_decay": 0.0},
        "run": {"out": str(tmp / "run"), "seed": 0, "precision": "fp32", "log_every": 1, "eval_every": 10,
                "checkpoint_every": 10, "progress": False},
    }
    for dotted, value in overrides.items():
        section, name = dotted.split(".")
        config.setdefault(section, {})[name] = value
    tmp.mkdir(parents=True, exist_ok=True)
    path = tmp / "train.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.fixture(scope="module")
def paper(tmp_path_factory):
    """(pipeline output of the paper's plan over the real COCO sample, with an eval split; tokenizer
    folders): the training tests' shared input, built once per test module that imports this fixture."""
    root = tmp_path_factory.mktemp("paper")
    return build_translated_output(root), train_tokenizers(root)
