"""Sparsity interventions on a set of layers (the stragglers) and a matched control.

Each intervention turns the endpoint pair (θ_zs, θ_ft) into a new pair (θ_zs', θ_ft'); the
interpolation path is then θ'(α) = (1−α)·θ_zs' + α·θ_ft'. On the chosen keys:

- ``mask_both``: θ' = θ ⊙ m on both endpoints with the same mask m, so every θ'(α) = θ(α) ⊙ m;
- ``mask_ft``: θ_ft' = θ_ft ⊙ m, θ_zs unchanged;
- ``drop_tau``: τ' = τ ⊙ m, θ_ft' = θ_zs + τ' (random dropping of task-vector entries);
- ``drop_tau_rescaled``: as ``drop_tau`` with the kept entries scaled by n/(n−z) (= 1/(1−p) when
  z = p·n; DARE-like), which makes E[Σ τ'] = Σ τ exactly under uniform dropping of z of n entries;
- ``magnitude``: the z smallest-|w| entries of each tensor are zeroed (a control). The mask comes
  from θ_ft and is applied to both endpoints (``magnitude_source="ft"``, default), or from θ_zs
  (``"zs"``), or each endpoint is pruned by its own magnitudes (``"each"``).

Masks are *exact*: each eligible tensor of n entries has exactly z = round(p·n) entries zeroed
(at most n − 1: one entry is always kept), chosen uniformly by a seeded permutation drawn on the CPU
from ``(seed, key)``, so a key's mask does not depend on the other keys, and masks at a larger p
contain those at a smaller p (common random numbers across p and interventions). Eligible tensors:
floating tensors with ≥ 2 dimensions (weights, embeddings) by default; ``include_1d=True`` adds
biases and norm parameters.

A *control* applies the same intervention to non-straggler layers with the same total number of
zeroed entries, apportioned over the control tensors in proportion to their size
(:func:`matched_counts`).

Example:
    >>> import torch
    >>> zs, ft = {"w": torch.ones(4, 5)}, {"w": 3 * torch.ones(4, 5)}
    >>> new = intervene(zs, ft, ["w"], p=0.5, kind="mask_both", seed=0)
    >>> new.n_zeroed, int((new.theta_zs["w"] == 0).sum()), int((new.theta_ft["w"] == 0).sum())
    (10, 10, 10)
    >>> torch.equal(new.theta_zs["w"] == 0, new.theta_ft["w"] == 0)
    True
"""

from __future__ import annotations

import math
import random
import zlib
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence

import torch
from torch import nn

from rftlib.errors import ParameterError
from rftlib.core.evaluation import Split
from rftlib.core.interpolation import Interpolator, alpha_grid, check_alpha, check_compatible, restoring
from rftlib.core.layers import layer_groups, resolve_layers
from rftlib.core.sweep import alpha_sweep
from rftlib.progress import bar

INTERVENTIONS: tuple[str, ...] = ("mask_both", "mask_ft", "drop_tau", "drop_tau_rescaled", "magnitude")
MAGNITUDE_SOURCES: tuple[str, ...] = ("ft", "zs", "each")
REFERENCES: tuple[str, ...] = ("zs", "path")
DEFAULT_PS: tuple[float, ...] = (0.1, 0.3, 0.5, 0.7, 0.9)

__all__ = [
    "INTERVENTIONS", "MAGNITUDE_SOURCES", "check_p", "eligible_keys", "zero_counts", "matched_counts",
    "random_mask", "magnitude_mask", "Intervention", "intervene", "control_layers", "sparsity_sweep",
    "failure_summary", "rescued",
]


def check_p(p: float, name: str = "p") -> float:
    """p (fraction zeroed) must be a number in [0, 1).

    Example:
        >>> check_p(1.0)
        Traceback (most recent call last):
        ...
        rftlib.errors.ParameterError: p=1.0 is outside [0, 1) (the fraction of entries zeroed; 1 would zero everything).
    """
    try:
        v = float(p)
    except (TypeError, ValueError):
        raise ParameterError(f"{name}={p!r} is not a number; use a value in [0, 1).") from None
    if not (0.0 <= v < 1.0):
        raise ParameterError(f"{name}={p!r} is outside [0, 1) (the fraction of entries zeroed; 1 would zero everything).")
    return v


