"""Forward precision of evaluation passes: ``"fp32"``, ``"bf16"`` (autocast) or ``"auto"`` (measured).

``"bf16"`` runs the *forward* under ``torch.autocast(dtype=torch.bfloat16)`` on the device at hand
(CPU or CUDA); the logits are cast back to float32 and the loss, the argmax and every sum are
computed in float32 outside autocast (:func:`forward_logits`). ``"fp32"`` is plain float32 and the
default everywhere: it keeps the committed numbers bit for bit. ``"auto"`` picks bf16 only where a
short probe measures it faster on this machine (:func:`resolve_precision`, cached per process and
device), fp32 elsewhere (e.g. a CPU without bf16 instructions, where bf16 autocast is slower).

The tolerance of bf16 against fp32 is measured in ``tests/test_precision.py`` and by
``rft bench`` (:mod:`rftlib.book.bench`). Sharpness should stay fp32 (see :mod:`rftlib.models.device`): its
perturbations are smaller than bf16's rounding step.

This module is pure tensor code (rank 1), so that :mod:`rftlib.core.evaluation`,
:mod:`rftlib.core.sweep` and :mod:`rftlib.core.sharpness` can use it; :mod:`rftlib.models.device`
re-exports it.

Example:
    >>> import torch
    >>> check_precision("bf16")
    'bf16'
    >>> with precision_autocast("bf16", "cpu"):
    ...     (torch.ones(2, 2) @ torch.ones(2, 2)).dtype
    torch.bfloat16
    >>> with precision_autocast("fp32", "cpu"):
    ...     (torch.ones(2, 2) @ torch.ones(2, 2)).dtype
    torch.float32
"""

from __future__ import annotations

import contextlib
import difflib
import time
from typing import Callable

import torch
from torch import nn

from rftlib.errors import ParameterError

__all__ = ["PRECISIONS", "check_precision", "precision_autocast", "forward_logits", "resolve_precision",
           "probe_seconds", "AUTO_SPEEDUP"]

PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "auto")
#: bf16 must be at least this much faster than fp32 in the probe for ``"auto"`` to pick it.
AUTO_SPEEDUP = 1.15
_AUTOCAST_DEVICE_TYPES = ("cpu", "cuda")
_RESOLVED: dict[str, str] = {}


def check_precision(precision: str, name: str = "precision") -> str:
    """``precision`` if it is one of :data:`PRECISIONS`; a :class:`ParameterError` otherwise.

    Example:
        >>> check_precision("fp16")
        Traceback (most recent call last):
        ...
        rftlib.errors.ParameterError: precision='fp16' is not one of ('fp32', 'bf16', 'auto'); did you mean 'bf16'?
    """
    if isinstance(precision, str) and precision in PRECISIONS:
        return precision
    close = difflib.get_close_matches(str(precision), PRECISIONS, n=1)
    hint = f"; did you mean {close[0]!r}?" if close else "."
    raise ParameterError(f"{name}={precision!r} is not one of {PRECISIONS}{hint}")


def precision_autocast(precision: str, device: torch.device | str) -> contextlib.AbstractContextManager:
    """A context for *forwards* at ``precision`` (``"fp32"`` or ``"bf16"``; resolve ``"auto"`` first).

    ``"bf16"`` is ``torch.autocast(device.type, dtype=torch.bfloat16)`` on the CPU and CUDA (an error
    elsewhere); ``"fp32"`` is a no-op. Compute losses from ``logits.float()`` after the block and run
    backward passes outside it.

    Example:
        >>> precision_autocast("auto", "cpu")
        Traceback (most recent call last):
        ...
        rftlib.errors.ParameterError: precision='auto' must be resolved first (rftlib.core.precision.resolve_precision); precision_autocast takes 'fp32' or 'bf16'.
    """
    p = check_precision(precision)
    if p == "auto":
        raise ParameterError("precision='auto' must be resolved first (rftlib.core.precision.resolve_precision); "
                             "precision_autocast takes 'fp32' or 'bf16'.")
    if p == "fp32":
        return contextlib.nullcontext()
    dev = torch.device(device)
    if dev.type not in _AUTOCAST_DEVICE_TYPES:
        raise ParameterError(f"precision='bf16' on device {str(dev)!r}: bf16 autocast is supported here on "
                             f"{list(_AUTOCAST_DEVICE_TYPES)} only; use precision='fp32'.")
    return torch.autocast(device_type=dev.type, dtype=torch.bfloat16)


