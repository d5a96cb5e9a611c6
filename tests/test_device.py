"""Device helpers on the CPU: device choice, autocast off, the autocast hooks' mechanics, compile as a
no-op, batch-size halving on (injected) out-of-memory errors; the GPU measurement's CPU smoke test."""

import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import rftlib.models.device as D
from rftlib.errors import ParameterError

ROOT = Path(__file__).resolve().parents[1]


def test_pick_device_on_a_cpu_machine():
    assert D.pick_device("cpu") == torch.device("cpu")
    assert D.pick_device("auto") == torch.device("cpu")  # conftest hides CUDA; no MPS on this machine
    assert D.pick_device(torch.device("cpu")).type == "cpu"
    with pytest.raises(ParameterError, match=r"device='cuda' was requested but torch.cuda.is_available\(\) is False"):
        D.pick_device("cuda")
    with pytest.raises(ParameterError, match="cuda:1"):
        D.pick_device("cuda:1")
    with pytest.raises(ParameterError, match="is not one of"):
        D.pick_device("gpu")
    with pytest.raises(ParameterError, match="is not one of"):
        D.pick_device("cpu:0")


def test_autocast_is_a_no_op_on_cpu():
    net = nn.Linear(4, 3)
    with D.autocast("cpu"):
        assert not torch.is_autocast_enabled("cpu")
        out = net(torch.randn(2, 4))
    assert out.dtype == torch.float32
    with D.autocast("cpu", enabled=False):
        assert not torch.is_autocast_enabled("cpu")
    undo = D.autocast_forward(net)
    assert not net._forward_pre_hooks and not net._forward_hooks  # nothing registered on the CPU
    undo()


def test_autocast_forward_hooks_mechanics(monkeypatch):
    """With autocast allowed on the CPU (test only), the inner layers run in bf16, the module returns
    fp32, backward works, a deep copy keeps working hooks, and undo removes them."""
    monkeypatch.setattr(D, "_AUTOCAST_TYPES", ("cuda", "cpu"))
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))
    seen = []
    net[0].register_forward_hook(lambda m, i, o: seen.append(o.dtype))
    undo = D.autocast_forward(net, "cpu")
    x = torch.randn(5, 8)
    out = net(x)
    assert seen == [torch.bfloat16] and out.dtype == torch.float32
    assert not torch.is_autocast_enabled("cpu")  # the context was closed after the forward
    nn.functional.cross_entropy(out, torch.tensor([0, 1, 2, 0, 1])).backward()
    assert net[0].weight.grad is not None and net[0].weight.grad.dtype == torch.float32
    twin = copy.deepcopy(net)
    assert twin(x).dtype == torch.float32 and not torch.is_autocast_enabled("cpu")
    assert torch.allclose(twin(x), net(x))

    class Boom(nn.Module):
        def forward(self, x):
            raise RuntimeError("boom")

    bad = Boom()
    D.autocast_forward(bad, "cpu")
    with pytest.raises(RuntimeError, match="boom"):
        bad(x)
    assert not torch.is_autocast_enabled("cpu")  # exited even though forward raised
    undo()
    seen.clear()
    assert net(x).dtype == torch.float32 and seen == [torch.float32]
    assert set(net.state_dict()) == {"0.weight", "0.bias", "2.weight", "2.bias"}


def test_strict_fp32_restores_flags():
    before = (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32)
    with D.strict_fp32():
        assert not torch.backends.cuda.matmul.allow_tf32 and not torch.backends.cudnn.allow_tf32
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == before


def test_maybe_compile_is_a_no_op_on_cpu():
    net = nn.Linear(2, 2)
    assert D.maybe_compile(net) is net
    assert getattr(net, "_compiled_call_impl", None) is None
    assert D.maybe_compile(net, enabled=False) is net


def test_memory_aware_batch_size_halves_on_injected_oom():
    tried = []

    def fake(bs):  # anything above 40 examples "does not fit"
        tried.append(bs)
        if bs > 40:
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory at bs={bs}")

    net = nn.Linear(3, 2)
    assert D.memory_aware_batch_size(net, (3,), "cpu", start=256, min_bs=8, trial=fake) == 32
    assert tried == [256, 128, 64, 32]

    tried.clear()
    with pytest.raises(torch.cuda.OutOfMemoryError, match=r"no batch size in \[256, 128, 64\] fits"):
        D.memory_aware_batch_size(net, (3,), "cpu", start=256, min_bs=64, trial=fake)
    assert tried == [256, 128, 64]

    def mps_style(bs):  # MPS reports OOM as a RuntimeError
        if bs > 100:
            raise RuntimeError("MPS backend out of memory")

    assert D.memory_aware_batch_size(net, (3,), "cpu", start=256, trial=mps_style) == 64

    def other(bs):
        raise ValueError("not memory")

    with pytest.raises(ValueError, match="not memory"):  # other errors are not swallowed
        D.memory_aware_batch_size(net, (3,), "cpu", start=8, trial=other)
    with pytest.raises(ParameterError, match="min_bs"):
        D.memory_aware_batch_size(net, (3,), "cpu", start=8, min_bs=16, trial=fake)


def test_memory_aware_batch_size_default_trial_on_tiny_model(tiny_classifier):
    assert D.memory_aware_batch_size(tiny_classifier, (3, 28, 28), start=4) == 4
    assert all(p.grad is None for p in tiny_classifier.parameters())  # the trial leaves no gradients


def test_device_summary_cpu():
    s = D.device_summary("cpu")
    assert s["type"] == "cpu" and s["torch"] == torch.__version__ and s["cpu_count"] >= 1


@pytest.mark.slow
def test_gpu_measure_cpu_smoke(tmp_path):
    out = tmp_path / "gpu_measure.json"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "CUDA_VISIBLE_DEVICES": "", "OMP_NUM_THREADS": "1"}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    env.pop("OUT", None)
    rft = [sys.executable, "-m", "rftlib.cli", "gpu-measure"]
    subprocess.run([*rft, "--device", "cpu", "--tiny",
                    "--threads", "1", "--out", str(out)], check=True, cwd=ROOT, env=env, timeout=300,
                   capture_output=True)
    res = json.loads(out.read_text())
    assert res["complete"] and not res["errors"] and res["command"] == "rft gpu-measure"
    assert res["device"]["type"] == "cpu" and res["settings"]["tiny"]
    assert res["phases"]["finetune_throughput"]["images_per_s"] > 0
    assert res["phases"]["sharpness_whole"]["value"] >= 0
    blocks = res["phases"]["sharpness_blocks"]["blocks"]
    assert [b["block"] for b in blocks] == ["block0", "block1"]
    for b in blocks:  # prefix caching computes the same estimate as the full forward
        assert b["prefix_stage"] == b["block"]
        assert b["cached_value"] == pytest.approx(b["naive_value"], rel=1e-5, abs=1e-7)
    assert "skipped" in res["phases"]["finetune_throughput_compiled"]
    assert res["derived"]["naive_over_cached"] > 0

    # a tiny time budget stops cleanly and still writes the file
    out2 = tmp_path / "partial.json"
    subprocess.run([*rft, "--device", "cpu", "--tiny",
                    "--threads", "1", "--time-budget", "0.01", "--out", str(out2)], check=True, cwd=ROOT, env=env,
                   timeout=300, capture_output=True)
    part = json.loads(out2.read_text())
    assert not part["complete"] and part["stopped"].startswith("time budget spent")
