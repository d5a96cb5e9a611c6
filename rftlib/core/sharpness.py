"""Sharpness of a classifier's loss at its weights w: worst-case and average-case, whole-model or per layer.

Definitions (Andriushchenko et al. 2023; see ``paper.md``). With c = |w| (``adaptive=True``) or
c = 1 (standard), on batches S of m examples (m-sharpness):

- worst-case: mean_S [ max over ‖δ ⊘ c‖_p ≤ ρ of L_S(w+δ) − L_S(w) ], p ∈ {∞, 2}, the max found by
  an APGD-like ascent (:func:`step_checkpoints`);
- average-case: mean_S mean_k [ L_S(w+δ_k) − L_S(w) ], δ_k = ρ·c⊙N(0, I) (ℓ2) or ρ·c⊙U[−1, 1] (ℓ∞).

δ touches only a *group* of parameters — ``"all"``, one layer (a name of
:func:`rftlib.core.layers.layer_groups`), or a list of state-dict keys — and, of those, only parameters
that get a gradient from the loss (``requires_grad`` and actually used: a frozen parameter, or a
CLIP text tower that an image classifier never calls, is left alone). The budget of a layer is
relative to that layer's own |w|. When every perturbed parameter lies in stage ℓ or later of the
model's forward pass, the input of stage ℓ is computed once per batch and only stages ℓ.. run per
step (:mod:`rftlib.core.prefix`); ``naive=True`` forces the full forward pass (same numbers).

The loss is cross-entropy on *normalized logits* by default (centred over classes, divided by
their L2 norm; :func:`normalize_logits`), which makes the value invariant to a rescaling of the
head. Sharpness is measured in eval mode; the weights, ``requires_grad`` flags and train/eval mode
are restored exactly afterwards, also on errors.

Ascent details (worst-case), with u = δ ⊘ c the coordinates in which the budget is a plain ball:
- step and projection P, always a consistent pair (the step is steepest ascent in the coordinates
  in which P is the Euclidean projection):
  ℓ∞: δ += η·c⊙sign(∇), P clips to [−ρc, ρc] (as the reference);
  ℓ2 (default, ``l2_projection="rescale"``): δ += η·c⊙(c⊙∇)/‖c⊙∇‖₂ (steepest ascent in u) and P
  rescales u onto the ball, which keeps the procedure invariant to rescalings that leave the
  function unchanged (standard ℓ2, c = 1, is the plain Euclidean pair);
  ℓ2 adaptive with ``l2_projection="ellipsoid"``: δ += η·∇/‖∇⊘c‖₂ (steepest ascent in δ) and P the
  Euclidean projection onto the ellipsoid ‖δ⊘c‖₂ ≤ ρ (bisection on the Lagrange multiplier,
  :func:`project_ellipsoid`).
  The earlier default paired the u-step with the δ-projection; the projection then undid most of
  each step and the ascent stalled (fashion zero-shot head, ρ = 0.5: 0.0395 at 20 and at 100 steps,
  against 0.0590 with the consistent u-pair). The reference's ℓ2 adaptive step, |w|⊙∇/‖∇‖, matches
  neither projection, and its weighted norm is 0/0 at zero weights (see ``reconstruction.md``);
- momentum as in APGD: δ_{k+1} = P(δ_k + 0.75·(z − δ_k) + 0.25·(δ_k − δ_{k−1})), z = P(δ_k + step)
  (plain z on the first step and after a restart);
- step size: η starts at 2ρ and is halved at the checkpoints of :func:`step_checkpoints` when fewer
  than 75 % of the steps since the previous checkpoint improved the best loss, or when neither η nor
  the best loss changed since then; on halving the ascent restarts from the best δ (with the
  gradient stored there);
- the best iterate is tracked from the loss of each gradient step's own forward pass (no extra
  forward per step; δ tensors are kept, never a model copy); the batch's value is
  L_S(w+δ_best) − L_S(w), both evaluated without gradients.

Example:
    >>> import torch
    >>> from torch import nn
    >>> _ = torch.manual_seed(0)
    >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    >>> data = (torch.randn(32, 4), torch.randint(0, 3, (32,)))
    >>> r = sharpness(net, data, rho=0.05, norm="linf", n_iters=5, m=16, progress=False)
    >>> len(r.per_batch), r.value >= 0, r.rel_norm <= 0.05 + 1e-7
    (2, True, True)
    >>> sorted(r.to_row())
    ['adaptive', 'kind', 'layer', 'norm', 'rho', 'value']
    >>> sharpness(net, data, rho=0.0, progress=False).value
    0.0
"""

from __future__ import annotations

import contextlib
import difflib
import itertools
import math
import time
import warnings
from dataclasses import asdict, dataclass, field
from dataclasses import fields as fields_of
from dataclasses import replace as dataclass_replace
from typing import Any, Callable, ContextManager, Iterable, Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from rftlib.errors import NumericalError, ParameterError
from rftlib.core.layers import layer_groups
from rftlib.core.prefix import SuffixModel, model_stages, stage_of_keys
from rftlib.progress import bar

__all__ = ["KINDS", "NORMS", "L2_PROJECTIONS", "SharpnessConfig", "SharpnessResult", "NothingToPerturbError",
           "sharpness", "layerwise_sharpness", "step_checkpoints", "normalize_logits", "project_linf", "project_l2",
           "project_ellipsoid", "relative_norm", "resolve_group"]

KINDS: tuple[str, ...] = ("worst", "average")
NORMS: tuple[str, ...] = ("linf", "l2")
L2_PROJECTIONS: tuple[str, ...] = ("ellipsoid", "rescale")

Tensors = list[torch.Tensor]


# ----------------------------------------------------------------------------------------------
# results
# ----------------------------------------------------------------------------------------------


