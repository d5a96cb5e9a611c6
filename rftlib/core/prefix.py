"""Prefix caching: run a classifier's forward pass from stage ℓ on, reusing the input of stage ℓ.

When only the parameters of stage ℓ (or of stages ℓ, ℓ+1, …) move — a layer-wise sharpness ascent,
a single-layer interpolation path — the stages before ℓ compute the same thing at every step. This
module computes the input of stage ℓ once per batch, without gradients, and then runs only the
*suffix* (stages ℓ..) as often as needed. The result is the same function as the full forward pass,
because :meth:`rftlib.models.factory.ImageClassifier.forward` *is* the composition of its stages.

Models without ``stages()`` work too: an ``nn.Sequential`` is split at its children, any other module
is a single stage (nothing to cache; the suffix is the whole model).

Example:
    >>> import torch
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))
    >>> x = torch.randn(5, 4)
    >>> suffix = SuffixModel(net, "2")          # only the last Linear runs per call
    >>> h = suffix.prefix(x)                    # computed once, without gradients
    >>> torch.equal(suffix(h), net(x))
    True
    >>> stage_of_keys(net, ["2.weight"]), stage_of_keys(net, ["0.bias", "2.weight"])
    (2, 0)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from rftlib.errors import NumericalError, ParameterError
from rftlib.progress import bar

__all__ = [
    "model_stages",
    "stage_index",
    "stage_of_keys",
    "cached_inputs",
    "run_suffix",
    "SuffixModel",
    "layer_alpha_sweep",
]


@dataclass
class Stage:
    """One named step of the classifier's forward pass; ``prefixes`` own its state-dict keys."""

    name: str
    fn: Callable[[torch.Tensor], torch.Tensor]
    prefixes: tuple[str, ...] = field(default_factory=tuple)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


def model_stages(model: nn.Module) -> list[Stage]:
    """The forward pass of ``model`` as a list of :class:`Stage`.

    ``model.stages()`` when the model has it (:class:`~rftlib.models.factory.ImageClassifier`); the children
    of an ``nn.Sequential``; otherwise one stage ``"model"`` that owns every key.

    Example:
        >>> from torch import nn
        >>> [s.name for s in model_stages(nn.Sequential(nn.Linear(2, 2), nn.ReLU()))]
        ['0', '1']
        >>> [(s.name, s.prefixes) for s in model_stages(nn.Linear(2, 2))]
        [('model', ('',))]
    """
    if hasattr(model, "stages"):
        return list(model.stages())
    if isinstance(model, nn.Sequential):
        return [Stage(name, child, (f"{name}.",)) for name, child in model.named_children()]
    return [Stage("model", model, ("",))]


def _owns(stage: Stage, key: str) -> bool:
    return any(key == p or key.startswith(p) for p in stage.prefixes)


def stage_index(stages: Sequence[Stage], stage: str | int) -> int:
    """Index of ``stage`` (a name or an index) in ``stages``; a clear error otherwise.

    Example:
        >>> from torch import nn
        >>> stage_index(model_stages(nn.Sequential(nn.Linear(2, 2), nn.ReLU())), "1")
        1
    """
    names = [s.name for s in stages]
    if isinstance(stage, bool) or not isinstance(stage, (int, str)):
        raise ParameterError(f"stage={stage!r} must be a stage name or an index; this model's stages are {names}.")
    if isinstance(stage, int):
        if not 0 <= stage < len(stages):
            raise ParameterError(f"stage={stage} is out of range; this model has {len(stages)} stages {names}.")
        return stage
    if stage not in names:
        raise ParameterError(f"stage={stage!r} is unknown; this model's stages are {names}.")
    return names.index(stage)


def stage_of_keys(model: nn.Module | Sequence[Stage], keys: Iterable[str]) -> int:
    """Index of the earliest stage that owns any of ``keys``: the first stage the suffix must run.

    Every stage before it computes the same function whatever those keys hold, so its output can be
    cached. Keys no stage owns give 0 (no caching, always safe).

    Example:
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Linear(2, 2), nn.ReLU(), nn.Linear(2, 1))
        >>> stage_of_keys(net, ["2.bias"])
        2
    """
    stages = model_stages(model) if isinstance(model, nn.Module) else list(model)
    keys = list(keys)
    if not keys:
        raise ParameterError("keys is empty: name at least one state-dict key.")
    first = len(stages)
    for k in keys:
        owners = [i for i, s in enumerate(stages) if _owns(s, k)]
        if not owners:
            return 0
        first = min(first, owners[0])
    return first


