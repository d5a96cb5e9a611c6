"""Measure, on one GPU, what the paper-scale cost table of ``book/paper-scale.md`` extrapolates.

``rft gpu-measure`` calls :func:`measure`. Run on one H200-class GPU (finishes within
``time_budget`` seconds, default 420 s, plus start-up)::

    rft gpu-measure                   # writes $OUT/gpu_measure.json (or book/results/gpu/)

CPU smoke test (seconds; a tiny model, tiny sizes)::

    rft gpu-measure --device cpu --tiny --out /tmp/gpu_measure.json

The model is open_clip's ``ViT-B-32-quickgelu`` image tower, **randomly initialized** (no weights
needed), at 224 px, with a random 1000-class head, wrapped as rftlib's
:class:`~rftlib.models.factory.ImageClassifier` (inputs in [0, 1], normalized inside). Inputs are random
tensors already on the device: data loading is not measured. Phases, in order of priority:

1. ``finetune_throughput``: fine-tuning steps (bf16 autocast forward, float32 loss, backward, gradient
   clipping, AdamW) at ``batch_size`` (halved on out-of-memory), timed after ``warmup`` steps
   between ``torch.cuda.synchronize()`` calls: images/s.
2. ``sharpness_whole``: one worst-case ℓ∞ adaptive sharpness estimate of the whole model
   (``n_examples`` examples, batches of ``m``, ``n_iters`` ascent steps), float32 with TF32
   off (:func:`rftlib.models.device.strict_fp32`), through :func:`rftlib.core.sharpness.sharpness`.
3. ``sharpness_blocks``: the same estimate for each residual block alone, prefix-cached
   (``naive=False``) and naive (``naive=True``) alternately; both must give the same value.
4. ``finetune_throughput_compiled``: phase 1 after ``torch.compile`` (CUDA only; compile time recorded).
5. ``sharpness_bf16_check``: the whole-model estimate again under bf16 autocast, to show how much of
   a small-ρ perturbation survives bfloat16 rounding (CUDA only; a diagnostic, not a method).

A global time guard stops cleanly between steps (and inside an estimate, through its callback) and
the JSON is rewritten atomically after every phase, so a stopped or killed run leaves the phases it
finished; ``complete`` says whether all ran.

Example:
    >>> o = MeasureOptions(tiny=True).resolved()
    >>> o.model, o.batch_size, o.time_budget
    ('rft-tiny', 16, 120.0)
    >>> MeasureOptions(phases="sharpness_whole").phase_names()
    ['sharpness_whole']
"""

from __future__ import annotations

import copy
import dataclasses
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F

from rftlib.core.layers import layer_groups
from rftlib.core.sharpness import sharpness
from rftlib.errors import ParameterError
from rftlib.files.io import atomic_write_json
from rftlib.files.layout import RESULTS_ROOT
from rftlib.files.manifest import repo_root
from rftlib.models.device import (autocast, device_summary, maybe_compile, memory_aware_batch_size, pick_device,
                                  strict_fp32, synchronize)
from rftlib.models.factory import ImageClassifier, count_parameters, create_clip

__all__ = ["MeasureOptions", "PHASES", "TimeUp", "Guard", "default_out", "derived", "measure"]

#: ImageNet-1k training images, for the derived estimates
IMAGENET_TRAIN = 1_281_167
#: ImageNet val + V2 + R + Sketch + A + ObjectNet (113 ImageNet classes)
EVAL_IMAGES = {"imagenet": 50_000, "imagenet-v2": 10_000, "imagenet-r": 30_000, "imagenet-sketch": 50_889,
               "imagenet-a": 7_500, "objectnet": 18_574}
#: the phases, in the order they run
PHASES = ("finetune_throughput", "sharpness_whole", "sharpness_blocks", "finetune_throughput_compiled",
          "sharpness_bf16_check")
#: what ``tiny`` sets: rft-tiny and tiny sizes (seconds on a CPU)
TINY = dict(model="rft-tiny", n_classes=10, batch_size=16, warmup=1, steps=2, n_examples=32, m=16, n_iters=2)


