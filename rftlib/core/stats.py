"""Correlations with bootstrap confidence intervals, within runs, across runs, and combined.

The study asks whether sharpness (whole-model or per layer) tracks the OOD accuracy of interpolated
models θ(α). Every correlation here reports three coefficients, each with its p-value (scipy) and a
percentile bootstrap interval:

- Kendall τ-b (``scipy.stats.kendalltau(variant="b")``), the headline statistic (robust, handles ties);
- Spearman ρ (``scipy.stats.spearmanr``);
- Pearson r (``scipy.stats.pearsonr``).

**Bootstrap.** Percentile intervals from ``n_boot`` resamples drawn with a seeded
``numpy.random.Generator``. By default the (x, y) *pairs* are resampled. When points are grouped
(pooled α points of several runs, which are not independent) pass ``groups`` and whole groups are
resampled instead (cluster bootstrap). A resample in which x or y is constant has no defined
correlation; it is skipped, and ``n_boot_used`` says how many resamples made the interval.

**Grouped analyses** on tidy DataFrames (columns of ``results.md``):

- :func:`within_run`: one correlation per run, across its α points;
- :func:`across_runs`: one correlation per world across runs, either pooling all (run, α) points
  (``how="pool"``, cluster bootstrap over runs) or one point per run (``how="mean"``: each run's mean
  x and mean y; filter the table first, e.g. to α = 1, for an endpoint-only comparison);
- :func:`combine_within` / :func:`combine_within_runs`: the within-run τ of several runs combined into
  a mean τ with a bootstrap interval *over runs*, a sign test and a Stouffer combination of p-values.

**Why Stouffer and not Fisher.** Fisher's method combines two-sided p-values and so rewards strong
correlations of *either* sign: three runs with τ = +0.9, −0.9, +0.9 would look "significant". The
claims are about a *consistent* direction, so each run's two-sided p-value is turned into a
one-sided p-value for a positive association (p/2 when τ > 0, 1 − p/2 when τ < 0; valid because the
null distributions of τ, ρ and r are symmetric), combined with Stouffer's Z
(``scipy.stats.combine_pvalues(method="stouffer")``), and reported two-sided. Opposite signs cancel.
The sign test (binomial test on how many runs have τ > 0) is reported as well, but with few runs it
cannot reach significance (3 runs: p ≥ 0.25), so ``sign_consistency`` (the share of runs agreeing
with the majority sign) is the number to read next to it.

Example:
    >>> r = correlate([0.1, 0.2, 0.3, 0.4, 0.5, 0.6], [3, 5, 4, 6, 8, 9], n_boot=200)
    >>> round(r["kendall_tau"], 3), round(r["spearman_rho"], 3)
    (0.867, 0.943)
    >>> r["kendall_ci_low"] <= r["kendall_tau"] <= r["kendall_ci_high"] <= 1
    True
"""

from __future__ import annotations

from typing import Any, Iterable, Literal, Sequence

import numpy as np
import pandas as pd
from scipy import stats as sps

from rftlib.errors import ParameterError

__all__ = [
    "COEFFICIENTS",
    "check_pairs",
    "correlate",
    "correlate_by",
    "within_run",
    "across_runs",
    "combine_within",
    "combine_within_runs",
    "bootstrap_mean_ci",
    "cluster_indices",
    "same_alpha_tau",
    "across_run_test",
    "paired_contrast",
    "partial_kendall",
    "auroc",
    "mde_across_runs",
    "mde_mean",
    "mean_pairwise_jaccard",
]

#: The three coefficients and the key under which :func:`correlate` reports each.
COEFFICIENTS: dict[str, str] = {"kendall": "kendall_tau", "spearman": "spearman_rho", "pearson": "pearson_r"}

# Above this many pairs per resample (n ≈ 90), Kendall's τ is bootstrapped with scipy (O(n log n)) rather
# than the vectorized O(n²) pair comparison.
_MAX_VECTOR_PAIRS = 4_000
# Elements per vectorized chunk (bounds memory to a few tens of MB).
_CHUNK_ELEMENTS = 4_000_000


# ----------------------------------------------------------------------------------------------
# validation
# ----------------------------------------------------------------------------------------------

def _as_vector(v: Any, name: str) -> np.ndarray:
    try:
        a = np.asarray(v, dtype=np.float64)
    except (TypeError, ValueError):
        raise ParameterError(f"{name} must be a 1-D sequence of numbers; got {type(v).__name__}.") from None
    if a.ndim != 1:
        raise ParameterError(f"{name} must be 1-D; got an array of shape {a.shape}.")
    bad = ~np.isfinite(a)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        raise ParameterError(
            f"{name} has {int(bad.sum())} non-finite value(s) (first at position {i}: {float(a[i])!r}); "
            "all values must be finite. Drop or fix those rows first."
        )
    return a


