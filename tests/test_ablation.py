"""Regenerating coverage splits for ablations from one translation store: zero translator calls,
verified shards, a report and a manifest diff showing exactly the change; a plan that needs
translations the store lacks stops before writing anything and lists them."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from pipeline.output_files import iter_jsonl_parts
from tests.helpers import PAPER_PLAN, assert_sorted_parts, coco_captions, coco_source, fill_store, write_config

CLI = str(Path(sys.executable).with_name("florenz-data"))
PAPER = {**PAPER_PLAN, "eval_fraction": 0.2, "shard_size": 16}


def build(config: Path, *flags: str) -> subprocess.CompletedProcess:
    return subprocess.run([CLI, "build", str(config), *flags], capture_output=True, text=True, timeout=600)


def config_for(root: Path, store: Path, plan: dict) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    config = write_config(root, [coco_source()], plan)
    raw = yaml.safe_load(config.read_text())
    raw["store"]["path"] = str(store)
    config.write_text(yaml.safe_dump(raw))
    return config


@pytest.fixture(scope="module")
def paper(tmp_path_factory) -> tuple[Path, Path]:
    """(the store, the paper split's output) built from it."""
    tmp = tmp_path_factory.mktemp("ablation")
    store = tmp / "store"
    fill_store(store, [a["caption"] for a in coco_captions()["annotations"]], PAPER["translation_languages"])
    done = build(config_for(tmp / "paper", store, PAPER))
    assert done.returncode == 0, done.stderr[-2000:]
    return store, tmp / "paper" / "out"


def zero_translator_calls(output: Path) -> dict:
    translation = json.loads((output / "stats.json").read_text())["translation"]
    assert translation["requested"] == translation["cache_hits_accepted"] > 0
    assert not {"translated", "sent", "not_in_store"} & set(translation)
    return translation


def test_an_ablation_split_comes_from_the_same_store_with_zero_translator_calls(tmp_path, paper):
    from pipeline.report import write_report
    from pipeline.verify import verify_output

    store, paper_out = paper
    ablation = {**PAPER, "caption_languages": ["en", "de", "fr"]}  # fr moves from held-out to captioned
    done = build(config_for(tmp_path / "fr", store, ablation))
    assert done.returncode == 0, done.stderr[-2000:]
    out = tmp_path / "fr" / "out"
    assert zero_translator_calls(out) == zero_translator_calls(paper_out)
    assert verify_output(str(out)) == [] and verify_output(str(paper_out)) == []

    diff = write_report(str(out), str(tmp_path / "report"), str(paper_out))["diff"]
    paper_train = json.loads((paper_out / "stats.json").read_text())["splits"]["train"]["annotations"]
    assert diff["plan"] == {"caption_languages": {"before": ["en", "de"], "after": ["en", "de", "fr"]}}
    assert diff["annotations"] == {"train": {"caption-fr": {"before": 0, "after": paper_train["caption-de"]}}}
    assert diff["images_moved"] == {} and diff["images_only_before"] == diff["images_only_after"] == 0
    report = (tmp_path / "report" / "report.md").read_text()
    assert "0 (held out)" in report and "| fr | 500 | 0 | 100.0% |" in report
    assert (tmp_path / "report" / "coverage.png").stat().st_size > 10_000


def test_english_only_captions_and_another_seed_need_no_translator_either(tmp_path, paper):
    from pipeline.report import diff, Output

    store, paper_out = paper
    plan = {**PAPER, "caption_languages": ["en"], "seed": 7}
    assert build(config_for(tmp_path / "en", store, plan)).returncode == 0
    out = tmp_path / "en" / "out"
    zero_translator_calls(out)
    changes = diff(Output(str(out)), Output(str(paper_out)))
    assert "caption-de" in changes["annotations"]["train"] and changes["annotations"]["train"]["caption-de"]["after"] == 0
    assert changes["images_moved"]  # a new seed reassigns the eval split


def test_a_plan_needing_missing_translations_stops_before_writing_and_lists_them(tmp_path, paper):
    store, _ = paper
    plan = {**PAPER, "languages": [*PAPER["languages"], "it"], "translation_languages": [
        *PAPER["translation_languages"], "it"]}
    config = config_for(tmp_path / "it", store, plan)
    done = build(config, "--records_per_part=3")
    assert done.returncode == 2 and "not in the store (it " in done.stderr
    out = tmp_path / "it" / "out"
    assert sorted(p.name for p in out.iterdir()) == ["missing_translations", "missing_translations.json"]
    summary = json.loads((out / "missing_translations.json").read_text())
    texts = list(iter_jsonl_parts(str(out / "missing_translations")))
    assert summary["per_language"] == {"it": summary["total"]} == {"it": len(texts)}
    assert summary["per_reason"] == {"not_in_store": len(texts)} and summary["texts"] == "missing_translations"
    assert_sorted_parts(out / "missing_translations", 3, ("lang", "text"), min_parts=100)
    assert len({t["text"] for t in texts}) == len(texts) > 400 and {t["lang"] for t in texts} == {"it"}
    allowed = build(config, "--allow-missing-translations")  # the other way out: leave them out, counted
    assert allowed.returncode == 0, allowed.stderr[-2000:]
    stats = json.loads((out / "stats.json").read_text())
    assert stats["splits"]["train"]["missing_translation"]["translation-it"] > 0
    assert not (out / "missing_translations.json").exists()


def test_images_moved_counts_each_key_by_its_split_on_each_side():
    import pyarrow as pa

    from pipeline.report import _images_moved

    before = pa.table({"key": ["a", "b", "c", "d"], "split": ["train", "eval", "train", "train"]})
    after = pa.table({"key": ["f", "c", "b", "a", "e"], "split": ["eval", "eval", "eval", "eval", "train"]})
    assert _images_moved(before, after) == {"images_moved": {"train->eval": 2}, "images_only_before": 1,
                                            "images_only_after": 2}
    assert _images_moved(before.slice(0, 0), after) == {"images_moved": {}, "images_only_before": 0,
                                                        "images_only_after": 5}
