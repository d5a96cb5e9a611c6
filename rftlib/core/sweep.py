"""WiSE-FT sweeps: evaluate θ(α) on every split along the α grid.

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

from typing import Mapping, Sequence

import torch
from torch import nn

from rftlib.errors import NumericalError
from rftlib.core.evaluation import Split, evaluate
from rftlib.core.interpolation import Interpolator, check_alpha
from rftlib.core.precision import resolve_precision
from rftlib.progress import bar


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
    rows = []
    for a in bar(alphas, desc=f"WiSE-FT {world}/{run}", disable=not progress, unit="alpha"):
        interp.set_alpha(a)
        try:
            evaluated = evaluate(model, splits, batch_size=batch_size, progress=False, precision=precision)
        except NumericalError as e:
            raise NumericalError(f"WiSE-FT sweep of {world}/{run} at alpha={a}: {e}") from e
        for r in evaluated:
            rows.append({"world": world, "run": run, "alpha": a, **r})
    interp.set_alpha(1.0)
    return rows
