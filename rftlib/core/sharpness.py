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

import math
import time
import warnings
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from rftlib.errors import NumericalError, ParameterError
from rftlib.core.layers import layer_groups
from rftlib.core.prefix import SuffixModel, model_stages, stage_of_keys
from rftlib.progress import bar

__all__ = [
    "KINDS",
    "NORMS",
    "L2_PROJECTIONS",
    "SharpnessResult",
    "NothingToPerturbError",
    "sharpness",
    "worst_case_sharpness",
    "average_case_sharpness",
    "layerwise_sharpness",
    "step_checkpoints",
    "normalize_logits",
    "project_linf",
    "project_l2",
    "project_ellipsoid",
    "relative_norm",
    "resolve_group",
]

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


def _norm(ts: Iterable[torch.Tensor], norm: str) -> float:
    ts = list(ts)
    if not ts:
        return 0.0
    if norm == "linf":
        return max(float(t.abs().max()) if t.numel() else 0.0 for t in ts)
    return math.sqrt(sum(float(torch.linalg.vector_norm(t)) ** 2 for t in ts))


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
        return sum(float(torch.linalg.vector_norm(ai / (bi + lam))) ** 2 for ai, bi in zip(a, b))

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


def _loss_err(logits: torch.Tensor, y: torch.Tensor, logit_norm: bool) -> tuple[torch.Tensor, torch.Tensor]:
    z = logits.float()
    if logit_norm:
        z = normalize_logits(z)
    return F.cross_entropy(z, y), (logits.argmax(dim=1) != y).float().mean()


class NothingToPerturbError(ParameterError):
    """The group holds no parameter that gets a gradient (frozen, unused, or not floating-point)."""


class _Perturbed:
    """The perturbed parameters of one estimate: originals, budgets c, in-place writes, restore."""

    def __init__(self, names: list[str], params: list[nn.Parameter], adaptive: bool) -> None:
        self.names = names
        self.params = params
        self.w0 = [p.detach().clone() for p in params]
        self.c = [w.abs() if adaptive else torch.ones_like(w) for w in self.w0]

    @torch.no_grad()
    def set(self, delta: Sequence[torch.Tensor] | None) -> None:
        if delta is None:
            for p, w in zip(self.params, self.w0):
                p.copy_(w)
        else:
            for p, w, d in zip(self.params, self.w0, delta):
                torch.add(w, d, out=p.data)

    def zeros(self) -> Tensors:
        return [torch.zeros_like(w) for w in self.w0]


def _random_like(ts: Sequence[torch.Tensor], kind: str, gen: torch.Generator) -> Tensors:
    if kind == "uniform":  # U[-1, 1]
        return [torch.rand(t.shape, generator=gen, device=t.device, dtype=t.dtype).mul_(2).sub_(1) for t in ts]
    return [torch.randn(t.shape, generator=gen, device=t.device, dtype=t.dtype) for t in ts]


# ----------------------------------------------------------------------------------------------
# estimators
# ----------------------------------------------------------------------------------------------


