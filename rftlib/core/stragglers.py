"""Single-layer interpolation paths, per-layer barriers and OOD drops, and straggler ranking.

Layer-wise linear mode connectivity (Adilova et al., ICLR 2024): interpolate only layer ℓ between
the endpoints, θ_ℓ(α) = (1−α)·θ_zs,ℓ + α·θ_ft,ℓ, every other layer held at one endpoint
(``hold="ft"`` or ``"zs"``). The full path (every layer moves) is reported as layer ``"all"``.

Definitions (on the α grid; ``mean OOD`` = unweighted mean of the OOD splits' accuracies):

- ``barrier``: B_ℓ = max_α L_ℓ(α) − ½(L(θ_zs) + L(θ_ft)) on the ID split, with the *full-model*
  endpoint losses L(θ_zs), L(θ_ft) (from the ``"all"`` rows);
- ``barrier_mid``: L_ℓ(½) − ½(L(θ_zs) + L(θ_ft)) (NaN when α = ½ is not on the grid);
- ``ood_held``: mean OOD accuracy of the full model at the held endpoint (θ_ft for ``hold="ft"``,
  θ_zs for ``hold="zs"``);
- ``ood_drop``: ``ood_held − min_α meanOOD(θ_ℓ(α))``, the largest OOD loss of accuracy anywhere
  on the layer's path relative to the model it leaves (≥ 0 for task-vector paths, whose held end is on
  the path);
- ``ood_swap``: meanOOD at the path's far end (α = 0 for ``hold="ft"``, α = 1 for ``hold="zs"``)
  minus ``ood_held``: the signed effect of moving layer ℓ alone all the way.

Controls: *cumulative* groups (the first ℓ layers move together, ``cumulative=True``) and a *random
direction* (``direction="random"``): θ_zs,ℓ + α·d with d a seeded Gaussian direction rescaled to
‖d‖ = ‖τ_ℓ‖, τ_ℓ = θ_ft,ℓ − θ_zs,ℓ (norm over all floating tensors of the layer jointly).

Speed: with only layer ℓ moving and every other layer held at one endpoint, the input of the first
stage holding ℓ's keys (see :meth:`rftlib.models.factory.ImageClassifier.stages`) is the same for every α.
It is computed once per batch, and only the suffix runs per α, with only the moving keys rewritten
per α (:func:`rftlib.core.prefix.layer_alpha_sweep`; ``shared_prefix=False`` gives the naive route, same
numbers).

Example:
    >>> rows = [
    ...     {"layer": "all", "group": "full", "hold": "none", "direction": "task", "alpha": a,
    ...      "split": s, "accuracy": acc, "loss": loss}
    ...     for a, s, acc, loss in [(0.0, "id", .5, 1.0), (1.0, "id", .9, .2),
    ...                             (0.0, "ood", .6, 1.2), (1.0, "ood", .4, 1.6)]]
    >>> rows += [
    ...     {"layer": "block0", "group": "single", "hold": "ft", "direction": "task", "alpha": a,
    ...      "split": s, "accuracy": acc, "loss": loss}
    ...     for a, s, acc, loss in [(0.0, "id", .8, .4), (0.5, "id", .7, 1.0), (1.0, "id", .9, .2),
    ...                             (0.0, "ood", .5, 1.4), (0.5, "ood", .3, 2.0), (1.0, "ood", .4, 1.6)]]
    >>> t = layer_barriers(rows, id_split="id")
    >>> b = [r for r in t if r["layer"] == "block0"][0]
    >>> round(b["barrier"], 6), round(b["barrier_mid"], 6), round(b["ood_drop"], 6), round(b["ood_swap"], 6)
    (0.4, 0.4, 0.1, 0.1)
"""

from __future__ import annotations

import itertools
import math
from typing import Any, Iterable, Mapping, Sequence

import torch
from torch import nn

