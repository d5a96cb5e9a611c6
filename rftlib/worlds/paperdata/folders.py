"""Lazy image-folder data sets: ``<dir>/<class folder>/<image>`` read on first use.

Constructing a data set never touches the disk. The folder is looked up, scanned (sorted, so the
order is the same everywhere) and, if asked, subsampled to ``per_class`` images per class the first
time the data set is used (``len``, indexing, ``samples``). A missing folder then raises
:class:`~rftlib.errors.DataNotFoundError` naming the paths tried, the expected layout and where to
get the data.

A data set with a conventional folder name (``folder``, e.g. ``imagenet-r``) is looked for at
``<root>/<folder>/<subdir>`` first and then at ``<root>/<subdir>``, so ``root`` may be either the
common data directory or the data set's own folder.

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> from PIL import Image
    >>> d = Path(tempfile.mkdtemp())
    >>> for cls in ("cat", "dog"):
    ...     (d / cls).mkdir()
    ...     Image.new("RGB", (4, 3), "red").save(d / cls / "0.png")
    >>> ds = ImageFolderDataset(d)
    >>> len(ds), ds.classes, ds[1][0].shape, ds[1][1]
    (2, ['cat', 'dog'], torch.Size([3, 3, 4]), 1)
    >>> missing = ImageFolderDataset(d / "nowhere")  # fine: nothing is read yet
    >>> len(missing)
    Traceback (most recent call last):
    ...
    rftlib.errors.DataNotFoundError: image folder not found: ...
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Mapping, Sequence

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from rftlib.errors import DataNotFoundError, ParameterError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")

# one output class of a data set evaluated on a subset of a larger classifier's classes: an index
# of the classifier's output, or a group of them whose logit is their maximum (ObjectNet)
from rftlib.core.subset import ClassSubset  # noqa: E402  (one definition, in core)


def pil_to_tensor(img: Image.Image) -> torch.Tensor:
    """``3×H×W`` float tensor in [0, 1] from an RGB PIL image (the default transform).

    Example:
        >>> pil_to_tensor(Image.new("RGB", (2, 1), (255, 0, 0)))[:, 0, 0].tolist()
        [1.0, 0.0, 0.0]
    """
    arr = np.asarray(img.convert("RGB"), dtype=np.uint8)
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div_(255.0)


def load_rgb(path: str | os.PathLike) -> Image.Image:
    """Open an image file as RGB (the file is closed before returning)."""
    with open(path, "rb") as f:
        img = Image.open(f)
        return img.convert("RGB")


def check_per_class(per_class: int | None) -> None:
    if per_class is not None and (isinstance(per_class, bool) or not isinstance(per_class, int) or per_class <= 0):
        raise ParameterError(f"per_class={per_class!r} must be a positive integer (images per class) or None (all).")


def check_split(split: str, allowed: Sequence[str], dataset: str) -> None:
    if split not in allowed:
        raise ParameterError(f"split={split!r} is not a split of {dataset}; allowed: {list(allowed)}.")


def subsample_per_class(labels: Sequence[int], per_class: int, seed: int) -> list[int]:
    """Positions of at most ``per_class`` items of each label, chosen with ``seed`` (ascending).

    Each class draws from its own generator (seeded by ``(seed, label)``), so the choice for one class
    does not depend on which other classes are present.

    Example:
        >>> keep = subsample_per_class([0, 0, 0, 1, 1, 2], per_class=2, seed=0)
        >>> len(keep), keep[-3:]   # 2 of class 0's three, all of classes 1 and 2
        (5, [3, 4, 5])
        >>> len(subsample_per_class([0] * 10, 3, seed=1))
        3
    """
    check_per_class(per_class)
    by_label: dict[int, list[int]] = {}
    for pos, label in enumerate(labels):
        by_label.setdefault(int(label), []).append(pos)
    keep: list[int] = []
    for label, positions in by_label.items():
        if len(positions) <= per_class:
            keep += positions
        else:
            rng = np.random.default_rng([int(seed), label])
            keep += [positions[i] for i in rng.choice(len(positions), size=per_class, replace=False)]
    return sorted(keep)


class ImageFolderDataset(Dataset):
    """Images in ``<dir>/<class folder>/<file>``, yielding ``(transform(image), label)``.

    Args:
        root: the folder of class folders (for subclasses: the data directory holding ``folder``).
        transform: applied to the RGB PIL image; default: :func:`pil_to_tensor` (no resizing, so
            images of different sizes cannot be batched: pass e.g. open_clip's ``preprocess``).
        class_to_label: label of each class folder; default: sorted folder names numbered 0, 1, ...
        unknown: what to do with a class folder ``class_to_label`` lacks: ``"error"`` or ``"skip"``.
        per_class: keep at most this many images per class (seeded, see :func:`subsample_per_class`).
        seed: seed of that choice.
        folder: override the conventional folder name looked for under ``root`` (subclasses).
    """

    display_name = "image folder"
    folder: str | None = None
    layout = "<class folder>/<image files>"
    source = "your own data"
    unknown_default = "error"

    def __init__(
        self,
        root: str | os.PathLike,
        transform: Callable | None = None,
        class_to_label: Mapping[str, int] | None = None,
        unknown: str | None = None,
        per_class: int | None = None,
        seed: int = 0,
        folder: str | None = None,
    ) -> None:
        unknown = unknown or self.unknown_default
        if unknown not in ("error", "skip"):
            raise ParameterError(f"unknown={unknown!r} must be 'error' or 'skip'.")
        check_per_class(per_class)
        self.root = Path(root).expanduser()
        self.transform = transform
        self.class_to_label = dict(class_to_label) if class_to_label is not None else None
        self.unknown = unknown
        self.per_class = per_class
        self.seed = seed
        if folder is not None:
            self.folder = folder
        self._samples: list[tuple[str, int]] | None = None
        self._classes: list[str] | None = None
        self._dir: Path | None = None

    # --- what subclasses customize -------------------------------------------------------------
    def subdir(self) -> str:
        """Path of the class folders inside the data set's folder (``"."``, ``"train"``, ``"images"``)."""
        return "."

    def label_of(self, class_folder: str) -> int | None:
        """Label of a class folder, ``None`` when it is not a class of this data set."""
        if self.class_to_label is None:
            return None
        return self.class_to_label.get(class_folder)

    def prepare(self, img: Image.Image) -> Image.Image:
        """Hook applied to each image before ``transform`` (ObjectNet crops its border here)."""
        return img

    @property
    def class_subset(self) -> ClassSubset | None:
        """Classifier outputs this data set is evaluated on (see :mod:`rftlib.worlds.paperdata.subset`);
        ``None``: all of them."""
        return None

    # --- locating and scanning ------------------------------------------------------------------
    def candidates(self) -> list[Path]:
        """Folders tried, in order, for the class folders."""
        sub = self.subdir()
        paths = [self.root / self.folder / sub] if self.folder else []
        paths.append(self.root / sub)
        out: list[Path] = []
        for p in paths:
            p = Path(os.path.normpath(p))
            if p not in out:
                out.append(p)
        return out

    def _looks_right(self, path: Path) -> bool:
        if not path.is_dir():
            return False
        if self.class_to_label is None and type(self).label_of is ImageFolderDataset.label_of:
            return True
        with os.scandir(path) as it:
            return any(e.is_dir() and self.label_of(e.name) is not None for e in it)

    def not_found(self, detail: str = "") -> DataNotFoundError:
        tried = ", ".join(str(p) for p in self.candidates())
        where = f"{self.folder}/{self.layout}" if self.folder else self.layout
        return DataNotFoundError(
            f"{self.display_name} not found: {detail or 'no folder of class folders at'} {tried}. "
            f"Expected layout under root={str(self.root)!r}: {where}. Get it: {self.source}."
        )

    @property
    def image_dir(self) -> Path:
        """The folder of class folders (located on first use)."""
        if self._dir is None:
            for path in self.candidates():
                if self._looks_right(path):
                    self._dir = path
                    break
            else:
                raise self.not_found()
        return self._dir

    def _scan(self) -> None:
        base = self.image_dir
        with os.scandir(base) as it:
            class_dirs = sorted(e.name for e in it if e.is_dir())
        if self.class_to_label is None and type(self).label_of is ImageFolderDataset.label_of:
            mapping = {name: i for i, name in enumerate(class_dirs)}
        else:
            mapping = {}
            for name in class_dirs:
                label = self.label_of(name)
                if label is None:
                    if self.unknown == "error":
                        raise ParameterError(
                            f"{self.display_name}: folder {str(base / name)!r} is not one of its classes "
                            f"(expected layout: {self.layout}). Remove it, or pass unknown='skip'."
                        )
                    continue
                mapping[name] = label
        samples: list[tuple[str, int]] = []
        for name, label in mapping.items():
            with os.scandir(base / name) as it:
                files = sorted(e.name for e in it if e.is_file() and e.name.lower().endswith(IMAGE_EXTENSIONS))
            samples += [(str(base / name / f), label) for f in files]
        if not samples:
            raise self.not_found(f"found {base} but no images ({', '.join(IMAGE_EXTENSIONS)}) in its class folders; tried")
        if self.per_class is not None:
            keep = subsample_per_class([s[1] for s in samples], self.per_class, self.seed)
            samples = [samples[i] for i in keep]
        self._classes = list(mapping)
        self._samples = samples

    @property
    def samples(self) -> list[tuple[str, int]]:
        """``(path, label)`` of every image, sorted by class folder then file name."""
        if self._samples is None:
            self._scan()
        return self._samples  # type: ignore[return-value]

    @property
    def classes(self) -> list[str]:
        """Class folder names that hold images of this data set."""
        if self._classes is None:
            self._scan()
        return self._classes  # type: ignore[return-value]

    @property
    def targets(self) -> list[int]:
        return [label for _, label in self.samples]

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path, label = self.samples[index]
        img = self.prepare(load_rgb(path))
        return (self.transform(img) if self.transform is not None else pil_to_tensor(img)), label

    def __repr__(self) -> str:
        state = f"{len(self._samples)} images" if self._samples is not None else "not read yet"
        return f"{type(self).__name__}(root={str(self.root)!r}, {state})"
