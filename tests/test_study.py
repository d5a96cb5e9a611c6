"""The study's steps: grid files, run selection, P1 and F4 verdicts on hand-made summaries, pages."""

import numpy as np
import pandas as pd
import pytest

from rftlib.errors import ParameterError
from rftlib.steps.common import load_grid, select_runs
from rftlib.steps.interpolate import claim_p1
from rftlib.steps.sparsity import claim_f4


def test_default_grid_has_lr_by_augmentation():
    g = load_grid("notebooks/params/grids/fashion.yaml")
    assert len(g) >= 6
    assert {r.augment for r in g} >= {"none", "strong"} and len({r.lr for r in g}) >= 3


def test_grid_errors(tmp_path):
    p = tmp_path / "g.yaml"
    p.write_text("runs: [{name: a, lr: 1.0e-3}, {name: a, lr: 1.0e-4}]\n")
    with pytest.raises(ParameterError, match="unique"):
        load_grid(p)
    p.write_text("runs: [{name: a, lr: -1}]\n")
    with pytest.raises(ParameterError, match="lr"):
        load_grid(p)
    with pytest.raises(ParameterError, match="does not exist"):
        load_grid(tmp_path / "none.yaml")
    p.write_text("runs: [{name: a, lr: 1.0e-3}]\n")
    with pytest.raises(ParameterError, match="not in grid"):
        load_grid(p, only=["b"])


def summary(barriers, gains, lrs, augs, fails):
    return pd.DataFrame({"run": [f"r{i}" for i in range(len(gains))], "loss_barrier": barriers,
                         "gain_over_zs": gains, "lr": lrs, "augment": augs, "failure_mode": fails,
                         "acc_ood_best": 0.5 + np.asarray(gains), "gain_over_both": gains})


def test_p1_supported_when_every_part_holds():
    # barrier anti-correlated with gain, no-aug better, small lr better, some failures
    s = summary([0.1, 0.2, 0.3, 0.4, 0.5, 0.6], [0.03, 0.02, 0.01, 0.0, -0.01, -0.02],
                [1e-4, 3e-4, 1e-3] * 2, ["none"] * 3 + ["strong"] * 3, [False, False, False, True, True, True])
    claim, parts = claim_p1(s, "w", n_boot=200)
    assert list(parts["verdict"]) == ["supported"] * 4
    assert claim.verdict == "supported" and claim.value < 0


def test_p1_not_supported_when_no_part_holds():
    s = summary([0.1, 0.2, 0.3, 0.4, 0.5, 0.6], [-0.02, -0.01, 0.0, 0.01, 0.02, 0.03],
                [1e-4, 3e-4, 1e-3] * 2, ["none"] * 3 + ["strong"] * 3, [False] * 6)
    claim, parts = claim_p1(s, "w", n_boot=200)
    assert claim.verdict == "not supported", parts


def test_select_runs_failure_first():
    s = summary([0] * 3, [-0.01, 0.02, -0.03], [1e-4] * 3, ["none"] * 3, [True, False, True])
    assert select_runs(s, "failure+best") == ["r2", "r0", "r1"]
    with pytest.raises(ParameterError, match="run selection"):
        select_runs(s, "some")


def f4_summary(strag_gain, ctrl_gain, base_fail=True):
    rows = [{"run": "r", "intervention": "none", "target": "none", "p": 0.0, "failure": base_fail, "gain_over_zs": -0.02}]
    for p, a, b in zip([0.1, 0.5, 0.9], strag_gain, ctrl_gain):
        rows.append({"run": "r", "intervention": "mask_both", "target": "stragglers", "p": p, "failure": a <= 0, "gain_over_zs": a})
        rows.append({"run": "r", "intervention": "mask_both", "target": "control", "p": p, "failure": b <= 0, "gain_over_zs": b})
    return pd.DataFrame(rows)


def test_f4_rules():
    c, _ = claim_f4(f4_summary([0.01, 0.02, 0.015], [-0.02, -0.03, -0.025]), "w", n_boot=200)
    assert c.verdict == "supported"
    c, _ = claim_f4(f4_summary([-0.01, -0.02, -0.015], [-0.02, -0.01, -0.025]), "w", n_boot=200)
    assert c.verdict == "not supported"
    c, t = claim_f4(f4_summary([0.01] * 3, [0.0] * 3, base_fail=False), "w", n_boot=200)
    assert c.verdict == "untestable" and t.empty and "no run in the failure mode" in c.statistic
