"""Scaling-law fits recover known exponents from rows generated with noise, within their intervals."""
from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

pytest.importorskip("scipy")

from model.scaling import fit_power_law, fit_test_set  # noqa: E402

# The paper's unseen-captioning exponents: size matters far more than data.
BETA0, BETA1, BETA2 = 40.0, -0.16, -0.04
ALPHA0, ALPHA1 = 25.0, -0.05


def rows_with_noise(seed: int, noise: float = 0.01) -> list[dict]:
    rng = np.random.default_rng(seed)
    rows = []
    for params in (0.4e9, 1.0e9, 3.5e9, 11.2e9):
        for seen in np.logspace(5, 7, 8):
            compute = 6 * params * seen * 60  # ~60 tokens per sample
            eps = rng.normal(0, noise)
            rows.append({"params": params, "seen": seen, "compute": compute,
                         "loss/unseen_caption": BETA0 * params ** BETA1 * seen ** BETA2 * 10 ** eps,
                         "loss/seen_caption": ALPHA0 * compute ** ALPHA1 * 10 ** eps})
    return rows


def test_the_fit_recovers_known_exponents_within_their_intervals():
    fits = fit_test_set(rows_with_noise(0), "unseen_caption")
    beta = fits["params_samples"]
    assert beta.exponents[0].covers(BETA1) and beta.exponents[1].covers(BETA2)
    assert beta.scale.covers(BETA0)
    assert beta.exponents[0].high - beta.exponents[0].low < 0.02  # and the intervals are informative
    alpha = fit_test_set(rows_with_noise(1), "seen_caption")["compute"]
    assert alpha.exponents[0].covers(ALPHA1) and alpha.scale.covers(ALPHA0)


def test_intervals_have_their_nominal_coverage():
    covered = sum(fit_test_set(rows_with_noise(seed), "unseen_caption")["params_samples"].exponents[0].covers(BETA1)
                  for seed in range(200))
    assert 180 <= covered <= 198  # 95 % nominal: 190 expected


def test_too_few_rows_are_refused():
    with pytest.raises(ValueError, match="cannot fit"):
        fit_power_law([1.0, 2.0], {"C": [1.0, 10.0]})


def test_cli_writes_fits_and_plots(tmp_path):
    rows = tmp_path / "scaling_rows.jsonl"
    rows.write_text("".join(json.dumps(r) + "\n" for r in rows_with_noise(2)))
    done = subprocess.run([sys.executable, "-m", "model.scaling", str(rows), "--test-set", "unseen_caption",
                           "--out", str(tmp_path / "fits")], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    fits = json.loads((tmp_path / "fits" / "fits.json").read_text())
    assert abs(fits["unseen_caption"]["params_samples"]["exponents"]["P"]["value"] - BETA1) < 0.01
    assert (tmp_path / "fits" / "unseen_caption.png").stat().st_size > 10_000
