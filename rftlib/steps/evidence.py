"""Evidence across runs: the population study's statistics and claim rows, from the tidy result tables.

Every function takes the tidy tables the steps already write (``results.md``) and returns an
:class:`Evidence`: claim rows (:class:`~rftlib.core.verdicts.Claim`), the power table and the detail
table. The decision rules are the ones stated, before the population's results, on the findings
pages (``book/findings/f1.md`` *Decision rule for the population study*, ``f2-f3.md``, ``f4.md``,
``p1.md``); the statistics are in :mod:`rftlib.core.stats`.

Inputs (columns used):

- ``sharp`` (``<world>-sharpness/sharpness.csv``): ``run, alpha, layer, value, ood_acc`` and the
  variant columns ``kind, norm, adaptive, rho`` (one variant, or choose it with ``variant``);
- ``summary`` (``<world>-interpolate/summary.csv``): ``run, gain_over_zs, failure_mode,
  loss_barrier, acc_ood_best`` and the recipe columns (``lr, augment, epochs``, ... or ``recipe``);
  runs sharing every recipe column are seeds of one recipe, and the bootstrap resamples recipes;
- ``stragglers`` (``<world>-stragglers/stragglers.csv``): ``run, layer`` (the run's top-k set);
- ``f4_parts`` (``<world>-sparsity/f4_parts.csv``): ``run, p, gain_stragglers, gain_control,
  rescued_stragglers``.

Outputs, for the step to write into its results folder:

- ``claims``: one row per claim (``claims.csv`` through :func:`rftlib.book.claims.write_claims`);
- ``power`` (``power.csv``: ``claim, world, statistic, mde, n_runs``): for every verdict that rests
  on the absence of an effect, the smallest effect the design could have detected at 80 % power, in
  the units of the statistic (NaN: no effect of any size detectable, e.g. too few runs). The claims
  page prints it beside the verdict. It is a separate table because the claim row's columns are
  fixed;
- ``details`` (``evidence.csv``: ``claim, world, statistic, value, ci_low, ci_high, p_value,
  n_runs, verdict``): the reported-but-not-deciding statistics (within-run τ, partial τ given α, endpoint τ
  with the OOD gain, AUROC for failure vs success, the F2 contrast, each P1 part); ``verdict`` is
  ``reported`` for a statistic that does not decide, else the part's verdict (P1).

Example:
    >>> sharp, summary = synthetic_tables(n_runs=8, seed=0)
    >>> ev = f1_evidence("w", sharp, summary, n_boot=200, n_perm=199)
    >>> ev.claims[0].claim, ev.claims[0].verdict in ("supported", "not supported", "mixed")
    ('F1', True)
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
from scipy import stats as sps

from rftlib.core.stats import (across_run_test, auroc, bootstrap_replicates, combine_within, mde_across_runs, mde_mean,
                               mean_pairwise_jaccard, paired_contrast, partial_kendall, percentile_interval)
from rftlib.core.verdicts import (POWER_COLUMNS, Claim, combine_verdicts, untestable, verdict_from_combined, verdict_from_interval,
                                  verdict_with_contrast)
from rftlib.errors import ParameterError
from rftlib.files.manifest import repo_path
from rftlib.steps.common import StepResults
from rftlib.steps.fields import out_dir_param, seed_param, world_param
from rftlib.steps.parameters import Problems, StepParams, at_least, param, within
from rftlib.worlds.world import load_world

__all__ = [
    "Evidence",
    "MIN_RUNS",
    "RECIPE_COLUMNS",
    "recipes",
    "path_matrices",
    "f1_evidence",
    "f2_evidence",
    "f3_evidence",
    "f4_evidence",
    "p1_evidence",
    "straggler_stability",
    "study_evidence",
    "synthetic_tables",
    "Params",
    "UPSTREAM",
    "read_inputs",
    "run",
]

#: Fewest runs for an across-run claim (with 4 runs no Kendall τ reaches p < 0.05).
MIN_RUNS = 5
#: Columns of ``summary`` that define a recipe (runs equal in all of them are seeds of one recipe).
RECIPE_COLUMNS: tuple[str, ...] = ("recipe", "lr", "augment", "epochs", "label_smoothing", "weight_decay",
                                   "batch_size", "warmup_steps", "grad_clip", "mode", "n_train")
DETAIL_COLUMNS = ("claim", "world", "statistic", "value", "ci_low", "ci_high", "p_value", "n_runs", "verdict")


@dataclass
class Evidence:
    """Claim rows, the power table and the detail table of one or more claims on one world."""

    claims: list[Claim] = field(default_factory=list)
    power: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=list(POWER_COLUMNS)))
    details: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=list(DETAIL_COLUMNS)))

    def __add__(self, other: "Evidence") -> "Evidence":
        cat = lambda a, b: pd.concat([d for d in (a, b) if len(d)], ignore_index=True) if len(a) or len(b) else a  # noqa: E731
        return Evidence(self.claims + other.claims, cat(self.power, other.power), cat(self.details, other.details))


def _detail(claim: str, world: str, statistic: str, r: Mapping[str, Any], n_runs: int) -> dict[str, Any]:
    return {"claim": claim, "world": world, "statistic": statistic, "value": float(r.get("value", r.get("mean", math.nan))),
            "ci_low": float(r.get("ci_low", math.nan)), "ci_high": float(r.get("ci_high", math.nan)),
            "p_value": float(r.get("p_value", math.nan)), "n_runs": int(n_runs), "verdict": "reported"}


def _frames(power: list[dict], details: list[dict]) -> tuple[pd.DataFrame, pd.DataFrame]:
    return (pd.DataFrame(power, columns=list(POWER_COLUMNS)), pd.DataFrame(details, columns=list(DETAIL_COLUMNS)))


# ----------------------------------------------------------------------------------------------
# tables → matrices
# ----------------------------------------------------------------------------------------------

def _need(df: pd.DataFrame | None, cols: Sequence[str], what: str) -> pd.DataFrame:
    if df is None or not isinstance(df, pd.DataFrame):
        raise ParameterError(f"{what} must be a DataFrame; got {type(df).__name__}.")
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise ParameterError(f"{what} lacks columns {missing}; it has {list(df.columns)}.")
    return df


def recipes(summary: pd.DataFrame) -> pd.Series:
    """Recipe label per run (index: run): the values of the :data:`RECIPE_COLUMNS` present, joined.

    Example:
        >>> s = pd.DataFrame({"run": ["a-s0", "a-s1", "b-s0"], "lr": [1e-3, 1e-3, 1e-4], "augment": "none"})
        >>> recipes(s).tolist()
        ['lr=0.001|augment=none', 'lr=0.001|augment=none', 'lr=0.0001|augment=none']
    """
    _need(summary, ["run"], "summary")
    cols = [c for c in RECIPE_COLUMNS if c in summary.columns]
    if not cols:
        return pd.Series(summary["run"].astype(str).to_numpy(), index=summary["run"].to_numpy())
    lab = summary[cols].astype(str).apply(lambda r: "|".join(f"{c}={v}" for c, v in r.items()), axis=1)
    return pd.Series(lab.to_numpy(), index=summary["run"].to_numpy())


def _variant(sharp: pd.DataFrame, variant: Mapping[str, Any] | None) -> pd.DataFrame:
    cols = [c for c in ("kind", "norm", "adaptive", "rho") if c in sharp.columns]
    t = sharp
    for k, v in (variant or {}).items():
        if k not in cols:
            raise ParameterError(f"variant key {k!r} is not a variant column; use some of {cols}.")
        t = t[np.isclose(t[k], v)] if k == "rho" else t[t[k] == v]
    found = t[cols].drop_duplicates()
    if len(found) != 1:
        raise ParameterError(f"sharp holds {len(found)} sharpness variants after variant={dict(variant or {})}: "
                             f"{found.to_dict('records')[:4]}; choose one with variant={{'rho': ..., ...}}.")
    return t


def path_matrices(sharp: pd.DataFrame, layers: str | Sequence[str] | Mapping[str, Sequence[str]] = "all",
                  variant: Mapping[str, Any] | None = None) -> tuple[list[str], list[float], np.ndarray, np.ndarray]:
    """``(runs, alphas, X, Y)``: sharpness X and OOD accuracy Y as runs × α matrices.

    ``layers``: one layer name, a list (their sharpness summed), or run → list (each run its own set,
    e.g. its straggler layers). Only runs and α points measured for every layer asked are kept.

    Example:
        >>> sharp, _ = synthetic_tables(n_runs=3, seed=0)
        >>> runs, alphas, X, Y = path_matrices(sharp, "all")
        >>> X.shape, alphas[0], alphas[-1]
        ((3, 6), 0.0, 1.0)
    """
    _need(sharp, ["run", "alpha", "layer", "value", "ood_acc"], "sharp")
    t = _variant(sharp, variant)
    runs = list(dict.fromkeys(t["run"]))
    per_run = layers if isinstance(layers, Mapping) else {r: [layers] if isinstance(layers, str) else list(layers) for r in runs}
    parts = []
    for run in runs:
        want = list(per_run.get(run, ()))
        sub = t[(t["run"] == run) & t["layer"].isin(want)]
        if not want or sub.empty:
            continue
        g = sub.groupby("alpha").agg(value=("value", "sum"), ood=("ood_acc", "first"), n=("layer", "nunique"))
        parts.append(g[g["n"] == len(set(want))].assign(run=run).reset_index())
    if not parts:
        raise ParameterError(f"sharp has no rows for layers={layers!r}; its layers are {sorted(t['layer'].unique())}.")
    long = pd.concat(parts, ignore_index=True)
    X = long.pivot(index="run", columns="alpha", values="value").dropna(axis=1)
    Y = long.pivot(index="run", columns="alpha", values="ood").loc[X.index, X.columns]
    order = [r for r in runs if r in X.index]
    return order, [float(a) for a in X.columns], X.loc[order].to_numpy(float), Y.loc[order].to_numpy(float)


def _clusters(runs: Sequence[str], summary: pd.DataFrame | None) -> np.ndarray | None:
    if summary is None:
        return None
    lab = recipes(summary)
    c = np.asarray([lab.get(r, r) for r in runs])
    return None if len(set(c)) == len(c) else c


# ----------------------------------------------------------------------------------------------
# F1, F2, F3
# ----------------------------------------------------------------------------------------------

def _secondary(claim: str, world: str, label: str, runs: list[str], alphas: list[float], X: np.ndarray, Y: np.ndarray,
               summary: pd.DataFrame | None, clusters: np.ndarray | None, n_boot: int, seed: int) -> list[dict]:
    """Within-run τ combined, pooled partial τ given α, endpoint τ with the OOD gain, AUROC."""
    out = []
    if len(alphas) >= 3:
        taus = [sps.kendalltau(X[i], Y[i], variant="b") for i in range(len(runs))]
        c = combine_within([t.statistic for t in taus], [t.pvalue for t in taus], n_boot=n_boot, seed=seed)
        out.append(_detail(claim, world, f"mean within-run τ({label}, OOD acc)", {**c, "p_value": c["stouffer_p"]}, len(runs)))
        a = np.broadcast_to(np.asarray(alphas), X.shape)
        pt = partial_kendall(X.ravel(), Y.ravel(), a.ravel())
        boot = bootstrap_replicates(lambda r: partial_kendall(X[r].ravel(), Y[r].ravel(), a[r].ravel()), len(runs),
                                    min(n_boot, 300), seed, clusters)
        lo, hi = percentile_interval(boot)
        out.append(_detail(claim, world, f"pooled partial τ({label}, OOD acc | α)", {"value": pt, "ci_low": lo, "ci_high": hi}, len(runs)))
    if summary is not None and {"gain_over_zs", "failure_mode"} <= set(summary.columns) and len(runs) >= 3:
        out += _endpoint(claim, world, label, "OOD gain over zero-shot", runs, alphas, X, summary, clusters, n_boot, seed)
    return out


def _endpoint(claim: str, world: str, label: str, gain: str, runs: list[str], alphas: list[float], X: np.ndarray,
              summary: pd.DataFrame, clusters: np.ndarray | None, n_boot: int, seed: int, nan_auroc: bool = True) -> list[dict]:
    """Does the sharpness at θ_ft (α = 1) predict the run's OOD gain (τ across runs) and failure (AUROC)?
    ``nan_auroc``: report the AUROC also when it is undefined (one class only)."""
    s, end, at = summary.set_index("run").loc[runs], X[:, -1], f"at α={alphas[-1]:g}"
    r = across_run_test(end, s["gain_over_zs"].to_numpy(float), clusters, n_boot=n_boot, n_perm=999, seed=seed)
    a = auroc(s["failure_mode"].astype(bool).to_numpy(), end, clusters, n_boot=n_boot, seed=seed)
    return [_detail(claim, world, f"τ across runs({label} {at}, {gain})", r, len(runs))] + (
        [_detail(claim, world, f"AUROC({label} {at}; failure vs success)", a, len(runs))] if nan_auroc or np.isfinite(a["value"]) else [])


def _tau_claim(claim: str, world: str, label: str, r: Mapping[str, Any], expect: str, alpha: float = 0.05) -> Claim:
    v = verdict_from_interval(r["ci_low"], r["ci_high"], r["p_value"], expect=expect, alpha=alpha)
    stat = f"same-α τ across runs({label}, OOD acc), mean over {r['n_alpha']} α, {r['n_runs']} runs"
    return Claim(claim, world, stat, r["value"], r["ci_low"], r["ci_high"], r["p_value"], v)


def f1_evidence(world: str, sharp: pd.DataFrame, summary: pd.DataFrame | None = None,
                variant: Mapping[str, Any] | None = None, n_boot: int = 2000, n_perm: int = 1999,
                seed: int = 0) -> Evidence:
    """F1: does whole-model sharpness *fail* to predict OOD accuracy? (rule: ``book/findings/f1.md``).

    Example:
        >>> sharp, summary = synthetic_tables(n_runs=4, seed=0)
        >>> f1_evidence("w", sharp, summary, n_boot=50, n_perm=99).claims[0].verdict
        'untestable'
    """
    runs, alphas, X, Y = path_matrices(sharp, "all", variant)
    if len(runs) < MIN_RUNS:
        return Evidence([untestable("F1", world, f"{len(runs)} runs with whole-model sharpness (needs {MIN_RUNS})")])
    cl = _clusters(runs, summary)
    r = across_run_test(X, Y, cl, n_boot=n_boot, n_perm=n_perm, seed=seed)
    claim = _tau_claim("F1", world, "whole-model sharpness", r, "none")
    power = [{"claim": "F1", "world": world, "statistic": claim.statistic, "n_runs": len(runs),
              "mde": mde_across_runs(X, Y, n_perm=n_perm, seed=seed)}] if claim.verdict == "supported" else []
    det = _secondary("F1", world, "whole-model sharpness", runs, alphas, X, Y, summary, cl, n_boot, seed)
    return Evidence([claim], *_frames(power, det))


def _straggler_sets(stragglers: pd.DataFrame) -> dict[str, list[str]]:
    _need(stragglers, ["run", "layer"], "stragglers")
    return {r: list(g["layer"]) for r, g in stragglers.groupby("run", sort=False)}


def _per_run_layers(runs: Sequence[str], stragglers: pd.DataFrame) -> dict[str, list[str]]:
    """Each run's straggler set; runs without one get the world's k most frequent straggler layers."""
    sets = _straggler_sets(stragglers)
    k = max(len(s) for s in sets.values())
    fallback = list(stragglers["layer"].value_counts(sort=True).index[:k])
    return {r: sets.get(r, fallback) for r in runs}


def f2_evidence(world: str, sharp: pd.DataFrame, stragglers: pd.DataFrame | None, summary: pd.DataFrame | None = None,
                variant: Mapping[str, Any] | None = None, n_boot: int = 2000, n_perm: int = 1999,
                seed: int = 0) -> Evidence:
    """F2: do straggler layers predict OOD accuracy, and better than the whole model? (``f2-f3.md``).

    Example:
        >>> sharp, summary = synthetic_tables(n_runs=8, seed=0)
        >>> st = pd.DataFrame({"run": ["r0", "r0"], "layer": ["block1", "head"]})
        >>> ev = f2_evidence("w", sharp, st, summary, n_boot=100, n_perm=99)
        >>> ev.claims[0].claim, list(ev.details["statistic"].str.startswith("contrast"))[:1]
        ('F2', [True])
    """
    if stragglers is None or stragglers.empty:
        return Evidence([untestable("F2", world, "no straggler layers found for this world")])
    runs_all = list(dict.fromkeys(_variant(sharp, variant)["run"]))
    layers = _per_run_layers(runs_all, stragglers)
    runs, alphas, Xs, Y = path_matrices(sharp, layers, variant)
    runs_w, alphas_w, Xw, _ = path_matrices(sharp, "all", variant)
    if runs_w != runs or alphas_w != alphas:
        raise ParameterError("straggler and whole-model sharpness cover different runs or α points; the contrast needs both.")
    if len(runs) < MIN_RUNS:
        return Evidence([untestable("F2", world, f"{len(runs)} runs with straggler sharpness (needs {MIN_RUNS})")])
    cl = _clusters(runs, summary)
    r = across_run_test(Xs, Y, cl, n_boot=n_boot, n_perm=n_perm, seed=seed)
    d = paired_contrast(Xs, Xw, Y, cl, n_boot=n_boot, seed=seed)
    base = verdict_from_interval(r["ci_low"], r["ci_high"], r["p_value"], expect="any")
    v = verdict_with_contrast(base, d["ci_low"], d["ci_high"])
    stat = (f"same-α τ across runs(straggler-layer sharpness, OOD acc), {r['n_runs']} runs; "
            f"contrast |τ_strag| − |τ_whole| = {d['value']:.3f} [{d['ci_low']:.3f}, {d['ci_high']:.3f}]")
    claim = Claim("F2", world, stat, r["value"], r["ci_low"], r["ci_high"], r["p_value"], v)
    power = [{"claim": "F2", "world": world, "statistic": "same-α τ(straggler-layer sharpness, OOD acc)", "n_runs": len(runs),
              "mde": mde_across_runs(Xs, Y, n_perm=n_perm, seed=seed)}] if v == "not supported" and _absent(r["ci_low"], r["ci_high"]) else []
    det = [_detail("F2", world, "contrast |τ_strag| − |τ_whole| (paired bootstrap)", d, len(runs))]
    det += _secondary("F2", world, "straggler-layer sharpness", runs, alphas, Xs, Y, summary, cl, n_boot, seed)
    return Evidence([claim], *_frames(power, det))


def f3_evidence(world: str, sharp: pd.DataFrame, summary: pd.DataFrame | None = None,
                variant: Mapping[str, Any] | None = None, n_boot: int = 2000, n_perm: int = 1999,
                seed: int = 0) -> Evidence:
    """F3: does layer-wise sharpness correlate with OOD accuracy along the paths? (``f2-f3.md``).

    Example:
        >>> sharp, summary = synthetic_tables(n_runs=6, seed=0)
        >>> ev = f3_evidence("w", sharp, summary, n_boot=100, n_perm=99)
        >>> ev.claims[0].statistic.startswith("best layer")
        True
    """
    t = _variant(sharp, variant)
    layers = [l for l in dict.fromkeys(t["layer"]) if l != "all"]
    if not layers:
        return Evidence([untestable("F3", world, "no layer-wise sharpness")])
    mats = {l: path_matrices(t, l) for l in layers}
    n_runs, n_alpha = min(len(m[0]) for m in mats.values()), min(len(m[1]) for m in mats.values())
    if n_runs < 2 or n_alpha < 4:
        return Evidence([untestable("F3", world, f"{n_runs} runs × {n_alpha} α points (needs 2 × 4)")])
    a_b = 0.05 / len(layers)
    comb = {}
    for l, (runs, _, X, Y) in mats.items():
        taus = [sps.kendalltau(X[i], Y[i], variant="b") for i in range(len(runs))]
        comb[l] = combine_within([x.statistic for x in taus], [x.pvalue for x in taus], n_boot=n_boot, seed=seed, ci=1 - a_b)
    best = max(layers, key=lambda l: abs(np.nan_to_num(comb[l]["mean"])))
    runs, _, X, Y = mats[best]
    within = verdict_from_combined(comb[best], expect="any", alpha=a_b)
    if len(runs) >= MIN_RUNS:
        r = across_run_test(X, Y, _clusters(runs, summary), n_boot=n_boot, n_perm=n_perm, seed=seed, ci=1 - a_b)
        across = verdict_from_interval(r["ci_low"], r["ci_high"], r["p_value"], expect="any", alpha=a_b)
    else:
        r, across = None, "untestable"
    c = comb[best]
    v = combine_verdicts([within, across])
    if v == "supported" and r is not None and np.sign(c["mean"]) != np.sign(r["value"]):
        v = "mixed"  # both parts significant, but of opposite signs (f2-f3.md: "same sign")
    stat = (f"best layer ({best}): mean within-run τ(layer sharpness, OOD acc), Bonferroni ×{len(layers)}; "
            f"same-α part {across}")
    claim = Claim("F3", world, stat, c["mean"], c["ci_low"], c["ci_high"], c["stouffer_p"], v)
    det = [_detail("F3", world, f"mean within-run τ({l} sharpness, OOD acc)", {**comb[l], "p_value": comb[l]["stouffer_p"]},
                   comb[l]["n_runs_used"]) for l in layers]
    det += _endpoint_rows(world, mats, summary, n_boot, seed)
    power = []
    if r is not None:
        det.append(_detail("F3", world, f"same-α τ across runs({best} sharpness, OOD acc)", r, len(runs)))
        if v == "not supported":
            power.append({"claim": "F3", "world": world, "statistic": f"same-α τ({best} sharpness, OOD acc)",
                          "n_runs": len(runs), "mde": mde_across_runs(X, Y, alpha=a_b, n_perm=n_perm, seed=seed)})
    return Evidence([claim], *_frames(power, det))


def _endpoint_rows(world: str, mats: Mapping[str, tuple], summary: pd.DataFrame | None, n_boot: int,
                   seed: int) -> list[dict]:
    """Per layer: does its sharpness at θ_ft predict the run's OOD gain (τ) and failure (AUROC)?"""
    if summary is None or not {"gain_over_zs", "failure_mode"} <= set(summary.columns):
        return []
    return [row for layer, (runs, alphas, X, _) in mats.items()
            if len(runs) >= MIN_RUNS and set(runs) <= set(summary["run"])
            for row in _endpoint("F3", world, f"{layer} sharpness", "OOD gain", runs, alphas, X, summary,
                                 _clusters(runs, summary), n_boot, seed, nan_auroc=False)]