from rftlib.errors import NumericalError, ParameterError
from rftlib.core.evaluation import Split
from rftlib.core.interpolation import Interpolator, alpha_grid, check_alpha, check_compatible, restoring
from rftlib.core.layers import layer_groups, resolve_layers
from rftlib.core.precision import resolve_precision
from rftlib.core.prefix import layer_alpha_sweep
from rftlib.core.sweep import alpha_sweep
from rftlib.progress import bar

HOLDS: tuple[str, ...] = ("ft", "zs", "both")
DIRECTIONS: tuple[str, ...] = ("task", "random")
#: what a single-layer path table ranks layers by (columns of :func:`layer_barriers`), in the order
#: their agreement is reported
PATH_RANK_BY: tuple[str, ...] = ("barrier", "ood_drop", "barrier_mid")
#: every ranking: the path columns and a per-layer sharpness table's ``sharpness``
RANK_BY: tuple[str, ...] = (*PATH_RANK_BY, "sharpness")
FULL = "all"

__all__ = [
    "single_layer_paths", "cumulative_groups", "random_direction", "layer_barriers", "rank_layers",
    "ranking_agreement", "HOLDS", "DIRECTIONS", "PATH_RANK_BY", "RANK_BY",
]


# ----------------------------------------------------------------------------------- validation

def _check_alphas(alphas: Iterable[float] | None) -> list[float]:
    if alphas is None:
        return alpha_grid(11)
    out: list[float] = []
    for a in alphas:
        a = check_alpha(a, "alphas")
        if a not in out:
            out.append(a)
    if not out:
        raise ParameterError("alphas=[] is empty; give at least one value in [0, 1].")
    return out


def _check_hold(hold: str) -> list[str]:
    if hold not in HOLDS:
        raise ParameterError(f"hold={hold!r} is not one of {HOLDS} (where the other layers stay; 'both' runs both).")
    return ["ft", "zs"] if hold == "both" else [hold]


def _check_layers(model: nn.Module, layers: Mapping[str, Sequence[str]] | Sequence[str] | str | None,
                  granularity: str) -> dict[str, list[str]]:
    """Layer name → keys, from names (resolved at ``granularity``) or an explicit mapping."""
    keys = set(model.state_dict())
    if layers is None or isinstance(layers, (str, list, tuple)):
        groups = layer_groups(model, granularity)
        if layers is None:
            return {n: list(ks) for n, ks in groups.items()}
        names = [layers] if isinstance(layers, str) else list(layers)
        if FULL in names:
            raise ParameterError(f"layers={names!r}: {FULL!r} is reserved for the full-model path "
                                 f"(include_full=True); name single layers from {list(groups)}.")
        return {n: resolve_layers(groups, n) for n in names}
    out: dict[str, list[str]] = {}
    for name, ks in layers.items():
        if name == FULL:
            raise ParameterError(f"layers has a layer named {FULL!r}, which is reserved for the full-model path.")
        ks = [ks] if isinstance(ks, str) else list(ks)
        if not ks:
            raise ParameterError(f"layers[{name!r}] has no keys; give at least one state-dict key.")
        bad = [k for k in ks if k not in keys]
        if bad:
            raise ParameterError(f"layers[{name!r}] holds key(s) {bad[:3]} that are not in the model's state dict.")
        out[str(name)] = ks
    if not out:
        raise ParameterError("layers={} is empty; give at least one layer.")
    return out


def cumulative_groups(groups: Mapping[str, Sequence[str]]) -> dict[str, list[str]]:
    """The cumulative control: ``"cum:ℓ"`` holds the keys of every layer up to and including ℓ.

    Example:
        >>> cumulative_groups({"embed": ["e"], "block0": ["a", "b"], "head": ["h"]})
        {'cum:embed': ['e'], 'cum:block0': ['e', 'a', 'b'], 'cum:head': ['e', 'a', 'b', 'h']}
    """
    out: dict[str, list[str]] = {}
    acc: list[str] = []
    for name, ks in groups.items():
        acc = acc + [k for k in ks if k not in acc]
        out[f"cum:{name}"] = list(acc)
    return out


