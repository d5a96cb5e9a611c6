"""ImageNet and its distribution shifts, as lazy folder data sets labelled in ImageNet-1k's space.

Every data set yields ``(transform(image), label)`` with ``label`` an ImageNet-1k class index
(0..999, the sorted-wnid order of ImageNet's ``train/`` folders), whatever its folder names are:

- ImageNet: ``imagenet/{train,val}/<wnid>/*.JPEG``; label: the wnid's index.
- ImageNet-V2: ``imagenetv2-matched-frequency-format-val/<0..999>/*.jpeg``; label: the folder's
  number (it *is* the index).
- ImageNet-Sketch: ``sketch/<wnid>/*.JPEG``; label: the wnid's index.
- ImageNet-R, ImageNet-A: ``imagenet-r/<wnid>/*.jpg``, ``imagenet-a/<wnid>/*.jpg`` (200 wnids each);
  label: the wnid's index; ``class_subset``: the 200 indices.
- ObjectNet: ``objectnet-1.0/images/<folder>/*.png``; 113 of its 313 folders overlap ImageNet (the
  others are skipped); label: the smallest index of the folder's ImageNet classes;
  ``class_subset``: the 113 groups of indices.

``root`` is the directory holding these folders (or the data set's own folder). ImageNet-R, -A and
ObjectNet are evaluated on their classes only: see :mod:`rftlib.worlds.paperdata.subset`.

ObjectNet's images carry a thin frame; as is customary (WiSE-FT, model soups) ``border=2``
pixels are cropped from each side before ``transform``. Its ObjectNet → ImageNet mapping ships with
rftlib (``templates/objectnet_to_imagenet.txt``, derived from ObjectNet's own
``mappings/objectnet_to_imagenet_1k.json`` and ``folder_to_objectnet_label.json``); pass
``mapping=`` (a dict or a JSON file ``{"<folder>": [<ImageNet index or wnid>, ...]}``) to use another.

Example:
    >>> ds = ImageNetR("/nonexistent/data")          # lazy: nothing is read yet
    >>> len(ds.class_subset), ds.class_subset[:3]
    (200, [1, 2, 4])
    >>> ds.label_of("n01443537"), ds.label_of("n01440764") is None  # goldfish in, tench not in -R
    (1, True)
    >>> ImageNetV2("/nonexistent/data").label_of("417")
    417
    >>> on = ObjectNet("/nonexistent/data")
    >>> len(on.class_subset), on.label_of("alarm_clock"), on.class_subset[0]
    (113, 409, (409, 530))
"""

from __future__ import annotations

import json
import os
from functools import lru_cache
from pathlib import Path
from typing import Callable, Mapping, Sequence, Union

from PIL import Image

from rftlib.errors import DataNotFoundError, ParameterError
from rftlib.worlds.templates import class_indices, read_list, wnid_to_index
from rftlib.worlds.paperdata.folders import ImageFolderDataset, check_split

NUM_IMAGENET_CLASSES = 1000
IMAGENET_SOURCE = (
    "https://image-net.org (ILSVRC2012, after registering): extract the train archive into "
    "imagenet/train/<wnid>/ and sort the flat validation images into imagenet/val/<wnid>/ with the "
    "devkit's ground truth (as torchvision.datasets.ImageNet does)"
)


class ImageNet(ImageFolderDataset):
    """ImageNet-1k (ILSVRC2012) ``train`` or ``val`` in the ``<split>/<wnid>/*.JPEG`` layout.

    Args:
        root: directory holding ``imagenet/`` (or the ``imagenet`` folder itself).
        split: ``"val"`` (default; the paper's ID test set) or ``"train"``.
        transform: applied to each RGB PIL image (default: to a ``[0, 1]`` tensor).
        per_class: keep at most this many images per class, chosen with ``seed`` (e.g. a quick
            5-per-class validation subset, or a k-shot training set).
        folder: the folder name under ``root`` if not ``imagenet``.
    """

    display_name = "ImageNet"
    folder = "imagenet"
    splits = ("val", "train")
    source = IMAGENET_SOURCE

    def __init__(self, root: str | os.PathLike, split: str = "val", transform: Callable | None = None,
                 per_class: int | None = None, seed: int = 0, folder: str | None = None) -> None:
        check_split(split, self.splits, self.display_name)
        super().__init__(root, transform, per_class=per_class, seed=seed, folder=folder)
        self.split = split
        self.layout = f"{split}/<wnid, e.g. n01440764>/*.JPEG (1000 wnid folders)"

    def subdir(self) -> str:
        return self.split

    def label_of(self, class_folder: str) -> int | None:
        return wnid_to_index().get(class_folder)


class _ShiftFolder(ImageFolderDataset):
    """An ImageNet distribution shift: one test split, labels in ImageNet-1k's space."""

    splits = ("test",)

    def __init__(self, root: str | os.PathLike, split: str = "test", transform: Callable | None = None,
                 per_class: int | None = None, seed: int = 0, folder: str | None = None) -> None:
        check_split(split, self.splits, self.display_name)
        super().__init__(root, transform, per_class=per_class, seed=seed, folder=folder)
        self.split = split

    def label_of(self, class_folder: str) -> int | None:
        return wnid_to_index().get(class_folder)


