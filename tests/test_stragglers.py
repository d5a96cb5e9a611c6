"""Single-layer paths, shared prefix, barriers, controls and straggler ranking (rftlib.core.stragglers)."""

from __future__ import annotations

import math

import pytest
import torch

from rftlib.errors import ParameterError
from rftlib.core.evaluation import evaluate
from rftlib.core.interpolation import Interpolator
from rftlib.core.layers import layer_groups
from rftlib.models.factory import build_classifier, create_clip
from rftlib.core.stragglers import (cumulative_groups, layer_barriers, random_direction,
                               rank_layers, ranking_agreement, single_layer_paths)

TOL = 1e-6


@pytest.fixture(scope="module")
def setup():
    clip, tok = create_clip("rft-tiny", seed=0)
    clf = build_classifier(clip, tok, ["a", "b", "c"], ["a photo of a {}."], (0.4,) * 3, (0.3,) * 3)
    theta_zs = {k: v.clone() for k, v in clf.state_dict().items()}
    g = torch.Generator().manual_seed(1)
    theta_ft = {k: v + 0.3 * v.std().nan_to_num(1.0).clamp_min(0.05) * torch.randn(v.shape, generator=g)
                for k, v in theta_zs.items()}
    gx = torch.Generator().manual_seed(2)
    splits = {
        "id": (torch.rand(12, 3, 28, 28, generator=gx), torch.randint(0, 3, (12,), generator=gx)),
        "ood": (torch.rand(12, 3, 28, 28, generator=gx), torch.randint(0, 3, (12,), generator=gx)),
    }
    return clf, theta_zs, theta_ft, splits


def _eval_state(model, state, splits):
    model.load_state_dict(state)
    return {r["split"]: r for r in evaluate(model, splits, batch_size=8, progress=False)}


def _pick(rows, **kw):
    return [r for r in rows if all(r[k] == v for k, v in kw.items())]


def _close(row, ref):
    return math.isclose(row["loss"], ref["loss"], abs_tol=TOL) and row["accuracy"] == ref["accuracy"]


def test_every_layer_selected_alpha1_is_ft_and_alpha0_is_zs(setup):
    clf, zs, ft, splits = setup
    everything = {"everything": list(zs)}
    rows = single_layer_paths(clf, zs, ft, splits, everything, [0.0, 1.0], "ft", batch_size=8,
                              include_full=False, progress=False)
    ref_ft, ref_zs = _eval_state(clf, ft, splits), _eval_state(clf, zs, splits)
    assert ref_ft["id"]["loss"] != pytest.approx(ref_zs["id"]["loss"])  # the endpoints differ
    for s in splits:
        assert _close(_pick(rows, alpha=1.0, split=s)[0], ref_ft[s])
        assert _close(_pick(rows, alpha=0.0, split=s)[0], ref_zs[s])


@pytest.mark.parametrize("hold,alpha", [("ft", 0.0), ("zs", 1.0)])
def test_one_layer_swapped_equals_manual_state(setup, hold, alpha):
    clf, zs, ft, splits = setup
    keys = set(layer_groups(clf)["block1"])
    held, other = (ft, zs) if hold == "ft" else (zs, ft)
    manual = {k: (other[k] if k in keys else held[k]) for k in zs}
    rows = single_layer_paths(clf, zs, ft, splits, ["block1"], [alpha], hold, batch_size=8,
                              include_full=False, progress=False)
    ref = _eval_state(clf, manual, splits)
    for s in splits:
        assert _close(_pick(rows, layer="block1", split=s)[0], ref[s])


