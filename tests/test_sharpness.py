"""Sharpness estimators: budgets, invariances, exact restore, prefix caching, seeds, validation."""

import copy
import dataclasses
import functools
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rftlib.errors import NumericalError, ParameterError
from rftlib.core.layers import layer_groups
from rftlib.core.sharpness import (SharpnessResult, layerwise_sharpness, project_ellipsoid, relative_norm, sharpness,
                              step_checkpoints)

FAST = dict(n_iters=4, m=8, progress=False)
worst_case_sharpness = functools.partial(sharpness, kind="worst")
average_case_sharpness = functools.partial(sharpness, kind="average")


def _data(n=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 28, 28, generator=g), torch.randint(0, 3, (n,), generator=g)


def _mlp(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Linear(16, 3))


def _mlp_data(n=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 5, generator=g), torch.randint(0, 3, (n,), generator=g)


def _snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _assert_bit_equal(model, snap):
    for k, v in model.state_dict().items():
        assert torch.equal(v, snap[k]), k


# ---------------------------------------------------------------------------------------------


def test_step_checkpoints_of_the_reference():
    assert step_checkpoints(20) == [5, 9, 12, 15, 16, 18, 19, 20]
    assert step_checkpoints(1) == [1]


@pytest.mark.parametrize("kind,norm", [("worst", "linf"), ("worst", "l2"), ("average", "l2"), ("average", "linf")])
def test_rho_zero_gives_exactly_zero(tiny_classifier, kind, norm):
    r = sharpness(tiny_classifier, _data(), rho=0.0, kind=kind, norm=norm, **FAST)
    assert r.value == 0.0 and r.per_batch == [0.0, 0.0] and r.err_gap == 0.0 and r.delta_norm == 0.0
    assert r.loss_at_w > 0 and r.n_examples == 16


def test_worst_case_is_positive_and_grows_with_rho(tiny_classifier):
    vals = [worst_case_sharpness(tiny_classifier, _data(), rho=rho, **FAST).value for rho in (0.001, 0.01)]
    assert 0 < vals[0] < vals[1]


def _record(store):
    def cb(info):
        store.append(([d.detach().clone() for d in info["delta"]], [c.clone() for c in info["c"]], info["eta"]))
    return cb


@pytest.mark.parametrize("norm,adaptive,random_init,group", [
    ("linf", True, False, "all"),
    ("linf", True, True, "block1"),
    ("linf", False, False, "all"),
    ("l2", True, False, "all"),     # ellipsoid projection
    ("l2", True, True, "block0"),
    ("l2", False, False, "all"),
])
def test_every_iterate_stays_inside_its_budget(tiny_classifier, norm, adaptive, random_init, group):
    rho = 0.05 if norm == "linf" else 0.5
    iterates = []
    r = worst_case_sharpness(tiny_classifier, _data(8), group, rho=rho, norm=norm, adaptive=adaptive,
                             random_init=random_init, callback=_record(iterates), n_iters=6, m=8, progress=False)
    assert len(iterates) == 7  # 6 gradient steps + the last iterate
    rel = []
    for delta, c, _ in iterates:
        if norm == "linf":
            for d, ci in zip(delta, c):
                assert bool((d.abs() <= rho * ci * (1 + 1e-6)).all())
        rel.append(relative_norm(delta, c, norm))
        assert rel[-1] <= rho * (1 + 1e-6)
    assert max(rel) > 0.9 * rho  # the ascent does reach the boundary: the check is not vacuous
    assert r.rel_norm <= rho * (1 + 1e-6)


def test_step_size_halves_only_at_checkpoints(tiny_classifier):
    iterates = []
    worst_case_sharpness(tiny_classifier, _data(8), rho=0.05, n_iters=20, m=8, progress=False,
                         callback=_record(iterates))
    etas = [e for _, _, e in iterates[:20]]
    assert etas[0] == pytest.approx(0.1)
    changes = [k for k in range(1, 20) if etas[k] != etas[k - 1]]
    assert set(changes) <= {k + 1 for k in step_checkpoints(20)}
    for k in changes:
        assert etas[k] == pytest.approx(etas[k - 1] / 2)


