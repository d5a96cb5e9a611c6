"""The layer-wise steps of the study: straggler layers of each run, and sparsity in them (F4).

Runs are chosen from the WiSE-FT summary of the interpolation step (:func:`select_runs`), so the
layer-wise work is spent where it matters: the runs in the failure mode, plus the most successful
run as a contrast.
"""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import pandas as pd
import torch

from rftlib.core.verdicts import Claim, verdict_from_interval
from rftlib.errors import ParameterError
from rftlib.core.interpolation import alpha_grid
from rftlib.core.sparsity import control_layers, failure_summary, sparsity_sweep
from rftlib.core.stats import bootstrap_mean_ci
from rftlib.core.stragglers import layer_barriers, rank_layers, ranking_agreement, single_layer_paths
from rftlib.steps.common import load_theta_ft
from rftlib.worlds.world import World

SELECTIONS = ("all", "failure", "failure+best")
RANK_BY = ("barrier", "ood_drop", "barrier_mid")


def select_runs(summary: pd.DataFrame, mode: str = "failure+best", max_runs: int | None = None) -> list[str]:
    """Runs to study: ``all``; ``failure`` (runs in the failure mode); ``failure+best`` (those plus the
    run with the largest OOD gain over both endpoints). At most ``max_runs`` failure runs, the
    deepest failures (most negative gain over θ_zs) first.

    Example:
        >>> s = pd.DataFrame({"run": ["a", "b", "c"], "failure_mode": [True, False, True],
        ...                   "gain_over_zs": [-0.02, 0.01, -0.05], "gain_over_both": [-.02, .01, -.05]})
        >>> select_runs(s), select_runs(s, "failure", max_runs=1)
        (['c', 'a', 'b'], ['c'])
    """
    if mode not in SELECTIONS:
        raise ParameterError(f"run selection {mode!r} must be one of {SELECTIONS}.")
    if mode == "all":
        return list(summary["run"])
    fail = summary[summary["failure_mode"].astype(bool)].sort_values("gain_over_zs")
    runs = list(fail["run"])[: max_runs if max_runs else None]
    if mode == "failure+best":
        best = summary.sort_values("gain_over_both", ascending=False)["run"].iloc[0]
        if best not in runs:
            runs.append(best)
    return runs


def straggler_paths(world: World, run: str, n_alpha: int, n_eval: int, runs_root: str | Path = "runs",
                    granularity: str = "block", hold: str = "ft", controls: bool = True,
                    seed: int = 0, progress: bool = True) -> pd.DataFrame:
    """Single-layer paths of one run (task direction; with ``controls``, also cumulative groups and a
    random direction of the same norm), tidy rows with ``world`` and ``run``."""
    model = world.zeroshot_classifier()
    theta_zs = {k: v.clone() for k, v in model.state_dict().items()}
    theta_ft = load_theta_ft(world, run, runs_root)
    splits = world.eval_splits(n_eval)
    alphas = alpha_grid(n_alpha)
    rows = single_layer_paths(model, theta_zs, theta_ft, splits, None, alphas, hold, granularity=granularity,
                              progress=progress)
    if controls:
        rows += single_layer_paths(model, theta_zs, theta_ft, splits, None, alphas, hold, granularity=granularity,
                                   cumulative=True, include_full=False, progress=progress)
        rows += single_layer_paths(model, theta_zs, theta_ft, splits, None, alphas, hold, granularity=granularity,
                                   direction="random", seed=seed, include_full=False, progress=progress)
    return pd.DataFrame(rows).assign(world=world.name, run=run)


def straggler_table(paths: pd.DataFrame, world: World) -> pd.DataFrame:
    """Per (run, path): barrier, midpoint barrier, OOD drop, … (:func:`rftlib.core.stragglers.layer_barriers`)."""
    out = []
    for run, sub in paths.groupby("run", sort=False):
        for r in layer_barriers(sub, ood_splits=list(world.ood_splits)):
            out.append({"world": world.name, "run": run, **r})
    return pd.DataFrame(out)