def check_pairs(x: Any, y: Any, names: tuple[str, str] = ("x", "y"), min_n: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Return ``x`` and ``y`` as float vectors, or raise :class:`ParameterError` naming the problem.

    Checks: 1-D, equal length, at least ``min_n`` points, no NaN or infinity.

    Example:
        >>> check_pairs([1, 2], [3, 4])
        Traceback (most recent call last):
        ...
        rftlib.errors.ParameterError: x and y have 2 points; a correlation needs at least 3.
    """
    a, b = _as_vector(x, names[0]), _as_vector(y, names[1])
    if a.shape != b.shape:
        raise ParameterError(
            f"{names[0]} and {names[1]} differ in length ({a.size} vs {b.size}); they must be paired."
        )
    if a.size < min_n:
        raise ParameterError(f"{names[0]} and {names[1]} have {a.size} points; a correlation needs at least {min_n}.")
    return a, b


def _check_boot(n_boot: int, ci: float) -> None:
    if isinstance(n_boot, bool) or not isinstance(n_boot, (int, np.integer)) or n_boot < 0:
        raise ParameterError(f"n_boot={n_boot!r} must be an integer >= 0 (0 = no bootstrap interval).")
    if not (isinstance(ci, (int, float)) and 0.0 < float(ci) < 1.0):
        raise ParameterError(f"ci={ci!r} must be a confidence level strictly between 0 and 1, e.g. 0.95.")


# ----------------------------------------------------------------------------------------------
# vectorized coefficients on rows of resamples (B, n)
# ----------------------------------------------------------------------------------------------

def _pearson_rows(X: np.ndarray, Y: np.ndarray) -> np.ndarray:
    xc = X - X.mean(axis=1, keepdims=True)
    yc = Y - Y.mean(axis=1, keepdims=True)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (xc * yc).sum(axis=1) / np.sqrt((xc * xc).sum(axis=1) * (yc * yc).sum(axis=1))
    return np.clip(r, -1.0, 1.0)


def _spearman_rows(X: np.ndarray, Y: np.ndarray) -> np.ndarray:
    return _pearson_rows(sps.rankdata(X, axis=1), sps.rankdata(Y, axis=1))


def _kendall_rows(X: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """τ-b per row: (concordant − discordant) / sqrt((pairs untied in x)·(pairs untied in y))."""
    B, n = X.shape
    i, j = np.triu_indices(n, 1)
    n_pairs = i.size
    if n_pairs > _MAX_VECTOR_PAIRS:
        return np.array([sps.kendalltau(X[b], Y[b], variant="b").statistic for b in range(B)])
    out = np.empty(B)
    step = max(1, _CHUNK_ELEMENTS // max(n_pairs, 1))
    for s in range(0, B, step):
        dx = np.sign(X[s:s + step, i] - X[s:s + step, j])
        dy = np.sign(Y[s:s + step, i] - Y[s:s + step, j])
        num = (dx * dy).sum(axis=1)
        den = np.sqrt(np.count_nonzero(dx, axis=1).astype(float) * np.count_nonzero(dy, axis=1))
        with np.errstate(invalid="ignore", divide="ignore"):
            out[s:s + step] = num / den
    return np.clip(out, -1.0, 1.0)


_ROW_FUNCS = {"kendall": _kendall_rows, "spearman": _spearman_rows, "pearson": _pearson_rows}


def _snap(v: np.ndarray | float) -> np.ndarray | float:
    """Round coefficients within 1e-12 of ±1 to exactly ±1 (scipy's τ of a perfect ranking can be 1 − 1e-16)."""
    a = np.asarray(v, dtype=np.float64)
    a = np.where(np.abs(np.abs(a) - 1.0) < 1e-12, np.sign(a), a)
    return float(a) if a.ndim == 0 else a


def _point(x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Point estimates and two-sided p-values from scipy; NaN when x or y is constant."""
    out: dict[str, float] = {}
    constant = np.ptp(x) == 0 or np.ptp(y) == 0
    tests = {
        "kendall": lambda: sps.kendalltau(x, y, variant="b"),
        "spearman": lambda: sps.spearmanr(x, y),
        "pearson": lambda: sps.pearsonr(x, y),
    }
    for name, key in COEFFICIENTS.items():
        if constant:
            out[key], out[f"{name}_p"] = float("nan"), float("nan")
        else:
            res = tests[name]()
            out[key], out[f"{name}_p"] = _snap(float(res.statistic)), float(res.pvalue)
    return out


def _percentile(vals: np.ndarray, ci: float) -> tuple[float, float]:
    if vals.size == 0:
        return float("nan"), float("nan")
    lo, hi = np.quantile(vals, [(1.0 - ci) / 2.0, 1.0 - (1.0 - ci) / 2.0])
    return float(lo), float(hi)


# ----------------------------------------------------------------------------------------------
# public API
# ----------------------------------------------------------------------------------------------

def correlate(x: Any, y: Any, n_boot: int = 1000, seed: int = 0, ci: float = 0.95,
              groups: Any | None = None) -> dict[str, Any]:
    """Kendall τ-b, Spearman ρ and Pearson r of paired samples, with p-values and bootstrap intervals.

    Args:
        x, y: paired 1-D samples (at least 3 points, finite).
        n_boot: bootstrap resamples (0 = no interval: ``*_ci_low``/``*_ci_high`` are NaN).
        seed: seed of the ``numpy.random.Generator`` drawing the resamples.
        ci: confidence level of the percentile interval.
        groups: optional group label per point (e.g. the run). When given, whole groups are resampled
            (cluster bootstrap), which respects the dependence of points within a group. Needs at least
            2 groups. The p-values are scipy's and still treat points as independent.

    Returns:
        A flat dict: ``n``; for each coefficient ``kendall_tau``/``spearman_rho``/``pearson_r``, its
        ``<name>_p`` (two-sided), ``<name>_ci_low`` and ``<name>_ci_high``; and ``ci``, ``n_boot``,
        ``n_boot_used`` (resamples where neither x nor y was constant), ``bootstrap``
        (``"pairs"``/``"groups"``/``"none"``). When x or y is constant overall every coefficient is NaN
        (it is undefined) and ``n_boot_used`` is 0.

    Raises:
        ParameterError: length mismatch, fewer than 3 points, NaN/inf, bad ``n_boot``/``ci``/``groups``.

    Example:
        >>> r = correlate([1, 2, 3, 4, 5], [2, 4, 6, 8, 10], n_boot=100)
        >>> r["kendall_tau"], r["kendall_ci_high"], r["pearson_ci_low"]
        (1.0, 1.0, 1.0)
        >>> correlate([1, 2, 3], [1, float("nan"), 2])
        Traceback (most recent call last):
        ...
        rftlib.errors.ParameterError: y has 1 non-finite value(s) (first at position 1: nan); all values must be finite. Drop or fix those rows first.
    """
    x, y = check_pairs(x, y)
    _check_boot(n_boot, ci)
    n = x.size
    out: dict[str, Any] = {"n": int(n)}
    out.update(_point(x, y))
    constant = np.ptp(x) == 0 or np.ptp(y) == 0

    mode = "none" if n_boot == 0 else "pairs"
    boot: dict[str, np.ndarray] = {name: np.empty(0) for name in COEFFICIENTS}
    used = 0
    if n_boot > 0 and not constant:
        rng = np.random.default_rng(seed)
        if groups is None:
            idx = rng.integers(0, n, size=(n_boot, n))
            X, Y = x[idx], y[idx]
            ok = (np.ptp(X, axis=1) > 0) & (np.ptp(Y, axis=1) > 0)
            X, Y = X[ok], Y[ok]
            used = int(ok.sum())
            if used:
                boot = {name: _snap(f(X, Y)) for name, f in _ROW_FUNCS.items()}
        else:
            mode = "groups"
            g = np.asarray(groups)
            if g.ndim != 1 or g.size != n:
                raise ParameterError(f"groups must give one label per point ({n}); got shape {g.shape}.")
            _, inverse = np.unique(g, return_inverse=True)
            members = [np.flatnonzero(inverse == k) for k in range(inverse.max() + 1)]
            if len(members) < 2:
                raise ParameterError(
                    f"groups has {len(members)} distinct label; a cluster bootstrap needs at least 2. "
                    "Use groups=None to resample pairs."
                )
            vals: dict[str, list[float]] = {name: [] for name in COEFFICIENTS}
            picks = rng.integers(0, len(members), size=(n_boot, len(members)))
            for row in picks:
                ix = np.concatenate([members[k] for k in row])
                xb, yb = x[ix], y[ix]
                if np.ptp(xb) == 0 or np.ptp(yb) == 0 or ix.size < 3:
                    continue
                used += 1
                for name, f in _ROW_FUNCS.items():
                    vals[name].append(float(f(xb[None], yb[None])[0]))
            boot = {name: _snap(np.asarray(v)) for name, v in vals.items()}
    for name in COEFFICIENTS:
        out[f"{name}_ci_low"], out[f"{name}_ci_high"] = _percentile(boot[name], ci)
    out.update({"ci": float(ci), "n_boot": int(n_boot), "n_boot_used": used, "bootstrap": mode})
    return out


def _check_columns(df: pd.DataFrame, cols: Iterable[str], what: str = "df") -> None:
    if not isinstance(df, pd.DataFrame):
        raise ParameterError(f"{what} must be a pandas DataFrame; got {type(df).__name__}.")
    missing = [c for c in cols if c not in df.columns]
    if missing:
        raise ParameterError(f"{what} lacks column(s) {missing}; it has {list(df.columns)}.")


def _groups(df: pd.DataFrame, by: Sequence[str]) -> Iterable[tuple[dict[str, Any], pd.DataFrame]]:
    if not by:
        yield {}, df
        return
    for key, sub in df.groupby(list(by), sort=True, dropna=False):
        key = key if isinstance(key, tuple) else (key,)
        yield dict(zip(by, key)), sub


def _label(key: dict[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in key.items()) or "all rows"


def correlate_by(df: pd.DataFrame, x: str, y: str, by: Sequence[str] = ("world", "run"),
                 n_boot: int = 1000, seed: int = 0, ci: float = 0.95) -> pd.DataFrame:
    """:func:`correlate` of columns ``x`` and ``y`` within each group of ``by``; one row per group.

    Each group uses the same ``seed``, so a group's result does not depend on which other groups exist.

    Example:
        >>> df = pd.DataFrame({"run": ["a"] * 4 + ["b"] * 4, "s": [1, 2, 3, 4] * 2,
        ...                    "acc": [1, 2, 3, 4, 4, 3, 2, 1]})
        >>> correlate_by(df, "s", "acc", by=["run"], n_boot=0)[["run", "n", "kendall_tau"]]
          run  n  kendall_tau
        0   a  4          1.0
        1   b  4         -1.0
    """
    by = [by] if isinstance(by, str) else list(by)
    _check_columns(df, [*by, x, y])
    rows = []
    for key, sub in _groups(df, by):
        try:
            res = correlate(sub[x].to_numpy(), sub[y].to_numpy(), n_boot=n_boot, seed=seed, ci=ci)
        except ParameterError as e:
            raise ParameterError(f"group {_label(key)} ({x!r} vs {y!r}): {e}") from None
        rows.append({**key, "x": x, "y": y, **res})
    return pd.DataFrame(rows)


def within_run(df: pd.DataFrame, x: str, y: str, by: Sequence[str] = ("world", "run"),
               n_boot: int = 1000, seed: int = 0, ci: float = 0.95) -> pd.DataFrame:
    """Within-run correlation: for each (world, run), across that run's α points.

    The table should hold one row per α of each run (e.g. sharpness of one layer, kind, norm, ρ
    against OOD accuracy); filter it first. Same as :func:`correlate_by` with ``by=("world", "run")``.

    Example:
        >>> df = pd.DataFrame({"world": "w", "run": ["a"] * 3 + ["b"] * 3,
        ...                    "alpha": [0, .5, 1] * 2, "s": [1, 2, 3, 1, 2, 3], "acc": [3, 2, 1, 1, 3, 2]})
        >>> within_run(df, "s", "acc", n_boot=0)["kendall_tau"].round(3).tolist()
        [-1.0, 0.333]
    """
    if isinstance(df, pd.DataFrame) and "alpha" in df.columns:
        by_l = [by] if isinstance(by, str) else list(by)
        _check_columns(df, by_l)
        dup = df.duplicated([*by_l, "alpha"])
        if dup.any():
            r = df[dup].iloc[0]
            raise ParameterError(
                f"several rows share {', '.join(f'{c}={r[c]!r}' for c in [*by_l, 'alpha'])}; within-run "
                "correlation needs one row per alpha. Filter the table to one layer/split/kind/norm/rho first."
            )
    return correlate_by(df, x, y, by=by, n_boot=n_boot, seed=seed, ci=ci)


def across_runs(df: pd.DataFrame, x: str, y: str, run: str = "run", by: Sequence[str] = ("world",),
                how: Literal["pool", "mean"] = "pool", n_boot: int = 1000, seed: int = 0,
                ci: float = 0.95) -> pd.DataFrame:
    """Across-run correlation, one row per group of ``by`` (default: per world).

    Args:
        how: ``"pool"`` correlates all (run, α) points together and bootstraps by resampling whole
            runs (points of one run are dependent); needs >= 2 runs. ``"mean"`` reduces each run to one
            point (mean of ``x`` and of ``y`` over its rows) and bootstraps those points; needs >= 3
            runs. For endpoint-only comparisons filter the table (e.g. ``alpha == 1``) first.

    Example:
        >>> df = pd.DataFrame({"world": "w", "run": list("aabbcc"), "s": [1, 2, 3, 4, 5, 6],
        ...                    "acc": [6, 5, 4, 3, 2, 1]})
        >>> across_runs(df, "s", "acc", how="mean", n_boot=0)[["world", "n_runs", "kendall_tau"]]
          world  n_runs  kendall_tau
        0     w       3         -1.0
    """
    if how not in ("pool", "mean"):
        raise ParameterError(f"how={how!r} must be 'pool' (all points, bootstrap over runs) or 'mean' (one point per run).")
    by = [by] if isinstance(by, str) else list(by)
    _check_columns(df, [*by, run, x, y])
    rows = []
    for key, sub in _groups(df, by):
        n_runs = int(sub[run].nunique())
        try:
            if how == "pool":
                if n_runs < 2:
                    raise ParameterError(
                        f"only {n_runs} run; pooling across runs needs at least 2 (use within_run for one run)."
                    )
                res = correlate(sub[x].to_numpy(), sub[y].to_numpy(), n_boot=n_boot, seed=seed, ci=ci,
                                groups=sub[run].astype(str).to_numpy())
            else:
                _check_columns(sub, [x, y])
                for c in (x, y):
                    _as_vector(sub[c].to_numpy(), c)
                means = sub.groupby(run, sort=True)[[x, y]].mean()
                res = correlate(means[x].to_numpy(), means[y].to_numpy(), n_boot=n_boot, seed=seed, ci=ci)
        except ParameterError as e:
            raise ParameterError(f"group {_label(key)} ({x!r} vs {y!r}, how={how!r}): {e}") from None
        rows.append({**key, "x": x, "y": y, "how": how, "n_runs": n_runs, **res})
    return pd.DataFrame(rows)


def combine_within(taus: Any, p_values: Any, n_boot: int = 1000, seed: int = 0,
                   ci: float = 0.95) -> dict[str, Any]:
    """Combine per-run correlations (e.g. within-run τ) into one statement across runs.

    Runs whose coefficient is NaN (constant input) are dropped and counted.

    Returns:
        dict with ``n_runs`` (given), ``n_runs_used``; ``mean`` (mean coefficient) with ``ci_low``,
        ``ci_high`` (percentile bootstrap over runs; NaN with fewer than 2 runs); ``n_pos``, ``n_neg``
        (runs with coefficient > 0 / < 0); ``sign_consistency`` (share of used runs with the majority
        sign, 1.0 = all agree); ``sign_test_p`` (two-sided binomial test of n_pos among the nonzero runs);
        ``stouffer_z`` and ``stouffer_p`` (directional Stouffer combination, two-sided; see module doc).

    Example:
        >>> c = combine_within([0.8, 0.6, 0.7], [0.001, 0.02, 0.01], n_boot=200)
        >>> c["n_pos"], c["sign_consistency"], c["sign_test_p"], c["stouffer_p"] < 0.001
        (3, 1.0, 0.25, True)
        >>> c = combine_within([0.8, -0.8], [0.001, 0.001], n_boot=0)
        >>> abs(c["stouffer_z"]) < 1e-9, c["sign_consistency"]
        (True, 0.5)
    """
    t = np.asarray(taus, dtype=np.float64).ravel()
    p = np.asarray(p_values, dtype=np.float64).ravel()
    if t.shape != p.shape:
        raise ParameterError(f"taus and p_values differ in length ({t.size} vs {p.size}); give one of each per run.")
    if t.size == 0:
        raise ParameterError("taus is empty; give the coefficient of at least one run.")
    _check_boot(n_boot, ci)
    keep = np.isfinite(t)
    if np.any(keep & ~np.isfinite(p)):
        raise ParameterError("p_values has NaN/inf where the coefficient is finite; every used run needs a p-value.")
    if np.any(keep & ((p < 0) | (p > 1))):
        raise ParameterError(f"p_values must lie in [0, 1]; got {p[keep].tolist()}.")
    t, p = t[keep], p[keep]
    k = t.size
    out: dict[str, Any] = {"n_runs": int(keep.size), "n_runs_used": int(k)}
    if k == 0:
        return {**out, "mean": np.nan, "ci_low": np.nan, "ci_high": np.nan, "n_pos": 0, "n_neg": 0,
                "sign_consistency": np.nan, "sign_test_p": np.nan, "stouffer_z": np.nan, "stouffer_p": np.nan}
    out["mean"] = float(t.mean())
    if k >= 2 and n_boot > 0:
        rng = np.random.default_rng(seed)
        means = t[rng.integers(0, k, size=(n_boot, k))].mean(axis=1)
        out["ci_low"], out["ci_high"] = _percentile(means, ci)
    else:
        out["ci_low"], out["ci_high"] = float("nan"), float("nan")
    n_pos, n_neg = int((t > 0).sum()), int((t < 0).sum())
    out["n_pos"], out["n_neg"] = n_pos, n_neg
    out["sign_consistency"] = max(n_pos, n_neg) / k
    out["sign_test_p"] = float(sps.binomtest(n_pos, n_pos + n_neg, 0.5).pvalue) if n_pos + n_neg else 1.0
    # one-sided p-values for a positive association, then Stouffer; clipped away from 0 and 1
    p_pos = np.where(t > 0, p / 2.0, np.where(t < 0, 1.0 - p / 2.0, 0.5))
    p_pos = np.clip(p_pos, 1e-300, 1.0 - 1e-16)
    z = float(sps.combine_pvalues(p_pos, method="stouffer").statistic) + 0.0  # no "-0.0"
    out["stouffer_z"] = z
    out["stouffer_p"] = float(min(1.0, 2.0 * sps.norm.sf(abs(z))))
    return out


def combine_within_runs(per_run: pd.DataFrame, coefficient: Literal["kendall", "spearman", "pearson"] = "kendall",
                        by: Sequence[str] = ("world",), n_boot: int = 1000, seed: int = 0,
                        ci: float = 0.95) -> pd.DataFrame:
    """Apply :func:`combine_within` to a :func:`within_run` table, one row per group of ``by``.

    Example:
        >>> df = pd.DataFrame({"world": "w", "run": list("aaabbbccc"), "s": [1, 2, 3] * 3,
        ...                    "acc": [1, 2, 3, 1, 3, 2, 2, 1, 3]})
        >>> per_run = within_run(df, "s", "acc", n_boot=0)
        >>> out = combine_within_runs(per_run, n_boot=0)
        >>> out[["world", "n_runs", "n_pos", "n_neg"]].values.tolist()
        [['w', 3, 3, 0]]
    """
    if coefficient not in COEFFICIENTS:
        raise ParameterError(f"coefficient={coefficient!r} must be one of {list(COEFFICIENTS)}.")
    key, pkey = COEFFICIENTS[coefficient], f"{coefficient}_p"
    by = [by] if isinstance(by, str) else list(by)
    _check_columns(per_run, [*by, key, pkey], what="per_run")
    rows = []
    for g, sub in _groups(per_run, by):
        try:
            res = combine_within(sub[key].to_numpy(), sub[pkey].to_numpy(), n_boot=n_boot, seed=seed, ci=ci)
        except ParameterError as e:
            raise ParameterError(f"group {_label(g)}: {e}") from None
        extra = {c: sub[c].iloc[0] for c in ("x", "y") if c in sub.columns and sub[c].nunique() == 1}
        rows.append({**g, **extra, "coefficient": coefficient, **res})
    return pd.DataFrame(rows)


def bootstrap_mean_ci(x: Any, n_boot: int = 1000, seed: int = 0, ci: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``x`` (NaN, NaN for an empty ``x``).

    Example:
        >>> bootstrap_mean_ci([0.5, 0.5, 0.5], n_boot=100)
        (0.5, 0.5)
    """
    a = np.asarray(x, dtype=np.float64).ravel()
    if a.size == 0:
        return float("nan"), float("nan")
    _check_boot(n_boot, ci)
    rng = np.random.default_rng(seed)
    means = rng.choice(a, size=(n_boot, a.size), replace=True).mean(axis=1)
    return _percentile(means, ci)


# ----------------------------------------------------------------------------------------------
# the run population: clustered bootstrap, the same-α statistic, contrasts, AUROC, power
# ----------------------------------------------------------------------------------------------
#
# These work on matrices with one row per run and one column per α point (``X``: sharpness, ``Y``:
# OOD accuracy). Runs are the resampling unit; ``clusters`` (one label per run, e.g. the recipe)
# makes the bootstrap draw whole clusters, so seeds of one recipe stay together. scipy's
# ``scipy.stats.bootstrap`` has no clustered resampling, so the resamples are drawn here (seeded
# ``numpy.random.Generator``), and the same index rows serve every statistic of one comparison
# (a *paired* bootstrap).

def _as_matrix(v: Any, name: str) -> np.ndarray:
    a = np.asarray(v, dtype=np.float64)
    if a.ndim == 1:
        a = a[:, None]
    if a.ndim != 2:
        raise ParameterError(f"{name} must be a runs × α matrix (or one value per run); got shape {a.shape}.")
    return a


def _check_matrices(X: Any, Y: Any, min_runs: int = 3) -> tuple[np.ndarray, np.ndarray]:
    x, y = _as_matrix(X, "X"), _as_matrix(Y, "Y")
    if x.shape != y.shape:
        raise ParameterError(f"X has shape {x.shape} and Y {y.shape}; they must pair runs and α points.")
    if x.shape[0] < min_runs:
        raise ParameterError(f"X has {x.shape[0]} runs; an across-run statistic needs at least {min_runs}.")
    if not (np.isfinite(x).all() and np.isfinite(y).all()):
        raise ParameterError("X and Y must be finite; drop runs or α points with missing values first.")
    return x, y


def cluster_indices(clusters: Any | None, n: int, n_boot: int, seed: int = 0) -> np.ndarray:
    """Bootstrap resamples of ``n`` runs as index rows ``(n_boot, n')``, drawing whole clusters.

    ``clusters`` gives one label per run (``None``: each run its own cluster, the plain bootstrap).
    A resample draws as many clusters as there are, with replacement, and takes every run of each;
    with equal cluster sizes every row has ``n`` indices (unequal sizes are padded by repeating a
    drawn run, which keeps rows rectangular; the pad is a draw from the resample itself).

    Example:
        >>> idx = cluster_indices(["a", "a", "b", "b"], 4, n_boot=3, seed=0)
        >>> idx.shape, all(set(r[:2]) in ({0, 1}, {2, 3}) for r in idx)
        ((3, 4), True)
    """
    if clusters is None:
        return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))
    labels = np.asarray(clusters)
    if labels.shape != (n,):
        raise ParameterError(f"clusters has {labels.size} labels for {n} runs; give one label per run.")
    _, inv = np.unique(labels, return_inverse=True)
    members = [np.flatnonzero(inv == k) for k in range(inv.max() + 1)]
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(members), size=(n_boot, len(members)))
    rows = []
    for d in draws:
        r = np.concatenate([members[k] for k in d])
        r = r[:n] if r.size >= n else np.concatenate([r, rng.choice(r, n - r.size)])
        rows.append(r)
    return np.asarray(rows, dtype=np.int64)