# ----------------------------------------------------------------------------------------------
# F4, P1
# ----------------------------------------------------------------------------------------------

def _absent(lo: float, hi: float) -> bool:
    """The interval contains 0: the verdict rests on the absence of an effect (so it gets a power row)."""
    return not (lo > 0 or hi < 0)


def f4_evidence(world: str, summary: pd.DataFrame, f4_parts: pd.DataFrame | None, n_boot: int = 2000,
                seed: int = 0) -> Evidence:
    """F4: does sparsifying straggler layers rescue failure-mode runs beyond a control? (``f4.md``).

    Example:
        >>> s = pd.DataFrame({"run": ["a", "b"], "failure_mode": [False, False]})
        >>> f4_evidence("w", s, None).claims[0].verdict
        'untestable'
    """
    _need(summary, ["run", "failure_mode"], "summary")
    if not summary["failure_mode"].astype(bool).any():
        return Evidence([untestable("F4", world, "no run in the failure mode: nothing to rescue")])
    if f4_parts is None or f4_parts.empty or "gain_stragglers" not in f4_parts.columns:  # the sparsity step's placeholder
        return Evidence([untestable("F4", world, "no sparsity results for the failure-mode runs")])
    _need(f4_parts, ["run", "gain_stragglers", "gain_control", "rescued_stragglers"], "f4_parts")
    d = (f4_parts["gain_stragglers"] - f4_parts["gain_control"]).to_numpy(float)
    lab = recipes(summary)
    cl = np.asarray([f"{lab.get(r, r)}" for r in f4_parts["run"]])
    lo, hi = percentile_interval(bootstrap_replicates(lambda i: d[i].mean(), d.size, n_boot, seed, cl))
    rescued = int(f4_parts["rescued_stragglers"].astype(bool).sum())
    if rescued == 0 or (np.isfinite(hi) and hi < 0):
        v = "not supported"
    elif np.isfinite(lo) and lo > 0:
        v = "supported"
    else:
        v = "mixed"
    stat = f"mean Δ OOD gain, stragglers − control, over {len(d)} (run, p); straggler rescues {rescued}"
    claim = Claim("F4", world, stat, float(d.mean()), lo, hi, math.nan, v)
    per_run = pd.Series(d).groupby(f4_parts["run"].to_numpy()).mean().to_numpy()
    power = [{"claim": "F4", "world": world, "statistic": "mean Δ OOD gain, stragglers − control", "n_runs": len(per_run),
              "mde": mde_mean(per_run, seed=seed)}] if v == "not supported" and not hi < 0 else []
    return Evidence([claim], *_frames(power, []))


