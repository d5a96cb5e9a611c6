#!/usr/bin/env python
"""Measure, on one GPU, what the paper-scale cost table of book/paper-scale.md extrapolates.

Run on one H200-class GPU (finishes within ``--time-budget`` seconds, default 420 s, plus start-up)::

    python scripts/gpu_measure.py                   # writes $OUT/gpu_measure.json (or book/results/gpu/)

CPU smoke test (seconds; a tiny model, tiny sizes)::

    python scripts/gpu_measure.py --device cpu --tiny --out /tmp/gpu_measure.json

The model is open_clip's ``ViT-B-32-quickgelu`` image tower, **randomly initialized** (no weights
needed), at 224 px, with a random 1000-class head, wrapped as rftlib's
:class:`~rftlib.models.factory.ImageClassifier` (inputs in [0, 1], normalized inside). Inputs are random
tensors already on the device: data loading is not measured. Phases, in order of priority:

1. ``finetune_throughput``: fine-tuning steps (bf16 autocast forward, float32 loss, backward, gradient
   clipping, AdamW) at ``--batch-size`` (halved on out-of-memory), timed after ``--warmup`` steps
   between ``torch.cuda.synchronize()`` calls: images/s.
2. ``sharpness_whole``: one worst-case ℓ∞ adaptive sharpness estimate of the whole model
   (``--n-examples`` examples, batches of ``--m``, ``--n-iters`` ascent steps), float32 with TF32
   off (:func:`rftlib.models.device.strict_fp32`), through :func:`rftlib.core.sharpness.sharpness`.
3. ``sharpness_blocks``: the same estimate for each residual block alone, prefix-cached
   (``naive=False``) and naive (``naive=True``) alternately; both must give the same value.
4. ``finetune_throughput_compiled``: phase 1 after ``torch.compile`` (CUDA only; compile time recorded).
5. ``sharpness_bf16_check``: the whole-model estimate again under bf16 autocast, to show how much of
   a small-ρ perturbation survives bfloat16 rounding (CUDA only; a diagnostic, not a method).

A global time guard stops cleanly between steps (and inside an estimate, through its callback) and
the JSON is rewritten atomically after every phase, so a stopped or killed run leaves the phases it
finished; ``complete`` says whether all ran.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(REPO))

from rftlib.models.device import (autocast, device_summary, maybe_compile, memory_aware_batch_size,  # noqa: E402
                           pick_device, strict_fp32, synchronize)
from rftlib.files.io import atomic_write_json  # noqa: E402
from rftlib.core.layers import layer_groups  # noqa: E402
from rftlib.models.factory import ImageClassifier, count_parameters, create_clip  # noqa: E402
from rftlib.core.sharpness import sharpness  # noqa: E402

# ImageNet-1k sizes used for the derived estimates
IMAGENET_TRAIN = 1_281_167
# ImageNet val + V2 + R + Sketch + A + ObjectNet (113 ImageNet classes)
EVAL_IMAGES = {"imagenet": 50_000, "imagenet-v2": 10_000, "imagenet-r": 30_000, "imagenet-sketch": 50_889,
               "imagenet-a": 7_500, "objectnet": 18_574}


class TimeUp(Exception):
    """The global time budget is spent."""


class Guard:
    def __init__(self, budget_s: float) -> None:
        self.t0 = time.perf_counter()
        self.deadline = self.t0 + budget_s

    def left(self) -> float:
        return self.deadline - time.perf_counter()

    def check(self, where: str = "") -> None:
        if self.left() <= 0:
            raise TimeUp(f"time budget spent {where}".strip())

    def callback(self, where: str) -> Callable[[dict], None]:
        return lambda info: self.check(f"in {where} (batch {info['batch']}, iteration {info['iter']})")


def default_out() -> Path:
    out = os.environ.get("OUT")
    return Path(out) / "gpu_measure.json" if out else REPO / "book" / "results" / "gpu" / "gpu_measure.json"


def build_model(name: str, n_classes: int, device: torch.device, seed: int = 0) -> ImageClassifier:
    """A randomly initialized image classifier: open_clip's image tower plus a random head."""
    import open_clip

    clip, _ = create_clip(name, seed=seed, device="cpu")
    g = torch.Generator().manual_seed(seed)
    d = clip.visual.output_dim
    head = F.normalize(torch.randn(n_classes, d, generator=g), dim=1) * 100.0  # CLIP's logit scale
    model = ImageClassifier(clip.visual, head, open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD)
    return model.to(device)


