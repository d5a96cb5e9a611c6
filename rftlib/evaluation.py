"""Accuracy and cross-entropy of a classifier on named splits, one batched pass per split.

A split is either a pair of tensors ``(x, y)`` (images ``N×3×H×W``, labels ``N``) or any
``torch.utils.data.Dataset`` yielding ``(image, label)``; the latter is read through a DataLoader.

Example:
    >>> import torch
    >>> from torch import nn
    >>> model = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))
    >>> x, y = torch.randn(10, 1, 2, 2), torch.randint(0, 2, (10,))
    >>> rows = evaluate(model, {"id": (x, y)}, progress=False)
    >>> rows[0]["split"], rows[0]["n"], 0.0 <= rows[0]["accuracy"] <= 1.0
    ('id', 10, True)
"""

from __future__ import annotations

from typing import Iterator, Mapping, Union

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset

from .errors import NumericalError, ParameterError
from .progress import bar

Split = Union[tuple[torch.Tensor, torch.Tensor], Dataset]


def iterate_batches(split: Split, batch_size: int, device: torch.device | str,
                    num_workers: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Yield ``(x, y)`` batches of a split on ``device``."""
    if batch_size <= 0:
        raise ParameterError(f"batch_size={batch_size} must be a positive integer.")
    if isinstance(split, tuple):
        x, y = split
        if len(x) != len(y):
            raise ParameterError(f"split has {len(x)} images but {len(y)} labels.")
        for i in range(0, len(x), batch_size):
            yield x[i:i + batch_size].to(device, non_blocking=True), y[i:i + batch_size].to(device, non_blocking=True)
    else:
        loader = DataLoader(split, batch_size=batch_size, shuffle=False, num_workers=num_workers)
        for xb, yb in loader:
            yield xb.to(device, non_blocking=True), torch.as_tensor(yb).to(device, non_blocking=True)


def split_size(split: Split) -> int:
    return len(split[0]) if isinstance(split, tuple) else len(split)  # type: ignore[arg-type]


@torch.no_grad()
def evaluate_split(model: nn.Module, split: Split, batch_size: int = 1000,
                   device: torch.device | str | None = None) -> dict[str, float]:
    """``{"accuracy", "loss", "n"}`` of ``model`` on one split (mean cross-entropy in nats)."""
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    correct, loss_sum, n = 0, 0.0, 0
    for xb, yb in iterate_batches(split, batch_size, device):
        logits = model(xb).float()
        loss_sum += F.cross_entropy(logits, yb, reduction="sum").item()
        correct += (logits.argmax(dim=1) == yb).sum().item()
        n += len(yb)
    model.train(was_training)
    if n == 0:
        raise ParameterError("cannot evaluate on an empty split.")
    loss = loss_sum / n
    if loss != loss or loss in (float("inf"), float("-inf")):
        raise NumericalError("evaluation loss is not finite: the model's weights or inputs hold NaN/inf.")
    return {"accuracy": correct / n, "loss": loss, "n": n}


def evaluate(model: nn.Module, splits: Mapping[str, Split], batch_size: int = 1000,
             device: torch.device | str | None = None, progress: bool = True,
             desc: str = "evaluate") -> list[dict]:
    """One row ``{"split", "accuracy", "loss", "n"}`` per named split."""
    if not splits:
        raise ParameterError("no splits to evaluate.")
    rows = []
    for name in bar(list(splits), desc=desc, disable=not progress, unit="split"):
        rows.append({"split": name, **evaluate_split(model, splits[name], batch_size, device)})
    return rows
