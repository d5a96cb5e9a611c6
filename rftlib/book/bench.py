"""Benchmark of the whole study path: each ratio measured side by side in one run, with its goal.

Sections (each timed in the same process, the compared computations alternating so that machine
load hits them alike; CPU seconds of this process, ``time.process_time``, best of ``repeats``):

- ``precision``: evaluation throughput (images/s) of a world's zero-shot classifier in fp32 and bf16
  autocast, and the bf16 − fp32 differences per split (accuracy in examples, relative loss): the
  numbers the integrator needs to decide the default precision;
- ``sweep``: the WiSE-FT α sweep (:func:`rftlib.core.sweep.interpolation_sweep`) throughput, α×images
  per second, divided by the plain forward throughput of the same model on the same splits
  (:func:`rftlib.core.evaluation.evaluate`); goal ≥ 0.9;
- ``single_layer_paths``: the levers of :func:`rftlib.core.stragglers.single_layer_paths`, old / new
  (full forward per α → shared prefix → shared prefix with reused endpoints), values checked equal;
- ``sharpness_whole``: whole-model worst-case adaptive ℓ∞ sharpness, the reference-style computation
  (:func:`reference_style_sharpness`) / rftlib's :func:`rftlib.core.sharpness.sharpness`; goal ≥ 2;
- ``sharpness_layerwise``: the layer-wise sweep over every residual block at the default number of
  ascent steps (20), reference-style / rftlib prefix-cached (goals ≥ 2 on rft-tiny, ≥ 2.5 on the
  ViT-B/32 shape; full mode only, its 12 blocks at 20 steps take tens of minutes on 2 CPU cores),
  and rftlib without the prefix cache (``naive``), whose values must equal the cached ones.

:func:`run_benchmarks` is what ``rft bench`` calls; ``rft bench --job`` (:mod:`rftlib.book.jobbench`)
times the default job quiet and shared.

Example:
    >>> sorted(GOALS)
    ['sharpness_layerwise_tiny', 'sharpness_layerwise_vitb32', 'sharpness_whole', 'sweep_vs_forward']
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from rftlib.core.evaluation import evaluate
from rftlib.core.interpolation import alpha_grid
from rftlib.core.layers import layer_groups
from rftlib.core.sharpness import normalize_logits, project_linf, sharpness, step_checkpoints
from rftlib.core.stragglers import single_layer_paths
from rftlib.core.sweep import interpolation_sweep
from rftlib.errors import ParameterError
from rftlib.files.io import atomic_write_json

__all__ = ["GOALS", "run_benchmarks", "reference_style_sharpness", "timed", "build_random_classifier"]

#: ratio name → goal (the ratio must be at least this).
GOALS: dict[str, float] = {"sweep_vs_forward": 0.9, "sharpness_whole": 2.0,
                           "sharpness_layerwise_tiny": 2.0, "sharpness_layerwise_vitb32": 2.5}
DEFAULT_STEPS = 20


def timed(fn: Callable[[], Any]) -> tuple[float, float, Any]:
    """(CPU seconds of this process, wall seconds, value) of one call.

    Example:
        >>> cpu, wall, v = timed(lambda: 3)
        >>> v, cpu >= 0.0, wall >= 0.0
        (3, True, True)
    """
    t, w = time.process_time(), time.perf_counter()
    v = fn()
    return time.process_time() - t, time.perf_counter() - w, v


def best_of(fns: dict[str, Callable[[], Any]], repeats: int) -> dict[str, tuple[float, float, Any]]:
    """Best-of-``repeats`` :func:`timed` of each function, the functions alternating (order rotated).

    Example:
        >>> r = best_of({"a": lambda: 1, "b": lambda: 2}, repeats=2)
        >>> r["a"][2], r["b"][2]
        (1, 2)
    """
    if repeats < 1:
        raise ParameterError(f"repeats={repeats!r} must be a positive integer.")
    names, best = list(fns), {}
    for i in range(repeats):
        for name in names[i % len(names):] + names[:i % len(names)]:
            r = timed(fns[name])
            if name not in best or r[0] < best[name][0]:
                best[name] = r
    return best


def build_random_classifier(arch: str, n_classes: int = 3) -> nn.Module:
    """A classifier on a randomly initialized open_clip ``arch`` (seed 0), in eval mode."""
    from rftlib.models.factory import build_classifier, create_clip

    clip, tok = create_clip(arch, seed=0)
    names = ["cat", "dog", "bird", "fish", "frog", "deer", "ship", "car", "tree", "cup"][:n_classes]
    return build_classifier(clip, tok, names, ["a photo of a {}."], (0.48, 0.46, 0.41), (0.27, 0.26, 0.28)).eval()


def reference_style_sharpness(model: nn.Module, x: torch.Tensor, y: torch.Tensor, keys: Sequence[str], *,
                              rho: float, n_iters: int, logit_norm: bool = True) -> float:
    """L(w + δ_best) − L(w), worst-case adaptive ℓ∞, of ``keys`` on one batch, as the reference computes it.

    Per ascent step: a full forward pass with a graph for every parameter, the gradients of *all*
    parameters (only those of ``keys`` are used), δ += η·c⊙sign(∇) with c = |w|, the projection onto
    [−ρc, ρc], APGD momentum and step-size halving (as in :mod:`rftlib.core.sharpness`), and an
    extra no-grad forward at the new iterate to track the best one. Weights and flags are restored.
    """
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    named = dict(model.named_parameters())
    group = [named[k] for k in keys if k in named and named[k].is_floating_point()]
    where = {id(p): i for i, p in enumerate(params)}
    w0 = [p.detach().clone() for p in group]
    c = [w.abs() for w in w0]

    def loss_at(delta: Sequence[torch.Tensor]) -> torch.Tensor:
        with torch.no_grad():
            for p, w, d in zip(group, w0, delta):
                p.copy_(w + d)
        z = model(x).float()
        return F.cross_entropy(normalize_logits(z) if logit_norm else z, y)

    checkpoints = set(step_checkpoints(n_iters))
    try:
        for p in params:
            p.requires_grad_(True)
        delta = [torch.zeros_like(w) for w in w0]
        with torch.no_grad():
            loss0 = float(loss_at(delta))
        best_loss, best_delta = loss0, delta
        prev: list[torch.Tensor] | None = None
        eta, last_ck, eta_at_last, best_at_last, n_improved = 2.0 * rho, 0, 2.0 * rho, loss0, 0
        for k in range(n_iters):
            grads_all = torch.autograd.grad(loss_at(delta), params, allow_unused=True)
            grads = [grads_all[where[id(p)]] for p in group]
            if k in checkpoints:
                too_few = n_improved < 0.75 * (k - last_ck)
                stalled = eta == eta_at_last and best_loss == best_at_last
                eta_at_last, best_at_last = eta, best_loss
                if too_few or stalled:
                    eta /= 2.0
                    delta, prev = [d.clone() for d in best_delta], None
                n_improved, last_ck = 0, k
            z = project_linf([d + eta * ci * g.sign() for d, ci, g in zip(delta, c, grads)], c, rho)
            new = z if prev is None else project_linf(
                [d + 0.75 * (zi - d) + 0.25 * (d - p) for d, zi, p in zip(delta, z, prev)], c, rho)
            prev, delta = delta, new
            with torch.no_grad():  # the reference's extra forward per step: track the best iterate
                loss_new = float(loss_at(delta))
            if loss_new > best_loss:
                best_loss, best_delta, n_improved = loss_new, [d.clone() for d in delta], n_improved + 1
        return best_loss - loss0
    finally:
        with torch.no_grad():
            for p, w in zip(group, w0):
                p.copy_(w)
        for p, f in zip(params, flags):
            p.requires_grad_(f)


def _rftlib_sharpness(model: nn.Module, x: torch.Tensor, y: torch.Tensor, keys: Sequence[str] | str,
                      rho: float, n_iters: int, name: str, naive: bool = False) -> float:
    return sharpness(model, (x, y), keys, rho=rho, kind="worst", norm="linf", adaptive=True, n_iters=n_iters,
                     m=len(x), seed=0, name=name, progress=False, naive=naive).value


def _batch(size: int, n: int, n_classes: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g), torch.randint(0, n_classes, (n,), generator=g)


def _perturbed_endpoint(model: nn.Module, scale: float = 0.05, seed: int = 0) -> dict[str, torch.Tensor]:
    """A stand-in θ_ft: θ_zs plus seeded relative noise (the sweep's cost does not depend on θ_ft)."""
    g = torch.Generator().manual_seed(seed)
    return {k: (v + scale * v.abs().mean() * torch.randn(v.shape, generator=g)) if v.is_floating_point() else v.clone()
            for k, v in model.state_dict().items()}


def _ratio(name: str, value: float, note: str = "") -> dict[str, Any]:
    goal = GOALS.get(name)
    return {"ratio": value, "goal": goal, "met": None if goal is None else bool(value >= goal), "note": note}


# ------------------------------------------------------------------------------------ sections

def bench_precision(model: nn.Module, splits: dict, repeats: int, batch_size: int = 256) -> dict[str, Any]:
    """fp32 vs bf16-autocast evaluation: throughput (wall images/s) and the per-split differences."""
    n = sum(len(y) for _, y in splits.values())
    res = best_of({p: (lambda p=p: evaluate(model, splits, batch_size=batch_size, progress=False, precision=p))
                   for p in ("fp32", "bf16")}, repeats)
    r32, r16 = ({r["split"]: r for r in res[p][2]} for p in ("fp32", "bf16"))
    per_split = [{"split": s, "n": r32[s]["n"], "accuracy_fp32": r32[s]["accuracy"], "accuracy_bf16": r16[s]["accuracy"],
                  "accuracy_diff_examples": round(abs(r16[s]["accuracy"] - r32[s]["accuracy"]) * r32[s]["n"]),
                  "loss_fp32": r32[s]["loss"], "loss_bf16": r16[s]["loss"],
                  "loss_rel_diff": abs(r16[s]["loss"] - r32[s]["loss"]) / abs(r32[s]["loss"])} for s in r32]
    return {"images": n, "batch_size": batch_size,
            "fp32_img_s": n / res["fp32"][1], "bf16_img_s": n / res["bf16"][1],
            "speedup_bf16": res["fp32"][0] / res["bf16"][0], "per_split": per_split,
            "max_accuracy_diff_examples": max(r["accuracy_diff_examples"] for r in per_split),
            "max_loss_rel_diff": max(r["loss_rel_diff"] for r in per_split)}


def bench_sweep(model: nn.Module, splits: dict, alphas: Sequence[float], repeats: int, precision: str = "fp32",
                batch_size: int = 1000) -> dict[str, Any]:
    """α-sweep throughput (α × images per CPU second) / plain forward throughput, same model and splits."""
    zs = {k: v.detach().clone() for k, v in model.state_dict().items()}
    ft = _perturbed_endpoint(model)
    n = sum(len(y) for _, y in splits.values())
    try:
        res = best_of({
            "forward": lambda: evaluate(model, splits, batch_size=batch_size, progress=False, precision=precision),
            "sweep": lambda: interpolation_sweep(model, zs, ft, splits, alphas, "bench", "bench", batch_size=batch_size,
                                                 progress=False, precision=precision)}, repeats)
    finally:
        model.load_state_dict(zs)
    fwd, swp = n / res["forward"][0], len(alphas) * n / res["sweep"][0]
    return {"precision": precision, "alphas": len(alphas), "images": n, "forward_img_per_cpu_s": fwd,
            "sweep_alpha_img_per_cpu_s": swp, "sweep_vs_forward": _ratio("sweep_vs_forward", swp / fwd)}


def bench_paths(model: nn.Module, splits: dict, alphas: Sequence[float], repeats: int,
                batch_size: int = 1000) -> dict[str, Any]:
    """The levers of single-layer paths (hold ft, every block), old / new, and that the numbers agree."""
    zs = {k: v.detach().clone() for k, v in model.state_dict().items()}
    ft = _perturbed_endpoint(model)
    variants = {"full_forward_per_alpha": dict(shared_prefix=False, reuse_endpoints=False),
                "shared_prefix": dict(shared_prefix=True, reuse_endpoints=False),
                "shared_prefix_reused_endpoints": dict(shared_prefix=True, reuse_endpoints=True),
                "shared_prefix_reused_endpoints_bf16": dict(shared_prefix=True, reuse_endpoints=True, precision="bf16")}
    res = best_of({k: (lambda kw=kw: single_layer_paths(model, zs, ft, splits, alphas=alphas, batch_size=batch_size,
                                                        progress=False, **kw)) for k, kw in variants.items()}, repeats)
    base = res["full_forward_per_alpha"][2]
    same = {k: res[k][2] == base for k in variants if not k.endswith("bf16")}
    diff16 = max(abs(a["loss"] - b["loss"]) / abs(a["loss"]) for a, b in zip(base, res["shared_prefix_reused_endpoints_bf16"][2]))
    s = {k: res[k][0] for k in variants}
    return {"alphas": len(alphas), "splits": list(splits), "cpu_s": s, "rows_identical_to_old": same,
            "max_loss_rel_diff_bf16": diff16,
            "lever_shared_prefix": s["full_forward_per_alpha"] / s["shared_prefix"],
            "lever_reused_endpoints": s["shared_prefix"] / s["shared_prefix_reused_endpoints"],
            "lever_bf16": s["shared_prefix_reused_endpoints"] / s["shared_prefix_reused_endpoints_bf16"],
            "total_old_vs_new_fp32": s["full_forward_per_alpha"] / s["shared_prefix_reused_endpoints"]}


def bench_sharpness_whole(model: nn.Module, size: int, bs: int, n_iters: int, repeats: int, rho: float = 2e-3
                          ) -> dict[str, Any]:
    """Whole-model worst-case adaptive ℓ∞ sharpness: reference-style / rftlib, one batch."""
    x, y = _batch(size, bs, 3)
    keys = [k for k, _ in model.named_parameters()]
    _rftlib_sharpness(model, x[:2], y[:2], "all", rho, 1, "warm-up")
    reference_style_sharpness(model, x[:2], y[:2], keys, rho=rho, n_iters=1)
    res = best_of({"reference": lambda: reference_style_sharpness(model, x, y, keys, rho=rho, n_iters=n_iters),
                   "rftlib": lambda: _rftlib_sharpness(model, x, y, "all", rho, n_iters, "all")}, repeats)
    return {"batch": bs, "n_iters": n_iters, "reference_s": res["reference"][0], "rftlib_s": res["rftlib"][0],
            "value_reference": res["reference"][2], "value_rftlib": res["rftlib"][2],
            "abs_diff": abs(res["reference"][2] - res["rftlib"][2]),
            "ratio": res["reference"][0] / res["rftlib"][0]}


def bench_sharpness_layerwise(model: nn.Module, size: int, bs: int, n_iters: int, repeats: int,
                              rho: float = 2e-3) -> dict[str, Any]:
    """Layer-wise sweep over every residual block, summed: reference-style, rftlib without the prefix
    cache (``naive``: full forward, gradients for the block only) and rftlib prefix-cached (as used);
    ``ratio`` is reference / cached, ``ratio_naive`` naive / cached (the cache alone; same values)."""
    x, y = _batch(size, bs, 3)
    blocks = {k: v for k, v in layer_groups(model).items() if k.startswith("block")}
    total = {"reference": 0.0, "naive": 0.0, "rftlib": 0.0}
    per_block = []
    for layer, keys in blocks.items():
        res = best_of({"reference": lambda: reference_style_sharpness(model, x, y, keys, rho=rho, n_iters=n_iters),
                       "naive": lambda: _rftlib_sharpness(model, x, y, keys, rho, n_iters, layer, naive=True),
                       "rftlib": lambda: _rftlib_sharpness(model, x, y, keys, rho, n_iters, layer)}, repeats)
        total = {k: total[k] + res[k][0] for k in total}
        per_block.append({"layer": layer, **{f"{k}_s": res[k][0] for k in total},
                          **{f"value_{k}": res[k][2] for k in total}})
    return {"batch": bs, "n_iters": n_iters, "blocks": len(blocks), **{f"{k}_s": v for k, v in total.items()},
            "ratio": total["reference"] / total["rftlib"], "ratio_naive": total["naive"] / total["rftlib"],
            "max_abs_diff_naive_cached": max(abs(b["value_naive"] - b["value_rftlib"]) for b in per_block),
            "per_block": per_block}


# ------------------------------------------------------------------------------------- driver

def _world_model(world: str, n_eval: int) -> tuple[nn.Module, dict, str]:
    from rftlib.worlds.world import load_world

    w = load_world(world)
    model = w.zeroshot_classifier().eval()
    return model, w.eval_splits(n_eval=n_eval), str(w.name)


def _settings(quick: bool) -> dict[str, Any]:
    return {"n_eval": 500 if quick else 1000, "alphas": alpha_grid(6 if quick else 11), "repeats": 1 if quick else 3,
            "path_splits": 2, "sharp_batch": 128, "n_iters": DEFAULT_STEPS,
            "layerwise_models": ["rft-tiny", "rft-mini"] + ([] if quick else ["ViT-B-32-quickgelu"]),
            "vitb32_batch": 4}


def _log(msg: str, verbose: bool) -> None:
    if verbose:
        print(msg, flush=True)


def headline_ratios(sections: dict[str, Any]) -> dict[str, Any]:
    """The ratios with goals (:data:`GOALS`) from the sections; the ViT-B/32 one only in full mode."""
    ratios = {"sweep_vs_forward": sections["sweep_fp32"]["sweep_vs_forward"],
              "sharpness_whole": _ratio("sharpness_whole", sections["sharpness_whole_rft-mini"]["ratio"], "rft-mini"),
              "sharpness_layerwise_tiny": _ratio("sharpness_layerwise_tiny",
                                                 sections["sharpness_layerwise_rft-tiny"]["ratio"], "rft-tiny")}
    vit_key = "sharpness_layerwise_ViT-B-32-quickgelu"
    ratios["sharpness_layerwise_vitb32"] = (
        _ratio("sharpness_layerwise_vitb32", sections[vit_key]["ratio"], "ViT-B-32-quickgelu, 224 px")
        if vit_key in sections else {"ratio": None, "goal": GOALS["sharpness_layerwise_vitb32"], "met": None,
                                     "note": "not run in quick mode (`rft bench --full` runs it)"})
    return ratios


def run_benchmarks(quick: bool = True, out: str | Path | None = None, *, world: str = "fashion",
                   threads: int = 1, verbose: bool = True) -> dict[str, Any]:
    """Run every section, write the JSON to ``out`` (atomically; ``None``: no file) and return it.

    Args:
        quick: ~2 minutes on 2 CPU cores (500 images per split, 6 α, one repeat, no ViT-B/32); else
            1000 images, 11 α, best of 3, and the ViT-B/32-shaped layer-wise sweep (tens of minutes).
        out: the JSON file to write.
        world: the miniature world whose zero-shot classifier the evaluation sections use.
        threads: torch CPU threads (1: CPU seconds are a steady measure on a shared machine).
        verbose: print each section's headline.

    Returns:
        ``{"ratios": {name: {"ratio", "goal", "met", "note"}}, "sections": {...}, ...}``.
    """
    if not isinstance(threads, int) or isinstance(threads, bool) or threads < 1:
        raise ParameterError(f"threads={threads!r} must be a positive integer.")
    torch.set_num_threads(threads)
    cfg, t0, load0 = _settings(quick), time.perf_counter(), os.getloadavg()
    model, splits, wname = _world_model(world, cfg["n_eval"])
    sections: dict[str, Any] = {}
    sections["precision"] = bench_precision(model, splits, cfg["repeats"])
    _log(f"precision: bf16/fp32 speed {sections['precision']['speedup_bf16']:.2f}x, max |dacc| "
         f"{sections['precision']['max_accuracy_diff_examples']} examples, max rel dloss "
         f"{sections['precision']['max_loss_rel_diff']:.2e}", verbose)
    for p in ("fp32", "bf16"):
        sections[f"sweep_{p}"] = bench_sweep(model, splits, cfg["alphas"], cfg["repeats"], precision=p)
        _log(f"sweep {p}: sweep/forward {sections[f'sweep_{p}']['sweep_vs_forward']['ratio']:.3f}", verbose)
    path_splits = dict(list(splits.items())[:cfg["path_splits"]])
    sections["single_layer_paths"] = bench_paths(model, path_splits, cfg["alphas"], cfg["repeats"])
    _log(f"single-layer paths: {sections['single_layer_paths']['total_old_vs_new_fp32']:.2f}x old/new", verbose)
    for arch in ("rft-tiny", "rft-mini"):
        m = build_random_classifier(arch)
        sections[f"sharpness_whole_{arch}"] = bench_sharpness_whole(m, 28, cfg["sharp_batch"], cfg["n_iters"],
                                                                     cfg["repeats"])
        _log(f"whole-model sharpness {arch}: {sections[f'sharpness_whole_{arch}']['ratio']:.2f}x", verbose)
    for arch in cfg["layerwise_models"]:
        vit = arch.startswith("ViT")
        m = build_random_classifier(arch)
        sections[f"sharpness_layerwise_{arch}"] = bench_sharpness_layerwise(
            m, 224 if vit else 28, cfg["vitb32_batch"] if vit else cfg["sharp_batch"], cfg["n_iters"],
            1 if vit else cfg["repeats"])
        _log(f"layer-wise sharpness {arch}: {sections[f'sharpness_layerwise_{arch}']['ratio']:.2f}x", verbose)
    result = {
        "benchmark": "the whole study path (rftlib.book.bench): precision, alpha sweep vs plain forward, "
                     "single-layer path levers, whole-model and layer-wise sharpness vs a reference-style computation",
        "timing": "CPU seconds of this process (time.process_time), best of `repeats`, compared computations "
                  "alternating; throughputs in images per second",
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "quick": quick, "world": wname, "settings": cfg, "torch": torch.__version__, "threads": threads,
        "cpu_count": os.cpu_count(), "platform": platform.platform(), "device": "cpu",
        "loadavg_start": list(load0), "loadavg_end": list(os.getloadavg()),
        "wall_s": time.perf_counter() - t0, "ratios": headline_ratios(sections), "sections": sections,
    }
    if out is not None:
        atomic_write_json(out, result)
    return result
