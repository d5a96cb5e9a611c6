"""Paper settings as worlds (rftlib.worlds.paper) on a tiny quick-GELU CLIP in OpenAI's format and fake
ImageNet / CIFAR-10 files in their real layouts: loading, checks, splits, class-subset scoring, θ_zs,
the study's steps end to end, and the pipeline validation of the paper parameter files."""

from __future__ import annotations

import json
import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml
from PIL import Image
from torch import nn

from rftlib.errors import CheckpointError, DataNotFoundError, ParameterError
from rftlib.worlds.paper import EvalSplit, LazyImages, PaperWorld
from rftlib.worlds.templates import class_indices, wnids
from rftlib.worlds.world import load_world

ROOT = Path(__file__).resolve().parents[1]
MODEL = "rft-tiny-quickgelu-paperscale"
R_CLASSES = class_indices("imagenet-r")[:3]          # ImageNet indices 1, 2, 4: in ImageNet-R
ID_CLASSES = [0, *R_CLASSES]                          # 0 (tench) is not in ImageNet-R


# ---------------------------------------------------------------------------------------------
# fixtures: a tiny quick-GELU CLIP in OpenAI's format, fake data, a setting file


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """One intra-op thread: the tiny text tower's many small matrix products (a 1000-class head) run
    many times slower with two threads on a busy 2-core machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """A tiny quick-GELU config registered with open_clip for this module only."""
    import open_clip
    from open_clip import factory

    cfg = json.loads((ROOT / "rftlib" / "models" / "configs" / "rft-tiny.json").read_text())
    cfg["quick_gelu"] = True
    path = tmp_path_factory.mktemp("cfg") / f"{MODEL}.json"
    path.write_text(json.dumps(cfg))
    open_clip.add_model_config(path)
    yield MODEL
    factory._MODEL_CONFIGS.pop(MODEL, None)


@pytest.fixture(scope="module")
def weights(tiny_model, tmp_path_factory) -> Path:
    """The tiny CLIP saved as OpenAI's original state dict (with its three format entries)."""
    from rftlib.models.factory import create_clip

    clip, _ = create_clip(tiny_model, seed=0)
    sd = dict(clip.state_dict())
    sd.update(input_resolution=torch.tensor(28), context_length=torch.tensor(20), vocab_size=torch.tensor(49408))
    path = tmp_path_factory.mktemp("weights") / "tiny-openai.pt"
    torch.save(sd, path)
    return path


def _images(folder: Path, n: int, color: tuple[int, int, int], ext: str = ".JPEG") -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        c = tuple(min(255, v + 20 * i) for v in color)
        Image.new("RGB", (40, 32), c).save(folder / f"img_{i}{ext}", format="PNG" if ext == ".png" else "JPEG")


@pytest.fixture(scope="module")
def imagenet_root(tmp_path_factory) -> Path:
    """ImageNet val/train (4 classes), ImageNet-V2 and ImageNet-R (3 of ImageNet-R's classes)."""
    root = tmp_path_factory.mktemp("data")
    W = wnids("imagenet")
    for k, i in enumerate(ID_CLASSES):
        color = (40 + 60 * k, 200 - 50 * k, 30 + 40 * k)
        _images(root / "imagenet" / "val" / W[i], 2, color)
        _images(root / "imagenet" / "train" / W[i], 3, color)
        _images(root / "imagenetv2-matched-frequency-format-val" / str(i), 1, color, ".jpeg")
        if i in R_CLASSES:
            _images(root / "imagenet-r" / W[i], 2, color, ".jpg")
    return root


@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("cifar")
    rng = np.random.default_rng(0)
    d = root / "cifar-10-batches-py"
    d.mkdir()
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"data": rng.integers(0, 256, (4, 3072), dtype=np.uint8), "labels": rng.integers(0, 10, 4).tolist()}
        with open(d / name, "wb") as f:
            pickle.dump(batch, f, protocol=2)
    (root / "CIFAR-10.1").mkdir()
    np.save(root / "CIFAR-10.1" / "cifar10.1_v6_data.npy", rng.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8))
    np.save(root / "CIFAR-10.1" / "cifar10.1_v6_labels.npy", rng.integers(0, 10, 5))
    (root / "CIFAR-10.2").mkdir()
    np.savez(root / "CIFAR-10.2" / "cifar102_test.npz", images=rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8),
             labels=rng.integers(0, 10, 3))
    return root


