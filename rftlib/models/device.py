"""Where and in which precision the study runs: device choice, bf16 autocast, torch.compile, batch size.

Precision policy (``algorithms.md``, speed idea 6):

- **forwards** of fine-tuning and evaluation run in bfloat16 autocast on CUDA, in float32 everywhere
  else (CPU, MPS: :func:`autocast` is then a no-op);
- **the loss is always computed in float32**: callers cast the logits before the loss,
  ``F.cross_entropy(logits.float(), y)`` (:func:`autocast_forward` does that cast for a whole
  module, so code that only calls ``model(x)``, such as :func:`rftlib.models.finetune.finetune`, gets fp32
  logits without change);
- **backward passes run outside autocast** (PyTorch's advice); their ops use the dtypes autocast
  chose in the forward;
- **evaluation sweeps take a measured precision** (``precision="fp32" | "bf16" | "auto"``, default
  ``"fp32"``): :mod:`rftlib.core.precision` (re-exported here: :func:`precision_autocast`,
  :func:`resolve_precision`) runs the forward in bf16 autocast on the CPU or CUDA when asked, or for
  ``"auto"`` when a short probe measures it faster on this machine, and always computes loss and
  accuracy in float32;
- **sharpness runs in float32, without autocast and without TF32**: an ℓ∞ adaptive budget of
  ρ = 5e-4 moves each weight by at most 0.05 % of its value, less than bfloat16's rounding step
  (2⁻⁸ ≈ 0.4 %) and about one TF32 step (2⁻¹¹ ≈ 0.05 %), so in reduced precision the perturbation is
  largely rounded away. :func:`strict_fp32` switches TF32 off for a block of code.

``torch.compile`` (:func:`maybe_compile`) is used on CUDA only; it compiles the module in place, so
state-dict keys do not change (no ``_orig_mod.`` prefix).

Example:
    >>> import torch
    >>> pick_device("cpu")
    device(type='cpu')
    >>> with autocast(torch.device("cpu")):
    ...     (torch.ones(2, 2) @ torch.ones(2, 2)).dtype
    torch.float32
    >>> batch_size_candidates(256, 32)
    [256, 128, 64, 32]
"""

from __future__ import annotations

import contextlib
import os
from typing import Any, Callable, Iterator, Sequence

import torch
from torch import nn

from rftlib.core.precision import PRECISIONS, check_precision, precision_autocast, resolve_precision
from rftlib.errors import ParameterError

__all__ = [
    "pick_device",
    "autocast",
    "autocast_forward",
    "strict_fp32",
    "maybe_compile",
    "is_oom",
    "batch_size_candidates",
    "memory_aware_batch_size",
    "device_summary",
    "synchronize",
    "PRECISIONS",
    "check_precision",
    "precision_autocast",
    "resolve_precision",
]

REQUESTS = ("auto", "cpu", "cuda", "mps")
# device types on which autocast is switched on (a module constant so tests can exercise the
# mechanics on the CPU; do not change it in library code)
_AUTOCAST_TYPES: tuple[str, ...] = ("cuda",)
AUTOCAST_DTYPE = torch.bfloat16


def _mps_available() -> bool:
    mps = getattr(torch.backends, "mps", None)
    return bool(mps is not None and mps.is_available())