def _check_seed(seed: Any) -> int:
    if not isinstance(seed, int) or isinstance(seed, bool):
        raise ParameterError(f"seed={seed!r} must be an integer.")
    return seed


def eligible_keys(theta: Mapping[str, torch.Tensor], keys: Iterable[str], include_1d: bool = False) -> list[str]:
    """The keys an intervention touches: floating tensors, ≥ 2-D unless ``include_1d``.

    Example:
        >>> th = {"w": torch.zeros(2, 2), "b": torch.zeros(2), "n": torch.zeros(2, dtype=torch.long)}
        >>> eligible_keys(th, ["w", "b", "n"]), eligible_keys(th, ["w", "b", "n"], include_1d=True)
        (['w'], ['w', 'b'])
    """
    keys = list(keys)
    missing = [k for k in keys if k not in theta]
    if missing:
        raise ParameterError(f"keys {missing[:3]} are not in the state dict.")
    return [k for k in keys if theta[k].is_floating_point() and (include_1d or theta[k].ndim >= 2)]


def _cap(n: int) -> int:
    return max(n - 1, 0)


def zero_counts(theta: Mapping[str, torch.Tensor], keys: Iterable[str], p: float,
                include_1d: bool = False) -> dict[str, int]:
    """Entries to zero per eligible tensor: round(p·n), at most n − 1.

    Example:
        >>> zero_counts({"w": torch.zeros(10, 10), "b": torch.zeros(10)}, ["w", "b"], 0.3)
        {'w': 30}
    """
    p = check_p(p)
    return {k: min(int(round(p * theta[k].numel())), _cap(theta[k].numel()))
            for k in eligible_keys(theta, keys, include_1d)}


def matched_counts(theta: Mapping[str, torch.Tensor], keys: Iterable[str], total: int,
                   include_1d: bool = False) -> dict[str, int]:
    """Spread ``total`` zeroed entries over the eligible tensors of ``keys`` in proportion to their
    size (largest remainder; each tensor keeps at least one entry). The counts sum to ``total``.

    Example:
        >>> th = {"a": torch.zeros(10, 10), "b": torch.zeros(5, 10)}
        >>> matched_counts(th, ["a", "b"], 31)
        {'a': 21, 'b': 10}
    """
    if not isinstance(total, int) or isinstance(total, bool) or total < 0:
        raise ParameterError(f"total={total!r} must be a non-negative integer.")
    ks = eligible_keys(theta, keys, include_1d)
    sizes = {k: theta[k].numel() for k in ks}
    capacity = sum(_cap(n) for n in sizes.values())
    if total > capacity:
        raise ParameterError(f"the control layers hold {capacity} zeroable entries in {len(ks)} eligible "
                             f"tensors, fewer than the {total} to match; choose more or larger control layers.")
    if total == 0:
        return {k: 0 for k in ks}
    n_all = sum(sizes.values())
    quota = {k: total * n / n_all for k, n in sizes.items()}
    counts = {k: min(int(math.floor(q)), _cap(sizes[k])) for k, q in quota.items()}
    left = total - sum(counts.values())
    order = sorted(ks, key=lambda k: -(quota[k] - math.floor(quota[k])))
    while left > 0:
        for k in order:
            if left and counts[k] < _cap(sizes[k]):
                counts[k] += 1
                left -= 1
    return counts


def _key_generator(seed: int, key: str) -> torch.Generator:
    s = (seed * 0x9E3779B1 + zlib.crc32(key.encode())) % (2 ** 63)
    return torch.Generator(device="cpu").manual_seed(s)


def random_mask(theta: Mapping[str, torch.Tensor], keys: Iterable[str], p: float, seed: int = 0,
                include_1d: bool = False, counts: Mapping[str, int] | None = None) -> dict[str, torch.Tensor]:
    """Seeded keep-masks (``True`` = kept) zeroing exactly round(p·n) entries of each eligible tensor.

    ``counts`` (key → entries to zero) overrides p (for matched controls).

    Example:
        >>> th = {"w": torch.randn(8, 8)}
        >>> m = random_mask(th, ["w"], 0.25, seed=3)
        >>> int((~m["w"]).sum()), torch.equal(m["w"], random_mask(th, ["w"], 0.25, seed=3)["w"])
        (16, True)
    """
    seed = _check_seed(seed)
    counts = dict(zero_counts(theta, keys, p, include_1d) if counts is None else counts)
    masks = {}
    for k, z in counts.items():
        t = theta[k]
        perm = torch.randperm(t.numel(), generator=_key_generator(seed, k))
        m = torch.ones(t.numel(), dtype=torch.bool)
        m[perm[:z]] = False
        masks[k] = m.view(t.shape).to(t.device)
    return masks


