"""florenz-sweep with the tiny sizes on shards the pipeline wrote from the real COCO sample: a 2 sizes x
2 budgets grid runs as four real florenz-train runs, a partial run is resumed, a second invocation
launches nothing, the table holds one final row per run, and florenz-scaling fits it."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytest.importorskip("torch")

from model.scaling import paper_compute  # noqa: E402
from model.sweep import load_sweep_config, run_configs, sweep  # noqa: E402
from model.train_config import train_config_from_dict  # noqa: E402
from schemas.errors import ConfigError  # noqa: E402
from tests.train_support import metrics, paper, train_config  # noqa: E402,F401 (paper: a fixture)

BIN = Path(sys.executable).parent
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}
BATCH = 4  # tests/train_support.py's tiny config


def sweep_config(tmp: Path, base: Path, **fields) -> Path:
    config = {"train": str(base), "out": "sweep", "sizes": ["tiny", "tiny-gemma"], "steps": [2, 3],
              "launch": [str(BIN / "florenz-train")], **fields}
    path = tmp / "sweep.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def florenz(tool: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", f"model.{tool}", *args], capture_output=True, text=True,
                          timeout=1200, env=ENV)


def test_the_grid_runs_once_per_cell_and_the_fits_read_its_table(tmp_path, paper):
    import pyarrow.csv
    import pyarrow.parquet

    base = train_config(tmp_path / "base", *paper, **{"optim.warmup_steps": 1, "run.eval_every": 100,
                                                      "run.checkpoint_every": 100})
    config = sweep_config(tmp_path, base)
    planned = florenz("sweep", str(config), "--dry-run")
    assert planned.returncode == 0, planned.stderr
    assert planned.stdout.count("start ") == 4
    runs = tmp_path / "sweep" / "runs" / "base"
    # a run stopped after one step (its checkpoint written) is resumed, not restarted
    partial = subprocess.run([str(BIN / "florenz-train"), str(runs / "tiny" / "s3" / "train.yaml"), "--steps", "1"],
                             capture_output=True, text=True, timeout=600, env=ENV)
    assert partial.returncode == 0, partial.stderr[-3000:]
    assert florenz("sweep", str(config), "--dry-run").stdout.count("resume ") == 1

    first = florenz("sweep", str(config))
    assert first.returncode == 0, first.stderr
    assert json.loads(first.stdout.strip().splitlines()[-1]) == {"failed_runs": [], "finished_runs": 4}
    steps = [r["step"] for r in metrics(runs / "tiny" / "s3") if "loss" in r]
    assert steps == [1, 2, 3]
    table = pyarrow.parquet.read_table(tmp_path / "sweep" / "results.parquet").to_pylist()
    assert sorted((r["size"], r["steps"]) for r in table) == [("tiny", 2), ("tiny", 3), ("tiny-gemma", 2),
                                                               ("tiny-gemma", 3)]
    for row in table:
        assert row["step"] == row["steps"] and row["seen"] == row["steps"] * BATCH
        assert 0 < row["trainable_params"] <= row["params"]
        assert row["C"] == paper_compute(row["seen"], row["forward_macs"], row["params"], row["trainable_params"])
        # per task-language key (named by the test sets' definitions too, which the eval owns)
        assert row["loss/caption-es"] > 0 and row["loss/translation-es"] > 0 and row["loss/caption-en"] > 0
    assert pyarrow.csv.read_csv(tmp_path / "sweep" / "results.csv").num_rows == 4
    # each size counts its own forward pass; a bigger budget costs proportionally more
    by_run = {(r["size"], r["steps"]): r for r in table}
    assert by_run["tiny", 2]["forward_macs"] != by_run["tiny-gemma", 2]["forward_macs"]
    assert by_run["tiny", 3]["C"] == pytest.approx(by_run["tiny", 2]["C"] * 1.5)

    def finals() -> dict[Path, list[int]]:  # the steps at which each run folder's florenz-train calls ended
        return {p: [r["final"]["step"] for r in metrics(p) if "final" in r] for p in runs.glob("*/s*")}

    before = finals()
    assert before[runs / "tiny" / "s3"] == [1, 3] and before[runs / "tiny" / "s2"] == [2]
    again = florenz("sweep", str(config))
    assert again.returncode == 0, again.stderr
    assert again.stdout.count("done ") == 4 and "start " not in again.stdout and "resume " not in again.stdout
    assert finals() == before
    assert pyarrow.parquet.read_table(tmp_path / "sweep" / "results.parquet").to_pylist() == table

    fitted = florenz("scaling", str(tmp_path / "sweep" / "results.parquet"), "--test-set", "caption-es",
                     "--out", str(tmp_path / "fits"))  # captioning in a held-out language
    assert fitted.returncode == 0, fitted.stderr
    fits = json.loads((tmp_path / "fits" / "fits.json").read_text())["caption-es"]
    assert fits["params_samples"]["n"] == 4 and set(fits["params_samples"]["log10"]) == {"log10_scale", "P", "S"}
    assert (tmp_path / "fits" / "caption-es-loss-vs-params.png").stat().st_size > 10_000
    # four noisy tiny runs may leave fewer than three on the compute frontier: then the law says why
    assert "frontier_runs" in fits["compute"] or "cannot fit" in fits["compute"]["unfitted"]


def test_a_changed_grid_cell_is_refused_before_anything_runs(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump({"data": {"output": "out"}, "model": {"size": "tiny"},
                                    "optim": {"warmup_steps": 1}, "run": {"out": "unused"}}))
    config = load_sweep_config(str(sweep_config(tmp_path, base)))
    sweep(config, dry_run=True)
    assert (tmp_path / "sweep" / "runs" / "base" / "tiny-gemma" / "s3" / "train.yaml").exists()
    changed = load_sweep_config(str(sweep_config(tmp_path, base, overrides={"optim.lr": 0.5})))
    with pytest.raises(ConfigError, match="started with a different config"):
        sweep(changed)


def test_splits_are_outputs_or_overrides_and_the_sweeps_own_fields_are_protected(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump({"data": {"output": "out"}, "model": {"size": "tiny"},
                                    "optim": {"warmup_steps": 1}, "run": {"out": "unused"}}))
    suf = {"steps_per_stage": 1, "parts": ["encoder"]}  # the scheduled-unfreezing arm
    splits = {"paper": {}, "fr-captioned": "built/ablation", "natural": {"data.balance": "natural"},
              "suf": {"trainable.unfreeze": suf}}
    config = load_sweep_config(str(sweep_config(tmp_path, base, splits=splits)))
    cells = {run.name: raw for run, raw in run_configs(config)}
    assert len(cells) == 4 * 2 * 2
    assert cells["paper/tiny/s2"]["data"]["output"] == str(tmp_path / "out")
    assert cells["fr-captioned/tiny/s2"]["data"]["output"] == str(tmp_path / "built" / "ablation")
    assert cells["natural/tiny-gemma/s3"]["data"]["balance"] == "natural"
    assert cells["natural/tiny-gemma/s3"]["optim"]["steps"] == 3
    assert cells["natural/tiny-gemma/s3"]["run"]["out"] == str(tmp_path / "sweep/runs/natural/tiny-gemma/s3")
    for size in ("tiny", "tiny-gemma"):
        assert train_config_from_dict(cells[f"suf/{size}/s2"]).trainable.unfreeze.parts == ("encoder",)
        assert train_config_from_dict(cells[f"paper/{size}/s2"]).trainable.unfreeze is None  # off by default
    for fields, field in [({"overrides": {"optim.steps": 9}}, "sweep.overrides.optim.steps"),
                          ({"steps": [0]}, "sweep.steps[0]"), ({"budgets": [1]}, "sweep.budgets")]:
        with pytest.raises(ConfigError) as refused:
            run_configs(load_sweep_config(str(sweep_config(tmp_path, base, **fields))))
        assert refused.value.field == field
    with pytest.raises(ConfigError, match="no cosine decay"):  # warm-up as long as the budget
        sweep(load_sweep_config(str(sweep_config(tmp_path, base, steps=[1]))), dry_run=True)


def test_seeds_repeat_every_cell_in_folders_of_their_own(tmp_path):
    base = tmp_path / "base.yaml"
    base.write_text(yaml.safe_dump({"data": {"output": "out"}, "model": {"size": "tiny"},
                                    "optim": {"warmup_steps": 1}, "run": {"out": "unused", "seed": 7}}))
    cells = {run.name: (run, raw) for run, raw in run_configs(load_sweep_config(str(
        sweep_config(tmp_path, base, seeds=[0, 1]))))}
    assert len(cells) == 2 * 2 * 2
    run, raw = cells["base/tiny-gemma/s3/seed1"]
    assert (run.seed, raw["run"]["seed"]) == (1, 1)
    assert raw["run"]["out"] == str(tmp_path / "sweep/runs/base/tiny-gemma/s3/seed1")
    unseeded = {run.name: raw for run, raw in run_configs(load_sweep_config(str(sweep_config(tmp_path, base))))}
    assert unseeded["base/tiny/s2"]["run"]["seed"] == 7  # without seeds: the base config's, folders as before
    with pytest.raises(ConfigError) as refused:
        run_configs(load_sweep_config(str(sweep_config(tmp_path, base, seeds=[0], overrides={"run.seed": 3}))))
    assert refused.value.field == "sweep.overrides.run.seed"


def test_the_paper_sweep_is_the_papers_grid(tmp_path, capsys):
    paper = load_sweep_config(str(Path(__file__).parent.parent / "configs" / "sweep-paper.yaml"))
    config = paper.model_copy(update={"out": str(tmp_path)})
    sweep(config, dry_run=True)  # writes and validates every run's training config, launches nothing
    assert capsys.readouterr().out.count("start ") == 16
    for run, _ in run_configs(config):
        train = yaml.safe_load(run.config.read_text())
        assert train["data"]["batch_size"] * train["optim"].get("grad_accum", 1) * 8 == 1024
        assert train["optim"]["steps"] in (500, 2000, 5000, 10000) and train["model"]["init"] == "pretrained"