class ImageNetV2(_ShiftFolder):
    """ImageNet-V2 (Recht et al. 2019): folders named by ImageNet class index, ``0`` .. ``999``.

    Args:
        variant: ``"matched-frequency"`` (default, the one CLIP/WiSE-FT report), ``"threshold0.7"``
            or ``"top-images"``; sets the folder ``imagenetv2-<variant>-format-val``.
    """

    display_name = "ImageNet-V2"
    variants = ("matched-frequency", "threshold0.7", "top-images")
    layout = "<ImageNet class index 0..999>/*.jpeg (1000 folders, 10 images each)"
    source = (
        "https://github.com/modestyachts/ImageNetV2 (imagenetv2-matched-frequency.tar.gz from "
        "https://s3-us-west-2.amazonaws.com/imagenetv2public/); extract it into the data directory"
    )

    def __init__(self, root: str | os.PathLike, split: str = "test", transform: Callable | None = None,
                 variant: str = "matched-frequency", per_class: int | None = None, seed: int = 0,
                 folder: str | None = None) -> None:
        if variant not in self.variants:
            raise ParameterError(f"variant={variant!r} is not an ImageNet-V2 variant; allowed: {list(self.variants)}.")
        super().__init__(root, split, transform, per_class=per_class, seed=seed,
                         folder=folder or f"imagenetv2-{variant}-format-val")
        self.variant = variant

    def label_of(self, class_folder: str) -> int | None:
        if class_folder.isdigit() and str(int(class_folder)) == class_folder and int(class_folder) < NUM_IMAGENET_CLASSES:
            return int(class_folder)
        return None


class ImageNetSketch(_ShiftFolder):
    """ImageNet-Sketch (Wang et al. 2019): ``sketch/<wnid>/*``, about 50 sketches per ImageNet class."""

    display_name = "ImageNet-Sketch"
    folder = "sketch"
    layout = "<wnid>/*.JPEG (1000 wnid folders)"
    source = "https://github.com/HaohanWang/ImageNet-Sketch (Google Drive or Kaggle); extract so that sketch/<wnid>/ exists"


class _SubsetFolder(_ShiftFolder):
    subset_name = ""

    @property
    def class_subset(self) -> list[int]:
        """The ImageNet indices of the data set's 200 classes (ascending)."""
        return class_indices(self.subset_name)

    def label_of(self, class_folder: str) -> int | None:
        index = wnid_to_index().get(class_folder)
        return index if index is not None and index in _subset_set(self.subset_name) else None


@lru_cache(maxsize=None)
def _subset_set(name: str) -> frozenset[int]:
    return frozenset(class_indices(name))


class ImageNetR(_SubsetFolder):
    """ImageNet-R(endition) (Hendrycks et al. 2021): 30,000 renditions of 200 ImageNet classes."""

    display_name = "ImageNet-R"
    folder = "imagenet-r"
    subset_name = "imagenet-r"
    layout = "<wnid>/*.jpg (200 wnid folders)"
    source = "https://people.eecs.berkeley.edu/~hendrycks/imagenet-r.tar (github.com/hendrycks/imagenet-r); extract it into the data directory"


class ImageNetA(_SubsetFolder):
    """ImageNet-A (Hendrycks et al. 2021): 7,500 natural adversarial images of 200 ImageNet classes."""

    display_name = "ImageNet-A"
    folder = "imagenet-a"
    subset_name = "imagenet-a"
    layout = "<wnid>/*.jpg (200 wnid folders)"
    source = "https://people.eecs.berkeley.edu/~hendrycks/imagenet-a.tar (github.com/hendrycks/natural-adv-examples); extract it into the data directory"


# --- ObjectNet ---------------------------------------------------------------------------------

MappingSource = Union[str, os.PathLike, Mapping[str, Sequence[Union[int, str]]], None]


def _bundled_objectnet_rows() -> list[tuple[str, str, list[str]]]:
    rows = []
    for line in read_list("objectnet_to_imagenet.txt"):
        folder, label, wnids = line.split("\t")
        rows.append((folder, label, wnids.split()))
    return rows


def objectnet_classnames() -> dict[str, str]:
    """ObjectNet's label of each of the 113 ImageNet-overlapping folders (bundled mapping).

    Example:
        >>> objectnet_classnames()["alarm_clock"]
        'Alarm clock'
    """
    return {folder: label for folder, label, _ in _bundled_objectnet_rows()}


def _to_index(value: int | str, folder: str) -> int:
    if isinstance(value, bool):
        raise ParameterError(f"ObjectNet mapping: folder {folder!r} maps to {value!r}, not an ImageNet index or wnid.")
    if isinstance(value, int):
        if not 0 <= value < NUM_IMAGENET_CLASSES:
            raise ParameterError(f"ObjectNet mapping: folder {folder!r} maps to index {value}, outside 0..999.")
        return value
    if isinstance(value, str) and value in wnid_to_index():
        return wnid_to_index()[value]
    raise ParameterError(f"ObjectNet mapping: folder {folder!r} maps to {value!r}, not an ImageNet index (0..999) or wnid.")


