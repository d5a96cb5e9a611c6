"""Benchmark: layer-wise worst-case sharpness over all blocks in three modes, measured side by side.

For each model (the tiny configs and a randomly initialized ViT-B/32-shaped CLIP at 224 px) it
measures the same layer-wise sweep (adaptive ℓ∞, one batch, every residual block) three ways, all
actually run and timed in the same process, the modes alternating from block to block so that
machine load hits them alike:

(a) ``reference``: the reference implementation's procedure, re-created in this script
    (:func:`reference_style_sharpness`): every ascent step runs the full forward pass with
    gradients for *all* parameters (the layer only restricts which gradient is used), plus an extra
    no-grad forward pass at the new iterate to track the best one;
(b) ``naive``: rftlib's estimator with ``naive=True``: the full forward pass at every step, but
    gradients only for the perturbed block (the backward pass stops there), and the best iterate
    tracked from each step's own forward pass;
(c) ``cached``: rftlib's estimator as used (prefix caching): the input of the block is computed once
    per batch and only the block and what follows it run per step.

It reports the CPU seconds per block and in total, the ratios (a)/(c) and (b)/(c), checks that (b)
and (c) give the same values, and shows (a)'s value beside them (the same ascent rule, but the best
iterate is chosen by the extra forward pass, so it may differ slightly).

Usage::

    python benchmarks/bench_prefix.py --quick          # a few minutes on 2 CPU cores
    python benchmarks/bench_prefix.py --models tiny mini --out /tmp/prefix.json

Writes its results as JSON (``--out``, default ``book/results/benchmarks/prefix.json``, atomically).
"""

from __future__ import annotations

import argparse
import datetime as dt
import math
import os
import platform
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from rftlib.files.io import atomic_write_json  # noqa: E402
from rftlib.core.layers import layer_groups  # noqa: E402
from rftlib.models.factory import build_classifier, count_parameters, create_clip  # noqa: E402
from rftlib.core.sharpness import normalize_logits, project_linf, sharpness, step_checkpoints  # noqa: E402

# name → (open_clip architecture, image size, batch size (full, quick), n_iters (full, quick), repeats)
MODELS = {
    "tiny": ("rft-tiny", 28, (128, 128), (20, 5), 5),
    "mini": ("rft-mini", 28, (128, 128), (20, 5), 3),
    "vitb32": ("ViT-B-32-quickgelu", 224, (8, 4), (3, 2), 1),
}
MODES = ("reference", "naive", "cached")
#: The issue's targets for (a)/(c): "prefix-cached layer-wise sweep vs the naive full-model computation".
TARGETS = {"tiny": 2.0, "vitb32": 2.5}


def build(arch: str, size: int) -> torch.nn.Module:
    clip, tok = create_clip(arch, seed=0)
    clf = build_classifier(clip, tok, ["cat", "dog", "bird"], ["a photo of a {}."],
                           (0.48, 0.46, 0.41), (0.27, 0.26, 0.28))
    del clip
    return clf.eval()