def magnitude_mask(theta: Mapping[str, torch.Tensor], keys: Iterable[str], p: float, include_1d: bool = False,
                   counts: Mapping[str, int] | None = None) -> dict[str, torch.Tensor]:
    """Keep-masks zeroing the round(p·n) smallest-|w| entries of each eligible tensor (per tensor;
    ties broken by position).

    Example:
        >>> magnitude_mask({"w": torch.tensor([[3., -1.], [0.5, 2.]])}, ["w"], 0.5)["w"].tolist()
        [[True, False], [False, True]]
    """
    counts = dict(zero_counts(theta, keys, p, include_1d) if counts is None else counts)
    masks = {}
    for k, z in counts.items():
        t = theta[k]
        order = torch.argsort(t.detach().abs().flatten(), stable=True)
        m = torch.ones(t.numel(), dtype=torch.bool, device=t.device)
        m[order[:z]] = False
        masks[k] = m.view(t.shape)
    return masks


@dataclass
class Intervention:
    """A new endpoint pair and what was zeroed (``counts``: entries per tensor; ``n_zeroed`` total).

    Tensors the intervention does not touch are shared with the inputs, not copied."""

    theta_zs: dict[str, torch.Tensor]
    theta_ft: dict[str, torch.Tensor]
    counts: dict[str, int] = field(default_factory=dict)
    n_zeroed: int = 0


def intervene(theta_zs: Mapping[str, torch.Tensor], theta_ft: Mapping[str, torch.Tensor], keys: Iterable[str],
              p: float, kind: str = "mask_both", seed: int = 0, *, include_1d: bool = False,
              magnitude_source: str = "ft", counts: Mapping[str, int] | None = None) -> Intervention:
    """Apply one intervention (see the module docstring) to ``keys`` of both endpoints.

    Args:
        p: fraction of each eligible tensor's entries zeroed, in [0, 1).
        kind: one of :data:`INTERVENTIONS`.
        seed: mask seed (ignored by ``magnitude``).
        counts: entries to zero per key, overriding p (for matched controls).

    Example:
        >>> zs, ft = {"w": torch.zeros(100, 100)}, {"w": torch.ones(100, 100)}
        >>> new = intervene(zs, ft, ["w"], 0.5, "drop_tau_rescaled", seed=0)
        >>> new.n_zeroed, sorted(set(new.theta_ft["w"].flatten().tolist()))
        (5000, [0.0, 2.0])
    """
    p = check_p(p)
    seed = _check_seed(seed)
    if kind not in INTERVENTIONS:
        raise ParameterError(f"kind={kind!r} is not one of {INTERVENTIONS}.")
    if magnitude_source not in MAGNITUDE_SOURCES:
        raise ParameterError(f"magnitude_source={magnitude_source!r} is not one of {MAGNITUDE_SOURCES}.")
    check_compatible(theta_zs, theta_ft)
    keys = list(keys)
    if counts is None:
        counts = zero_counts(theta_ft, keys, p, include_1d)
    else:
        ok = set(eligible_keys(theta_ft, keys, include_1d))
        bad = [k for k, z in counts.items() if k not in ok or not 0 <= z <= _cap(theta_ft[k].numel())]
        if bad:
            raise ParameterError(f"counts has invalid entries for {bad[:3]}: keys must be eligible and "
                                 "0 <= count <= numel - 1.")
    counts = dict(counts)
    zs, ft = dict(theta_zs), dict(theta_ft)
    if kind == "magnitude":
        if magnitude_source == "each":
            m_zs, m_ft = magnitude_mask(theta_zs, keys, p, counts=counts), magnitude_mask(theta_ft, keys, p, counts=counts)
        else:
            src = theta_ft if magnitude_source == "ft" else theta_zs
            m_zs = m_ft = magnitude_mask(src, keys, p, counts=counts)
        for k in counts:
            zs[k] = theta_zs[k] * m_zs[k]
            ft[k] = theta_ft[k] * m_ft[k]
    else:
        masks = random_mask(theta_ft, keys, p, seed, counts=counts)
        for k, m in masks.items():
            if kind == "mask_both":
                zs[k] = theta_zs[k] * m
                ft[k] = theta_ft[k] * m
            elif kind == "mask_ft":
                ft[k] = theta_ft[k] * m
            else:
                tau = (theta_ft[k] - theta_zs[k]) * m
                if kind == "drop_tau_rescaled" and counts[k]:
                    n = theta_ft[k].numel()
                    tau = tau * (n / (n - counts[k]))
                ft[k] = theta_zs[k] + tau
    return Intervention(zs, ft, counts, sum(counts.values()))


