"""The α-sweep: evaluate θ(α) on every split along the α grid (:func:`alpha_sweep`), and the WiSE-FT
sweep of one run built on it (:func:`interpolation_sweep`). The sparsity sweep and the naive route of
the single-layer paths run the same loop; the prefix-cached route (:mod:`rftlib.core.prefix`) gives
the same numbers by another loop.

Example:
    >>> import torch
    >>> from torch import nn
    >>> net = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    >>> zs = {k: v.clone() for k, v in net.state_dict().items()}
    >>> ft = {k: v + 0.1 for k, v in zs.items()}
    >>> splits = {"id": (torch.randn(8, 1, 2, 2), torch.randint(0, 2, (8,)))}
    >>> rows = interpolation_sweep(net, zs, ft, splits, [0.0, 1.0], world="w", run="r", progress=False)
    >>> [(r["alpha"], r["split"]) for r in rows]
    [(0.0, 'id'), (1.0, 'id')]
"""

from __future__ import annotations

from typing import Iterable, Iterator, Mapping, Sequence

import torch
from torch import nn

from rftlib.errors import NumericalError
from rftlib.core.evaluation import Split, evaluate
from rftlib.core.interpolation import Interpolator, check_alpha
from rftlib.core.precision import resolve_precision
from rftlib.progress import bar


def alpha_sweep(model: nn.Module, interp: Interpolator, splits: Mapping[str, Split], alphas: Iterable[float], *,
                keys: Sequence[str] | None = None, hold: str = "ft", batch_size: int = 1000,
                device: torch.device | str | None = None, precision: str = "fp32",
                what: str = "sweep") -> Iterator[tuple[float, dict]]:
    """``(α, row)`` for every α, then every split: θ(α) written by ``interp`` (on ``keys`` only, the
    others held at ``hold``; see :meth:`Interpolator.set_alpha`), ``row`` from
    :func:`~rftlib.core.evaluation.evaluate` (``split, accuracy, loss, n``). The model is left at the last α.

    Raises:
        NumericalError: a loss is NaN or infinite; the message starts with ``what`` and names α and the split.

    Example:
        >>> net = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
        >>> zs = {k: v.clone() for k, v in net.state_dict().items()}
        >>> ft = {k: v + 0.1 for k, v in zs.items()}
        >>> splits = {"id": (torch.randn(8, 1, 2, 2), torch.randint(0, 2, (8,)))}
        >>> rows = list(alpha_sweep(net, Interpolator(net, zs, ft), splits, [0.0, 0.5], keys=["1.bias"]))
        >>> [(a, r["split"], r["n"]) for a, r in rows]
        [(0.0, 'id', 8), (0.5, 'id', 8)]
    """
    for a in alphas:
        interp.set_alpha(a, keys=keys, hold=hold)
        try:
            evaluated = evaluate(model, splits, batch_size, device, progress=False, precision=precision)
        except NumericalError as e:  # its message names the split
            raise NumericalError(f"{what} at alpha={a}: {e}") from e
        for r in evaluated:
            yield a, r


def interpolation_sweep(model: nn.Module, theta_zs: Mapping[str, torch.Tensor], theta_ft: Mapping[str, torch.Tensor],
                        splits: Mapping[str, Split], alphas: Sequence[float], world: str, run: str,
                        batch_size: int = 1000, progress: bool = True, precision: str = "fp32") -> list[dict]:
    """Tidy rows ``world, run, alpha, split, accuracy, loss, n`` for every α and split.

    The model is left at θ_ft on return. ``precision``: the forwards' precision, ``"fp32"``
    (default), ``"bf16"`` or ``"auto"`` (:mod:`rftlib.core.precision`; losses always in float32).

    Raises:
        NumericalError: a loss is NaN or infinite; the message names the world, run, α and split.
    """
    alphas = [check_alpha(a) for a in alphas]
    precision = resolve_precision(precision, next(model.parameters()).device)
    interp = Interpolator(model, theta_zs, theta_ft)
    grid = bar(alphas, desc=f"WiSE-FT {world}/{run}", disable=not progress, unit="alpha")
    rows = [{"world": world, "run": run, "alpha": a, **r}
            for a, r in alpha_sweep(model, interp, splits, grid, batch_size=batch_size, precision=precision,
                                    what=f"WiSE-FT sweep of {world}/{run}")]
    interp.set_alpha(1.0)
    return rows