def test_project_ellipsoid_is_the_nearest_point():
    g = torch.Generator().manual_seed(0)
    z = [torch.randn(7, generator=g), torch.randn(3, 2, generator=g)]
    c = [torch.rand(7, generator=g) + 0.1, torch.rand(3, 2, generator=g) + 0.1]
    rho = 0.3
    d = project_ellipsoid(z, c, rho)
    assert relative_norm(d, c, "l2") == pytest.approx(rho, rel=1e-5)
    # KKT: z − δ = λ·δ/c² with one λ > 0 for every entry
    lam = torch.cat([((zi - di) * ci ** 2 / di).flatten() for zi, di, ci in zip(z, d, c)])
    assert float(lam.min()) > 0
    torch.testing.assert_close(lam, torch.full_like(lam, float(lam.mean())), rtol=1e-3, atol=0)


def _rescaled(net, seed=1):
    """Same function: hidden unit i's incoming weights × s_i, outgoing × 1/s_i (ReLU is 1-homogeneous)."""
    other = copy.deepcopy(net)
    s = torch.exp(torch.randn(16, generator=torch.Generator().manual_seed(seed)))  # factors ~0.1..10
    with torch.no_grad():
        other[0].weight.mul_(s[:, None])
        other[0].bias.mul_(s)
        other[2].weight.div_(s[None, :])
    return other


@pytest.mark.parametrize("kind,norm,extra", [
    ("worst", "linf", {}),
    ("worst", "linf", {"random_init": True}),
    ("worst", "l2", {"l2_projection": "rescale"}),
    ("average", "l2", {}),
    ("average", "linf", {}),
])
def test_adaptive_sharpness_is_invariant_to_neuron_rescaling(kind, norm, extra):
    net = _mlp()
    other = _rescaled(net)
    x, y = _mlp_data()
    torch.testing.assert_close(net(x), other(x), rtol=1e-5, atol=1e-5)
    rho = 0.1 if norm == "linf" else 0.5
    kw = dict(rho=rho, kind=kind, norm=norm, n_iters=8, m=16, seed=3, progress=False, **extra)
    a, b = sharpness(net, (x, y), **kw), sharpness(other, (x, y), **kw)
    assert abs(a.value) > 1e-4  # not trivially zero
    assert b.value == pytest.approx(a.value, rel=1e-3, abs=1e-6)
    # control: the standard (non-adaptive) estimator sees the rescaling
    sa = sharpness(net, (x, y), **{**kw, "adaptive": False})
    sb = sharpness(other, (x, y), **{**kw, "adaptive": False})
    assert sb.value != pytest.approx(sa.value, rel=1e-2)


@pytest.mark.parametrize("kind,group", [("worst", "all"), ("worst", "block1"), ("average", "all")])
def test_logit_normalized_sharpness_is_invariant_to_head_scale(tiny_classifier, kind, group):
    scaled = copy.deepcopy(tiny_classifier)
    with torch.no_grad():
        scaled.head.weight.mul_(7.0)
    kw = dict(rho=0.05, kind=kind, group=group, n_iters=4, m=8, seed=0, progress=False)
    a, b = sharpness(tiny_classifier, _data(), **kw), sharpness(scaled, _data(), **kw)
    assert b.value == pytest.approx(a.value, rel=1e-3, abs=1e-6)
    # control: without logit normalization the value depends on the head's scale
    a2 = sharpness(tiny_classifier, _data(), logit_norm=False, **kw)
    b2 = sharpness(scaled, _data(), logit_norm=False, **kw)
    assert b2.value != pytest.approx(a2.value, rel=1e-2)


def test_layerwise_with_all_layers_as_one_group_equals_whole_model(tiny_classifier):
    every = [k for ks in layer_groups(tiny_classifier).values() for k in ks]
    rs = layerwise_sharpness(tiny_classifier, _data(), {"everything": every}, rho=0.02, **FAST)
    assert [r.layer for r in rs] == ["everything", "all"]
    assert rs[0].value == rs[1].value and rs[0].per_batch == rs[1].per_batch