def control_layers(groups: Mapping[str, Sequence[str]], stragglers: Sequence[str], k: int | None = None,
                   seed: int = 0, exclude: Sequence[str] = ()) -> list[str]:
    """A seeded random choice of ``k`` (default: as many as ``stragglers``) non-straggler layers,
    in model order.

    Example:
        >>> g = {n: [n + ".w"] for n in ["embed", "block0", "block1", "block2", "head"]}
        >>> c = control_layers(g, ["block1"], seed=0, exclude=["head"])
        >>> len(c), c[0] in {"embed", "block0", "block2"}
        (1, True)
    """
    seed = _check_seed(seed)
    resolve_layers(dict(groups), list(stragglers) + list(exclude))  # validates names
    pool = [n for n in groups if n not in stragglers and n not in exclude]
    k = len(stragglers) if k is None else k
    if not isinstance(k, int) or isinstance(k, bool) or not 1 <= k <= len(pool):
        raise ParameterError(f"k={k!r} must be an integer in [1, {len(pool)}] (the non-straggler layers left).")
    pick = set(random.Random(seed).sample(pool, k))
    return [n for n in pool if n in pick]


def _check_sweep(ps: Iterable[float], interventions: Sequence[str], magnitude_source: str, seed: Any,
                 alphas: Iterable[float] | None, splits: Mapping[str, Split]) -> tuple[list[float], int, list[float]]:
    """The arguments of :func:`sparsity_sweep`, checked: ``(ps, seed, alphas)``."""
    ps = [check_p(p, "ps") for p in ps]
    if not ps:
        raise ParameterError("ps is empty; give at least one p in [0, 1).")
    bad = [i for i in interventions if i not in INTERVENTIONS]
    if bad or not interventions:
        raise ParameterError(f"interventions={list(interventions)!r}: each must be one of {INTERVENTIONS}.")
    if magnitude_source not in MAGNITUDE_SOURCES:
        raise ParameterError(f"magnitude_source={magnitude_source!r} is not one of {MAGNITUDE_SOURCES}.")
    seed = _check_seed(seed)
    alphas = [check_alpha(a, "alphas") for a in (alpha_grid(11) if alphas is None else alphas)]
    if not alphas:
        raise ParameterError("alphas is empty; give at least one value in [0, 1].")
    if not splits:
        raise ParameterError("splits is empty; give at least one named split.")
    return ps, seed, alphas


