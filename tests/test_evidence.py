"""Across-run statistics (rftlib.core.stats, population part) and the evidence functions on synthetic tables."""

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps
from sklearn.metrics import roc_auc_score

from rftlib.core import stats
from rftlib.core.verdicts import Claim, combine_verdicts, verdict_with_contrast
from rftlib.errors import ParameterError
from rftlib.steps import evidence as ev

LAYERS = ("embed", "block0", "block1", "block2", "head")


def _stragglers(n_runs, layers=("block1", "head")):
    return pd.DataFrame({"run": [f"r{i}" for i in range(n_runs) for _ in layers], "layer": list(layers) * n_runs})


def test_cluster_bootstrap_keeps_seeds_of_a_recipe_together():
    labels = np.repeat(["a", "b", "c", "d"], 3)
    rows = []
    stats.bootstrap_replicates(lambda i: rows.append(i) or 0.0, 12, n_boot=50, seed=1, clusters=labels)
    assert len(rows) == 50 and all(r.size == 12 for r in rows)
    for row in rows:
        for k in range(4):  # each drawn block of 3 is one whole recipe
            assert len(set(labels[row[3 * k:3 * k + 3]])) == 1


def test_unequal_clusters_resample_whole_clusters_without_padding():
    labels = np.array(["a", "a", "a", "b", "c"])
    sizes = []
    stats.bootstrap_replicates(lambda i: sizes.append(i.size) or 0.0, 5, n_boot=200, seed=0, clusters=labels)
    assert set(sizes) <= {3, 5, 7, 9} and {3, 9} <= set(sizes)


def test_permutation_p_values_are_uniform_under_the_null():
    rng = np.random.default_rng(7)
    ps = [stats.across_run_test(rng.normal(size=(12, 3)), rng.normal(size=(12, 3)), n_boot=0, n_perm=199,
                                seed=s)["p_value"] for s in range(60)]
    assert sps.kstest(ps, "uniform").pvalue > 0.01
    assert 0.5 * 60 * 0.1 <= sum(p < 0.1 for p in ps) <= 2 * 60 * 0.1 + 3


def test_permutation_test_is_exact_with_few_runs():
    x = np.arange(5.0)
    r = stats.across_run_test(x, x, n_boot=0, n_perm=1999)  # 5! = 120 orders < 1999: all of them
    assert r["value"] == 1.0 and r["p_value"] == pytest.approx(2 / 120)


def test_across_run_test_finds_a_planted_effect_and_not_a_null_one():
    rng = np.random.default_rng(3)
    x = rng.normal(size=(30, 4))
    y = x + 0.5 * rng.normal(size=x.shape)
    r = stats.across_run_test(x, y, n_boot=300, n_perm=499)
    assert r["p_value"] < 0.01 and r["ci_low"] > 0
    covered = 0
    for s in range(6):
        g = np.random.default_rng(100 + s)
        r0 = stats.across_run_test(g.normal(size=(30, 4)), g.normal(size=(30, 4)), n_boot=300, n_perm=199, seed=s)
        covered += r0["ci_low"] <= 0 <= r0["ci_high"]
    assert covered >= 4


def test_same_alpha_tau_ignores_the_common_alpha_trend():
    # both rise with α in every run, but at each α the runs are ordered oppositely
    a = np.linspace(0.2, 1, 5)
    X = np.array([a * (1 + k) for k in range(6)])
    Y = np.array([a * (6 - k) for k in range(6)])
    assert all(sps.kendalltau(X[i], Y[i]).statistic > 0.99 for i in range(6))
    assert stats.same_alpha_tau(X, Y) == -1.0


def test_partial_kendall_removes_alpha():
    rng = np.random.default_rng(0)
    alpha = np.repeat(np.linspace(0, 1, 6), 8)
    x, y = alpha + 0.1 * rng.normal(size=alpha.size), alpha + 0.1 * rng.normal(size=alpha.size)
    assert sps.kendalltau(x, y).statistic > 0.5
    assert abs(stats.partial_kendall(x, y, alpha)) < 0.2


