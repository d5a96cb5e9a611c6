"""Convert an OpenAI TorchScript CLIP file (e.g. ``ViT-B-32.pt`` as OpenAI ships it) to safetensors.

rftlib refuses to load TorchScript archives (:func:`rftlib.models.checkpoints.load_state_dict`): loading one
runs code stored in the file. Convert it once, on a machine where you trust the file::

    rft convert-openai IN.pt OUT.safetensors

The archive is loaded with ``torch.jit.load(IN, map_location="cpu")``, and its ``state_dict()`` is
saved with :func:`rftlib.models.checkpoints.save_state_dict` (atomic; the source's file name and SHA-256 go
into the safetensors metadata). OpenAI's marker keys (``input_resolution``, ``context_length``,
``vocab_size``) are kept, so :func:`rftlib.models.factory.create_clip` still recognises OpenAI weights and
refuses to pair them with a GELU architecture (they need QuickGELU, e.g. ``ViT-B-32-quickgelu``).

Example:
    >>> describe({"w": torch.zeros(2, 3), "input_resolution": torch.tensor(224)})
    '2 tensors, 7 values; OpenAI markers kept: input_resolution (use a -quickgelu model)'
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Mapping

import torch

from rftlib.models.checkpoints import save_state_dict, sha256
from rftlib.errors import CheckpointError
from rftlib.models.factory import OPENAI_MARKERS


def convert(src: str | os.PathLike, dst: str | os.PathLike) -> dict[str, torch.Tensor]:
    """Convert the TorchScript archive ``src`` to the safetensors file ``dst``; returns the state dict.

    Only for files you trust: ``torch.jit.load`` runs code stored in the archive.

    Raises:
        FileNotFoundError: ``src`` does not exist.
        CheckpointError: ``dst`` does not end in ``.safetensors``, or ``src`` is not a readable
            TorchScript archive.
    """
    src, dst = Path(src), Path(dst)
    if not src.is_file():
        raise FileNotFoundError(f"{src} does not exist (give the OpenAI TorchScript file, e.g. ViT-B-32.pt)")
    if dst.suffix != ".safetensors":
        raise CheckpointError(f"the output must be a .safetensors file, not {dst.name!r}")
    try:
        module = torch.jit.load(str(src), map_location="cpu")
    except (RuntimeError, ValueError, OSError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise CheckpointError(f"{src.name} is not a readable TorchScript archive ({first})") from e
    state = {k: v.detach().cpu() for k, v in module.state_dict().items()}
    if not state:
        raise CheckpointError(f"{src.name} holds no tensors: nothing to convert")
    save_state_dict(dst, state, metadata={"converted_from": src.name, "source_sha256": sha256(src),
                                          "format": "openai-torchscript"})
    return state


def describe(state: Mapping[str, torch.Tensor]) -> str:
    """One line on a converted state dict: its size, and whether OpenAI's marker keys are in it."""
    n = sum(v.numel() for v in state.values())
    markers = [k for k in OPENAI_MARKERS if k in state]
    note = (f"OpenAI markers kept: {', '.join(markers)} (use a -quickgelu model)" if markers
            else "no OpenAI markers (input_resolution, context_length, vocab_size): not an OpenAI CLIP file?")
    return f"{len(state)} tensors, {n:,} values; {note}"
