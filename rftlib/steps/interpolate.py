"""Step ``interpolate``: WiSE-FT curves θ(α) = (1 − α)·θ_zs + α·θ_ft of every run, a summary per run,
and claim P1 across the runs.

Example:
    >>> Params(n_alpha=2)
    Traceback (most recent call last):
    ...
    rftlib.errors.ParameterError: bad parameters for notebooks/interpolate.ipynb: n_alpha=2 is too small; allowed: an integer >= 3 (the run summary needs an interior alpha in (0, 1))
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import pandas as pd

from rftlib.core.curves import loss_barrier, ood_mean, summarize_runs
from rftlib.core.interpolation import alpha_grid
from rftlib.core.stats import bootstrap_mean_ci, correlate
from rftlib.core.sweep import interpolation_sweep
from rftlib.core.verdicts import Claim, combine_verdicts, verdict_from_interval
from rftlib.models.finetune import Recipe
from rftlib.steps.common import StepResults, check_endpoints, load_endpoints, load_grid, load_theta_ft
from rftlib.steps.fields import grid_param, n_boot_param, n_eval_param, out_dir_param, runs_root_param, seed_param, world_param
from rftlib.steps.parameters import StepParams, at_least, param
from rftlib.worlds.world import World, load_world

__all__ = ["Params", "claim_p1", "curves_with_means", "run", "run_summary", "sweep_runs"]


@dataclass(frozen=True)
class Params(StepParams):
    """Parameters of ``notebooks/interpolate.ipynb``."""

    STEP = "interpolate"
    world: str = world_param()
    grid: str = grid_param("grid file whose runs are swept")
    runs_root: str = runs_root_param()
    n_alpha: int = param(11, "number of evenly spaced alphas in [0, 1]",
                         check=at_least(3, "the run summary needs an interior alpha in (0, 1)"))
    n_eval: int = n_eval_param(1000)
    n_boot: int = n_boot_param("bootstrap resamples for intervals")
    seed: int = seed_param("bootstrap seed")
    out_dir: str = out_dir_param("interpolate")


def sweep_runs(world: World, runs: Sequence[str], alphas: Sequence[float], n_eval: int,
               runs_root: str | Path = "runs", progress: bool = True) -> pd.DataFrame:
    """WiSE-FT curves of every run on every split (tidy: world, run, alpha, split, accuracy, loss, n)."""
    model, theta_zs, _ = load_endpoints(world)
    splits = world.eval_splits(n_eval)
    rows: list[dict[str, Any]] = []
    for run in runs:
        theta_ft = load_theta_ft(world, run, runs_root)
        check_endpoints(theta_zs, theta_ft)
        rows += interpolation_sweep(model, theta_zs, theta_ft, splits, alphas, world=world.name, run=run, progress=progress)
    return pd.DataFrame(rows)


def run(p: Params) -> StepResults:
    """Sweep every run of the grid: tables ``curves``, ``summary`` and ``p1_parts`` (P1's parts on this
    grid; the verdict on P1 is the evidence step's, :mod:`rftlib.steps.evidence`); ``info`` holds the
    curves with mean OOD and unseen rows (for the figures)."""
    w = load_world(p.world)
    recipes = load_grid(p.grid)
    curves = sweep_runs(w, [r.name for r in recipes], alpha_grid(p.n_alpha), p.n_eval, runs_root=p.runs_root)
    summary = run_summary(curves, w, recipes)
    _, parts = claim_p1(summary, w.name, n_boot=p.n_boot, seed=p.seed)
    return StepResults(w, tables={"curves": curves, "summary": summary, "p1_parts": parts},
                       info={"means": curves_with_means(curves, w)})


def curves_with_means(curves: pd.DataFrame, world: World) -> pd.DataFrame:
    """ID rows plus ``ood_mean`` (mean over the world's OOD splits) and ``unseen_mean`` rows."""
    keys = [c for c in ("world", "run") if c in curves]
    parts = [curves[curves["split"] == "id"]]
    parts.append(ood_mean(curves, list(world.ood_splits), keys=keys))
    if world.unseen_styles:
        u = ood_mean(curves, list(world.unseen_styles), keys=keys)
        parts.append(u.assign(split="unseen_mean"))
    cols = [*keys, "alpha", "split", "accuracy"]
    return pd.concat([p[cols] for p in parts], ignore_index=True)


def run_summary(curves: pd.DataFrame, world: World, recipes: Sequence[Recipe]) -> pd.DataFrame:
    """:func:`rftlib.core.curves.summarize_runs` with the recipe's lr and augmentation, and the barrier
    measured above the straight line between the endpoints (``loss_barrier_linear``) beside the
    paper's definition (``loss_barrier``)."""
    s = summarize_runs(curves, ood_splits=list(world.ood_splits), keys=["world", "run"])
    rec = pd.DataFrame([recipe_columns(r) for r in recipes])
    s = s.merge(rec, on="run", how="left")
    lin = []
    for run in s["run"]:
        idc = curves[(curves["run"] == run) & (curves["split"] == "id")].sort_values("alpha")
        lin.append(loss_barrier(idc["alpha"], idc["loss"], reference="linear"))
    s["loss_barrier_linear"] = lin
    return s


def recipe_columns(r: Recipe) -> dict[str, Any]:
    """The run summary's columns of one recipe: ``run``, ``recipe`` (the name without its ``-s<seed>``
    suffix: seeds of one recipe share it), ``seed`` and every hyperparameter.

    Example:
        >>> c = recipe_columns(Recipe(name="lr1e-3-s2", lr=1e-3, seed=2))
        >>> c["run"], c["recipe"], c["seed"], c["lr"], c["label_smoothing"]
        ('lr1e-3-s2', 'lr1e-3', 2, 0.001, 0.0)
    """
    d = r.to_dict()
    name, seed = d.pop("name"), d["seed"]
    suffix = f"-s{seed}"
    return {"run": name, "recipe": name[: -len(suffix)] if name.endswith(suffix) else name, **d}


def claim_p1(summary: pd.DataFrame, world: str, n_boot: int = 1000, seed: int = 0) -> tuple[Claim, pd.DataFrame]:
    """Claim P1 on one world, in four parts (each with its own verdict; the claim's verdict
    combines them, :func:`rftlib.core.verdicts.combine_verdicts`):

    1. RFT does not always beat θ_zs OOD: the share of runs in the failure mode (supported if > 0).
    2. Paths without a loss barrier give larger OOD gains: Kendall τ(barrier, OOD gain over θ_zs),
       expected negative.
    3. No augmentation gives lower OOD error: mean paired difference (same lr) of the best
       interpolated OOD accuracy, no-aug − aug, expected positive (bootstrap over pairs).
    4. Smaller learning rates give lower OOD error: Kendall τ(lr, best OOD accuracy), the accuracy
       centred within each augmentation setting; expected negative.
    """
    parts = []
    share = float(summary["failure_mode"].mean())
    parts.append({"part": "RFT does not always beat zero-shot OOD", "statistic": "share of runs in the failure mode",
                  "value": share, "ci_low": np.nan, "ci_high": np.nan, "p_value": np.nan,
                  "verdict": "supported" if share > 0 else "not supported"})
    if len(summary) >= 3:
        r = correlate(summary["loss_barrier"], summary["gain_over_zs"], n_boot=n_boot, seed=seed)
        barrier_part = {"part": "no loss barrier gives larger OOD gains", "statistic": "Kendall τ(barrier, OOD gain over zero-shot)",
                        "value": r["kendall_tau"], "ci_low": r["kendall_ci_low"], "ci_high": r["kendall_ci_high"],
                        "p_value": r["kendall_p"],
                        "verdict": _safe_verdict(r["kendall_ci_low"], r["kendall_ci_high"], r["kendall_p"], "negative")}
    else:
        barrier_part = {"part": "no loss barrier gives larger OOD gains", "statistic": f"untestable with {len(summary)} runs (needs 3)",
                        "value": float("nan"), "ci_low": float("nan"), "ci_high": float("nan"), "p_value": float("nan"),
                        "verdict": "mixed"}
    parts.append(barrier_part)
    pairs = summary.pivot_table(index="lr", columns="augment", values="acc_ood_best")
    aug_cols = [c for c in pairs.columns if c != "none"]
    if "none" in pairs and aug_cols:
        diffs = (pairs["none"] - pairs[aug_cols].mean(axis=1)).dropna().to_numpy()
        lo, hi = bootstrap_mean_ci(diffs, n_boot, seed)
        parts.append({"part": "no augmentation gives lower OOD error", "statistic": "mean paired Δ best OOD acc (no aug − aug)",
                      "value": float(diffs.mean()), "ci_low": lo, "ci_high": hi, "p_value": np.nan,
                      "verdict": _safe_verdict(lo, hi, None, "positive")})
    if summary["lr"].nunique() >= 2 and len(summary) >= 3:
        # remove each augmentation setting's mean so that only the learning rate's effect remains
        centred = summary["acc_ood_best"] - summary.groupby("augment")["acc_ood_best"].transform("mean")
        r4 = correlate(summary["lr"], centred, n_boot=n_boot, seed=seed)
        parts.append({"part": "smaller learning rates give lower OOD error",
                      "statistic": "Kendall τ(lr, best OOD acc centred per augmentation)",
                      "value": r4["kendall_tau"], "ci_low": r4["kendall_ci_low"], "ci_high": r4["kendall_ci_high"],
                      "p_value": r4["kendall_p"],
                      "verdict": _safe_verdict(r4["kendall_ci_low"], r4["kendall_ci_high"], r4["kendall_p"], "negative")})
    table = pd.DataFrame(parts).assign(world=world)
    verdict = combine_verdicts(table["verdict"])
    if np.isfinite(barrier_part["value"]):
        claim = Claim("P1", world, f"Kendall τ(barrier, OOD gain); verdict combines {len(table)} parts",
                      barrier_part["value"], barrier_part["ci_low"], barrier_part["ci_high"], barrier_part["p_value"], verdict)
    else:
        claim = Claim("P1", world, f"share of runs in the failure mode; verdict combines {len(table)} parts",
                      share, float("nan"), float("nan"), float("nan"), verdict)
    return claim, table


def _safe_verdict(lo: float, hi: float, p: float | None, expect: str) -> str:
    """:func:`verdict_from_interval`, with an undefined statistic (constant input) judged "mixed"."""
    if not (np.isfinite(lo) and np.isfinite(hi)):
        return "mixed"
    return verdict_from_interval(lo, hi, None if p is None or not np.isfinite(p) else p, expect=expect)