def _no_aug(v: Any) -> bool:
    return str(v).strip().lower() in ("none", "false", "0", "", "no", "off", "nan")


def _p1_tau(x: np.ndarray, y: np.ndarray, cl: np.ndarray | None, n_boot: int,
            seed: int) -> tuple[dict, str, dict | None]:
    r = across_run_test(x, y, cl, n_boot=n_boot, n_perm=1999, seed=seed)
    v = verdict_from_interval(r["ci_low"], r["ci_high"], r["p_value"], expect="negative")
    pw = None
    if v == "not supported" and _absent(r["ci_low"], r["ci_high"]):
        pw = {"mde": mde_across_runs(x, y, seed=seed)}
    return r, v, pw


def p1_evidence(world: str, summary: pd.DataFrame, n_boot: int = 2000, seed: int = 0) -> Evidence:
    """P1's four parts over the runs of a world, and their combined verdict (``p1.md``).

    Example:
        >>> _, summary = synthetic_tables(n_runs=12, seed=0)
        >>> ev = p1_evidence("w", summary, n_boot=100)
        >>> ev.claims[0].claim, len(ev.details)
        ('P1', 4)
    """
    s = _need(summary, ["run", "failure_mode", "gain_over_zs", "loss_barrier", "acc_ood_best"], "summary")
    n, cl = len(s), _clusters(list(s["run"]), s)
    parts, power = [], []
    n_fail = int(s["failure_mode"].astype(bool).sum())
    v1 = "untestable" if n < 2 else ("supported" if n_fail else "not supported")
    parts.append(({"claim": "P1", "world": world, "statistic": f"part 1: share of runs in the failure mode ({n_fail}/{n})",
                   "value": n_fail / max(n, 1), "ci_low": math.nan, "ci_high": math.nan, "p_value": math.nan, "n_runs": n,
                   "verdict": v1}, v1))
    if n >= MIN_RUNS:
        r, v, pw = _p1_tau(s["loss_barrier"].to_numpy(float), s["gain_over_zs"].to_numpy(float), cl, n_boot, seed)
        parts.append((_detail("P1", world, "part 2: τ across runs(loss barrier, OOD gain)", r, n), v))
        if pw:
            power.append({"claim": "P1", "world": world, "statistic": "part 2: τ(loss barrier, OOD gain)", "n_runs": n, **pw})
    else:
        parts.append((_detail("P1", world, f"part 2: untestable with {n} runs", {}, n), "untestable"))
    parts.append(_p1_augment(world, s, n_boot, seed, power))
    parts.append(_p1_lr(world, s, cl, n_boot, seed, power))
    v = combine_verdicts([p for _, p in parts])
    details = pd.DataFrame([{**d, "verdict": p} for d, p in parts])
    head = details.iloc[1]
    claim = Claim("P1", world, f"τ(barrier, OOD gain); verdict combines {len(parts)} parts",
                  float(np.nan_to_num(head["value"])), head["ci_low"], head["ci_high"], head["p_value"], v)
    return Evidence([claim], pd.DataFrame(power, columns=list(POWER_COLUMNS)), details)


