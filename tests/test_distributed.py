"""Data-parallel fine-tuning and sharded job lists on 2 CPU processes (gloo), OpenAI-format checkpoints,
and the torchrun fine-tuning script end to end.

- DDP fine-tuning on 2 processes gives θ_ft of one process with the same global batch and seed;
- a WiSE-FT sweep's (run, α) jobs sharded over 2 ranks give the single-process results file byte for byte;
- a tiny quick-GELU CLIP saved in OpenAI's original state-dict format loads and classifies identically;
- ``rft finetune --nproc 2`` (which launches ``torch.distributed.run`` itself) writes runs that the notebook
  step reuses.
"""

from __future__ import annotations

import json
import os
import pickle
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torch.multiprocessing as mp
import yaml

from rftlib.models import distributed as D
from rftlib.errors import CheckpointError, DataNotFoundError, ParameterError
from rftlib.files.io import atomic_write_csv
from toydata import toy_task

ROOT = Path(__file__).resolve().parents[1]
CLASSES = ["a", "b", "c"]
TEMPLATES = ["a photo of a {}."]


# ---------------------------------------------------------------------------------------------
# helpers shared by the parent and the spawned ranks (module level, so spawn can import them)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rank_env(rank: int, world: int, port: int) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
                      MASTER_PORT=str(port))
    torch.set_num_threads(1)


def tiny_classifier():
    from rftlib.models.factory import build_classifier, create_clip

    clip, tok = create_clip("rft-tiny", seed=0)
    return build_classifier(clip, tok, CLASSES, TEMPLATES, (0.4,) * 3, (0.3,) * 3)




RECIPE = dict(name="ddp", lr=2e-3, epochs=2, batch_size=32, warmup_steps=2, augment="strong", seed=3)


def ddp_finetune_worker(rank: int, world: int, port: int, out: str) -> None:
    from rftlib.models.finetune import Recipe, finetune

    rank_env(rank, world, port)
    info = D.init_from_env()
    try:
        assert (info.rank, info.world, info.backend, info.device.type) == (rank, world, "gloo", "cpu")
        assert D.is_main() == (rank == 0)
        x, y = toy_task()
        theta_ft, _ = finetune(tiny_classifier(), x, y, Recipe(**RECIPE), progress=False)
        if info.is_main:
            torch.save(theta_ft, out)
    finally:
        D.cleanup()


SWEEP_ITEMS = [(run, alpha) for run in ("r0", "r1") for alpha in (0.0, 0.5, 1.0)]


class SweepJob:
    """Evaluate θ(α) = θ_zs + α(θ_ft − θ_zs) of a tiny model on two toy splits: one (run, α) job."""

    def __init__(self) -> None:
        self.model = tiny_classifier()
        self.zs = {k: v.clone() for k, v in self.model.state_dict().items()}
        x, y = toy_task(48, seed=1)
        self.splits = {"id": (x, y), "flipped": (x.flip(-1), y)}

    def theta_ft(self, run: str) -> dict[str, torch.Tensor]:
        g = torch.Generator().manual_seed(int(run[1:]) + 10)
        return {k: v + 0.05 * torch.randn(v.shape, generator=g) if v.is_floating_point() else v
                for k, v in self.zs.items()}

    def __call__(self, item):
        from rftlib.core.evaluation import evaluate

        run, alpha = item
        ft = self.theta_ft(run)
        self.model.load_state_dict({k: self.zs[k] + alpha * (ft[k] - self.zs[k]) if self.zs[k].is_floating_point()
                                    else self.zs[k] for k in self.zs})
        rows = evaluate(self.model, self.splits, progress=False)
        # a text column with a comma (quoted in the CSV) and a boolean, to check the text copy
        return [{"world": "toy", "run": run, "alpha": alpha, **r, "tag": f"{run},a={alpha}", "endpoint": alpha in (0, 1)}
                for r in rows]


def sharded_sweep_worker(rank: int, world: int, port: int, out: str) -> None:
    rank_env(rank, world, port)
    D.init_from_env()
    try:
        path = D.run_sharded(SWEEP_ITEMS, SweepJob(), out, progress=False)
        assert path == Path(out) and path.is_file()  # every rank returns after the merge
    finally:
        D.cleanup()


