"""The paper-scale data sets, read lazily from folders the user provides (nothing is downloaded).

ImageNet (ID) and ImageNet-V2, -R, -Sketch, -A and ObjectNet (OOD); CIFAR-10 (ID) and CIFAR-10.1,
CIFAR-10.2 (OOD). Each is a ``torch.utils.data.Dataset`` yielding ``(transform(image), label)``
with labels in ImageNet-1k's (or CIFAR-10's) space, so one classifier head serves all of a scale's
splits. Constructing one reads nothing; first use raises :class:`~rftlib.errors.DataNotFoundError`
with the paths tried, the layout expected and where to get the data if it is missing.

``root`` is one data directory holding every data set under its usual folder name::

    <root>/imagenet/{train,val}/<wnid>/*.JPEG
    <root>/imagenetv2-matched-frequency-format-val/<0..999>/*.jpeg
    <root>/sketch/<wnid>/*.JPEG
    <root>/imagenet-r/<wnid>/*.jpg
    <root>/imagenet-a/<wnid>/*.jpg
    <root>/objectnet-1.0/images/<objectnet folder>/*.png
    <root>/cifar-10-batches-py/{data_batch_1..5,test_batch}
    <root>/CIFAR-10.1/cifar10.1_v6_{data,labels}.npy
    <root>/CIFAR-10.2/cifar102_test.npz

(or the data set's own folder). ImageNet-R, -A and ObjectNet carry a ``class_subset``; evaluate
them through :func:`apply_class_subset` (see :mod:`rftlib.worlds.paperdata.subset`). Prompt templates
and class names: :mod:`rftlib.worlds.templates`.

Example:
    >>> dataset_names()
    ['cifar10', 'cifar10.1', 'cifar10.2', 'imagenet', 'imagenet-a', 'imagenet-r', 'imagenet-sketch', 'imagenet-v2', 'objectnet']
    >>> ds = get_dataset("imagenet-a", "/nonexistent/data")
    >>> type(ds).__name__, ds.split, len(ds.class_subset)
    ('ImageNetA', 'test', 200)
    >>> sorted(paper_splits("cifar10", "/nonexistent/data"))
    ['cifar10', 'cifar10.1', 'cifar10.2']
    >>> get_dataset("imagenet-c", "/data")
    Traceback (most recent call last):
    ...
    rftlib.errors.ParameterError: name='imagenet-c' is not a data set; known: ...
"""

from __future__ import annotations

import difflib
import os
from typing import Callable

from torch.utils.data import Dataset

from rftlib.errors import ParameterError
from rftlib.worlds.paperdata.cifar import CIFAR10, CIFAR101, CIFAR102, ArrayImageDataset, NumpyOnlyUnpickler, load_cifar_batch
from rftlib.worlds.paperdata.folders import ImageFolderDataset, pil_to_tensor, subsample_per_class
from rftlib.worlds.paperdata.imagenet import (ImageNet, ImageNetA, ImageNetR, ImageNetSketch, ImageNetV2, ObjectNet,
                       objectnet_classnames, objectnet_mapping)
from rftlib.worlds.paperdata.subset import SubsetLabels, SubsetLogits, apply_class_subset, normalize_subset

DATASETS: dict[str, type] = {
    "imagenet": ImageNet,
    "imagenet-v2": ImageNetV2,
    "imagenet-sketch": ImageNetSketch,
    "imagenet-r": ImageNetR,
    "imagenet-a": ImageNetA,
    "objectnet": ObjectNet,
    "cifar10": CIFAR10,
    "cifar10.1": CIFAR101,
    "cifar10.2": CIFAR102,
}

# the paper's two scales: ID data set first, then its distribution shifts
SCALES: dict[str, tuple[str, ...]] = {
    "imagenet": ("imagenet", "imagenet-v2", "imagenet-r", "imagenet-sketch", "imagenet-a", "objectnet"),
    "cifar10": ("cifar10", "cifar10.1", "cifar10.2"),
}


def dataset_names() -> list[str]:
    """Names :func:`get_dataset` knows."""
    return sorted(DATASETS)


def get_dataset(name: str, root: str | os.PathLike, split: str | None = None,
                transform: Callable | None = None, **kwargs) -> Dataset:
    """The data set ``name`` under ``root`` (lazy: nothing is read until it is used).

    Args:
        name: one of :func:`dataset_names`.
        root: the data directory (see the module docstring), or the data set's own folder.
        split: default ``"val"`` for ``imagenet`` (``"train"`` too), ``"test"`` for the others
            (``cifar10`` and ``cifar10.2`` also have ``"train"``).
        transform: applied to each RGB PIL image, e.g. open_clip's ``preprocess``.
        **kwargs: passed to the data set's class (e.g. ``per_class``, ``seed`` for folder data sets,
            ``mapping``/``border`` for ObjectNet, ``variant`` for ImageNet-V2).

    Raises:
        ParameterError: unknown name or split (before touching the disk).
    """
    if name not in DATASETS:
        close = difflib.get_close_matches(str(name), DATASETS, n=3)
        raise ParameterError(
            f"name={name!r} is not a data set; known: {dataset_names()}" + (f" (close: {close})." if close else ".")
        )
    cls = DATASETS[name]
    if split is None:
        split = cls.splits[0]
    return cls(root, split=split, transform=transform, **kwargs)


def paper_splits(scale: str, root: str | os.PathLike, transform: Callable | None = None) -> dict[str, Dataset]:
    """The evaluation splits of one of the paper's scales, by name (lazy): ID test set first.

    Args:
        scale: ``"imagenet"`` (ImageNet val + 5 shifts) or ``"cifar10"`` (CIFAR-10 test + 2 shifts).
    """
    if scale not in SCALES:
        raise ParameterError(f"scale={scale!r} is not one of the paper's scales; allowed: {sorted(SCALES)}.")
    return {name: get_dataset(name, root, transform=transform) for name in SCALES[scale]}


__all__ = [
    "DATASETS", "SCALES", "dataset_names", "get_dataset", "paper_splits",
    "ImageFolderDataset", "ImageNet", "ImageNetV2", "ImageNetSketch", "ImageNetR", "ImageNetA", "ObjectNet",
    "objectnet_mapping", "objectnet_classnames",
    "ArrayImageDataset", "CIFAR10", "CIFAR101", "CIFAR102", "NumpyOnlyUnpickler", "load_cifar_batch",
    "SubsetLogits", "SubsetLabels", "apply_class_subset", "normalize_subset",
    "pil_to_tensor", "subsample_per_class",
]