def test_shared_prefix_equals_naive(setup):
    clf, zs, ft, splits = setup
    alphas = [0.0, 0.3, 1.0]
    fast = single_layer_paths(clf, zs, ft, splits, None, alphas, "both", batch_size=8, progress=False)
    slow = single_layer_paths(clf, zs, ft, splits, None, alphas, "both", batch_size=8, progress=False,
                              shared_prefix=False)
    assert len(fast) == len(slow) == (5 * 2 * 3 + 3) * 2
    interp = Interpolator(clf, zs, ft)
    groups = layer_groups(clf)
    refs: dict = {}
    for r, q in zip(fast, slow):
        assert {k: r[k] for k in ("layer", "hold", "alpha", "split")} == {k: q[k] for k in ("layer", "hold", "alpha", "split")}
        assert _close(r, q)
        key = (r["layer"], r["hold"], r["alpha"])
        if r["layer"] != "all" and r["alpha"] in (0.3, 1.0):  # independent reference: Interpolator + evaluate
            if key not in refs:
                interp.set_alpha(r["alpha"], keys=groups[r["layer"]], hold=r["hold"])
                refs[key] = {x["split"]: x for x in evaluate(clf, splits, batch_size=8, progress=False)}
            assert _close(r, refs[key][r["split"]])
    assert len(refs) == 5 * 2 * 2


def test_shared_prefix_runs_fixed_stages_once_per_batch(setup):
    clf, zs, ft, splits = setup
    calls = []
    hook = clf.visual.conv1.register_forward_hook(lambda *a: calls.append(1))
    try:
        for shared in (True, False):
            calls.clear()
            single_layer_paths(clf, zs, ft, splits, ["head"], [0.0, 0.5, 1.0], "ft", batch_size=8,
                               include_full=False, shared_prefix=shared, progress=False)
            n_batches = 2 * 2  # 2 splits of 12 images, batch 8
            assert len(calls) == (n_batches if shared else 3 * n_batches)
    finally:
        hook.remove()


def test_model_restored_after_sweep(setup):
    clf, zs, ft, splits = setup
    before = {k: v.clone() for k, v in clf.state_dict().items()}
    single_layer_paths(clf, zs, ft, splits, ["block0"], [0.5], "zs", batch_size=8, progress=False)
    assert all(torch.equal(before[k], v) for k, v in clf.state_dict().items())


def test_random_direction_norm_and_path(setup):
    clf, zs, ft, splits = setup
    keys = layer_groups(clf)["block0"]
    d = random_direction(zs, ft, keys, seed=5)
    norm_d = torch.cat([v.flatten() for v in d.values()]).norm()
    norm_tau = torch.cat([(ft[k] - zs[k]).flatten() for k in keys]).norm()
    assert float(norm_d) == pytest.approx(float(norm_tau), rel=1e-5)
    assert not torch.equal(d[keys[2]], random_direction(zs, ft, keys, seed=6)[keys[2]])
    # block0 is layer index 1 → seed + 1; its path at α=1 holds θ_zs + d on block0, θ_ft elsewhere
    rows = single_layer_paths(clf, zs, ft, splits, ["embed", "block0"], [1.0], "ft", direction="random", seed=4,
                              batch_size=8, include_full=False, progress=False)
    d = random_direction(zs, ft, keys, seed=5)
    manual = {k: (zs[k] + d[k] if k in d else ft[k]) for k in zs}
    ref = _eval_state(clf, manual, splits)
    for s in splits:
        row = _pick(rows, layer="block0", split=s)[0]
        assert row["direction"] == "random" and _close(row, ref[s])
    rows = single_layer_paths(clf, zs, ft, splits, ["embed", "block0"], [0.0, 1.0], "ft", direction="random",
                              seed=4, batch_size=8, progress=False)
    assert {r["direction"] for r in rows if r["layer"] == "all"} == {"task"}
    table = layer_barriers(rows)
    assert {(r["layer"], r["direction"]) for r in table} == {("all", "task"), ("embed", "random"), ("block0", "random")}


def test_cumulative_control_last_group_is_full_model(setup):
    clf, zs, ft, splits = setup
    groups = cumulative_groups(layer_groups(clf))
    assert list(groups)[-1] == "cum:head" and set(groups["cum:head"]) == set(zs)
    rows = single_layer_paths(clf, zs, ft, splits, None, [0.0, 0.5, 1.0], "ft", cumulative=True,
                              batch_size=8, progress=False)
    full = _pick(rows, layer="all")
    last = _pick(rows, layer="cum:head")
    assert {r["group"] for r in last} == {"cumulative"}
    for r in last:
        q = _pick(full, alpha=r["alpha"], split=r["split"])[0]
        assert _close(r, q)


