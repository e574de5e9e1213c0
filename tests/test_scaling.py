"""The paper's fits: on final rows of finished runs, loss vs C on the Pareto frontier, loss vs (P, S) on
all runs, coefficients and predictions with intervals that cover the truth as often as they claim."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("scipy")

from model.scaling import (final_rows, fit_power_law, fit_test_set, load_rows, paper_compute,  # noqa: E402
                           pareto_frontier, plot_compute, plot_params)

# The paper's unseen-captioning exponents: size matters far more than data.
BETA0, BETA1, BETA2 = 40.0, -0.16, -0.04
ALPHA0, ALPHA1 = 25.0, -0.05
SIZES = {"florenz-0.4b": 0.4e9, "florenz-1.0b": 1.0e9, "florenz-3.5b": 3.5e9}
BUDGETS = (500, 2000, 5000, 10000)  # the paper's step budgets, 1024 samples a step
MACS_PER_PARAM = 300.0  # forward MACs of one sample per parameter (~ its tokens)


def run_rows(seed: int, noise: float = 0.01, law: str = "params_samples") -> list[dict]:
    """Rows as florenz-sweep writes them, for a known law: per (size, budget) run its final row, plus two
    intermediate evaluations whose losses are far off the law (a fit that used them would show it)."""
    rng = np.random.default_rng(seed)
    rows = []
    for size, params in SIZES.items():
        for steps in BUDGETS:
            for step in (steps // 4, steps // 2, steps):
                seen = step * 1024
                compute = paper_compute(seen, MACS_PER_PARAM * params, params, params)
                truth = (BETA0 * params ** BETA1 * seen ** BETA2 if law == "params_samples"
                         else ALPHA0 * compute ** ALPHA1)
                loss = truth * 10 ** rng.normal(0, noise) * (1 if step == steps else 3)
                rows.append({"run": f"{size}-s{steps}", "size": size, "params": params, "trainable_params": params,
                             "steps": steps, "step": step, "seen": seen, "C": compute, "loss/unseen_caption": loss})
    return rows


def test_the_compute_is_the_papers():
    # official code: training MACs = S * forward MACs * (1 + trainable / total)
    assert paper_compute(1024 * 500, 2e9, 4e8, 1e8) == 1024 * 500 * 2e9 * 1.25
    assert paper_compute(10, 1.0, 5.0, 5.0) == 20.0  # everything trained: backward = forward


def test_only_final_rows_of_finished_runs_are_fitted():
    rows = run_rows(0)
    unfinished = {"run": "florenz-3.5b-s20000", "size": "florenz-3.5b", "params": 3.5e9, "trainable_params": 3.5e9,
                  "steps": 20000, "step": 15000, "seen": 15000 * 1024, "C": 1e20, "loss/unseen_caption": 0.1}
    final = final_rows(rows + [unfinished])
    assert len(final) == len(SIZES) * len(BUDGETS)
    assert all(r["step"] == r["steps"] for r in final)
    assert "florenz-3.5b-s20000" not in {r["run"] for r in final}
    assert final_rows([{k: v for k, v in r.items() if k != "steps"} for r in rows]) == []  # budget unknown
    # a run listed twice (a re-collected sweep) counts once, with its last row
    again = dict(final[0], **{"loss/unseen_caption": 1.5})
    assert [r for r in final_rows(rows + [again]) if r["run"] == again["run"]] == [again]


def test_the_frontier_is_the_lowest_loss_at_each_compute():
    rows = [{"run": name, "C": c, "loss/x": loss} for name, c, loss in
            [("a", 1, 5.0), ("b", 2, 4.0), ("c", 3, 4.5), ("d", 4, 3.0), ("e", 4, 3.5), ("f", 5, 3.0), ("g", 8, 2.0)]]
    assert [r["run"] for r in pareto_frontier(rows, "loss/x")] == ["a", "b", "d", "g"]


def test_the_fits_recover_known_coefficients_within_their_intervals():
    fits = fit_test_set(run_rows(0), "unseen_caption")
    beta = fits.params_samples
    assert beta.n == len(SIZES) * len(BUDGETS)  # intermediate rows ignored, or the exponents would be off
    assert beta.exponent("P").covers(BETA1) and beta.exponent("S").covers(BETA2)
    assert beta.scale.covers(BETA0) and beta.coefficients()["log10_scale"].covers(np.log10(BETA0))
    assert beta.exponent("P").high - beta.exponent("P").low < 0.05  # and the intervals are informative
    alpha = fit_test_set(run_rows(1, law="compute"), "unseen_caption").compute
    assert alpha.exponent("C").covers(ALPHA1) and alpha.scale.covers(ALPHA0)


def test_the_compute_law_is_fitted_on_the_frontier_only():
    rows = run_rows(2, law="compute")
    final = final_rows(rows)
    # runs that spent more compute for a worse loss (a size far from its optimum): off the frontier
    worse = [dict(r, run=r["run"] + "-bad", C=r["C"] * 1.5, **{"loss/unseen_caption": r["loss/unseen_caption"] * 2})
             for r in final[:5]]
    fits = fit_test_set(rows + worse, "unseen_caption")
    assert not {r["run"] for r in fits.frontier} & {r["run"] for r in worse}
    assert fits.compute.n == len(fits.frontier) < len(fits.rows) == len(final) + len(worse)
    assert fits.compute.exponent("C").covers(ALPHA1)


def test_intervals_have_their_nominal_coverage():
    """Over 200 noise draws, 95 % intervals on the exponent, on the law at 11.2B, and for a new 11.2B run
    cover the truth about 190 times (an interval too narrow or too wide fails)."""
    exponent = mean = new_run = 0
    rng = np.random.default_rng(99)
    seen = BUDGETS[-1] * 1024
    truth = BETA0 * 11.2e9 ** BETA1 * seen ** BETA2
    for seed in range(200):
        beta = fit_test_set(run_rows(seed), "unseen_caption").params_samples
        exponent += beta.exponent("P").covers(BETA1)
        _, low, high = beta.predict(11.2e9, seen)
        mean += bool(low <= truth <= high)
        _, low, high = beta.predict(11.2e9, seen, interval="prediction")
        new_run += bool(low <= truth * 10 ** rng.normal(0, 0.01) <= high)
    for covered in (exponent, mean, new_run):
        assert 178 <= covered <= 199


def test_the_prediction_interval_is_wider_than_the_confidence_interval():
    beta = fit_test_set(run_rows(3), "unseen_caption").params_samples
    _, c_low, c_high = beta.predict(11.2e9, 1024 * 5000)
    _, p_low, p_high = beta.predict(11.2e9, 1024 * 5000, interval="prediction")
    assert p_low < c_low < c_high < p_high


def test_unidentifiable_or_too_few_rows_are_refused():
    with pytest.raises(ValueError, match="cannot fit"):
        fit_power_law([1.0, 2.0], {"C": [1.0, 10.0]})
    with pytest.raises(ValueError, match="not identified"):  # one budget only: S does not vary
        fit_power_law([1.0, 2.0, 3.0, 4.0], {"P": [1.0, 2.0, 3.0, 4.0], "S": [5.0] * 4})
    one_budget = [r for r in run_rows(6) if r["steps"] == BUDGETS[-1]]
    fits = fit_test_set(one_budget, "unseen_caption")  # the other law is still fitted, the reason kept
    assert fits.params_samples is None and "cannot fit" in fits.unfitted["params_samples"]
    assert fits.compute is not None and fits.compute.n == len(SIZES)


def test_the_papers_two_figures_are_drawn(tmp_path):
    fits = fit_test_set(run_rows(4), "unseen_caption")
    compute = plot_compute(fits, tmp_path / "c.png")
    params = plot_params(fits, tmp_path / "p.png", [11.2e9])
    for path in (tmp_path / "c.png", tmp_path / "p.png"):
        assert path.stat().st_size > 10_000
    ax = compute.axes[0]
    assert (ax.get_xlabel(), ax.get_ylabel(), ax.get_xscale()) == ("compute C (MACs)", "loss (unseen_caption)", "log")
    ax = params.axes[0]
    assert (ax.get_xlabel(), ax.get_ylabel()) == ("parameters P", "loss (unseen_caption)")
    assert ax.get_title() == f"S = {BUDGETS[-1] * 1024:.3g}"  # the longest budget unless told
    assert ax.get_xlim()[1] >= 11.2e9  # the curves reach the extrapolated size


def test_cli_fits_the_sweeps_table(tmp_path):
    import pyarrow as pa
    import pyarrow.csv
    import pyarrow.parquet as pq

    table = tmp_path / "results.parquet"
    pq.write_table(pa.Table.from_pylist(run_rows(5)), table)
    pyarrow.csv.write_csv(pa.Table.from_pylist(run_rows(5)), str(tmp_path / "results.csv"))
    assert load_rows([str(tmp_path / "results.csv")]) == load_rows([str(table)]) == run_rows(5)
    done = subprocess.run([sys.executable, "-m", "model.scaling", str(table), "--out", str(tmp_path / "fits")],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    fits = json.loads((tmp_path / "fits" / "fits.json").read_text())["unseen_caption"]
    assert fits["params_samples"]["n"] == len(SIZES) * len(BUDGETS)
    assert abs(fits["params_samples"]["log10"]["P"]["value"] - BETA1) < 0.02
    at_largest = [e for e in fits["extrapolation"] if e["P"] == 11.2e9]
    assert len(at_largest) == len(BUDGETS)
    assert all(e["prediction"][0] < e["confidence"][0] < e["loss"] < e["confidence"][1] < e["prediction"][1]
               for e in at_largest)
    for figure in ("loss-vs-compute", "loss-vs-params"):
        assert (tmp_path / "fits" / f"unseen_caption-{figure}.png").stat().st_size > 10_000
