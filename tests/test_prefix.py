"""Prefix caching: the suffix run on cached stage inputs is the full forward pass, and the prefix runs once."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from rftlib.errors import ParameterError
from rftlib.core.evaluation import evaluate_split
from rftlib.core.interpolation import Interpolator
from rftlib.core.layers import layer_groups
from rftlib.core.prefix import (SuffixModel, cached_inputs, layer_alpha_sweep, model_stages, run_suffix, stage_index,
                           stage_of_keys)


def _data(n=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, 28, 28, generator=g), torch.randint(0, 3, (n,), generator=g)


def test_suffix_equals_full_forward_every_stage(tiny_classifier):
    x, _ = _data()
    with torch.no_grad():
        full = tiny_classifier(x)
    names = [s.name for s in tiny_classifier.stages()]
    assert names == ["embed", "block0", "block1", "post", "head"]
    for name in names:
        h = cached_inputs(tiny_classifier, x, name)
        with torch.no_grad():
            out = run_suffix(tiny_classifier, h, name)
        torch.testing.assert_close(out, full, rtol=0, atol=1e-6)


def test_suffix_gradients_equal_naive(tiny_classifier):
    x, y = _data()
    keys = layer_groups(tiny_classifier)["block1"]
    params = dict(tiny_classifier.named_parameters())
    ps = [params[k] for k in keys if k in params]
    naive = torch.autograd.grad(F.cross_entropy(tiny_classifier(x), y), ps)
    s = SuffixModel(tiny_classifier, stage_of_keys(tiny_classifier, keys))
    assert s.start_name == "block1"
    h = s.prefix(x)
    assert not h.requires_grad
    cached = torch.autograd.grad(F.cross_entropy(s(h), y), ps)
    for a, b in zip(naive, cached):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_stage_of_keys(tiny_classifier):
    g = layer_groups(tiny_classifier)
    assert stage_of_keys(tiny_classifier, g["head"]) == 4
    assert stage_of_keys(tiny_classifier, g["block1"] + g["head"]) == 2  # a suffix of stages
    assert stage_of_keys(tiny_classifier, g["embed"] + g["head"]) == 0  # no caching possible
    assert stage_of_keys(tiny_classifier, ["not.a.key"]) == 0
    with pytest.raises(ParameterError, match="keys is empty"):
        stage_of_keys(tiny_classifier, [])


def test_stage_index_errors():
    stages = model_stages(nn.Sequential(nn.Linear(2, 2), nn.ReLU()))
    with pytest.raises(ParameterError, match="'nope' is unknown"):
        stage_index(stages, "nope")
    with pytest.raises(ParameterError, match="out of range"):
        stage_index(stages, 5)


def test_single_stage_fallback_runs_whole_model():
    net = nn.Linear(3, 2)
    s = SuffixModel(net, 0)
    x = torch.randn(4, 3)
    assert torch.equal(s.full(x), net(x))


def _endpoints(model, seed=1):
    zs = {k: v.clone() for k, v in model.state_dict().items()}
    g = torch.Generator().manual_seed(seed)
    ft = {k: (v + 0.05 * torch.randn(v.shape, generator=g)) if v.is_floating_point() else v.clone()
          for k, v in zs.items()}
    return zs, ft


@pytest.mark.parametrize("hold", ["ft", "zs"])
def test_layer_alpha_sweep_equals_naive(tiny_classifier, hold):
    x, y = _data(16)
    zs, ft = _endpoints(tiny_classifier)
    interp = Interpolator(tiny_classifier, zs, ft)
    keys = layer_groups(tiny_classifier)["block1"]
    alphas = [0.0, 0.5, 1.0]
    rows = layer_alpha_sweep(tiny_classifier, interp, (x, y), keys, alphas, hold=hold, batch_size=6, progress=False)
    for row, a in zip(rows, alphas):
        interp.set_alpha(a, keys=keys, hold=hold)
        ref = evaluate_split(tiny_classifier, (x, y), batch_size=6)
        assert row["n"] == ref["n"] == 16
        assert row["accuracy"] == ref["accuracy"]
        assert row["loss"] == pytest.approx(ref["loss"], rel=1e-6, abs=1e-7)


def test_layer_alpha_sweep_runs_prefix_once_per_batch(tiny_classifier):
    x, y = _data(16)
    zs, ft = _endpoints(tiny_classifier)
    interp = Interpolator(tiny_classifier, zs, ft)
    calls = []
    hook = tiny_classifier.visual.conv1.register_forward_hook(lambda *a: calls.append(1))
    try:
        layer_alpha_sweep(tiny_classifier, interp, (x, y), layer_groups(tiny_classifier)["block1"],
                          [0.0, 0.25, 0.5, 0.75, 1.0], batch_size=8, progress=False)
    finally:
        hook.remove()
    assert len(calls) == 2  # two batches, five alphas: the prefix ran once per batch


def test_layer_alpha_sweep_validates(tiny_classifier):
    zs, ft = _endpoints(tiny_classifier)
    interp = Interpolator(tiny_classifier, zs, ft)
    with pytest.raises(ParameterError, match="keys not in the model"):
        layer_alpha_sweep(tiny_classifier, interp, _data(4), ["nope"], [0.5], progress=False)
    with pytest.raises(ParameterError, match="alpha"):
        layer_alpha_sweep(tiny_classifier, interp, _data(4), ["head.weight"], [1.5], progress=False)