def _same_alpha_rows(X: np.ndarray, Y: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """T for each index row: mean over α columns of the across-run τ-b (NaN columns skipped)."""
    taus = np.stack([_kendall_rows(X[idx, j], Y[idx, j]) for j in range(X.shape[1])], axis=1)
    with np.errstate(invalid="ignore"), _quiet():
        return np.nanmean(taus, axis=1)


class _quiet:
    """Silence numpy's 'Mean of empty slice' for all-NaN rows (they give NaN, which is meant)."""

    def __enter__(self) -> None:
        import warnings

        self._w = warnings.catch_warnings()
        self._w.__enter__()
        warnings.simplefilter("ignore", RuntimeWarning)

    def __exit__(self, *exc: Any) -> None:
        self._w.__exit__(*exc)


def same_alpha_tau(X: Any, Y: Any) -> float:
    """The same-α statistic T: at every α column, Kendall τ-b across runs between X and Y; their mean.

    Comparing runs at the same α removes the dependence on α that sharpness and accuracy share
    along a path. Columns where X or Y is constant across runs (e.g. α = 0: every run is θ_zs) are
    skipped; NaN when all are.

    Example:
        >>> X = [[0.0, 1.0], [0.0, 2.0], [0.0, 3.0]]
        >>> Y = [[0.5, 0.3], [0.5, 0.2], [0.5, 0.1]]
        >>> same_alpha_tau(X, Y)
        -1.0
    """
    x, y = _check_matrices(X, Y)
    return float(_snap(_same_alpha_rows(x, y, np.arange(x.shape[0])[None, :])[0]))


def _perm_rows(n: int, n_perm: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed + 7919)
    return np.argsort(rng.random((n_perm, n)), axis=1)


def across_run_test(X: Any, Y: Any, clusters: Any | None = None, n_boot: int = 2000, n_perm: int = 1999,
                    seed: int = 0, ci: float = 0.95) -> dict[str, Any]:
    """T (:func:`same_alpha_tau`) with a run-bootstrap interval and a permutation p-value.

    The p-value is two-sided: the share of run permutations (one permutation of X's rows for every
    α, so each run's path stays whole) with |T| at least the observed |T| (with the +1 correction).
    One column (e.g. sharpness at θ_ft against the OOD gain) gives a plain across-run τ.

    Returns:
        dict with ``value``, ``ci_low``, ``ci_high``, ``p_value``, ``n_runs``, ``n_alpha`` (columns
        used), ``boot`` (the bootstrap replicates, for paired contrasts) and ``null`` (|T| under
        permutation, for power).

    Example:
        >>> import numpy as np
        >>> x = np.arange(12.0)
        >>> r = across_run_test(x, x ** 2, n_boot=200, n_perm=199)
        >>> r["value"], r["p_value"] < 0.01, r["ci_low"] > 0.5
        (1.0, True, True)
    """
    x, y = _check_matrices(X, Y)
    _check_boot(n_boot, ci)
    n = x.shape[0]
    value = _snap(_same_alpha_rows(x, y, np.arange(n)[None, :])[0])
    boot = _same_alpha_rows(x, y, cluster_indices(clusters, n, n_boot, seed)) if n_boot else np.empty(0)
    perms = _perm_rows(n, n_perm, seed)
    taus = np.stack([_kendall_rows(x[perms, j], np.broadcast_to(y[:, j], (n_perm, n)))
                     for j in range(x.shape[1])], axis=1)
    with _quiet():
        null = np.abs(np.nanmean(taus, axis=1))
    p = float((1 + np.sum(null >= abs(value) - 1e-12)) / (1 + n_perm)) if np.isfinite(value) else float("nan")
    lo, hi = _percentile(boot[np.isfinite(boot)], ci)
    n_alpha = int(sum(np.ptp(x[:, j]) > 0 and np.ptp(y[:, j]) > 0 for j in range(x.shape[1])))
    return {"value": float(value), "ci_low": lo, "ci_high": hi, "p_value": p, "n_runs": int(n),
            "n_alpha": n_alpha, "boot": boot, "null": null}


def paired_contrast(X_a: Any, X_b: Any, Y: Any, clusters: Any | None = None, n_boot: int = 2000,
                    seed: int = 0, ci: float = 0.95) -> dict[str, Any]:
    """Δ = |T(X_a, Y)| − |T(X_b, Y)| on the same runs, with a paired bootstrap interval.

    Both terms are computed on the same resample of runs in every replicate (the paper's contrast:
    straggler layers, ``X_a``, against the whole model, ``X_b``).

    Example:
        >>> import numpy as np
        >>> y = np.arange(10.0)
        >>> d = paired_contrast(y, np.random.default_rng(0).random(10), y, n_boot=300)
        >>> d["value"] > 0.5, d["ci_low"] > 0
        (True, True)
    """
    xa, y = _check_matrices(X_a, Y)
    xb, _ = _check_matrices(X_b, Y)
    _check_boot(n_boot, ci)
    n = y.shape[0]
    full = np.arange(n)[None, :]
    value = abs(_snap(_same_alpha_rows(xa, y, full)[0])) - abs(_snap(_same_alpha_rows(xb, y, full)[0]))
    idx = cluster_indices(clusters, n, n_boot, seed)
    boot = np.abs(_same_alpha_rows(xa, y, idx)) - np.abs(_same_alpha_rows(xb, y, idx))
    lo, hi = _percentile(boot[np.isfinite(boot)], ci)
    return {"value": float(value), "ci_low": lo, "ci_high": hi, "n_runs": int(n)}


def partial_kendall(x: Any, y: Any, z: Any) -> float:
    """Partial Kendall τ of x and y given z: (τ_xy − τ_xz·τ_yz) / √((1 − τ_xz²)(1 − τ_yz²)).

    Pooled over the (run, α) points of several runs with z = α, it removes the association that x
    and y owe to both moving with α. NaN when x or y is a function of z alone (τ_xz² = 1).

    Example:
        >>> x, z = [1, 2, 3, 4, 5, 6], [1, 1, 2, 2, 3, 3]   # z = α: x and y both grow with it ...
        >>> y = [2, 1, 4, 3, 6, 5]                          # ... but at equal α, y falls as x rises
        >>> round(float(sps.kendalltau(x, y).statistic), 2), partial_kendall(x, y, z)
        (0.6, -1.0)
    """
    a, b = check_pairs(x, y)
    c, _ = check_pairs(z, y, names=("z", "y"))
    t = {k: float(sps.kendalltau(u, v, variant="b").statistic) for k, (u, v) in
         {"xy": (a, b), "xz": (a, c), "yz": (b, c)}.items()}
    den = (1.0 - t["xz"] ** 2) * (1.0 - t["yz"] ** 2)
    if not np.isfinite(den) or den <= 1e-12:
        return float("nan")
    return float(_snap(np.clip((t["xy"] - t["xz"] * t["yz"]) / np.sqrt(den), -1.0, 1.0)))


def auroc(labels: Any, scores: Any, clusters: Any | None = None, n_boot: int = 2000, seed: int = 0,
          ci: float = 0.95) -> dict[str, Any]:
    """AUROC of ``scores`` for ``labels`` (True = positive, e.g. failure mode) with a run bootstrap.

    ``sklearn.metrics.roc_auc_score``; 0.5 = no separation. Resamples with one class only are
    skipped. NaN (and no interval) when only one class is present.

    Example:
        >>> auroc([0, 0, 1, 1], [0.1, 0.2, 0.8, 0.9], n_boot=100)["value"]
        1.0
    """
    from sklearn.metrics import roc_auc_score

    lab = np.asarray(labels).astype(bool).ravel()
    s = _as_vector(scores, "scores")
    if lab.shape != s.shape:
        raise ParameterError(f"labels ({lab.size}) and scores ({s.size}) differ in length; give one of each per run.")
    _check_boot(n_boot, ci)
    if lab.all() or not lab.any():
        return {"value": float("nan"), "ci_low": float("nan"), "ci_high": float("nan"), "n_runs": int(lab.size),
                "n_positive": int(lab.sum())}
    idx = cluster_indices(clusters, lab.size, n_boot, seed)
    L, S = lab[idx], s[idx]
    n1 = L.sum(axis=1)
    keep = (n1 > 0) & (n1 < idx.shape[1])
    ranks = sps.rankdata(S, axis=1)  # Mann-Whitney: AUROC = (rank sum of positives − n1(n1+1)/2) / (n1·n0)
    with np.errstate(invalid="ignore", divide="ignore"):
        boot = ((ranks * L).sum(axis=1) - n1 * (n1 + 1) / 2.0) / (n1 * (idx.shape[1] - n1))
    lo, hi = _percentile(boot[keep], ci)
    return {"value": float(roc_auc_score(lab, s)), "ci_low": lo, "ci_high": hi, "n_runs": int(lab.size),
            "n_positive": int(lab.sum())}


def _zcols(a: np.ndarray) -> np.ndarray:
    sd = a.std(axis=0, keepdims=True)
    return np.where(sd > 0, (a - a.mean(axis=0, keepdims=True)) / np.where(sd > 0, sd, 1.0), 0.0)


def mde_across_runs(X: Any, Y: Any, power: float = 0.8, alpha: float = 0.05, n_sim: int = 400,
                    n_perm: int = 999, seed: int = 0) -> float:
    """Smallest |T| (:func:`same_alpha_tau`) detectable at ``power``, simulated from the observed spread.

    Each simulation keeps the observed X and replaces Y by its standardized columns with the runs
    shuffled (the observed spread, no association) plus a planted effect β·z(X). The test is the
    permutation test of :func:`across_run_test` (p < ``alpha`` against the permutation null of the
    observed data). Returns the mean simulated T at the smallest β on a grid whose rejection rate
    reaches ``power``; NaN when none does (the design cannot detect any effect, e.g. too few runs).

    Example:
        >>> import numpy as np
        >>> rng = np.random.default_rng(1)
        >>> m30 = mde_across_runs(rng.random(30), rng.random(30), n_sim=100, n_perm=199)
        >>> m8 = mde_across_runs(rng.random(8), rng.random(8), n_sim=100, n_perm=199)
        >>> 0 < m30 < m8 <= 1
        True
    """
    x, y = _check_matrices(X, Y)
    n = x.shape[0]
    perms = _perm_rows(n, n_perm, seed)
    taus = np.stack([_kendall_rows(x[perms, j], np.broadcast_to(y[:, j], (n_perm, n))) for j in range(x.shape[1])], axis=1)
    with _quiet():
        null = np.sort(np.abs(np.nanmean(taus, axis=1)))

    def rejects(t: np.ndarray) -> np.ndarray:  # across_run_test's p-value below alpha
        n_ge = null.size - np.searchsorted(null, np.abs(t) - 1e-12, side="left")
        return (1 + n_ge) / (1 + null.size) < alpha
    zx, zy = _zcols(x), _zcols(y)
    shuffles = _perm_rows(n, n_sim, seed + 1)
    noise = zy[shuffles]  # (n_sim, n, n_alpha)
    for beta in np.concatenate([[0.0], np.geomspace(0.02, 50.0, 40)]):
        ys = beta * zx[None] + noise
        taus = np.stack([_kendall_rows(np.broadcast_to(x[:, j], (n_sim, n)), ys[:, :, j])
                         for j in range(x.shape[1])], axis=1)
        with _quiet():
            stats_ = np.nanmean(taus, axis=1)
        if np.mean(rejects(stats_)) >= power:
            return float(np.nanmean(stats_))
    return float("nan")


def mde_mean(d: Any, power: float = 0.8, ci: float = 0.95, n_sim: int = 400, n_boot: int = 500,
             seed: int = 0) -> float:
    """Smallest positive mean of ``d`` (per-run differences) whose bootstrap interval excludes 0 at ``power``.

    Simulated from the observed spread: ``d`` is centred, a shift δ planted, n values redrawn with
    replacement, and the percentile bootstrap interval of the mean computed; power = share of
    simulations with the interval above 0. NaN when fewer than 2 values or no δ on the grid reaches it.

    Example:
        >>> import numpy as np
        >>> d = np.random.default_rng(0).normal(0, 1, 20)
        >>> 0.4 < mde_mean(d, n_sim=200, n_boot=200) < 1.2
        True
    """
    a = _as_vector(d, "d")
    if a.size < 2 or np.ptp(a) == 0:
        return float("nan")
    a0 = a - a.mean()
    rng = np.random.default_rng(seed)
    sims = a0[rng.integers(0, a.size, size=(n_sim, a.size))]
    boot_idx = rng.integers(0, a.size, size=(n_boot, a.size))
    lows = np.quantile(sims[:, boot_idx].mean(axis=2), (1.0 - ci) / 2.0, axis=1)  # (n_sim,)
    scale = a0.std() if a0.std() > 0 else 1.0
    for delta in np.geomspace(0.01, 20.0, 60) * scale:
        if np.mean(lows + delta > 0) >= power:
            return float(delta)
    return float("nan")


def mean_pairwise_jaccard(sets: Sequence[Iterable[Any]]) -> float:
    """Mean Jaccard index |A ∩ B| / |A ∪ B| over all pairs of the given sets (NaN with fewer than 2).

    Example:
        >>> round(mean_pairwise_jaccard([{"a", "b"}, {"a", "c"}, {"a", "b"}]), 4)   # (1/3 + 1 + 1/3) / 3
        0.5556
    """
    ss = [frozenset(s) for s in sets]
    vals = [len(a & b) / len(a | b) if a | b else 1.0 for i, a in enumerate(ss) for b in ss[i + 1:]]
    return float(np.mean(vals)) if vals else float("nan")
