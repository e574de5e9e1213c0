"""florenz-sweep SWEEP_CONFIG: the paper's grid of separate training runs, and the table the fits read.

Every (coverage split × model size × step budget) is its own `florenz-train` run in its own folder, with
`optim.steps` set to the budget, so each budget has its own full cosine schedule (the paper's regime: an
intermediate checkpoint of a longer run is mid-schedule, at a higher learning rate, and would bias the
fits). Runs are launched one after another as subprocesses; a finished run is skipped, a partial one is
resumed by florenz-train from its last checkpoint. When a run has finished, its final evaluation becomes
one row of SWEEP_OUT/results.parquet and results.csv: split, size, P, trained P, steps, S, C (the paper's
definition, model/scaling.py), eval loss per test set and per task-language key.

    florenz-sweep configs/sweep-paper.yaml            # then: florenz-scaling SWEEP_OUT/results.parquet --out fits/
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any, Optional, Union

import yaml
from pydantic import BaseModel, ConfigDict, Field, NonNegativeInt, PositiveInt

from model.scaling import forward_macs, paper_compute
from model.train_config import load_train_config
from schemas.contract import Path as ConfigPath, resolve_against, validate_config
from schemas.errors import ConfigError

# Set by the sweep for every run; an override of one of them would break the grid.
SWEEP_FIELDS = ("model.size", "optim.steps", "run.out")
RESULTS = ("results.parquet", "results.csv")


class SweepConfig(BaseModel):
    """The sweep's own settings; everything about one run stays in the training config it starts from."""
    model_config = ConfigDict(extra="forbid", frozen=True)

    train: ConfigPath  # the base training config (YAML), relative to this file
    out: ConfigPath  # the sweep folder: runs/, results.parquet, results.csv
    # model.size of each arm, or size -> dotted overrides for that size (batch split, lr per size)
    sizes: Union[list[str], dict[str, dict[str, Any]]] = Field(min_length=1)
    steps: list[PositiveInt] = Field(min_length=1)  # step budgets: one cosine schedule each
    # run.seed of each repeat (one run per seed); unset: one run with the base config's seed
    seeds: Optional[list[NonNegativeInt]] = Field(default=None, min_length=1)
    # split name -> a built pipeline output folder (data.output), or dotted overrides of the training config
    splits: dict[str, Union[ConfigPath, dict[str, Any]]] = Field(default_factory=lambda: {"base": {}}, min_length=1)
    overrides: dict[str, Any] = Field(default_factory=dict)  # dotted fields for every run
    launch: Optional[list[str]] = None  # the training command before the config; default: this Python's florenz-train
    macs_device: str = "cpu"  # where a model of each size runs once to count its forward MACs


@dataclasses.dataclass(frozen=True)
class Run:
    split: str
    size: str
    steps: int
    folder: Path
    seed: Optional[int] = None  # None: the base config's

    @property
    def name(self) -> str:
        return f"{self.split}/{self.size}/s{self.steps}" + ("" if self.seed is None else f"/seed{self.seed}")

    @property
    def config(self) -> Path:
        return self.folder / "train.yaml"


def load_sweep_config(path: str) -> SweepConfig:
    """The sweep config, its paths resolved against its folder; a wrong field is refused by its dotted name."""
    with open(path, encoding="utf-8") as f:
        raw = yaml.safe_load(f)
    return validate_config(SweepConfig, raw, "sweep", base_dir=os.path.dirname(os.path.abspath(path)))


def _set(raw: dict, dotted: str, value: Any, field: str) -> None:
    section, _, name = dotted.partition(".")
    if not name or "." in name:
        raise ConfigError(field, f"{dotted!r} is not a section.field name")
    if dotted in SWEEP_FIELDS:
        raise ConfigError(field, f"{dotted} is set by the sweep (sizes, steps, out)")
    raw.setdefault(section, {})[name] = value


def run_configs(config: SweepConfig) -> list[tuple[Run, dict]]:
    """Every run of the grid with its training config (raw, absolute paths), in launch order: splits,
    then sizes, then budgets from short to long, then seeds."""
    with open(config.train, encoding="utf-8") as f:
        base_raw = yaml.safe_load(f)
    base_dir = os.path.dirname(config.train)
    base_raw.setdefault("data", {})
    if "output" in base_raw["data"]:
        base_raw["data"]["output"] = resolve_against(base_raw["data"]["output"], base_dir)
    init = base_raw.get("model", {}).get("init")
    if init not in (None, "random", "pretrained"):  # a Florenz checkpoint folder
        base_raw["model"]["init"] = resolve_against(init, base_dir)
    sizes = config.sizes if isinstance(config.sizes, dict) else {size: {} for size in config.sizes}
    if config.seeds is not None and "run.seed" in config.overrides:
        raise ConfigError("sweep.overrides.run.seed", "is set by sweep.seeds; remove one of them")
    runs = []
    for split, setting in config.splits.items():
        for size, size_overrides in sizes.items():
            for steps, seed in ((steps, seed) for steps in sorted(config.steps) for seed in config.seeds or [None]):
                raw = json.loads(json.dumps(base_raw))  # a deep copy
                for dotted, value in config.overrides.items():
                    _set(raw, dotted, value, f"sweep.overrides.{dotted}")
                if isinstance(setting, str):
                    raw["data"]["output"] = setting
                else:
                    for dotted, value in setting.items():
                        _set(raw, dotted, value, f"sweep.splits.{split}.{dotted}")
                for dotted, value in size_overrides.items():
                    _set(raw, dotted, value, f"sweep.sizes.{size}.{dotted}")
                folder = Path(config.out) / "runs" / split / size / f"s{steps}"
                run = Run(split, size, steps, folder if seed is None else folder / f"seed{seed}", seed)
                raw.setdefault("model", {})["size"] = size
                raw.setdefault("optim", {})["steps"] = steps
                raw.setdefault("run", {})["out"] = str(run.folder)
                if seed is not None:
                    raw["run"]["seed"] = seed
                runs.append((run, raw))
    return runs