def pick_device(requested: str | torch.device = "auto") -> torch.device:
    """The device to run on.

    Args:
        requested: ``"auto"`` (CUDA when present, else Apple's MPS, else the CPU), ``"cpu"``,
            ``"cuda"``, ``"cuda:<index>"``, ``"mps"``, or a ``torch.device``.

    Raises:
        ParameterError: an unknown name, or an accelerator that this machine lacks (the message
            says what was checked).

    Example:
        >>> pick_device(torch.device("cpu")).type
        'cpu'
        >>> pick_device("tpu")
        Traceback (most recent call last):
        ...
        rftlib.errors.ParameterError: device='tpu' is not one of ['auto', 'cpu', 'cuda', 'mps'] (or 'cuda:<index>').
    """
    if isinstance(requested, torch.device):
        requested = str(requested)
    if not isinstance(requested, str):
        raise ParameterError(f"device={requested!r} must be a string such as 'auto', 'cpu', 'cuda' or 'cuda:0'.")
    req = requested.strip().lower()
    kind, _, index = req.partition(":")
    if kind not in REQUESTS or (index and (kind != "cuda" or not index.isdigit())):
        raise ParameterError(f"device={requested!r} is not one of {list(REQUESTS)} (or 'cuda:<index>').")
    if kind == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", torch.cuda.current_device())
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")
    if kind == "cpu":
        return torch.device("cpu")
    if kind == "mps":
        if not _mps_available():
            raise ParameterError("device='mps' was requested but torch.backends.mps.is_available() is False "
                                 "(MPS needs Apple silicon and a macOS build of PyTorch); use device='auto' or 'cpu'.")
        return torch.device("mps")
    if not torch.cuda.is_available():
        built = torch.version.cuda or "none (a CPU-only build)"
        visible = os.environ.get("CUDA_VISIBLE_DEVICES")
        raise ParameterError(
            f"device={requested!r} was requested but torch.cuda.is_available() is False (PyTorch's CUDA: "
            f"{built}; CUDA_VISIBLE_DEVICES={visible!r}). Check the driver with nvidia-smi, or use device='auto' or 'cpu'."
        )
    n = torch.cuda.device_count()
    i = int(index) if index else torch.cuda.current_device()
    if i >= n:
        raise ParameterError(f"device={requested!r}: this machine has {n} CUDA device(s), indices 0..{n - 1}.")
    return torch.device("cuda", i)


def _as_device(device: str | torch.device | nn.Module) -> torch.device:
    if isinstance(device, nn.Module):
        p = next(device.parameters(), None)
        return p.device if p is not None else torch.device("cpu")
    return torch.device(device)


def autocast(device: str | torch.device, enabled: bool = True) -> contextlib.AbstractContextManager:
    """bfloat16 autocast for forwards on CUDA; a no-op on every other device or when disabled.

    Wrap forwards only; compute the loss from ``logits.float()`` and call ``backward()`` after the
    block::

        with autocast(device):
            logits = model(x)
        loss = F.cross_entropy(logits.float(), y)
        loss.backward()

    Example:
        >>> import torch
        >>> with autocast("cpu"):
        ...     torch.is_autocast_enabled("cpu")
        False
    """
    dev = torch.device(device)
    if enabled and dev.type in _AUTOCAST_TYPES:
        return torch.autocast(device_type=dev.type, dtype=AUTOCAST_DTYPE)
    return contextlib.nullcontext()


class _AutocastHooks:
    """Forward pre-hook + always-called forward hook that run one module's forward under autocast
    and hand back float32 outputs. A plain object (not a closure) so ``copy.deepcopy`` of the module
    copies it with its own state."""

    def __init__(self, device_type: str) -> None:
        self.device_type = device_type
        self.stack: list[contextlib.AbstractContextManager] = []

    def pre(self, module: nn.Module, args: Any) -> None:
        ctx = torch.autocast(device_type=self.device_type, dtype=AUTOCAST_DTYPE)
        ctx.__enter__()
        self.stack.append(ctx)

    def post(self, module: nn.Module, args: Any, output: Any) -> Any:
        if self.stack:
            self.stack.pop().__exit__(None, None, None)
        return _to_float(output)


def _to_float(out: Any) -> Any:
    if isinstance(out, torch.Tensor):
        return out.float() if out.is_floating_point() else out
    if isinstance(out, (tuple, list)):
        return type(out)(_to_float(o) for o in out)
    if isinstance(out, dict):
        return {k: _to_float(v) for k, v in out.items()}
    return out