@dataclass(frozen=True)
class MeasureOptions:
    """The options of ``rft gpu-measure`` (the same names, ``-`` written ``_``)."""

    device: str = "auto"
    tiny: bool = False
    out: str | None = None
    time_budget: float = 420.0
    model: str = "ViT-B-32-quickgelu"
    n_classes: int = 1000
    batch_size: int = 256
    warmup: int = 5
    steps: int = 20
    n_examples: int = 1024
    m: int = 128
    n_iters: int = 20
    rho: float = 5e-4
    max_blocks: int | None = None
    compile: bool = True
    phases: str | None = None
    threads: int | None = None

    def resolved(self) -> "MeasureOptions":
        """These options checked, with ``tiny``'s sizes applied (its time budget at most 120 s).

        Raises:
            ParameterError: a size below 1, a negative budget or radius, or an unknown phase.
        """
        self.phase_names()
        for name in ("n_classes", "batch_size", "steps", "n_examples", "m", "n_iters", "max_blocks", "threads"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ParameterError(f"--{name.replace('_', '-')}={v} must be at least 1")
        for name in ("warmup", "time_budget", "rho"):
            if getattr(self, name) < 0:
                raise ParameterError(f"--{name.replace('_', '-')}={getattr(self, name)} must be >= 0")
        if not self.tiny:
            return self
        return dataclasses.replace(self, **TINY, time_budget=min(self.time_budget, 120.0))

    def phase_names(self) -> list[str]:
        """The phases to run, in order: all, or the comma-separated subset ``phases``."""
        if not self.phases:
            return list(PHASES)
        wanted = [w.strip() for w in self.phases.split(",") if w.strip()]
        unknown = [w for w in wanted if w not in PHASES]
        if unknown or not wanted:
            raise ParameterError(f"--phases={self.phases!r}: unknown phase(s) {unknown}; allowed: a comma-separated "
                                 f"subset of {', '.join(PHASES)}")
        return [p for p in PHASES if p in wanted]


class TimeUp(Exception):
    """The global time budget is spent."""


class Guard:
    """A global time budget: ``check`` raises :class:`TimeUp` once ``budget_s`` seconds have passed.

    Example:
        >>> Guard(60).left() > 59
        True
    """

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
    """``$OUT/gpu_measure.json`` when ``$OUT`` is set, else ``book/results/gpu/gpu_measure.json``."""
    out = os.environ.get("OUT")
    return Path(out) / "gpu_measure.json" if out else repo_root() / RESULTS_ROOT / "gpu" / "gpu_measure.json"


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
    """The model's input size in pixels."""
    s = model.visual.image_size
    return int(s[0] if isinstance(s, (tuple, list)) else s)


def _train_step(model: torch.nn.Module, opt: torch.optim.Optimizer, params: list, device: torch.device,
                x: torch.Tensor, y: torch.Tensor) -> None:
    with autocast(device):
        logits = model(x)
    loss = F.cross_entropy(logits.float(), y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()


def throughput(model: torch.nn.Module, device: torch.device, batch_size: int, n_classes: int, warmup: int,
               steps: int, guard: Guard, where: str) -> dict[str, Any]:
    """Fine-tuning steps per second at ``batch_size`` (bf16 autocast forward on CUDA, fp32 loss)."""
    size = image_size(model)
    model.train()
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5, weight_decay=0.1)
    g = torch.Generator(device=device).manual_seed(0)

    def batch(bs: int) -> tuple[torch.Tensor, torch.Tensor]:
        return (torch.rand(bs, 3, size, size, device=device, generator=g),
                torch.randint(0, n_classes, (bs,), device=device, generator=g))

    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    t = time.perf_counter()
    bs = memory_aware_batch_size(model, (3, size, size), device, start=batch_size, min_bs=1,
                                 trial=lambda b: _train_step(model, opt, params, device, *batch(b)))
    synchronize(device)
    first_step_s = time.perf_counter() - t  # includes compilation for a compiled model
    x, y = batch(bs)
    for _ in range(warmup):
        guard.check(f"in {where} warmup")
        _train_step(model, opt, params, device, x, y)
    synchronize(device)
    done, t0, stopped = 0, time.perf_counter(), None
    for _ in range(steps):
        if guard.left() <= 0:
            stopped = f"time budget spent after {done} timed steps"
            break
        _train_step(model, opt, params, device, x, y)
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
             o: MeasureOptions, guard: Guard, where: str) -> dict[str, Any]:
    """One worst-case ℓ∞ adaptive sharpness estimate of ``group``, timed."""
    device = data[0].device
    synchronize(device)
    t0 = time.perf_counter()
    r = sharpness(model, data, group, rho=o.rho, kind="worst", norm="linf", adaptive=True, n_iters=o.n_iters,
                  m=o.m, naive=naive, progress=False, callback=guard.callback(where))
    synchronize(device)
    return {"seconds": time.perf_counter() - t0, "value": r.value, "n_params": r.settings.get("n_params"),
            "prefix_stage": r.settings.get("prefix_stage"), "n_batches": len(r.per_batch)}