def random_direction(theta_zs: Mapping[str, torch.Tensor], theta_ft: Mapping[str, torch.Tensor],
                     keys: Sequence[str], seed: int = 0) -> dict[str, torch.Tensor]:
    """A seeded Gaussian direction d over ``keys`` with ‖d‖ = ‖τ‖, τ = θ_ft − θ_zs on those keys.

    The norm is taken jointly over the floating tensors in ``keys`` (non-floating keys are skipped).
    Draws come from a CPU generator, so d is the same on every device.

    Example:
        >>> zs = {"w": torch.zeros(3, 4), "b": torch.zeros(4)}
        >>> ft = {"w": torch.ones(3, 4), "b": torch.ones(4)}
        >>> d = random_direction(zs, ft, ["w", "b"], seed=1)
        >>> round(float(torch.cat([v.flatten() for v in d.values()]).norm()), 4)
        4.0
        >>> torch.equal(d["w"], random_direction(zs, ft, ["w", "b"], seed=1)["w"])
        True
    """
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ParameterError(f"seed={seed!r} must be an integer.")
    fl = [k for k in keys if theta_zs[k].is_floating_point()]
    g = torch.Generator(device="cpu").manual_seed(seed)
    z = {k: torch.randn(theta_zs[k].shape, generator=g, dtype=torch.float64) for k in fl}
    tau_sq = sum(float((theta_ft[k].double() - theta_zs[k].double()).pow(2).sum()) for k in fl)
    z_sq = sum(float(v.pow(2).sum()) for v in z.values())
    scale = math.sqrt(tau_sq) / math.sqrt(z_sq) if z_sq > 0 else 0.0
    return {k: (z[k] * scale).to(device=theta_zs[k].device, dtype=theta_zs[k].dtype) for k in fl}


# ------------------------------------------------------------------------------ shared prefix

@torch.no_grad()
def _run_path(model: nn.Module, interp: Interpolator, moving: Sequence[str], hold: str,
              alphas: Sequence[float], splits: Mapping[str, Split], batch_size: int,
              device: torch.device | str, shared_prefix: bool, layer: str = "?",
              precision: str = "fp32") -> dict[tuple[float, str], dict]:
    """``{(alpha, split): {"accuracy", "loss", "n"}}`` for one path, α-major.

    ``shared_prefix``: :func:`rftlib.core.prefix.layer_alpha_sweep` (the input of the first stage owning a
    moving key is computed once per batch, only the suffix runs per α). Otherwise the naive route:
    :func:`rftlib.core.sweep.alpha_sweep` (a full forward per α).
    A non-finite loss raises :class:`NumericalError` naming ``layer``, the hold, α and the split.
    ``precision``: the forwards' precision (already resolved: ``"fp32"`` or ``"bf16"``).
    """
    out: dict[tuple[float, str], dict] = {}
    if shared_prefix:
        for s, split in splits.items():
            try:
                swept = layer_alpha_sweep(model, interp, split, moving, alphas, hold, batch_size, progress=False,
                                          precision=precision)
            except NumericalError as e:  # its message names the alpha
                raise NumericalError(f"single-layer path layer={layer!r}, hold={hold!r}, split={s!r}: {e}") from e
            for r in swept:
                out[(r["alpha"], s)] = {"accuracy": r["accuracy"], "loss": r["loss"], "n": r["n"]}
    else:
        for a, r in alpha_sweep(model, interp, splits, alphas, keys=moving, hold=hold, batch_size=batch_size,
                                device=device, precision=precision,
                                what=f"single-layer path layer={layer!r}, hold={hold!r}"):
            out[(a, r["split"])] = {"accuracy": r["accuracy"], "loss": r["loss"], "n": r["n"]}
    return {(a, s): out[(a, s)] for a in alphas for s in splits}