def test_paired_contrast_of_a_predictor_with_itself_is_zero():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(10, 3)), rng.normal(size=(10, 3))
    d = stats.paired_contrast(x, x, y, n_boot=100)
    assert d["value"] == 0.0 and d["ci_low"] == 0.0 and d["ci_high"] == 0.0


def test_auroc_bootstrap_formula_matches_sklearn():
    rng = np.random.default_rng(2)
    lab, s = rng.random(20) < 0.4, rng.normal(size=20)
    r = stats.auroc(lab, s, n_boot=200)
    assert r["value"] == pytest.approx(roc_auc_score(lab, s))
    idx = []
    stats.bootstrap_replicates(lambda i: idx.append(i) or 0.0, 20, 200, 0)
    direct = [roc_auc_score(lab[i], s[i]) for i in idx if 0 < lab[i].sum() < 20]
    assert r["ci_low"] == pytest.approx(np.quantile(direct, 0.025))
    assert np.isnan(stats.auroc([True] * 5, s[:5], n_boot=10)["value"])


def test_detectable_effect_shrinks_with_more_runs_and_scales_with_spread():
    rng = np.random.default_rng(4)
    m10 = stats.mde_across_runs(rng.normal(size=(10, 3)), rng.normal(size=(10, 3)), n_sim=100, n_perm=199)
    m40 = stats.mde_across_runs(rng.normal(size=(40, 3)), rng.normal(size=(40, 3)), n_sim=100, n_perm=199)
    assert 0 < m40 < m10 <= 1
    assert np.isnan(stats.mde_across_runs(rng.normal(size=3), rng.normal(size=3), n_sim=50, n_perm=99))
    d = rng.normal(size=15)
    a, b = stats.mde_mean(d, n_sim=200, n_boot=200), stats.mde_mean(3 * d, n_sim=200, n_boot=200)
    assert b == pytest.approx(3 * a, rel=0.1)


def test_chance_jaccard_matches_simulation():
    rng = np.random.default_rng(0)
    sims = [len(set(a) & set(b)) / len(set(a) | set(b))
            for a, b in ((rng.choice(8, 2, replace=False), rng.choice(8, 2, replace=False)) for _ in range(4000))]
    assert ev._chance_jaccard(2, 8) == pytest.approx(np.mean(sims), abs=0.02)


def test_straggler_stability_separates_seeds_from_recipes():
    st = pd.DataFrame({"run": ["a0", "a0", "a1", "a1", "b0", "b0", "b1", "b1"],
                       "layer": ["x", "y", "x", "y", "z", "w", "z", "w"]})
    summary = pd.DataFrame({"run": ["a0", "a1", "b0", "b1"], "lr": [1, 1, 2, 2]})
    t = ev.straggler_stability(st, summary, layers=list("xyzwvu")).set_index("comparison")
    assert t.loc["seeds of one recipe", "jaccard"] == 1.0 and t.loc["across recipes", "jaccard"] == 0.0
    assert t.loc["seeds of one recipe", "n_pairs"] == 2 and t.loc["across recipes", "n_pairs"] == 4


def test_f2_supported_only_when_stragglers_beat_the_whole_model():
    sharp, summary = ev.synthetic_tables(n_runs=24, n_seeds=3, seed=1, effect=3.0, layers=LAYERS)
    e = ev.f2_evidence("w", sharp, _stragglers(24), summary, n_boot=300, n_perm=299)
    assert e.claims[0].verdict == "supported"
    # the same effect planted in the whole model too: stragglers no longer beat it
    both = sharp.copy()
    b1 = both[both["layer"] == "block1"].set_index(["run", "alpha"])["value"]
    m = both["layer"] == "all"
    both.loc[m, "value"] = [b1[(r, a)] * 10 for r, a in zip(both.loc[m, "run"], both.loc[m, "alpha"])]
    e2 = ev.f2_evidence("w", both, _stragglers(24), summary, n_boot=300, n_perm=299)
    assert e2.claims[0].verdict != "supported"