def _aug_differences(s: pd.DataFrame) -> np.ndarray | None:
    """Per learning rate, mean best OOD accuracy without augmentation minus with it (``None``: one arm only).

    Example:
        >>> s = pd.DataFrame({"lr": [1, 1, 2], "augment": ["none", "strong", "none"], "acc_ood_best": [0.6, 0.5, 0.7]})
        >>> _aug_differences(s).round(3).tolist()
        [0.1]
    """
    arm = s["augment"].map(_no_aug)
    means = s.assign(arm=arm).groupby(["lr", "arm"])["acc_ood_best"].mean().unstack("arm")
    if True not in means or False not in means:
        return None
    return (means[True] - means[False]).dropna().to_numpy(float)


def _p1_augment(world: str, s: pd.DataFrame, n_boot: int, seed: int, power: list) -> tuple[dict, str]:
    if "augment" not in s or "lr" not in s:
        return _detail("P1", world, "part 3: untestable (no augment/lr columns)", {}, len(s)), "untestable"
    d = _aug_differences(s)
    if d is None:
        return _detail("P1", world, "part 3: untestable (runs of one augmentation arm only)", {}, len(s)), "untestable"
    if d.size == 0:
        return _detail("P1", world, "part 3: untestable (no learning rate with both arms)", {}, len(s)), "untestable"
    def mean_difference(idx: np.ndarray) -> float:  # on a resample of runs (by recipe); NaN: an arm is missing
        b = _aug_differences(s.iloc[idx])
        return float(b.mean()) if b is not None and b.size else math.nan
    boot = bootstrap_replicates(mean_difference, len(s), n_boot, seed, _clusters(list(s["run"]), s))
    lo, hi = percentile_interval(boot) if np.isfinite(boot).sum() >= 2 else (math.nan, math.nan)
    v = verdict_from_interval(lo, hi, None, expect="positive") if np.isfinite(lo) else "untestable"
    if v == "not supported" and _absent(lo, hi):
        power.append({"claim": "P1", "world": world, "statistic": "part 3: mean Δ best OOD acc (no aug − aug)",
                      "n_runs": len(s), "mde": mde_mean(d, seed=seed)})
    return _detail("P1", world, f"part 3: mean over {d.size} lr of Δ best OOD acc (no aug − aug)",
                   {"value": d.mean(), "ci_low": lo, "ci_high": hi}, len(s)), v


