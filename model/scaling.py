"""Scaling laws as the paper fits them, in log10 space, per test set (or per task-language key):

    log10 loss = a0 + a1·log10 C                       on the Pareto frontier of loss vs C
    log10 loss = b0 + b1·log10 P + b2·log10 S          on every finished run

C is training compute, P the parameters, S the seen samples. Each row is the *final* evaluation of one
finished run: the paper trains every step budget as its own cosine schedule, so an intermediate
evaluation of a longer run is a different (undertrained-schedule) point and is left out. Loss vs C is
fitted on the frontier (for each compute, the lowest loss reached with that much or less), because a
model size trained far past or short of its optimum is not what the compute law describes.

Ordinary least squares with t-distribution confidence intervals on every coefficient, and confidence
(the mean law) and prediction (a new run) intervals on every prediction. Rows come from florenz-sweep's
table (results.parquet / results.csv / results.jsonl).

    florenz-scaling sweep/results.parquet --out fits/ --extrapolate-params 11.2e9
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Optional

import numpy as np
from scipy import stats

LOSS_PREFIX = "loss/"
# The official code measures a forward pass at these fixed shapes (src/eval_loss.py, measure_model_complexity).
PAPER_PROMPT_TOKENS = 128
PAPER_DECODER_TOKENS = 128
PAPER_LARGEST_PARAMS = 11.2e9  # Florenz-11.2B: the size the paper's P-law is extrapolated to


def paper_compute(seen: float, forward_macs: float, params: float, trainable_params: float) -> float:
    """C as the paper computes it (official code, src/eval_loss.py): S seen samples × the MACs of one
    sample's forward pass × (1 + P_trained/P), the backward pass costing a forward pass for the
    trained share of the parameters. The one definition of C that the sweep's rows and the fits use."""
    return seen * forward_macs * (1 + trainable_params / params)


def forward_macs(model_config, image_size: int, device: str = "cpu") -> float:
    """MACs of one sample's forward pass at the paper's fixed shapes (an image at the training size,
    128 prompt tokens, 128 decoder tokens), counted by torch's FlopCounterMode (2 FLOPs per MAC) on a
    random model of the config's size and tokenizers: compute depends on the shapes, not the weights."""
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from model.factory import load_tokenizers
    from model.modeling import FlorenzModel
    from model.sizes import florenz_config

    encoder_tokenizer, decoder_tokenizer = load_tokenizers(model_config)
    config = florenz_config(model_config.size, decoder_vocab_size=len(decoder_tokenizer),
                            encoder_vocab_size=len(encoder_tokenizer))
    with torch.device(device):
        model = FlorenzModel(config)
        pixels = torch.zeros(1, 3, image_size, image_size)
        prompt = torch.ones(1, PAPER_PROMPT_TOKENS, dtype=torch.long)
        decoder = torch.ones(1, PAPER_DECODER_TOKENS, dtype=torch.long)
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        states, mask = model.encode(pixels, prompt, torch.ones_like(prompt))
        model.decode(decoder, states, mask, torch.ones_like(decoder))
    return counter.get_total_flops() / 2


@dataclasses.dataclass(frozen=True)
class Coefficient:
    value: float
    low: float
    high: float

    def covers(self, truth: float) -> bool:
        return self.low <= truth <= self.high


