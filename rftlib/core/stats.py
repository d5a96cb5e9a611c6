"""Correlations, bootstrap intervals and permutation tests over runs, on top of ``scipy.stats``.

The study asks whether sharpness (whole-model or per layer) tracks the OOD accuracy of interpolated
models θ(α). Every correlation here reports three coefficients, each with its p-value (scipy) and a
percentile bootstrap interval:

- Kendall τ-b (``scipy.stats.kendalltau(variant="b")``), the headline statistic (robust, handles ties);
- Spearman ρ (``scipy.stats.spearmanr``);
- Pearson r (``scipy.stats.pearsonr``).

**Resampling** is scipy's: :func:`bootstrap_replicates` draws resamples with
``scipy.stats.bootstrap`` (seeded; the units are runs or points, or whole *clusters* of runs, e.g.
the seeds of one recipe, when ``clusters`` is given: a resample draws clusters with replacement and
takes every run of each), and :func:`permutation_p` is ``scipy.stats.permutation_test`` shuffling
runs (exact when there are fewer permutations than asked). A resample in which a statistic is
undefined (x or y constant) gives NaN; it is skipped, and ``n_boot_used`` says how many made the
interval. The only hand-written kernel is :func:`kendall_tau_b`, a τ-b over the last axis of arrays
(``scipy.stats.kendalltau`` takes one pair of vectors per call, far too slow for 2,000 resamples ×
every α × every simulation of the power analysis).

**Within runs** (:func:`within_run`, one correlation per run across its α points) and **combined over
runs** (:func:`combine_within`: mean τ with a bootstrap interval *over runs*, a sign test and a
Stouffer combination of p-values).

**Why Stouffer and not Fisher.** Fisher's method combines two-sided p-values and so rewards strong
correlations of *either* sign: three runs with τ = +0.9, −0.9, +0.9 would look "significant". The
claims are about a *consistent* direction, so each run's two-sided p-value is turned into a
one-sided p-value for a positive association (p/2 when τ > 0, 1 − p/2 when τ < 0; valid because the
null distributions of τ, ρ and r are symmetric), combined with Stouffer's Z
(``scipy.stats.combine_pvalues(method="stouffer")``), and reported two-sided. Opposite signs cancel.
The sign test (binomial test on how many runs have τ > 0) is reported as well, but with few runs it
cannot reach significance (3 runs: p ≥ 0.25), so ``sign_consistency`` (the share of runs agreeing
with the majority sign) is the number to read next to it.

**Across runs** (the population study, ``book/findings/f1.md``): matrices with one row per run and
one column per α point; the same-α statistic T (:func:`same_alpha_tau`), its run-bootstrap interval
and permutation p-value (:func:`across_run_test`), the paired contrast of two predictors
(:func:`paired_contrast`), the partial τ given α, the AUROC for failure vs success, and the smallest
detectable effects (:func:`mde_across_runs`, :func:`mde_mean`).

Example:
    >>> r = correlate([0.1, 0.2, 0.3, 0.4, 0.5, 0.6], [3, 5, 4, 6, 8, 9], n_boot=200)
    >>> round(r["kendall_tau"], 3), round(r["spearman_rho"], 3)
    (0.867, 0.943)
    >>> r["kendall_ci_low"] <= r["kendall_tau"] <= r["kendall_ci_high"] <= 1
    True
"""

from __future__ import annotations

import itertools
import warnings
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import pandas as pd
from scipy import stats as sps

from rftlib.errors import ParameterError

