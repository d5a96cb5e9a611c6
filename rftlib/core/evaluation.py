"""Accuracy and cross-entropy of a classifier on named splits, one batched pass per split.

A split is either a pair of tensors ``(x, y)`` (images ``N×3×H×W``, labels ``N``) or any
``torch.utils.data.Dataset`` yielding ``(image, label)``; the latter is read through a DataLoader
(with ``split.num_workers`` worker processes when the data set has that attribute). A data set with
an ``eval_class_subset`` (the evaluation splits of a paper setting built on ImageNet-R, -A or
ObjectNet, :mod:`rftlib.worlds.paper`) is scored on those classes only: the model's logits are
restricted to them and the labels renumbered (:func:`class_subset_projection`). The raw
:mod:`rftlib.worlds.paperdata` data sets only *expose* a ``class_subset``; evaluate them through
:func:`rftlib.worlds.paperdata.apply_class_subset`.

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

from rftlib.core.precision import forward_logits, resolve_precision
from rftlib.errors import NumericalError, ParameterError
from rftlib.progress import bar

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
        workers = max(num_workers, int(getattr(split, "num_workers", 0) or 0))
        loader = DataLoader(split, batch_size=batch_size, shuffle=False, num_workers=workers,
                            pin_memory=workers > 0 and torch.device(device).type == "cuda")
        for xb, yb in loader:
            yield xb.to(device, non_blocking=True), torch.as_tensor(yb).to(device, non_blocking=True)


def class_subset_projection(model: nn.Module, split: Split):
    """For a split with an ``eval_class_subset``: a :class:`rftlib.core.subset.SubsetLogits` of ``model``,
    whose ``project(logits)`` and ``map_labels(labels)`` score the split on its own classes; else ``None``.

    Example:
        >>> class Subset200(list):
        ...     eval_class_subset = [1, 3]
        >>> p = class_subset_projection(nn.Linear(2, 5), Subset200())
        >>> p.project(torch.arange(5.0).view(1, 5)).tolist(), p.map_labels(torch.tensor([3])).tolist()
        ([[1.0, 3.0]], [1])
        >>> class_subset_projection(nn.Linear(2, 5), (torch.zeros(1, 2), torch.zeros(1))) is None
        True
    """
    subset = getattr(split, "eval_class_subset", None)
    if subset is None:
        return None
    from rftlib.core.subset import SubsetLogits

    return SubsetLogits(model, subset)


@torch.no_grad()
def evaluate_split(model: nn.Module, split: Split, batch_size: int = 1000,
                   device: torch.device | str | None = None, name: str | None = None,
                   precision: str = "fp32") -> dict[str, float]:
    """``{"accuracy", "loss", "n"}`` of ``model`` on one split (mean cross-entropy in nats).

    ``name``: the split's name, used in error messages. A split with an ``eval_class_subset`` is
    scored on those classes (:func:`class_subset_projection`). ``precision``: the forward's precision,
    ``"fp32"`` (default), ``"bf16"`` (autocast; loss and accuracy still in float32) or ``"auto"``
    (:func:`rftlib.core.precision.resolve_precision`).

    Example:
        >>> net = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
        >>> x, y = torch.randn(6, 1, 2, 2), torch.randint(0, 3, (6,))
        >>> a, b = evaluate_split(net, (x, y)), evaluate_split(net, (x, y), precision="bf16")
        >>> a["n"], abs(a["loss"] - b["loss"]) < 0.05
        (6, True)

    Raises:
        NumericalError: the loss is NaN or infinite (the message names the split).
    """
    device = device or next(model.parameters()).device
    precision = resolve_precision(precision, device)
    was_training = model.training
    model.eval()
    correct, loss_sum, n = 0, 0.0, 0
    subset = class_subset_projection(model, split)
    for xb, yb in iterate_batches(split, batch_size, device):
        logits = forward_logits(model, xb, precision, device)
        if subset is not None:
            logits, yb = subset.project(logits), subset.map_labels(yb)
        loss_sum += F.cross_entropy(logits, yb, reduction="sum").item()
        correct += (logits.argmax(dim=1) == yb).sum().item()
        n += len(yb)
    model.train(was_training)
    on = f" on split {name!r}" if name is not None else ""
    if n == 0:
        raise ParameterError(f"cannot evaluate{on}: the split is empty.")
    loss = loss_sum / n
    if loss != loss or loss in (float("inf"), float("-inf")):
        raise NumericalError(f"evaluation loss is not finite{on} ({loss}): the model's weights or inputs hold NaN/inf.")
    return {"accuracy": correct / n, "loss": loss, "n": n}


def evaluate(model: nn.Module, splits: Mapping[str, Split], batch_size: int = 1000,
             device: torch.device | str | None = None, progress: bool = True,
             desc: str = "evaluate", precision: str = "fp32") -> list[dict]:
    """One row ``{"split", "accuracy", "loss", "n"}`` per named split (``precision``: see
    :func:`evaluate_split`)."""
    if not splits:
        raise ParameterError("no splits to evaluate.")
    device = device or next(model.parameters()).device
    precision = resolve_precision(precision, device)
    rows = []
    for name in bar(list(splits), desc=desc, disable=not progress, unit="split"):
        rows.append({"split": name, **evaluate_split(model, splits[name], batch_size, device, name=name,
                                                     precision=precision)})
    return rows
