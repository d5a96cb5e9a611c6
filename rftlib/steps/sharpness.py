"""The sharpness steps of the study (claims F1–F3): whole-model and layer-wise sharpness of every
θ(α), and how each tracks mean OOD accuracy along the runs' interpolation paths.

Correlations are computed *within* each run (across its α points; Kendall τ-b) and combined across
runs (:func:`rftlib.core.stats.combine_within`: mean τ with a bootstrap interval over runs, a directional
Stouffer p-value and sign consistency), then judged with :mod:`rftlib.book.claims`' rules:

- F1 (whole-model sharpness is *not* a reliable predictor): ``expect="none"``;
- F2 (the straggler layers' sharpness *does* track OOD accuracy): ``expect="any"`` on the sharpness
  summed over each run's straggler layers;
- F3 (layer-wise sharpness correlates with OOD accuracy along RFT paths): ``expect="any"`` on the
  best layer, with a Bonferroni-corrected significance level (α / number of layers).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

import pandas as pd

from rftlib.core.verdicts import Claim
from rftlib.errors import ParameterError
from rftlib.core.interpolation import Interpolator
from rftlib.core.layers import layer_groups
from rftlib.steps.layerwise import sharpness_data
from rftlib.progress import bar
from rftlib.core.sharpness import layerwise_sharpness
from rftlib.core.stats import combine_within, within_run
from rftlib.steps.common import load_theta_ft
from rftlib.worlds.world import World


def sharpness_sweep(world: World, runs: Sequence[str], alphas: Sequence[float], rhos: Sequence[float],
                    runs_root: str | Path = "runs", n_examples: int = 256, granularity: str = "block",
                    layerwise: bool = True, progress: bool = True, **settings: Any) -> pd.DataFrame:
    """Sharpness of θ(α) for every run, α and ρ: the whole model (``layer = "all"``) and, with
    ``layerwise``, every layer alone (prefix-cached). θ(0) = θ_zs is shared by all runs and measured
    once. ``settings`` go to :func:`rftlib.core.sharpness.sharpness` (kind, norm, adaptive, n_iters, m, …)."""
    if not rhos:
        raise ParameterError("rhos is empty: give at least one sharpness radius.")
    model = world.zeroshot_classifier()
    theta_zs = {k: v.clone() for k, v in model.state_dict().items()}
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
                from rftlib.core.sharpness import sharpness

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
