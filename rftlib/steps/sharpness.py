"""Step ``sharpness`` (claims F1–F3): whole-model and layer-wise sharpness of every θ(α), and how each
tracks mean OOD accuracy along the runs' interpolation paths.

Correlations are computed *within* each run (across its α points; Kendall τ-b) and combined across
runs (:func:`rftlib.core.stats.combine_within`: mean τ with a bootstrap interval over runs, a directional
Stouffer p-value and sign consistency), then judged with :mod:`rftlib.core.verdicts`' rules:

- F1 (whole-model sharpness is *not* a reliable predictor): ``expect="none"``;
- F2 (the straggler layers' sharpness *does* track OOD accuracy): ``expect="any"`` on the sharpness
  summed over each run's straggler layers;
- F3 (layer-wise sharpness correlates with OOD accuracy along RFT paths): ``expect="any"`` on the
  best layer, with a Bonferroni-corrected significance level (α / number of layers).

These within-run verdicts are the step's own look at its runs (``claims_f1_f3``; its notebook shows the
``correlations`` table); the verdicts the book reports come from the evidence step (:mod:`rftlib.steps.evidence`),
which reads this step's ``sharpness`` table and applies the population rules of the findings pages.

Example:
    >>> Params(rhos=[0.005, -1.0], rho_claims=0.01, kind="worse", interpolate_dir="/nonexistent")
    Traceback (most recent call last):
    ...
    rftlib.errors.ParameterError: bad parameters for notebooks/sharpness.ipynb: kind='worse' is unknown (did you mean 'worst'?); allowed: 'worst', 'average'; rhos[1]=-1.0 is out of range; allowed: a finite number > 0
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from rftlib.core.interpolation import Interpolator, alpha_grid
from rftlib.core.layers import GRANULARITIES, layer_groups
from rftlib.core.sharpness import KINDS, NORMS, layerwise_sharpness, sharpness
from rftlib.core.stats import combine_within, within_run
from rftlib.core.verdicts import Claim
from rftlib.errors import ParameterError
from rftlib.files.manifest import repo_path
from rftlib.progress import bar
from rftlib.steps import interpolate
from rftlib.steps.common import StepResults, load_endpoints, load_grid, load_theta_ft, read_upstream, sharpness_data
from rftlib.steps.fields import (check_on_alpha_grid, check_training_images, grid_param, n_boot_param, out_dir_param,
                                 runs_root_param, seed_param, world_param)
from rftlib.steps.parameters import Problems, StepParams, at_least, each_within, one_of, param, within
from rftlib.worlds.world import World, load_world

__all__ = ["Params", "attach_accuracy", "claims_f1_f3", "layer_correlations", "run", "sharpness_sweep",
           "straggler_sharpness"]


@dataclass(frozen=True)
class Params(StepParams):
    """Parameters of ``notebooks/sharpness.ipynb``."""

    STEP = "sharpness"
    world: str = world_param()
    interpolate_dir: str = param("", "results of the interpolation step: OOD accuracy per run and alpha "
                                     "(empty: book/results/<world>-interpolate)")
    stragglers_dir: str = param("", "results of the straggler step, which marks straggler layers "
                                    "(empty: book/results/<world>-stragglers)")
    grid: str = grid_param("grid file whose runs are measured")
    runs_root: str = runs_root_param()
    n_alpha: int = param(6, "alphas per run (must lie on the interpolation step's grid)", check=at_least(2))
    kind: str = param("worst", "worst or average", check=one_of(KINDS))
    norm: str = param("linf", "linf or l2", check=one_of(NORMS))
    adaptive: bool = param(True, "adaptive (budget relative to |w|) or standard")
    rhos: list[float] = param((0.004,), "sharpness radii (all reported)",
                              check=each_within(lambda r: r > 0, "a finite number > 0"))
    rho_claims: float = param(0.004, "the radius at which the claims are judged (one of rhos)",
                              check=within(lambda r: r > 0, "one of rhos"))
    n_examples: int = param(128, "training examples (no augmentation)", check=(at_least(1), check_training_images))
    m: int = param(128, "examples per batch (m-sharpness: max per batch, then mean)", check=at_least(1))
    n_iters: int = param(5, "ascent steps (worst) or noise draws (average) per batch", check=at_least(1))
    logit_norm: bool = param(True, "logit normalization before the cross-entropy")
    granularity: str = param("block", "what a layer is: block, module or tensor", check=one_of(GRANULARITIES))
    n_boot: int = n_boot_param()
    seed: int = seed_param("seed of the estimator and the bootstrap")
    out_dir: str = out_dir_param("sharpness")

    def check_together(self, p: Problems) -> None:
        v = p.values
        if p.ok("rhos", "rho_claims"):
            same = [r for r in v["rhos"] if math.isclose(v["rho_claims"], r, rel_tol=1e-12, abs_tol=0)]
            if not same:
                p.add("rho_claims", v["rho_claims"], "is not one of the radii measured", f"one of rhos={v['rhos']}")
            else:  # the claims filter the table on it: the very float measured
                object.__setattr__(self, "rho_claims", same[0])
        if p.ok("m", "n_examples") and v["m"] > v["n_examples"]:
            p.add("m", v["m"], f"exceeds n_examples={v['n_examples']} (a batch cannot be larger than the data)",
                  f"an integer in [1, {v['n_examples']}]")
        check_on_alpha_grid(p, v["interpolate_dir"], interpolate.Params.defaults()["n_alpha"],
                            f"rerun the interpolation step with n_alpha = {interpolate.Params.defaults()['n_alpha']}")


def sharpness_sweep(world: World, runs: Sequence[str], alphas: Sequence[float], rhos: Sequence[float],
                    runs_root: str | Path = "runs", n_examples: int = 256, granularity: str = "block",
                    layerwise: bool = True, progress: bool = True, **settings: Any) -> pd.DataFrame:
    """Sharpness of θ(α) for every run, α and ρ: the whole model (``layer = "all"``) and, with
    ``layerwise``, every layer alone (prefix-cached). θ(0) = θ_zs is shared by all runs and measured
    once. ``settings`` go to :func:`rftlib.core.sharpness.sharpness` (kind, norm, adaptive, n_iters, m, …)."""
    model, theta_zs, _ = load_endpoints(world)
    groups = layer_groups(model, granularity) if layerwise else {}
    data = sharpness_data(world, n_examples)
    rows: list[dict] = []
    zs_rows: list[dict] | None = None
    jobs = [(run, a) for run in runs for a in alphas]
    for run, a in bar(jobs, desc=f"sharpness {world.name}", disable=not progress, unit="model"):
        if a == 0.0 and zs_rows is not None:
            rows += [{**r, "run": run} for r in zs_rows]
            continue
        Interpolator(model, theta_zs, load_theta_ft(world, run, runs_root)).set_alpha(a)
        new = []
        for rho in rhos:
            if layerwise:
                results = layerwise_sharpness(model, data, groups, include_all=True, rho=rho, progress=False, **settings)
            else:
                results = [sharpness(model, data, "all", rho=rho, progress=False, **settings)]
            for r in results:
                new.append(r.to_row(world=world.name, run=run, alpha=a) | {
                    "err_gap": r.err_gap, "loss_at_w": r.loss_at_w, "rel_norm": r.rel_norm, "seconds": r.seconds})
        if a == 0.0:
            zs_rows = new
        rows += new
    return pd.DataFrame(rows)


def attach_accuracy(sharp: pd.DataFrame, curves: pd.DataFrame, world: World) -> pd.DataFrame:
    """Add ``ood_acc`` (mean over the world's OOD splits) and ``id_acc`` of the same (run, α)."""
    c = curves[curves["world"] == world.name]
    ood = c[c["split"].isin(list(world.ood_splits))].groupby(["run", "alpha"], as_index=False)["accuracy"].mean()
    idc = c[c["split"] == "id"][["run", "alpha", "accuracy"]]
    acc = ood.rename(columns={"accuracy": "ood_acc"}).merge(idc.rename(columns={"accuracy": "id_acc"}), on=["run", "alpha"])
    # α is read back from CSV (6 significant digits): join on a rounded key
    acc["_a"] = acc["alpha"].round(6)
    out = sharp.assign(_a=sharp["alpha"].round(6)).merge(acc.drop(columns="alpha"), on=["run", "_a"], how="left").drop(columns="_a")
    missing = out[out["ood_acc"].isna()][["run", "alpha"]].drop_duplicates()
    if len(missing):
        raise ParameterError(f"no interpolation results for (run, alpha) {missing.values.tolist()[:3]}…; the sharpness "
                             "alphas must lie on the interpolation step's alpha grid.")
    return out


def layer_correlations(table: pd.DataFrame, n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Per (layer, ρ): within-run Kendall τ(sharpness, OOD accuracy) combined across runs."""
    out = []
    for (layer, rho), sub in table.groupby(["layer", "rho"], sort=False):
        per_run = within_run(sub, "value", "ood_acc", by=("run",), n_boot=0, seed=seed)
        c = combine_within(per_run["kendall_tau"], per_run["kendall_p"], n_boot=n_boot, seed=seed)
        out.append({"world": sub["world"].iloc[0], "layer": layer, "rho": rho, **c})
    return pd.DataFrame(out)


def straggler_sharpness(table: pd.DataFrame, stragglers: pd.DataFrame | None) -> pd.DataFrame:
    """Per (run, α, ρ): the sharpness summed over that run's straggler layers (``layer = "stragglers"``).

    Runs without their own straggler analysis use the world's most frequent straggler layers."""
    if stragglers is None or stragglers.empty:
        return pd.DataFrame(columns=table.columns)
    common = stragglers["layer"].value_counts()
    k = int(stragglers.groupby("run").size().max())
    fallback = list(common.index[:k])
    per_run = {r: list(g["layer"]) for r, g in stragglers.groupby("run")}
    parts = []
    for run, sub in table[table["layer"] != "all"].groupby("run", sort=False):
        layers = per_run.get(run, fallback)
        s = sub[sub["layer"].isin(layers)].groupby(["world", "run", "alpha", "rho", "kind", "norm", "adaptive"],
                                                    as_index=False).agg(value=("value", "sum"), ood_acc=("ood_acc", "first"),
                                                                        id_acc=("id_acc", "first"))
        parts.append(s.assign(layer="stragglers", straggler_layers="+".join(layers)))
    return pd.concat(parts, ignore_index=True) if parts else pd.DataFrame(columns=table.columns)


def claims_f1_f3(table: pd.DataFrame, stragglers: pd.DataFrame | None, world: str, rho: float,
                 n_boot: int = 1000, seed: int = 0) -> tuple[list[Claim], pd.DataFrame]:
    """F1, F2 and F3 on one world at radius ``rho`` (see the module docstring for the rules)."""
    t = table[table["rho"] == rho]
    if t.empty:
        raise ParameterError(f"no sharpness rows at rho={rho}; measured radii: {sorted(table['rho'].unique())}.")
    corr = layer_correlations(t, n_boot=n_boot, seed=seed)
    claims = []
    whole = corr[corr["layer"] == "all"].iloc[0]
    claims.append(Claim.from_combined("F1", world, whole.to_dict(), f"mean within-run Kendall τ(whole-model sharpness, OOD acc), ρ={rho:g}",
                                      expect="none"))
    st = straggler_sharpness(t, stragglers)
    if not st.empty:
        c = layer_correlations(st, n_boot=n_boot, seed=seed).iloc[0]
        corr = pd.concat([corr, pd.DataFrame([c])], ignore_index=True)
        claims.append(Claim.from_combined("F2", world, c.to_dict(), f"mean within-run Kendall τ(straggler-layer sharpness, OOD acc), ρ={rho:g}",
                                          expect="any"))
    layers = corr[~corr["layer"].isin(["all", "stragglers"])]
    if len(layers):
        best = layers.loc[layers["stouffer_p"].fillna(1.0).idxmin()]
        n = len(layers)
        claims.append(Claim.from_combined("F3", world, best.to_dict(),
                                          f"best layer ({best['layer']}): mean within-run τ(layer sharpness, OOD acc), ρ={rho:g}, Bonferroni ×{n}",
                                          expect="any", alpha=0.05 / n))
    return claims, corr


def run(p: Params) -> StepResults:
    """Sharpness of every θ(α) of the grid's runs: tables ``sharpness`` and ``correlations`` (the
    within-run correlations per layer; the verdicts on F1–F3 are the evidence step's,
    :mod:`rftlib.steps.evidence`); ``info["stragglers"]`` is the straggler step's table (``None`` when
    it has not run)."""
    w = load_world(p.world)
    runs = [r.name for r in load_grid(p.grid)]
    curves = read_upstream(p.interpolate_dir, "curves", "interpolate", p.world)
    found = repo_path(p.stragglers_dir) / "stragglers.csv"
    stragglers = pd.read_csv(found) if found.is_file() else None
    sharp = sharpness_sweep(w, runs, alpha_grid(p.n_alpha), p.rhos, p.runs_root, p.n_examples, p.granularity,
                            kind=p.kind, norm=p.norm, adaptive=p.adaptive, n_iters=p.n_iters, m=p.m,
                            logit_norm=p.logit_norm, seed=p.seed)
    table = attach_accuracy(sharp, curves, w)
    _, corr = claims_f1_f3(table, stragglers, w.name, p.rho_claims, n_boot=p.n_boot, seed=p.seed)
    return StepResults(w, tables={"sharpness": table, "correlations": corr},
                       info={"stragglers": stragglers, "estimator_seconds": float(sharp["seconds"].sum())})
