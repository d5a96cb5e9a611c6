"""Interpolation curves θ(α): loss barrier, mean OOD accuracy, and the per-run WiSE-FT summary.

A *curve* table is tidy (``results.md``): one row per (world, run, α, split) with ``accuracy`` in
[0, 1] and, optionally, ``loss`` (mean cross-entropy). α = 0 is the zero-shot model θ_zs, α = 1 the
fine-tuned θ_ft.

Definitions (``paper.md``):

- **loss barrier** B = max_α L(θ(α)) − ½(L(θ_zs) + L(θ_ft)), on held-out ID data over the α grid
  (the maximum includes the endpoints, so B ≥ |L(θ_zs) − L(θ_ft)|/2 ≥ 0);
- **mean OOD accuracy**: the unweighted mean of the OOD splits' accuracies at each α;
- **failure mode**: max over interior α ∈ (0, 1) of Acc_OOD(θ(α)) ≤ Acc_OOD(θ_zs);
- **successful** interpolation: some interior α beats *both* endpoints OOD.

Identifier columns: by default every column other than ``alpha``, ``split``, ``accuracy``, ``loss``
and ``value`` identifies a curve (``world``, ``run``, and any extra ones such as a sparsity level), so
the same functions serve plain and intervention tables; pass ``keys`` to choose explicitly.

Example:
    >>> loss_barrier([0, 0.5, 1], [1.0, 3.0, 2.0])
    1.5
"""

from __future__ import annotations

from typing import Literal, Sequence

import numpy as np
import pandas as pd

from rftlib.errors import ParameterError
from rftlib.core.stats import _as_vector

__all__ = [
    "ID_SPLIT",
    "OOD_MEAN",
    "curve_keys",
    "loss_barrier",
    "ood_mean",
    "is_failure_mode",
    "is_successful",
    "summarize_runs",
]

ID_SPLIT = "id"
OOD_MEAN = "ood_mean"
_MEASURES = ("alpha", "split", "accuracy", "loss", "value")
_ATOL = 1e-9


def _endpoints(alphas: np.ndarray, name: str = "alphas") -> tuple[int, int, np.ndarray]:
    """Indices of α = 0 and α = 1 and a mask of interior α; raise when an endpoint is missing."""
    if np.any((alphas < -_ATOL) | (alphas > 1 + _ATOL)):
        raise ParameterError(f"{name} must lie in [0, 1] (0 = zero-shot, 1 = fine-tuned); got {alphas.tolist()}.")
    if len(np.unique(alphas)) != alphas.size:
        raise ParameterError(f"{name} has repeated values {alphas.tolist()}; give one value per alpha.")
    zs, ft = np.flatnonzero(np.isclose(alphas, 0.0, atol=_ATOL)), np.flatnonzero(np.isclose(alphas, 1.0, atol=_ATOL))
    if zs.size != 1 or ft.size != 1:
        raise ParameterError(
            f"{name} must contain both endpoints alpha=0 (theta_zs) and alpha=1 (theta_ft); got {alphas.tolist()}."
        )
    interior = (alphas > _ATOL) & (alphas < 1 - _ATOL)
    return int(zs[0]), int(ft[0]), interior


def loss_barrier(alphas: Sequence[float], losses: Sequence[float],
                 reference: Literal["mean", "linear"] = "mean") -> float:
    """Loss barrier of an interpolation path.

    Args:
        alphas: the α grid (any order), containing 0 and 1.
        losses: L(θ(α)) at each α (held-out ID loss).
        reference: ``"mean"`` (the definition used in the study, Frankle et al. 2020):
            B = max_α L(θ(α)) − ½(L(θ_zs) + L(θ_ft)). ``"linear"`` (an ablation, Entezari et al. 2022):
            max_α [L(θ(α)) − ((1−α)·L(θ_zs) + α·L(θ_ft))], which is 0 for a path that never rises above
            the chord between its endpoints.

    Example:
        >>> loss_barrier([0, 0.5, 1], [1.0, 0.5, 1.0])     # U shape: the endpoints are the maximum
        0.0
        >>> loss_barrier([1, 0, 0.5], [1.0, 1.0, 4.0])     # ∩ shape, any α order
        3.0
        >>> loss_barrier([0, 0.5, 1], [2.0, 1.5, 1.0], reference="linear")
        0.0
    """
    a, L = _as_vector(alphas, "alphas"), _as_vector(losses, "losses")
    if a.size != L.size:
        raise ParameterError(f"alphas and losses differ in length ({a.size} vs {L.size}); give one loss per alpha.")
    zs, ft, _ = _endpoints(a)
    if reference == "mean":
        return float(L.max() - 0.5 * (L[zs] + L[ft]))
    if reference == "linear":
        return float(np.max(L - ((1.0 - a) * L[zs] + a * L[ft])))
    raise ParameterError(f"reference={reference!r} must be 'mean' (max minus endpoint mean) or 'linear' (max above the chord).")