@dataclasses.dataclass(frozen=True)
class PowerLawFit:
    """log10 loss = coef · [1, log10 x_1, ...]; `cov` and `sigma2` give the intervals, `r2` is in log space."""
    variables: tuple[str, ...]
    coef: tuple[float, ...]
    cov: tuple[tuple[float, ...], ...]
    sigma2: float
    dof: int
    r2: float
    confidence: float

    @property
    def n(self) -> int:
        return self.dof + len(self.coef)

    @property
    def _t(self) -> float:
        return float(stats.t.ppf(0.5 + self.confidence / 2, self.dof))

    def coefficients(self) -> dict[str, Coefficient]:
        """log10 of the scale (`log10_scale`) and one exponent per variable, with confidence intervals."""
        se = np.sqrt(np.diag(np.asarray(self.cov)))
        names = ("log10_scale", *self.variables)
        return {name: Coefficient(c, c - self._t * s, c + self._t * s) for name, c, s in zip(names, self.coef, se)}

    @property
    def scale(self) -> Coefficient:
        """The scale in linear space (α0, β0), its interval transformed."""
        log = self.coefficients()["log10_scale"]
        return Coefficient(10 ** log.value, 10 ** log.low, 10 ** log.high)

    def exponent(self, variable: str) -> Coefficient:
        return self.coefficients()[variable]

    def predict(self, *xs: np.ndarray, interval: str = "confidence") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(loss, low, high) at the given variable values; `interval` "confidence" bounds the law itself,
        "prediction" a new run's loss (the law's uncertainty plus the runs' scatter around it)."""
        if interval not in ("confidence", "prediction"):
            raise ValueError(f"interval must be confidence or prediction, not {interval!r}")
        columns = np.broadcast_arrays(*(np.log10(np.asarray(x, dtype=float)) for x in xs))
        X = np.column_stack([np.ones(columns[0].size), *(c.ravel() for c in columns)])
        mean = X @ np.asarray(self.coef)
        variance = np.einsum("ij,jk,ik->i", X, np.asarray(self.cov), X)
        if interval == "prediction":
            variance = variance + self.sigma2
        half = self._t * np.sqrt(variance)
        shape = columns[0].shape
        return tuple((10 ** v).reshape(shape) for v in (mean, mean - half, mean + half))

    def to_dict(self) -> dict:
        return {"variables": list(self.variables), "n": self.n, "r2": self.r2, "confidence": self.confidence,
                "residual_sd_log10": float(np.sqrt(self.sigma2)),
                "log10": {k: dataclasses.asdict(c) for k, c in self.coefficients().items()},
                "scale": dataclasses.asdict(self.scale)}


def fit_power_law(loss: Sequence[float], variables: dict[str, Sequence[float]], confidence: float = 0.95
                  ) -> PowerLawFit:
    """OLS of log10(loss) on log10 of each variable, with an intercept."""
    y = np.log10(np.asarray(loss, dtype=float))
    X = np.column_stack([np.ones_like(y), *(np.log10(np.asarray(v, dtype=float)) for v in variables.values())])
    n, k = X.shape
    if n <= k:
        raise ValueError(f"{n} rows cannot fit {k} coefficients with intervals")
    if np.linalg.matrix_rank(X) < k:
        raise ValueError(f"the rows do not vary {', '.join(variables)} independently: the law is not identified")
    coef, *_ = np.linalg.lstsq(X, y, rcond=None)
    residuals = y - X @ coef
    dof = n - k
    sigma2 = float(residuals @ residuals / dof)
    cov = sigma2 * np.linalg.inv(X.T @ X)
    r2 = 1 - residuals @ residuals / max(((y - y.mean()) ** 2).sum(), 1e-300)
    return PowerLawFit(tuple(variables), tuple(map(float, coef)), tuple(map(tuple, cov.tolist())), sigma2, dof,
                       float(r2), confidence)


def load_rows(paths: Iterable[str]) -> list[dict]:
    """Rows of the sweep's table: Parquet, CSV or JSONL, by extension; empty cells (a loss a run lacks)
    are dropped."""
    import pyarrow.csv
    import pyarrow.parquet

    rows: list[dict] = []
    for path in paths:
        if path.endswith(".jsonl"):
            with open(path, encoding="utf-8") as f:
                rows += [json.loads(line) for line in f if line.strip()]
            continue
        table = pyarrow.parquet.read_table(path) if path.endswith(".parquet") else pyarrow.csv.read_csv(path)
        rows += [{k: v for k, v in row.items() if v is not None} for row in table.to_pylist()]
    return rows


def final_rows(rows: list[dict]) -> list[dict]:
    """One row per finished run: its evaluation at the end of its own schedule (step == steps). Rows of
    unfinished runs and intermediate evaluations are left out; a run listed twice keeps its last row."""
    final = {}
    for row in rows:
        if "steps" in row and row.get("step") == row["steps"] and row.get("C", 0) > 0 and row.get("seen", 0) > 0:
            final[row["run"]] = row
    return list(final.values())


