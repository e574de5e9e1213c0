"""Scaling laws as the paper fits them, in log10 space, per test set:

    loss = α0 · C^α1              (C: training compute)
    loss = β0 · P^β1 · S^β2       (P: parameters, S: seen samples)

Ordinary least squares on log10(loss) with t-distribution confidence intervals on every coefficient
(α0/β0 are reported in linear space, their intervals transformed). Rows come from florenz-train's
scaling_rows.jsonl (one row per evaluation of every run), or any table with the same fields.

    florenz-scaling runs/*/scaling_rows.jsonl --test-set unseen_caption --out fits/
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

TEST_SETS = ("seen_caption", "seen_translation", "unseen_caption")


@dataclasses.dataclass(frozen=True)
class Coefficient:
    value: float
    low: float
    high: float

    def covers(self, truth: float) -> bool:
        return self.low <= truth <= self.high


@dataclasses.dataclass(frozen=True)
class PowerLawFit:
    """loss = scale · Π x_i^exponent_i, fitted on `n` rows; `r2` in log space."""
    variables: tuple[str, ...]
    scale: Coefficient
    exponents: tuple[Coefficient, ...]
    n: int
    r2: float
    confidence: float

    def predict(self, *xs: np.ndarray) -> np.ndarray:
        log = np.log10(self.scale.value) + sum(e.value * np.log10(x) for e, x in zip(self.exponents, xs))
        return 10 ** log

    def to_dict(self) -> dict:
        return {"variables": list(self.variables), "n": self.n, "r2": self.r2, "confidence": self.confidence,
                "scale": dataclasses.asdict(self.scale),
                "exponents": {v: dataclasses.asdict(e) for v, e in zip(self.variables, self.exponents)}}


def fit_power_law(loss: Sequence[float], variables: dict[str, Sequence[float]], confidence: float = 0.95
                  ) -> PowerLawFit:
    """OLS of log10(loss) on log10 of each variable, with an intercept."""
    y = np.log10(np.asarray(loss, dtype=float))
    columns = [np.log10(np.asarray(v, dtype=float)) for v in variables.values()]
    X = np.column_stack([np.ones_like(y), *columns])
    n, k = X.shape
    if n <= k:
        raise ValueError(f"{n} rows cannot fit {k} coefficients with confidence intervals")
    coef, *_ = np.linalg.lstsq(X, y, rcond=None)
    residuals = y - X @ coef
    dof = n - k
    sigma2 = residuals @ residuals / dof
    se = np.sqrt(np.diag(sigma2 * np.linalg.inv(X.T @ X)))
    t = stats.t.ppf(0.5 + confidence / 2, dof)
    intervals = [Coefficient(float(c), float(c - t * s), float(c + t * s)) for c, s in zip(coef, se)]
    scale = Coefficient(10 ** intervals[0].value, 10 ** intervals[0].low, 10 ** intervals[0].high)
    r2 = 1 - residuals @ residuals / max(((y - y.mean()) ** 2).sum(), 1e-300)
    return PowerLawFit(tuple(variables), scale, tuple(intervals[1:]), n, float(r2), confidence)


def load_rows(paths: Iterable[str]) -> list[dict]:
    rows = []
    for path in paths:
        with open(path, encoding="utf-8") as f:
            rows += [json.loads(line) for line in f if line.strip()]
    return rows


def fit_test_set(rows: list[dict], test_set: str, confidence: float = 0.95) -> dict[str, PowerLawFit]:
    """Both laws for one test set, on the rows that have its loss."""
    usable = [r for r in rows if f"loss/{test_set}" in r and r["compute"] > 0 and r["seen"] > 0]
    loss = [r[f"loss/{test_set}"] for r in usable]
    return {"compute": fit_power_law(loss, {"C": [r["compute"] for r in usable]}, confidence),
            "params_samples": fit_power_law(loss, {"P": [r["params"] for r in usable],
                                                   "S": [r["seen"] for r in usable]}, confidence)}


def plot_fits(rows: list[dict], test_set: str, fits: dict[str, PowerLawFit], path: Path,
              extrapolate: float = 10.0) -> None:
    """loss vs compute with the α-law extended `extrapolate` times beyond the data, and loss vs seen
    samples per model size with the β-law's curves."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    usable = [r for r in rows if f"loss/{test_set}" in r and r["compute"] > 0 and r["seen"] > 0]
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
    compute = np.array([r["compute"] for r in usable])
    loss = np.array([r[f"loss/{test_set}"] for r in usable])
    left.scatter(compute, loss, s=12, label="runs")
    grid = np.logspace(np.log10(compute.min()), np.log10(compute.max() * extrapolate), 100)
    alpha = fits["compute"]
    left.plot(grid, alpha.predict(grid), "k--",
              label=f"{alpha.scale.value:.3g}·C^{alpha.exponents[0].value:.3f}")
    left.axvline(compute.max(), color="grey", lw=0.5)
    left.set(xscale="log", yscale="log", xlabel="compute (FLOPs)", ylabel=f"eval loss ({test_set})")
    left.legend()
    beta = fits["params_samples"]
    for params in sorted({r["params"] for r in usable}):
        mine = [r for r in usable if r["params"] == params]
        seen = np.array([r["seen"] for r in mine])
        right.scatter(seen, [r[f"loss/{test_set}"] for r in mine], s=12)
        s_grid = np.logspace(np.log10(seen.min()), np.log10(seen.max() * extrapolate), 50)
        right.plot(s_grid, beta.predict(np.full_like(s_grid, params), s_grid), "--", label=f"P={params:.3g}")
    right.set(xscale="log", yscale="log", xlabel="seen samples",
              title=f"β1={beta.exponents[0].value:.3f}, β2={beta.exponents[1].value:.3f}")
    right.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(prog="florenz-scaling", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("rows", nargs="+", help="scaling_rows.jsonl files")
    parser.add_argument("--test-set", action="append", choices=TEST_SETS, default=None)
    parser.add_argument("--confidence", type=float, default=0.95)
    parser.add_argument("--out", required=True, help="folder for fits.json and one PNG per test set")
    args = parser.parse_args(argv)
    rows = load_rows(args.rows)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {}
    for test_set in args.test_set or TEST_SETS:
        fits = fit_test_set(rows, test_set, args.confidence)
        result[test_set] = {name: fit.to_dict() for name, fit in fits.items()}
        plot_fits(rows, test_set, fits, out / f"{test_set}.png")
    (out / "fits.json").write_text(json.dumps(result, indent=2, sort_keys=True))
    print(json.dumps(result, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