def objectnet_mapping(mapping: MappingSource = None) -> dict[str, tuple[int, ...]]:
    """ObjectNet folder → the ImageNet-1k indices it covers (sorted), checked (groups disjoint).

    Args:
        mapping: ``None`` for the bundled 113-class mapping; a dict; or a JSON file of the form
            ``{"<folder>": [<ImageNet index or wnid>, ...], ...}`` (a single value may stand alone).

    Example:
        >>> m = objectnet_mapping()
        >>> len(m), sum(len(g) for g in m.values()), m["chair"]
        (113, 125, (423, 559, 765))
        >>> objectnet_mapping({"mug": ["n03063599"], "sock": 806})
        {'mug': (504,), 'sock': (806,)}
    """
    if mapping is None:
        raw: Mapping = {folder: wnids for folder, _, wnids in _bundled_objectnet_rows()}
    elif isinstance(mapping, Mapping):
        raw = mapping
    else:
        path = Path(mapping).expanduser()
        if not path.is_file():
            raise DataNotFoundError(
                f"ObjectNet mapping file {str(path)!r} not found. Expected JSON "
                '{"<ObjectNet folder>": [<ImageNet index or wnid>, ...], ...}; or pass mapping=None for the bundled one.'
            )
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as e:
            raise ParameterError(f"ObjectNet mapping file {str(path)!r} is not valid JSON: {e}.") from e
        if not isinstance(raw, dict):
            raise ParameterError(f"ObjectNet mapping file {str(path)!r} must hold a JSON object (folder -> indices).")
    out: dict[str, tuple[int, ...]] = {}
    owner: dict[int, str] = {}
    for folder, values in raw.items():
        values = [values] if isinstance(values, (int, str)) else list(values)
        if not values:
            raise ParameterError(f"ObjectNet mapping: folder {folder!r} maps to no ImageNet class.")
        group = tuple(sorted({_to_index(v, folder) for v in values}))
        for i in group:
            if i in owner:
                raise ParameterError(f"ObjectNet mapping: ImageNet class {i} is claimed by both {owner[i]!r} and {folder!r}.")
            owner[i] = folder
        out[str(folder)] = group
    if not out:
        raise ParameterError("ObjectNet mapping is empty.")
    return out


class ObjectNet(_ShiftFolder):
    """ObjectNet (Barbu et al. 2019) on its 113 ImageNet-overlapping classes.

    Labels are ImageNet indices: an image of an ObjectNet class covering several ImageNet classes
    (``chair``: barber, folding and rocking chair) gets the smallest of them; ``class_subset`` lists
    each class's group, and evaluation scores a group by its largest logit (as WiSE-FT does).

    Args:
        mapping: ``None`` (bundled), a dict or a JSON file, see :func:`objectnet_mapping`. Read on
            first use.
        border: pixels cropped from each side before ``transform`` (ObjectNet's frame), 0 for none.
    """

    display_name = "ObjectNet"
    folder = "objectnet-1.0"
    layout = "images/<ObjectNet class folder, e.g. alarm_clock>/*.png (313 folders; 113 overlap ImageNet)"
    source = "https://objectnet.dev (objectnet-1.0.zip, after accepting its license); unzip it into the data directory"
    unknown_default = "skip"

    def __init__(self, root: str | os.PathLike, split: str = "test", transform: Callable | None = None,
                 mapping: MappingSource = None, border: int = 2, per_class: int | None = None, seed: int = 0,
                 folder: str | None = None) -> None:
        if isinstance(border, bool) or not isinstance(border, int) or border < 0:
            raise ParameterError(f"border={border!r} must be a non-negative integer (pixels cropped per side).")
        super().__init__(root, split, transform, per_class=per_class, seed=seed, folder=folder)
        self.mapping = mapping
        self.border = border
        self._groups: dict[str, tuple[int, ...]] | None = None

    def subdir(self) -> str:
        return "images"

    @property
    def groups(self) -> dict[str, tuple[int, ...]]:
        """ObjectNet folder → ImageNet indices (loaded on first use)."""
        if self._groups is None:
            self._groups = objectnet_mapping(self.mapping)
        return self._groups

    @property
    def class_subset(self) -> list[tuple[int, ...]]:
        """One group of ImageNet indices per ObjectNet class, in sorted folder order."""
        return [self.groups[f] for f in sorted(self.groups)]

    def label_of(self, class_folder: str) -> int | None:
        group = self.groups.get(class_folder)
        return group[0] if group else None

    def prepare(self, img: Image.Image) -> Image.Image:
        b = self.border
        if b == 0:
            return img
        w, h = img.size
        if w <= 2 * b or h <= 2 * b:
            return img
        return img.crop((b, b, w - b, h - b))