def stragglers_of(table: pd.DataFrame, by: str = "barrier", k: int = 2) -> pd.DataFrame:
    """Top-``k`` layers per run by ``by`` (single-layer, task-direction paths): rows world, run, layer, rank, by."""
    if by not in RANK_BY:
        raise ParameterError(f"straggler ranking by={by!r} must be one of {RANK_BY}.")
    if k <= 0:
        raise ParameterError(f"k={k} must be a positive number of straggler layers.")
    rows = []
    for (world, run), sub in table.groupby(["world", "run"], sort=False):
        for i, layer in enumerate(rank_layers(sub, by=by, k=k)):
            rows.append({"world": world, "run": run, "layer": layer, "rank": i + 1, "by": by})
    return pd.DataFrame(rows)


def ranking_agreements(table: pd.DataFrame, k: int = 2) -> pd.DataFrame:
    """Per run, agreement between the rankings by barrier, midpoint barrier and OOD drop."""
    rows = []
    for (world, run), sub in table.groupby(["world", "run"], sort=False):
        rankings = {by: rank_layers(sub, by=by) for by in RANK_BY}
        rows += [{"world": world, "run": run, **r} for r in ranking_agreement(rankings, k=k)]
    return pd.DataFrame(rows)


def sparsity_run(world: World, run: str, stragglers: Sequence[str], ps: Sequence[float],
                 interventions: Sequence[str], n_alpha: int, n_eval: int, runs_root: str | Path = "runs",
                 seed: int = 0, progress: bool = True) -> pd.DataFrame:
    """:func:`rftlib.core.sparsity.sparsity_sweep` on one run, stragglers vs a matched control set."""
    model = world.zeroshot_classifier()
    theta_zs = {k: v.clone() for k, v in model.state_dict().items()}
    theta_ft = load_theta_ft(world, run, runs_root)
    from rftlib.core.layers import layer_groups

    groups = layer_groups(model, "block")
    control = control_layers(groups, list(stragglers), k=len(stragglers), seed=seed, exclude=("head",))
    rows = sparsity_sweep(model, theta_zs, theta_ft, world.eval_splits(n_eval), list(stragglers), ps, interventions,
                          alpha_grid(n_alpha), control=control, seed=seed, progress=progress)
    return pd.DataFrame(rows).assign(world=world.name, run=run, stragglers="+".join(stragglers),
                                     control="+".join(control))


def sparsity_summary(rows: pd.DataFrame, world: World) -> pd.DataFrame:
    """Per (run, intervention, target, p): best interior α, OOD accuracies and the failure flags."""
    out = []
    for run, sub in rows.groupby("run", sort=False):
        for r in failure_summary(sub, ood_splits=list(world.ood_splits)):
            out.append({"world": world.name, "run": run, **r, "gain_over_zs": r["best_interior_ood"] - r["ood_zs"]})
    return pd.DataFrame(out)


def claim_f4(summary: pd.DataFrame, world: str, intervention: str = "mask_both", n_boot: int = 1000,
             seed: int = 0) -> tuple[Claim, pd.DataFrame]:
    """F4 on one world: does sparsity in straggler layers mitigate the failure mode, beyond a control?

    Statistic: over failure-mode runs and sparsity levels p, the mean of
    ``gain_over_zs(stragglers) − gain_over_zs(control)`` for ``intervention`` (gain = best interior
    mean-OOD accuracy minus the unmodified θ_zs's), with a bootstrap interval. Verdict: supported when
    the interval is above 0 *and* at least one straggler intervention rescues a failure-mode run;
    not supported when no straggler intervention rescues any run or the interval is below 0; else mixed.
    """
    s = summary[summary["intervention"] == intervention]
    base = summary[summary["intervention"] == "none"].set_index("run")
    fail_runs = [r for r in base.index.unique() if bool(base.loc[[r], "failure"].iloc[0])]
    parts = []
    for run in fail_runs:
        a = s[(s["run"] == run) & (s["target"] == "stragglers")].set_index("p")
        b = s[(s["run"] == run) & (s["target"] == "control")].set_index("p")
        for p in a.index.intersection(b.index):
            parts.append({"world": world, "run": run, "p": p, "gain_stragglers": a.loc[p, "gain_over_zs"],
                          "gain_control": b.loc[p, "gain_over_zs"], "rescued_stragglers": not bool(a.loc[p, "failure"]),
                          "rescued_control": not bool(b.loc[p, "failure"])})
    table = pd.DataFrame(parts)
    if table.empty:
        claim = Claim("F4", world, "no run in the failure mode: nothing to rescue (untestable here)", 0.0,
                      float("nan"), float("nan"), float("nan"), "mixed")
    else:
        diff = (table["gain_stragglers"] - table["gain_control"]).to_numpy()
        lo, hi = bootstrap_mean_ci(diff, n_boot, seed)
        n_rescued = int(table["rescued_stragglers"].sum())
        v = verdict_from_interval(lo, hi, None, expect="positive")
        if n_rescued == 0:
            v = "not supported"
        claim = Claim("F4", world, f"mean Δ OOD gain, stragglers − control ({intervention}); "
                      f"rescued {n_rescued}/{len(table)} vs control {int(table['rescued_control'].sum())}/{len(table)}",
                      float(diff.mean()), lo, hi, float("nan"), v)
    return claim, table