def _p1_lr(world: str, s: pd.DataFrame, cl: np.ndarray | None, n_boot: int, seed: int, power: list) -> tuple[dict, str]:
    if "lr" not in s or s["lr"].nunique() < 2 or len(s) < MIN_RUNS:
        return _detail("P1", world, "part 4: untestable (needs ≥ 2 learning rates and 5 runs)", {}, len(s)), "untestable"
    key = s["augment"].map(_no_aug) if "augment" in s else pd.Series(True, index=s.index)
    y = (s["acc_ood_best"] - s.groupby(key)["acc_ood_best"].transform("mean")).to_numpy(float)
    r, v, pw = _p1_tau(np.log(s["lr"].to_numpy(float)), y, cl, n_boot, seed)
    if pw:
        power.append({"claim": "P1", "world": world, "statistic": "part 4: τ(lr, best OOD acc centred per augmentation)",
                      "n_runs": len(s), **pw})
    return _detail("P1", world, "part 4: τ across runs(lr, best OOD acc centred per augmentation)", r, len(s)), v


# ----------------------------------------------------------------------------------------------
# straggler stability, everything at once, synthetic tables
# ----------------------------------------------------------------------------------------------

def _chance_jaccard(k: int, n_layers: int) -> float:
    """Expected Jaccard index of two independent random k-sets out of ``n_layers`` (hypergeometric)."""
    if k <= 0 or n_layers < k:
        return math.nan
    i = np.arange(0, k + 1)
    p = sps.hypergeom(n_layers, k, k).pmf(i)
    return float(np.sum(p * i / (2 * k - i)))


