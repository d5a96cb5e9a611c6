"""A toy 3-class image task shared by the fine-tuning and data-parallel tests."""

import torch


def toy_task(n: int = 96, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` images 3×28×28 in [0, 1] whose class is a bright square at a class-dependent height."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    x = torch.rand(n, 3, 28, 28, generator=g) * 0.3
    for c in range(3):
        x[y == c, :, 4 + 7 * c:10 + 7 * c, 4:24] += 0.6
    return x.clamp(0, 1), y