def sparsity_sweep(
    model: nn.Module, theta_zs: Mapping[str, torch.Tensor], theta_ft: Mapping[str, torch.Tensor],
    splits: Mapping[str, Split], stragglers: Sequence[str], ps: Iterable[float] = DEFAULT_PS,
    interventions: Sequence[str] = ("mask_both",), alphas: Iterable[float] | None = None, *,
    control: Sequence[str] | None = None, granularity: str = "block", seed: int = 0, include_1d: bool = False,
    magnitude_source: str = "ft", baseline: bool = True, batch_size: int = 1000,
    device: torch.device | str | None = None, progress: bool = True,
) -> list[dict]:
    """Sweep α on the endpoints after each intervention, for the stragglers and a matched control.

    Args:
        model: the classifier (restored to its weights on return).
        stragglers: layer names at ``granularity`` whose keys are intervened on.
        ps: fractions zeroed, each in [0, 1).
        interventions: names from :data:`INTERVENTIONS`.
        alphas: α grid (default ``alpha_grid(11)``).
        control: non-straggler layer names (e.g. from :func:`control_layers`); each intervention is
            repeated there with the same number of zeroed entries as on the stragglers.
        baseline: add the unmodified path (intervention ``"none"``, target ``"none"``, p = 0).

    Returns:
        Tidy rows ``{"intervention", "target", "p", "seed", "n_zeroed", "alpha", "split",
        "accuracy", "loss", "n"}``; target is ``"stragglers"``, ``"control"`` or ``"none"``.
    """
    ps, seed, alphas = _check_sweep(ps, interventions, magnitude_source, seed, alphas, splits)
    check_compatible(theta_zs, theta_ft)
    s_keys, c_keys = _target_keys(model, theta_ft, stragglers, control, ps, granularity, include_1d)
    jobs = [("none", "none", 0.0)] if baseline else []
    jobs += [(kind, t, p) for kind in interventions for p in ps
             for t in (("stragglers", "control") if control is not None else ("stragglers",))]
    opts = dict(include_1d=include_1d, magnitude_source=magnitude_source)
    device = device or next(model.parameters()).device
    rows: list[dict] = []
    with restoring(model):
        for kind, target, p in bar(jobs, desc="sparsity sweep", disable=not progress, unit="path"):
            if kind == "none":
                new = Intervention(dict(theta_zs), dict(theta_ft))
            elif target == "stragglers":
                new = intervene(theta_zs, theta_ft, s_keys, p, kind, seed, **opts)
            else:
                total = sum(zero_counts(theta_ft, s_keys, p, include_1d).values())
                new = intervene(theta_zs, theta_ft, c_keys, p, kind, seed, **opts,
                                counts=matched_counts(theta_ft, c_keys, total, include_1d))
            path = alpha_sweep(model, Interpolator(model, new.theta_zs, new.theta_ft), splits, alphas,
                               batch_size=batch_size, device=device, what=f"sparsity path {kind}/{target}/p={p}")
            rows += [{"intervention": kind, "target": target, "p": p, "seed": seed, "n_zeroed": new.n_zeroed,
                      "alpha": a, **r} for a, r in path]
    return rows


def _target_keys(model: nn.Module, theta_ft: Mapping[str, torch.Tensor], stragglers: Sequence[str] | str,
                 control: Sequence[str] | str | None, ps: Sequence[float], granularity: str,
                 include_1d: bool) -> tuple[list[str], list[str]]:
    """The checked state-dict keys of the stragglers and of the control layers of
    :func:`sparsity_sweep`; a control too small to match the stragglers' zeroed count fails here,
    before any evaluation."""
    groups = layer_groups(model, granularity)
    stragglers = [stragglers] if isinstance(stragglers, str) else list(stragglers)
    if not stragglers:
        raise ParameterError("stragglers is empty; give at least one layer name.")
    s_keys = resolve_layers(groups, stragglers)
    if not eligible_keys(theta_ft, s_keys, include_1d):
        raise ParameterError(f"stragglers={stragglers} hold no eligible tensors (include_1d={include_1d}).")
    if control is None:
        return s_keys, []
    control = [control] if isinstance(control, str) else list(control)
    overlap = sorted(set(control) & set(stragglers))
    if overlap:
        raise ParameterError(f"control={control} overlaps stragglers at {overlap}; choose non-straggler layers.")
    c_keys = resolve_layers(groups, control)
    for p in ps:
        matched_counts(theta_ft, c_keys, sum(zero_counts(theta_ft, s_keys, p, include_1d).values()), include_1d)
    return s_keys, c_keys


def _records(table: Any) -> list[dict]:
    return table.to_dict("records") if hasattr(table, "to_dict") else [dict(r) for r in table]