def test_layer_barriers_on_real_rows(setup):
    clf, zs, ft, splits = setup
    rows = single_layer_paths(clf, zs, ft, splits, None, [0.0, 0.5, 1.0], "both", batch_size=8, progress=False)
    table = layer_barriers(rows, id_split="id")
    full = _pick(table, layer="all")[0]
    fr = _pick(rows, layer="all", split="id")
    ref = 0.5 * (_pick(fr, alpha=0.0)[0]["loss"] + _pick(fr, alpha=1.0)[0]["loss"])
    assert full["barrier"] == pytest.approx(max(r["loss"] for r in fr) - ref)
    assert full["barrier_mid"] == pytest.approx(_pick(fr, alpha=0.5)[0]["loss"] - ref)
    singles = [r for r in table if r["group"] == "single"]
    assert len(singles) == 10 and all(r["ood_drop"] >= -1e-12 for r in singles)
    top = rank_layers(table, "barrier", k=2, hold="ft")
    assert len(top) == 2 and "all" not in top


def test_input_validation(setup):
    clf, zs, ft, splits = setup
    with pytest.raises(ParameterError, match="block9"):
        single_layer_paths(clf, zs, ft, splits, ["block9"], [0.5], progress=False)
    with pytest.raises(ParameterError, match=r"alphas=1\.5"):
        single_layer_paths(clf, zs, ft, splits, ["block0"], [0.0, 1.5], progress=False)
    with pytest.raises(ParameterError, match="hold='mid'"):
        single_layer_paths(clf, zs, ft, splits, ["block0"], [0.5], "mid", progress=False)
    with pytest.raises(ParameterError, match="direction='noise'"):
        single_layer_paths(clf, zs, ft, splits, ["block0"], [0.5], direction="noise", progress=False)
    with pytest.raises(ParameterError, match="reserved"):
        single_layer_paths(clf, zs, ft, splits, ["all"], [0.5], progress=False)


def test_rank_layers_rules():
    t = [{"layer": "b0", "hold": "ft", "barrier": 0.1, "ood_drop": 0.3},
         {"layer": "b1", "hold": "ft", "barrier": 0.5, "ood_drop": 0.2},
         {"layer": "b2", "hold": "ft", "barrier": float("nan"), "ood_drop": 0.1},
         {"layer": "b0", "hold": "zs", "barrier": 0.9, "ood_drop": 0.0}]
    with pytest.raises(ParameterError, match="hold=None"):
        rank_layers(t, "barrier")
    assert rank_layers(t, "barrier", hold="ft") == ["b1", "b0"]
    assert rank_layers(t, "ood_drop", k=1, hold="ft") == ["b0"]
    with pytest.raises(ParameterError, match="sharpness"):
        rank_layers(t, "sharpness", hold="ft")
    with pytest.raises(ParameterError, match="k=5"):
        rank_layers(t, "ood_drop", k=5, hold="ft")


def test_ranking_agreement_hand_made():
    a = ["b3", "b1", "b2", "b0"]
    res = ranking_agreement({"same": a, "copy": list(a), "rev": a[::-1], "shift": ["b1", "b3", "b2", "b0"]}, k=2)
    by = {(r["a"], r["b"]): r for r in res}
    assert by[("same", "copy")]["kendall_tau"] == pytest.approx(1.0)
    assert by[("same", "copy")]["jaccard"] == 1.0 and by[("same", "copy")]["overlap"] == 2
    assert by[("same", "rev")]["kendall_tau"] == pytest.approx(-1.0)
    assert by[("same", "rev")]["overlap"] == 0 and by[("same", "rev")]["jaccard"] == 0.0
    # one swapped pair of 6: τ = (5 − 1) / 6
    assert by[("same", "shift")]["kendall_tau"] == pytest.approx(4 / 6)
    assert by[("same", "shift")]["jaccard"] == 1.0
    top = ranking_agreement({"x": ["b0", "b1"], "y": ["b1", "b2"]})[0]
    assert top["k"] == 2 and top["overlap"] == 1 and top["jaccard"] == pytest.approx(1 / 3)
    assert top["n_common"] == 1 and math.isnan(top["kendall_tau"])
    with pytest.raises(ParameterError, match="repeats"):
        ranking_agreement({"x": ["b0", "b0"], "y": ["b0"]})