def straggler_stability(stragglers: pd.DataFrame, summary: pd.DataFrame | None = None,
                        layers: Sequence[str] | None = None) -> pd.DataFrame:
    """Mean pairwise Jaccard index of the runs' straggler sets: between seeds of one recipe, between
    recipes, and the chance level of random sets of the same size.

    Returns a table with ``comparison`` (``seeds of one recipe`` / ``across recipes`` / ``chance``),
    ``jaccard`` and ``n_pairs``. ``layers``: the candidate layers (for the chance level; default those
    seen in ``stragglers``).

    Example:
        >>> st = pd.DataFrame({"run": ["a0", "a0", "a1", "a1", "b0", "b0"],
        ...                    "layer": ["x", "y", "x", "y", "x", "z"]})
        >>> s = pd.DataFrame({"run": ["a0", "a1", "b0"], "lr": [1, 1, 2]})
        >>> straggler_stability(st, s, layers=list("xyzw"))["jaccard"].round(3).tolist()
        [1.0, 0.333, 0.389]
    """
    sets = {r: frozenset(v) for r, v in _straggler_sets(stragglers).items()}
    lab = recipes(summary) if summary is not None else pd.Series({r: r for r in sets})
    runs = list(sets)
    within, across = [], []
    for i, a in enumerate(runs):
        for b in runs[i + 1:]:
            (within if lab.get(a, a) == lab.get(b, b) else across).append(mean_pairwise_jaccard([sets[a], sets[b]]))
    k = int(round(np.mean([len(s) for s in sets.values()]))) if sets else 0
    n_layers = len(layers) if layers is not None else len(set().union(*sets.values())) if sets else 0
    rows = [("seeds of one recipe", within), ("across recipes", across)]
    out = [{"comparison": c, "jaccard": float(np.mean(v)) if v else math.nan, "n_pairs": len(v)} for c, v in rows]
    out.append({"comparison": "chance", "jaccard": _chance_jaccard(k, n_layers), "n_pairs": 0})
    return pd.DataFrame(out)


