"""Seeded, batched data augmentation for fine-tuning (float RGB images in [0, 1]).

Levels: ``none``; ``standard`` (random horizontal flip, scale 0.85–1.15, translation ±15 %, as in
the prior work's "with augmentation" recipes); ``strong`` (standard plus rotation ±20°, brightness
and contrast jitter ±30 %, and a random erased square). Parameters are drawn for a whole global batch
from one generator, then applied to any slice of it, so data-parallel ranks see exactly what a
single process would.

Example:
    >>> import torch
    >>> x = torch.rand(4, 3, 8, 8)
    >>> p = sample_params("standard", 4, torch.Generator().manual_seed(0))
    >>> apply(x, p).shape
    torch.Size([4, 3, 8, 8])
    >>> torch.equal(apply(x, sample_params("none", 4, torch.Generator())), x)
    True
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from rftlib.errors import ParameterError

LEVELS = ("none", "standard", "strong")


def check_level(level: str) -> str:
    if level not in LEVELS:
        raise ParameterError(f"augment={level!r} must be one of {LEVELS}.")
    return level


def sample_params(level: str, n: int, g: torch.Generator) -> dict[str, torch.Tensor] | None:
    """Random parameters of ``n`` augmentations (``None`` for level ``none``)."""
    check_level(level)
    if level == "none":
        return None
    u = lambda lo, hi: lo + (hi - lo) * torch.rand(n, generator=g)  # noqa: E731
    p = {"flip": torch.rand(n, generator=g) < 0.5, "scale": u(0.85, 1.15), "shift": u(-0.15, 0.15).unsqueeze(1).repeat(1, 2)}
    p["shift"][:, 1] = u(-0.15, 0.15)
    p["angle"] = torch.zeros(n)
    if level == "strong":
        p["angle"] = u(-20, 20) * math.pi / 180
        p["brightness"], p["contrast"] = u(0.7, 1.3), u(0.7, 1.3)
        p["erase_xy"], p["erase_on"] = torch.rand(n, 2, generator=g), torch.rand(n, generator=g) < 0.5
    return p


def _slice(p: dict[str, torch.Tensor], idx) -> dict[str, torch.Tensor]:
    return {k: v[idx] for k, v in p.items()}


def apply(x: torch.Tensor, p: dict[str, torch.Tensor] | None, idx=slice(None)) -> torch.Tensor:
    """Apply the augmentations ``p`` (restricted to ``idx`` of the global batch) to ``x``."""
    if p is None:
        return x
    p = _slice(p, idx)
    n = x.shape[0]
    x = torch.where(p["flip"].view(-1, 1, 1, 1), x.flip(-1), x)
    cos, sin = torch.cos(p["angle"]) / p["scale"], torch.sin(p["angle"]) / p["scale"]
    theta = torch.stack([torch.stack([cos, -sin, -p["shift"][:, 0]], 1), torch.stack([sin, cos, -p["shift"][:, 1]], 1)], 1)
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, align_corners=False, padding_mode="border")
    if "brightness" in p:
        m = x.mean(dim=(1, 2, 3), keepdim=True)
        x = ((x - m) * p["contrast"].view(-1, 1, 1, 1) + m) * p["brightness"].view(-1, 1, 1, 1)
        h, w = x.shape[-2:]
        s = max(1, h // 4)
        ys, xs = (p["erase_xy"][:, 0] * (h - s)).long(), (p["erase_xy"][:, 1] * (w - s)).long()
        rows = torch.arange(h).view(1, h, 1)
        cols = torch.arange(w).view(1, 1, w)
        box = (rows >= ys.view(n, 1, 1)) & (rows < (ys + s).view(n, 1, 1)) & (cols >= xs.view(n, 1, 1)) & (cols < (xs + s).view(n, 1, 1))
        box = box & p["erase_on"].view(n, 1, 1)
        x = x.masked_fill(box.unsqueeze(1), 0.5)
    return x.clamp(0, 1)