def _derived_blocks(blocks: list[dict[str, Any]]) -> dict[str, Any]:
    full = [b for b in blocks if "cached_s" in b and "naive_s" in b]
    if not full:
        return {}
    cached, naive = sum(b["cached_s"] for b in full), sum(b["naive_s"] for b in full)
    return {"blocks_measured": len(full), "blocks_cached_total_s": cached, "blocks_naive_total_s": naive,
            "naive_over_cached": naive / cached if cached else None,
            "max_abs_value_diff_cached_vs_naive": max(abs(b["cached_value"] - b["naive_value"]) for b in full)}


def derived(res: dict[str, Any]) -> dict[str, Any]:
    """GPU-hours of the paper-scale jobs, from the measured phases (what the book's table needs).

    Example:
        >>> d = derived({"phases": {"finetune_throughput": {"images_per_s": 3600.0}}, "settings": {}})
        >>> round(d["finetune_imagenet_10_epochs_gpu_hours"], 3)
        0.989
    """
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
    out.update(_derived_blocks((ph.get("sharpness_blocks") or {}).get("blocks") or []))
    if whole:
        n_blocks = res["settings"].get("n_blocks") or 12
        n_full = out.get("blocks_measured")
        per_block = (out["blocks_cached_total_s"] / n_full) if n_full else whole
        point_s = whole + n_blocks * per_block  # whole model + every block (prefix-cached)
        out["sharpness_point_s_whole_plus_blocks"] = point_s
        out["sharpness_6_alpha_gpu_hours_per_run_per_rho"] = 6 * point_s / 3600
    return out