def study_evidence(world: str, tables: Mapping[str, pd.DataFrame | None], variant: Mapping[str, Any] | None = None,
                   n_boot: int = 2000, n_perm: int = 1999, seed: int = 0) -> Evidence:
    """Every claim a world's tables can speak to: ``tables`` maps ``sharpness``, ``summary``,
    ``stragglers``, ``f4_parts`` to their DataFrames (missing or None: the claims that need them are
    left out, except F4, which is untestable without failure-mode runs).

    Example:
        >>> sharp, summary = synthetic_tables(n_runs=6, seed=0)
        >>> ev = study_evidence("w", {"sharpness": sharp, "summary": summary}, n_boot=50, n_perm=99)
        >>> [c.claim for c in ev.claims]
        ['F1', 'F3', 'F4', 'P1']
    """
    sharp, summary = tables.get("sharpness"), tables.get("summary")
    st, f4 = tables.get("stragglers"), tables.get("f4_parts")
    ev = Evidence()
    kw = {"variant": variant, "n_boot": n_boot, "n_perm": n_perm, "seed": seed}
    if sharp is not None:
        ev = ev + f1_evidence(world, sharp, summary, **kw)
        if st is not None:
            ev = ev + f2_evidence(world, sharp, st, summary, **kw)
        ev = ev + f3_evidence(world, sharp, summary, **kw)
    if summary is not None:
        ev = ev + f4_evidence(world, summary, f4, n_boot=n_boot, seed=seed)
        ev = ev + p1_evidence(world, summary, n_boot=n_boot, seed=seed)
    return ev


def synthetic_tables(n_runs: int = 8, seed: int = 0, n_seeds: int = 1, effect: float = 0.0,
                     layers: Sequence[str] = ("embed", "block0", "block1", "head")) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Tidy ``sharpness`` and ``summary`` tables of a made-up world (for tests and examples).

    Runs differ by learning rate and augmentation (``n_seeds`` seeds each); ``effect`` plants an
    across-run association between layer ``block1``'s sharpness and OOD accuracy at the same α.

    Example:
        >>> sharp, summary = synthetic_tables(n_runs=4, n_seeds=2)
        >>> len(summary), summary["run"].tolist()[:2]
        (4, ['r0', 'r1'])
    """
    rng = np.random.default_rng(seed)
    alphas = np.round(np.linspace(0, 1, 6), 2)
    rows, summ = [], []
    for i in range(n_runs):
        rec = i // n_seeds
        lr, aug = [1e-4, 3e-4, 1e-3][rec % 3], "none" if (rec // 3) % 2 == 0 else "strong"
        latent = rng.normal()
        ood = 0.5 + 0.05 * np.sin(np.pi * alphas) * (1 + 0.3 * latent) - 0.02 * alphas + 0.003 * rng.normal(size=alphas.size)
        ood[0] = 0.5
        for layer in (*layers, "all"):
            base = 0.01 + 0.02 * alphas * (1 + 0.2 * rng.normal())
            if layer == "block1":
                base = base + effect * 0.01 * alphas * latent
            base[0] = 0.01
            rows += [{"world": "w", "run": f"r{i}", "alpha": a, "layer": layer, "kind": "worst", "norm": "linf",
                      "adaptive": True, "rho": 0.004, "value": v, "ood_acc": o} for a, v, o in zip(alphas, base, ood)]
        best = int(np.argmax(ood[1:-1])) + 1
        summ.append({"world": "w", "run": f"r{i}", "lr": lr, "augment": aug, "acc_ood_zs": 0.5, "acc_ood_best": ood[best],
                     "gain_over_zs": ood[best] - 0.5, "failure_mode": bool(ood[best] <= 0.5),
                     "loss_barrier": float(abs(rng.normal(0.1, 0.05))), "successful": bool(ood[best] > 0.5)})
    return pd.DataFrame(rows), pd.DataFrame(summ)


# ----------------------------------------------------------------------------------------------
# the step: notebooks/evidence.ipynb
# ----------------------------------------------------------------------------------------------

#: The step's upstream folders: parameter → (the step that writes it, the table read there, its key
#: in :func:`study_evidence`'s ``tables``, the columns it must have).
UPSTREAM: dict[str, tuple[str, str, str, tuple[str, ...]]] = {
    "interpolate_dir": ("interpolate", "summary", "summary", ("run", "failure_mode", "gain_over_zs")),
    "stragglers_dir": ("stragglers", "stragglers", "stragglers", ("run", "layer")),
    "sharpness_dir": ("sharpness", "sharpness", "sharpness", ("run", "alpha", "layer", "value", "ood_acc")),
    "sparsity_dir": ("sparsity", "f4_parts", "f4_parts", ()),
}


def _upstream_problem(folder: str, step: str, table: str, columns: Sequence[str], world: str) -> str | None:
    """What is wrong with ``<folder>/<table>.csv`` (missing, or lacking columns), or ``None``."""
    path = repo_path(folder) / f"{table}.csv"
    fix = f"run the {step} step first: rft run notebooks/{step}.ipynb -p world={world} --out {folder}"
    if not path.is_file():
        return f"holds no {table}.csv; allowed: a results folder of the {step} step ({fix})"
    with open(path, encoding="utf-8") as f:
        header = f.readline().strip().split(",")
    missing = [c for c in columns if c not in header]
    if missing:
        return f"has a {table}.csv without the columns {missing}; allowed: a results folder of the {step} step ({fix})"
    return None


def _upstream_dir(p: Problems, name: str) -> None:
    """An upstream results folder: a usable path, and when it exists, one holding its step's table."""
    p.path(name, f"the results folder of the {UPSTREAM[name][0]} step")
    folder = p.values[name]
    if p.ok(name) and repo_path(folder).is_dir():
        step, table, _, columns = UPSTREAM[name]
        problem = _upstream_problem(folder, step, table, columns, p.values["world"])
        if problem:
            p.items.append(f"{name}={folder!r} {problem}")
            p.bad.add(name)