def autocast_forward(module: nn.Module, device: str | torch.device | None = None,
                     enabled: bool = True) -> Callable[[], None]:
    """Make every call of ``module`` run under :func:`autocast` and return float32 outputs.

    For code that only calls ``model(x)`` and computes the loss itself (``rftlib.models.finetune``): the
    forward (also through ``DistributedDataParallel``) runs in bfloat16 on CUDA, the logits come back
    as float32, so the loss is computed in float32 and the backward runs outside autocast. Uses
    forward hooks, so the state dict and ``copy.deepcopy`` are unaffected. A no-op (nothing
    registered) on devices without autocast or when disabled.

    Args:
        module: the model.
        device: where it runs (default: the device of its first parameter).
        enabled: ``False`` registers nothing.

    Returns:
        A function that removes the hooks.

    Example:
        >>> from torch import nn
        >>> net = nn.Linear(2, 2)
        >>> undo = autocast_forward(net)       # on the CPU: nothing to do
        >>> net(torch.ones(1, 2)).dtype
        torch.float32
        >>> undo()
    """
    dev = _as_device(module if device is None else device)
    if not enabled or dev.type not in _AUTOCAST_TYPES:
        return lambda: None
    hooks = _AutocastHooks(dev.type)
    h1 = module.register_forward_pre_hook(hooks.pre)
    h2 = module.register_forward_hook(hooks.post, always_call=True)

    def remove() -> None:
        h1.remove()
        h2.remove()

    return remove


@contextlib.contextmanager
def strict_fp32() -> Iterator[None]:
    """Disable TF32 in CUDA matmuls and cuDNN convolutions inside the block (restored afterwards).

    For sharpness estimates, whose perturbations are smaller than TF32's rounding step (see the
    module docstring). Harmless on the CPU.

    Example:
        >>> with strict_fp32():
        ...     torch.backends.cuda.matmul.allow_tf32
        False
    """
    m, c = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = m, c


def maybe_compile(module: nn.Module, enabled: bool = True, device: str | torch.device | None = None,
                  **kwargs: Any) -> nn.Module:
    """``torch.compile`` the module in place on CUDA; return it unchanged on the CPU/MPS or when disabled.

    In place (``nn.Module.compile``) keeps the state-dict keys and the module's attributes
    (``model.visual``, ``model.stages()``), which ``torch.compile(module)``'s wrapper would hide.
    The first calls are slow (compilation); only ``forward`` is compiled, so code that runs the
    model stage by stage (prefix caching) stays eager.

    Args:
        module: the model.
        enabled: ``False`` returns it untouched.
        device: where it runs (default: the device of its first parameter).
        **kwargs: passed to ``torch.compile`` (e.g. ``mode="max-autotune"``).

    Example:
        >>> from torch import nn
        >>> net = nn.Linear(2, 2)
        >>> maybe_compile(net) is net
        True
    """
    dev = _as_device(module if device is None else device)
    if enabled and dev.type == "cuda":
        module.compile(**kwargs)
    return module


def is_oom(err: BaseException) -> bool:
    """Whether ``err`` is an out-of-memory error of an accelerator (CUDA's ``OutOfMemoryError``, or
    the ``RuntimeError`` MPS raises).

    Example:
        >>> is_oom(torch.cuda.OutOfMemoryError("CUDA out of memory")), is_oom(ValueError("x"))
        (True, False)
    """
    if isinstance(err, torch.cuda.OutOfMemoryError):
        return True
    return isinstance(err, RuntimeError) and "out of memory" in str(err).lower()