def setting(folder: Path, name: str = "tiny-imagenet", **overrides) -> Path:
    cfg = {"kind": "paper", "name": name, "model": MODEL, "pretrained": "${RFT_CLIP_WEIGHTS}",
           "data_root": "${RFT_DATA_ROOT}", "id": {"dataset": "imagenet"}, "ood": ["imagenet-v2", "imagenet-r"],
           "templates": "imagenet-simple", "device": "cpu", "num_workers": 0, "decode_threads": 2}
    cfg.update(overrides)
    path = folder / name / "world.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return path


@pytest.fixture(scope="module")
def world(tmp_path_factory, tiny_model, weights, imagenet_root) -> PaperWorld:
    """One setting on the fake ImageNet for the module, so that θ_zs (a 1000-class head) is built once;
    its environment variables stay set while the module runs (tests may change them with monkeypatch)."""
    mp = pytest.MonkeyPatch()
    mp.setenv("RFT_CLIP_WEIGHTS", str(weights))
    mp.setenv("RFT_DATA_ROOT", str(imagenet_root))
    w = load_world(setting(tmp_path_factory.mktemp("settings")))
    assert isinstance(w, PaperWorld)
    yield w
    mp.undo()


class FixedLogits(nn.Module):
    """The same logits for every input."""

    def __init__(self, logits: torch.Tensor) -> None:
        super().__init__()
        self.logits = nn.Parameter(logits.clone())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(len(x), -1)


# ---------------------------------------------------------------------------------------------
# loading and checks


def test_repository_settings_load_without_data_or_weights(monkeypatch):
    from rftlib.worlds.world import available_worlds

    monkeypatch.delenv("RFT_CLIP_WEIGHTS", raising=False)
    monkeypatch.delenv("RFT_DATA_ROOT", raising=False)
    assert {"paper-imagenet", "paper-cifar10"} <= set(available_worlds())
    w = load_world("paper-imagenet")
    assert w.kind == "paper" and w.model == "ViT-B-32-quickgelu" and w.image_size == 224
    assert w.all_splits == ["id", "imagenet-v2", "imagenet-r", "imagenet-sketch", "imagenet-a", "objectnet"]
    assert len(w.classnames) == 1000 and len(w.templates) == 80 and w.unseen_styles == []
    assert w.input_mean == pytest.approx([0.48145466, 0.4578275, 0.40821073])
    c = load_world("paper-cifar10")
    assert c.all_splits == ["id", "cifar10.1", "cifar10.2"] and len(c.classnames) == 10 and len(c.templates) == 18
    with pytest.raises(CheckpointError, match=r"RFT_CLIP_WEIGHTS is not set.*export RFT_CLIP_WEIGHTS="):
        w.verify_checkpoint()
    with pytest.raises(DataNotFoundError, match=r"RFT_DATA_ROOT is not set.*imagenet-r/"):
        w.eval_splits(10)
    with pytest.raises(CheckpointError, match="RFT_CLIP_WEIGHTS"):
        c.zeroshot_classifier(verify=False)


def test_rft_verify_skips_paper_settings(tmp_path, monkeypatch):
    import rftlib.worlds.world as worlds

    setting(tmp_path / "worlds", "paper-x")
    monkeypatch.setattr(worlds, "WORLDS_DIR", tmp_path / "worlds")
    monkeypatch.delenv("RFT_CLIP_WEIGHTS", raising=False)
    assert worlds.available_worlds() == ["paper-x"]
    assert worlds.verify_checkpoints() == {}  # no shipped checkpoint to verify
    with pytest.raises(CheckpointError, match="RFT_CLIP_WEIGHTS"):
        worlds.verify_checkpoints(["paper-x"])  # named: checked