def image_size(model: ImageClassifier) -> int:
    s = model.visual.image_size
    return int(s[0] if isinstance(s, (tuple, list)) else s)


def throughput(model: torch.nn.Module, device: torch.device, batch_size: int, n_classes: int, warmup: int,
               steps: int, guard: Guard, where: str) -> dict[str, Any]:
    """Fine-tuning steps per second at ``batch_size`` (bf16 autocast forward on CUDA, fp32 loss)."""
    size = image_size(model)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5, weight_decay=0.1)
    g = torch.Generator(device=device).manual_seed(0)

    def step(bs: int, x: torch.Tensor, y: torch.Tensor) -> None:
        with autocast(device):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()

    def trial(bs: int) -> None:
        x = torch.rand(bs, 3, size, size, device=device, generator=g)
        y = torch.randint(0, n_classes, (bs,), device=device, generator=g)
        step(bs, x, y)

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t = time.perf_counter()
    bs = memory_aware_batch_size(model, (3, size, size), device, start=batch_size, min_bs=1, trial=trial)
    synchronize(device)
    first_step_s = time.perf_counter() - t  # includes compilation for a compiled model
    x = torch.rand(bs, 3, size, size, device=device, generator=g)
    y = torch.randint(0, n_classes, (bs,), device=device, generator=g)
    for i in range(warmup):
        guard.check(f"in {where} warmup")
        step(bs, x, y)
    synchronize(device)
    done, t0 = 0, time.perf_counter()
    stopped = None
    for i in range(steps):
        if guard.left() <= 0:
            stopped = f"time budget spent after {done} timed steps"
            break
        step(bs, x, y)
        done += 1
    synchronize(device)
    dt = time.perf_counter() - t0
    out: dict[str, Any] = {
        "batch_size": bs, "batch_size_requested": batch_size, "warmup_steps": warmup, "timed_steps": done,
        "seconds": dt, "step_s": dt / done if done else None, "images_per_s": bs * done / dt if done else None,
        "first_step_s": first_step_s, "precision": "bf16 autocast forward, fp32 loss" if device.type == "cuda" else "fp32",
        "optimizer": "AdamW + grad-norm clip 1.0",
    }
    if device.type == "cuda":
        out["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    if stopped:
        out["stopped"] = stopped
    model.eval()
    return out


def estimate(model: torch.nn.Module, data: tuple[torch.Tensor, torch.Tensor], group: str, naive: bool,
             args: argparse.Namespace, guard: Guard, where: str) -> dict[str, Any]:
    device = data[0].device
    synchronize(device)
    t0 = time.perf_counter()
    r = sharpness(model, data, group, rho=args.rho, kind="worst", norm="linf", adaptive=True, n_iters=args.n_iters,
                  m=args.m, naive=naive, progress=False, callback=guard.callback(where))
    synchronize(device)
    return {"seconds": time.perf_counter() - t0, "value": r.value, "n_params": r.settings.get("n_params"),
            "prefix_stage": r.settings.get("prefix_stage"), "n_batches": len(r.per_batch)}


def derived(res: dict[str, Any]) -> dict[str, Any]:
    """GPU-hours of the paper-scale jobs, from the measured phases (what the book's table needs)."""
    ph = res["phases"]
    out: dict[str, Any] = {}
    tp = (ph.get("finetune_throughput") or {}).get("images_per_s")
    tpc = (ph.get("finetune_throughput_compiled") or {}).get("images_per_s")
    best = max([v for v in (tp, tpc) if v] or [0]) or None
    if best:
        out["finetune_imagenet_10_epochs_gpu_hours"] = 10 * IMAGENET_TRAIN / best / 3600
        # inference ≈ 1/3 of a training step's FLOPs (no backward): an optimistic 3x the training rate
        out["wiseft_sweep_11_alpha_gpu_hours_assuming_3x_training_rate"] = 11 * sum(EVAL_IMAGES.values()) / (3 * best) / 3600
    whole = (ph.get("sharpness_whole") or {}).get("seconds")
    blocks = (ph.get("sharpness_blocks") or {}).get("blocks") or []
    full = [b for b in blocks if "cached_s" in b and "naive_s" in b]
    if full:
        cached, naive = sum(b["cached_s"] for b in full), sum(b["naive_s"] for b in full)
        out["blocks_measured"] = len(full)
        out["blocks_cached_total_s"] = cached
        out["blocks_naive_total_s"] = naive
        out["naive_over_cached"] = naive / cached if cached else None
        out["max_abs_value_diff_cached_vs_naive"] = max(abs(b["cached_value"] - b["naive_value"]) for b in full)
    if whole:
        n_blocks = res["settings"].get("n_blocks") or 12
        per_block = (out["blocks_cached_total_s"] / len(full)) if full else whole
        point_s = whole + n_blocks * per_block  # whole model + every block (prefix-cached)
        out["sharpness_point_s_whole_plus_blocks"] = point_s
        out["sharpness_6_alpha_gpu_hours_per_run_per_rho"] = 6 * point_s / 3600
    return out


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="auto", help="auto, cuda or cpu")
    p.add_argument("--tiny", action="store_true", help="smoke test: rft-tiny, tiny sizes (seconds on a CPU)")
    p.add_argument("--out", default=None, help="JSON file (default: $OUT/gpu_measure.json, else book/results/gpu/)")
    p.add_argument("--time-budget", type=float, default=420.0, help="seconds for all phases (global guard)")
    p.add_argument("--model", default="ViT-B-32-quickgelu")
    p.add_argument("--n-classes", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--n-examples", type=int, default=1024)
    p.add_argument("--m", type=int, default=128)
    p.add_argument("--n-iters", type=int, default=20)
    p.add_argument("--rho", type=float, default=5e-4, help="ℓ∞ adaptive radius (smallest of the reference grid)")
    p.add_argument("--max-blocks", type=int, default=None, help="measure at most this many blocks")
    p.add_argument("--no-compile", dest="compile", action="store_false", help="skip the torch.compile phase")
    p.add_argument("--phases", default=None,
                   help="comma-separated subset of the phases to run (default: all), e.g. finetune_throughput")
    p.add_argument("--threads", type=int, default=None, help="CPU threads (torch.set_num_threads)")
    args = p.parse_args(argv)
    if args.tiny:
        args.model, args.n_classes, args.batch_size, args.warmup, args.steps = "rft-tiny", 10, 16, 1, 2
        args.n_examples, args.m, args.n_iters = 32, 16, 2
        args.time_budget = min(args.time_budget, 120.0)
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    guard = Guard(args.time_budget)
    device = pick_device(args.device)
    out_path = Path(args.out) if args.out else default_out()
    torch.manual_seed(0)
    model = build_model(args.model, args.n_classes, device)
    theta0 = {k: v.detach().clone() for k, v in model.state_dict().items()}
    blocks = [name for name in layer_groups(model, "block") if name.startswith("block")]
    res: dict[str, Any] = {
        "script": "scripts/gpu_measure.py",
        "complete": False,
        "device": device_summary(device),
        "settings": {"model": args.model, "random_init": True, "image_size": image_size(model),
                     "n_classes": args.n_classes, "n_params": count_parameters(model), "n_blocks": len(blocks),
                     "batch_size": args.batch_size, "warmup": args.warmup, "steps": args.steps,
                     "n_examples": args.n_examples, "m": args.m, "n_iters": args.n_iters, "rho": args.rho,
                     "kind": "worst", "norm": "linf", "adaptive": True, "time_budget_s": args.time_budget,
                     "tiny": args.tiny},
        "phases": {},
        "errors": {},
        "notes": ["inputs are random tensors on the device: data loading and JPEG decoding are not measured",
                  "sharpness runs in float32 with TF32 off (rftlib.models.device.strict_fp32)"],
    }

    def save() -> None:
        res["elapsed_s"] = time.perf_counter() - guard.t0
        res["derived"] = derived(res)
        atomic_write_json(out_path, res)

    size = image_size(model)
    g = torch.Generator(device=device).manual_seed(1)
    data = (torch.rand(args.n_examples, 3, size, size, device=device, generator=g),
            torch.randint(0, args.n_classes, (args.n_examples,), device=device, generator=g))

    def phase_throughput() -> dict[str, Any]:
        r = throughput(model, device, args.batch_size, args.n_classes, args.warmup, args.steps, guard, "throughput")
        model.load_state_dict(theta0)
        return r

    def phase_whole() -> dict[str, Any]:
        with strict_fp32():
            return estimate(model, data, "all", False, args, guard, "sharpness_whole")

    def phase_blocks() -> dict[str, Any]:
        rows: list[dict[str, Any]] = []
        res["phases"]["sharpness_blocks"] = {"blocks": rows}
        todo = blocks[: args.max_blocks] if args.max_blocks else blocks
        with strict_fp32():
            for b in todo:
                row: dict[str, Any] = {"block": b}
                rows.append(row)
                c = estimate(model, data, b, False, args, guard, f"{b} cached")
                row.update(cached_s=c["seconds"], cached_value=c["value"], prefix_stage=c["prefix_stage"],
                           n_params=c["n_params"])
                save()
                nv = estimate(model, data, b, True, args, guard, f"{b} naive")
                row.update(naive_s=nv["seconds"], naive_value=nv["value"], naive_over_cached=nv["seconds"] / c["seconds"])
                save()
        return res["phases"]["sharpness_blocks"]

    def phase_compiled() -> dict[str, Any]:
        if device.type != "cuda" or not args.compile:
            return {"skipped": "torch.compile is used on CUDA only" if args.compile else "--no-compile"}
        if guard.left() < 150:  # compilation itself cannot be interrupted by the guard
            return {"skipped": f"only {guard.left():.0f} s left; compilation may take minutes"}
        m2 = maybe_compile(copy.deepcopy(model), enabled=True)
        r = throughput(m2, device, args.batch_size, args.n_classes, args.warmup, args.steps, guard, "compiled")
        r["note"] = "first_step_s includes compilation"
        del m2
        return r

    def phase_bf16_check() -> dict[str, Any]:
        if device.type != "cuda":
            return {"skipped": "bf16 autocast is used on CUDA only"}
        t0 = time.perf_counter()
        with autocast(device):
            r = sharpness(model, data, "all", rho=args.rho, kind="worst", norm="linf", adaptive=True,
                          n_iters=args.n_iters, m=args.m, progress=False, callback=guard.callback("bf16 check"))
        synchronize(device)
        fp32 = (res["phases"].get("sharpness_whole") or {}).get("value")
        return {"seconds": time.perf_counter() - t0, "value_bf16": r.value, "value_fp32": fp32,
                "note": "bf16 rounds weights to ~0.4 %; at rho=5e-4 the perturbation is below that step"}

    phases: list[tuple[str, Callable[[], dict[str, Any]]]] = [
        ("finetune_throughput", phase_throughput),
        ("sharpness_whole", phase_whole),
        ("sharpness_blocks", phase_blocks),
        ("finetune_throughput_compiled", phase_compiled),
        ("sharpness_bf16_check", phase_bf16_check),
    ]
    if args.phases:
        wanted = [w.strip() for w in args.phases.split(",") if w.strip()]
        unknown = sorted(set(wanted) - {n for n, _ in phases})
        if unknown:
            raise SystemExit(f"--phases: unknown {unknown}; phases: {[n for n, _ in phases]}")
        phases = [(n, f) for n, f in phases if n in wanted]
        res["settings"]["phases"] = wanted
    stopped = None
    for name, fn in phases:
        if guard.left() <= 0:
            stopped = f"time budget spent before phase {name}"
            break
        try:
            res["phases"][name] = fn()
        except TimeUp as e:
            stopped = f"{e} (phase {name})"
            model.load_state_dict(theta0)
            break
        except Exception as e:  # noqa: BLE001 - record and go on with the next phase
            res["errors"][name] = f"{type(e).__name__}: {e}"
            model.load_state_dict(theta0)
        save()
        print(f"[gpu_measure] {name}: done at {time.perf_counter() - guard.t0:.1f} s", flush=True)
    res["stopped"] = stopped
    res["complete"] = stopped is None and not res["errors"]
    save()
    print(f"[gpu_measure] wrote {out_path} (complete={res['complete']})", flush=True)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.exit(main())