def test_layerwise_sweeps_every_block_with_prefix_caching(tiny_classifier):
    rs = layerwise_sharpness(tiny_classifier, _data(8), rho=0.02, n_iters=2, m=8, progress=False)
    assert [r.layer for r in rs] == ["embed", "block0", "block1", "post", "head", "all"]
    assert [r.settings["prefix_stage"] for r in rs] == [None, "block0", "block1", "post", "head", None]
    assert all(isinstance(r, SharpnessResult) for r in rs)


@pytest.mark.parametrize("kind,norm,group", [
    ("worst", "linf", "block1"), ("worst", "l2", "block0"), ("worst", "linf", "head"),
    ("average", "l2", "block1"), ("average", "linf", "post"),
])
def test_prefix_cached_equals_naive(tiny_classifier, kind, norm, group):
    kw = dict(rho=0.05 if norm == "linf" else 0.5, kind=kind, norm=norm, random_init=kind == "worst", seed=1, **FAST)
    cached = sharpness(tiny_classifier, _data(), group, **kw)
    naive = sharpness(tiny_classifier, _data(), group, naive=True, **kw)
    assert cached.settings["prefix_stage"] == group and naive.settings["prefix_stage"] is None
    assert cached.value != 0
    for a, b in zip(cached.per_batch, naive.per_batch):
        assert a == pytest.approx(b, rel=1e-5, abs=1e-7)
    assert cached.err_gap == pytest.approx(naive.err_gap, abs=1e-9)
    assert cached.rel_norm == pytest.approx(naive.rel_norm, rel=1e-5)


def test_prefix_runs_once_per_batch(tiny_classifier):
    calls = []
    hook = tiny_classifier.visual.conv1.register_forward_hook(lambda *a: calls.append(1))
    try:
        worst_case_sharpness(tiny_classifier, _data(16), "block1", rho=0.05, n_iters=5, m=8, progress=False)
        cached = len(calls)
        calls.clear()
        worst_case_sharpness(tiny_classifier, _data(16), "block1", rho=0.05, n_iters=5, m=8, progress=False,
                             naive=True)
    finally:
        hook.remove()
    assert cached == 1 + 2  # the gradient probe, then once per batch
    assert len(calls) > 5 * 2


@pytest.mark.parametrize("kind,extra", [("worst", {"random_init": True}), ("average", {})])
def test_same_seed_same_values(tiny_classifier, kind, extra):
    kw = dict(rho=0.05, kind=kind, **FAST, **extra)
    a = sharpness(tiny_classifier, _data(), seed=5, **kw)
    b = sharpness(tiny_classifier, _data(), seed=5, **kw)
    c = sharpness(tiny_classifier, _data(), seed=6, **kw)
    assert a.per_batch == b.per_batch and a.value == b.value and a.delta_norm == b.delta_norm
    assert c.per_batch != a.per_batch


@pytest.mark.parametrize("kind", ["worst", "average"])
def test_weights_flags_and_mode_are_restored_bit_exactly(tiny_classifier, kind):
    tiny_classifier.train()
    tiny_classifier.visual.conv1.weight.requires_grad_(False)
    snap = _snapshot(tiny_classifier)
    flags = {n: p.requires_grad for n, p in tiny_classifier.named_parameters()}
    sharpness(tiny_classifier, _data(), rho=0.1, kind=kind, norm="l2", **FAST)
    _assert_bit_equal(tiny_classifier, snap)
    assert {n: p.requires_grad for n, p in tiny_classifier.named_parameters()} == flags
    assert tiny_classifier.training
    assert all(p.grad is None for p in tiny_classifier.parameters())


def test_frozen_parameters_are_not_perturbed(tiny_classifier):
    frozen = tiny_classifier.visual.transformer.resblocks[0].attn.in_proj_weight
    frozen.requires_grad_(False)
    seen = []
    r = worst_case_sharpness(tiny_classifier, _data(8), rho=0.05, n_iters=2, m=8, progress=False,
                             callback=lambda info: seen.append(list(info["names"])))
    assert "visual.transformer.resblocks.0.attn.in_proj_weight" not in seen[0]
    total = sum(p.numel() for p in tiny_classifier.parameters())
    assert r.settings["n_params"] == total - frozen.numel()
    with pytest.raises(ParameterError, match="nothing to perturb"):
        worst_case_sharpness(tiny_classifier, _data(8), ["visual.transformer.resblocks.0.attn.in_proj_weight"],
                             rho=0.05, **FAST)