def _endpoint_alphas(alphas: Sequence[float], hold: str, direction: str) -> dict[float, float]:
    """α on a single-layer path → the full-path α whose weights it has exactly, bit for bit.

    ``torch.lerp`` is exact at its ends, so with every other layer held at θ_ft, α = 1 of a task path
    *is* θ_ft (the full path's α = 1); with every other layer held at θ_zs, α = 0 of any path is θ_zs.

    Example:
        >>> _endpoint_alphas([0.0, 0.5, 1.0], "ft", "task"), _endpoint_alphas([0.0, 1.0], "zs", "random")
        ({1.0: 1.0}, {0.0: 0.0})
    """
    if hold == "ft" and direction == "task":
        return {1.0: 1.0} if 1.0 in alphas else {}
    if hold == "zs":
        return {0.0: 0.0} if 0.0 in alphas else {}
    return {}


def _finite(loss: float, where: str) -> None:
    if loss != loss or loss in (float("inf"), float("-inf")):
        raise NumericalError(f"loss is not finite at {where}: the weights or inputs hold NaN/inf.")


def single_layer_paths(
    model: nn.Module, theta_zs: Mapping[str, torch.Tensor], theta_ft: Mapping[str, torch.Tensor],
    splits: Mapping[str, Split], layers: Mapping[str, Sequence[str]] | Sequence[str] | str | None = None,
    alphas: Iterable[float] | None = None, hold: str = "ft", *, granularity: str = "block",
    direction: str = "task", seed: int = 0, cumulative: bool = False, include_full: bool = True,
    shared_prefix: bool = True, reuse_endpoints: bool = True, batch_size: int = 1000,
    device: torch.device | str | None = None, progress: bool = True, precision: str = "fp32",
) -> list[dict]:
    """Accuracy and loss along every single-layer path (and the full path, layer ``"all"``).

    Args:
        model: the classifier with exactly the endpoints' keys (θ_zs, θ_ft); restored on return.
        layers: layer names (at ``granularity``; ``None`` = every layer) or a mapping name → keys.
        alphas: the α grid (default ``alpha_grid(11)``); ``hold``: where every other layer stays,
            ``"ft"``, ``"zs"`` or ``"both"``.
        direction, seed: ``"task"`` (θ_zs,ℓ + α·τ_ℓ) or ``"random"`` (θ_zs,ℓ + α·d, ‖d‖ = ‖τ_ℓ‖,
            layer i seeded ``seed + i``); ``cumulative``: group ℓ moves the first ℓ layers together.
        include_full: add the full path (layer ``"all"``, hold ``"none"``) at ``alphas`` ∪ {0, 1}, for
            the endpoint losses of :func:`layer_barriers`.
        shared_prefix: compute the fixed prefix once per batch (:mod:`rftlib.core.prefix`; same numbers).
        reuse_endpoints: take a single-layer path's points whose weights are a full-model endpoint
            (α = 1 held at θ_ft, α = 0 held at θ_zs) from the full path (same numbers).
        precision: ``"fp32"``, ``"bf16"`` or ``"auto"`` (:mod:`rftlib.core.precision`).

    Returns:
        Tidy rows ``{"layer", "group", "hold", "direction", "alpha", "split", "accuracy", "loss",
        "n"}``; ``group`` is ``"single"``, ``"cumulative"`` or ``"full"``.
    """
    alphas, holds = _check_alphas(alphas), _check_hold(hold)
    if direction not in DIRECTIONS:
        raise ParameterError(f"direction={direction!r} is not one of {DIRECTIONS}.")
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ParameterError(f"seed={seed!r} must be an integer.")
    if not splits:
        raise ParameterError("splits is empty; give at least one named split.")
    check_compatible(theta_zs, theta_ft)
    groups = _check_layers(model, layers, granularity)
    groups = cumulative_groups(groups) if cumulative else groups
    device = device or next(model.parameters()).device
    run = dict(splits=splits, batch_size=batch_size, device=device, precision=resolve_precision(precision, device))
    rows: list[dict] = []
    with restoring(model, eval_mode=True):
        interp = Interpolator(model, theta_zs, theta_ft)
        full: dict[tuple[float, str], dict] = {}
        if include_full:
            full = _run_path(model, interp, interp.keys, "ft", sorted(set(alphas) | {0.0, 1.0}),
                             shared_prefix=False, layer=FULL, **run)
            rows += _path_rows(full, FULL, "full", "none", "task")
        jobs = [(h, i, name) for h in holds for i, name in enumerate(groups)]
        for h, i, name in bar(jobs, desc="single-layer paths", disable=not progress, unit="path"):
            known = _endpoint_alphas(alphas, h, direction) if (reuse_endpoints and full) else {}
            res = _layer_path(model, interp, groups[name], h, [a for a in alphas if a not in known],
                              direction, seed + i, shared_prefix=shared_prefix, layer=name, **run)
            res |= {(a, s): dict(full[(b, s)]) for a, b in known.items() for s in splits}
            rows += _path_rows({(a, s): res[(a, s)] for a in alphas for s in splits}, name,
                               "cumulative" if cumulative else "single", h, direction)
    return rows


