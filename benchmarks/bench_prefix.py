"""Benchmark: layer-wise worst-case sharpness over all blocks, prefix-cached vs naive, side by side.

For each model (the tiny configs and a randomly initialized ViT-B/32-shaped CLIP at 224 px) it runs
the same sweep twice per block — ``rftlib.sharpness.sharpness(..., group=block)`` with prefix
caching (the default) and with ``naive=True`` (the full forward pass at every step) — alternating
the two so that machine load hits both alike, checks that both give the same values, and reports
the times and the speed-up. As a third column it *estimates* what the reference procedure would
cost for the same sweep: its layer restriction is ignored, so every step is a full forward pass, a
backward pass through every parameter, and an extra forward pass to track the best iterate; the
script measures one such step and multiplies (no reference code is run).

Usage::

    python benchmarks/bench_prefix.py --quick          # a few minutes on 2 CPU cores
    python benchmarks/bench_prefix.py --models tiny mini --out /tmp/prefix.json

Writes its results as JSON (``--out``, default ``book/results/benchmarks/prefix.json``).
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import sys
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from rftlib.io import atomic_write_json  # noqa: E402
from rftlib.layers import layer_groups  # noqa: E402
from rftlib.models import build_classifier, count_parameters, create_clip  # noqa: E402
from rftlib.sharpness import normalize_logits, sharpness  # noqa: E402

# name → (open_clip architecture, image size, batch size (full, quick), n_iters (full, quick), repeats)
MODELS = {
    "tiny": ("rft-tiny", 28, (128, 128), (20, 5), 5),
    "mini": ("rft-mini", 28, (128, 128), (20, 5), 3),
    "vitb32": ("ViT-B-32-quickgelu", 224, (8, 4), (3, 2), 1),
}


def build(arch: str, size: int) -> torch.nn.Module:
    clip, tok = create_clip(arch, seed=0)
    clf = build_classifier(clip, tok, ["cat", "dog", "bird"], ["a photo of a {}."],
                           (0.48, 0.46, 0.41), (0.27, 0.26, 0.28))
    del clip
    return clf.eval()


def reference_costs(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, reps: int) -> tuple[float, float]:
    """Seconds of one step of the reference's cost model — full forward, backward through every
    parameter, plus the extra no-grad forward that tracks the best iterate — and of one no-grad
    forward (best of ``reps`` each)."""
    params = [p for p in model.parameters() if p.requires_grad]
    step = fwd = float("inf")
    for _ in range(reps):
        t = time.process_time()
        loss = F.cross_entropy(normalize_logits(model(x).float()), y)
        torch.autograd.grad(loss, params)
        t1 = time.process_time()
        with torch.no_grad():
            model(x)
        t2 = time.process_time()
        step, fwd = min(step, t2 - t), min(fwd, t2 - t1)
    return step, fwd


def bench_model(key: str, quick: bool, rho: float, seed: int) -> dict:
    arch, size, batches, iters, repeats = MODELS[key]
    bs, n_iters = (batches[1], iters[1]) if quick else (batches[0], iters[0])
    model = build(arch, size)
    g = torch.Generator().manual_seed(seed)
    x, y = torch.rand(bs, 3, size, size, generator=g), torch.randint(0, 3, (bs,), generator=g)
    blocks = {k: v for k, v in layer_groups(model).items() if k.startswith("block")}
    kw = dict(rho=rho, kind="worst", norm="linf", adaptive=True, n_iters=n_iters, m=bs, seed=seed, progress=False)
    print(f"\n== {key}: {arch}, {count_parameters(model) / 1e6:.2f} M parameters, {size} px, batch {bs}, "
          f"{n_iters} ascent steps, {len(blocks)} blocks, best of {repeats}", flush=True)
    print(f"{'layer':>8} {'cached s':>9} {'naive s':>9} {'ratio':>6} {'(wall ratio)':>12} {'value cached':>13} "
          f"{'value naive':>13}", flush=True)
    # warm-up (allocator, kernels) outside the timings
    sharpness(model, (x[:2], y[:2]), list(blocks.values())[-1], **{**kw, "n_iters": 1, "m": 2})
    rows = []
    for i, (layer, keys) in enumerate(blocks.items()):
        order = ("cached", "naive") if i % 2 == 0 else ("naive", "cached")
        res: dict = {}
        for _ in range(repeats):  # best of `repeats`, the two modes alternating
            for mode in order:
                t, w = time.process_time(), time.perf_counter()
                r = sharpness(model, (x, y), keys, name=layer, naive=(mode == "naive"), **kw)
                dt_, dw = time.process_time() - t, time.perf_counter() - w
                if mode not in res or dt_ < res[mode][0]:
                    res[mode] = (dt_, dw, r)
        (tc, wc, rc), (tn, wn, rn) = res["cached"], res["naive"]
        rows.append({"layer": layer, "cached_s": tc, "naive_s": tn, "cached_wall_s": wc, "naive_wall_s": wn,
                     "value_cached": rc.value, "value_naive": rn.value, "prefix_stage": rc.settings["prefix_stage"]})
        print(f"{layer:>8} {tc:9.2f} {tn:9.2f} {tn / tc:6.2f} {wn / wc:12.2f} {rc.value:13.6f} {rn.value:13.6f}",
              flush=True)
    cached = sum(r["cached_s"] for r in rows)
    naive = sum(r["naive_s"] for r in rows)
    step_ref, fwd = reference_costs(model, x, y, reps=max(repeats, 2))
    # per layer and batch: n_iters reference steps, plus the loss at w and the final evaluation
    ref_est = len(blocks) * (n_iters * step_ref + 2 * fwd)
    max_diff = max(abs(r["value_cached"] - r["value_naive"]) for r in rows)
    print(f"{'total':>8} {cached:9.2f} {naive:9.2f} {naive / cached:6.2f}   max |cached − naive| = {max_diff:.2e}")
    print(f"reference cost model (estimated from one measured step of {step_ref:.2f} s): {ref_est:.1f} s "
          f"→ {ref_est / cached:.2f}× slower than prefix-cached", flush=True)
    return {"model": key, "arch": arch, "parameters": count_parameters(model), "image_size": size, "batch": bs,
            "n_iters": n_iters, "repeats": repeats, "rho": rho, "layers": rows, "cached_s": cached, "naive_s": naive,
            "speedup": naive / cached, "max_abs_diff": max_diff, "reference_step_s": step_ref, "forward_s": fwd,
            "reference_sweep_est_s": ref_est, "speedup_vs_reference_est": ref_est / cached}


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
    print("\nsummary (naive / prefix-cached; reference estimate / prefix-cached):")
    for r in results:
        print(f"  {r['model']:>7}: {r['speedup']:.2f}×  ({r['naive_s']:.1f} s → {r['cached_s']:.1f} s);  "
              f"vs reference cost model {r['speedup_vs_reference_est']:.2f}×")
    atomic_write_json(args.out, {
        "benchmark": "prefix caching, layer-wise worst-case adaptive linf sharpness over all blocks",
        "timing": "CPU seconds of this process (time.process_time), best of `repeats`; wall seconds alongside",
        "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "quick": args.quick, "torch": torch.__version__, "threads": torch.get_num_threads(),
        "cpu_count": os.cpu_count(), "platform": platform.platform(), "device": "cpu",
        "wall_s": time.perf_counter() - t0, "results": results,
    })
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