@dataclass
class SharpnessResult:
    """One sharpness estimate.

    Attributes:
        value: the sharpness, mean over batches of L_S(w+δ) − L_S(w) (weighted by batch size, the
            plain mean when every batch has m examples).
        per_batch: the per-batch loss gaps (worst-case: at the best δ; average-case: mean over draws).
        err_gap: the same mean of the 0-1 error gap (error at w+δ minus error at w, in [−1, 1]).
        delta_norm: mean over batches (and draws) of ‖δ‖_p, p the budget's norm (∞ or 2).
        rel_norm: the same for ‖δ ⊘ c‖_p (≤ ρ; c = |w| or 1).
        loss_at_w: mean of L_S(w) (with the same logit normalization).
        n_examples: examples used.
        settings: the estimator's parameters (``kind``, ``norm``, ``adaptive``, ``rho``, ``layer``,
            ``n_iters``, ``m``, ``logit_norm``, ``seed``, ...) and what it perturbed (``n_params``,
            ``n_tensors``, ``prefix_stage``: the first stage run per step, ``None`` for the full
            forward).
        seconds: wall time of the estimate.

    Example:
        >>> r = SharpnessResult(0.5, [0.5], 0.1, 0.2, 0.01, 1.0, 8,
        ...                     {"kind": "worst", "norm": "linf", "adaptive": True, "rho": 0.01, "layer": "all"})
        >>> r.to_row(run="ft")
        {'run': 'ft', 'layer': 'all', 'kind': 'worst', 'norm': 'linf', 'adaptive': True, 'rho': 0.01, 'value': 0.5}
    """

    value: float
    per_batch: list[float]
    err_gap: float
    delta_norm: float
    rel_norm: float
    loss_at_w: float
    n_examples: int
    settings: dict[str, Any] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def layer(self) -> str:
        return self.settings.get("layer", "all")

    def to_row(self, **extra: Any) -> dict[str, Any]:
        """A tidy row with the results-contract columns ``layer, kind, norm, adaptive, rho, value``,
        after any ``extra`` columns (e.g. ``world``, ``run``, ``alpha``)."""
        s = self.settings
        return {**extra, "layer": s.get("layer", "all"), "kind": s.get("kind"), "norm": s.get("norm"),
                "adaptive": s.get("adaptive"), "rho": s.get("rho"), "value": self.value}

    def to_dict(self) -> dict[str, Any]:
        """All fields as plain Python (for JSON)."""
        return asdict(self)


# ----------------------------------------------------------------------------------------------
# small pure helpers
# ----------------------------------------------------------------------------------------------


def step_checkpoints(n_iters: int) -> list[int]:
    """Iterations at which the ascent may halve its step size (APGD's schedule).

    Fractions p0 = 0, p1 = 0.22, p_{j+1} = p_j + max(p_j − p_{j−1} − 0.03, 0.06) of ``n_iters``,
    rounded up; those in 1..n_iters.

    Example:
        >>> step_checkpoints(20)
        [5, 9, 12, 15, 16, 18, 19, 20]
        >>> step_checkpoints(3)
        [1, 2, 3]
    """
    _check_int("n_iters", n_iters, 1)
    p = [0.0, 0.22]
    while p[-1] < 1.0:
        p.append(p[-1] + max(p[-1] - p[-2] - 0.03, 0.06))
    return sorted({k for k in (math.ceil(q * n_iters) for q in p[1:]) if 1 <= k <= n_iters})


def normalize_logits(logits: torch.Tensor) -> torch.Tensor:
    """Centre logits over classes, then divide by their L2 norm (row-wise).

    Example:
        >>> import torch
        >>> z = normalize_logits(torch.tensor([[1.0, 2.0, 3.0]]))
        >>> [round(v, 4) for v in z[0].tolist()]
        [-0.7071, 0.0, 0.7071]
        >>> torch.allclose(normalize_logits(10 * torch.tensor([[1.0, 2.0, 3.0]])), z)
        True
    """
    z = logits - logits.mean(dim=1, keepdim=True)
    return z / z.norm(dim=1, keepdim=True).clamp_min(torch.finfo(z.dtype).tiny)