def forward_logits(model: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, precision: str,
                   device: torch.device | str) -> torch.Tensor:
    """``model(x)`` with the forward at ``precision``, returned as float32 (for fp32 losses).

    Example:
        >>> net = nn.Linear(3, 2)
        >>> forward_logits(net, torch.ones(4, 3), "bf16", "cpu").dtype
        torch.float32
    """
    with precision_autocast(precision, device):
        out = model(x)
    return out.float()


def _default_probe_model(device: torch.device) -> tuple[nn.Module, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    width = 256
    net = nn.Sequential(*[m for _ in range(4) for m in (nn.Linear(width, width), nn.GELU())]).to(device).eval()
    x = torch.randn(512, width, generator=g).to(device)
    return net, x


def probe_seconds(model: nn.Module, x: torch.Tensor, precision: str, repeats: int = 3) -> float:
    """Best-of-``repeats`` seconds of one no-grad forward of ``model`` on ``x`` at ``precision``.

    Example:
        >>> probe_seconds(nn.Linear(4, 4), torch.ones(8, 4), "fp32", repeats=1) >= 0.0
        True
    """
    if not isinstance(repeats, int) or isinstance(repeats, bool) or repeats < 1:
        raise ParameterError(f"repeats={repeats!r} must be a positive integer.")
    dev = x.device
    best = float("inf")
    with torch.no_grad():
        forward_logits(model, x, precision, dev)  # warm-up: kernels, allocator
        for _ in range(repeats):
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            t = time.perf_counter()
            forward_logits(model, x, precision, dev)
            if dev.type == "cuda":
                torch.cuda.synchronize(dev)
            best = min(best, time.perf_counter() - t)
    return best


def resolve_precision(precision: str, device: torch.device | str,
                      probe: Callable[[str], float] | None = None) -> str:
    """``"fp32"`` or ``"bf16"``: ``precision`` itself, or for ``"auto"`` the measured faster one.

    ``"auto"`` times a small fixed MLP forward (or ``probe(precision) -> seconds``) in both
    precisions and picks bf16 when it is at least :data:`AUTO_SPEEDUP` times faster; fp32 on devices
    without bf16 autocast. The default probe's answer is cached per process and device.

    Example:
        >>> resolve_precision("fp32", "cpu")
        'fp32'
        >>> resolve_precision("auto", "cpu", probe=lambda p: {"fp32": 2.0, "bf16": 1.0}[p])
        'bf16'
        >>> resolve_precision("auto", "cpu", probe=lambda p: {"fp32": 1.0, "bf16": 0.95}[p])
        'fp32'
    """
    p = check_precision(precision)
    if p != "auto":
        return p
    dev = torch.device(device)
    if dev.type not in _AUTOCAST_DEVICE_TYPES:
        return "fp32"
    if probe is not None:
        return "bf16" if probe("fp32") >= AUTO_SPEEDUP * probe("bf16") else "fp32"
    key = f"{dev}:{torch.get_num_threads()}"
    if key not in _RESOLVED:
        net, x = _default_probe_model(dev)
        fp32, bf16 = probe_seconds(net, x, "fp32"), probe_seconds(net, x, "bf16")
        _RESOLVED[key] = "bf16" if fp32 >= AUTO_SPEEDUP * bf16 else "fp32"
    return _RESOLVED[key]
