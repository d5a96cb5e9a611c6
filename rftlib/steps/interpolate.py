"""From result tables to claims: summaries per run and the statistics behind each verdict.

Each ``claim_*`` function takes tidy tables, computes the statistic with its uncertainty, decides
the verdict with the documented rules of :mod:`rftlib.core.verdicts`, and returns it with a table of
its parts for the findings page; the notebook writes the row into the step's own results folder.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd

from rftlib.core.verdicts import Claim, combine_verdicts, verdict_from_interval
from rftlib.core.curves import loss_barrier, ood_mean, summarize_runs
from rftlib.models.finetune import Recipe
from rftlib.core.stats import bootstrap_mean_ci, correlate
from rftlib.worlds.world import World


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
    rec = pd.DataFrame([{"run": r.name, "lr": r.lr, "augment": r.augment, "epochs": r.epochs} for r in recipes])
    s = s.merge(rec, on="run", how="left")
    lin = []
    for run in s["run"]:
        idc = curves[(curves["run"] == run) & (curves["split"] == "id")].sort_values("alpha")
        lin.append(loss_barrier(idc["alpha"], idc["loss"], reference="linear"))
    s["loss_barrier_linear"] = lin
    return s


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