def pareto_frontier(rows: list[dict], loss_key: str) -> list[dict]:
    """The rows no other row beats with at most their compute: sorted by C, each lower than all before."""
    frontier, best = [], np.inf
    for row in sorted(rows, key=lambda r: (r["C"], r[loss_key])):
        if row[loss_key] < best:
            frontier.append(row)
            best = row[loss_key]
    return frontier


def loss_keys(rows: list[dict]) -> list[str]:
    """Every loss column of the rows (test sets and task-language keys), without the prefix."""
    return sorted({k[len(LOSS_PREFIX):] for r in rows for k in r if k.startswith(LOSS_PREFIX)})


@dataclasses.dataclass(frozen=True)
class Fits:
    """Both laws for one test set and the rows behind them; a law the rows cannot determine is None,
    with the reason in `unfitted`."""
    name: str
    compute: Optional[PowerLawFit]
    params_samples: Optional[PowerLawFit]
    rows: list[dict]
    frontier: list[dict]
    unfitted: dict[str, str]

    @property
    def loss_key(self) -> str:
        return LOSS_PREFIX + self.name


def fit_test_set(rows: list[dict], name: str, confidence: float = 0.95) -> Fits:
    """Both laws for one test set, on the final rows that have its loss."""
    key = LOSS_PREFIX + name
    usable = [r for r in final_rows(rows) if key in r]
    frontier = pareto_frontier(usable, key)
    laws = {"compute": (frontier, lambda rs: {"C": [r["C"] for r in rs]}),
            "params_samples": (usable, lambda rs: {"P": [r["params"] for r in rs], "S": [r["seen"] for r in rs]})}
    fitted, unfitted = {}, {}
    for law, (law_rows, variables) in laws.items():
        try:
            fitted[law] = fit_power_law([r[key] for r in law_rows], variables(law_rows), confidence)
        except ValueError as error:
            fitted[law], unfitted[law] = None, str(error)
    return Fits(name, fitted["compute"], fitted["params_samples"], usable, frontier, unfitted)


def extrapolations(fits: Fits, params: Sequence[float]) -> list[dict]:
    """The P-law's loss, with both intervals, at each given P for every seen-samples budget of the rows."""
    out = []
    for seen in sorted({r["seen"] for r in fits.rows}):
        for p in params:
            loss, c_low, c_high = fits.params_samples.predict(p, seen)
            _, p_low, p_high = fits.params_samples.predict(p, seen, interval="prediction")
            out.append({"P": p, "S": seen, "loss": float(loss), "confidence": [float(c_low), float(c_high)],
                        "prediction": [float(p_low), float(p_high)]})
    return out


