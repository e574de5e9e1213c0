"""One config contract (schemas/contract.py) for run and training configs: a typo'd key, an unknown
model size, a bad balance mode, a language without rules are each refused, through the real CLIs,
in one line naming the field and what it allows; the JSON Schema files editors use are generated
from the same models and must be current."""
from __future__ import annotations

import importlib.util
import json

import pytest

from tests.helpers import REPO, PAPER_PLAN, caption_parquet_source, write_config
from tests.hostile import run_cli
from tests.train_support import train_config


def _export_script():
    spec = importlib.util.spec_from_file_location("export_config_schemas", REPO / "scripts" / "export_config_schemas.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_committed_json_schemas_are_generated_from_the_models():
    for path, text in _export_script().rendered().items():
        assert (REPO / path).read_text(encoding="utf-8") == text, \
            f"{path} is stale: run .venv/bin/python scripts/export_config_schemas.py"


def test_the_run_schema_names_what_loading_allows():
    schema = json.loads((REPO / "schemas" / "run_config.schema.json").read_text())
    assert schema["additionalProperties"] is False and set(schema["required"]) == {"output", "sources", "store", "plan"}
    plan = schema["$defs"]["CoveragePlan"]
    assert "kk" not in plan["properties"]["source_language"]["enum"] and "de" in plan["properties"]["source_language"]["enum"]
    train = json.loads((REPO / "schemas" / "train_config.schema.json").read_text())
    assert "florenz-0.4b" in train["$defs"]["ModelConfig"]["properties"]["size"]["enum"]


@pytest.mark.parametrize("change, field, words", [
    ({"translator": {"model": "m", "endpoints": ["http://127.0.0.1:9/v1"], "max_in_fligth": 8}},
     "translator.max_in_fligth", "unknown field (known: "),
    ({"plan": {**PAPER_PLAN, "caption_langauges": ["en"]}}, "plan.caption_langauges", "caption_languages, eval_fraction"),
    ({"plan": {**PAPER_PLAN, "languages": [*PAPER_PLAN["languages"], "kk"],
               "translation_languages": [*PAPER_PLAN["translation_languages"], "kk"]}},
     "plan.languages[6]", "'kk' has no prompt name or translation checks"),
    ({"translator": {"model": "m", "endpoints": ["http://127.0.0.1:9/v1"], "max_in_flight": "8"}},
     "translator.max_in_flight", "must be a positive integer, got '8'"),
], ids=["typo in translator", "typo in plan", "language without rules", "string for a number"])
def test_a_wrong_run_config_is_refused_by_the_cli_naming_the_field(tmp_path, change, field, words):
    plan = change.pop("plan", PAPER_PLAN)
    config = write_config(tmp_path, [caption_parquet_source(tmp_path, [["a caption long enough to be kept here"]])],
                          plan, **change)
    done = run_cli("build", config)
    assert done.returncode == 2 and "Traceback" not in done.output, done.output[-3000:]
    assert f"config error: {field}: " in done.stderr and words in done.stderr, done.stderr[-3000:]
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("override, field, words", [
    ({"optim.learning_rate": 1e-3}, "train.optim.learning_rate", "unknown field (known: betas, clip, "),
    ({"model.size": "florenz-7b"}, "train.model.size", "'florenz-0.4b', 'florenz-1.0b'"),
    ({"data.balance": "balanced"}, "train.data.balance", "one of 'uniform', 'natural', or a mapping"),
    ({"data.balance": {"caption-de": 1.0, "captoin-fr": 2.0}}, "train.data.balance", "task-language keys"),
], ids=["typo", "unknown size", "unknown balance mode", "unknown balance key"])
def test_a_wrong_training_config_is_refused_by_the_cli_naming_the_field(tmp_path, override, field, words):
    config = train_config(tmp_path, tmp_path / "out", (tmp_path / "enc", tmp_path / "dec"), **override)
    done = run_cli(config, program="florenz-train")
    assert done.returncode == 2 and "Traceback" not in done.output, done.output[-3000:]
    assert f"config error: {field}: " in done.stderr and words in done.stderr, done.stderr[-3000:]
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("raw, field", [
    ({"size": "tiny", "init": "pretrained"}, "train.model.florence"),
    ({"size": 3}, "train.model.size"),
])
def test_model_settings_the_code_relies_on_are_checked(tmp_path, raw, field):
    from model.train_config import train_config_from_dict
    from schemas.errors import ConfigError

    base = {"data": {"output": "o"}, "optim": {}, "run": {"out": "r"}}
    with pytest.raises(ConfigError) as refused:
        train_config_from_dict({**base, "model": raw})
    assert refused.value.field == field


def test_paths_resolve_against_the_config_folder_and_a_typo_in_a_nested_key_is_not_ignored(tmp_path):
    from model.train_config import train_config_from_dict
    from schemas.errors import ConfigError

    config = train_config_from_dict({"data": {"output": "o"}, "model": {"init": "ckpt"}, "optim": {}, "run": {"out": "r"}},
                                    base_dir="/base")
    assert (config.data.output, config.run.out, config.model.init) == ("/base/o", "/base/r", "/base/ckpt")
    with pytest.raises(ConfigError, match=r"train\.optim\.betas\[1\]: must be a number in \[0, 1\)"):
        train_config_from_dict({"data": {"output": "o"}, "model": {}, "optim": {"betas": [0.9, 1.5]}, "run": {"out": "r"}})


def test_the_shipped_configs_hold_to_the_contract():
    from model.sweep import load_sweep_config
    from model.train_config import load_train_config
    from schemas.config import load_config

    loaders = {"train-": load_train_config, "sweep-": load_sweep_config}
    for path in sorted((REPO / "configs").glob("*.yaml")):
        load = next((loader for prefix, loader in loaders.items() if path.name.startswith(prefix)), load_config)
        load(str(path))


def test_concurrency_is_still_read_as_max_in_flight():
    from schemas.config import RunConfig
    from schemas.errors import ConfigError

    def translator(**fields):
        raw = {"output": "out", "sources": [{"name": "c", "type": "coco", "captions": "c.json", "images": "im"}],
               "store": {"path": "store"}, "plan": PAPER_PLAN,
               "translator": {"model": "m", "endpoints": ["http://127.0.0.1:9/v1"], **fields}}
        return RunConfig.from_dict(raw, base_dir="/base").translator

    assert translator(concurrency=8).max_in_flight == 8
    with pytest.raises(ConfigError) as refused:
        translator(concurrency=8, max_in_flight=4)
    assert refused.value.field == "translator.concurrency"