def _layer_path(model: nn.Module, interp: Interpolator, keys: Sequence[str], hold: str, alphas: Sequence[float],
                direction: str, seed: int, **run: Any) -> dict[tuple[float, str], dict]:
    """One layer's path at ``alphas`` (:func:`_run_path`); along a seeded random direction of the task
    vector's norm when ``direction == "random"`` (θ_ft of those keys is swapped for the path, then put back)."""
    saved = {}
    if direction == "random":
        d = random_direction(interp.theta_zs, interp.theta_ft, keys, seed)
        saved = {k: interp.theta_ft[k] for k in d}
        for k, v in d.items():
            interp.theta_ft[k] = interp.theta_zs[k] + v
    try:
        return _run_path(model, interp, keys, hold, alphas, **run) if alphas else {}
    finally:
        interp.theta_ft.update(saved)


def _path_rows(res: Mapping[tuple[float, str], dict], layer: str, group: str, hold: str, direction: str) -> list[dict]:
    """Tidy rows of one path's ``{(alpha, split): result}``; a non-finite loss raises naming the point."""
    rows = []
    for (a, s), r in res.items():
        _finite(r["loss"], f"layer={layer!r}, hold={hold!r}, alpha={a}, split={s!r}")
        rows.append({"layer": layer, "group": group, "hold": hold, "direction": direction, "alpha": a,
                     "split": s, "accuracy": r["accuracy"], "loss": r["loss"], "n": r["n"]})
    return rows


# ---------------------------------------------------------------------------------- summaries

def _records(table: Any) -> list[dict]:
    if hasattr(table, "to_dict"):
        return table.to_dict("records")
    return [dict(r) for r in table]


def _ood_of(splits: list[str], id_split: str, ood_splits: Sequence[str] | None) -> list[str]:
    """The OOD splits (default: every split but ``id_split``), checked against the rows' splits."""
    if id_split not in splits:
        raise ParameterError(f"id_split={id_split!r} is not among the rows' splits {splits}.")
    ood = [s for s in splits if s != id_split] if ood_splits is None else list(ood_splits)
    bad = [s for s in ood if s not in splits]
    if bad or not ood:
        raise ParameterError(f"ood_splits={ood_splits!r}: need at least one of the rows' splits {splits} "
                             f"other than id_split={id_split!r}.")
    return ood


def _paths_of(recs: list[dict]) -> dict[tuple, dict[float, dict[str, dict]]]:
    """Rows grouped per path (layer, group, hold, direction) → α → split; the full path must be there."""
    paths: dict[tuple, dict[float, dict[str, dict]]] = {}
    for r in recs:
        key = (r["layer"], r.get("group", "single"), r.get("hold", "ft"), r.get("direction", "task"))
        paths.setdefault(key, {}).setdefault(float(r["alpha"]), {})[r["split"]] = r
    full = [k for k in paths if k[0] == FULL]
    if not full or not {0.0, 1.0} <= set(paths[full[0]]):
        raise ParameterError(f"rows lack the full path (layer {FULL!r} at alpha 0 and 1); "
                             "run single_layer_paths with include_full=True.")
    return paths