def _pyplot():
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot_compute(fits: Fits, path: Path):
    """The paper's loss-vs-compute figure: every run by size, the frontier, its fit with both intervals.
    Returns the (closed) figure, whose axes keep their labels."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4.2))
    for size in sorted({r["size"] for r in fits.rows}):
        mine = [r for r in fits.rows if r["size"] == size]
        ax.scatter([r["C"] for r in mine], [r[fits.loss_key] for r in mine], s=16, label=size)
    ax.scatter([r["C"] for r in fits.frontier], [r[fits.loss_key] for r in fits.frontier], s=60,
               facecolors="none", edgecolors="k", label="Pareto frontier")
    compute = np.array([r["C"] for r in fits.rows])
    grid = np.logspace(np.log10(compute.min()), np.log10(compute.max()), 100)
    mean, low, high = fits.compute.predict(grid)
    _, p_low, p_high = fits.compute.predict(grid, interval="prediction")
    ax.fill_between(grid, p_low, p_high, color="grey", alpha=0.15, label="prediction interval")
    ax.fill_between(grid, low, high, color="grey", alpha=0.35, label="confidence interval")
    alpha0, alpha1 = fits.compute.scale.value, fits.compute.exponent("C").value
    ax.plot(grid, mean, "k--", label=f"{alpha0:.3g}·C^{alpha1:.3f}")
    ax.set(xscale="log", yscale="log", xlabel="compute C (MACs)", ylabel=f"loss ({fits.name})")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return fig


def plot_params(fits: Fits, path: Path, extrapolate_params: Sequence[float], seen: Optional[float] = None):
    """The paper's loss-vs-parameters figure at fixed seen samples (default: the largest budget's S): the
    runs of that budget, the law with its confidence and prediction bands drawn out to the largest of
    `extrapolate_params`, and the prediction there with its prediction interval."""
    plt = _pyplot()
    seen = seen or max(r["seen"] for r in fits.rows)
    fig, ax = plt.subplots(figsize=(6, 4.2))
    mine = [r for r in fits.rows if r["seen"] == seen]
    ax.scatter([r["params"] for r in mine], [r[fits.loss_key] for r in mine], s=16, color="C0", label="runs")
    params = np.array([r["params"] for r in fits.rows])
    grid = np.logspace(np.log10(params.min()), np.log10(max([params.max(), *extrapolate_params])), 100)
    beta = fits.params_samples
    mean, low, high = beta.predict(grid, seen)
    _, p_low, p_high = beta.predict(grid, seen, interval="prediction")
    ax.fill_between(grid, p_low, p_high, color="C0", alpha=0.12, label="prediction interval")
    ax.fill_between(grid, low, high, color="C0", alpha=0.3, label="confidence interval")
    ax.plot(grid, mean, "k--", label=f"{beta.scale.value:.3g}·P^{beta.exponent('P').value:.3f}"
                                     f"·S^{beta.exponent('S').value:.3f}")
    for p in extrapolate_params:
        loss, p_low, p_high = beta.predict(p, seen, interval="prediction")
        ax.errorbar([p], [loss], yerr=[[loss - p_low], [p_high - loss]], fmt="x", color="C3", capsize=3)
        ax.annotate(f"{p:.3g}: {float(loss):.3g}", (p, float(loss)), textcoords="offset points", xytext=(-60, 8),
                    fontsize=7)
    ax.axvline(params.max(), color="grey", lw=0.5)
    ax.set(xscale="log", yscale="log", xlabel="parameters P", ylabel=f"loss ({fits.name})", title=f"S = {seen:.3g}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return fig


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="florenz-scaling", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("rows", nargs="+", help="the sweep's table(s): .parquet, .csv or .jsonl")
    parser.add_argument("--test-set", action="append", default=None,
                        help="a loss column without 'loss/' (a test set or task-language key); default: all")
    parser.add_argument("--confidence", type=float, default=0.95, help="level of every interval")
    parser.add_argument("--extrapolate-params", type=float, action="append", default=None,
                        help=f"P to predict at (repeatable; default {PAPER_LARGEST_PARAMS:.3g}, Florenz-11.2B)")
    parser.add_argument("--samples", type=float, default=None,
                        help="the fixed S of the loss-vs-P figure (default: the largest in the rows)")
    parser.add_argument("--out", required=True, help="folder for fits.json and two PNGs per test set")
    args = parser.parse_args(argv)
    rows = load_rows(args.rows)
    names = args.test_set or loss_keys(final_rows(rows))
    if not names:
        parser.error("no finished run with a loss in the rows (final rows have step == steps and C > 0)")
    targets = args.extrapolate_params or [PAPER_LARGEST_PARAMS]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {}
    for name in names:
        fits = fit_test_set(rows, name, args.confidence)
        safe = name.replace("/", "_")
        result[name] = {law: {"unfitted": reason} for law, reason in fits.unfitted.items()}
        for law, reason in fits.unfitted.items():
            print(f"{name}: {law} law not fitted: {reason}", file=sys.stderr)
        if fits.compute:
            result[name]["compute"] = {**fits.compute.to_dict(), "frontier_runs": [r["run"] for r in fits.frontier]}
            plot_compute(fits, out / f"{safe}-loss-vs-compute.png")
        if fits.params_samples:
            result[name]["params_samples"] = fits.params_samples.to_dict()
            result[name]["extrapolation"] = extrapolations(fits, targets)
            plot_params(fits, out / f"{safe}-loss-vs-params.png", targets, args.samples)
    (out / "fits.json").write_text(json.dumps(result, indent=2, sort_keys=True))
    print(json.dumps(result, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
