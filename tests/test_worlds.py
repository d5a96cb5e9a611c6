"""Miniature worlds: parameter files, splits, corpus, resumable pretraining, shipped checkpoints."""

import copy
import json

import numpy as np
import pytest
import torch
import yaml

from rftlib.worlds.corpus import ClassNames, render_corpus, sample_captions
from rftlib.errors import CheckpointError, ParameterError
from rftlib.core.evaluation import evaluate
from rftlib.worlds.pretrain import pretrain_world
from rftlib.worlds.world import available_worlds, load_world, WORLDS_DIR


def test_both_worlds_are_there():
    assert {"fashion", "digits"} <= set(available_worlds())


def test_unknown_world():
    with pytest.raises(ParameterError, match="available worlds"):
        load_world("cifar")


def test_splits_are_disjoint_from_training_and_fixed():
    w = load_world("digits")
    xtr, _ = w.train_data()
    xte, _ = w.test_data()
    assert len(xtr) == 4000 and len(xte) == 1000
    train_rows = {bytes(r) for r in xtr.flatten(1).numpy()}
    assert not any(bytes(r) in train_rows for r in xte.flatten(1).numpy()[:200])
    a, b = w.eval_splits(64), w.eval_splits(64)
    assert list(a) == w.all_splits
    assert all(torch.equal(a[k][0], b[k][0]) for k in a)
    assert a["uci-digits"][0].shape == (64, 3, 28, 28)
    assert not torch.equal(a["id"][0], a["inverted"][0])


def test_bad_split_request():
    w = load_world("digits")
    with pytest.raises(ParameterError, match="splits"):
        w.eval_splits(10, splits=["id", "cartoon"])
    with pytest.raises(ParameterError, match="n_eval"):
        w.eval_splits(0)


def test_caption_noise_rates():
    classes = [ClassNames(f"c{i}", [f"s{i}"], ["coarse"]) for i in range(10)]
    n = 4000
    labels = np.arange(n) % 10
    caps = sample_captions(["photo"], np.zeros(n, int), labels, classes, p_coarse=0.5, p_wrong=0.2,
                           rng=np.random.default_rng(0))
    coarse = np.mean(["coarse" in c for c in caps])
    correct = np.mean([(f"c{l}" in c or f"s{l}" in c) for c, l in zip(caps, labels)])
    assert abs(coarse - 0.5) < 0.03
    assert abs(correct - (0.3 + 0.2 / 10)) < 0.03  # fine names, plus wrong draws that hit the true class


def test_corpus_styles_follow_probabilities():
    w = load_world("digits")
    x, y = w.train_data()
    imgs, caps, style_idx = render_corpus(x[:2000], y[:2000], {"photo": 0.5, "sketch": 0.5}, w.classes, 0.0, 0.0, seed=3)
    assert imgs.shape == (2000, 3, 28, 28) and len(caps) == 2000
    assert abs(style_idx.mean() - 0.5) < 0.05
    assert all(("sketch" in c or "line drawing" in c) == bool(s) for c, s in zip(caps, style_idx))


@pytest.fixture
def tiny_world(tmp_path):
    cfg = yaml.safe_load((WORLDS_DIR / "digits" / "world.yaml").read_text())
    cfg.update(name="tinydigits", model="rft-tiny")
    cfg["pretrain"].update(epochs=3, batch_size=64, warmup_steps=2, eval_every=1)
    p = tmp_path / "tinydigits" / "world.yaml"
    p.parent.mkdir()
    p.write_text(yaml.safe_dump(cfg))
    return load_world(p)


@pytest.mark.slow
def test_pretraining_lowers_loss_and_resumes_exactly(tiny_world, tmp_path, monkeypatch):
    _, _, full = pretrain_world(tiny_world, tmp_path / "full", n_eval=50, progress=False, max_steps_per_epoch=4)
    assert full["loss"].iloc[-1] < full["loss"].iloc[0]
    import rftlib.worlds.pretrain as pre

    real = pre.render_corpus  # called once at the start of each epoch: stop at the start of the third
    calls = {"n": 0}

    def cut(*a, **kw):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return real(*a, **kw)

    monkeypatch.setattr(pre, "render_corpus", cut)
    with pytest.raises(KeyboardInterrupt):
        pretrain_world(tiny_world, tmp_path / "cut", n_eval=50, progress=False, max_steps_per_epoch=4)
    monkeypatch.setattr(pre, "render_corpus", real)
    clip, _, resumed = pretrain_world(tiny_world, tmp_path / "cut", n_eval=50, progress=False, max_steps_per_epoch=4)
    clip_full = torch.load(tmp_path / "full" / "state.pt", weights_only=True)["model"]
    for k, v in clip.state_dict().items():
        assert torch.equal(v, clip_full[k]), k
    assert resumed["loss"].tolist() == pytest.approx(full["loss"].tolist())


@pytest.mark.parametrize("name", ["fashion", "digits"])
def test_shipped_checkpoint_checksum_and_accuracy(name):
    w = load_world(name)
    m = w.manifest()
    w.verify_checkpoint()
    assert m["size_bytes"] < 20 * 2**20
    clf = w.zeroshot_classifier()
    n = m["zeroshot_n_eval"]
    rows = {r["split"]: r["accuracy"] for r in evaluate(clf, w.eval_splits(n, splits=["id", "inverted"]), progress=False)}
    assert rows["id"] == pytest.approx(m["zeroshot_accuracy"]["id"], abs=1e-9)
    assert rows["inverted"] == pytest.approx(m["zeroshot_accuracy"]["inverted"], abs=1e-9)
    assert rows["id"] > 0.2, "a zero-shot model should be far above chance (0.1)"


def test_tampered_checkpoint_is_refused(tmp_path):
    import shutil

    w = load_world("digits")
    if not w.checkpoint.is_file():
        pytest.skip("digits checkpoint not shipped")
    d = tmp_path / "digits"
    shutil.copytree(w.folder, d)
    data = bytearray((d / "zeroshot.safetensors").read_bytes())
    data[-10] ^= 0xFF
    (d / "zeroshot.safetensors").write_bytes(bytes(data))
    w2 = load_world(d / "world.yaml")
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        w2.zeroshot_classifier()