__all__ = [
    "COEFFICIENTS",
    "check_pairs",
    "kendall_tau_b",
    "bootstrap_replicates",
    "percentile_interval",
    "permutation_p",
    "correlate",
    "within_run",
    "combine_within",
    "bootstrap_mean_ci",
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
#: Permutations per batch of :func:`permutation_p` (bounds the memory of the pair comparisons).
_PERM_BATCH = 250


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
# the kernel, and scipy's resampling
# ----------------------------------------------------------------------------------------------

def kendall_tau_b(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Kendall τ-b over the last axis (arrays broadcast): (concordant − discordant) / √(untied_x · untied_y).

    NaN where x or y is constant. The same number as ``scipy.stats.kendalltau(variant="b")``, for a
    whole stack of resamples at once.

    Example:
        >>> kendall_tau_b(np.array([[1, 2, 3, 4], [1, 2, 3, 4]]), np.array([[1, 3, 2, 4], [4, 3, 2, 1]]))
        array([ 0.66666667, -1.        ])
    """
    x, y = np.broadcast_arrays(np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64))
    i, j = np.triu_indices(x.shape[-1], 1)
    dx, dy = np.sign(x[..., i] - x[..., j]), np.sign(y[..., i] - y[..., j])
    den = np.sqrt(np.count_nonzero(dx, axis=-1).astype(np.float64) * np.count_nonzero(dy, axis=-1))
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.clip((dx * dy).sum(axis=-1) / den, -1.0, 1.0)


def _snap(v: np.ndarray | float) -> np.ndarray | float:
    """Round coefficients within 1e-12 of ±1 to exactly ±1 (scipy's τ of a perfect ranking can be 1 − 1e-16)."""
    a = np.asarray(v, dtype=np.float64)
    a = np.where(np.abs(np.abs(a) - 1.0) < 1e-12, np.sign(a), a)
    return float(a) if a.ndim == 0 else a


def _members(clusters: Any | None, n: int) -> list[np.ndarray] | None:
    """The runs of each cluster (``None``: every run its own cluster)."""
    if clusters is None:
        return None
    labels = np.asarray(clusters)
    if labels.shape != (n,):
        raise ParameterError(f"clusters has {labels.size} labels for {n} points; give one label per point (run).")
    return [np.flatnonzero(labels == u) for u in pd.unique(labels)]


def bootstrap_replicates(statistic: Callable[[np.ndarray], Any], n: int, n_boot: int, seed: int = 0,
                         clusters: Any | None = None) -> np.ndarray:
    """``statistic(idx)`` on ``n_boot`` bootstrap resamples of ``n`` units, drawn by ``scipy.stats.bootstrap``.

    ``idx`` is the index array of one resample (``n`` indices; with ``clusters``, one label per unit,
    all the units of the drawn clusters). The statistic may return a vector (the result is then
    ``(len, n_boot)``) or NaN where it is undefined. Fewer than 2 units (or clusters): all NaN.

    Example:
        >>> boot = bootstrap_replicates(lambda i: np.mean(i), 4, n_boot=3, clusters=["a", "a", "b", "b"])
        >>> boot.shape, set(boot) <= {0.5, 1.5, 2.5}
        ((3,), True)
    """
    members = _members(clusters, n)
    k = n if members is None else len(members)
    if n_boot == 0:
        return np.empty(0)
    if k < 2:
        return np.full(n_boot, np.nan)
    stat = statistic if members is None else (lambda d: statistic(np.concatenate([members[c] for c in d])))
    with warnings.catch_warnings():  # NaN replicates make scipy's own interval NaN; ours skips them
        warnings.simplefilter("ignore")
        res = sps.bootstrap((np.arange(k),), stat, n_resamples=n_boot, vectorized=False, method="percentile", rng=seed)
    return np.asarray(res.bootstrap_distribution, dtype=np.float64)


def percentile_interval(boot: Any, ci: float = 0.95) -> tuple[float, float]:
    """Percentile interval of bootstrap replicates, NaN ones skipped (NaN, NaN when none is finite).

    Example:
        >>> percentile_interval([1.0, 2.0, 3.0, float("nan")], ci=0.5)
        (1.5, 2.5)
    """
    b = np.asarray(boot, dtype=np.float64)
    b = b[np.isfinite(b)]
    if b.size == 0:
        return float("nan"), float("nan")
    lo, hi = np.quantile(b, [(1.0 - ci) / 2.0, 1.0 - (1.0 - ci) / 2.0])
    return float(lo), float(hi)


def permutation_p(statistic: Callable[[np.ndarray], Any], n: int, n_perm: int,
                  seed: int = 0) -> tuple[float, float, np.ndarray]:
    """Two-sided permutation test of ``statistic(idx)`` over orders of ``n`` runs (``scipy.stats.permutation_test``).

    ``statistic`` takes index arrays ``(..., n)`` (the identity for the observed value, permutations
    for the null; vectorized). Exact when ``n!`` ≤ ``n_perm``. Returns ``(observed, p_value, null)``;
    the p-value is NaN when the observed statistic is.

    Example:
        >>> x = np.arange(8.0)
        >>> t, p, null = permutation_p(lambda i: kendall_tau_b(x[i], x), 8, n_perm=199)
        >>> t, p, null.size   # the smallest two-sided p of 199 permutations: 2 · 1/200
        (1.0, 0.01, 199)
    """
    res = sps.permutation_test((np.arange(n),), lambda i, axis=-1: statistic(i), permutation_type="pairings",
                               vectorized=True, n_resamples=n_perm, batch=_PERM_BATCH, rng=seed)
    t = float(res.statistic)
    return t, float(res.pvalue) if np.isfinite(t) else float("nan"), np.asarray(res.null_distribution)


# ----------------------------------------------------------------------------------------------
# correlations of paired samples; within runs; combined over runs
# ----------------------------------------------------------------------------------------------

def _point(x: np.ndarray, y: np.ndarray) -> dict[str, float]:
    """Point estimates and two-sided p-values from scipy; NaN when x or y is constant."""
    out: dict[str, float] = {}
    constant = np.ptp(x) == 0 or np.ptp(y) == 0
    tests = {"kendall": lambda: sps.kendalltau(x, y, variant="b"), "spearman": lambda: sps.spearmanr(x, y),
             "pearson": lambda: sps.pearsonr(x, y)}
    for name, key in COEFFICIENTS.items():
        res = None if constant else tests[name]()
        out[key] = float("nan") if res is None else _snap(float(res.statistic))
        out[f"{name}_p"] = float("nan") if res is None else float(res.pvalue)
    return out


def _coefficients(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """τ-b, ρ and r of one resample (NaN when x or y is constant)."""
    if np.ptp(x) == 0 or np.ptp(y) == 0:
        return np.full(3, np.nan)
    rho = np.corrcoef(sps.rankdata(x), sps.rankdata(y))[0, 1]
    return _snap(np.array([kendall_tau_b(x, y), rho, np.corrcoef(x, y)[0, 1]]))


def correlate(x: Any, y: Any, n_boot: int = 1000, seed: int = 0, ci: float = 0.95,
              groups: Any | None = None) -> dict[str, Any]:
    """Kendall τ-b, Spearman ρ and Pearson r of paired samples, with p-values and bootstrap intervals.

    Args:
        x, y: paired 1-D samples (at least 3 points, finite).
        n_boot: bootstrap resamples (0 = no interval: ``*_ci_low``/``*_ci_high`` are NaN).
        seed: seed of the resampling (:func:`bootstrap_replicates`).
        ci: confidence level of the percentile interval.
        groups: optional group label per point (e.g. the run); whole groups are resampled (cluster
            bootstrap). Needs at least 2 groups. The p-values are scipy's and treat points as independent.

    Returns:
        A flat dict: ``n``; for each coefficient ``kendall_tau``/``spearman_rho``/``pearson_r``, its
        ``<name>_p`` (two-sided), ``<name>_ci_low`` and ``<name>_ci_high``; and ``ci``, ``n_boot``,
        ``n_boot_used`` (resamples where neither x nor y was constant), ``bootstrap``
        (``"pairs"``/``"groups"``/``"none"``). When x or y is constant every coefficient is NaN.

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
    if groups is not None and len(_members(groups, x.size)) < 2:
        raise ParameterError("groups has 1 distinct label; a cluster bootstrap needs at least 2. "
                             "Use groups=None to resample pairs.")
    out: dict[str, Any] = {"n": int(x.size), **_point(x, y)}
    constant = np.ptp(x) == 0 or np.ptp(y) == 0
    boot = np.full((3, 0), np.nan)
    if n_boot and not constant:
        boot = bootstrap_replicates(lambda i: _coefficients(x[i], y[i]), x.size, n_boot, seed, groups)
    for k, name in enumerate(COEFFICIENTS):
        out[f"{name}_ci_low"], out[f"{name}_ci_high"] = percentile_interval(boot[k], ci)
    mode = "none" if n_boot == 0 else "pairs" if groups is None else "groups"
    used = int(np.isfinite(boot[0]).sum())
    return {**out, "ci": float(ci), "n_boot": int(n_boot), "n_boot_used": used, "bootstrap": mode}


def within_run(df: pd.DataFrame, x: str, y: str, by: Sequence[str] = ("world", "run"),
               n_boot: int = 1000, seed: int = 0, ci: float = 0.95) -> pd.DataFrame:
    """Within-run correlation: :func:`correlate` of columns ``x`` and ``y`` in each group of ``by``.

    The table should hold one row per α of each run (e.g. sharpness of one layer, kind, norm, ρ
    against OOD accuracy); filter it first. Every group uses the same ``seed``.

    Example:
        >>> df = pd.DataFrame({"world": "w", "run": ["a"] * 3 + ["b"] * 3,
        ...                    "alpha": [0, .5, 1] * 2, "s": [1, 2, 3, 1, 2, 3], "acc": [3, 2, 1, 1, 3, 2]})
        >>> within_run(df, "s", "acc", n_boot=0)["kendall_tau"].round(3).tolist()
        [-1.0, 0.333]
    """
    by = [by] if isinstance(by, str) else list(by)
    if not isinstance(df, pd.DataFrame):
        raise ParameterError(f"df must be a pandas DataFrame; got {type(df).__name__}.")
    missing = [c for c in [*by, x, y] if c not in df.columns]
    if missing:
        raise ParameterError(f"df lacks column(s) {missing}; it has {list(df.columns)}.")
    dup = df.duplicated([*by, "alpha"]) if "alpha" in df.columns else pd.Series(False, index=df.index)
    if dup.any():
        r = df[dup].iloc[0]
        raise ParameterError(
            f"several rows share {', '.join(f'{c}={r[c]!r}' for c in [*by, 'alpha'])}; within-run "
            "correlation needs one row per alpha. Filter the table to one layer/split/kind/norm/rho first.")
    rows = []
    for key, sub in df.groupby(by, sort=True, dropna=False):
        try:
            res = correlate(sub[x].to_numpy(), sub[y].to_numpy(), n_boot=n_boot, seed=seed, ci=ci)
        except ParameterError as e:
            label = ", ".join(f"{k}={v!r}" for k, v in zip(by, key))
            raise ParameterError(f"group {label} ({x!r} vs {y!r}): {e}") from None
        rows.append({**dict(zip(by, key)), "x": x, "y": y, **res})
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
    t, p = np.asarray(taus, dtype=np.float64).ravel(), np.asarray(p_values, dtype=np.float64).ravel()
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
    t, p, k = t[keep], p[keep], int(keep.sum())
    out: dict[str, Any] = {"n_runs": int(keep.size), "n_runs_used": k}
    if k == 0:
        return {**out, **dict.fromkeys(("mean", "ci_low", "ci_high"), np.nan), "n_pos": 0, "n_neg": 0,
                **dict.fromkeys(("sign_consistency", "sign_test_p", "stouffer_z", "stouffer_p"), np.nan)}
    out["mean"] = float(t.mean())
    out["ci_low"], out["ci_high"] = percentile_interval(bootstrap_replicates(lambda i: t[i].mean(), k, n_boot, seed), ci)
    n_pos, n_neg = int((t > 0).sum()), int((t < 0).sum())
    out.update(n_pos=n_pos, n_neg=n_neg, sign_consistency=max(n_pos, n_neg) / k,
               sign_test_p=float(sps.binomtest(n_pos, n_pos + n_neg, 0.5).pvalue) if n_pos + n_neg else 1.0)
    # one-sided p-values for a positive association, then Stouffer; clipped away from 0 and 1
    p_pos = np.clip(np.where(t > 0, p / 2.0, np.where(t < 0, 1.0 - p / 2.0, 0.5)), 1e-300, 1.0 - 1e-16)
    z = float(sps.combine_pvalues(p_pos, method="stouffer").statistic) + 0.0  # no "-0.0"
    return {**out, "stouffer_z": z, "stouffer_p": float(min(1.0, 2.0 * sps.norm.sf(abs(z))))}


def bootstrap_mean_ci(x: Any, n_boot: int = 1000, seed: int = 0, ci: float = 0.95) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of ``x`` (``scipy.stats.bootstrap``; NaN, NaN for an empty ``x``).

    Example:
        >>> bootstrap_mean_ci([0.5, 0.5, 0.5], n_boot=100)
        (0.5, 0.5)
    """
    a = np.asarray(x, dtype=np.float64).ravel()
    if a.size <= 1:  # nothing to resample: the interval of one value is that value
        return (float("nan"), float("nan")) if a.size == 0 else (float(a[0]), float(a[0]))
    _check_boot(n_boot, ci)
    return percentile_interval(bootstrap_replicates(lambda i: a[i].mean(), a.size, n_boot, seed), ci)


# ----------------------------------------------------------------------------------------------
# the run population: the same-α statistic, contrasts, partial τ, AUROC, power
# ----------------------------------------------------------------------------------------------
#
# These work on matrices with one row per run and one column per α point (``X``: sharpness, ``Y``:
# OOD accuracy). Runs are the resampling unit; ``clusters`` (one label per run, e.g. the recipe)
# makes the bootstrap draw whole clusters, so seeds of one recipe stay together.

def _as_matrix(v: Any, name: str) -> np.ndarray:
    a = np.asarray(v, dtype=np.float64)
    a = a[:, None] if a.ndim == 1 else a
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


def _T(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """T over stacks: ``x``, ``y`` are ``(..., runs, α)``; the mean over α of the across-run τ-b (NaN columns skipped)."""
    taus = kendall_tau_b(np.swapaxes(x, -1, -2), np.swapaxes(y, -1, -2))
    with warnings.catch_warnings():  # all-NaN rows give NaN, which is meant
        warnings.simplefilter("ignore", RuntimeWarning)
        return np.nanmean(taus, axis=-1)


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
    return float(_snap(_T(x, y)))


def across_run_test(X: Any, Y: Any, clusters: Any | None = None, n_boot: int = 2000, n_perm: int = 1999,
                    seed: int = 0, ci: float = 0.95) -> dict[str, Any]:
    """T (:func:`same_alpha_tau`) with a run-bootstrap interval and a permutation p-value.

    The p-value is scipy's two-sided permutation test (:func:`permutation_p`) shuffling runs, one
    permutation for every α, so each run's path stays whole. One column (e.g. sharpness at θ_ft
    against the OOD gain) gives a plain across-run τ.

    Returns:
        dict with ``value``, ``ci_low``, ``ci_high``, ``p_value``, ``n_runs``, ``n_alpha`` (columns used).

    Example:
        >>> x = np.arange(12.0)
        >>> r = across_run_test(x, x ** 2, n_boot=200, n_perm=999)
        >>> r["value"], r["p_value"] < 0.01, r["ci_low"] > 0.5
        (1.0, True, True)
    """
    x, y = _check_matrices(X, Y)
    _check_boot(n_boot, ci)
    n = x.shape[0]
    value, p, _ = permutation_p(lambda i: _T(x[i], y), n, n_perm, seed + 1)
    lo, hi = percentile_interval(bootstrap_replicates(lambda i: _T(x[i], y[i]), n, n_boot, seed, clusters), ci)
    n_alpha = int(np.sum((np.ptp(x, axis=0) > 0) & (np.ptp(y, axis=0) > 0)))
    return {"value": float(_snap(value)), "ci_low": lo, "ci_high": hi, "p_value": p, "n_runs": int(n), "n_alpha": n_alpha}


def paired_contrast(X_a: Any, X_b: Any, Y: Any, clusters: Any | None = None, n_boot: int = 2000,
                    seed: int = 0, ci: float = 0.95) -> dict[str, Any]:
    """Δ = |T(X_a, Y)| − |T(X_b, Y)| on the same runs, with a paired bootstrap interval.

    Both terms are computed on the same resample of runs in every replicate (the paper's contrast:
    straggler layers, ``X_a``, against the whole model, ``X_b``).

    Example:
        >>> y = np.arange(10.0)
        >>> d = paired_contrast(y, np.random.default_rng(0).random(10), y, n_boot=300)
        >>> d["value"] > 0.5, d["ci_low"] > 0
        (True, True)
    """
    xa, y = _check_matrices(X_a, Y)
    xb, _ = _check_matrices(X_b, Y)
    _check_boot(n_boot, ci)
    delta = lambda i: abs(_snap(_T(xa[i], y[i]))) - abs(_snap(_T(xb[i], y[i])))  # noqa: E731
    n = y.shape[0]
    lo, hi = percentile_interval(bootstrap_replicates(delta, n, n_boot, seed, clusters), ci)
    return {"value": float(delta(np.arange(n))), "ci_low": lo, "ci_high": hi, "n_runs": int(n)}


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
    t_xy, t_xz, t_yz = (float(sps.kendalltau(u, v, variant="b").statistic) for u, v in ((a, b), (a, c), (b, c)))
    den = (1.0 - t_xz ** 2) * (1.0 - t_yz ** 2)
    if not np.isfinite(den) or den <= 1e-12:
        return float("nan")
    return float(_snap(np.clip((t_xy - t_xz * t_yz) / np.sqrt(den), -1.0, 1.0)))


def _auc(lab: np.ndarray, s: np.ndarray) -> float:
    """AUROC as the Mann–Whitney U of the positives over n1·n0 (NaN with one class)."""
    n1 = int(lab.sum())
    if n1 == 0 or n1 == lab.size:
        return float("nan")
    return float((sps.rankdata(s)[lab].sum() - n1 * (n1 + 1) / 2.0) / (n1 * (lab.size - n1)))


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
    out = {"n_runs": int(lab.size), "n_positive": int(lab.sum())}
    if lab.all() or not lab.any():
        return {"value": float("nan"), "ci_low": float("nan"), "ci_high": float("nan"), **out}
    lo, hi = percentile_interval(bootstrap_replicates(lambda i: _auc(lab[i], s[i]), lab.size, n_boot, seed, clusters), ci)
    return {"value": float(roc_auc_score(lab, s)), "ci_low": lo, "ci_high": hi, **out}


def _zcols(a: np.ndarray) -> np.ndarray:
    sd = a.std(axis=0, keepdims=True)  # a constant column (e.g. α = 0) standardizes to 0
    return np.where(sd > 0, (a - a.mean(axis=0, keepdims=True)) / np.where(sd > 0, sd, 1.0), 0.0)


def mde_across_runs(X: Any, Y: Any, power: float = 0.8, alpha: float = 0.05, n_sim: int = 400,
                    n_perm: int = 999, seed: int = 0) -> float:
    """Smallest |T| (:func:`same_alpha_tau`) detectable at ``power``, simulated from the observed spread.

    Each simulation keeps the observed X and replaces Y by its standardized columns with the runs
    shuffled (the observed spread, no association) plus a planted effect β·z(X). The test is the
    permutation test of :func:`across_run_test` (its null distribution for the observed X, and
    scipy's two-sided p-value rule, p < ``alpha``). Returns the mean simulated T at the smallest β
    on a grid whose rejection rate reaches ``power``; NaN when none does (e.g. too few runs).

    Example:
        >>> rng = np.random.default_rng(1)
        >>> m30 = mde_across_runs(rng.random(30), rng.random(30), n_sim=100, n_perm=199)
        >>> m8 = mde_across_runs(rng.random(8), rng.random(8), n_sim=100, n_perm=199)
        >>> 0 < m30 < m8 <= 1
        True
    """
    x, y = _check_matrices(X, Y)
    n = x.shape[0]
    _, _, null = permutation_p(lambda i: _T(x[i], y), n, n_perm, seed + 1)
    null = np.sort(null)
    adj = 0 if null.size < n_perm else 1  # scipy's +1 for a randomized (not exact) test

    def rejects(t: np.ndarray) -> np.ndarray:  # scipy's two-sided rule: 2 · the smaller one-sided p
        g = np.abs(t) * np.finfo(np.float64).eps * 100
        less, greater = np.searchsorted(null, t + g, "right"), null.size - np.searchsorted(null, t - g, "left")
        return np.isfinite(t) & (2 * (np.minimum(less, greater) + adj) / (null.size + adj) < alpha)
    zx = _zcols(x)
    rng = np.random.default_rng(seed + 2)
    noise = _zcols(y)[rng.permuted(np.broadcast_to(np.arange(n), (n_sim, n)), axis=1)]  # (n_sim, n, n_alpha)
    for beta in np.concatenate([[0.0], np.geomspace(0.02, 50.0, 40)]):
        t = _T(x, beta * zx + noise)
        if np.mean(rejects(t)) >= power:
            return float(np.nanmean(t))
    return float("nan")


def mde_mean(d: Any, power: float = 0.8, ci: float = 0.95, n_sim: int = 400, n_boot: int = 500,
             seed: int = 0) -> float:
    """Smallest positive mean of ``d`` (per-run differences) whose bootstrap interval excludes 0 at ``power``.

    Simulated from the observed spread: ``d`` is centred, n values redrawn with replacement per
    simulation, and the percentile interval of the mean (``scipy.stats.bootstrap``, one call for all
    simulations) computed; a shift δ moves the interval by δ, and power is the share of simulations
    with the shifted interval above 0. NaN when fewer than 2 values or no δ on the grid reaches it.

    Example:
        >>> d = np.random.default_rng(0).normal(0, 1, 20)
        >>> 0.4 < mde_mean(d, n_sim=200, n_boot=200) < 1.2
        True
    """
    a = _as_vector(d, "d")
    if a.size < 2 or np.ptp(a) == 0:
        return float("nan")
    a0 = a - a.mean()
    sims = np.random.default_rng(seed).choice(a0, size=(n_sim, a.size))
    lows = sps.bootstrap((sims,), np.mean, axis=-1, n_resamples=n_boot, method="percentile", confidence_level=ci,
                         rng=seed + 1).confidence_interval.low
    for delta in np.geomspace(0.01, 20.0, 60) * (a0.std() or 1.0):
        if np.mean(lows + delta > 0) >= power:
            return float(delta)
    return float("nan")


def mean_pairwise_jaccard(sets: Sequence[Iterable[Any]]) -> float:
    """Mean Jaccard index |A ∩ B| / |A ∪ B| over all pairs of the given sets (NaN with fewer than 2).

    Example:
        >>> round(mean_pairwise_jaccard([{"a", "b"}, {"a", "c"}, {"a", "b"}]), 4)   # (1/3 + 1 + 1/3) / 3
        0.5556
    """
    pairs = itertools.combinations([frozenset(s) for s in sets], 2)
    vals = [len(a & b) / len(a | b) if a | b else 1.0 for a, b in pairs]
    return float(np.mean(vals)) if vals else float("nan")