@dataclass(frozen=True)
class Params(StepParams):
    """Parameters of ``notebooks/evidence.ipynb``: the verdicts of a world from its steps' tables.

    A results folder that does not exist yet is no problem here (a pipeline validates every step
    before it runs the first); one that exists without its table is, and :func:`run` checks every
    table before it computes anything.

    Example:
        >>> Params(world="digits").sharpness_dir
        'book/results/digits-sharpness'
        >>> Params(n_perm=5, interpolate_dir="book/results/digits-clean-zeroshot")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        rftlib.errors.ParameterError: bad parameters for notebooks/evidence.ipynb: interpolate_dir='book/results/digits-clean-zeroshot' holds no summary.csv; allowed: a results folder of the interpolate step (run the interpolate step first: ...); n_perm=5 is too small; allowed: an integer >= 19 (a permutation p-value below 0.05)
    """

    STEP = "evidence"
    world: str = world_param(verify=False)  # the step reads tables only, never the world's weights
    interpolate_dir: str = param("", "results of the interpolation step: the run summary "
                                     "(empty: book/results/<world>-interpolate)", check=_upstream_dir)
    stragglers_dir: str = param("", "results of the straggler step: each run's straggler layers "
                                    "(empty: book/results/<world>-stragglers)", check=_upstream_dir)
    sharpness_dir: str = param("", "results of the sharpness step: sharpness and OOD accuracy per run and alpha "
                                   "(empty: book/results/<world>-sharpness)", check=_upstream_dir)
    sparsity_dir: str = param("", "results of the sparsity step: the F4 parts (empty: book/results/<world>-sparsity)",
                              check=_upstream_dir)
    rho_claims: float = param(0.0, "the sharpness radius judged (0: the sharpness table's only radius)",
                              check=within(lambda r: r >= 0, "a finite number >= 0 (0: the sharpness table's only radius)"))
    n_boot: int = param(2000, "bootstrap resamples (runs, clustered by recipe)", check=at_least(1))
    n_perm: int = param(1999, "permutations of the across-run test", check=at_least(19, "a permutation p-value below 0.05"))
    seed: int = seed_param("seed of the bootstrap, the permutations and the power simulations",
                           "numpy seeds are non-negative")
    out_dir: str = out_dir_param("evidence")


def read_inputs(p: Params) -> dict[str, pd.DataFrame]:
    """The upstream tables of :data:`UPSTREAM`, keyed as :func:`study_evidence` takes them; every one
    is checked before any is read.

    Raises:
        ParameterError: one line naming every folder whose table is missing or incomplete, and the fix.

    Example:
        >>> read_inputs(Params(interpolate_dir="/nonexistent/i"))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        rftlib.errors.ParameterError: evidence step: interpolate_dir='/nonexistent/i' holds no summary.csv; allowed: ...
    """
    problems = [f"{name}={getattr(p, name)!r} {problem}" for name, (step, table, _, cols) in UPSTREAM.items()
                if (problem := _upstream_problem(getattr(p, name), step, table, cols, p.world))]
    if problems:
        raise ParameterError("evidence step: " + "; ".join(problems))
    return {key: pd.read_csv(repo_path(getattr(p, name)) / f"{table}.csv")
            for name, (_, table, key, _) in UPSTREAM.items()}


def run(p: Params) -> StepResults:
    """Every claim on one world from its steps' tables: ``claims`` (:class:`Claim` rows), tables
    ``power``, ``evidence`` and ``straggler_stability``; ``info["n_runs"]`` counts the runs."""
    tables = read_inputs(p)
    world = load_world(p.world)
    variant = {"rho": p.rho_claims} if p.rho_claims > 0 else None
    ev = study_evidence(world.name, tables, variant, n_boot=p.n_boot, n_perm=p.n_perm, seed=p.seed)
    layers = [l for l in dict.fromkeys(tables["sharpness"]["layer"]) if l != "all"]
    stability = straggler_stability(tables["stragglers"], tables["summary"], layers=layers)
    return StepResults(world, claims=ev.claims, info={"n_runs": len(tables["summary"])},
                       tables={"power": ev.power, "evidence": ev.details,
                               "straggler_stability": stability.assign(world=world.name)})
