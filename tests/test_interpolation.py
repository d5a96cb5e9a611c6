"""θ(α) in place: exact endpoints, the midpoint by hand, no drift, restrictions, grouping, errors."""

import random

import pytest
import torch

from rftlib.errors import ParameterError
from rftlib.core.interpolation import Interpolator, alpha_grid, check_compatible
from rftlib.core.layers import GRANULARITIES, layer_groups


def endpoints(clf, seed=1):
    zs = {k: v.clone() for k, v in clf.state_dict().items()}
    g = torch.Generator().manual_seed(seed)
    ft = {k: v + 0.05 * torch.randn(v.shape, generator=g) for k, v in zs.items()}
    return zs, ft


def test_endpoints_are_exact(tiny_classifier):
    zs, ft = endpoints(tiny_classifier)
    it = Interpolator(tiny_classifier, zs, ft)
    for a, ref in ((0.0, zs), (1.0, ft)):
        it.set_alpha(a)
        sd = tiny_classifier.state_dict()
        assert all(torch.equal(sd[k], ref[k]) for k in ref)


def test_midpoint_matches_hand_computation(tiny_classifier):
    zs, ft = endpoints(tiny_classifier)
    Interpolator(tiny_classifier, zs, ft).set_alpha(0.5)
    sd = tiny_classifier.state_dict()
    for k in zs:
        torch.testing.assert_close(sd[k], 0.5 * zs[k] + 0.5 * ft[k], rtol=0, atol=1e-6)


def test_no_drift_after_many_alphas(tiny_classifier):
    zs, ft = endpoints(tiny_classifier)
    it = Interpolator(tiny_classifier, zs, ft)
    rng = random.Random(0)
    for _ in range(200):
        it.set_alpha(rng.random())
    it.set_alpha(0.3)
    once = {k: v.clone() for k, v in tiny_classifier.state_dict().items()}
    fresh = Interpolator(tiny_classifier, zs, ft)
    fresh.set_alpha(0.3)
    assert all(torch.equal(once[k], v) for k, v in tiny_classifier.state_dict().items())
    it.set_alpha(0.0)
    assert all(torch.equal(tiny_classifier.state_dict()[k], zs[k]) for k in zs)


def test_restriction_moves_only_the_group(tiny_classifier):
    zs, ft = endpoints(tiny_classifier)
    groups = layer_groups(tiny_classifier, "block")
    it = Interpolator(tiny_classifier, zs, ft)
    it.set_alpha(0.0, keys=groups["block1"], hold="ft")
    sd = tiny_classifier.state_dict()
    for k in zs:
        assert torch.equal(sd[k], zs[k] if k in groups["block1"] else ft[k]), k
    it.set_alpha(1.0, keys=groups["head"], hold="zs")
    sd = tiny_classifier.state_dict()
    for k in zs:
        assert torch.equal(sd[k], ft[k] if k in groups["head"] else zs[k]), k


@pytest.mark.parametrize("granularity", GRANULARITIES)
def test_grouping_covers_every_key_once(tiny_classifier, granularity):
    groups = layer_groups(tiny_classifier, granularity)
    keys = [k for ks in groups.values() for k in ks]
    assert sorted(keys) == sorted(tiny_classifier.state_dict())
    assert len(keys) == len(set(keys))


def test_block_groups_follow_stages(tiny_classifier):
    groups = layer_groups(tiny_classifier, "block")
    assert list(groups) == ["embed", "block0", "block1", "post", "head"]
    assert groups["head"] == ["head.weight", "head.bias"]


def test_mismatched_endpoints_name_first_mismatch(tiny_classifier):
    zs, ft = endpoints(tiny_classifier)
    bad = dict(ft)
    bad["head.weight"] = torch.zeros(5, bad["head.weight"].shape[1])
    with pytest.raises(ParameterError, match="head.weight.*shape"):
        check_compatible(zs, bad)
    missing = {k: v for k, v in ft.items() if k != "visual.proj"}
    with pytest.raises(ParameterError, match="visual.proj"):
        Interpolator(tiny_classifier, zs, missing)
    half = {k: v.half() if k == "head.bias" else v for k, v in ft.items()}
    with pytest.raises(ParameterError, match="dtype"):
        check_compatible(zs, half)


@pytest.mark.parametrize("alpha", [-0.1, 1.5, float("nan"), "half"])
def test_bad_alpha(tiny_classifier, alpha):
    zs, ft = endpoints(tiny_classifier)
    with pytest.raises(ParameterError, match="alpha"):
        Interpolator(tiny_classifier, zs, ft).set_alpha(alpha)


def test_alpha_grid():
    assert alpha_grid(11)[3] == 0.3 and len(alpha_grid(11)) == 11
