"""Sparsity interventions, matched controls, sweeps and the failure-mode verdict (rftlib.core.sparsity)."""

from __future__ import annotations

import pytest
import torch

from rftlib.errors import ParameterError
from rftlib.core.interpolation import Interpolator
from rftlib.core.layers import layer_groups, resolve_layers
from rftlib.models.factory import build_classifier, create_clip
from rftlib.core.sparsity import (control_layers, eligible_keys, failure_summary, intervene, magnitude_mask,
                             matched_counts, random_mask, rescued, sparsity_sweep, zero_counts)


def _pair(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    shapes = {"a.weight": (30, 40), "a.bias": (30,), "b.weight": (20, 10), "c.weight": (50, 50), "c.bias": (50,)}
    zs = {k: torch.randn(s, generator=g) for k, s in shapes.items()}
    ft = {k: v + 0.5 * torch.randn(v.shape, generator=g) for k, v in zs.items()}
    return zs, ft


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_mask_density_exact_and_reproducible(p):
    zs, _ = _pair()
    keys = list(zs)
    m = random_mask(zs, keys, p, seed=7)
    assert set(m) == {"a.weight", "b.weight", "c.weight"}  # weights only by default
    for k, mk in m.items():
        assert int((~mk).sum()) == round(p * zs[k].numel())
    again = random_mask(zs, keys, p, seed=7)
    other = random_mask(zs, keys, p, seed=8)
    assert all(torch.equal(m[k], again[k]) for k in m)
    assert all(not torch.equal(m[k], other[k]) for k in m)
    with_1d = random_mask(zs, keys, p, seed=7, include_1d=True)
    assert set(with_1d) == set(keys)
    assert int((~with_1d["a.bias"]).sum()) == round(p * 30)
    assert torch.equal(with_1d["a.weight"], m["a.weight"])  # a key's mask ignores the other keys


def test_masks_nested_across_p():
    zs, _ = _pair()
    lo, hi = random_mask(zs, ["c.weight"], 0.3, seed=1), random_mask(zs, ["c.weight"], 0.7, seed=1)
    assert bool(((~lo["c.weight"]) <= (~hi["c.weight"])).all())


def test_mask_both_equals_masking_every_alpha():
    zs, ft = _pair()
    keys = ["a.weight", "c.weight"]
    new = intervene(zs, ft, keys, 0.4, "mask_both", seed=3)
    m = random_mask(ft, keys, 0.4, seed=3)
    net = torch.nn.Module()
    for k, v in zs.items():
        net.register_buffer(k.replace(".", "_"), v.clone())
    rename = lambda d: {k.replace(".", "_"): v for k, v in d.items()}  # noqa: E731
    plain, masked = Interpolator(net, rename(zs), rename(ft)), Interpolator(net, rename(new.theta_zs), rename(new.theta_ft))
    for a in [0.0, 0.1, 0.37, 0.5, 0.9, 1.0]:
        want, got = plain.state_at(a), masked.state_at(a)
        for k in zs:
            kk = k.replace(".", "_")
            expect = want[kk] * m[k] if k in m else want[kk]
            assert torch.equal(got[kk], expect), (k, a)


def test_mask_ft_and_drop_tau_semantics():
    zs, ft = _pair()
    keys = ["a.weight"]
    m = random_mask(ft, keys, 0.5, seed=2)["a.weight"]
    mft = intervene(zs, ft, keys, 0.5, "mask_ft", seed=2)
    assert mft.theta_zs["a.weight"] is zs["a.weight"]
    assert torch.equal(mft.theta_ft["a.weight"], ft["a.weight"] * m)
    drop = intervene(zs, ft, keys, 0.5, "drop_tau", seed=2)
    assert torch.equal(drop.theta_ft["a.weight"][~m], zs["a.weight"][~m])  # dropped τ → θ_zs
    assert torch.equal(drop.theta_ft["a.weight"][m], ft["a.weight"][m])
    assert torch.equal(drop.theta_ft["a.bias"], ft["a.bias"])  # untouched keys unchanged


def test_drop_tau_rescaling_preserves_task_vector_sum():
    g = torch.Generator().manual_seed(0)
    zs = {"w": torch.randn(100, 100, generator=g)}
    ft = {"w": zs["w"] + 1.0 + torch.randn(100, 100, generator=g)}  # τ ~ N(1, 1): Σ τ ≈ 10 000
    tau_sum = float((ft["w"] - zs["w"]).sum())
    for seed in range(3):
        res = intervene(zs, ft, ["w"], 0.5, "drop_tau_rescaled", seed=seed)
        plain = intervene(zs, ft, ["w"], 0.5, "drop_tau", seed=seed)
        s_res = float((res.theta_ft["w"] - zs["w"]).sum())
        s_plain = float((plain.theta_ft["w"] - zs["w"]).sum())
        assert abs(s_res - tau_sum) < 0.05 * abs(tau_sum)  # sd of the estimate ≈ 1 % of Σ τ
        assert abs(s_plain - 0.5 * tau_sum) < 0.05 * abs(tau_sum)  # without rescaling: half
        assert abs(s_plain - tau_sum) > 0.3 * abs(tau_sum)


def test_magnitude_mask_sources():
    zs, ft = _pair()
    keys = ["b.weight"]
    m = magnitude_mask(ft, keys, 0.3)["b.weight"]
    kept, dropped = ft["b.weight"].abs()[m], ft["b.weight"].abs()[~m]
    assert int((~m).sum()) == 60 and float(dropped.max()) <= float(kept.min())
    same = intervene(zs, ft, keys, 0.3, "magnitude", magnitude_source="ft")
    assert torch.equal(same.theta_zs["b.weight"] == 0, ~m) and torch.equal(same.theta_ft["b.weight"] == 0, ~m)
    each = intervene(zs, ft, keys, 0.3, "magnitude", magnitude_source="each")
    m_zs = magnitude_mask(zs, keys, 0.3)["b.weight"]
    assert torch.equal(each.theta_zs["b.weight"] == 0, ~m_zs) and torch.equal(each.theta_ft["b.weight"] == 0, ~m)
    assert not torch.equal(m, m_zs)


@pytest.mark.parametrize("kind", ["mask_both", "mask_ft", "drop_tau", "drop_tau_rescaled", "magnitude"])
def test_control_zeroes_the_same_count(kind):
    zs, ft = _pair()
    stragglers, control = ["b.weight"], ["a.weight", "a.bias", "c.weight"]
    s = intervene(zs, ft, stragglers, 0.35, kind, seed=4)
    counts = matched_counts(ft, control, s.n_zeroed)
    c = intervene(zs, ft, control, 0.35, kind, seed=4, counts=counts)
    assert s.n_zeroed == c.n_zeroed == round(0.35 * 200)
    assert set(counts) == {"a.weight", "c.weight"}
    assert counts["c.weight"] > counts["a.weight"] > 0  # spread in proportion to size

    def zeroed(new, keys):  # entries of θ_ft (or of τ, for the drop_tau variants) set to zero
        if kind.startswith("drop_tau"):
            return sum(int(((new.theta_ft[k] - zs[k]) == 0).sum()) for k in keys)
        return sum(int((new.theta_ft[k] == 0).sum()) for k in keys)

    assert zeroed(s, stragglers) == zeroed(c, control) == s.n_zeroed


def test_matched_counts_too_small_control():
    zs, _ = _pair()
    with pytest.raises(ParameterError, match="control layers hold 199"):
        matched_counts(zs, ["b.weight"], 500)


def test_p_validation():
    zs, ft = _pair()
    for bad in (1.0, -0.1, 1.5, "x"):
        with pytest.raises(ParameterError, match=r"p=.*\[0, 1\)"):
            intervene(zs, ft, ["a.weight"], bad, "mask_both")
    with pytest.raises(ParameterError, match="kind='prune'"):
        intervene(zs, ft, ["a.weight"], 0.5, "prune")
    with pytest.raises(ParameterError, match="magnitude_source='both'"):
        intervene(zs, ft, ["a.weight"], 0.5, "magnitude", magnitude_source="both")
    assert zero_counts(zs, ["a.weight"], 0.0) == {"a.weight": 0}
    assert eligible_keys(zs, ["a.bias"]) == []


def test_control_layers_seeded_and_disjoint():
    g = {n: [n + ".w"] for n in ["embed", "block0", "block1", "block2", "block3", "head"]}
    a = control_layers(g, ["block1", "block2"], seed=0, exclude=["head"])
    assert a == control_layers(g, ["block1", "block2"], seed=0, exclude=["head"])
    assert len(a) == 2 and not set(a) & {"block1", "block2", "head"}
    with pytest.raises(ParameterError, match="block9"):
        control_layers(g, ["block9"])


@pytest.fixture(scope="module")
def tiny():
    clip, tok = create_clip("rft-tiny", seed=0)
    clf = build_classifier(clip, tok, ["a", "b", "c"], ["a photo of a {}."], (0.4,) * 3, (0.3,) * 3)
    zs = {k: v.clone() for k, v in clf.state_dict().items()}
    g = torch.Generator().manual_seed(1)
    ft = {k: v + 0.05 * torch.randn(v.shape, generator=g) for k, v in zs.items()}
    gx = torch.Generator().manual_seed(2)
    splits = {s: (torch.rand(12, 3, 28, 28, generator=gx), torch.randint(0, 3, (12,), generator=gx))
              for s in ("id", "ood")}
    return clf, zs, ft, splits


def test_sparsity_sweep_rows_controls_and_verdict(tiny):
    clf, zs, ft, splits = tiny
    before = {k: v.clone() for k, v in clf.state_dict().items()}
    rows = sparsity_sweep(clf, zs, ft, splits, ["block1"], ps=[0.0, 0.5], interventions=["mask_both", "drop_tau"],
                          alphas=[0.0, 0.5, 1.0], control=["block0"], batch_size=8, progress=False)
    assert all(torch.equal(before[k], v) for k, v in clf.state_dict().items())  # model restored
    assert len(rows) == (1 + 2 * 2 * 2) * 3 * 2
    assert {"intervention", "target", "p", "alpha", "split", "accuracy", "loss"} <= set(rows[0])
    for kind in ("mask_both", "drop_tau"):
        n = {r["target"]: r["n_zeroed"] for r in rows if r["intervention"] == kind and r["p"] == 0.5}
        assert n["stragglers"] == n["control"] > 0
    # p = 0 is the identity: same numbers as the baseline
    base = {(r["alpha"], r["split"]): r["loss"] for r in rows if r["intervention"] == "none"}
    zero = [r for r in rows if r["p"] == 0.0 and r["intervention"] == "mask_both"]
    assert zero and all(r["loss"] == base[(r["alpha"], r["split"])] for r in zero)
    summary = failure_summary(rows)
    assert len(summary) == 9 and all(s["best_alpha"] == 0.5 for s in summary)
    verdict = rescued(summary)
    assert len(verdict) == 8
    b = [s for s in summary if s["intervention"] == "none"][0]["failure"]
    assert all(v["baseline_failure"] == b and v["rescued"] == (b and not v["failure"]) for v in verdict)


def test_sweep_validates_before_work(tiny):
    clf, zs, ft, splits = tiny
    with pytest.raises(ParameterError, match=r"ps=1\.0"):
        sparsity_sweep(clf, zs, ft, splits, ["block1"], ps=[0.5, 1.0], progress=False)
    with pytest.raises(ParameterError, match="overlaps"):
        sparsity_sweep(clf, zs, ft, splits, ["block1"], ps=[0.5], control=["block1"], progress=False)
    with pytest.raises(ParameterError, match="block7"):
        sparsity_sweep(clf, zs, ft, splits, ["block7"], ps=[0.5], progress=False)
    with pytest.raises(ParameterError, match="control layers hold"):  # head (3×32) cannot match block1
        sparsity_sweep(clf, zs, ft, splits, ["block1"], ps=[0.5], control=["head"], progress=False)


def test_failure_summary_and_rescue_hand_made():
    def path(kind, target, p, accs):
        return [{"intervention": kind, "target": target, "p": p, "alpha": a, "split": s, "accuracy": acc}
                for a, (id_acc, ood_acc) in zip([0.0, 0.5, 1.0], accs)
                for s, acc in (("id", id_acc), ("ood", ood_acc))]

    rows = (path("none", "none", 0.0, [(.5, .60), (.8, .55), (.9, .40)])
            + path("mask_ft", "stragglers", 0.5, [(.5, .60), (.8, .65), (.9, .50)])   # beats θ_zs: rescued
            + path("mask_both", "stragglers", 0.5, [(.4, .40), (.7, .50), (.8, .45)])  # beats its own α=0 only
            )
    s = {x["intervention"]: x for x in failure_summary(rows)}
    assert s["none"]["failure"] and not s["mask_ft"]["failure"] and s["mask_both"]["failure"]
    assert s["mask_both"]["failure_vs_zs"] and not s["mask_both"]["failure_vs_path"]
    assert s["mask_both"]["successful"]
    path_ref = {x["intervention"]: x["failure"] for x in failure_summary(rows, reference="path")}
    assert path_ref == {"none": True, "mask_ft": False, "mask_both": False}
    v = {x["intervention"]: x["rescued"] for x in rescued(failure_summary(rows))}
    assert v == {"mask_ft": True, "mask_both": False}
    with pytest.raises(ParameterError, match="baseline"):
        rescued([x for x in failure_summary(rows) if x["intervention"] != "none"])


def test_block_layer_keys_masked_in_model(tiny):
    clf, zs, ft, _ = tiny
    keys = resolve_layers(layer_groups(clf), ["block1"])
    new = intervene(zs, ft, keys, 0.3, "mask_both", seed=0)
    touched = [k for k in keys if not torch.equal(new.theta_ft[k], ft[k])]
    assert touched == [k for k in keys if ft[k].ndim >= 2]
    assert all(new.theta_ft[k] is ft[k] for k in zs if k not in keys)
