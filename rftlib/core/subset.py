"""Score a classifier on a subset of its classes: logits restricted to the subset's columns (a group
of columns scores its largest logit) and labels renumbered to positions in the subset.

Used for ImageNet-R and -A (200 of ImageNet's classes) and ObjectNet (113 classes, some covering
several ImageNet classes); :mod:`rftlib.worlds.paperdata.subset` applies it to data sets.

Example:
    >>> import torch
    >>> from torch import nn
    >>> sub = SubsetLogits(nn.Linear(4, 6, bias=False), [1, (3, 5)])
    >>> sub.project(torch.tensor([[0., 9., 0., 1., 0., 7.]])).tolist()
    [[9.0, 7.0]]
    >>> sub.map_labels(torch.tensor([1, 3, 5])).tolist()
    [0, 1, 1]
"""

from __future__ import annotations

from typing import Sequence, Union

import torch
from torch import nn

from rftlib.errors import ParameterError

#: One entry per class of the subset: a class index, or a group of indices.
ClassSubset = Sequence[Union[int, Sequence[int]]]


def normalize_subset(indices: ClassSubset) -> list[tuple[int, ...]]:
    """Each entry of a class subset as a sorted tuple of classifier outputs; checked disjoint.

    Example:
        >>> normalize_subset([4, (9, 2)])
        [(4,), (2, 9)]
    """
    if isinstance(indices, torch.Tensor):
        indices = indices.tolist()
    if indices is None or len(indices) == 0:
        raise ParameterError(f"indices={indices!r} must list at least one class (an index or a group of indices).")
    groups: list[tuple[int, ...]] = []
    seen: set[int] = set()
    for entry in indices:
        members = [entry] if isinstance(entry, int) else list(entry)
        if not members or any(isinstance(m, bool) or not isinstance(m, int) or m < 0 for m in members):
            raise ParameterError(f"indices: entry {entry!r} must be a non-negative int or a non-empty group of them.")
        group = tuple(sorted(set(members)))
        if seen.intersection(group):
            raise ParameterError(f"indices: output {sorted(seen.intersection(group))} appears in more than one class.")
        seen.update(group)
        groups.append(group)
    return groups


def _label_table(groups: list[tuple[int, ...]]) -> torch.Tensor:
    table = torch.full((max(max(g) for g in groups) + 1,), -1, dtype=torch.long)
    for pos, group in enumerate(groups):
        table[list(group)] = pos
    return table


class SubsetLogits(nn.Module):
    """``model`` with its logits restricted to a class subset: column ``j`` is the logit of entry ``j``
    of ``indices`` (the largest of a group's logits).

    Args:
        model: any module returning logits ``N×C``.
        indices: the subset, e.g. a data set's ``class_subset``: ints, or groups of ints.
    """

    def __init__(self, model: nn.Module, indices: ClassSubset) -> None:
        super().__init__()
        self.model = model
        self.groups = normalize_subset(indices)
        width = max(len(g) for g in self.groups)
        # pad a group by repeating its first member: the maximum is unchanged
        index = torch.tensor([list(g) + [g[0]] * (width - len(g)) for g in self.groups], dtype=torch.long)
        device = next(model.parameters(), torch.empty(0)).device
        self.register_buffer("index", index.to(device), persistent=False)
        self.register_buffer("label_table", _label_table(self.groups).to(device), persistent=False)

    @property
    def num_classes(self) -> int:
        return len(self.groups)

    def project(self, logits: torch.Tensor) -> torch.Tensor:
        """``N×C`` logits → ``N×len(indices)``."""
        needed = int(self.index.max()) + 1
        if logits.ndim != 2 or logits.shape[1] < needed:
            raise ParameterError(
                f"logits of shape {tuple(logits.shape)} cannot be restricted: the subset needs at least {needed} columns."
            )
        index = self.index.to(logits.device)
        if index.shape[1] == 1:
            return logits[:, index[:, 0]]
        return logits[:, index].amax(dim=-1)

    def map_labels(self, labels: torch.Tensor) -> torch.Tensor:
        """Classifier-space labels → positions in the subset (every label must belong to it)."""
        table = self.label_table.to(labels.device)
        bad = (labels < 0) | (labels >= len(table))
        mapped = table[labels.clamp(0, len(table) - 1)]
        bad |= mapped < 0
        if bool(bad.any()):
            raise ParameterError(f"labels {labels[bad].unique().tolist()[:10]} are not in the class subset.")
        return mapped

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.project(self.model(x))