def single_process_file(path: Path, items, fn) -> bytes:
    """What one process writes: every job in order, rows concatenated, one atomic_write_csv."""
    rows = []
    for item in items:
        r = fn(item)
        rows += [] if r is None else [r] if isinstance(r, dict) else list(r)
    atomic_write_csv(path, pd.DataFrame(rows))
    return path.read_bytes()


# ---------------------------------------------------------------------------------------------
# (a) DDP fine-tuning equals one process


def test_ddp_finetune_equals_single_process(tmp_path):
    from rftlib.models.finetune import Recipe, finetune

    out = tmp_path / "ddp.pt"
    mp.spawn(ddp_finetune_worker, args=(2, free_port(), str(out)), nprocs=2, join=True)
    ddp = torch.load(out, weights_only=True)

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        x, y = toy_task()
        single, _ = finetune(tiny_classifier(), x, y, Recipe(**RECIPE), progress=False)
    finally:
        torch.set_num_threads(threads)
    zs = tiny_classifier().state_dict()
    assert set(ddp) == set(single)
    moved = max(float((single[k] - zs[k]).abs().max()) for k in single)
    assert moved > 1e-3  # the runs did train
    assert_same_theta_ft(ddp, single)


def assert_same_theta_ft(ddp: dict, single: dict, make_model=tiny_classifier, x=None) -> None:
    """θ_ft of DDP and of one process agree to rounding (gradient averaging over ranks may round
    differently in the last bits), except the attention *key* biases: softmax is invariant to them,
    so their gradient is 0 up to rounding noise, which AdamW normalizes into lr-sized steps of
    random sign. They cannot change the function, which is checked on the logits instead."""
    for k in single:
        a, b = ddp[k], single[k]
        if k.endswith("attn.in_proj_bias"):
            d = a.numel() // 3
            a, b = torch.cat([a[:d], a[2 * d:]]), torch.cat([b[:d], b[2 * d:]])
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=k)
    models = []
    for theta in (ddp, single):
        m = make_model()
        m.load_state_dict(theta)
        models.append(m.eval())
    x = toy_task(32, seed=7)[0] if x is None else x
    with torch.no_grad():
        torch.testing.assert_close(models[0](x), models[1](x), rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------------------------------------
# (b) sharding a sweep over ranks reproduces the single-process file byte for byte


def test_sharded_sweep_is_byte_identical(tmp_path):
    out = tmp_path / "sweep" / "wiseft.csv"
    mp.spawn(sharded_sweep_worker, args=(2, free_port(), str(out)), nprocs=2, join=True)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        ref = single_process_file(tmp_path / "ref.csv", SWEEP_ITEMS, SweepJob())
    finally:
        torch.set_num_threads(threads)
    assert out.read_bytes() == ref
    assert sorted(p.name for p in out.parent.iterdir()) == ["wiseft.csv"]  # shards removed after the merge
    df = pd.read_csv(out)
    assert list(zip(df["run"], df["alpha"]))[::2] == SWEEP_ITEMS and len(df) == 12


def _rows(item):
    i, kind = item
    if kind == "none":
        return None
    if kind == "two":
        return [{"job": i, "x": i / 3, "name": f"j{i}"}, {"job": i, "x": -i / 7, "name": "with, comma"}]
    return {"job": i, "x": i / 3, "name": f"j{i}"}


def test_independent_shards_merge_to_the_single_process_file(tmp_path):
    items = [(i, k) for i, k in enumerate(["one", "two", "none", "one", "two", "one", "one"])]
    ref = single_process_file(tmp_path / "ref.csv", items, _rows)
    out = tmp_path / "merged.csv"
    parts = [D.run_sharded(items, _rows, out, rank=r, world=3, progress=False) for r in range(3)]
    assert [p.name for p in parts] == ["merged.rank0.csv", "merged.rank1.csv", "merged.rank2.csv"]
    assert not out.exists()  # independent jobs do not merge
    D.merge_shards(out, 3)
    assert out.read_bytes() == ref
    assert not any(p.exists() for p in parts)
    # one process: shard then merge in one call
    out1 = tmp_path / "one.csv"
    assert D.run_sharded(items, _rows, out1, progress=False) == out1
    assert out1.read_bytes() == ref


def test_more_ranks_than_jobs_and_no_rows(tmp_path):
    items = [(0, "one"), (1, "two")]
    ref = single_process_file(tmp_path / "ref.csv", items, _rows)
    out = tmp_path / "few.csv"
    for r in range(4):
        D.run_sharded(items, _rows, out, rank=r, world=4, progress=False)
    D.merge_shards(out, 4, keep_shards=True)
    assert out.read_bytes() == ref
    assert D.shard_path(out, 3).read_text() == "_item\n"  # kept, and empty
    empty = tmp_path / "empty.csv"
    for r in range(2):
        D.run_sharded([(0, "none")], _rows, empty, rank=r, world=2, progress=False)
    D.merge_shards(empty, 2)
    atomic_write_csv(tmp_path / "empty_ref.csv", pd.DataFrame())
    assert empty.read_bytes() == (tmp_path / "empty_ref.csv").read_bytes()


def test_merge_errors(tmp_path):
    out = tmp_path / "m.csv"
    D.run_sharded([(0, "one"), (1, "one")], _rows, out, rank=0, world=2, progress=False)
    with pytest.raises(DataNotFoundError, match=r"m.rank1.csv"):
        D.merge_shards(out, 2)
    D.run_sharded([(0, "one"), (1, "one")], lambda it: {"other": 1}, out, rank=1, world=2, progress=False)
    with pytest.raises(ParameterError, match="different columns"):
        D.merge_shards(out, 2)
    with pytest.raises(ParameterError, match="must end in .csv"):
        D.run_sharded([1], lambda it: {"a": it}, tmp_path / "x.json")
    with pytest.raises(ParameterError, match="returned int"):
        D.run_sharded([1], lambda it: 3, tmp_path / "x.csv")
    with pytest.raises(ParameterError, match="reserves"):
        D.run_sharded([1], lambda it: {"_item": 1}, tmp_path / "x.csv")
    with pytest.raises(ParameterError, match="rank=2, world=2"):
        D.shard([1, 2], 2, 2)


def test_shard_partitions_round_robin():
    items = list(range(11))
    parts = [D.shard(items, r, 4) for r in range(4)]
    assert sorted(sum(parts, [])) == items
    assert [len(p) for p in parts] == [3, 3, 3, 2]
    assert parts[1] == [1, 5, 9]


def test_init_from_env_single_process_and_bad_env(monkeypatch):
    for v in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(v, raising=False)
    info = D.init_from_env()
    assert (info.rank, info.world, info.backend, info.device.type) == (0, 1, None, "cpu")
    assert not D.is_initialized() and D.world_size() == 1
    D.barrier()  # a no-op without a group
    monkeypatch.setenv("RANK", "0")
    with pytest.raises(ParameterError, match="torchrun"):
        D.init_from_env()
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "x")
    with pytest.raises(ParameterError, match="LOCAL_RANK='x' must be an integer"):
        D.init_from_env()
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("RANK", "2")
    with pytest.raises(ParameterError, match="RANK=2 must be < WORLD_SIZE=2"):
        D.init_from_env()
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(free_port()))
    with pytest.raises(ParameterError, match="nccl"):  # refused before any group is created
        D.init_from_env(backend="nccl", device="cpu")
    with pytest.raises(ParameterError, match="backend='mpi'"):
        D.init_from_env(backend="mpi")
    monkeypatch.delenv("MASTER_ADDR")
    with pytest.raises(ParameterError, match="MASTER_ADDR"):
        D.init_from_env()
    assert not D.is_initialized()