def is_failure_mode(alphas: Sequence[float], ood_acc: Sequence[float], tol: float = 0.0) -> bool:
    """Failure mode: no interior α beats zero-shot OOD, i.e. max_{α∈(0,1)} Acc_OOD ≤ Acc_OOD(θ_zs) + tol.

    Example:
        >>> is_failure_mode([0, 0.5, 1], [0.6, 0.5, 0.4])
        True
        >>> is_failure_mode([0, 0.5, 1], [0.6, 0.7, 0.4])
        False
    """
    a, acc = _as_vector(alphas, "alphas"), _as_vector(ood_acc, "ood_acc")
    if a.size != acc.size:
        raise ParameterError(f"alphas and ood_acc differ in length ({a.size} vs {acc.size}).")
    zs, _, interior = _endpoints(a)
    if not interior.any():
        raise ParameterError(f"alphas {a.tolist()} has no interior value in (0, 1); the failure mode is undefined.")
    return bool(acc[interior].max() <= acc[zs] + tol)


def is_successful(alphas: Sequence[float], ood_acc: Sequence[float], tol: float = 0.0) -> bool:
    """Successful interpolation: some interior α beats both endpoints OOD by more than ``tol``.

    Example:
        >>> is_successful([0, 0.5, 1], [0.6, 0.7, 0.65]), is_successful([0, 0.5, 1], [0.6, 0.7, 0.8])
        (True, False)
    """
    a, acc = _as_vector(alphas, "alphas"), _as_vector(ood_acc, "ood_acc")
    if a.size != acc.size:
        raise ParameterError(f"alphas and ood_acc differ in length ({a.size} vs {acc.size}).")
    zs, ft, interior = _endpoints(a)
    if not interior.any():
        raise ParameterError(f"alphas {a.tolist()} has no interior value in (0, 1); success is undefined.")
    return bool(acc[interior].max() > max(acc[zs], acc[ft]) + tol)


def curve_keys(df: pd.DataFrame, keys: Sequence[str] | None = None) -> list[str]:
    """Identifier columns of a curve table: ``keys`` if given, else all but alpha/split/accuracy/loss/value.

    Example:
        >>> curve_keys(pd.DataFrame(columns=["world", "run", "alpha", "split", "accuracy", "loss"]))
        ['world', 'run']
    """
    if keys is not None:
        keys = [keys] if isinstance(keys, str) else list(keys)
        missing = [k for k in keys if k not in df.columns]
        if missing:
            raise ParameterError(f"keys {missing} are not columns of the table {list(df.columns)}.")
        return keys
    return [c for c in df.columns if c not in _MEASURES]


def _check_curves(df: pd.DataFrame, need: Sequence[str] = ("alpha", "split", "accuracy")) -> None:
    if not isinstance(df, pd.DataFrame):
        raise ParameterError(f"df must be a tidy pandas DataFrame; got {type(df).__name__}.")
    missing = [c for c in need if c not in df.columns]
    if missing:
        raise ParameterError(f"curve table lacks column(s) {missing}; it has {list(df.columns)} (see results.md).")
    if df.empty:
        raise ParameterError("curve table is empty.")


def _check_unique(df: pd.DataFrame, cols: list[str]) -> None:
    dup = df.duplicated(cols)
    if dup.any():
        r = df[dup].iloc[0]
        raise ParameterError(
            f"several rows share {', '.join(f'{c}={r[c]!r}' for c in cols)}; a curve needs one row per "
            "(identifiers, alpha, split). Filter the table or pass keys= naming the extra identifier columns."
        )


