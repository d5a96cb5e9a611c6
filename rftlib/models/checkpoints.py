"""Safe checkpoint files: safetensors preferred, ``.pt`` only through ``torch.load(weights_only=True)``.

A checkpoint here is a flat state dict ``{key: tensor}``. Nothing is ever unpickled beyond what
``weights_only`` allows, truncated or corrupt files raise :class:`~rftlib.errors.CheckpointError`
that names the file and the fix, and writes are atomic.

Example:
    >>> import tempfile, pathlib, torch
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "m.safetensors"
    >>> save_state_dict(p, {"w": torch.ones(2)}, metadata={"world": "demo"})
    >>> load_state_dict(p)["w"].tolist()
    [1.0, 1.0]
    >>> read_metadata(p)["world"]
    'demo'
"""

from __future__ import annotations

import os
import pickle
import zipfile
from pathlib import Path
from typing import Mapping

import torch

from rftlib.errors import CheckpointError
from rftlib.files.io import atomic_path, sha256

SAFE_SUFFIXES = (".safetensors",)
TORCH_SUFFIXES = (".pt", ".pth", ".bin", ".ckpt")


def verify_sha256(path: str | os.PathLike, expected: str, where: str | None = None) -> None:
    """Raise :class:`CheckpointError` unless the file's SHA-256 equals ``expected``.

    ``where`` (e.g. ``"world 'digits'"``) is added to the message after the two hashes.
    """
    got = sha256(path)
    if got != expected:
        raise CheckpointError(
            f"checksum mismatch for {Path(path).name}: expected sha256 {expected}, got {got}"
            + (f" ({where})" if where else "") + ". "
            "The file is corrupt or was replaced; restore it with `git checkout -- <file>` "
            "or re-create it (see the book's reproduce page)."
        )


def _unwrap(obj: object, path: Path) -> dict[str, torch.Tensor]:
    if isinstance(obj, Mapping) and "state_dict" in obj and isinstance(obj["state_dict"], Mapping):
        obj = obj["state_dict"]
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise CheckpointError(
            f"{path.name} does not hold a state dict of tensors (found {type(obj).__name__}); "
            "save one with rftlib.models.checkpoints.save_state_dict(path, model.state_dict())."
        )
    # strip DistributedDataParallel / torch.compile prefixes
    out = {}
    for k, v in obj.items():
        for prefix in ("module.", "_orig_mod."):
            if k.startswith(prefix):
                k = k[len(prefix):]
        out[k] = v
    return out


