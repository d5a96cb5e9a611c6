"""Tests of rftlib.core.stats: correlations, bootstrap intervals, grouped and combined analyses."""

from __future__ import annotations

import warnings

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from rftlib.core import stats
from rftlib.errors import ParameterError


def test_perfect_monotone_relation_has_tau_one_and_ci_upper_bound_one():
    x = np.linspace(0.0, 1.0, 11)
    r = stats.correlate(x, np.exp(3 * x), n_boot=300, seed=1)
    assert r["kendall_tau"] == 1.0 and r["spearman_rho"] == 1.0
    assert r["kendall_ci_high"] == 1.0 and r["kendall_ci_low"] == 1.0
    assert r["spearman_ci_high"] == 1.0
    assert r["pearson_r"] < 1.0  # not linear
    assert 0 < r["n_boot_used"] <= 300 and r["bootstrap"] == "pairs"
    assert r["kendall_p"] < 1e-4


def test_perfect_decreasing_relation_has_tau_minus_one():
    x = np.arange(8.0)
    r = stats.correlate(x, -x ** 2, n_boot=100)
    assert r["kendall_tau"] == -1.0 and r["kendall_ci_low"] == -1.0 and r["kendall_ci_high"] == -1.0


def test_point_estimates_match_scipy_with_ties():
    rng = np.random.default_rng(0)
    x, y = rng.integers(0, 4, 30).astype(float), rng.integers(0, 5, 30).astype(float)
    r = stats.correlate(x, y, n_boot=0)
    assert r["kendall_tau"] == pytest.approx(sps.kendalltau(x, y, variant="b").statistic)
    assert r["spearman_p"] == pytest.approx(sps.spearmanr(x, y).pvalue)
    assert r["pearson_r"] == pytest.approx(sps.pearsonr(x, y).statistic)
    assert np.isnan(r["kendall_ci_low"]) and r["bootstrap"] == "none"


@pytest.mark.parametrize("n", [5, 40, 200])
def test_vectorized_kernels_match_scipy(n):
    rng = np.random.default_rng(n)
    X = rng.integers(0, 6, size=(4, n)).astype(float)  # many ties
    Y = X + rng.integers(0, 3, size=(4, n))
    k = stats.kendall_tau_b(X, Y)
    for b in range(4):
        assert k[b] == pytest.approx(sps.kendalltau(X[b], Y[b], variant="b").statistic, abs=1e-12)
        _, s, p = stats._coefficients(X[b], Y[b])
        assert s == pytest.approx(sps.spearmanr(X[b], Y[b]).statistic, abs=1e-12)
        assert p == pytest.approx(sps.pearsonr(X[b], Y[b]).statistic, abs=1e-12)


def test_bootstrap_draws_are_scipys():
    # the resamples are scipy.stats.bootstrap's: the same seed gives scipy's own replicates
    x = np.random.default_rng(0).normal(size=9)
    ours = stats.bootstrap_replicates(lambda i: x[i].mean(), 9, n_boot=50, seed=3)
    theirs = sps.bootstrap((x,), np.mean, n_resamples=50, method="percentile", rng=3).bootstrap_distribution
    assert np.allclose(ours, theirs)


def test_percentile_interval_covers_the_true_mean():
    rng = np.random.default_rng(5)
    hits = 0
    for s in range(60):
        lo, hi = stats.bootstrap_mean_ci(rng.normal(1.0, 1.0, 30), n_boot=300, seed=s)
        hits += lo <= 1.0 <= hi
    assert 50 <= hits <= 60  # nominal 95 %: about 57 of 60


def test_bootstrap_is_seeded_and_interval_contains_estimate():
    rng = np.random.default_rng(3)
    x = rng.normal(size=40)
    y = 0.5 * x + rng.normal(size=40)
    a, b = stats.correlate(x, y, seed=7), stats.correlate(x, y, seed=7)
    c = stats.correlate(x, y, seed=8)
    assert a == b
    assert a["kendall_ci_low"] != c["kendall_ci_low"]
    for name, key in stats.COEFFICIENTS.items():
        assert a[f"{name}_ci_low"] <= a[key] <= a[f"{name}_ci_high"]
    wide = stats.correlate(x, y, ci=0.99)
    assert wide["kendall_ci_low"] <= a["kendall_ci_low"] and wide["kendall_ci_high"] >= a["kendall_ci_high"]


def test_independent_samples_interval_contains_zero():
    rng = np.random.default_rng(4)  # a sample with tau ~ 0 (seed 11 is a 5% false positive)
    r = stats.correlate(rng.normal(size=60), rng.normal(size=60), n_boot=500)
    assert r["kendall_ci_low"] < 0 < r["kendall_ci_high"]
    assert r["kendall_p"] > 0.05


def test_degenerate_resamples_are_skipped_and_counted():
    r = stats.correlate([1.0, 2.0, 3.0], [1.0, 3.0, 2.0], n_boot=500, seed=0)
    # a resample drawing one index three times is constant: P = 3/27, so ~55 of 500 are skipped
    assert 350 < r["n_boot_used"] < 500
    assert np.isfinite(r["kendall_ci_low"]) and np.isfinite(r["kendall_ci_high"])


