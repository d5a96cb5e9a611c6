"""Tests of rftlib.core.curves on hand-made interpolation curves."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from rftlib.core import curves
from rftlib.errors import ParameterError

ALPHAS = [0.0, 0.25, 0.5, 0.75, 1.0]


def test_barrier_of_cap_shape_equals_hand_value():
    # max 3, endpoints 1 and 1.5: B = 3 - 1.25
    assert curves.loss_barrier(ALPHAS, [1.0, 2.0, 3.0, 2.0, 1.5]) == pytest.approx(1.75)


def test_barrier_of_u_shape_with_equal_endpoints_is_zero():
    assert curves.loss_barrier(ALPHAS, [1.0, 0.5, 0.2, 0.5, 1.0]) == 0.0


def test_barrier_of_monotone_path_is_half_the_endpoint_gap_or_zero_above_the_chord():
    losses = [2.0, 1.75, 1.5, 1.25, 1.0]
    assert curves.loss_barrier(ALPHAS, losses) == pytest.approx(0.5)
    assert curves.loss_barrier(ALPHAS, losses, reference="linear") == pytest.approx(0.0)
    # a bump of 0.4 above the chord at alpha = 0.5
    assert curves.loss_barrier(ALPHAS, [2.0, 1.75, 1.9, 1.25, 1.0], reference="linear") == pytest.approx(0.4)


def test_barrier_is_independent_of_alpha_order():
    order = [3, 0, 4, 1, 2]
    losses = np.array([1.0, 2.0, 3.0, 2.0, 1.5])
    assert curves.loss_barrier(np.array(ALPHAS)[order], losses[order]) == pytest.approx(1.75)


@pytest.mark.parametrize(
    "alphas, losses, msg",
    [
        ([0.0, 0.5], [1.0, 2.0], "both endpoints"),
        ([0.0, 0.5, 1.0], [1.0, 2.0], "differ in length"),
        ([0.0, 0.5, 1.0], [1.0, np.nan, 2.0], "non-finite"),
        ([0.0, 0.5, 1.0, 1.5], [1.0, 2.0, 1.0, 1.0], r"\[0, 1\]"),
        ([0.0, 0.5, 0.5, 1.0], [1.0, 2.0, 2.0, 1.0], "repeated"),
    ],
)
def test_barrier_rejects_bad_input(alphas, losses, msg):
    with pytest.raises(ParameterError, match=msg):
        curves.loss_barrier(alphas, losses)


def test_barrier_rejects_unknown_reference():
    with pytest.raises(ParameterError, match="reference"):
        curves.loss_barrier(ALPHAS, [1.0] * 5, reference="chord")


@pytest.mark.parametrize(
    "ood, failure, success",
    [
        ([0.6, 0.55, 0.5, 0.45, 0.4], True, False),   # monotone decreasing
        ([0.5, 0.6, 0.7, 0.6, 0.55], False, True),    # hump above both endpoints
        ([0.6, 0.55, 0.5, 0.45, 0.3], True, False),   # interior above fine-tuned, not above zero-shot
        ([0.5, 0.55, 0.6, 0.65, 0.7], False, False),  # monotone increasing: beats zero-shot, not fine-tuned
        ([0.5, 0.5, 0.5, 0.5, 0.5], True, False),     # flat: tie with zero-shot counts as failure (<=)
    ],
)
def test_failure_and_success_flags(ood, failure, success):
    assert curves.is_failure_mode(ALPHAS, ood) is failure
    assert curves.is_successful(ALPHAS, ood) is success


def test_flags_need_an_interior_alpha():
    with pytest.raises(ParameterError, match="interior"):
        curves.is_failure_mode([0.0, 1.0], [0.5, 0.4])


def _table(curves_by_run: dict[str, tuple[list[float], list[float], list[float]]]) -> pd.DataFrame:
    """run -> (id acc, ood-A acc, ood-B acc) over ALPHAS; ID loss = 1 - id acc + bump."""
    rows = []
    for run, (idacc, a, b) in curves_by_run.items():
        for i, al in enumerate(ALPHAS):
            rows.append({"world": "w", "run": run, "alpha": al, "split": "id", "accuracy": idacc[i],
                         "loss": [1.0, 1.3, 1.4, 1.1, 0.5][i]})
            rows.append({"world": "w", "run": run, "alpha": al, "split": "A", "accuracy": a[i], "loss": 2.0})
            rows.append({"world": "w", "run": run, "alpha": al, "split": "B", "accuracy": b[i], "loss": 3.0})
    return pd.DataFrame(rows)


ID = [0.5, 0.6, 0.7, 0.8, 0.9]
HUMP = (ID, [0.5, 0.6, 0.7, 0.6, 0.5], [0.3, 0.4, 0.5, 0.4, 0.3])          # mean .4 .5 .6 .5 .4
DOWN = (ID, [0.5, 0.45, 0.4, 0.35, 0.3], [0.3, 0.25, 0.2, 0.15, 0.1])     # mean .4 .35 .3 .25 .2


def test_ood_mean_averages_ood_splits_only():
    out = curves.ood_mean(_table({"hump": HUMP}))
    assert list(out.columns) == ["world", "run", "alpha", "split", "accuracy", "loss"]
    assert out["accuracy"].round(9).tolist() == [0.4, 0.5, 0.6, 0.5, 0.4]
    assert set(out["split"]) == {"ood_mean"} and set(out["loss"]) == {2.5}
    only_a = curves.ood_mean(_table({"hump": HUMP}), ood_splits=["A"])
    assert only_a["accuracy"].tolist() == HUMP[1]


def test_ood_mean_requires_every_split_at_every_alpha():
    df = _table({"hump": HUMP})
    df = df[~((df["split"] == "B") & (df["alpha"] == 0.5))]
    with pytest.raises(ParameterError, match="1 of the 2 OOD splits"):
        curves.ood_mean(df)
    with pytest.raises(ParameterError, match="not in the table"):
        curves.ood_mean(_table({"hump": HUMP}), ood_splits=["C"])
    with pytest.raises(ParameterError, match="ID split"):
        curves.ood_mean(_table({"hump": HUMP}), ood_splits=["A", "id"])


def test_summary_of_hump_and_decreasing_runs():
    s = curves.summarize_runs(_table({"hump": HUMP, "down": DOWN})).set_index("run")
    h, d = s.loc["hump"], s.loc["down"]
    assert h["alpha_best"] == 0.5 and h["acc_ood_best"] == pytest.approx(0.6) and h["acc_id_best"] == 0.7
    assert h["acc_ood_zs"] == pytest.approx(0.4) and h["acc_ood_ft"] == pytest.approx(0.4)
    assert h["gain_over_zs"] == pytest.approx(0.2) and h["gain_over_both"] == pytest.approx(0.2)
    assert not h["failure_mode"] and h["successful"]
    assert d["alpha_best"] == 0.25 and d["alpha_best_any"] == 0.0
    assert d["gain_over_zs"] == pytest.approx(-0.05) and d["gain_over_ft"] == pytest.approx(0.15)
    assert d["failure_mode"] and not d["successful"]
    # ID loss 1.0, 1.3, 1.4, 1.1, 0.5: B = 1.4 - 0.75
    assert h["loss_barrier"] == pytest.approx(0.65)
    assert h["acc_id_zs"] == 0.5 and h["acc_id_ft"] == 0.9 and h["n_alpha"] == 5


def test_summary_breaks_ties_towards_smaller_alpha_and_uses_tol():
    flat = (ID, [0.5, 0.6, 0.6, 0.6, 0.5], [0.5, 0.6, 0.6, 0.6, 0.5])
    s = curves.summarize_runs(_table({"flat": flat})).iloc[0]
    assert s["alpha_best"] == 0.25
    strict = curves.summarize_runs(_table({"flat": flat}), tol=0.2).iloc[0]
    assert strict["failure_mode"] and not strict["successful"]


def test_summary_skips_zeroshot_rows_and_keeps_extra_keys():
    df = _table({"hump": HUMP, "down": DOWN})
    zs = pd.DataFrame([{"world": "w", "run": "zeroshot", "alpha": 0.0, "split": s, "accuracy": 0.5, "loss": 1.0}
                       for s in ("id", "A", "B")])
    assert list(curves.summarize_runs(pd.concat([df, zs]))["run"]) == ["down", "hump"]
    df2 = pd.concat([df.assign(p=0.0), df.assign(p=0.5)])
    s = curves.summarize_runs(df2)
    assert list(s.columns[:3]) == ["world", "run", "p"] and len(s) == 4


def test_summary_errors_are_clear():
    df = _table({"hump": HUMP})
    with pytest.raises(ParameterError, match="both endpoints"):
        curves.summarize_runs(df[df["alpha"] != 1.0])
    with pytest.raises(ParameterError, match="several rows share"):
        curves.summarize_runs(pd.concat([df, df]))
    with pytest.raises(ParameterError, match="id_split"):
        curves.summarize_runs(df, id_split="train")
    with pytest.raises(ParameterError, match="lacks column"):
        curves.summarize_runs(df.drop(columns="split"))
    no_mid = df[df["alpha"].isin([0.0, 1.0])]
    with pytest.raises(ParameterError, match="interior"):
        curves.summarize_runs(no_mid)


def test_summary_without_loss_column_has_nan_barrier():
    s = curves.summarize_runs(_table({"hump": HUMP}).drop(columns="loss"))
    assert np.isnan(s.loc[0, "loss_barrier"]) and s.loc[0, "successful"]