def load_state_dict(path: str | os.PathLike, device: str | torch.device = "cpu") -> dict[str, torch.Tensor]:
    """Load a state dict from ``.safetensors`` or a weights-only ``.pt``/``.pth``/``.bin``.

    Raises:
        CheckpointError: missing, truncated, corrupt or unsafe (pickled code) files.
    """
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint not found: {p}. Check the path (relative paths start at the repository root).")
    if p.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {p.name} is empty (0 bytes): the file was truncated; restore or re-create it.")
    if p.suffix == ".safetensors":
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return load_file(str(p), device=str(device))
        except (SafetensorError, OSError, ValueError, RuntimeError) as e:
            raise CheckpointError(
                f"checkpoint {p.name} is not a readable safetensors file ({e}); it is truncated or corrupt. "
                "Restore it or re-create it."
            ) from e
    if p.suffix in TORCH_SUFFIXES:
        if zipfile.is_zipfile(p):
            with zipfile.ZipFile(p) as z:
                names = z.namelist()
            if any(n.endswith("constants.pkl") or "/code/" in n for n in names):
                raise CheckpointError(
                    f"{p.name} is a TorchScript archive (like OpenAI's original CLIP files). rftlib does not "
                    "execute TorchScript from untrusted files; convert it once where you trust it with "
                    "`rft convert-openai IN.pt OUT.safetensors`."
                )
        try:
            obj = torch.load(p, map_location=device, weights_only=True)
        except pickle.UnpicklingError as e:
            raise CheckpointError(
                f"refusing to load {p.name}: it contains pickled objects beyond tensors, which "
                f"torch.load(weights_only=True) rejects ({str(e).splitlines()[0]}). Save a plain state dict "
                "(or .safetensors) instead."
            ) from e
        except (RuntimeError, EOFError, OSError, zipfile.BadZipFile) as e:
            raise CheckpointError(f"checkpoint {p.name} is truncated or corrupt ({e}); restore or re-create it.") from e
        return _unwrap(obj, p)
    raise CheckpointError(
        f"unknown checkpoint format {p.suffix!r} for {p.name}: use .safetensors (preferred) or .pt/.pth/.bin."
    )


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The string metadata stored in a safetensors header (empty for other formats)."""
    p = Path(path)
    if p.suffix != ".safetensors":
        return {}
    from safetensors import safe_open

    try:
        with safe_open(str(p), framework="pt") as f:
            return dict(f.metadata() or {})
    except Exception as e:  # noqa: BLE001 - safetensors raises several types
        raise CheckpointError(f"cannot read the header of {p.name} ({e}); the file is corrupt.") from e


def save_state_dict(
    path: str | os.PathLike,
    state_dict: Mapping[str, torch.Tensor],
    metadata: Mapping[str, object] | None = None,
) -> None:
    """Save a state dict as safetensors, atomically; tensors are made contiguous and moved to the CPU."""
    from safetensors.torch import save_file

    p = Path(path)
    if p.suffix != ".safetensors":
        raise CheckpointError(f"save checkpoints as .safetensors, not {p.suffix!r} ({p.name}).")
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state_dict.items()}
    meta = {str(k): str(v) for k, v in (metadata or {}).items()}
    with atomic_path(p) as tmp:
        save_file(tensors, str(tmp), metadata=meta)


def _shown(path: Path) -> str:
    """``path`` as a user should type it: relative to the working folder when inside it."""
    try:
        return Path(os.path.abspath(path)).relative_to(Path.cwd()).as_posix()
    except ValueError:
        return str(path)


def header_shapes(path: str | os.PathLike) -> dict[str, tuple[int, ...]]:
    """Key → shape of every tensor in a safetensors file, read from its header only (no tensor data).

    Raises:
        CheckpointError: the file is missing or its header is unreadable (truncated or corrupt).

    Example:
        >>> import tempfile, pathlib, torch
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "m.safetensors"
        >>> save_state_dict(p, {"w": torch.ones(2, 3)})
        >>> header_shapes(p)
        {'w': (2, 3)}
    """
    from safetensors import safe_open

    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"checkpoint not found: {_shown(p)}.")
    try:
        with safe_open(str(p), framework="pt") as f:
            return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
    except Exception as e:  # noqa: BLE001 - safetensors raises several types
        raise CheckpointError(f"cannot read the header of {_shown(p)} ({e}); the file is truncated or corrupt.") from e


def architecture_problem(shapes: Mapping[str, tuple[int, ...]], expected: Mapping[str, tuple[int, ...]]) -> str | None:
    """What differs between a checkpoint's key → shape table and an architecture's (``None``: they match).

    A 0-d and a 1-element ``logit_scale`` count as equal (open_clip versions differ there).

    Example:
        >>> architecture_problem({"a": (2,), "b": (3,)}, {"a": (2,), "b": (3,)}) is None
        True
        >>> architecture_problem({"a": (2,)}, {"a": (4,)})
        "key 'a' has shape (2,), the architecture expects (4,)"
    """
    missing = sorted(set(expected) - set(shapes))
    unexpected = sorted(set(shapes) - set(expected))
    if missing or unexpected:
        return (f"{len(missing)} missing keys (first: {missing[:3]}), "
                f"{len(unexpected)} unexpected keys (first: {unexpected[:3]})")
    for k, want in expected.items():
        got = tuple(shapes[k])
        if got != tuple(want) and not (k == "logit_scale" and max(1, *got, 1) == max(1, *want, 1) == 1):
            return f"key {k!r} has shape {got}, the architecture expects {tuple(want)}"
    return None


def load_resume_state(path: str | os.PathLike, required: tuple[str, ...] = (), map_location: object = "cpu") -> dict:
    """Load a resume point (``state.pt``: tensors and plain containers) with ``weights_only=True``.

    Args:
        path: the ``state.pt`` of an interrupted run.
        required: keys the state must hold.
        map_location: as for ``torch.load``.

    Raises:
        CheckpointError: the file is truncated, corrupt, holds pickled objects, or lacks a required
            key; the message names the file and says to delete it to restart that run.

    Example:
        >>> import tempfile, pathlib, torch
        >>> p = pathlib.Path(tempfile.mkdtemp()) / "state.pt"
        >>> torch.save({"epoch": 1}, p)
        >>> load_resume_state(p, required=("epoch",))["epoch"]
        1
        >>> _ = p.write_bytes(b"not a state")
        >>> load_resume_state(p)  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        rftlib.errors.CheckpointError: resume state ... is not a training state rftlib can load safely (truncated, corrupt, or holding pickled objects beyond tensors); delete it to restart that run from its first epoch (rm ...).
    """
    p = Path(path)
    fix = f"delete it to restart that run from its first epoch (rm {_shown(p)})."
    try:
        state = torch.load(p, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:  # torch's message advises weights_only=False: never do that here
        raise CheckpointError(f"resume state {_shown(p)} is not a training state rftlib can load safely "
                              f"(truncated, corrupt, or holding pickled objects beyond tensors); {fix}") from None
    except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as e:
        reason = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"resume state {_shown(p)} is not a readable rftlib training state "
                              f"({reason}); {fix}") from None
    if not isinstance(state, dict) or any(k not in state for k in required):
        lacks = [k for k in required if not isinstance(state, dict) or k not in state]
        raise CheckpointError(f"resume state {_shown(p)} lacks {lacks}: it is from another program or an "
                              f"older rftlib; {fix}")
    return state
