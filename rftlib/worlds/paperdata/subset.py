"""Evaluate a 1000-way ImageNet classifier on a data set that covers only some of its classes.

ImageNet-R and ImageNet-A have 200 of ImageNet's classes; ObjectNet has 113 classes, some covering
several ImageNet classes. Their data sets keep labels in ImageNet-1k's space and expose
``class_subset``: one entry per class of the data set, an ImageNet index or a group of them.
Following the papers that introduced them (and WiSE-FT), the classifier is scored on those classes
only: its logits are restricted to the subset's columns (a group scores its largest logit) and the
labels are renumbered to positions in the subset. :class:`SubsetLogits` does the former,
:class:`SubsetLabels` the latter, and :func:`apply_class_subset` both, leaving data sets without a
``class_subset`` alone. With :mod:`rftlib.core.evaluation`::

    from rftlib.core.evaluation import evaluate_split
    from rftlib.worlds.paperdata import apply_class_subset, get_dataset

    split = get_dataset("imagenet-r", "~/data", transform=preprocess)
    model_r, split_r = apply_class_subset(classifier, split)   # 200-way logits, labels 0..199
    row = evaluate_split(model_r, split_r)                     # accuracy and loss on the 200 classes

The cross-entropy reported is then that of the 200-way (or 113-way) softmax, as accuracy is of its
argmax. Code that computes logits itself (prefix caching) applies :meth:`SubsetLogits.project` to
them and :meth:`SubsetLogits.map_labels` to the labels.

Example:
    >>> import torch
    >>> from torch import nn
    >>> model = nn.Linear(4, 6, bias=False)
    >>> sub = SubsetLogits(model, [1, (3, 5)])       # class 0 = column 1, class 1 = max(columns 3, 5)
    >>> logits = torch.tensor([[0., 9., 0., 1., 0., 7.]])
    >>> sub.project(logits).tolist()
    [[9.0, 7.0]]
    >>> sub.map_labels(torch.tensor([1, 3, 5])).tolist()
    [0, 1, 1]
    >>> sub(torch.randn(2, 4)).shape
    torch.Size([2, 2])
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import Dataset

from rftlib.errors import ParameterError
from rftlib.core.subset import ClassSubset, SubsetLogits, normalize_subset


class SubsetLabels(Dataset):
    """A data set with labels renumbered to positions in a class subset (``class_subset`` ``None``).

    Example:
        >>> ds = SubsetLabels([(torch.zeros(1), 7), (torch.zeros(1), 3)], [3, 7])
        >>> [y for _, y in ds]
        [1, 0]
    """

    class_subset = None

    def __init__(self, dataset: Dataset, indices: ClassSubset) -> None:
        self.dataset = dataset
        self.groups = normalize_subset(indices)
        self.table = {i: pos for pos, g in enumerate(self.groups) for i in g}

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int):
        x, y = self.dataset[index]
        label = int(y)
        if label not in self.table:
            raise ParameterError(f"item {index} has label {label}, which is not in the class subset.")
        return x, self.table[label]


def apply_class_subset(model: nn.Module, split, indices: ClassSubset | None = None):
    """``(model, split)`` restricted to ``indices`` (default: ``split.class_subset``); unchanged if none.

    ``split`` is a data set or an ``(x, y)`` tensor pair (then ``indices`` must be given).

    Example:
        >>> import torch
        >>> from torch import nn
        >>> m, s = apply_class_subset(nn.Linear(2, 5), (torch.zeros(3, 2), torch.tensor([4, 0, 4])), [0, 4])
        >>> m(s[0]).shape, s[1].tolist()
        (torch.Size([3, 2]), [1, 0, 1])
        >>> m2, s2 = apply_class_subset(nn.Linear(2, 5), [])   # no class_subset: unchanged
        >>> type(m2).__name__
        'Linear'
    """
    if indices is None:
        indices = getattr(split, "class_subset", None)
    if indices is None:
        return model, split
    wrapped = SubsetLogits(model, indices)
    if isinstance(split, tuple):
        x, y = split
        return wrapped, (x, wrapped.map_labels(torch.as_tensor(y)))
    return wrapped, SubsetLabels(split, indices)


__all__ = ["SubsetLogits", "SubsetLabels", "apply_class_subset", "normalize_subset"]