def reference_style_sharpness(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, keys: Sequence[str], *,
                              rho: float, n_iters: int, logit_norm: bool = True) -> float:
    """Worst-case adaptive ℓ∞ sharpness of the parameters ``keys`` on one batch, computed the way the
    reference implementation does it (mode (a)); returns L(w + δ_best) − L(w).

    Per ascent step: the full forward pass with a graph for every parameter, the gradients of *all*
    parameters (``torch.autograd.grad`` over ``model.parameters()``; only the layer's are used),
    the step δ += η·c⊙sign(∇) with c = |w|, the projection onto [−ρc, ρc] and APGD momentum and
    step-size halving (as in :mod:`rftlib.core.sharpness`), then an extra no-grad forward pass at the new
    iterate to track the best one. Weights and ``requires_grad`` flags are restored afterwards.
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
            loss = loss_at(delta)
            grads_all = torch.autograd.grad(loss, params, allow_unused=True)  # every parameter's gradient
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


def timed(fn: Callable[[], float]) -> tuple[float, float, float]:
    """(CPU seconds of this process, wall seconds, value) of one call."""
    t, w = time.process_time(), time.perf_counter()
    v = fn()
    return time.process_time() - t, time.perf_counter() - w, v


def bench_model(key: str, quick: bool, rho: float, seed: int) -> dict:
    arch, size, batches, iters, repeats = MODELS[key]
    bs, n_iters = (batches[1], iters[1]) if quick else (batches[0], iters[0])
    model = build(arch, size)
    g = torch.Generator().manual_seed(seed)
    x, y = torch.rand(bs, 3, size, size, generator=g), torch.randint(0, 3, (bs,), generator=g)
    blocks = {k: v for k, v in layer_groups(model).items() if k.startswith("block")}
    kw = dict(rho=rho, kind="worst", norm="linf", adaptive=True, n_iters=n_iters, m=bs, seed=seed, progress=False)

    def run(mode: str, keys: Sequence[str], layer: str, xb: torch.Tensor = x, yb: torch.Tensor = y,
            **over) -> float:
        if mode == "reference":
            return reference_style_sharpness(model, xb, yb, keys, rho=rho, n_iters=over.get("n_iters", n_iters))
        return sharpness(model, (xb, yb), keys, name=layer, naive=(mode == "naive"),
                         **{**kw, "m": len(xb), **over}).value

    print(f"\n== {key}: {arch}, {count_parameters(model) / 1e6:.2f} M parameters, {size} px, batch {bs}, "
          f"{n_iters} ascent steps, {len(blocks)} blocks, best of {repeats}; CPU seconds", flush=True)
    print(f"{'layer':>8} {'(a) ref':>9} {'(b) naive':>9} {'(c) cached':>10} {'a/c':>6} {'b/c':>6} "
          f"{'value (a)':>11} {'value (b)':>11} {'value (c)':>11}", flush=True)
    last = list(blocks.values())[-1]
    for mode in MODES:  # warm-up (allocator, kernels) outside the timings
        run(mode, last, "warm-up", x[:2], y[:2], n_iters=1)
    rows = []
    for i, (layer, keys) in enumerate(blocks.items()):
        order = MODES[i % 3:] + MODES[:i % 3]  # rotate which mode goes first
        best: dict[str, tuple[float, float, float]] = {}
        for _ in range(repeats):  # best of `repeats`, the modes alternating
            for mode in order:
                r = timed(lambda: run(mode, keys, layer))
                if mode not in best or r[0] < best[mode][0]:
                    best[mode] = r
        row = {"layer": layer}
        for mode in MODES:
            row |= {f"{mode}_s": best[mode][0], f"{mode}_wall_s": best[mode][1], f"value_{mode}": best[mode][2]}
        rows.append(row)
        print(f"{layer:>8} {row['reference_s']:9.2f} {row['naive_s']:9.2f} {row['cached_s']:10.2f} "
              f"{row['reference_s'] / row['cached_s']:6.2f} {row['naive_s'] / row['cached_s']:6.2f} "
              f"{row['value_reference']:11.6f} {row['value_naive']:11.6f} {row['value_cached']:11.6f}", flush=True)
    tot = {mode: sum(r[f"{mode}_s"] for r in rows) for mode in MODES}
    max_diff = max(abs(r["value_cached"] - r["value_naive"]) for r in rows)
    max_diff_ref = max(abs(r["value_cached"] - r["value_reference"]) for r in rows)
    print(f"{'total':>8} {tot['reference']:9.2f} {tot['naive']:9.2f} {tot['cached']:10.2f} "
          f"{tot['reference'] / tot['cached']:6.2f} {tot['naive'] / tot['cached']:6.2f}   "
          f"max |(b) − (c)| = {max_diff:.2e}, max |(a) − (c)| = {max_diff_ref:.2e}", flush=True)
    return {"model": key, "arch": arch, "parameters": count_parameters(model), "image_size": size, "batch": bs,
            "n_iters": n_iters, "repeats": repeats, "rho": rho, "layers": rows,
            "reference_s": tot["reference"], "naive_s": tot["naive"], "cached_s": tot["cached"],
            "ratio_reference_vs_cached": tot["reference"] / tot["cached"],
            "ratio_naive_vs_cached": tot["naive"] / tot["cached"],
            "max_abs_diff_naive_cached": max_diff, "max_abs_diff_reference_cached": max_diff_ref}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smaller batches and fewer ascent steps")
    ap.add_argument("--models", nargs="+", choices=sorted(MODELS), default=["tiny", "mini", "vitb32"])
    ap.add_argument("--rho", type=float, default=2e-3, help="adaptive ℓ∞ radius (default 2e-3)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (default 1: CPU time per process is then a steady measure on a shared "
                         "machine; 0 keeps torch's default)")
    ap.add_argument("--out", default="book/results/benchmarks/prefix.json")
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    results = [bench_model(k, args.quick, args.rho, args.seed) for k in args.models]
    print("\nsummary, CPU seconds of the whole sweep and ratios to (c) prefix-cached:")
    for r in results:
        target = TARGETS.get(r["model"])
        goal = ""
        if target is not None:
            met = r["ratio_reference_vs_cached"] >= target
            goal = f"  [goal (a)/(c) ≥ {target:g}×: {'met' if met else 'NOT met'}]"
        print(f"  {r['model']:>7}: (a) reference {r['reference_s']:.1f} s, (b) naive {r['naive_s']:.1f} s, "
              f"(c) cached {r['cached_s']:.1f} s;  (a)/(c) = {r['ratio_reference_vs_cached']:.2f}×, "
              f"(b)/(c) = {r['ratio_naive_vs_cached']:.2f}×{goal}")
    ok = all(math.isfinite(r["max_abs_diff_naive_cached"]) and r["max_abs_diff_naive_cached"] < 1e-5 for r in results)
    if not ok:
        print("warning: rftlib's naive and prefix-cached modes disagree (see max |(b) − (c)|)")
    atomic_write_json(args.out, {
        "benchmark": "layer-wise worst-case adaptive linf sharpness over all blocks: (a) reference-style naive "
                     "(full forward, gradients for all parameters, extra forward per step), (b) rftlib naive "
                     "(full forward, gradients for the block only), (c) rftlib prefix-cached",
        "timing": "CPU seconds of this process (time.process_time), best of `repeats`, modes alternating; wall "
                  "seconds per layer alongside",
        "targets_reference_vs_cached": TARGETS,
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "quick": args.quick, "torch": torch.__version__, "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(), "platform": platform.platform(), "device": "cpu",
        "wall_s": time.perf_counter() - t0, "results": results,
    })
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