def _ratio(d: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """δ ⊘ c with 0/0 := 0 (a weight with zero budget carries zero perturbation)."""
    return torch.where(c > 0, d / c, torch.zeros((), dtype=d.dtype, device=d.device))


def _floats(ts: Sequence[torch.Tensor]) -> list[float]:
    """The values of 0-dim tensors as Python floats, with one device sync (one per device)."""
    if len({t.device for t in ts}) > 1:
        return [float(t) for t in ts]
    return torch.stack(list(ts)).tolist()


def _sq_sum(ts: Iterable[torch.Tensor]) -> float:
    """Σ ‖t‖₂² in double precision: the norm of each tensor (its own dtype), squared and summed in Python.

    On the CPU ``torch._foreach_norm`` is :func:`torch.linalg.vector_norm` per tensor (the same
    values); elsewhere its fused kernel may reduce in another order, so each norm is its own call.
    """
    ts = list(ts)
    if not ts:
        return 0
    cpu = all(t.device.type == "cpu" for t in ts)
    norms = torch._foreach_norm(ts) if cpu else [torch.linalg.vector_norm(t) for t in ts]
    return sum(v ** 2 for v in _floats(norms))


def _norm(ts: Iterable[torch.Tensor], norm: str) -> float:
    ts = list(ts)
    if not ts:
        return 0.0
    if norm == "linf":
        return max(float(t.abs().max()) if t.numel() else 0.0 for t in ts)
    return math.sqrt(_sq_sum(ts))


def relative_norm(delta: Sequence[torch.Tensor], c: Sequence[torch.Tensor], norm: str) -> float:
    """‖δ ⊘ c‖_p over all tensors together (entries with c = 0 count as 0).

    Example:
        >>> import torch
        >>> relative_norm([torch.tensor([0.5, -1.0])], [torch.tensor([1.0, 2.0])], "linf")
        0.5
    """
    _check_choice("norm", norm, NORMS)
    return _norm((_ratio(d, ci) for d, ci in zip(delta, c)), norm)


def project_linf(delta: Sequence[torch.Tensor], c: Sequence[torch.Tensor], rho: float) -> Tensors:
    """Clip every entry to [−ρc, ρc].

    Example:
        >>> import torch
        >>> project_linf([torch.tensor([0.5, -3.0, 0.1])], [torch.tensor([1.0, 1.0, 0.0])], 1.0)[0].tolist()
        [0.5, -1.0, 0.0]
    """
    out = []
    for d, ci in zip(delta, c):
        r = rho * ci
        out.append(torch.maximum(torch.minimum(d, r), -r))
    return out


def project_ellipsoid(z: Sequence[torch.Tensor], c: Sequence[torch.Tensor], rho: float,
                      max_bisect: int = 100, rtol: float = 1e-7) -> Tensors:
    """Euclidean projection of z onto the ellipsoid ‖δ ⊘ c‖₂ ≤ ρ.

    The nearest point is δ = z ⊙ c² / (c² + λ) with the Lagrange multiplier λ ≥ 0 found by bisection
    so that ‖δ ⊘ c‖₂ = ρ (entries with c = 0 get 0). The result is feasible: a last rescale absorbs
    the bisection's tolerance.

    Example:
        >>> import torch
        >>> d = project_ellipsoid([torch.tensor([3.0, 4.0])], [torch.tensor([1.0, 2.0])], 1.0)
        >>> round(relative_norm(d, [torch.tensor([1.0, 2.0])], "l2"), 6)
        1.0
        >>> project_ellipsoid([torch.tensor([0.1, 0.1])], [torch.tensor([1.0, 1.0])], 1.0)[0].tolist()
        [0.10000000149011612, 0.10000000149011612]
    """
    z = [torch.where(ci > 0, zi, torch.zeros((), dtype=zi.dtype, device=zi.device)) for zi, ci in zip(z, c)]
    if relative_norm(z, c, "l2") <= rho:
        return z
    a = [zi * ci for zi, ci in zip(z, c)]
    b = [ci * ci for ci in c]

    def g(lam: float) -> float:  # ‖δ(λ) ⊘ c‖₂², decreasing in λ
        return _sq_sum(ai / (bi + lam) for ai, bi in zip(a, b))

    lo, hi = 0.0, _norm(a, "l2") / rho  # g(hi) ≤ ρ²
    target = rho * rho
    for _ in range(max_bisect):
        mid = 0.5 * (lo + hi)
        if g(mid) > target:
            lo = mid
        else:
            hi = mid
        if hi - lo <= rtol * hi:
            break
    delta = [zi * bi / (bi + hi) for zi, bi in zip(z, b)]
    r = relative_norm(delta, c, "l2")
    if r > rho:
        delta = [d * (rho / r) for d in delta]
    return delta


def project_l2(delta: Sequence[torch.Tensor], c: Sequence[torch.Tensor], rho: float,
               method: str = "rescale") -> Tensors:
    """Project onto ‖δ ⊘ c‖₂ ≤ ρ: ``"rescale"`` scales u = δ ⊘ c onto the ball (the exact projection
    when c = 1); ``"ellipsoid"`` is the Euclidean projection in δ (:func:`project_ellipsoid`).

    Example:
        >>> import torch
        >>> project_l2([torch.tensor([3.0, 4.0])], [torch.ones(2)], 1.0)[0].tolist()
        [0.6000000238418579, 0.800000011920929]
    """
    _check_choice("l2_projection", method, L2_PROJECTIONS)
    if method == "ellipsoid":
        return project_ellipsoid(delta, c, rho)
    delta = [torch.where(ci > 0, d, torch.zeros((), dtype=d.dtype, device=d.device)) for d, ci in zip(delta, c)]
    r = relative_norm(delta, c, "l2")
    if r <= rho:
        return delta
    return [d * (rho / r) for d in delta]


# ----------------------------------------------------------------------------------------------
# validation
# ----------------------------------------------------------------------------------------------


def _check_choice(name: str, value: Any, allowed: Sequence[Any]) -> None:
    if value not in allowed:
        raise ParameterError(f"{name}={value!r} is not allowed; use one of {tuple(allowed)}.")


def _check_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ParameterError(f"{name}={value!r} must be an integer >= {minimum}.")
    return value


def _check_rho(rho: Any) -> float:
    try:
        r = float(rho)
    except (TypeError, ValueError):
        raise ParameterError(f"rho={rho!r} is not a number; use a finite radius >= 0 (0 gives sharpness 0).") from None
    if not math.isfinite(r) or r < 0:
        raise ParameterError(f"rho={rho!r} is not allowed; use a finite radius >= 0 (0 gives sharpness 0).")
    return r


# ----------------------------------------------------------------------------------------------
# groups, data, forward
# ----------------------------------------------------------------------------------------------


def resolve_group(model: nn.Module, group: str | Sequence[str] = "all") -> tuple[str, list[str]]:
    """``(layer name, state-dict keys)`` of a group: ``"all"``, a layer name of
    :func:`rftlib.core.layers.layer_groups` (block granularity), one state-dict key, or a list of keys.

    Example:
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1))
        >>> resolve_group(net, "2")
        ('2', ['2.weight', '2.bias'])
        >>> resolve_group(net, ["0.bias"])
        ('custom', ['0.bias'])
    """
    keys = list(model.state_dict().keys())
    if isinstance(group, str):
        if group == "all":
            return "all", keys
        groups = layer_groups(model, "block")
        if group in groups:
            return group, list(groups[group])
        if group in keys:
            return group, [group]
        raise ParameterError(f"group={group!r} is neither 'all', a layer of this model {list(groups)}, "
                             "nor a state-dict key.")
    group = list(group)
    if not group or not all(isinstance(k, str) for k in group):
        raise ParameterError(f"group={group!r} must be 'all', a layer name, or a non-empty list of state-dict keys.")
    unknown = [k for k in group if k not in keys]
    if unknown:
        raise ParameterError(f"group has keys not in the model: {unknown[:3]}; use state-dict keys "
                             "(see rftlib.core.layers.layer_groups).")
    return "custom", group


def _chunks(data: Any, m: int, device: torch.device) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Batches of m examples on ``device`` from ``(x, y)`` tensors, a Dataset, or an iterable of
    ``(x, y)`` batches (re-chunked to m; the last batch may be smaller)."""
    from rftlib.core.evaluation import iterate_batches

    if isinstance(data, tuple) and len(data) == 2 and isinstance(data[0], torch.Tensor):
        yield from iterate_batches(data, m, device)
        return
    if isinstance(data, torch.utils.data.Dataset):
        yield from iterate_batches(data, m, device)
        return
    xs: list[torch.Tensor] = []
    ys: list[torch.Tensor] = []
    n = 0
    for xb, yb in data:
        xs.append(xb)
        ys.append(torch.as_tensor(yb))
        n += len(xb)
        while n >= m:
            x, y = torch.cat(xs), torch.cat(ys)
            yield x[:m].to(device), y[:m].to(device)
            xs, ys, n = [x[m:]], [y[m:]], n - m
    if n > 0:
        yield torch.cat(xs).to(device), torch.cat(ys).to(device)


def _n_batches(data: Any, m: int) -> int | None:
    if isinstance(data, tuple) and len(data) == 2 and isinstance(data[0], torch.Tensor):
        return math.ceil(len(data[0]) / m)
    if isinstance(data, torch.utils.data.Dataset) and hasattr(data, "__len__"):
        return math.ceil(len(data) / m)
    return None


def _loss(logits: torch.Tensor, y: torch.Tensor, logit_norm: bool) -> torch.Tensor:
    z = logits.float()
    return F.cross_entropy(normalize_logits(z) if logit_norm else z, y)


def _loss_err(logits: torch.Tensor, y: torch.Tensor, logit_norm: bool) -> tuple[torch.Tensor, torch.Tensor]:
    return _loss(logits, y, logit_norm), (logits.argmax(dim=1) != y).float().mean()


class NothingToPerturbError(ParameterError):
    """The group holds no parameter that gets a gradient (frozen, unused, or not floating-point)."""


class _Perturbed:
    """The perturbed parameters of one estimate: originals, budgets c, in-place writes, restore.

    What the ascent needs of c at every step is computed once here: which tensors hold a zero budget
    (``masks``: ``c > 0``, ``None`` where every entry is positive, so that ``torch.where`` would copy),
    c scaled by the current step size and the ℓ∞ box [−ρc, ρc] (:meth:`scaled`, :meth:`box`).
    """

    def __init__(self, names: list[str], params: list[nn.Parameter], adaptive: bool) -> None:
        self.names = names
        self.params = params
        self.w0 = [p.detach().clone() for p in params]
        self.c = [w.abs() if adaptive else torch.ones_like(w) for w in self.w0]
        self._data = [p.data for p in params]
        pos = [ci > 0 for ci in self.c]
        full = _floats([m.all() for m in pos]) if pos else []
        self.masks = [None if f else m for m, f in zip(pos, full)]
        self._zero = [torch.zeros((), dtype=w.dtype, device=w.device) for w in self.w0]
        self._scaled: tuple[float, Tensors] | None = None
        self._box: tuple[float, Tensors, Tensors] | None = None

    @torch.no_grad()
    def set(self, delta: Sequence[torch.Tensor] | None) -> None:
        if delta is None:
            torch._foreach_copy_(self._data, self.w0)
        else:
            for p, w, d in zip(self._data, self.w0, delta):
                torch.add(w, d, out=p)

    def keep(self, ts: Sequence[torch.Tensor]) -> Tensors:
        """``where(c > 0, t, 0)`` per tensor (the tensor itself where every c > 0)."""
        return [t if m is None else torch.where(m, t, z) for t, m, z in zip(ts, self.masks, self._zero)]

    def ratio(self, ts: Sequence[torch.Tensor]) -> Tensors:
        """t ⊘ c with 0/0 := 0, as :func:`_ratio`."""
        q = torch._foreach_div(list(ts), self.c)
        return [qi if m is None else torch.where(m, qi, z) for qi, m, z in zip(q, self.masks, self._zero)]

    def scaled(self, eta: float) -> Tensors:
        """η·c (kept while η does not change)."""
        if self._scaled is None or self._scaled[0] != eta:
            self._scaled = (eta, torch._foreach_mul(self.c, eta))
        return self._scaled[1]

    def box(self, rho: float) -> tuple[Tensors, Tensors]:
        """``(ρc, −ρc)``, the bounds of :func:`project_linf`."""
        if self._box is None or self._box[0] != rho:
            r = torch._foreach_mul(self.c, rho)
            self._box = (rho, r, torch._foreach_neg(r))
        return self._box[1], self._box[2]

    def zeros(self) -> Tensors:
        return [torch.zeros_like(w) for w in self.w0]


def _random_like(ts: Sequence[torch.Tensor], kind: str, gen: torch.Generator) -> Tensors:
    if kind == "uniform":  # U[-1, 1]
        return [torch.rand(t.shape, generator=gen, device=t.device, dtype=t.dtype).mul_(2).sub_(1) for t in ts]
    return [torch.randn(t.shape, generator=gen, device=t.device, dtype=t.dtype) for t in ts]


# ----------------------------------------------------------------------------------------------
# estimators
# ----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class SharpnessConfig:
    """The settings of one sharpness estimate (validated on construction; see :func:`sharpness`).

    Attributes:
        rho: the radius ρ ≥ 0; 0 gives exactly 0.
        kind: ``"worst"`` (ascent) or ``"average"`` (random draws).
        norm: ``"linf"`` or ``"l2"`` (average-case: uniform or Gaussian noise).
        adaptive: budget relative to |w| (c = |w|) or absolute (c = 1).
        n_iters: ascent steps per batch (worst) or noise draws per batch (average).
        m: examples per batch (m-sharpness: max per batch, then mean).
        logit_norm: cross-entropy on normalized logits (:func:`normalize_logits`).
        seed: seeds the random init / noise (same seed, same values).
        random_init: worst-case only: start from a random δ in the budget (ℓ∞: u ~ U[−ρ, ρ];
            ℓ2: u uniform on the sphere of radius ρ) instead of δ = 0.
        l2_projection: adaptive ℓ2 worst-case only, a consistent pair of step and projection:
            ``"rescale"`` (default: steepest ascent in u = δ ⊘ |w| and projection in u; rescaling-invariant,
            and the strongest ascent measured) or ``"ellipsoid"`` (steepest ascent in δ and the Euclidean
            projection in δ onto the ellipsoid).
        naive: force the full forward pass at every step (no prefix caching).
        precision: a factory of a context manager wrapped around every forward pass (e.g. a bf16
            autocast from the caller's device layer); ``None``: fp32, no wrapper.

    Example:
        >>> cfg = SharpnessConfig(rho=0.01, norm="l2")
        >>> cfg.kind, cfg.l2_projection, cfg.replace(n_iters=5).n_iters
        ('worst', 'rescale', 5)
        >>> SharpnessConfig(rho=0.01, norm="l1")
        Traceback (most recent call last):
        ...
        rftlib.errors.ParameterError: norm='l1' is not allowed; use one of ('linf', 'l2').
    """

    rho: float
    kind: str = "worst"
    norm: str = "linf"
    adaptive: bool = True
    n_iters: int = 20
    m: int = 128
    logit_norm: bool = True
    seed: int = 0
    random_init: bool = False
    l2_projection: str = "rescale"
    naive: bool = False
    precision: Callable[[], ContextManager[Any]] | None = None

    def __post_init__(self) -> None:
        object.__setattr__(self, "rho", _check_rho(self.rho))
        _check_choice("kind", self.kind, KINDS)
        _check_choice("norm", self.norm, NORMS)
        _check_choice("l2_projection", self.l2_projection, L2_PROJECTIONS)
        _check_int("n_iters", self.n_iters, 1)
        _check_int("m", self.m, 1)
        if not isinstance(self.adaptive, bool):
            raise ParameterError(f"adaptive={self.adaptive!r} must be True (c = |w|) or False (c = 1).")
        if self.precision is not None and not callable(self.precision):
            raise ParameterError(f"precision={self.precision!r} must be a context-manager factory or None (fp32).")

    @classmethod
    def make(cls, config: "SharpnessConfig | None" = None, **fields: Any) -> "SharpnessConfig":
        """``config`` with ``fields`` replaced, or a new config from ``fields``; unknown names are named.

        Example:
            >>> SharpnessConfig.make(rho=0.1, n_iter=3)
            Traceback (most recent call last):
            ...
            rftlib.errors.ParameterError: unknown sharpness setting 'n_iter' (did you mean 'n_iters'?); allowed: adaptive, kind, l2_projection, logit_norm, m, n_iters, naive, norm, precision, random_init, rho, seed.
        """
        names = {f.name for f in fields_of(cls)}
        for k in fields:
            if k not in names:
                close = difflib.get_close_matches(k, names, n=1)
                hint = f" (did you mean {close[0]!r}?)" if close else ""
                raise ParameterError(f"unknown sharpness setting {k!r}{hint}; allowed: {', '.join(sorted(names))}.")
        if config is None:
            if "rho" not in fields:
                raise ParameterError("rho is required: give rho=... (a radius >= 0) or a SharpnessConfig.")
            return cls(**fields)
        if not isinstance(config, cls):
            raise ParameterError(f"config={config!r} must be a SharpnessConfig or None.")
        return dataclass_replace(config, **fields) if fields else config

    def replace(self, **fields: Any) -> "SharpnessConfig":
        """A copy with ``fields`` changed (validated)."""
        return SharpnessConfig.make(self, **fields)

    def settings(self, layer: str) -> dict[str, Any]:
        """The ``settings`` dict of a :class:`SharpnessResult` (as before the config existed)."""
        return {"kind": self.kind, "norm": self.norm, "adaptive": self.adaptive, "rho": self.rho, "layer": layer,
                "n_iters": self.n_iters, "m": self.m, "logit_norm": self.logit_norm, "seed": self.seed,
                "random_init": self.random_init,
                "l2_projection": self.l2_projection if (self.kind == "worst" and self.norm == "l2" and self.adaptive) else None,
                "naive": self.naive}

    def forward_context(self) -> ContextManager[Any]:
        """The context of every forward pass: the precision factory's, or a no-op (fp32)."""
        return contextlib.nullcontext() if self.precision is None else self.precision()


@dataclass
class _Batch:
    """What every batch of one estimate shares: the suffix model, the perturbed parameters, the
    settings, the random generator and the reporting hooks."""

    suffix: SuffixModel
    pert: "_Perturbed"
    cfg: SharpnessConfig
    gen: torch.Generator
    callback: Callable[[dict[str, Any]], None] | None
    layer: str
    settings: dict[str, Any]

    def loss_err(self, h: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with self.cfg.forward_context():
            return _loss_err(self.suffix(h), y, self.cfg.logit_norm)

    def report(self, b: int, k: int, delta: Sequence[torch.Tensor], loss: float, eta: float | None) -> None:
        if self.callback is not None:
            self.callback({"batch": b, "iter": k, "delta": delta, "c": self.pert.c, "names": self.pert.names,
                           "loss": loss, "eta": eta, "rho": self.cfg.rho, "norm": self.cfg.norm})


def sharpness(model: nn.Module, data: Any, group: str | Sequence[str] = "all", config: SharpnessConfig | None = None,
              *, name: str | None = None, callback: Callable[[dict[str, Any]], None] | None = None,
              progress: bool = True, **fields: Any) -> SharpnessResult:
    """Worst-case or average-case sharpness of ``model`` at its current weights.

    Args:
        model: a classifier (``model(x)`` gives logits); with ``stages()`` or as an ``nn.Sequential``
            prefix caching is available.
        data: ``(x, y)`` tensors, a ``Dataset`` of ``(image, label)``, or an iterable of ``(x, y)``
            batches; it is cut into batches of ``m`` examples (the reference uses 1024 training
            examples without augmentation).
        group: what δ may touch: ``"all"``, a layer name (:func:`rftlib.core.layers.layer_groups`, block
            granularity), a state-dict key, or a list of keys.
        config: the estimator's settings (:class:`SharpnessConfig`); ``**fields`` override its fields
            (or, without ``config``, make one: ``sharpness(model, data, rho=0.01, norm="l2")``, the
            form every caller used before the config existed); the fields are described there.
        name: the ``layer`` label of the result (default: the layer name, ``"all"`` or ``"custom"``).
        callback: called after every evaluated iterate (or draw) with a dict ``batch``, ``iter``,
            ``delta`` (live tensors, clone to keep), ``c``, ``names``, ``loss``, ``eta``, ``rho``,
            ``norm``; for tests and diagnostics.
        progress: progress bar over batches.

    Returns:
        A :class:`SharpnessResult`.

    Raises:
        ParameterError: a bad parameter or an empty data set.
        NothingToPerturbError: (a ``ParameterError``) no parameter of the group gets a gradient.
        NumericalError: the loss became NaN or infinite (the message names the layer measured; when
            the loss at w is not finite because a weight of the model is NaN or infinite, it names
            that weight's key and layer).
    """
    cfg = SharpnessConfig.make(config, **fields)
    layer, keys = resolve_group(model, group)
    layer = name or layer
    if callback is not None and not callable(callback):
        raise ParameterError(f"callback={callback!r} must be callable or None.")
    t_start = time.perf_counter()
    candidates = _candidates(model, keys, layer)
    settings = cfg.settings(layer)
    with _only_grads_for(model, [p for _, p in candidates]):
        chunks = _chunks(data, cfg.m, candidates[0][1].device)
        first = next(chunks, None)
        if first is None:
            raise ParameterError("data is empty: sharpness needs at least one example.")
        ctx = _prepare(model, candidates, first, cfg, callback, layer, settings)
        try:
            rows = [_one_batch(ctx, xb, yb, b) for b, (xb, yb) in enumerate(bar(
                itertools.chain([first], chunks), total=_n_batches(data, cfg.m), desc=f"sharpness {layer}",
                disable=not progress, unit="batch"))]
        finally:
            ctx.pert.set(None)
    return _result(rows, cfg, settings, time.perf_counter() - t_start)


@contextlib.contextmanager
def _only_grads_for(model: nn.Module, params: Sequence[nn.Parameter]) -> Iterator[None]:
    """Eval mode, and gradients for ``params`` only, inside the block; flags and mode restored after."""
    all_params = list(model.parameters())
    flags = [p.requires_grad for p in all_params]
    was_training = model.training
    ids = {id(p) for p in params}
    try:
        model.eval()
        for p in all_params:
            p.requires_grad_(id(p) in ids)
        yield
    finally:
        for p, f in zip(all_params, flags):
            p.requires_grad_(f)
        model.train(was_training)


def _candidates(model: nn.Module, keys: Sequence[str], layer: str) -> list[tuple[str, nn.Parameter]]:
    key_set = set(keys)
    candidates = [(n, p) for n, p in model.named_parameters() if n in key_set and p.requires_grad and p.is_floating_point()]
    if not candidates:
        raise NothingToPerturbError(
            f"group {layer!r} holds no trainable floating-point parameter (of {len(keys)} keys); nothing to "
            "perturb. Pick another layer, or unfreeze it.")
    return candidates


def _prepare(model: nn.Module, candidates: list[tuple[str, nn.Parameter]], first: tuple[torch.Tensor, torch.Tensor],
             cfg: SharpnessConfig, callback: Callable[[dict[str, Any]], None] | None, layer: str,
             settings: dict[str, Any]) -> _Batch:
    """Which candidates get a gradient (one forward/backward on one example: 2–5 ms on the tiny
    classifier, under 1 % of a whole-model estimate), the suffix to run, the perturbation state."""
    stages = model_stages(model)
    start = 0 if cfg.naive else stage_of_keys(stages, [n for n, _ in candidates])
    probe = SuffixModel(model, start)
    with cfg.forward_context():
        loss, _ = _loss_err(probe.full(first[0][:1]), first[1][:1], cfg.logit_norm)
    grads = (torch.autograd.grad(loss, [p for _, p in candidates], allow_unused=True) if loss.requires_grad
             else [None] * len(candidates))
    active = [(n, p) for (n, p), g in zip(candidates, grads) if g is not None]
    if not active:
        raise NothingToPerturbError(
            f"no parameter of group {layer!r} gets a gradient from the loss ({len(candidates)} trainable "
            "tensors, all unused by the forward pass); nothing to perturb.")
    for n, p in candidates:
        if all(p is not q for _, q in active):
            p.requires_grad_(False)
    start = 0 if cfg.naive else stage_of_keys(stages, [n for n, _ in active])
    suffix = SuffixModel(model, start)
    pert = _Perturbed([n for n, _ in active], [p for _, p in active], cfg.adaptive)
    settings.update(n_params=sum(p.numel() for p in pert.params), n_tensors=len(pert.params),
                    prefix_stage=suffix.start_name if start > 0 else None)
    gen = torch.Generator(device=candidates[0][1].device)
    gen.manual_seed(cfg.seed)
    return _Batch(suffix, pert, cfg, gen, callback, layer, settings)


def _one_batch(ctx: _Batch, xb: torch.Tensor, yb: torch.Tensor, b: int) -> tuple[float, float, float, float, float, int]:
    """``(gap, error gap, ‖δ‖, ‖δ ⊘ c‖, L(w), batch size)`` of one batch."""
    ctx.pert.set(None)
    h = ctx.suffix.prefix(xb)
    with torch.no_grad():
        loss0, err0 = (float(t) for t in ctx.loss_err(h, yb))
    if not math.isfinite(loss0):
        _check_weights(ctx.suffix.model, ctx.layer)  # a NaN/inf weight: name it
    _finite(loss0, ctx.layer, ctx.settings, f"at w (batch {b})")
    if ctx.cfg.rho == 0.0:
        gap, egap, dn, rn = 0.0, 0.0, 0.0, 0.0
    elif ctx.cfg.kind == "worst":
        gap, egap, dn, rn = _worst_batch(ctx, h, yb, loss0, err0, b)
    else:
        gap, egap, dn, rn = _average_batch(ctx, h, yb, loss0, err0, b)
    return gap, egap, dn, rn, loss0, len(yb)


def _result(rows: list[tuple[float, float, float, float, float, int]], cfg: SharpnessConfig, settings: dict[str, Any],
            seconds: float) -> SharpnessResult:
    per_batch, errs, dnorms, rnorms, losses0, sizes = (list(c) for c in zip(*rows))
    n = sum(sizes)

    def wmean(v: list[float]) -> float:
        return float(sum(a * s for a, s in zip(v, sizes)) / n)

    return SharpnessResult(
        value=0.0 if cfg.rho == 0.0 else wmean(per_batch), per_batch=per_batch, err_gap=wmean(errs),
        delta_norm=wmean(dnorms), rel_norm=wmean(rnorms), loss_at_w=wmean(losses0), n_examples=n,
        settings=settings, seconds=seconds,
    )


def _nonfinite_weight(model: nn.Module) -> tuple[str, int, float] | None:
    """The first floating-point parameter or buffer of ``model`` holding NaN/inf: ``(key, count,
    first bad value)``; ``None`` when all are finite."""
    with torch.no_grad():
        for key, t in model.state_dict(keep_vars=True).items():
            t = t.detach()
            if not (t.is_floating_point() or t.is_complex()) or bool(torch.isfinite(t.sum())):
                continue  # a finite sum: no NaN/inf (an infinite sum of finite values is checked below)
            bad = ~torch.isfinite(t)
            if bool(bad.any()):
                return key, int(bad.sum()), float(t[bad].flatten()[0].real)
    return None


def _layer_of(model: nn.Module, key: str, layers: Mapping[str, Sequence[str] | str] | None = None) -> str | None:
    """The layer holding ``key``: in ``layers`` if given, else at block granularity."""
    for name, keys in (layers or {}).items():
        if key == keys or (not isinstance(keys, str) and key in keys):
            return name
    try:
        groups = layer_groups(model, "block")
    except Exception:  # noqa: BLE001 - only for the message
        return None
    return next((name for name, keys in groups.items() if key in keys), None)


def _check_weights(model: nn.Module, layer: str | None = None,
                   layers: Mapping[str, Sequence[str] | str] | None = None) -> None:
    """Raise :class:`NumericalError` naming the key (and its layer) of a NaN/inf weight.

    ``layer``: the layer about to be measured (named in the message); ``None`` names the layer that
    holds the bad weight instead (looked up in ``layers``, else at block granularity).
    """
    found = _nonfinite_weight(model)
    if found is None:
        return
    key, count, value = found
    owner = _layer_of(model, key, layers)
    measured = layer if layer is not None else (owner or key)
    held = f"the weight {key!r}" + (f" of layer {owner!r}" if owner and owner != measured else "")
    raise NumericalError(
        f"sharpness of layer {measured!r}: the loss at w is not computed because {held} holds {count} "
        f"non-finite value(s) (the first is {value}). Fix the weights first (e.g. the endpoints, with "
        "rftlib.book.validation.check_endpoints)."
    )


def _finite(value: float, layer: str, settings: Mapping[str, Any], where: str) -> None:
    if not math.isfinite(value):
        raise NumericalError(
            f"sharpness of layer {layer!r}: the loss {where} is {value} (kind={settings['kind']}, "
            f"norm={settings['norm']}, rho={settings['rho']}). Check the weights and inputs for NaN/inf, "
            "or use a smaller rho."
        )


def _step(pert: _Perturbed, grads: Sequence[torch.Tensor], eta: float, norm: str,
          l2_step: str = "rescale") -> Tensors:
    """The ascent step of relative size η (‖step ⊘ c‖ = η), as new tensors.

    ℓ∞: η·c⊙sign(∇). ℓ2, ``l2_step="rescale"``: steepest ascent in u = δ ⊘ c, η·c⊙(c⊙∇)/‖c⊙∇‖₂
    (pairs with the projection in u). ℓ2, ``"ellipsoid"``: steepest ascent in δ, η·∇/‖∇ ⊘ c‖₂ (the
    Euclidean gradient direction, pairs with the Euclidean projection in δ); entries with c = 0 get 0.
    Each tensor is computed by the same elementwise operations, in the same order, as the plain
    per-tensor expressions above (``torch._foreach_*`` runs them per tensor; products commute exactly).
    """
    c = pert.c
    if norm == "linf":
        step = torch._foreach_sign(list(grads))
        torch._foreach_mul_(step, pert.scaled(eta))
        return step
    if l2_step == "ellipsoid":
        s = pert.keep(grads)
        gn = math.sqrt(_sq_sum(pert.ratio(s)))
        return [torch.zeros_like(g) for g in grads] if gn == 0.0 else torch._foreach_mul(s, eta / gn)
    s = torch._foreach_mul(c, list(grads))
    gn = math.sqrt(_sq_sum(s))
    if gn == 0.0:
        return [torch.zeros_like(g) for g in grads]
    step = torch._foreach_mul(c, eta / gn)
    torch._foreach_mul_(step, s)
    return step


def _project(ctx: _Batch, d: Tensors) -> Tensors:
    """P(d), the projection of the budget; works in place on ``d`` (pass new tensors only)."""
    cfg, pert = ctx.cfg, ctx.pert
    if cfg.norm == "linf":
        r, neg_r = pert.box(cfg.rho)
        torch._foreach_minimum_(d, r)
        torch._foreach_maximum_(d, neg_r)
        return d
    if cfg.adaptive and cfg.l2_projection == "ellipsoid":
        return project_ellipsoid(d, pert.c, cfg.rho)
    d = pert.keep(d)  # rescale (exact for c = 1): u = d ⊘ c onto the ball
    r = math.sqrt(_sq_sum(pert.ratio(d)))
    if r > cfg.rho:
        torch._foreach_mul_(d, cfg.rho / r)
    return d


def _momentum(delta: Tensors, z: Tensors, prev: Tensors) -> Tensors:
    """δ + 0.75·(z − δ) + 0.25·(δ − δ_prev), per tensor, as new tensors."""
    a = torch._foreach_sub(z, delta)
    torch._foreach_mul_(a, 0.75)
    torch._foreach_add_(a, delta)
    b = torch._foreach_sub(delta, prev)
    torch._foreach_mul_(b, 0.25)
    torch._foreach_add_(a, b)
    return a


def _init_delta(ctx: _Batch) -> Tensors:
    cfg, c = ctx.cfg, ctx.pert.c
    if not cfg.random_init:
        return ctx.pert.zeros()
    if cfg.norm == "linf":
        u = _random_like(c, "uniform", ctx.gen)
        return _project(ctx, [cfg.rho * ci * ui for ci, ui in zip(c, u)])
    u = _random_like(c, "normal", ctx.gen)
    un = _norm(u, "l2")
    return _project(ctx, [(cfg.rho / un) * ci * ui for ci, ui in zip(c, u)])


@dataclass
class _Ascent:
    """The state of the APGD-like ascent on one batch (module docstring: step size, checkpoints).

    Iterates and gradients are never changed in place once made, so the best ones are kept by
    reference (no copies).
    """

    eta: float
    delta: Tensors
    prev: Tensors | None = None
    best_loss: float = -math.inf
    best_delta: Tensors | None = None
    best_grad: Sequence[torch.Tensor] | None = None
    last_ck: int = 0
    eta_at_last: float = 0.0
    best_at_last: float = -math.inf
    n_improved: int = 0

    def record(self, k: int, loss: float, grads: Sequence[torch.Tensor]) -> None:
        if loss > self.best_loss:
            if k > 0:
                self.n_improved += 1
            self.best_loss, self.best_delta, self.best_grad = loss, self.delta, grads
        if k == 0:
            self.best_at_last = self.best_loss

    def checkpoint(self, k: int, grads: Sequence[torch.Tensor]) -> Sequence[torch.Tensor]:
        """At a checkpoint: halve η (and restart from the best δ) when progress is too slow."""
        too_few = self.n_improved < 0.75 * (k - self.last_ck)
        stalled = self.eta == self.eta_at_last and self.best_loss == self.best_at_last
        self.eta_at_last, self.best_at_last = self.eta, self.best_loss
        if too_few or stalled:
            self.eta /= 2.0
            self.delta, grads, self.prev = self.best_delta, self.best_grad, None
        self.n_improved, self.last_ck = 0, k
        return grads


def _worst_batch(ctx: _Batch, h: torch.Tensor, y: torch.Tensor, loss0: float, err0: float,
                 b: int) -> tuple[float, float, float, float]:
    cfg, pert = ctx.cfg, ctx.pert
    st = _Ascent(eta=2.0 * cfg.rho, delta=_init_delta(ctx))
    st.eta_at_last = st.eta
    st.best_delta = st.delta
    checkpoints = set(step_checkpoints(cfg.n_iters))
    l2_step = cfg.l2_projection if cfg.adaptive else "rescale"
    for k in range(cfg.n_iters):
        pert.set(st.delta)
        with cfg.forward_context():
            loss_t = _loss(ctx.suffix(h), y, cfg.logit_norm)
        grads = torch.autograd.grad(loss_t, pert.params)
        loss = float(loss_t.detach())
        _finite(loss, ctx.layer, ctx.settings, f"at w+delta (batch {b}, iteration {k})")
        ctx.report(b, k, st.delta, loss, st.eta)
        st.record(k, loss, grads)
        if k in checkpoints:
            grads = st.checkpoint(k, grads)
        with torch.no_grad():
            z = _step(pert, grads, st.eta, cfg.norm, l2_step)
            torch._foreach_add_(z, st.delta)  # δ + step
            z = _project(ctx, z)
            new = z if st.prev is None else _project(ctx, _momentum(st.delta, z, st.prev))
        st.prev, st.delta = st.delta, new
    return _worst_final(ctx, h, y, st, loss0, err0, b)


@torch.no_grad()
def _worst_final(ctx: _Batch, h: torch.Tensor, y: torch.Tensor, st: _Ascent, loss0: float, err0: float,
                 b: int) -> tuple[float, float, float, float]:
    """The last iterate has no gradient step of its own: evaluate it, then the best one."""
    pert, norm = ctx.pert, ctx.cfg.norm
    pert.set(st.delta)
    loss_n, err_n = (float(t) for t in ctx.loss_err(h, y))
    _finite(loss_n, ctx.layer, ctx.settings, f"at w+delta (batch {b}, iteration {ctx.cfg.n_iters})")
    ctx.report(b, ctx.cfg.n_iters, st.delta, loss_n, st.eta)
    if loss_n > st.best_loss:
        best_delta, loss_b, err_b = st.delta, loss_n, err_n
    else:
        best_delta = st.best_delta
        pert.set(best_delta)
        loss_b, err_b = (float(t) for t in ctx.loss_err(h, y))
        _finite(loss_b, ctx.layer, ctx.settings, f"at w+delta_best (batch {b})")
    pert.set(None)
    return loss_b - loss0, err_b - err0, _norm(best_delta, norm), relative_norm(best_delta, pert.c, norm)


@torch.no_grad()
def _average_batch(ctx: _Batch, h: torch.Tensor, y: torch.Tensor, loss0: float, err0: float,
                   b: int) -> tuple[float, float, float, float]:
    cfg, pert = ctx.cfg, ctx.pert
    gaps, egaps, dns, rns = [], [], [], []
    noise = "uniform" if cfg.norm == "linf" else "normal"
    for k in range(cfg.n_iters):
        delta = torch._foreach_mul(pert.box(cfg.rho)[0], _random_like(pert.c, noise, ctx.gen))  # ρc ⊙ u
        pert.set(delta)
        loss, err = (float(t) for t in ctx.loss_err(h, y))
        _finite(loss, ctx.layer, ctx.settings, f"at w+delta (batch {b}, draw {k})")
        ctx.report(b, k, delta, loss, None)
        gaps.append(loss - loss0)
        egaps.append(err - err0)
        dns.append(_norm(delta, cfg.norm))
        rns.append(_norm(pert.ratio(delta), cfg.norm))
    pert.set(None)
    n = len(gaps)
    return sum(gaps) / n, sum(egaps) / n, sum(dns) / n, sum(rns) / n


def layerwise_sharpness(model: nn.Module, data: Any, layers: Mapping[str, Sequence[str]] | None = None, *,
                        include_all: bool = True, progress: bool = True, **kwargs: Any) -> list[SharpnessResult]:
    """Sharpness of every layer alone (prefix-cached where possible), then of the whole model.

    Args:
        model: the classifier.
        data: as in :func:`sharpness`.
        layers: layer name → state-dict keys; default :func:`rftlib.core.layers.layer_groups` at block
            granularity (``embed``, ``block0``.., ``post``, ``head``).
        include_all: append the whole-model estimate (layer ``"all"``).
        progress: progress bar over layers.
        **kwargs: passed to :func:`sharpness` (``rho`` required).

    Returns:
        One :class:`SharpnessResult` per layer, in order, then ``"all"``. A layer without any
        parameter that gets a gradient (e.g. frozen) is skipped with a warning.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2))
        >>> data = (torch.randn(8, 3), torch.randint(0, 2, (8,)))
        >>> rs = layerwise_sharpness(net, data, rho=0.01, n_iters=2, progress=False)
        >>> [r.layer for r in rs]
        ['0', '2', 'all']
    """
    if "group" in kwargs or "name" in kwargs:
        raise ParameterError("layerwise_sharpness sets group and name per layer; pass `layers` instead.")
    layers = dict(layer_groups(model, "block") if layers is None else layers)
    if not layers:
        raise ParameterError("layers is empty: give layer name → state-dict keys (see rftlib.core.layers.layer_groups).")
    _check_rho(kwargs.get("rho"))
    _check_weights(model, layers=layers)  # a NaN weight anywhere would fail the first layer measured: name where it is
    todo: list[tuple[str, Sequence[str] | str]] = list(layers.items())
    if include_all:
        todo.append(("all", "all"))
    out = []
    for layer, keys in bar(todo, desc="layer-wise sharpness", disable=not progress, unit="layer"):
        try:
            out.append(sharpness(model, data, keys, name=layer, progress=False, **kwargs))
        except NothingToPerturbError as e:
            warnings.warn(f"layer {layer!r} skipped: {e}", stacklevel=2)
    return out