def _ood_splits(df: pd.DataFrame, ood_splits: Sequence[str] | None, id_split: str) -> list[str]:
    present = list(dict.fromkeys(df["split"].astype(str)))
    if ood_splits is None:
        ood = [s for s in present if s not in (id_split, OOD_MEAN)]
    else:
        ood = [ood_splits] if isinstance(ood_splits, str) else list(ood_splits)
        unknown = [s for s in ood if s not in present]
        if unknown:
            raise ParameterError(f"ood_splits {unknown} are not in the table; its splits are {present}.")
        if id_split in ood:
            raise ParameterError(f"ood_splits {ood} contains the ID split {id_split!r}.")
    if not ood:
        raise ParameterError(f"no OOD split in the table (splits: {present}, ID split {id_split!r}).")
    return ood


def ood_mean(df: pd.DataFrame, ood_splits: Sequence[str] | None = None, id_split: str = ID_SPLIT,
             keys: Sequence[str] | None = None) -> pd.DataFrame:
    """Mean accuracy (and loss, when present) over the OOD splits at each α, as tidy rows ``split="ood_mean"``.

    Args:
        ood_splits: the OOD splits to average (default: every split except ``id_split``). Every curve
            must have every one of them at every α (else :class:`ParameterError`).
        keys: identifier columns (default: see :func:`curve_keys`).

    Example:
        >>> df = pd.DataFrame({"world": "w", "run": "r", "alpha": [0, 0, 0, 1, 1, 1],
        ...                    "split": ["id", "a", "b"] * 2, "accuracy": [.9, .5, .7, .95, .4, .4]})
        >>> ood_mean(df)
          world run  alpha     split  accuracy
        0     w   r    0.0  ood_mean       0.6
        1     w   r    1.0  ood_mean       0.4
    """
    _check_curves(df)
    keys = curve_keys(df, keys)
    _check_unique(df, [*keys, "alpha", "split"])
    ood = _ood_splits(df, ood_splits, id_split)
    sub = df[df["split"].astype(str).isin(ood)]
    measures = [c for c in ("accuracy", "loss") if c in df.columns]
    g = sub.groupby([*keys, "alpha"], sort=True, dropna=False)
    counts = g["split"].nunique()
    short = counts[counts < len(ood)]
    if len(short):
        key = short.index[0]
        key = key if isinstance(key, tuple) else (key,)
        raise ParameterError(
            f"curve {dict(zip([*keys, 'alpha'], key))} has {int(short.iloc[0])} of the {len(ood)} OOD splits "
            f"{ood}; every alpha needs all of them."
        )
    out = g[measures].mean().reset_index()
    out.insert(len(keys) + 1, "split", OOD_MEAN)
    out["alpha"] = out["alpha"].astype(float)
    return out


def summarize_runs(df: pd.DataFrame, ood_splits: Sequence[str] | None = None, id_split: str = ID_SPLIT,
                   keys: Sequence[str] | None = None, tol: float = 0.0,
                   skip_runs: Sequence[str] = ("zeroshot",)) -> pd.DataFrame:
    """One row per interpolation curve (per run): endpoints, best interior α, gains, flags, barrier.

    OOD accuracy is the mean over ``ood_splits`` (:func:`ood_mean`). Rows whose ``run`` is in
    ``skip_runs`` (the stand-alone zero-shot evaluation) are not curves and are left out.

    Columns (after the identifier columns): ``n_alpha``; ``acc_id_zs``, ``acc_ood_zs`` (α = 0);
    ``alpha_best`` (interior α of highest mean OOD accuracy; ties → smallest α), ``acc_id_best``,
    ``acc_ood_best``; ``acc_id_ft``, ``acc_ood_ft`` (α = 1); ``alpha_best_any`` (best α including the
    endpoints); ``gain_over_zs`` = acc_ood_best − acc_ood_zs, ``gain_over_ft`` = acc_ood_best −
    acc_ood_ft, ``gain_over_both`` = acc_ood_best − max(acc_ood_zs, acc_ood_ft); ``failure_mode``
    (gain_over_zs ≤ tol) and ``successful`` (gain_over_both > tol); ``loss_barrier`` on the ID loss
    (NaN without a ``loss`` column).

    Example:
        >>> a = [0.0, 0.5, 1.0]
        >>> df = pd.DataFrame({"world": "w", "run": ["hump"] * 6 + ["down"] * 6, "alpha": a * 4,
        ...     "split": (["id"] * 3 + ["ood"] * 3) * 2,
        ...     "accuracy": [.5, .8, .9, .5, .6, .4] + [.5, .8, .9, .5, .45, .3],
        ...     "loss": [1.0, .8, .6, 2, 2, 2] * 2})
        >>> s = summarize_runs(df)
        >>> s[["run", "alpha_best", "gain_over_both", "failure_mode", "successful", "loss_barrier"]].round(3)
            run  alpha_best  gain_over_both  failure_mode  successful  loss_barrier
        0  down         0.5           -0.05          True       False           0.2
        1  hump         0.5            0.10         False        True           0.2
    """
    _check_curves(df)
    keys = curve_keys(df, keys)
    if "run" in keys and skip_runs:
        df = df[~df["run"].astype(str).isin(list(skip_runs))]
        if df.empty:
            raise ParameterError(f"curve table has only runs in skip_runs={list(skip_runs)}; nothing to summarize.")
    _check_unique(df, [*keys, "alpha", "split"])
    if id_split not in set(df["split"].astype(str)):
        raise ParameterError(f"id_split={id_split!r} is not a split of the table ({sorted(set(df['split'].astype(str)))}).")
    ood = ood_mean(df, ood_splits, id_split=id_split, keys=keys)
    ident = df[df["split"].astype(str) == id_split]
    groups = ood.groupby(keys, sort=True, dropna=False) if keys else [((), ood)]
    rows = []
    for key, sub in groups:
        label = dict(zip(keys, key if isinstance(key, tuple) else (key,)))
        rows.append({**label, **_summarize_curve(label, sub.sort_values("alpha"), ident, id_split, tol)})
    return pd.DataFrame(rows)