def sharpness_data(world: World, n: int) -> tuple:
    """The first ``n`` ID training images (clean, no augmentation) and labels: sharpness is measured on
    training data, as in the reference study."""
    from rftlib.steps.common import id_training_data

    x, y = id_training_data(world)
    if n > len(x):
        raise ParameterError(f"n_examples={n} exceeds the {len(x)} training images of world {world.name!r}.")
    if not isinstance(x, torch.Tensor):  # lazily decoded images (a paper setting): decode the n used
        return x[torch.arange(n)], y[:n]
    return x[:n], y[:n]


def sparsity_sharpness(world: World, run: str, stragglers: Sequence[str], p: float, intervention: str,
                       rho: float, runs_root: str | Path = "runs", seed: int = 0, n_examples: int = 256,
                       n_draws: int = 8, alpha: float = 0.5) -> pd.DataFrame:
    """Average-case layer-wise sharpness of each straggler layer at θ(α), without and with the
    sparsity intervention, adaptive (c = |w|) and standard (c = 1). Same data and noise seed for all."""
    from rftlib.core.interpolation import Interpolator
    from rftlib.core.layers import layer_groups
    from rftlib.core.sharpness import sharpness
    from rftlib.core.sparsity import intervene

    model = world.zeroshot_classifier()
    theta_zs = {k: v.clone() for k, v in model.state_dict().items()}
    theta_ft = load_theta_ft(world, run, runs_root)
    groups = layer_groups(model, "block")
    keys = [k for layer in stragglers for k in groups[layer]]
    data = sharpness_data(world, n_examples)
    rows = []
    for sparse in (False, True):
        zs, ft = (theta_zs, theta_ft)
        if sparse:
            iv = intervene(theta_zs, theta_ft, keys, p, intervention, seed=seed)
            zs, ft = iv.theta_zs, iv.theta_ft
        Interpolator(model, zs, ft).set_alpha(alpha)
        for layer in stragglers:
            for adaptive in (True, False):
                # standard sharpness needs a radius on the weights' own scale: rho times the layer's mean |w|
                r = rho if adaptive else rho * float(torch_mean_abs(model, groups[layer]))
                res = sharpness(model, data, groups[layer], rho=r, kind="average", norm="l2", adaptive=adaptive,
                                n_iters=n_draws, m=128, seed=seed, name=layer, progress=False)
                rows.append({"world": world.name, "run": run, "alpha": alpha, "layer": layer, "kind": "average",
                             "norm": "l2", "adaptive": adaptive, "rho": r, "sparse": sparse, "p": p if sparse else 0.0,
                             "intervention": intervention if sparse else "none", "value": res.value})
    return pd.DataFrame(rows)


def torch_mean_abs(model, keys: Sequence[str]) -> float:
    """Mean |w| over the named state-dict entries (the scale that makes standard ρ comparable)."""
    sd = model.state_dict()
    tot = sum(float(sd[k].abs().sum()) for k in keys)
    n = sum(sd[k].numel() for k in keys)
    return tot / max(n, 1)