def test_constant_input_gives_nan_without_warnings():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        r = stats.correlate([1, 1, 1, 1], [1, 2, 3, 4], n_boot=50)
    assert np.isnan(r["kendall_tau"]) and np.isnan(r["pearson_p"]) and r["n_boot_used"] == 0


@pytest.mark.parametrize(
    "x, y, msg",
    [
        ([1, 2, 3], [1, 2], "differ in length"),
        ([1, 2], [1, 2], "at least 3"),
        ([1, np.nan, 3], [1, 2, 3], "x has 1 non-finite"),
        ([1, 2, 3], [1, 2, np.inf], "y has 1 non-finite"),
        ([[1, 2, 3]], [1, 2, 3], "must be 1-D"),
        (["a", "b", "c"], [1, 2, 3], "sequence of numbers"),
    ],
)
def test_bad_input_raises_parameter_error(x, y, msg):
    with pytest.raises(ParameterError, match=msg):
        stats.correlate(x, y)


@pytest.mark.parametrize("kw, msg", [({"n_boot": -1}, "n_boot"), ({"n_boot": 1.5}, "n_boot"),
                                     ({"ci": 1.0}, "ci="), ({"ci": 0}, "ci=")])
def test_bad_bootstrap_settings(kw, msg):
    with pytest.raises(ParameterError, match=msg):
        stats.correlate([1, 2, 3], [3, 2, 1], **kw)


def test_group_bootstrap_resamples_whole_groups():
    x = np.arange(12.0)
    y = x + np.tile([0.0, 5.0, -3.0], 4)
    groups = np.repeat(["a", "b", "c", "d"], 3)
    r = stats.correlate(x, y, n_boot=200, groups=groups)
    assert r["bootstrap"] == "groups" and 0 < r["n_boot_used"] <= 200
    assert r["kendall_ci_low"] <= r["kendall_tau"] <= r["kendall_ci_high"]
    with pytest.raises(ParameterError, match="at least 2"):
        stats.correlate(x, y, groups=["a"] * 12)
    with pytest.raises(ParameterError, match="one label per point"):
        stats.correlate(x, y, groups=["a", "b"])


def _runs() -> pd.DataFrame:
    alphas = np.round(np.linspace(0, 1, 6), 2)
    rows = []
    for run, sign in [("up", 1), ("up2", 1), ("down", -1)]:
        for a in alphas:
            rows.append({"world": "w", "run": run, "alpha": a, "sharp": a, "acc": sign * a + 0.01 * (run == "up2")})
    return pd.DataFrame(rows)


def test_within_run_gives_one_row_per_run():
    out = stats.within_run(_runs(), "sharp", "acc", n_boot=50)
    assert list(out["run"]) == ["down", "up", "up2"]
    assert list(out["kendall_tau"]) == [-1.0, 1.0, 1.0]
    assert set(out["n"]) == {6}


def test_within_run_rejects_duplicate_alpha_rows():
    df = pd.concat([_runs(), _runs()])
    with pytest.raises(ParameterError, match="one row per alpha"):
        stats.within_run(df, "sharp", "acc")


def test_grouped_error_names_the_group():
    df = _runs()
    df.loc[(df["run"] == "up2") & (df["alpha"] == 0.4), "acc"] = np.nan
    with pytest.raises(ParameterError, match="run='up2'"):
        stats.within_run(df, "sharp", "acc", n_boot=0)
    with pytest.raises(ParameterError, match="lacks column"):
        stats.within_run(df, "nope", "acc")


def test_combine_within_consistent_vs_cancelling():
    same = stats.combine_within([0.6, 0.7, 0.8], [0.01, 0.005, 0.001], n_boot=300)
    assert same["n_pos"] == 3 and same["sign_consistency"] == 1.0
    assert same["stouffer_z"] > 0 and same["stouffer_p"] < 0.001
    assert same["sign_test_p"] == 0.25  # 3 runs can never make the sign test significant
    assert same["ci_low"] <= same["mean"] <= same["ci_high"]
    opposite = stats.combine_within([0.7, -0.7], [0.01, 0.01], n_boot=0)
    assert abs(opposite["stouffer_z"]) < 1e-9 and opposite["stouffer_p"] == pytest.approx(1.0)
    assert np.isnan(opposite["ci_low"])
    neg = stats.combine_within([-0.6, -0.7, -0.8], [0.01, 0.005, 0.001], n_boot=0)
    assert neg["stouffer_z"] == pytest.approx(-same["stouffer_z"]) and neg["n_neg"] == 3


def test_combine_within_drops_nan_runs_and_validates():
    out = stats.combine_within([0.5, np.nan, 0.4], [0.1, np.nan, 0.2], n_boot=0)
    assert out["n_runs"] == 3 and out["n_runs_used"] == 2
    with pytest.raises(ParameterError, match="differ in length"):
        stats.combine_within([0.5, 0.4], [0.1])
    with pytest.raises(ParameterError, match=r"\[0, 1\]"):
        stats.combine_within([0.5], [1.5])
    with pytest.raises(ParameterError, match="empty"):
        stats.combine_within([], [])