@torch.no_grad()
def cached_inputs(model: nn.Module, x: torch.Tensor, stage: str | int,
                  stages: Sequence[Stage] | None = None) -> torch.Tensor:
    """The input of ``stage`` for the batch ``x``: stages before it run once, without gradients.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Linear(2, 3), nn.ReLU())
        >>> x = torch.randn(4, 2)
        >>> torch.equal(cached_inputs(net, x, "1"), net[0](x))
        True
    """
    stages = model_stages(model) if stages is None else list(stages)
    i = stage_index(stages, stage)
    for s in stages[:i]:
        x = s(x)
    return x


def run_suffix(model: nn.Module, h: torch.Tensor, stage: str | int,
               stages: Sequence[Stage] | None = None) -> torch.Tensor:
    """Run stages ``stage``.. on ``h`` (the output of :func:`cached_inputs`), with autograd as usual.

    Example:
        >>> import torch
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 1))
        >>> x = torch.randn(4, 2)
        >>> torch.equal(run_suffix(net, cached_inputs(net, x, 2), 2), net(x))
        True
    """
    stages = model_stages(model) if stages is None else list(stages)
    i = stage_index(stages, stage)
    for s in stages[i:]:
        h = s(h)
    return h


class SuffixModel:
    """The stages ``start``.. of ``model``, with :meth:`prefix` to compute their input.

    ``suffix(suffix.prefix(x))`` equals ``model(x)``; the prefix runs without gradients, so backward
    passes through the suffix only. The stage list is built once; the suffix sees every in-place
    change of the model's parameters (perturbations, interpolation).

    Args:
        model: an :class:`~rftlib.models.factory.ImageClassifier`, an ``nn.Sequential``, or any module.
        start: name or index of the first stage to run per call (``0``: the whole model).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> net = nn.Sequential(nn.Linear(2, 3), nn.Tanh(), nn.Linear(3, 1))
        >>> s = SuffixModel(net, 2)
        >>> s.start_name, [st.name for st in s.suffix_stages]
        ('2', ['2'])
    """

    def __init__(self, model: nn.Module, start: str | int = 0) -> None:
        self.model = model
        self.stages = model_stages(model)
        self.start = stage_index(self.stages, start)

    @property
    def start_name(self) -> str:
        return self.stages[self.start].name

    @property
    def suffix_stages(self) -> list[Stage]:
        return self.stages[self.start:]

    @torch.no_grad()
    def prefix(self, x: torch.Tensor) -> torch.Tensor:
        """Input of the first suffix stage (``x`` itself when ``start == 0``)."""
        for s in self.stages[:self.start]:
            x = s(x)
        return x

    def __call__(self, h: torch.Tensor) -> torch.Tensor:
        for s in self.stages[self.start:]:
            h = s(h)
        return h

    def full(self, x: torch.Tensor) -> torch.Tensor:
        """``model(x)`` through the cached route (prefix without gradients)."""
        return self(self.prefix(x))


def _as_batches(data, batch_size: int, device: torch.device):
    from rftlib.core.evaluation import iterate_batches

    if isinstance(data, tuple) and len(data) == 2 and isinstance(data[0], torch.Tensor):
        yield from iterate_batches(data, batch_size, device)
    elif isinstance(data, torch.utils.data.Dataset):
        yield from iterate_batches(data, batch_size, device)
    else:
        for xb, yb in data:
            yield xb.to(device), torch.as_tensor(yb).to(device)


def _scores(logits: torch.Tensor, y: torch.Tensor, subset: Any) -> tuple[float, int]:
    """Summed cross-entropy and number correct of one batch (on the class subset, if any)."""
    if subset is not None:
        logits = subset.project(logits)
    return F.cross_entropy(logits, y, reduction="sum").item(), (logits.argmax(dim=1) == y).sum().item()