def layer_barriers(rows: Any, id_split: str = "id", ood_splits: Sequence[str] | None = None) -> list[dict]:
    """Per path (layer, group, hold, direction): barrier, midpoint barrier, OOD drop and swap.

    See the module docstring for the definitions. Needs the full-path rows (layer ``"all"`` at α = 0
    and 1) for the endpoint losses and held-endpoint accuracies. ``ood_splits`` defaults to every split
    except ``id_split``. The ``"all"`` row carries the full-model barrier; its OOD columns are NaN.

    Returns:
        Rows ``{"layer", "group", "hold", "direction", "barrier", "barrier_mid", "alpha_max",
        "loss_zs", "loss_ft", "ood_held", "ood_min", "alpha_ood_min", "ood_drop", "ood_swap"}``.
    """
    recs = _records(rows)
    if not recs:
        raise ParameterError("rows is empty; run single_layer_paths first.")
    ood = _ood_of(list(dict.fromkeys(r["split"] for r in recs)), id_split, ood_splits)
    paths = _paths_of(recs)
    fp = paths[next(k for k in paths if k[0] == FULL)]

    def mean_ood(at: dict[str, dict]) -> float:
        missing = [s for s in ood if s not in at]
        if missing:
            raise ParameterError(f"rows lack split(s) {missing} at some alpha.")
        return sum(at[s]["accuracy"] for s in ood) / len(ood)

    loss_zs, loss_ft = fp[0.0][id_split]["loss"], fp[1.0][id_split]["loss"]
    ood_end = {"ft": mean_ood(fp[1.0]), "zs": mean_ood(fp[0.0])}
    ref = 0.5 * (loss_zs + loss_ft)
    out = []
    for (layer, group, h, direction), path in paths.items():
        alphas = sorted(path)
        losses = [path[a][id_split]["loss"] for a in alphas]
        i_max = max(range(len(alphas)), key=lambda i: losses[i])
        mid = path.get(0.5)
        row = {"layer": layer, "group": group, "hold": h, "direction": direction,
               "barrier": losses[i_max] - ref,
               "barrier_mid": mid[id_split]["loss"] - ref if mid else float("nan"),
               "alpha_max": alphas[i_max], "loss_zs": loss_zs, "loss_ft": loss_ft}
        if h in ood_end:
            oods = [mean_ood(path[a]) for a in alphas]
            i_min = min(range(len(alphas)), key=lambda i: oods[i])
            far = 0.0 if h == "ft" else 1.0
            row.update(ood_held=ood_end[h], ood_min=oods[i_min], alpha_ood_min=alphas[i_min],
                       ood_drop=ood_end[h] - oods[i_min],
                       ood_swap=(mean_ood(path[far]) - ood_end[h]) if far in path else float("nan"))
        else:
            row.update(ood_held=float("nan"), ood_min=float("nan"), alpha_ood_min=float("nan"),
                       ood_drop=float("nan"), ood_swap=float("nan"))
        out.append(row)
    return out


