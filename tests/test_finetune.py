"""Fine-tuning: the loss goes down, resume equals uninterrupted, recipes are validated; the WiSE-FT
sweep's endpoints equal separate evaluations."""

import copy

import pytest
import torch

from rftlib.errors import ParameterError
from rftlib.core.evaluation import evaluate
from rftlib.models.finetune import Recipe, finetune
from rftlib.core.sweep import interpolation_sweep
from toydata import toy_task




def test_a_few_steps_lower_the_loss(tiny_classifier):
    x, y = toy_task()
    before = evaluate(tiny_classifier, {"id": (x, y)}, progress=False)[0]["loss"]
    finetune(tiny_classifier, x, y, Recipe(name="t", lr=3e-3, epochs=4, batch_size=32, warmup_steps=2), progress=False)
    after = evaluate(tiny_classifier, {"id": (x, y)}, progress=False)[0]["loss"]
    assert after < before - 0.05, (before, after)


@pytest.mark.parametrize("augment", ["none", "strong"])
def test_resume_equals_uninterrupted(tiny_classifier, tmp_path, augment):
    x, y = toy_task()
    r = Recipe(name="r", lr=1e-3, epochs=3, batch_size=32, warmup_steps=2, augment=augment, seed=5)
    m1 = copy.deepcopy(tiny_classifier)
    full, _ = finetune(m1, x, y, r, out_dir=tmp_path / "full", progress=False)

    m2 = copy.deepcopy(tiny_classifier)
    short = Recipe(**r.to_dict())
    # interrupt during epoch 3 (after two saved epochs) by raising from the progress bar
    import rftlib.models.finetune as ft

    calls = {"n": 0}
    real_bar = ft.bar

    def interrupting_bar(it, **kw):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real_bar(it, **kw)

    ft.bar = interrupting_bar
    try:
        with pytest.raises(KeyboardInterrupt):
            finetune(m2, x, y, short, out_dir=tmp_path / "cut", progress=False)
    finally:
        ft.bar = real_bar
    m3 = copy.deepcopy(tiny_classifier)
    resumed, hist = finetune(m3, x, y, short, out_dir=tmp_path / "cut", progress=False)
    assert [h["epoch"] for h in hist] == [1, 2, 3]
    for k in full:
        assert torch.equal(full[k], resumed[k]), k


def test_linear_probe_keeps_the_image_tower(tiny_classifier):
    x, y = toy_task()
    before = copy.deepcopy(tiny_classifier.visual.state_dict())
    theta, _ = finetune(tiny_classifier, x, y, Recipe(name="lp", lr=1e-2, epochs=1, batch_size=32, mode="linear-probe"), progress=False)
    assert all(torch.equal(before[k], theta["visual." + k]) for k in before)


@pytest.mark.parametrize("bad, match", [
    (dict(lr=-1), "lr"), (dict(epochs=0), "epochs"), (dict(mode="full"), "mode"),
    (dict(augment="heavy"), "augment"), (dict(label_smoothing=1.0), "label_smoothing"),
    (dict(name="a/b"), "name"), (dict(batch_size=2.5), "batch_size"),
])
def test_bad_recipes(bad, match):
    with pytest.raises(ParameterError, match=match):
        Recipe(**{"name": "x", "lr": 1e-3, **bad})


def test_unknown_recipe_key():
    with pytest.raises(ParameterError, match="unknown keys"):
        Recipe.from_dict({"name": "x", "lr": 1e-3, "learning_rate": 1})


def test_sweep_endpoints_equal_separate_evaluations(tiny_classifier):
    x, y = toy_task()
    zs = {k: v.clone() for k, v in tiny_classifier.state_dict().items()}
    ft_model = copy.deepcopy(tiny_classifier)
    ft, _ = finetune(ft_model, x, y, Recipe(name="s", lr=3e-3, epochs=1, batch_size=32), progress=False)
    splits = {"id": (x[:40], y[:40]), "shifted": (1 - x[40:80], y[40:80])}
    rows = interpolation_sweep(tiny_classifier, zs, ft, splits, [0.0, 0.5, 1.0], world="w", run="s", progress=False)
    ref_zs = {r["split"]: r for r in evaluate(_load(tiny_classifier, zs), splits, progress=False)}
    ref_ft = {r["split"]: r for r in evaluate(_load(tiny_classifier, ft), splits, progress=False)}
    for r in rows:
        ref = {0.0: ref_zs, 1.0: ref_ft}.get(r["alpha"])
        if ref is not None:
            assert r["accuracy"] == ref[r["split"]]["accuracy"]
            assert r["loss"] == pytest.approx(ref[r["split"]]["loss"], rel=1e-6)
    assert len(rows) == 6


def _load(model, state):
    m = copy.deepcopy(model)
    m.load_state_dict(state)
    return m