def test_layerwise_skips_a_frozen_layer_with_a_warning(tiny_classifier):
    for p in tiny_classifier.visual.transformer.resblocks[1].parameters():
        p.requires_grad_(False)
    with pytest.warns(UserWarning, match="block1"):
        rs = layerwise_sharpness(tiny_classifier, _data(8), rho=0.02, n_iters=1, m=8, progress=False)
    assert "block1" not in [r.layer for r in rs]


class _ClipClassifier(nn.Module):
    """A whole CLIP model (text tower included, never called) with a linear head."""

    def __init__(self, clip):
        super().__init__()
        self.clip = clip
        self.head = nn.Linear(clip.visual.output_dim, 3)

    def forward(self, x):
        return self.head(F.normalize(self.clip.encode_image(x), dim=-1))


def test_unused_text_tower_does_not_crash(tiny_clip):
    clip, _ = tiny_clip
    model = _ClipClassifier(clip)
    snap = _snapshot(model)
    seen = []
    for kind in ("worst", "average"):
        r = sharpness(model, _data(8), rho=0.05, kind=kind, n_iters=2, m=8, progress=False,
                      callback=lambda info: seen.append(list(info["names"])))
        assert math.isfinite(r.value)
    assert seen and not any(n.startswith("clip.transformer.") or n.startswith("clip.token_embedding")
                            for n in seen[0])
    _assert_bit_equal(model, snap)
    text_keys = [k for k, _ in model.named_parameters() if k.startswith("clip.transformer.")]
    with pytest.raises(ParameterError, match="gets a gradient"):
        worst_case_sharpness(model, _data(8), text_keys, rho=0.05, **FAST)


def test_m_sharpness_mean_of_per_batch_maxima(tiny_classifier):
    r = worst_case_sharpness(tiny_classifier, _data(20), rho=0.02, n_iters=2, m=8, progress=False)
    assert len(r.per_batch) == 3 and r.n_examples == 20
    assert r.value == pytest.approx((8 * r.per_batch[0] + 8 * r.per_batch[1] + 4 * r.per_batch[2]) / 20)
    # an iterable of batches is re-cut into batches of m
    x, y = _data(20)
    r2 = worst_case_sharpness(tiny_classifier, [(x[:5], y[:5]), (x[5:], y[5:])], rho=0.02, n_iters=2, m=8,
                              progress=False)
    assert r2.per_batch == pytest.approx(r.per_batch, rel=1e-5)


def test_to_row_has_the_results_columns(tiny_classifier):
    r = average_case_sharpness(tiny_classifier, _data(8), "block0", rho=0.1, norm="l2", n_iters=2, m=8,
                               progress=False)
    row = r.to_row(world="mini", alpha=0.5)
    assert row == {"world": "mini", "alpha": 0.5, "layer": "block0", "kind": "average", "norm": "l2",
                   "adaptive": True, "rho": 0.1, "value": r.value}


@pytest.mark.parametrize("kwargs,match", [
    (dict(rho=-0.1), r"rho=-0\.1 .*>= 0"),
    (dict(rho=float("nan")), r"rho=nan"),
    (dict(rho=0.1, norm="l3"), r"norm='l3' .*\('linf', 'l2'\)"),
    (dict(rho=0.1, kind="best"), r"kind='best' .*\('worst', 'average'\)"),
    (dict(rho=0.1, n_iters=0), r"n_iters=0 .*>= 1"),
    (dict(rho=0.1, m=0), r"m=0 .*>= 1"),
    (dict(rho=0.1, l2_projection="box"), r"l2_projection='box'"),
    (dict(rho=0.1, group="block9"), r"group='block9' .*block0"),
])
def test_bad_parameters_are_named(tiny_classifier, kwargs, match):
    with pytest.raises(ParameterError, match=match):
        sharpness(tiny_classifier, _data(4), progress=False, **kwargs)


def test_nonfinite_loss_names_the_layer(tiny_classifier):
    with torch.no_grad():
        tiny_classifier.visual.transformer.resblocks[1].mlp.c_fc.weight[0, 0] = float("nan")
    snap = _snapshot(tiny_classifier)
    with pytest.raises(NumericalError, match="'block1'"):
        worst_case_sharpness(tiny_classifier, _data(8), "block1", rho=0.05, **FAST)
    for k, v in tiny_classifier.state_dict().items():
        assert torch.equal(v.nan_to_num(), snap[k].nan_to_num()), k