def failure_summary(rows: Any, id_split: str = "id", ood_splits: Sequence[str] | None = None,
                    reference: str = "zs") -> list[dict]:
    """Per (intervention, target, p): best interior α by mean OOD accuracy and the failure mode.

    Mean OOD = unweighted mean accuracy over ``ood_splits`` (default: every split but ``id_split``).
    Failure mode (paper.md): max over interior α ∈ (0, 1) of mean OOD ≤ the zero-shot OOD accuracy.
    ``reference="zs"`` (default) compares with the *unmodified* θ_zs (the baseline rows at α = 0), so
    that damaging the zero-shot endpoint (``mask_both``, ``magnitude``) cannot count as a rescue;
    ``"path"`` compares with the intervened path's own α = 0. Both verdicts are reported
    (``failure_vs_zs``, ``failure_vs_path``); ``failure`` is the chosen one. ``successful``: some interior
    α beats both ends of the path.

    Example:
        >>> rows = [{"intervention": "none", "target": "none", "p": 0.0, "alpha": a, "split": "ood",
        ...          "accuracy": acc} for a, acc in [(0.0, .6), (0.5, .55), (1.0, .4)]]
        >>> s = failure_summary(rows)
        >>> s[0]["failure"], s[0]["best_alpha"]
        (True, 0.5)
    """
    if reference not in REFERENCES:
        raise ParameterError(f"reference={reference!r} is not one of {REFERENCES}.")
    recs = _records(rows)
    if not recs:
        raise ParameterError("rows is empty; run sparsity_sweep first.")
    splits = list(dict.fromkeys(r["split"] for r in recs))
    ood = [s for s in splits if s != id_split] if ood_splits is None else list(ood_splits)
    if not ood or any(s not in splits for s in ood):
        raise ParameterError(f"ood_splits={ood_splits!r}: need at least one of the rows' splits {splits} "
                             f"other than id_split={id_split!r}.")
    paths: dict[tuple, dict[float, dict[str, float]]] = {}
    for r in recs:
        key = (r["intervention"], r["target"], float(r["p"]))
        paths.setdefault(key, {}).setdefault(float(r["alpha"]), {})[r["split"]] = r["accuracy"]

    def mean_ood(at: dict[str, float]) -> float:
        return sum(at[s] for s in ood) / len(ood)

    base = [k for k in paths if k[0] == "none"]
    ood_zs = mean_ood(paths[base[0]][0.0]) if base and 0.0 in paths[base[0]] else float("nan")
    if reference == "zs" and math.isnan(ood_zs):
        raise ParameterError("reference='zs' needs the baseline rows (intervention 'none' at alpha 0); "
                             "run sparsity_sweep with baseline=True or use reference='path'.")
    out = []
    for (kind, target, p), path in paths.items():
        if 0.0 not in path or 1.0 not in path:
            raise ParameterError(f"path {(kind, target, p)} lacks alpha 0 or 1.")
        interior = sorted(a for a in path if 0.0 < a < 1.0)
        if not interior:
            raise ParameterError(f"path {(kind, target, p)} has no interior alpha in (0, 1).")
        vals = {a: mean_ood(path[a]) for a in interior}
        best_a = max(interior, key=lambda a: vals[a])
        best, at0, at1 = vals[best_a], mean_ood(path[0.0]), mean_ood(path[1.0])
        f_zs, f_path = (best <= ood_zs) if not math.isnan(ood_zs) else None, best <= at0
        out.append({"intervention": kind, "target": target, "p": p, "best_alpha": best_a,
                    "best_interior_ood": best, "ood_alpha0": at0, "ood_alpha1": at1, "ood_zs": ood_zs,
                    "failure_vs_zs": f_zs, "failure_vs_path": f_path,
                    "failure": f_zs if reference == "zs" else f_path, "successful": best > max(at0, at1)})
    return out


def rescued(summary: Any) -> list[dict]:
    """Whether each intervention removes the baseline's failure mode.

    ``rescued`` is True when the baseline (intervention ``"none"``) is in the failure mode and the
    intervened path is not; False otherwise (including when there is nothing to rescue).

    Example:
        >>> s = [{"intervention": "none", "target": "none", "p": 0.0, "failure": True},
        ...      {"intervention": "mask_both", "target": "stragglers", "p": 0.5, "failure": False}]
        >>> rescued(s)[0]["rescued"]
        True
    """
    recs = _records(summary)
    base = [r for r in recs if r["intervention"] == "none"]
    if not base:
        raise ParameterError("summary has no baseline row (intervention 'none'); run sparsity_sweep with baseline=True.")
    b = bool(base[0]["failure"])
    return [{"intervention": r["intervention"], "target": r["target"], "p": r["p"], "baseline_failure": b,
             "failure": bool(r["failure"]), "rescued": b and not bool(r["failure"])}
            for r in recs if r["intervention"] != "none"]