def batch_size_candidates(start: int, min_bs: int = 1) -> list[int]:
    """The batch sizes :func:`memory_aware_batch_size` tries: ``start`` halved down to ``min_bs``.

    Example:
        >>> batch_size_candidates(100, 10)
        [100, 50, 25, 12]
    """
    for name, v in (("start", start), ("min_bs", min_bs)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ParameterError(f"{name}={v!r} must be a positive integer.")
    if min_bs > start:
        raise ParameterError(f"min_bs={min_bs} must be <= start={start}.")
    out, bs = [], start
    while bs >= min_bs:
        out.append(bs)
        bs //= 2
    return out


def _free_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps" and hasattr(torch, "mps"):
        torch.mps.empty_cache()


def _default_trial(model: nn.Module, shape: tuple[int, ...], dev: torch.device, backward: bool,
                   use_autocast: bool) -> Callable[[int], None]:
    """One forward (and, with ``backward``, backward) of random inputs of shape ``(bs, *shape)``."""

    def trial(bs: int) -> None:
        x = torch.rand((bs, *shape), device=dev)
        try:
            if backward:
                with autocast(dev, use_autocast):
                    out = model(x)
                out.float().sum().backward()
            else:
                with torch.no_grad(), autocast(dev, use_autocast):
                    model(x)
        finally:
            model.zero_grad(set_to_none=True)

    return trial


def memory_aware_batch_size(
    model: nn.Module,
    input_shape: Sequence[int],
    device: str | torch.device | None = None,
    start: int = 256,
    min_bs: int = 1,
    trial: Callable[[int], Any] | None = None,
    backward: bool = True,
    use_autocast: bool = True,
) -> int:
    """The largest batch size ``start, start/2, …`` (down to ``min_bs``) that fits in memory.

    Each candidate runs one trial step; an out-of-memory error (:func:`is_oom`) halves the batch
    size, any other error propagates. The default trial is a forward (under :func:`autocast`) and,
    with ``backward``, a backward of random inputs of shape ``(bs, *input_shape)``; gradients are
    cleared afterwards. Pass ``trial`` to test your own step (or, in tests, to inject an OOM).

    Args:
        input_shape: one example's shape, e.g. ``(3, 224, 224)``; ``device``: default the model's.
        start, min_bs: the first and the smallest batch size tried.
        trial: ``trial(bs)`` runs one step at batch size ``bs`` (replaces the default trial).
        backward, use_autocast: the default trial also runs a backward pass (fine-tuning,
            sharpness); its forward runs under :func:`autocast`.

    Raises:
        ParameterError: bad arguments.
        torch.cuda.OutOfMemoryError: not even ``min_bs`` fits.

    Example:
        >>> from torch import nn
        >>> def fake(bs):  # pretend that more than 48 examples do not fit
        ...     if bs > 48:
        ...         raise torch.cuda.OutOfMemoryError(f"{bs} too large")
        >>> memory_aware_batch_size(nn.Linear(2, 2), (2,), "cpu", start=256, trial=fake)
        32
    """
    candidates = batch_size_candidates(start, min_bs)
    shape = tuple(int(s) for s in input_shape)
    if not shape or any(s < 1 for s in shape):
        raise ParameterError(f"input_shape={tuple(input_shape)!r} must be one example's shape, e.g. (3, 224, 224).")
    dev = _as_device(model if device is None else device)
    run = trial or _default_trial(model, shape, dev, backward, use_autocast)
    last: BaseException | None = None
    for bs in candidates:
        try:
            run(bs)
            return bs
        except Exception as e:  # noqa: BLE001 - only OOM is handled; the rest is re-raised
            if not is_oom(e):
                raise
            last = e
            model.zero_grad(set_to_none=True)
            _free_memory(dev)
    raise torch.cuda.OutOfMemoryError(
        f"no batch size in {candidates} fits in the memory of {dev} (min_bs={min_bs}); last error: {last}"
    )


def synchronize(device: str | torch.device) -> None:
    """Wait for queued work on ``device`` (for timing); a no-op on the CPU."""
    dev = torch.device(device)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
    elif dev.type == "mps" and hasattr(torch, "mps"):
        torch.mps.synchronize()


def _cpu_name() -> str | None:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return None


def device_summary(device: str | torch.device) -> dict[str, Any]:
    """Name, memory and software versions of ``device``, for manifests and measurement files.

    Example:
        >>> s = device_summary("cpu")
        >>> s["type"], "torch" in s
        ('cpu', True)
    """
    import platform

    dev = torch.device(device)
    out: dict[str, Any] = {"type": dev.type, "torch": torch.__version__, "cuda": torch.version.cuda,
                           "threads": torch.get_num_threads()}
    if dev.type == "cuda":
        props = torch.cuda.get_device_properties(dev)
        out.update(name=torch.cuda.get_device_name(dev), memory_gib=round(props.total_memory / 2**30, 1),
                   capability=f"{props.major}.{props.minor}", bf16=torch.cuda.is_bf16_supported(),
                   cudnn=torch.backends.cudnn.version())
    else:
        out.update(name=_cpu_name() or platform.processor() or platform.machine(), cpu_count=os.cpu_count())
    return out