def test_empty_data_is_an_error(tiny_classifier):
    x, y = _data(4)
    with pytest.raises(ParameterError, match="empty"):
        sharpness(tiny_classifier, (x[:0], y[:0]), rho=0.1, progress=False)


def test_l2_estimate_is_not_far_below_a_long_ascent_from_random_starts(tiny_classifier):
    """The ℓ2 adaptive worst case: the default estimator (20 steps from δ = 0) must come close to the
    best of three long ascents (100 steps) from random starts in the same budget, and its own long
    ascent from δ = 0 must come closer still (measured: 0.75 and 0.90 of the best; the earlier
    default, a u-step with a δ-projection, reached 0.66 at 20 steps here and stalled at the same
    value for 20 and 100 steps on the fashion world)."""
    g = torch.Generator().manual_seed(0)
    data = (torch.rand(32, 3, 28, 28, generator=g), torch.randint(0, 3, (32,), generator=g))
    kw = dict(rho=0.3, norm="l2", adaptive=True, m=32, progress=False)
    default = worst_case_sharpness(tiny_classifier, data, n_iters=20, **kw).value
    long_zero = worst_case_sharpness(tiny_classifier, data, n_iters=100, **kw).value
    best = max(worst_case_sharpness(tiny_classifier, data, n_iters=100, random_init=True, seed=s, **kw).value
               for s in range(3))
    assert default >= 0.7 * best
    assert long_zero >= 0.85 * best


def test_l2_ellipsoid_pair_is_consistent_and_inside_budget(tiny_classifier):
    """The alternative pair (steepest ascent in δ, Euclidean projection onto the ellipsoid) improves
    on δ = 0 and keeps ‖δ ⊘ |w|‖₂ ≤ ρ; zero weights (the head's zero bias) get no perturbation."""
    iterates = []
    r = worst_case_sharpness(tiny_classifier, _data(8), rho=0.5, norm="l2", l2_projection="ellipsoid", n_iters=5,
                             m=8, callback=_record(iterates), progress=False)
    assert r.value > 0 and r.rel_norm <= 0.5 * (1 + 1e-6)
    for delta, c, _ in iterates:
        for d, ci in zip(delta, c):
            assert bool((d[ci == 0] == 0).all())


def test_config_and_keyword_forms_agree_and_name_bad_settings(tiny_classifier):
    from rftlib.core.sharpness import SharpnessConfig, sharpness

    data = _data(16)
    cfg = SharpnessConfig(rho=0.01, n_iters=3, m=8)
    a = sharpness(tiny_classifier, data, config=cfg, progress=False)
    b = sharpness(tiny_classifier, data, rho=0.01, n_iters=3, m=8, progress=False)
    c = sharpness(tiny_classifier, data, config=cfg.replace(n_iters=1), n_iters=3, progress=False)  # fields override
    assert a.per_batch == b.per_batch == c.per_batch and a.settings == b.settings
    with pytest.raises(ParameterError, match=r"'n_iter' \(did you mean 'n_iters'\?\)"):
        sharpness(tiny_classifier, data, rho=0.01, n_iter=3)
    with pytest.raises(ParameterError, match="rho is required"):
        sharpness(tiny_classifier, data)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.rho = 0.5


def test_precision_factory_wraps_every_forward_pass(tiny_classifier):
    import contextlib

    from rftlib.core.sharpness import sharpness

    entered = []

    @contextlib.contextmanager
    def counting():
        entered.append(1)
        yield

    r = sharpness(tiny_classifier, _data(16), rho=0.01, n_iters=3, m=8, precision=counting, progress=False)
    ref = sharpness(tiny_classifier, _data(16), rho=0.01, n_iters=3, m=8, progress=False)
    assert r.per_batch == ref.per_batch  # a no-op context: fp32, same numbers
    # per batch: L(w), 3 ascent steps, the last iterate (+ the best one when it is not the last); plus the probe
    assert len(entered) >= 1 + 2 * (1 + 3 + 1)