def rank_layers(table: Any, by: str = "barrier", k: int | None = None, *, hold: str | None = None,
                direction: str | None = "task") -> list[str]:
    """Layers sorted by ``by``, largest first (ties keep table order); the top ``k`` if given.

    ``table`` is a list of dicts or a DataFrame with a ``layer`` column and the ``by`` column (e.g.
    :func:`layer_barriers`' output, or a per-layer sharpness table with a ``sharpness`` column).
    Only single-layer rows are ranked (``group == "single"`` when that column exists); ``hold`` and
    ``direction`` filter when those columns exist (``hold`` is required when several holds are
    present). Rows whose value is NaN are left out.

    Example:
        >>> t = [{"layer": "b0", "barrier": 0.1}, {"layer": "b1", "barrier": 0.5},
        ...      {"layer": "b2", "barrier": 0.3}]
        >>> rank_layers(t, "barrier", k=2)
        ['b1', 'b2']
    """
    recs = _records(table)
    if not recs:
        raise ParameterError("table is empty; nothing to rank.")
    cols = set().union(*(r.keys() for r in recs))
    if by not in cols:
        raise ParameterError(f"by={by!r} is not a column of the table; use one of {RANK_BY} present in "
                             f"it (columns: {sorted(cols)}).")
    if "group" in cols:
        recs = [r for r in recs if r.get("group", "single") == "single"]
    if direction is not None and "direction" in cols:
        recs = [r for r in recs if r.get("direction", "task") == direction]
    if "hold" in cols:
        holds = sorted({r.get("hold") for r in recs})
        if hold is None and len(holds) > 1:
            raise ParameterError(f"hold=None but the table has holds {holds}; choose one.")
        if hold is not None:
            if hold not in holds:
                raise ParameterError(f"hold={hold!r} is not in the table's holds {holds}.")
            recs = [r for r in recs if r.get("hold") == hold]
    names = [r["layer"] for r in recs]
    if len(set(names)) != len(names):
        dup = sorted({n for n in names if names.count(n) > 1})
        raise ParameterError(f"the table has several rows for layer(s) {dup[:3]}; filter it to one row per layer.")
    vals = [(r["layer"], float(r[by])) for r in recs if r[by] is not None and not math.isnan(float(r[by]))]
    ranked = [n for n, _ in sorted(vals, key=lambda t: -t[1])]
    if k is not None:
        if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= len(ranked):
            raise ParameterError(f"k={k!r} must be an integer in [1, {len(ranked)}] (the number of rankable layers).")
        ranked = ranked[:k]
    return ranked


def ranking_agreement(rankings: Mapping[str, Sequence[str]], k: int | None = None) -> list[dict]:
    """Pairwise agreement of rankings (best first): Kendall τ-b and top-k overlap / Jaccard.

    Kendall τ-b (scipy) compares the positions of the layers present in both rankings (NaN when fewer
    than 2 are shared). The top-k sets are each ranking's first ``k`` entries (default: the shorter
    ranking's length, i.e. pass top-k lists, or full rankings and ``k``).

    Example:
        >>> r = ranking_agreement({"barrier": ["b1", "b2", "b0"], "sharpness": ["b1", "b0", "b2"]}, k=2)
        >>> r[0]["a"], r[0]["b"], round(r[0]["kendall_tau"], 4), r[0]["overlap"], round(r[0]["jaccard"], 4)
        ('barrier', 'sharpness', 0.3333, 1, 0.3333)
    """
    from scipy.stats import kendalltau

    if len(rankings) < 2:
        raise ParameterError(f"rankings has {len(rankings)} entries; need at least 2 to compare.")
    for name, r in rankings.items():
        if len(set(r)) != len(r):
            raise ParameterError(f"rankings[{name!r}] repeats a layer: {list(r)}.")
    if k is not None and (not isinstance(k, int) or isinstance(k, bool) or k < 1):
        raise ParameterError(f"k={k!r} must be a positive integer.")
    out = []
    for (na, ra), (nb, rb) in itertools.combinations(rankings.items(), 2):
        ra, rb = list(ra), list(rb)
        common = [x for x in ra if x in rb]
        if len(common) >= 2:
            res = kendalltau([ra.index(x) for x in common], [rb.index(x) for x in common])
            tau, pv = float(res.statistic), float(res.pvalue)
        else:
            tau, pv = float("nan"), float("nan")
        kk = min(len(ra), len(rb)) if k is None else k
        sa, sb = set(ra[:kk]), set(rb[:kk])
        union = sa | sb
        out.append({"a": na, "b": nb, "kendall_tau": tau, "p_value": pv, "n_common": len(common), "k": kk,
                    "overlap": len(sa & sb), "jaccard": len(sa & sb) / len(union) if union else float("nan")})
    return out