def _summarize_curve(label: dict, sub: pd.DataFrame, ident: pd.DataFrame, id_split: str, tol: float) -> dict:
    """The summary columns of one curve (``sub``: its mean-OOD rows sorted by α; ``ident``: every
    curve's ID rows) for :func:`summarize_runs`."""
    alphas = sub["alpha"].to_numpy(dtype=float)
    acc_ood = sub["accuracy"].to_numpy(dtype=float)
    try:
        zs, ft, interior = _endpoints(alphas, name=f"alphas of curve {label}")
    except ParameterError as e:
        raise ParameterError(str(e)) from None
    if not interior.any():
        raise ParameterError(f"curve {label} has no interior alpha in (0, 1): {alphas.tolist()}.")
    id_rows = _id_rows(label, alphas, ident, id_split)
    acc_id = id_rows["accuracy"].to_numpy(dtype=float)
    ii = np.flatnonzero(interior)
    best = int(ii[np.argmax(acc_ood[ii])])  # argmax takes the first (smallest α) among ties
    best_any = int(np.argmax(acc_ood))
    # Gains rounded to 1e-12: a tie (changes on several splits that cancel in the mean) is a tie, not
    # ±1e-17 of summation order deciding whether the run is in the failure mode.
    gain_zs = round(float(acc_ood[best] - acc_ood[zs]), 12)
    gain_ft = round(float(acc_ood[best] - acc_ood[ft]), 12)
    gain_both = round(float(acc_ood[best] - max(acc_ood[zs], acc_ood[ft])), 12)
    barrier = float("nan")
    if "loss" in id_rows.columns:
        loss = id_rows["loss"].to_numpy(dtype=float)
        if np.isfinite(loss).all():
            barrier = loss_barrier(alphas, loss)
    return {
        "n_alpha": int(alphas.size),
        "acc_id_zs": acc_id[zs], "acc_ood_zs": acc_ood[zs],
        "alpha_best": alphas[best], "acc_id_best": acc_id[best], "acc_ood_best": acc_ood[best],
        "acc_id_ft": acc_id[ft], "acc_ood_ft": acc_ood[ft],
        "alpha_best_any": alphas[best_any],
        "gain_over_zs": gain_zs, "gain_over_ft": gain_ft, "gain_over_both": gain_both,
        "failure_mode": bool(gain_zs <= tol), "successful": bool(gain_both > tol),
        "loss_barrier": barrier,
    }


def _id_rows(label: dict, alphas: np.ndarray, ident: pd.DataFrame, id_split: str) -> pd.DataFrame:
    """One curve's ID rows, indexed by α in the order of ``alphas``; a missing α raises."""
    mask = np.ones(len(ident), dtype=bool)
    for k, v in label.items():
        mask &= (ident[k] == v).to_numpy() if not pd.isna(v) else ident[k].isna().to_numpy()
    id_rows = ident[mask].set_index("alpha")
    missing = [float(a) for a in alphas if a not in id_rows.index]
    if missing:
        raise ParameterError(f"curve {label} lacks ID split {id_split!r} rows at alpha {missing}.")
    return id_rows.loc[alphas]
