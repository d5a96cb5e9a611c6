"""Step ``sparsity`` (claim F4): does zeroing a fraction p of the straggler layers' weights rescue the
runs in the failure mode, beyond the same sparsity in a matched control set of other layers?

Example:
    >>> Params(ps=[0.5, 1.0], interventions=["mask_bot"], rho=0.0)  # doctest: +NORMALIZE_WHITESPACE
    Traceback (most recent call last):
    ...
    rftlib.errors.ParameterError: bad parameters for notebooks/sparsity.ipynb: ps[1]=1.0 is out of range; allowed: a number in [0, 1) (1 would zero every weight); interventions[0]='mask_bot' is unknown (did you mean 'mask_both'?); allowed: 'mask_both', 'mask_ft', 'drop_tau', 'drop_tau_rescaled', 'magnitude'; rho=0.0 is out of range; allowed: a finite number > 0
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import pandas as pd

from rftlib.core.interpolation import Interpolator, alpha_grid
from rftlib.core.layers import layer_groups
from rftlib.core.sharpness import sharpness
from rftlib.core.sparsity import INTERVENTIONS, control_layers, failure_summary, intervene, sparsity_sweep
from rftlib.core.stats import bootstrap_mean_ci
from rftlib.core.verdicts import Claim, untestable, verdict_from_interval
from rftlib.steps.common import StepResults, load_endpoints, read_upstream, select_runs, sharpness_data
from rftlib.steps.fields import n_boot_param, n_eval_param, out_dir_param, runs_root_param, seed_param, world_param
from rftlib.steps.parameters import StepParams, at_least, each_within, param, some_of, within
from rftlib.worlds.world import World, load_world

__all__ = ["Params", "claim_f4", "run", "sparsity_run", "sparsity_sharpness", "sparsity_summary"]

#: The columns of an empty sparsity summary (no run in the failure mode): F4 is then untestable.
EMPTY_SUMMARY = ["intervention", "run", "target", "p", "failure", "gain_over_zs"]


@dataclass(frozen=True)
class Params(StepParams):
    """Parameters of ``notebooks/sparsity.ipynb``."""

    STEP = "sparsity"
    world: str = world_param()
    interpolate_dir: str = param("", "results of the interpolation step (empty: book/results/<world>-interpolate)")
    stragglers_dir: str = param("", "results of the straggler step (empty: book/results/<world>-stragglers)")
    max_runs: int = param(2, "at most this many failure-mode runs", check=at_least(1))
    runs_root: str = runs_root_param()
    ps: list[float] = param((0.1, 0.5, 0.9), "fractions of weights zeroed, each in [0, 1)",
                            check=each_within(lambda x: 0 <= x < 1, "a number in [0, 1) (1 would zero every weight)"))
    interventions: list[str] = param(("mask_both", "drop_tau_rescaled"),
                                     "mask_both, mask_ft, drop_tau, drop_tau_rescaled, magnitude (the first is judged by F4)",
                                     check=some_of(INTERVENTIONS, " (the first is judged by claim F4)"))
    n_alpha: int = param(6, "alphas per path", check=at_least(3, "the sparsity summary needs an interior alpha in (0, 1)"))
    n_eval: int = n_eval_param(500)
    sharpness_p: float = param(0.5, "sparsity level at which layer-wise sharpness is compared",
                               check=within(lambda x: 0 <= x < 1, "a number in [0, 1)"))
    rho: float = param(0.2, "radius of the layer-wise sharpness check (average-case, Gaussian)",
                       check=within(lambda r: r > 0, "a finite number > 0"))
    n_boot: int = n_boot_param()
    seed: int = seed_param("mask and bootstrap seed")
    out_dir: str = out_dir_param("sparsity")


def sparsity_run(world: World, run: str, stragglers: Sequence[str], ps: Sequence[float],
                 interventions: Sequence[str], n_alpha: int, n_eval: int, runs_root: str | Path = "runs",
                 seed: int = 0, progress: bool = True) -> pd.DataFrame:
    """:func:`rftlib.core.sparsity.sparsity_sweep` on one run, stragglers vs a matched control set."""
    model, theta_zs, theta_ft = load_endpoints(world, run, runs_root)
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
    not supported when no straggler intervention rescues any run or the interval is below 0; else mixed;
    untestable without a run in the failure mode.
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
        claim = untestable("F4", world, "no run in the failure mode: nothing to rescue")
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


def sparsity_sharpness(world: World, run: str, stragglers: Sequence[str], p: float, intervention: str,
                       rho: float, runs_root: str | Path = "runs", seed: int = 0, n_examples: int = 256,
                       n_draws: int = 8, alpha: float = 0.5) -> pd.DataFrame:
    """Average-case layer-wise sharpness of each straggler layer at θ(α), without and with the
    sparsity intervention, adaptive (c = |w|) and standard (c = 1). Same data and noise seed for all."""
    model, theta_zs, theta_ft = load_endpoints(world, run, runs_root)
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


def _stragglers_of(stragglers: pd.DataFrame, run: str) -> list[str]:
    return list(stragglers[stragglers["run"] == run]["layer"])


def run(p: Params) -> StepResults:
    """Sparsity in the straggler layers of the failure-mode runs: tables ``curves`` and ``summary`` (when
    a run is in the failure mode), ``f4_parts`` and ``sharpness`` (when a run is studied);
    ``info["runs"]`` names the runs studied, ``info["f4"]`` is F4 on these runs alone (the verdict the
    book reports is the evidence step's, :mod:`rftlib.steps.evidence`, from ``f4_parts``)."""
    w = load_world(p.world)
    summary = read_upstream(p.interpolate_dir, "summary", "interpolate", p.world)
    stragglers = read_upstream(p.stragglers_dir, "stragglers", "stragglers", p.world)
    runs = [r for r in select_runs(summary, "failure", p.max_runs) if r in set(stragglers["run"])]
    out = StepResults(w, info={"runs": runs})
    sp = pd.DataFrame(columns=EMPTY_SUMMARY)
    if runs:
        rows = pd.concat([sparsity_run(w, r, _stragglers_of(stragglers, r), p.ps, p.interventions, p.n_alpha,
                                       p.n_eval, p.runs_root, p.seed) for r in runs], ignore_index=True)
        sp = sparsity_summary(rows, w)
        out.tables |= {"curves": rows, "summary": sp}
    claim, parts = claim_f4(sp, w.name, p.interventions[0], n_boot=p.n_boot, seed=p.seed)
    out.info["parts"], out.info["f4"] = parts, claim
    out.tables["f4_parts"] = parts if not parts.empty else pd.DataFrame({"world": [w.name]})
    if runs:
        out.tables["sharpness"] = pd.concat([sparsity_sharpness(w, r, _stragglers_of(stragglers, r), p.sharpness_p,
                                                                p.interventions[0], p.rho, p.runs_root, p.seed)
                                             for r in runs], ignore_index=True)
    return out
