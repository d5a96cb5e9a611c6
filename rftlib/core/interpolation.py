"""Weight-space interpolation θ(α) = (1−α)·θ_zs + α·θ_ft, in place on one model.

:class:`Interpolator` keeps the two endpoints and writes ``torch.lerp(θ_zs, θ_ft, α)`` into the
model's own tensors, so sweeping α costs no state-dict rebuilds and leaves no drift: α = 0 and α = 1
give θ_zs and θ_ft bit for bit (``lerp`` is exact at its ends), and every α is computed from the
endpoints, never from the previous α.

A *restriction* interpolates only some keys (one layer, for single-layer paths) and holds every
other key at one endpoint (``hold="ft"`` or ``"zs"``).

Example:
    >>> import torch
    >>> from torch import nn
    >>> net = nn.Linear(2, 1)
    >>> zs = {k: torch.zeros_like(v) for k, v in net.state_dict().items()}
    >>> ft = {k: torch.ones_like(v) for k, v in net.state_dict().items()}
    >>> interp = Interpolator(net, zs, ft)
    >>> interp.set_alpha(0.25)
    >>> net.weight.tolist()
    [[0.25, 0.25]]
    >>> interp.set_alpha(0.5, keys=["bias"], hold="zs")
    >>> net.weight.tolist(), net.bias.tolist()
    ([[0.0, 0.0]], [0.5])
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterable, Iterator, Mapping

import torch
from torch import nn

from rftlib.errors import ParameterError


def check_compatible(theta_zs: Mapping[str, torch.Tensor], theta_ft: Mapping[str, torch.Tensor],
                     names: tuple[str, str] = ("theta_zs", "theta_ft")) -> None:
    """Raise :class:`ParameterError` naming the first mismatch in keys, shapes or dtypes.

    Example:
        >>> import torch
        >>> check_compatible({"w": torch.zeros(2)}, {"w": torch.zeros(3)})
        Traceback (most recent call last):
        ...
        rftlib.errors.ParameterError: endpoints differ at key 'w': theta_zs has shape (2,), theta_ft has shape (3,). Both endpoints must come from the same architecture.
    """
    a, b = names
    ka, kb = list(theta_zs), list(theta_ft)
    if set(ka) != set(kb):
        only_a = [k for k in ka if k not in theta_ft]
        only_b = [k for k in kb if k not in theta_zs]
        first = (only_a or only_b)[0]
        side = a if only_a else b
        raise ParameterError(
            f"endpoints differ in keys: {first!r} is only in {side} ({len(only_a)} keys only in {a}, "
            f"{len(only_b)} only in {b}). Both endpoints must come from the same architecture "
            "(and the same class count for the head)."
        )
    for k in ka:
        x, y = theta_zs[k], theta_ft[k]
        if x.shape != y.shape:
            raise ParameterError(
                f"endpoints differ at key {k!r}: {a} has shape {tuple(x.shape)}, {b} has shape "
                f"{tuple(y.shape)}. Both endpoints must come from the same architecture."
            )
        if x.dtype != y.dtype:
            raise ParameterError(
                f"endpoints differ at key {k!r}: {a} has dtype {x.dtype}, {b} has dtype {y.dtype}. "
                "Cast both to one dtype first."
            )


def check_alpha(alpha: float, name: str = "alpha") -> float:
    """α must be a finite number in [0, 1]."""
    try:
        a = float(alpha)
    except (TypeError, ValueError):
        raise ParameterError(f"{name}={alpha!r} is not a number; use a value in [0, 1].") from None
    if not (0.0 <= a <= 1.0):
        raise ParameterError(f"{name}={alpha!r} is outside [0, 1] (0 = zero-shot, 1 = fine-tuned).")
    return a


class Interpolator:
    """Writes θ(α) into ``model`` in place.

    Args:
        model: the module whose state dict has exactly the endpoints' keys.
        theta_zs, theta_ft: the endpoints (copied once, to the model's device).
    """

    def __init__(self, model: nn.Module, theta_zs: Mapping[str, torch.Tensor],
                 theta_ft: Mapping[str, torch.Tensor]) -> None:
        check_compatible(theta_zs, theta_ft)
        own = model.state_dict(keep_vars=True)
        check_compatible({k: v.detach() for k, v in own.items()}, theta_zs, names=("the model", "theta_zs"))
        self.model = model
        self._target = {k: v.data if isinstance(v, nn.Parameter) else v for k, v in own.items()}
        self.theta_zs = {k: theta_zs[k].detach().to(self._target[k].device).clone() for k in own}
        self.theta_ft = {k: theta_ft[k].detach().to(self._target[k].device).clone() for k in own}
        self.keys = list(own)
        self.alpha: float | None = None

    def tau(self) -> dict[str, torch.Tensor]:
        """The task vector τ = θ_ft − θ_zs (floating keys only)."""
        return {k: self.theta_ft[k] - self.theta_zs[k] for k in self.keys if self.theta_zs[k].is_floating_point()}

    @torch.no_grad()
    def set_alpha(self, alpha: float, keys: Iterable[str] | None = None, hold: str = "ft") -> None:
        """Write θ(α) into the model; with ``keys``, only those move and the rest sit at ``hold``.

        Non-floating entries (e.g. batch-norm counters) take the endpoint nearer to α.
        """
        a = check_alpha(alpha)
        if hold not in ("ft", "zs"):
            raise ParameterError(f"hold={hold!r} must be 'ft' or 'zs' (the endpoint where the other layers stay).")
        moving = set(self.keys) if keys is None else set(keys)
        unknown = moving - set(self.keys)
        if unknown:
            raise ParameterError(f"keys not in the model: {sorted(unknown)[:3]} ...")
        self.move(a, [k for k in self.keys if k in moving])
        for k in self.keys:
            if k not in moving:
                self._target[k].copy_(self.theta_ft[k] if hold == "ft" else self.theta_zs[k])
        self.alpha = a

    @torch.no_grad()
    def move(self, alpha: float, keys: Iterable[str]) -> None:
        """Write θ(α) into ``keys`` only, unchecked and leaving the other keys as they are (the inner
        loop of sweeps that hold the rest; :meth:`set_alpha` is the checked entry point).
        Non-floating entries take the endpoint nearer to α."""
        for k in keys:
            dst, zs, ft = self._target[k], self.theta_zs[k], self.theta_ft[k]
            if zs.is_floating_point():
                torch.lerp(zs, ft, alpha, out=dst)
            else:
                dst.copy_(ft if alpha >= 0.5 else zs)

    def state_at(self, alpha: float) -> dict[str, torch.Tensor]:
        """θ(α) as a new state dict (for saving; sweeps should use :meth:`set_alpha`)."""
        a = check_alpha(alpha)
        return {k: torch.lerp(self.theta_zs[k], self.theta_ft[k], a) if self.theta_zs[k].is_floating_point()
                else (self.theta_ft[k] if a >= 0.5 else self.theta_zs[k]).clone() for k in self.keys}


@contextmanager
def restoring(model: nn.Module, eval_mode: bool = False) -> Iterator[nn.Module]:
    """Run a block on ``model``, then put back its weights (in place) and its train/eval mode, even
    when the block raises; ``eval_mode`` switches the model to eval mode inside the block.

    Example:
        >>> net = nn.Linear(2, 1)
        >>> before = net.weight.clone()
        >>> with restoring(net, eval_mode=True):
        ...     _ = net.weight.data.fill_(3.0)
        ...     net.training
        False
        >>> torch.equal(net.weight, before), net.training
        (True, True)
    """
    snapshot = {k: v.detach().clone() for k, v in model.state_dict().items()}
    was_training = model.training
    if eval_mode:
        model.eval()
    try:
        yield model
    finally:
        with torch.no_grad():
            own = model.state_dict(keep_vars=True)
            for k, v in snapshot.items():
                (own[k].data if isinstance(own[k], nn.Parameter) else own[k]).copy_(v)
        model.train(was_training)


def alpha_grid(n: int = 11) -> list[float]:
    """The evenly spaced α grid {0, 1/(n−1), …, 1}, rounded to 10 decimals.

    Example:
        >>> alpha_grid(5)
        [0.0, 0.25, 0.5, 0.75, 1.0]
    """
    if n < 2:
        raise ParameterError(f"alpha grid needs n >= 2 points, got {n}.")
    return [round(i / (n - 1), 10) for i in range(n)]
