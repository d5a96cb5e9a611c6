"""CIFAR-10 and its reproductions CIFAR-10.1 and CIFAR-10.2, read lazily from their published files.

- CIFAR-10: ``cifar-10-batches-py/data_batch_{1..5}`` (train), ``test_batch`` (test): Python
  pickles of ``{"data": uint8 N×3072 (R, G, B planes), "labels": [...]}`` (see Security below).
- CIFAR-10.1: ``CIFAR-10.1/cifar10.1_v6_data.npy`` (uint8 N×32×32×3) and ``cifar10.1_v6_labels.npy``.
- CIFAR-10.2: ``CIFAR-10.2/cifar102_test.npz`` with keys ``images`` (uint8 N×32×32×3) and ``labels``.

Each is looked for under ``root/<folder>`` and then ``root``.

All three yield ``(transform(image), label)`` with the RGB PIL image of a 32×32 picture and a
CIFAR-10 label 0..9 (``airplane`` .. ``truck``, :func:`rftlib.worlds.templates.classnames`).

Security: CIFAR-10's python version is a set of pickles, and unpickling runs code named in the
file. These are read with :class:`NumpyOnlyUnpickler`, which resolves only the few globals a
pickled NumPy array needs and refuses anything else, and only from the known file names. ``.npy`` and
``.npz`` files are read with ``allow_pickle=False``. WiSE-FT's older CIFAR-10.2 download
(``cifar102_test.npy``, a pickled dict) is read only with ``allow_pickle=True`` (trust the file).

Example:
    >>> ds = CIFAR101("/nonexistent/data")   # lazy: nothing is read yet
    >>> ds.split, ds.version
    ('test', 'v6')
    >>> len(ds)
    Traceback (most recent call last):
    ...
    rftlib.errors.DataNotFoundError: CIFAR-10.1 not found: ...
"""

from __future__ import annotations

import codecs
import os
import pickle
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from PIL import Image
from torch.utils.data import Dataset

from rftlib.errors import DataNotFoundError, ParameterError
from rftlib.worlds.paperdata.folders import check_split, pil_to_tensor

try:  # NumPy >= 2
    from numpy._core.multiarray import _reconstruct
except ImportError:  # pragma: no cover - NumPy 1.x
    from numpy.core.multiarray import _reconstruct  # type: ignore[no-redef]

NUM_CIFAR10_CLASSES = 10


class NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickler that rebuilds plain NumPy arrays, lists, dicts, strings and numbers, nothing else.

    Any other global (a class or function named in the pickle) raises ``pickle.UnpicklingError``,
    so a tampered file cannot run code.

    Example:
        >>> import pickle, io, numpy as np
        >>> blob = pickle.dumps({"data": np.arange(3, dtype=np.uint8)}, protocol=2)
        >>> NumpyOnlyUnpickler(io.BytesIO(blob)).load()["data"].tolist()
        [0, 1, 2]
        >>> NumpyOnlyUnpickler(io.BytesIO(pickle.dumps(print))).load()
        Traceback (most recent call last):
        ...
        _pickle.UnpicklingError: refusing to load builtins.print from a data file (only NumPy arrays are allowed).
    """

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): codecs.encode,  # how Python 3 pickles bytes at protocol 2
    }

    def find_class(self, module: str, name: str):  # noqa: D102
        try:
            return self._ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"refusing to load {module}.{name} from a data file (only NumPy arrays are allowed)."
            ) from None


def load_cifar_batch(path: str | os.PathLike) -> tuple[np.ndarray, np.ndarray]:
    """Images ``N×32×32×3`` uint8 and labels ``N`` int64 of one CIFAR-10 python batch file (safely)."""
    with open(path, "rb") as f:
        batch = NumpyOnlyUnpickler(f, encoding="latin1").load()
    if not isinstance(batch, dict):
        raise ParameterError(f"{path}: not a CIFAR-10 batch (a pickled dict), got {type(batch).__name__}.")
    batch = {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in batch.items()}
    if "data" not in batch or "labels" not in batch:
        raise ParameterError(f"{path}: a CIFAR-10 batch needs keys 'data' and 'labels', has {sorted(batch)}.")
    data = np.asarray(batch["data"], dtype=np.uint8)
    if data.ndim != 2 or data.shape[1] != 3 * 32 * 32:
        raise ParameterError(f"{path}: 'data' has shape {data.shape}, expected N×3072.")
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), np.asarray(batch["labels"], dtype=np.int64)


class ArrayImageDataset(Dataset):
    """Base of CIFAR-style data sets: ``uint8`` images ``N×H×W×3`` and labels, loaded on first use."""

    display_name = "array data set"
    folder: str | None = None
    source = ""
    splits: tuple[str, ...] = ("test",)

    def __init__(self, root: str | os.PathLike, split: str = "test", transform: Callable | None = None,
                 folder: str | None = None) -> None:
        check_split(split, self.splits, self.display_name)
        self.root = Path(root).expanduser()
        self.split = split
        self.transform = transform
        if folder is not None:
            self.folder = folder
        self._arrays: tuple[np.ndarray, np.ndarray] | None = None

    def files(self) -> list[str]:
        """Names of the files this split needs."""
        raise NotImplementedError

    def read(self, directory: Path) -> tuple[np.ndarray, np.ndarray]:
        """Images and labels from the located directory."""
        raise NotImplementedError

    def candidates(self) -> list[Path]:
        return ([self.root / self.folder] if self.folder else []) + [self.root]

    def locate(self) -> Path:
        """The first candidate directory holding all of :meth:`files`."""
        for d in self.candidates():
            if all((d / f).is_file() for f in self.files()):
                return d
        tried = ", ".join(str(d) for d in self.candidates())
        raise DataNotFoundError(
            f"{self.display_name} not found: no folder among {tried} holds {', '.join(self.files())}. "
            f"Expected under root={str(self.root)!r}: {self.folder + '/' if self.folder else ''}"
            f"{{{', '.join(self.files())}}}. Get it: {self.source}."
        )

    def arrays(self) -> tuple[np.ndarray, np.ndarray]:
        """``(images N×32×32×3 uint8, labels N int64)``, read and checked on first call."""
        if self._arrays is None:
            directory = self.locate()
            images, labels = self.read(directory)
            images, labels = np.asarray(images), np.asarray(labels).reshape(-1).astype(np.int64)
            if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] != 3:
                raise ParameterError(f"{self.display_name} in {directory}: images are {images.dtype} {images.shape}, expected uint8 N×H×W×3.")
            if len(images) != len(labels):
                raise ParameterError(f"{self.display_name} in {directory}: {len(images)} images but {len(labels)} labels.")
            if len(labels) and (labels.min() < 0 or labels.max() >= NUM_CIFAR10_CLASSES):
                raise ParameterError(f"{self.display_name} in {directory}: labels outside 0..9 ({labels.min()}..{labels.max()}).")
            self._arrays = (images, labels)
        return self._arrays

    @property
    def targets(self) -> list[int]:
        return self.arrays()[1].tolist()

    def __len__(self) -> int:
        return len(self.arrays()[1])

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        images, labels = self.arrays()
        img = Image.fromarray(images[index])
        return (self.transform(img) if self.transform is not None else pil_to_tensor(img)), int(labels[index])

    def __repr__(self) -> str:
        state = f"{len(self._arrays[1])} images" if self._arrays is not None else "not read yet"
        return f"{type(self).__name__}(root={str(self.root)!r}, split={self.split!r}, {state})"


class CIFAR10(ArrayImageDataset):
    """CIFAR-10 (Krizhevsky 2009), python version: ``train`` (50,000) or ``test`` (10,000)."""

    display_name = "CIFAR-10"
    folder = "cifar-10-batches-py"
    splits = ("test", "train")
    source = "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz; extract it into the data directory"

    def files(self) -> list[str]:
        return [f"data_batch_{i}" for i in range(1, 6)] if self.split == "train" else ["test_batch"]

    def read(self, directory: Path) -> tuple[np.ndarray, np.ndarray]:
        parts = [load_cifar_batch(directory / f) for f in self.files()]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


class CIFAR101(ArrayImageDataset):
    """CIFAR-10.1 (Recht et al. 2018): 2,000 new test images (``v6``; ``v4``: 2,021).

    Args:
        version: ``"v6"`` (default, the one WiSE-FT uses) or ``"v4"``.
    """

    display_name = "CIFAR-10.1"
    folder = "CIFAR-10.1"
    source = "https://github.com/modestyachts/CIFAR-10.1 (datasets/cifar10.1_v6_data.npy and cifar10.1_v6_labels.npy)"

    def __init__(self, root: str | os.PathLike, split: str = "test", transform: Callable | None = None,
                 version: str = "v6", folder: str | None = None) -> None:
        if version not in ("v6", "v4"):
            raise ParameterError(f"version={version!r} is not a CIFAR-10.1 version; allowed: ['v6', 'v4'].")
        super().__init__(root, split, transform, folder)
        self.version = version

    def files(self) -> list[str]:
        return [f"cifar10.1_{self.version}_data.npy", f"cifar10.1_{self.version}_labels.npy"]

    def read(self, directory: Path) -> tuple[np.ndarray, np.ndarray]:
        data, labels = (np.load(directory / f, allow_pickle=False) for f in self.files())
        return data, labels


class CIFAR102(ArrayImageDataset):
    """CIFAR-10.2 (Lu et al. 2020): ``test`` (2,000 images) or ``train`` (10,000).

    Reads the published ``cifar102_<split>.npz`` (keys ``images``, ``labels``). WiSE-FT's download
    instructions fetch an older ``cifar102_<split>.npy`` holding a pickled dict; that one is read
    only with ``allow_pickle=True``.
    """

    display_name = "CIFAR-10.2"
    folder = "CIFAR-10.2"
    splits = ("test", "train")
    source = "https://github.com/modestyachts/cifar-10.2 (cifar102_test.npz)"

    def __init__(self, root: str | os.PathLike, split: str = "test", transform: Callable | None = None,
                 allow_pickle: bool = False, folder: str | None = None) -> None:
        super().__init__(root, split, transform, folder)
        self.allow_pickle = allow_pickle

    def files(self) -> list[str]:
        return [f"cifar102_{self.split}.npz"]

    def locate(self) -> Path:
        try:
            return super().locate()
        except DataNotFoundError as err:
            legacy = f"cifar102_{self.split}.npy"
            found = [d for d in self.candidates() if (d / legacy).is_file()]
            if found and self.allow_pickle:
                return found[0]
            if found:
                raise DataNotFoundError(
                    f"found {found[0] / legacy}, the older pickled form of CIFAR-10.2, but not "
                    f"cifar102_{self.split}.npz. Unpickling can run code: pass allow_pickle=True if you trust "
                    f"the file, or get the .npz from {self.source}."
                ) from None
            raise err

    def read(self, directory: Path) -> tuple[np.ndarray, np.ndarray]:
        npz = directory / f"cifar102_{self.split}.npz"
        if npz.is_file():
            with np.load(npz, allow_pickle=False) as f:
                missing = {"images", "labels"} - set(f.files)
                if missing:
                    raise ParameterError(f"{npz} lacks keys {sorted(missing)} (has {f.files}).")
                return f["images"], f["labels"]
        blob = np.load(directory / f"cifar102_{self.split}.npy", allow_pickle=True).item()
        return np.asarray(blob["images"]), np.asarray(blob["labels"])