@pytest.mark.parametrize("change, msg", [
    ({"colour": 1}, "unknown key"),
    ({"ood": ["cifar10.1"]}, "not labelled in imagenet's label space"),
    ({"ood": ["imagenet-c"]}, "not a distribution shift"),
    ({"id": {"dataset": "imagenet-r"}}, "must be 'imagenet' or 'cifar10'"),
    ({"id": {"dataset": "imagenet", "eval_split": "test"}}, "not a split of imagenet"),
    ({"id": {"dataset": "cifar10", "train_per_class": 5}, "ood": ["cifar10.1"]}, "image-folder"),
    ({"templates": "imagenet-long"}, "has no prompt templates"),
    ({"classnames": "cifar10"}, "has 10 names"),
    ({"num_workers": -1}, "num_workers"),
    ({"preprocess": {"mean": [0.5, 0.5]}}, "three numbers"),
])
def test_bad_setting_files_are_refused_naming_the_key(tmp_path, change, msg):
    with pytest.raises(ParameterError, match=msg):
        load_world(setting(tmp_path, **change))


def test_missing_weights_and_data_name_what_to_set(tmp_path, tiny_model, monkeypatch):
    w = load_world(setting(tmp_path))
    monkeypatch.setenv("RFT_CLIP_WEIGHTS", str(tmp_path / "nowhere.safetensors"))
    monkeypatch.setenv("RFT_DATA_ROOT", str(tmp_path / "empty"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match=r"nowhere\.safetensors does not exist.*set RFT_CLIP_WEIGHTS"):
        w.verify_checkpoint()
    with pytest.raises(DataNotFoundError, match=r"split 'id': ImageNet not found.*set RFT_DATA_ROOT"):
        w.eval_splits(4)
    with pytest.raises(DataNotFoundError, match="RFT_DATA_ROOT"):
        w.id_training_data()
    problems = w.problems()
    assert len(problems) == 2 and "RFT_CLIP_WEIGHTS" in problems[0]
    assert all(s in problems[1] for s in ("id (", "imagenet-v2 (", "imagenet-r (", "train (", "RFT_DATA_ROOT"))


# ---------------------------------------------------------------------------------------------
# splits and class-subset scoring


def test_eval_splits_full_and_seeded_subsets(world):
    full = world.eval_splits(None)
    assert list(full) == world.all_splits == ["id", "imagenet-v2", "imagenet-r"]
    assert [len(s) for s in full.values()] == [8, 4, 6]
    assert [len(s) for s in world.eval_splits(0).values()] == [8, 4, 6]
    assert [len(s) for s in world.eval_splits(10 ** 6).values()] == [8, 4, 6]   # at least the size: all
    a, b = world.eval_splits(3), world.eval_splits(3)
    assert all(len(s) == 3 and s.indices == b[k].indices for k, s in a.items())
    assert world.eval_splits(3, seed=5)["id"].indices != a["id"].indices or len(full["id"]) <= 3
    x, y = a["id"][0]
    assert x.shape == (3, 28, 28) and 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    assert set(full["id"].targets) == set(ID_CLASSES) and set(full["imagenet-r"].targets) == set(R_CLASSES)
    assert full["id"].eval_class_subset is None and len(full["imagenet-r"].eval_class_subset) == 200
    assert a["imagenet-r"].num_workers == 0
    with pytest.raises(ParameterError, match="n_eval"):
        world.eval_splits(-1)
    with pytest.raises(ParameterError, match="not in paper setting"):
        world.eval_splits(3, splits=["id", "imagenet-a"])


def test_evaluate_scores_a_200_class_split_on_its_classes(world):
    from rftlib.core.evaluation import evaluate, evaluate_split

    split = world.eval_splits(None, splits=["imagenet-r"])["imagenet-r"]
    logits = torch.full((1000,), -4.0)
    logits[0] = 9.0                    # the favourite class (tench) is not in ImageNet-R
    logits[R_CLASSES[1]] = 2.0         # the best class within the subset
    logits[R_CLASSES[0]] = 1.0
    model = FixedLogits(logits.unsqueeze(0))
    row = evaluate(model, {"imagenet-r": split}, batch_size=4, progress=False)[0]
    sub = logits[class_indices("imagenet-r")]
    labels = torch.tensor([class_indices("imagenet-r").index(t) for t in split.targets])
    expected_loss = float(F.cross_entropy(sub.expand(len(labels), -1), labels))
    assert row["n"] == 6 and row["accuracy"] == pytest.approx(2 / 6)
    assert row["loss"] == pytest.approx(expected_loss, rel=1e-6)
    # the raw data set only exposes class_subset: scored 1000-way, the favourite wins every time
    assert evaluate_split(model, split.dataset, batch_size=4)["accuracy"] == 0.0


def test_prefix_cached_paths_score_the_subset_too(world):
    from rftlib.core.evaluation import evaluate_split
    from rftlib.core.interpolation import Interpolator
    from rftlib.core.prefix import layer_alpha_sweep

    split = world.eval_splits(None, splits=["imagenet-r"])["imagenet-r"]
    model = world.zeroshot_classifier()
    zs = {k: v.clone() for k, v in model.state_dict().items()}
    g = torch.Generator().manual_seed(0)
    ft = {k: v + 0.05 * torch.randn(v.shape, generator=g) if v.is_floating_point() else v for k, v in zs.items()}
    interp = Interpolator(model, zs, ft)
    keys = [k for k in zs if k.startswith("visual.transformer.resblocks.1.")]
    rows = layer_alpha_sweep(model, interp, split, keys, [0.0, 1.0], progress=False)
    for r in rows:
        interp.set_alpha(r["alpha"], keys=keys, hold="ft")
        ref = evaluate_split(model, split)
        assert r["n"] == ref["n"] == 6 and r["accuracy"] == ref["accuracy"]
        assert r["loss"] == pytest.approx(ref["loss"], rel=1e-5)


# ---------------------------------------------------------------------------------------------
# θ_zs, checkpoint, manifest


def test_zeroshot_classifier_equals_open_clip_preprocess_then_model(world, weights):
    import open_clip

    from rftlib.models.checkpoints import sha256
    from rftlib.models.factory import ImageClassifier, create_clip

    assert world.verify_checkpoint() == sha256(weights) == world.manifest()["sha256"]
    m = world.manifest()
    assert m["history"] == [] and {"system", "machine"} <= set(m["platform"]) and m["pretrained"] == weights.name
    clf = world.zeroshot_classifier()
    assert clf.num_classes == 1000 and clf.normalize_input
    # open_clip's full preprocess (with OpenAI's Normalize) and the bare model give the same logits
    clip, _ = create_clip(MODEL, pretrained=weights)
    ref = ImageClassifier(clip.visual, clf.head.weight.detach()).eval()  # same head, no normalization inside
    full = open_clip.image_transform(28, is_train=False, mean=open_clip.OPENAI_DATASET_MEAN,
                                     std=open_clip.OPENAI_DATASET_STD)
    img = Image.new("RGB", (40, 32), (200, 30, 90))
    with torch.no_grad():
        a, b = clf(world.transform()(img).unsqueeze(0)), ref(full(img).unsqueeze(0))
    torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    # every call gives an independent copy of θ_zs
    with torch.no_grad():
        clf.head.weight.zero_()
    assert world.zeroshot_classifier().head.weight.abs().sum() > 0
    # an expected sha256 that does not match is refused
    world.expected_sha256 = "0" * 64
    try:
        with pytest.raises(CheckpointError, match="expects 0000"):
            world.verify_checkpoint()
    finally:
        world.expected_sha256 = None


def test_openai_weights_on_a_gelu_architecture_are_refused(tmp_path, weights, imagenet_root, monkeypatch):
    monkeypatch.setenv("RFT_CLIP_WEIGHTS", str(weights))
    w = load_world(setting(tmp_path, model="rft-tiny"))
    with pytest.raises(CheckpointError, match="QuickGELU"):
        w.zeroshot_classifier()


# ---------------------------------------------------------------------------------------------
# the study's steps end to end


def test_study_steps_end_to_end_on_fake_imagenet(world, tmp_path):
    from rftlib.steps import common as study, finetune, interpolate, stragglers, zeroshot
    from rftlib.models.finetune import Recipe

    x, y = world.id_training_data()
    assert isinstance(x, LazyImages) and len(x) == len(y) == 12 and sorted(set(y.tolist())) == ID_CLASSES
    batch = x[torch.tensor([0, 5])]
    assert batch.shape == (2, 3, 28, 28) and x[:4][torch.tensor([1])].shape == (1, 3, 28, 28)

    zs = zeroshot.zeroshot_rows(world, 4)
    assert list(zs["split"]) == world.all_splits and (zs["n"] == 4).all() and (zs["run"] == "zeroshot").all()

    recipe = Recipe(name="t", lr=1e-4, epochs=1, batch_size=4, warmup_steps=1, augment="standard", n_train=8)
    runs = tmp_path / "runs"
    hist = finetune.finetune_grid(world, [recipe], runs_root=runs, progress=False)
    assert len(hist) == 1 and not hist["cached"].any()
    assert (runs / world.name / "t" / "theta_ft.safetensors").is_file()
    m = json.loads((runs / world.name / "t" / "manifest.json").read_text())
    assert m["inputs"]["theta_zs"] == world.verify_checkpoint()
    assert finetune.finetune_grid(world, [recipe], runs_root=runs, progress=False)["cached"].all()

    curves = interpolate.sweep_runs(world, ["t"], [0.0, 0.5, 1.0], 4, runs_root=runs, progress=False)
    assert len(curves) == 9 and set(curves["split"]) == set(world.all_splits)
    at0 = curves[curves["alpha"] == 0.0].set_index("split")
    assert np.allclose(at0.loc[list(zs["split"]), "loss"], zs["loss"], rtol=1e-5)

    xs, ys = study.sharpness_data(world, 4)
    assert isinstance(xs, torch.Tensor) and xs.shape == (4, 3, 28, 28) and ys.shape == (4,)
    paths = stragglers.straggler_paths(world, "t", 3, 4, runs, controls=False, progress=False)
    assert set(paths["split"]) == set(world.all_splits) and (paths["n"] == 4).all()


def test_cifar_setting_end_to_end(tmp_path, tiny_model, weights, cifar_root, monkeypatch):
    from rftlib.steps import zeroshot

    monkeypatch.setenv("RFT_CLIP_WEIGHTS", str(weights))
    monkeypatch.setenv("RFT_DATA_ROOT", str(cifar_root))
    w = load_world(setting(tmp_path, "tiny-cifar", id={"dataset": "cifar10"}, ood=["cifar10.1", "cifar10.2"],
                           templates="cifar10"))
    splits = w.eval_splits(None)
    assert {k: len(v) for k, v in splits.items()} == {"id": 4, "cifar10.1": 5, "cifar10.2": 3}
    assert splits["cifar10.1"][0][0].shape == (3, 28, 28)
    x, y = w.id_training_data()
    assert len(x) == 20 and x[torch.tensor([3])].shape == (1, 3, 28, 28)
    zs = zeroshot.zeroshot_rows(w, 4)
    assert list(zs["n"]) == [4, 4, 3] and w.zeroshot_classifier().num_classes == 10
    assert w.problems() == []


# ---------------------------------------------------------------------------------------------
# the paper parameter files: only existing notebook parameters; validation names what is missing


def _validate(name: str):
    from rftlib.book.params import load_param_file
    from rftlib.book.pipeline import validate_pipeline

    return validate_pipeline(load_param_file(ROOT / "notebooks" / "params" / f"{name}.yaml"))


def test_paper_pipelines_validate_except_for_missing_weights_and_data(monkeypatch):
    monkeypatch.delenv("RFT_CLIP_WEIGHTS", raising=False)
    monkeypatch.delenv("RFT_DATA_ROOT", raising=False)
    for name in ("paper-imagenet", "paper-cifar10"):
        with pytest.raises(ParameterError) as e:
            _validate(name)
        text = str(e.value)
        assert "RFT_CLIP_WEIGHTS is not set" in text and "RFT_DATA_ROOT is not set" in text
        rest = text  # nothing else is wrong: every step reports only the two missing things
        for problem in load_world(name).problems():
            rest = rest.replace(problem.rstrip("."), "")
        rest = re.sub(r"step [\w-]+: bad parameters for notebooks/\w+\.ipynb: ", "", rest)
        assert rest.replace(";", "").strip() == "", rest


def test_paper_cifar10_pipeline_validates_with_weights_and_data(cifar_root, weights, monkeypatch):
    from rftlib.steps import zeroshot

    monkeypatch.setenv("RFT_CLIP_WEIGHTS", str(weights))  # validation only checks that the file is there
    monkeypatch.setenv("RFT_DATA_ROOT", str(cifar_root))
    params = _validate("paper-cifar10")
    assert list(params) == ["cifar10-zeroshot", "cifar10-finetune", "cifar10-interpolate", "cifar10-stragglers",
                            "cifar10-sharpness", "cifar10-sparsity"]
    assert all(p["world"] == "paper-cifar10" for p in params.values())
    with pytest.raises(ParameterError, match="cannot pretrain paper setting"):
        zeroshot.Params(world="paper-cifar10", recreate=True, n_eval=10)


def test_missing_data_sets_are_listed_with_the_variable(imagenet_root, weights, monkeypatch):
    monkeypatch.setenv("RFT_CLIP_WEIGHTS", str(weights))
    monkeypatch.setenv("RFT_DATA_ROOT", str(imagenet_root))  # no sketch/, imagenet-a/, objectnet-1.0/
    problems = load_world("paper-imagenet").problems()
    assert len(problems) == 1
    assert all(f"{s} (" in problems[0] for s in ("imagenet-sketch", "imagenet-a", "objectnet"))
    assert "id (" not in problems[0] and "RFT_DATA_ROOT" in problems[0]


# ---------------------------------------------------------------------------------------------
# `rft finetune` on a paper setting: its runs are the notebook step's


@pytest.mark.slow
def test_rft_finetune_on_a_paper_setting_is_reused_by_the_notebook_step(tmp_path, tiny_model, weights,
                                                                         cifar_root, monkeypatch):
    from rftlib.steps import common as study

    path = setting(tmp_path, "tiny-cifar", id={"dataset": "cifar10"}, ood=["cifar10.1"], templates="cifar10",
                   model="rft-tiny", pretrained=str(tmp_path / "tiny.safetensors"))
    from rftlib.models.checkpoints import save_state_dict
    from rftlib.models.factory import create_clip

    clip, _ = create_clip("rft-tiny", seed=0)  # a GELU model with open_clip-format weights (a registered config)
    save_state_dict(tmp_path / "tiny.safetensors", clip.state_dict())
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump({"defaults": {"epochs": 1, "batch_size": 4, "warmup_steps": 1, "n_train": 8},
                                    "runs": [{"name": "c1", "lr": 1e-4}]}))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1",
           "RFT_PROGRESS": "0", "RFT_DATA_ROOT": str(cifar_root)}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    cmd = [sys.executable, "-m", "rftlib.cli", "finetune", "--world", str(path), "--grid", str(grid),
           "--runs-root", str(tmp_path / "runs"), "--threads", "1"]
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "tiny-cifar/c1: done" in p.stdout
    m = json.loads((tmp_path / "runs" / "tiny-cifar" / "c1" / "manifest.json").read_text())
    assert m["parameters"]["model"] == "rft-tiny" and m["parameters"]["image_size"] == 28
    monkeypatch.setenv("RFT_DATA_ROOT", str(cifar_root))
    w = load_world(path)
    from rftlib.steps.finetune import finetune_grid

    hist = finetune_grid(w, study.load_grid(grid), runs_root=tmp_path / "runs", progress=False)
    assert hist["cached"].all()


def test_eval_split_and_lazy_images_basics():
    ds = [(torch.full((1, 2, 2), float(i)), i) for i in range(6)]
    s = EvalSplit(ds, [5, 1], num_workers=0, name="x")
    assert [s[i][1] for i in range(len(s))] == [5, 1] and s.targets == [5, 1] and s.eval_class_subset is None
    x = LazyImages(ds, order=[2, 0, 4], threads=2)
    assert x[torch.tensor([], dtype=torch.long)].numel() == 0
    assert x[np.array([2, 0])][:, 0, 0, 0].tolist() == [4.0, 2.0]