class _Measurement:
    """One measurement run: the model, its data, the result dictionary and the phases."""

    def __init__(self, o: MeasureOptions, out_path: Path, echo: Callable[[str], None]) -> None:
        self.o, self.out_path, self.echo = o, out_path, echo
        self.guard = Guard(o.time_budget)
        self.device = pick_device(o.device)
        torch.manual_seed(0)
        self.model = build_model(o.model, o.n_classes, self.device)
        self.theta0 = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        self.blocks = [name for name in layer_groups(self.model, "block") if name.startswith("block")]
        size = image_size(self.model)
        g = torch.Generator(device=self.device).manual_seed(1)
        self.data = (torch.rand(o.n_examples, 3, size, size, device=self.device, generator=g),
                     torch.randint(0, o.n_classes, (o.n_examples,), device=self.device, generator=g))
        self.res: dict[str, Any] = {
            "command": "rft gpu-measure",
            "complete": False,
            "device": device_summary(self.device),
            "settings": {"model": o.model, "random_init": True, "image_size": size, "n_classes": o.n_classes,
                         "n_params": count_parameters(self.model), "n_blocks": len(self.blocks),
                         "batch_size": o.batch_size, "warmup": o.warmup, "steps": o.steps,
                         "n_examples": o.n_examples, "m": o.m, "n_iters": o.n_iters, "rho": o.rho,
                         "kind": "worst", "norm": "linf", "adaptive": True, "time_budget_s": o.time_budget,
                         "tiny": o.tiny},
            "phases": {},
            "errors": {},
            "notes": ["inputs are random tensors on the device: data loading and JPEG decoding are not measured",
                      "sharpness runs in float32 with TF32 off (rftlib.models.device.strict_fp32)"],
        }
        if o.phases:
            self.res["settings"]["phases"] = o.phase_names()

    def save(self) -> None:
        self.res["elapsed_s"] = time.perf_counter() - self.guard.t0
        self.res["derived"] = derived(self.res)
        atomic_write_json(self.out_path, self.res)

    def finetune_throughput(self) -> dict[str, Any]:
        o = self.o
        r = throughput(self.model, self.device, o.batch_size, o.n_classes, o.warmup, o.steps, self.guard, "throughput")
        self.model.load_state_dict(self.theta0)
        return r

    def sharpness_whole(self) -> dict[str, Any]:
        with strict_fp32():
            return estimate(self.model, self.data, "all", False, self.o, self.guard, "sharpness_whole")

    def sharpness_blocks(self) -> dict[str, Any]:
        rows: list[dict[str, Any]] = []
        self.res["phases"]["sharpness_blocks"] = {"blocks": rows}
        todo = self.blocks[: self.o.max_blocks] if self.o.max_blocks else self.blocks
        with strict_fp32():
            for b in todo:
                row: dict[str, Any] = {"block": b}
                rows.append(row)
                c = estimate(self.model, self.data, b, False, self.o, self.guard, f"{b} cached")
                row.update(cached_s=c["seconds"], cached_value=c["value"], prefix_stage=c["prefix_stage"],
                           n_params=c["n_params"])
                self.save()
                nv = estimate(self.model, self.data, b, True, self.o, self.guard, f"{b} naive")
                row.update(naive_s=nv["seconds"], naive_value=nv["value"], naive_over_cached=nv["seconds"] / c["seconds"])
                self.save()
        return self.res["phases"]["sharpness_blocks"]

    def finetune_throughput_compiled(self) -> dict[str, Any]:
        o, guard = self.o, self.guard
        if self.device.type != "cuda" or not o.compile:
            return {"skipped": "torch.compile is used on CUDA only" if o.compile else "--no-compile"}
        if guard.left() < 150:  # compilation itself cannot be interrupted by the guard
            return {"skipped": f"only {guard.left():.0f} s left; compilation may take minutes"}
        m2 = maybe_compile(copy.deepcopy(self.model), enabled=True)
        r = throughput(m2, self.device, o.batch_size, o.n_classes, o.warmup, o.steps, guard, "compiled")
        r["note"] = "first_step_s includes compilation"
        return r

    def sharpness_bf16_check(self) -> dict[str, Any]:
        if self.device.type != "cuda":
            return {"skipped": "bf16 autocast is used on CUDA only"}
        o, t0 = self.o, time.perf_counter()
        with autocast(self.device):
            r = sharpness(self.model, self.data, "all", rho=o.rho, kind="worst", norm="linf", adaptive=True,
                          n_iters=o.n_iters, m=o.m, progress=False, callback=self.guard.callback("bf16 check"))
        synchronize(self.device)
        fp32 = (self.res["phases"].get("sharpness_whole") or {}).get("value")
        return {"seconds": time.perf_counter() - t0, "value_bf16": r.value, "value_fp32": fp32,
                "note": "bf16 rounds weights to ~0.4 %; at rho=5e-4 the perturbation is below that step"}

    def run(self) -> dict[str, Any]:
        stopped = None
        for name in self.o.phase_names():
            if self.guard.left() <= 0:
                stopped = f"time budget spent before phase {name}"
                break
            try:
                self.res["phases"][name] = getattr(self, name)()
            except TimeUp as e:
                stopped = f"{e} (phase {name})"
                self.model.load_state_dict(self.theta0)
                break
            except Exception as e:  # noqa: BLE001 - record and go on with the next phase
                self.res["errors"][name] = f"{type(e).__name__}: {e}"
                self.model.load_state_dict(self.theta0)
            self.save()
            self.echo(f"[gpu-measure] {name}: done at {time.perf_counter() - self.guard.t0:.1f} s")
        self.res["stopped"] = stopped
        self.res["complete"] = stopped is None and not self.res["errors"]
        self.save()
        return self.res


def measure(options: MeasureOptions | None = None, echo: Callable[[str], None] = print) -> tuple[Path, dict[str, Any]]:
    """Run the phases under the global time guard; write and return the JSON file and its content.

    The options are checked (:meth:`MeasureOptions.resolved`) before any model is built.

    Raises:
        ParameterError: a bad option.
    """
    o = (options or MeasureOptions()).resolved()
    out_path = Path(o.out) if o.out else default_out()
    if o.threads:
        torch.set_num_threads(o.threads)
    res = _Measurement(o, out_path, echo).run()
    echo(f"[gpu-measure] wrote {out_path} (complete={res['complete']})")
    return out_path, res