# ---------------------------------------------------------------------------------------------
# (d) OpenAI's original checkpoint format: loads and classifies identically


@pytest.fixture
def tiny_quickgelu(tmp_path):
    """A tiny quick-GELU config registered with open_clip for this test only."""
    import open_clip
    from open_clip import factory

    cfg = json.loads((ROOT / "rftlib" / "models" / "configs" / "rft-tiny.json").read_text())
    cfg["quick_gelu"] = True
    name = "rft-tiny-quickgelu-test"
    (tmp_path / f"{name}.json").write_text(json.dumps(cfg))
    open_clip.add_model_config(tmp_path / f"{name}.json")
    yield name
    factory._MODEL_CONFIGS.pop(name, None)


def test_openai_format_checkpoint_classifies_identically(tmp_path, tiny_quickgelu):
    from open_clip.transformer import QuickGELU

    from rftlib.models.factory import build_classifier, create_clip, is_openai_state_dict

    clip, tok = create_clip(tiny_quickgelu, seed=0)
    assert any(isinstance(m, QuickGELU) for m in clip.visual.modules())
    sd = dict(clip.state_dict())
    sd.update(input_resolution=torch.tensor(28), context_length=torch.tensor(20), vocab_size=torch.tensor(49408))
    assert is_openai_state_dict(sd)
    path = tmp_path / "ViT-tiny-openai.pt"
    torch.save(sd, path)

    loaded, tok2 = create_clip(tiny_quickgelu, pretrained=path, seed=123)  # the seed must not matter
    assert any(isinstance(m, QuickGELU) for m in loaded.visual.modules())
    names = ["cat", "dog", "ship", "truck"]
    a = build_classifier(clip, tok, names, TEMPLATES, (0.4,) * 3, (0.3,) * 3)
    b = build_classifier(loaded, tok2, names, TEMPLATES, (0.4,) * 3, (0.3,) * 3)
    x = torch.rand(16, 3, 28, 28, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        la, lb = a(x), b(x)
    assert torch.equal(la, lb) and torch.equal(la.argmax(1), lb.argmax(1))
    assert a.state_dict().keys() == b.state_dict().keys()
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())
    # the same file with a GELU architecture is refused rather than silently wrong
    with pytest.raises(CheckpointError, match="QuickGELU"):
        create_clip("rft-tiny", pretrained=path)