def prepare(run: Run, raw: dict) -> None:
    """Writes the run's training config and validates it with florenz-train's own loader; a run folder
    written with a different config is refused (its checkpoints belong to that config)."""
    text = yaml.safe_dump(raw, sort_keys=True)
    if run.config.exists() and run.config.read_text(encoding="utf-8") != text:
        raise ConfigError(f"sweep run {run.name}", f"{run.folder} was started with a different config; "
                                                   f"remove it or name the split differently")
    run.folder.mkdir(parents=True, exist_ok=True)
    run.config.write_text(text, encoding="utf-8")
    train = load_train_config(str(run.config))
    if train.optim.warmup_steps >= run.steps:
        raise ConfigError(f"sweep run {run.name}", f"optim.warmup_steps ({train.optim.warmup_steps}) leaves no "
                                                   f"cosine decay in a budget of {run.steps} steps")


def _jsonl(path: Path) -> list[dict]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]


def finished(run: Run) -> bool:
    """florenz-train wrote its summary at the end of this run's own schedule."""
    return any(row.get("final", {}).get("step") == run.steps for row in _jsonl(run.folder / "metrics.jsonl"))


def result_row(run: Run, macs_cache: dict[str, float], macs_device: str) -> dict:
    """The final evaluation of a finished run as one row of the table, with C by the paper's definition."""
    final = [r for r in _jsonl(run.folder / "scaling_rows.jsonl") if r["step"] == run.steps]
    if not final:
        raise ConfigError(f"sweep run {run.name}", "finished without eval losses: its data.output needs an eval split")
    row = final[-1]
    train = load_train_config(str(run.config))
    key = json.dumps([train.model.size, train.data.image_size, train.model.encoder_tokenizer,
                      train.model.decoder_tokenizer])
    if key not in macs_cache:
        macs_cache[key] = forward_macs(train.model, train.data.image_size, macs_device)
    macs = macs_cache[key]
    losses = {k: v for k, v in row.items() if k.startswith("loss/")}
    return {"run": run.name, "split": run.split, "size": run.size, "output": train.data.output,
            "seed": train.run.seed, "params": row["params"], "trainable_params": row["trainable_params"],
            "steps": run.steps,
            "step": row["step"], "seen": row["seen"], "forward_macs": macs,
            "C": paper_compute(row["seen"], macs, row["params"], row["trainable_params"]), **losses}


def write_results(rows: list[dict], out: Path) -> None:
    """results.parquet and results.csv; a loss a run lacks is an empty cell. Written to a temporary name
    and renamed, so an interrupted sweep never leaves half a table."""
    import pyarrow as pa
    import pyarrow.csv
    import pyarrow.parquet

    table = pa.Table.from_pylist(rows)
    for name, write in zip(RESULTS, (pyarrow.parquet.write_table, pyarrow.csv.write_csv)):
        partial = out / f".{name}.partial"
        write(table, str(partial))
        os.replace(partial, out / name)


def sweep(config: SweepConfig, dry_run: bool = False) -> tuple[list[dict], list[str]]:
    """Runs what is not finished, then tabulates every finished run: (rows, names of failed runs)."""
    runs = run_configs(config)
    out = Path(config.out)
    for run, raw in runs:  # every config is checked before hours of training start
        prepare(run, raw)
    launch = config.launch or [sys.executable, "-m", "model.train"]
    failed = []
    for run, _ in runs:
        if finished(run):
            print(f"done     {run.name}", flush=True)
            continue
        state = "resume" if (run.folder / "checkpoints" / "latest").exists() else "start"
        print(f"{state:<8} {run.name}", flush=True)
        if dry_run:
            continue
        with open(run.folder / "train.log", "a", encoding="utf-8") as log:
            code = subprocess.call([*launch, str(run.config)], stdout=log, stderr=subprocess.STDOUT)
        if code != 0 or not finished(run):
            print(f"failed   {run.name} (exit {code}, see {run.folder / 'train.log'})", file=sys.stderr, flush=True)
            failed.append(run.name)
    if dry_run:
        return [], failed
    macs_path = out / "forward_macs.json"  # counting needs a model of each size: once per sweep folder
    macs_cache = json.loads(macs_path.read_text()) if macs_path.exists() else {}
    rows = [result_row(run, macs_cache, config.macs_device) for run, _ in runs if finished(run)]
    macs_path.write_text(json.dumps(macs_cache, indent=2, sort_keys=True))
    if rows:
        write_results(rows, out)
    return rows, failed


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="florenz-sweep", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("config", help="sweep config (YAML)")
    parser.add_argument("--dry-run", action="store_true", help="write and check every run's config, print what "
                        "would be started, resumed or skipped, launch nothing")
    args = parser.parse_args(argv)
    try:
        rows, failed = sweep(load_sweep_config(args.config), args.dry_run)
    except ConfigError as error:
        print(f"config error: {error}", file=sys.stderr)
        return 2
    print(json.dumps({"finished_runs": len(rows), "failed_runs": failed}, sort_keys=True))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