def sharpness(
    model: nn.Module,
    data: Any,
    group: str | Sequence[str] = "all",
    *,
    rho: float,
    kind: str = "worst",
    norm: str = "linf",
    adaptive: bool = True,
    n_iters: int = 20,
    m: int = 128,
    logit_norm: bool = True,
    seed: int = 0,
    random_init: bool = False,
    l2_projection: str = "rescale",
    naive: bool = False,
    name: str | None = None,
    callback: Callable[[dict[str, Any]], None] | None = None,
    progress: bool = True,
) -> SharpnessResult:
    """Worst-case or average-case sharpness of ``model`` at its current weights.

    Args:
        model: a classifier (``model(x)`` gives logits); with ``stages()`` or as an ``nn.Sequential``
            prefix caching is available.
        data: ``(x, y)`` tensors, a ``Dataset`` of ``(image, label)``, or an iterable of ``(x, y)``
            batches; it is cut into batches of ``m`` examples (the reference uses 1024 training
            examples without augmentation).
        group: what δ may touch: ``"all"``, a layer name (:func:`rftlib.core.layers.layer_groups`, block
            granularity), a state-dict key, or a list of keys.
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
    rho = _check_rho(rho)
    _check_choice("kind", kind, KINDS)
    _check_choice("norm", norm, NORMS)
    _check_choice("l2_projection", l2_projection, L2_PROJECTIONS)
    _check_int("n_iters", n_iters, 1)
    _check_int("m", m, 1)
    if not isinstance(adaptive, bool):
        raise ParameterError(f"adaptive={adaptive!r} must be True (c = |w|) or False (c = 1).")
    layer, keys = resolve_group(model, group)
    layer = name or layer
    if callback is not None and not callable(callback):
        raise ParameterError(f"callback={callback!r} must be callable or None.")

    t_start = time.perf_counter()
    by_name = dict(model.named_parameters())
    key_set = set(keys)
    candidates = [(n, p) for n, p in by_name.items() if n in key_set and p.requires_grad and p.is_floating_point()]
    if not candidates:
        raise NothingToPerturbError(
            f"group {layer!r} holds no trainable floating-point parameter (of {len(keys)} keys); nothing to "
            "perturb. Pick another layer, or unfreeze it.")
    all_params = list(model.parameters())
    flags = [p.requires_grad for p in all_params]
    was_training = model.training
    device = candidates[0][1].device
    settings: dict[str, Any] = {
        "kind": kind, "norm": norm, "adaptive": adaptive, "rho": rho, "layer": layer, "n_iters": n_iters, "m": m,
        "logit_norm": logit_norm, "seed": seed, "random_init": random_init,
        "l2_projection": l2_projection if (kind == "worst" and norm == "l2" and adaptive) else None,
        "naive": naive,
    }
    pert: _Perturbed | None = None
    try:
        model.eval()
        cand_ids = {id(p) for _, p in candidates}
        for p in all_params:
            p.requires_grad_(id(p) in cand_ids)
        stages = model_stages(model)
        chunks = _chunks(data, m, device)
        first = next(chunks, None)
        if first is None:
            raise ParameterError("data is empty: sharpness needs at least one example.")
        # which candidates get a gradient: one forward/backward on one example
        start = 0 if naive else stage_of_keys(stages, [n for n, _ in candidates])
        probe = SuffixModel(model, start)
        loss, _ = _loss_err(probe.full(first[0][:1]), first[1][:1], logit_norm)
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
        start = 0 if naive else stage_of_keys(stages, [n for n, _ in active])
        suffix = SuffixModel(model, start)
        pert = _Perturbed([n for n, _ in active], [p for _, p in active], adaptive)
        settings.update(n_params=sum(p.numel() for p in pert.params), n_tensors=len(pert.params),
                        prefix_stage=suffix.start_name if start > 0 else None)
        gen = torch.Generator(device=device)
        gen.manual_seed(seed)

        def batches() -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
            yield first
            yield from chunks

        per_batch, errs, dnorms, rnorms, losses0, sizes = [], [], [], [], [], []
        total = _n_batches(data, m)
        for b, (xb, yb) in enumerate(bar(batches(), total=total, desc=f"sharpness {layer}", disable=not progress,
                                         unit="batch")):
            pert.set(None)
            h = suffix.prefix(xb)
            with torch.no_grad():
                loss0, err0 = (float(t) for t in _loss_err(suffix(h), yb, logit_norm))
            if not math.isfinite(loss0):
                _check_weights(model, layer)  # a NaN/inf weight: name it
            _finite(loss0, layer, settings, f"at w (batch {b})")
            if rho == 0.0:
                gap, egap, dn, rn = 0.0, 0.0, 0.0, 0.0
            elif kind == "worst":
                gap, egap, dn, rn = _worst_batch(suffix, h, yb, pert, loss0, err0, rho, norm, n_iters, logit_norm,
                                                 gen, random_init, l2_projection, callback, b, layer, settings)
            else:
                gap, egap, dn, rn = _average_batch(suffix, h, yb, pert, loss0, err0, rho, norm, n_iters, logit_norm,
                                                   gen, callback, b, layer, settings)
            per_batch.append(gap)
            errs.append(egap)
            dnorms.append(dn)
            rnorms.append(rn)
            losses0.append(loss0)
            sizes.append(len(yb))
    finally:
        if pert is not None:
            pert.set(None)
        for p, f in zip(all_params, flags):
            p.requires_grad_(f)
        model.train(was_training)

    n = sum(sizes)

    def wmean(v: list[float]) -> float:
        return float(sum(a * s for a, s in zip(v, sizes)) / n)

    return SharpnessResult(
        value=0.0 if rho == 0.0 else wmean(per_batch), per_batch=per_batch, err_gap=wmean(errs),
        delta_norm=wmean(dnorms), rel_norm=wmean(rnorms), loss_at_w=wmean(losses0), n_examples=n,
        settings=settings, seconds=time.perf_counter() - t_start,
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


def _step(grads: Sequence[torch.Tensor], c: Sequence[torch.Tensor], eta: float, norm: str,
          l2_step: str = "rescale") -> Tensors:
    """The ascent step of relative size η (‖step ⊘ c‖ = η).

    ℓ∞: η·c⊙sign(∇). ℓ2, ``l2_step="rescale"``: steepest ascent in u = δ ⊘ c, η·c⊙(c⊙∇)/‖c⊙∇‖₂
    (pairs with the projection in u). ℓ2, ``"ellipsoid"``: steepest ascent in δ, η·∇/‖∇ ⊘ c‖₂ (the
    Euclidean gradient direction, pairs with the Euclidean projection in δ); entries with c = 0 get 0.
    """
    if norm == "linf":
        return [eta * ci * g.sign() for g, ci in zip(grads, c)]
    if l2_step == "ellipsoid":
        s = [torch.where(ci > 0, g, torch.zeros((), dtype=g.dtype, device=g.device)) for g, ci in zip(grads, c)]
        gn = relative_norm(s, c, "l2")
        if gn == 0.0:
            return [torch.zeros_like(g) for g in grads]
        return [(eta / gn) * si for si in s]
    s = [ci * g for g, ci in zip(grads, c)]
    gn = _norm(s, "l2")
    if gn == 0.0:
        return [torch.zeros_like(g) for g in grads]
    return [(eta / gn) * ci * si for si, ci in zip(s, c)]


def _worst_batch(suffix: SuffixModel, h: torch.Tensor, y: torch.Tensor, pert: _Perturbed, loss0: float, err0: float,
                 rho: float, norm: str, n_iters: int, logit_norm: bool, gen: torch.Generator, random_init: bool,
                 l2_projection: str, callback, b: int, layer: str, settings) -> tuple[float, float, float, float]:
    c = pert.c
    method = l2_projection if settings["adaptive"] else "rescale"  # c = 1: rescaling is the exact projection

    def project(d: Sequence[torch.Tensor]) -> Tensors:
        if norm == "linf":
            return project_linf(d, c, rho)
        return project_l2(d, c, rho, method)

    if random_init:
        if norm == "linf":
            u = _random_like(c, "uniform", gen)
            delta = project([rho * ci * ui for ci, ui in zip(c, u)])
        else:
            u = _random_like(c, "normal", gen)
            un = _norm(u, "l2")
            delta = project([(rho / un) * ci * ui for ci, ui in zip(c, u)])
    else:
        delta = pert.zeros()

    def fwd_bwd(d: Sequence[torch.Tensor]) -> tuple[float, tuple[torch.Tensor, ...]]:
        pert.set(d)
        loss, _ = _loss_err(suffix(h), y, logit_norm)
        g = torch.autograd.grad(loss, pert.params)
        return float(loss.detach()), g

    checkpoints = set(step_checkpoints(n_iters))
    eta = 2.0 * rho
    prev: Tensors | None = None
    best_loss, best_delta, best_grad = -math.inf, delta, None
    last_ck, eta_at_last, best_at_last, n_improved = 0, eta, -math.inf, 0
    for k in range(n_iters):
        loss, grads = fwd_bwd(delta)
        _finite(loss, layer, settings, f"at w+delta (batch {b}, iteration {k})")
        if callback is not None:
            callback({"batch": b, "iter": k, "delta": delta, "c": c, "names": pert.names, "loss": loss,
                      "eta": eta, "rho": rho, "norm": norm})
        if loss > best_loss:
            if k > 0:
                n_improved += 1
            best_loss, best_delta, best_grad = loss, [d.clone() for d in delta], [g.clone() for g in grads]
        if k == 0:
            best_at_last = best_loss
        if k in checkpoints:
            too_few = n_improved < 0.75 * (k - last_ck)
            stalled = eta == eta_at_last and best_loss == best_at_last
            eta_at_last, best_at_last = eta, best_loss
            if too_few or stalled:
                eta /= 2.0
                delta, grads, prev = [d.clone() for d in best_delta], best_grad, None
            n_improved, last_ck = 0, k
        z = project([d + s for d, s in zip(delta, _step(grads, c, eta, norm, method))])
        if prev is None:
            new = z
        else:
            new = project([d + 0.75 * (zi - d) + 0.25 * (d - p) for d, zi, p in zip(delta, z, prev)])
        prev, delta = delta, new

    # the last iterate has no gradient step of its own: evaluate it, then the best one
    with torch.no_grad():
        pert.set(delta)
        loss_n, err_n = (float(t) for t in _loss_err(suffix(h), y, logit_norm))
        _finite(loss_n, layer, settings, f"at w+delta (batch {b}, iteration {n_iters})")
        if callback is not None:
            callback({"batch": b, "iter": n_iters, "delta": delta, "c": c, "names": pert.names, "loss": loss_n,
                      "eta": eta, "rho": rho, "norm": norm})
        if loss_n > best_loss:
            best_delta, loss_b, err_b = delta, loss_n, err_n
        else:
            pert.set(best_delta)
            loss_b, err_b = (float(t) for t in _loss_err(suffix(h), y, logit_norm))
            _finite(loss_b, layer, settings, f"at w+delta_best (batch {b})")
    pert.set(None)
    return loss_b - loss0, err_b - err0, _norm(best_delta, norm), relative_norm(best_delta, c, norm)


@torch.no_grad()
def _average_batch(suffix: SuffixModel, h: torch.Tensor, y: torch.Tensor, pert: _Perturbed, loss0: float,
                   err0: float, rho: float, norm: str, n_draws: int, logit_norm: bool, gen: torch.Generator,
                   callback, b: int, layer: str, settings) -> tuple[float, float, float, float]:
    gaps, egaps, dns, rns = [], [], [], []
    noise = "uniform" if norm == "linf" else "normal"
    for k in range(n_draws):
        delta = [rho * ci * ui for ci, ui in zip(pert.c, _random_like(pert.c, noise, gen))]
        pert.set(delta)
        loss, err = (float(t) for t in _loss_err(suffix(h), y, logit_norm))
        _finite(loss, layer, settings, f"at w+delta (batch {b}, draw {k})")
        if callback is not None:
            callback({"batch": b, "iter": k, "delta": delta, "c": pert.c, "names": pert.names, "loss": loss,
                      "eta": None, "rho": rho, "norm": norm})
        gaps.append(loss - loss0)
        egaps.append(err - err0)
        dns.append(_norm(delta, norm))
        rns.append(relative_norm(delta, pert.c, norm))
    pert.set(None)
    n = len(gaps)
    return sum(gaps) / n, sum(egaps) / n, sum(dns) / n, sum(rns) / n


def worst_case_sharpness(model: nn.Module, data: Any, group: str | Sequence[str] = "all", **kwargs: Any
                         ) -> SharpnessResult:
    """:func:`sharpness` with ``kind="worst"``.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Linear(3, 2))
        >>> data = (torch.randn(8, 3), torch.randint(0, 2, (8,)))
        >>> worst_case_sharpness(net, data, rho=0.1, n_iters=2, progress=False).settings["kind"]
        'worst'
    """
    return sharpness(model, data, group, kind="worst", **kwargs)


def average_case_sharpness(model: nn.Module, data: Any, group: str | Sequence[str] = "all", **kwargs: Any
                           ) -> SharpnessResult:
    """:func:`sharpness` with ``kind="average"`` (``norm="l2"``: Gaussian, ``"linf"``: uniform noise).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Linear(3, 2))
        >>> data = (torch.randn(8, 3), torch.randint(0, 2, (8,)))
        >>> r = average_case_sharpness(net, data, rho=0.1, norm="l2", n_iters=3, progress=False)
        >>> r.settings["kind"], r.n_examples
        ('average', 8)
    """
    return sharpness(model, data, group, kind="average", **kwargs)


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