def test_untestable_where_the_world_holds_no_data():
    sharp, summary = ev.synthetic_tables(n_runs=4, seed=0, layers=LAYERS)
    assert ev.f1_evidence("w", sharp, summary, n_boot=20, n_perm=19).claims[0].verdict == "untestable"
    assert ev.f2_evidence("w", sharp, None, summary).claims[0].verdict == "untestable"
    no_fail = summary.assign(failure_mode=False)
    assert ev.f4_evidence("w", no_fail, None).claims[0].verdict == "untestable"
    assert combine_verdicts(["untestable", "untestable"]) == "untestable"


def test_power_rows_exactly_for_verdicts_resting_on_absence():
    sharp, summary = ev.synthetic_tables(n_runs=12, seed=5, layers=LAYERS)
    e = ev.study_evidence("w", {"sharpness": sharp, "summary": summary, "stragglers": _stragglers(12)},
                          n_boot=200, n_perm=199)
    verdicts = {c.claim: c.verdict for c in e.claims}
    claims_with_power = set(e.power["claim"])
    if verdicts["F1"] in ("supported", "not supported"):
        assert "F1" in claims_with_power
    assert all(verdicts[c] != "mixed" or c == "P1" for c in claims_with_power)
    assert (e.power["mde"].dropna() > 0).all()
    for c in e.claims:
        Claim(**c.to_row())  # every row is a valid claim row


def test_f4_rule():
    summary = pd.DataFrame({"run": ["a", "b", "c"], "failure_mode": [True, True, False], "lr": [1, 2, 3]})
    parts = pd.DataFrame({"run": ["a", "a", "b", "b"], "p": [0.3, 0.7] * 2, "gain_stragglers": [0.05, 0.06, 0.04, 0.07],
                          "gain_control": [0.0, 0.01, -0.01, 0.0], "rescued_stragglers": [True, False, True, True]})
    assert ev.f4_evidence("w", summary, parts, n_boot=200).claims[0].verdict == "supported"
    none = parts.assign(rescued_stragglers=False)
    e = ev.f4_evidence("w", summary, none, n_boot=200)
    assert e.claims[0].verdict == "not supported" and len(e.power) == 1


def test_verdict_with_contrast_and_bad_input():
    assert verdict_with_contrast("supported", 0.1, 0.2) == "supported"
    assert verdict_with_contrast("supported", -0.3, -0.1) == "not supported"
    assert verdict_with_contrast("untestable", 0.1, 0.2) == "untestable"
    with pytest.raises(ParameterError, match="verdict='yes'"):
        verdict_with_contrast("yes", 0, 1)
    with pytest.raises(ParameterError, match="variant"):
        ev.path_matrices(pd.concat([ev.synthetic_tables(3)[0], ev.synthetic_tables(3)[0].assign(rho=0.01)]))
    with pytest.raises(ParameterError, match="shape"):
        stats.same_alpha_tau(np.ones((4, 2)), np.ones((4, 3)))


def test_f3_reports_every_layer_at_the_fine_tuned_end():
    sharp, summary = ev.synthetic_tables(n_runs=8, seed=2, layers=LAYERS)
    summary.loc[:2, "failure_mode"] = True  # both classes, so AUROC is defined
    e = ev.f3_evidence("w", sharp, summary, n_boot=100, n_perm=99)
    st = e.details["statistic"]
    for layer in LAYERS:
        assert st.str.contains(rf"τ across runs\({layer} sharpness at α=1, OOD gain\)").any()
        assert st.str.contains(rf"AUROC\({layer} sharpness").any()
    assert ((e.details["verdict"] == "reported") | e.details["claim"].ne("F3")).all()