@torch.no_grad()
def layer_alpha_sweep(model: nn.Module, interpolator, data, keys: Sequence[str], alphas: Sequence[float],
                      hold: str = "ft", batch_size: int = 1000, progress: bool = True,
                      precision: str = "fp32") -> list[dict]:
    """Loss and accuracy of θ(α) with only ``keys`` interpolated, for every α, sharing the prefix.

    With one layer moving and every other layer held at one endpoint, the stages before that layer
    compute the same thing for every α: they run once per batch, then only the suffix runs per α.
    The numbers equal ``interpolator.set_alpha(alpha, keys, hold)`` followed by
    :func:`rftlib.core.evaluation.evaluate_split` (a split with an ``eval_class_subset`` is scored on
    those classes, as there). The model is left at the last α.

    Args:
        interpolator: an :class:`rftlib.core.interpolation.Interpolator` of ``model``.
        data: ``(x, y)`` tensors, a ``Dataset``, or an iterable of ``(x, y)`` batches.
        keys, hold: the state-dict keys that move (one layer's); the endpoint of the others, ``"ft"`` or ``"zs"``.
        precision: of the forwards, ``"fp32"``, ``"bf16"`` or ``"auto"`` (:mod:`rftlib.core.precision`);
            loss and accuracy are computed in float32.

    Returns:
        One row ``{"alpha", "loss", "accuracy", "n"}`` per α, in the order given.

    Example:
        >>> from rftlib.core.interpolation import Interpolator
        >>> net = nn.Sequential(nn.Linear(2, 3), nn.ReLU(), nn.Linear(3, 2))
        >>> zs = {k: v.clone() for k, v in net.state_dict().items()}
        >>> ft = {k: v + 0.5 for k, v in zs.items()}
        >>> data = (torch.randn(6, 2), torch.tensor([0, 1, 0, 1, 1, 0]))
        >>> rows = layer_alpha_sweep(net, Interpolator(net, zs, ft), data, ["2.weight"], [0.0, 1.0],
        ...                          progress=False)
        >>> [r["alpha"] for r in rows], rows[0]["n"]
        ([0.0, 1.0], 6)
    """
    from rftlib.core.evaluation import class_subset_projection
    from rftlib.core.precision import forward_logits, precision_autocast, resolve_precision

    alphas, keys = _check_sweep(model, alphas, keys)
    device = next(model.parameters()).device
    precision = resolve_precision(precision, device)
    interpolator.set_alpha(alphas[0], keys=keys, hold=hold)  # everything else at `hold`
    suffix = SuffixModel(model, stage_of_keys(model, keys))
    subset = class_subset_projection(model, data)
    loss_sum, correct, n = [0.0] * len(alphas), [0] * len(alphas), 0
    was_training = model.training
    model.eval()
    try:
        for xb, yb in bar(_as_batches(data, batch_size, device), desc="alpha sweep", disable=not progress,
                          unit="batch"):
            with precision_autocast(precision, device):
                h = suffix.prefix(xb)
            if subset is not None:
                yb = subset.map_labels(yb)
            for j, a in enumerate(alphas):
                interpolator.move(a, keys)
                dl, dc = _scores(forward_logits(suffix, h, precision, device), yb, subset)
                loss_sum[j], correct[j] = loss_sum[j] + dl, correct[j] + dc
            n += len(yb)
    finally:
        model.train(was_training)
        interpolator.alpha = alphas[-1]
    return _sweep_rows(alphas, loss_sum, correct, n, keys)


def _check_sweep(model: nn.Module, alphas: Sequence[float], keys: Sequence[str]) -> tuple[list[float], list[str]]:
    """The checked α grid and moving keys of :func:`layer_alpha_sweep`."""
    from rftlib.core.interpolation import check_alpha

    alphas = [check_alpha(a) for a in alphas]
    if not alphas:
        raise ParameterError("alphas is empty: give at least one interpolation coefficient in [0, 1].")
    keys = list(keys)
    unknown = [k for k in keys if k not in model.state_dict(keep_vars=True)]
    if unknown:
        raise ParameterError(f"keys not in the model: {unknown[:3]}; use state-dict keys "
                             "(see rftlib.core.layers.layer_groups).")
    return alphas, keys


def _sweep_rows(alphas: Sequence[float], loss_sum: Sequence[float], correct: Sequence[int], n: int,
                keys: Sequence[str]) -> list[dict]:
    """One ``{"alpha", "loss", "accuracy", "n"}`` row per α; an empty split or a non-finite loss raises."""
    if n == 0:
        raise ParameterError("cannot evaluate on an empty split.")
    rows = []
    for j, a in enumerate(alphas):
        loss = loss_sum[j] / n
        if loss != loss or loss in (float("inf"), float("-inf")):
            raise NumericalError(f"loss at alpha={a} is not finite for keys {list(keys)[:2]}...: the weights or "
                                 "inputs hold NaN/inf.")
        rows.append({"alpha": a, "loss": loss, "accuracy": correct[j] / n, "n": n})
    return rows