# ---------------------------------------------------------------------------------------------
# `rft finetune`, end to end (tiny world on 2 ranks; fake CIFAR-10 for the paper-scale path)


def _script_env():
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1", "RFT_PROGRESS": "0"}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


@pytest.fixture
def tiny_world(tmp_path):
    """A copy of the digits world on rft-tiny, with its own checkpoint and manifest."""
    from rftlib.models.factory import create_clip
    from rftlib.worlds.world import load_world, save_world_checkpoint

    folder = tmp_path / "tinydigits"
    folder.mkdir()
    cfg = yaml.safe_load((ROOT / "worlds" / "digits" / "world.yaml").read_text())
    cfg.update(name="tinydigits", model="rft-tiny")
    (folder / "world.yaml").write_text(yaml.safe_dump(cfg))
    clip, _ = create_clip("rft-tiny", seed=0)
    save_world_checkpoint(load_world(folder / "world.yaml"), clip.state_dict())
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump({"defaults": {"epochs": 1, "batch_size": 32, "warmup_steps": 1, "n_train": 96, "seed": 0},
                                    "runs": [{"name": "t1", "lr": 1e-3, "augment": "standard"},
                                             {"name": "t2", "lr": 3e-4}]}))
    return folder / "world.yaml", grid


@pytest.mark.slow
def test_rft_finetune_on_two_ranks_matches_and_is_reused(tmp_path, tiny_world):
    from rftlib.models.checkpoints import load_state_dict
    from rftlib.models.finetune import finetune
    from rftlib.steps.common import load_grid
    from rftlib.steps.finetune import finetune_grid
    from rftlib.worlds.world import load_world

    world_yaml, grid = tiny_world
    runs = tmp_path / "runs"
    cmd = [sys.executable, "-m", "rftlib.cli", "finetune", "--nproc", "2", "--world", str(world_yaml),
           "--grid", str(grid), "--runs", "t1", "--runs-root", str(runs), "--threads", "1"]
    p = subprocess.run(cmd, cwd=ROOT, env=_script_env(), capture_output=True, text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    assert "tinydigits/t1: done" in p.stdout and "torch.distributed.run" in p.stderr
    folder = runs / "tinydigits" / "t1"
    m = json.loads((folder / "manifest.json").read_text())
    assert m["distributed"]["world_size"] == 2 and m["distributed"]["backend"] == "gloo"
    assert m["distributed"]["command"] == "rft finetune"
    assert not m["distributed"]["bf16_autocast"] and not (folder / "state.pt").exists()
    assert not (runs / "tinydigits" / "t2").exists()

    # θ_ft equals one process with the same global batch and seed
    world = load_world(world_yaml)
    recipe = load_grid(grid, ["t1"])[0]
    x, y = world.id_training_data()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        torch.manual_seed(recipe.seed)
        single, _ = finetune(world.zeroshot_classifier(verify=False), x, y, recipe, progress=False)
    finally:
        torch.set_num_threads(threads)
    assert_same_theta_ft(load_state_dict(folder / "theta_ft.safetensors"), single,
                         lambda: world.zeroshot_classifier(verify=False), x[:32])

    # the notebook step (rftlib.steps.finetune.finetune_grid) finds the run done and reuses it
    hist = finetune_grid(world, [recipe], runs_root=runs, progress=False)
    assert hist["cached"].all()


@pytest.mark.slow
def test_rft_pipeline_ddp_fine_tunes_on_two_ranks_and_the_step_reuses_the_runs(tmp_path, tiny_world, monkeypatch):
    import functools

    from rftlib import cli
    from rftlib.book import pipeline

    world_yaml, grid = tiny_world
    runs, results = tmp_path / "runs", tmp_path / "results"
    pf = tmp_path / "ddp.yaml"
    pf.write_text(yaml.safe_dump({"steps": [{"name": "tiny-finetune", "notebook": "notebooks/finetune.ipynb",
                                             "parameters": {"world": str(world_yaml), "grid": str(grid),
                                                            "runs": ["t1"], "runs_root": str(runs)}}]}))
    for k, v in _script_env().items():
        monkeypatch.setenv(k, v)
    monkeypatch.setattr(pipeline, "run_pipeline", functools.partial(pipeline.run_pipeline, results_dir=results))
    assert cli.main(["pipeline", str(pf), "--ddp", "2", "--threads", "1", "--jobs", "1"]) == 0
    m = json.loads((runs / "tinydigits" / "t1" / "manifest.json").read_text())
    assert m["distributed"]["world_size"] == 2 and m["distributed"]["command"] == "rft finetune"
    history = pd.read_csv(results / "tiny-finetune" / "history.csv")
    assert len(history) and history["cached"].all()  # the notebook step found the run done


def _fake_cifar(root: Path, n_per_batch: int = 20) -> None:
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {"data": rng.integers(0, 256, (n_per_batch, 3072), dtype=np.uint8),
                 "labels": rng.integers(0, 10, n_per_batch).tolist()}
        with open(d / name, "wb") as f:
            pickle.dump(batch, f)


@pytest.mark.slow
def test_rft_finetune_paper_setting_on_fake_cifar(tmp_path):
    from rftlib.models.checkpoints import save_state_dict
    from rftlib.models.factory import create_clip

    _fake_cifar(tmp_path / "data")
    clip, _ = create_clip("rft-tiny", seed=0)
    weights = tmp_path / "tiny.safetensors"
    save_state_dict(weights, clip.state_dict())
    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump({"defaults": {"epochs": 1, "batch_size": 16, "warmup_steps": 1, "n_train": 32},
                                    "runs": [{"name": "c1", "lr": 1e-4}]}))
    setting = tmp_path / "tiny-cifar" / "world.yaml"
    setting.parent.mkdir()
    setting.write_text(yaml.safe_dump({
        "kind": "paper", "name": "tiny-cifar", "model": "rft-tiny", "pretrained": "${RFT_CLIP_WEIGHTS}",
        "data_root": str(tmp_path / "data"), "id": {"dataset": "cifar10"}, "ood": ["cifar10.1"],
        "templates": "cifar10", "device": "cpu", "num_workers": 0, "decode_threads": 2}))
    cmd = [sys.executable, "-m", "rftlib.cli", "finetune", "--world", str(setting), "--grid", str(grid),
           "--runs-root", str(tmp_path / "runs"), "--threads", "1"]
    p = subprocess.run(cmd, cwd=ROOT, env={**_script_env(), "RFT_CLIP_WEIGHTS": str(weights)}, capture_output=True,
                       text=True, timeout=600)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-3000:]
    m = json.loads((tmp_path / "runs" / "tiny-cifar" / "c1" / "manifest.json").read_text())
    assert m["parameters"]["model"] == "rft-tiny" and m["parameters"]["pretrained"] == "tiny.safetensors"
    assert m["parameters"]["image_size"] == 28 and m["distributed"]["world_size"] == 1
    # OpenAI-format weights on a GELU architecture are refused before any training
    sd = dict(clip.state_dict())
    sd.update(input_resolution=torch.tensor(28), context_length=torch.tensor(20), vocab_size=torch.tensor(49408))
    torch.save(sd, tmp_path / "openai.pt")
    p = subprocess.run(cmd + ["--force"], cwd=ROOT, env={**_script_env(), "RFT_CLIP_WEIGHTS": str(tmp_path / "openai.pt")},
                       capture_output=True, text=True, timeout=600)
    assert p.returncode != 0 and "QuickGELU" in p.stderr
    assert not (tmp_path / "runs" / "tiny-cifar" / "c1" / "state.pt").exists()
