"""Paper-scale settings as worlds: the study's notebooks on ImageNet or CIFAR-10 with OpenAI's CLIP.

A *paper setting* is a file ``worlds/<name>/world.yaml`` whose first key is ``kind: paper``;
:func:`rftlib.worlds.world.load_world` hands it to :meth:`PaperWorld.from_config`, so every notebook runs
it through its ``world`` parameter alone. A :class:`PaperWorld` satisfies the one interface of a
world, :class:`rftlib.worlds.protocol.World`, as a miniature world does, with the same meanings.
The data sets come from :mod:`rftlib.worlds.paperdata`, prompts and class names from
:mod:`rftlib.worlds.templates`, the model from :func:`rftlib.models.factory.create_clip` with local weights.

Setting file (every key but ``sha256``, ``classnames``, ``preprocess``, ``device``,
``num_workers``, ``decode_threads``, ``eval_seed`` and ``description`` is required)::

    kind: paper
    name: paper-imagenet
    model: ViT-B-32-quickgelu            # open_clip architecture (QuickGELU for OpenAI's weights)
    pretrained: ${RFT_CLIP_WEIGHTS}      # a local weights file; ${VAR} and ${VAR:-default} expand
    sha256: null                         # optional: the weights file's expected sha256
    data_root: ${RFT_DATA_ROOT}          # the folder holding the data sets (layout: rftlib.worlds.paperdata)
    id: {dataset: imagenet, eval_split: val, train_split: train, train_per_class: null}
    ood: [imagenet-v2, imagenet-r, imagenet-sketch, imagenet-a, objectnet]
    classnames: imagenet                 # rftlib.worlds.templates.classnames (default: the ID data set)
    templates: imagenet                  # rftlib.worlds.templates.templates
    preprocess: {image_size: null, mean: openai, std: openai}
    device: ${RFT_DEVICE:-auto}          # rftlib.models.device.pick_device
    num_workers: 8                       # DataLoader processes decoding evaluation images
    decode_threads: 16                   # threads decoding training images
    eval_seed: 1234                      # seed of the per-split subsets when n_eval < a split's size

Images: open_clip's evaluation transform for the model (shorter side resized bicubically to the
input size, centre crop) to a float tensor in [0, 1]; OpenAI's normalization is applied *inside*
the classifier (``input_mean``/``input_std``), which is the same function as open_clip's
``preprocess`` followed by the model, and keeps fine-tuning's augmentations
(:mod:`rftlib.core.augment`, defined on [0, 1] images) correct.

Splits: ``id`` is the ID data set's evaluation split (ImageNet ``val``, CIFAR-10 ``test``), the
OOD splits are named by their data set. ``eval_splits(n_eval)`` takes a seeded subset of
``n_eval`` images of each split, or the whole split when ``n_eval`` is ``None``, 0 or at least its
size. The splits of ImageNet-R, -A and ObjectNet carry their ``class_subset`` as ``eval_class_subset``,
which :mod:`rftlib.core.evaluation` (and the prefix-cached paths of :mod:`rftlib.core.prefix`) honour: logits
are restricted to the data set's classes, as in WiSE-FT.

Nothing is read when a setting loads; a missing weights file raises
:class:`~rftlib.errors.CheckpointError` and missing data :class:`~rftlib.errors.DataNotFoundError`,
each naming the environment variable (or setting key) to set.

Example:
    >>> w = PaperWorld.from_config({"kind": "paper", "name": "demo", "model": "ViT-B-32-quickgelu",
    ...     "pretrained": "${RFT_NO_SUCH_VARIABLE}", "data_root": "/nonexistent",
    ...     "id": {"dataset": "cifar10"}, "ood": ["cifar10.1", "cifar10.2"], "templates": "cifar10"})
    >>> w.all_splits, len(w.classnames), w.unseen_styles, w.image_size
    (['id', 'cifar10.1', 'cifar10.2'], 10, [], 224)
    >>> w.verify_checkpoint()  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    rftlib.errors.CheckpointError: paper setting 'demo': environment variable RFT_NO_SUCH_VARIABLE is not set; ...
"""

from __future__ import annotations

import copy
import os
import platform
import re
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch
import yaml
from torch.utils.data import Dataset

from rftlib.errors import CheckpointError, DataNotFoundError, ParameterError

KIND = "paper"
ENV_WEIGHTS = "RFT_CLIP_WEIGHTS"
ENV_DATA = "RFT_DATA_ROOT"
OPENAI = "openai"
SETTING_KEYS = frozenset({"kind", "name", "description", "model", "pretrained", "sha256", "data_root", "id", "ood",
                          "classnames", "templates", "preprocess", "device", "num_workers", "decode_threads",
                          "eval_seed"})
REQUIRED_KEYS = ("name", "model", "pretrained", "data_root", "id", "ood", "templates")
ID_KEYS = frozenset({"dataset", "eval_split", "train_split", "train_per_class"})
PREPROCESS_KEYS = frozenset({"image_size", "mean", "std"})
DOCS = "book/paper-scale.md"

_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


# ---------------------------------------------------------------------------------------------
# environment variables in setting values


def expand_env(value: str) -> tuple[str, list[str]]:
    """``value`` with ``${VAR}`` and ``${VAR:-default}`` replaced from the environment, and the names of
    the variables that are unset (or empty) without a default (their text is left in place).

    Example:
        >>> os.environ["RFT_DOCTEST_DIR"] = "/data"
        >>> expand_env("${RFT_DOCTEST_DIR}/x"), expand_env("${RFT_DOCTEST_UNSET:-auto}")
        (('/data/x', []), ('auto', []))
        >>> expand_env("${RFT_DOCTEST_UNSET}")
        ('${RFT_DOCTEST_UNSET}', ['RFT_DOCTEST_UNSET'])
    """
    missing: list[str] = []

    def sub(m: re.Match) -> str:
        name, default = m.group(1), m.group(2)
        got = os.environ.get(name)
        if got:
            return got
        if default is not None:
            return default
        missing.append(name)
        return m.group(0)

    return _VAR.sub(sub, str(value)), missing


def env_names(value: str) -> list[str]:
    """Names of the environment variables a setting value refers to.

    Example:
        >>> env_names("${RFT_CLIP_WEIGHTS}"), env_names("/weights/b32.safetensors")
        (['RFT_CLIP_WEIGHTS'], [])
    """
    return [m.group(1) for m in _VAR.finditer(str(value))]


def _repo_path(value: str) -> Path:
    from rftlib.files.manifest import repo_path

    return repo_path(Path(value).expanduser())


def is_paper_setting(cfg_or_path: Mapping[str, Any] | str | os.PathLike) -> bool:
    """Whether a world file (or its parsed content) is a paper setting (``kind: paper``).

    Example:
        >>> is_paper_setting({"kind": "paper"}), is_paper_setting({"name": "digits"})
        (True, False)
    """
    cfg = cfg_or_path
    if not isinstance(cfg, Mapping):
        try:
            cfg = yaml.safe_load(Path(cfg_or_path).read_text(encoding="utf-8"))
        except (OSError, yaml.YAMLError):
            return False
    return isinstance(cfg, Mapping) and cfg.get("kind") == KIND


# ---------------------------------------------------------------------------------------------
# images: open_clip's evaluation transform, without the normalization (the classifier applies it)


def image_transform(size: int) -> Callable:
    """open_clip's evaluation transform for input size ``size`` (shorter side to ``size``, bicubic;
    centre crop; RGB) ending in a float tensor in [0, 1]: its ``Normalize`` is left out.

    Example:
        >>> from PIL import Image
        >>> image_transform(8)(Image.new("RGB", (16, 12), (255, 0, 0))).shape
        torch.Size([3, 8, 8])
    """
    import open_clip
    from torchvision import transforms as T

    full = open_clip.image_transform(int(size), is_train=False, mean=open_clip.OPENAI_DATASET_MEAN,
                                     std=open_clip.OPENAI_DATASET_STD)
    return T.Compose([t for t in full.transforms if not isinstance(t, T.Normalize)])


class LazyImages:
    """A map-style data set seen as an ``N×3×H×W`` tensor by :func:`rftlib.models.finetune.finetune`.

    Supports what ``finetune`` does with its images: ``len(x)``, ``x[:n]`` (a lazy view) and
    ``x[idx]`` with a tensor (or list) of indices, which decodes those images with a thread pool and
    stacks them. ``order`` maps positions to items of ``dataset`` (e.g. a seeded shuffle).

    Example:
        >>> ds = [(torch.full((1, 2, 2), float(i)), i) for i in range(5)]
        >>> x = LazyImages(ds, order=[4, 3, 2, 1, 0], threads=2)
        >>> len(x), x[torch.tensor([0, 2])][:, 0, 0, 0].tolist(), len(x[:3]), float(x[1][0, 0, 0])
        (5, [4.0, 2.0], 3, 3.0)
    """

    def __init__(self, dataset: Any, order: Sequence[int], threads: int = 8) -> None:
        self.dataset = dataset
        self.order = [int(i) for i in order]
        self.threads = max(1, int(threads))
        self._pool: ThreadPoolExecutor | None = None

    def __len__(self) -> int:
        return len(self.order)

    def __getitem__(self, idx: Any) -> Any:
        if isinstance(idx, slice):
            return LazyImages(self.dataset, self.order[idx], self.threads)
        if isinstance(idx, (torch.Tensor, np.ndarray)):
            idx = idx.tolist()
        if isinstance(idx, int):
            return self.dataset[self.order[idx]][0]
        positions = [self.order[int(i)] for i in idx]
        if not positions:
            return torch.empty(0)
        if self._pool is None:
            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="rft-decode")
        return torch.stack(list(self._pool.map(lambda j: self.dataset[j][0], positions)))

    def __repr__(self) -> str:
        return f"LazyImages({len(self)} images of {type(self.dataset).__name__}, {self.threads} threads)"


class EvalSplit(Dataset):
    """One evaluation split of a paper setting: a data set, or a fixed subset of it, scored on the
    data set's ``class_subset`` (as ``eval_class_subset``, which :mod:`rftlib.core.evaluation` and
    :mod:`rftlib.core.prefix` honour), decoded by ``num_workers`` DataLoader worker processes.

    Example:
        >>> s = EvalSplit([(torch.zeros(1), 7), (torch.ones(1), 3), (torch.ones(1), 5)], [0, 2])
        >>> len(s), s[1][1], s.eval_class_subset, s.targets
        (2, 5, None, [7, 5])
    """

    def __init__(self, dataset: Any, indices: Sequence[int] | None = None, num_workers: int = 0,
                 name: str = "") -> None:
        self.dataset = dataset
        self.indices = None if indices is None else [int(i) for i in indices]
        self.num_workers = int(num_workers)
        self.name = name

    @property
    def class_subset(self) -> Any:
        """The data set's classes (ImageNet indices or groups of them); ``None``: all classes."""
        return getattr(self.dataset, "class_subset", None)

    @property
    def eval_class_subset(self) -> Any:
        """What the evaluator scores this split on: :attr:`class_subset`."""
        return self.class_subset

    @property
    def targets(self) -> list[int]:
        if hasattr(self.dataset, "targets"):
            t = list(self.dataset.targets)
        else:
            t = [int(self.dataset[i][1]) for i in range(len(self.dataset))]
        return t if self.indices is None else [t[i] for i in self.indices]

    def __len__(self) -> int:
        return len(self.dataset) if self.indices is None else len(self.indices)

    def __getitem__(self, i: int):
        return self.dataset[i if self.indices is None else self.indices[i]]

    def __repr__(self) -> str:
        return f"EvalSplit({self.name!r}, {len(self.indices) if self.indices is not None else 'all'} of {self.dataset!r})"


# ---------------------------------------------------------------------------------------------
# the setting


def _scale_of(dataset: str) -> str | None:
    from rftlib.worlds.paperdata import SCALES

    for scale, names in SCALES.items():
        if dataset in names:
            return scale
    return None


def _mean_std(value: Any, which: str, where: str) -> list[float]:
    import open_clip

    if value is None or value == OPENAI:
        return list(open_clip.OPENAI_DATASET_MEAN if which == "mean" else open_clip.OPENAI_DATASET_STD)
    if (not isinstance(value, (list, tuple)) or len(value) != 3
            or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
        raise ParameterError(f"{where}: preprocess.{which}={value!r} must be 'openai' or three numbers (one per channel).")
    if which == "std" and min(value) <= 0:
        raise ParameterError(f"{where}: preprocess.std={value!r} must be positive.")
    return [float(v) for v in value]


class PaperWorld:
    """A paper-scale setting; it satisfies :class:`~rftlib.worlds.protocol.World`, as a miniature world
    does (see the module docstring).

    Build with :meth:`from_config` (or :func:`rftlib.worlds.world.load_world` on its ``world.yaml``).
    """

    kind = KIND

    def __init__(self, name: str, model: str, pretrained: str, data_root: str, id_dataset: str,
                 id_eval_split: str, id_train_split: str, ood: Sequence[str], classnames_name: str,
                 templates_name: str, train_per_class: int | None = None, sha256: str | None = None,
                 image_size: int | None = None, mean: Sequence[float] | None = None,
                 std: Sequence[float] | None = None, device: str = "auto", num_workers: int = 8,
                 decode_threads: int = 16, eval_seed: int = 1234, description: str = "",
                 folder: Path = Path("."), path: str | os.PathLike | None = None) -> None:
        self.name = name
        self.model = model
        self.pretrained = pretrained
        self.data_root_spec = data_root
        self.dataset = id_dataset
        self.id_eval_split = id_eval_split
        self.id_train_split = id_train_split
        self.ood = list(ood)
        self.classnames_name = classnames_name
        self.templates_name = templates_name
        self.train_per_class = train_per_class
        self.expected_sha256 = sha256
        self._image_size = image_size
        self.input_mean = list(mean) if mean is not None else _mean_std(None, "mean", name)
        self.input_std = list(std) if std is not None else _mean_std(None, "std", name)
        self.device = device
        self.num_workers = num_workers
        self.decode_threads = decode_threads
        self.eval_seed = eval_seed
        self.description = description
        self.folder = Path(folder)
        self.path = Path(path) if path is not None else None
        self.id_style = None  # miniature worlds render their ID images in a style; here they are the data set's
        self.unseen_styles: list[str] = []
        self.natural_ood: list[str] = []
        self.split: dict[str, Any] = {}
        self._hash_cache: tuple[tuple, str] | None = None
        self._zs_cache: tuple[tuple, Any] | None = None
        self._train: tuple[LazyImages, torch.Tensor] | None = None

    # ---- construction ---------------------------------------------------------------------
    @classmethod
    def from_config(cls, cfg: Mapping[str, Any], path: str | os.PathLike | None = None) -> "PaperWorld":
        """A setting from the parsed ``world.yaml`` (``path``: that file, for messages and ``folder``).

        Raises:
            ParameterError: an unknown or missing key, or a value that is not allowed (checked
                before anything is read; environment variables are only expanded on use).
        """
        from rftlib.worlds.templates import classnames as _classnames
        from rftlib.worlds.templates import templates as _templates

        where = f"setting file {path}" if path is not None else "paper setting"
        if not isinstance(cfg, Mapping) or cfg.get("kind") != KIND:
            raise ParameterError(f"{where}: a paper setting starts with `kind: {KIND}`.")
        unknown = sorted(set(cfg) - SETTING_KEYS)
        if unknown:
            raise ParameterError(f"{where}: unknown key(s) {unknown}; allowed: {sorted(SETTING_KEYS)}.")
        missing = [k for k in REQUIRED_KEYS if cfg.get(k) in (None, "")]
        if missing:
            raise ParameterError(f"{where}: lacks keys {missing}.")
        name = str(cfg["name"])
        where = f"paper setting {name!r} ({path})" if path is not None else f"paper setting {name!r}"
        for key in ("model", "pretrained", "data_root", "templates"):
            if not isinstance(cfg[key], str):
                raise ParameterError(f"{where}: {key}={cfg[key]!r} must be a string.")
        id_name, eval_split, train_split, per_class = _check_id(cfg["id"], where)
        ood = _check_ood(cfg["ood"], id_name, where)
        classnames_name = cfg.get("classnames") or id_name
        templates_name = cfg["templates"]
        n_classes = len(_classnames(classnames_name))
        if n_classes != len(_classnames(id_name)):
            raise ParameterError(f"{where}: classnames={classnames_name!r} has {n_classes} names; "
                                 f"{id_name} needs {len(_classnames(id_name))} (one per label).")
        _templates(templates_name)  # raises with the allowed names
        size, mean, std = _check_preprocess(cfg.get("preprocess") or {}, where)
        sha = cfg.get("sha256")
        if sha is not None and (not isinstance(sha, str) or not re.fullmatch(r"[0-9a-f]{64}", sha)):
            raise ParameterError(f"{where}: sha256={sha!r} must be 64 lowercase hex digits or null.")
        ints = {}
        for key, default, minimum in (("num_workers", 8, 0), ("decode_threads", 16, 1), ("eval_seed", 1234, 0)):
            v = cfg.get(key, default)
            if isinstance(v, bool) or not isinstance(v, int) or v < minimum:
                raise ParameterError(f"{where}: {key}={v!r} must be an integer >= {minimum}.")
            ints[key] = v
        device = cfg.get("device") or "auto"
        if not isinstance(device, str):
            raise ParameterError(f"{where}: device={device!r} must be a string such as 'auto', 'cuda' or 'cpu'.")
        folder = Path(path).parent if path is not None else Path(".")
        return cls(name=name, model=cfg["model"], pretrained=cfg["pretrained"], data_root=cfg["data_root"],
                   id_dataset=id_name, id_eval_split=eval_split, id_train_split=train_split, ood=list(ood),
                   classnames_name=classnames_name, templates_name=templates_name, train_per_class=per_class,
                   sha256=sha, image_size=size, mean=mean, std=std, device=expand_env(device)[0],
                   description=str(cfg.get("description") or ""), folder=folder, path=path, **ints)

    # ---- what the study uses of a world ----------------------------------------------------------
    @property
    def classnames(self) -> list[str]:
        from rftlib.worlds.templates import classnames

        return classnames(self.classnames_name)

    @property
    def templates(self) -> list[str]:
        from rftlib.worlds.templates import templates

        return templates(self.templates_name)

    @property
    def ood_splits(self) -> list[str]:
        """The splits averaged into "mean OOD accuracy": the distribution-shift data sets."""
        return list(self.ood)

    @property
    def all_splits(self) -> list[str]:
        return ["id", *self.ood]

    @property
    def image_size(self) -> int:
        """Input size of the images: ``preprocess.image_size``, else the model's own."""
        if self._image_size is not None:
            return int(self._image_size)
        import open_clip

        from rftlib.models.factory import check_model_name

        check_model_name(self.model)
        size = (open_clip.get_model_config(self.model) or {}).get("vision_cfg", {}).get("image_size", 224)
        return int(size[0] if isinstance(size, (list, tuple)) else size)

    def transform(self) -> Callable:
        """The image transform of every split (see :func:`image_transform`)."""
        return image_transform(self.image_size)

    def torch_device(self) -> torch.device:
        from rftlib.models.device import pick_device

        return pick_device(self.device)

    # ---- where things are ------------------------------------------------------------------
    def _setting_file(self) -> str:
        from rftlib.files.manifest import repo_root

        if self.path is None:
            return "the setting file"
        try:
            return Path(os.path.abspath(self.path)).relative_to(repo_root()).as_posix()
        except ValueError:
            return str(self.path)

    def _how_to_set(self, key: str, spec: str, example: str) -> str:
        names = env_names(spec)
        if names:
            return f"set {' and '.join(names)} (e.g. `export {names[0]}={example}`)"
        return f"edit `{key}` in {self._setting_file()} (now {spec!r})"

    @property
    def checkpoint(self) -> Path:
        """The local weights file of θ_zs's CLIP (``pretrained`` with environment variables expanded)."""
        value, missing = expand_env(self.pretrained)
        return Path(value) if missing else _repo_path(value)

    def _weights_path(self) -> Path:
        value, missing = expand_env(self.pretrained)
        how = self._how_to_set("pretrained", self.pretrained, "/weights/ViT-B-32-openai.safetensors")
        what = (f"the local file of {self.model}'s pretrained weights (OpenAI's CLIP as a .safetensors or "
                f"weights-only .pt state dict; see {DOCS})")
        if missing:
            raise CheckpointError(f"paper setting {self.name!r}: environment variable {missing[0]} is not set; "
                                  f"{how} to {what}.")
        path = _repo_path(value)
        if not path.is_file():
            env = "".join(f" ({n}={os.environ.get(n)!r})" for n in env_names(self.pretrained))
            raise CheckpointError(f"paper setting {self.name!r}: weights file {path} does not exist{env}; "
                                  f"{how} to {what}.")
        return path

    @property
    def data_root(self) -> Path:
        """The data directory (``data_root`` with environment variables expanded).

        Raises:
            DataNotFoundError: an environment variable it names is unset.
        """
        value, missing = expand_env(self.data_root_spec)
        if missing:
            raise DataNotFoundError(f"paper setting {self.name!r}: environment variable {missing[0]} is not set; "
                                    f"{self._data_hint()}")
        return _repo_path(value)

    def _data_hint(self) -> str:
        folders = {"imagenet": "imagenet/{train,val}/, imagenetv2-matched-frequency-format-val/, sketch/, imagenet-r/, "
                               "imagenet-a/, objectnet-1.0/",
                   "cifar10": "cifar-10-batches-py/, CIFAR-10.1/, CIFAR-10.2/"}[_scale_of(self.dataset) or "imagenet"]
        how = self._how_to_set("data_root", self.data_root_spec, "/data")
        return f"{how} to the folder holding {folders} (layout: rftlib.worlds.paperdata; see {DOCS})."

    def _split_specs(self, train: bool = False) -> dict[str, tuple[str, str | None]]:
        specs: dict[str, tuple[str, str | None]] = {"id": (self.dataset, self.id_eval_split)}
        specs.update({o: (o, None) for o in self.ood})
        if train:
            specs["train"] = (self.dataset, self.id_train_split)
        return specs

    def _get(self, name: str, split: str | None, transform: Callable | None, **kwargs: Any) -> Any:
        from rftlib.worlds.paperdata import get_dataset

        return get_dataset(name, self.data_root, split=split, transform=transform, **kwargs)

    def _size(self, ds: Any, split: str) -> int:
        try:
            return len(ds)
        except DataNotFoundError as e:
            raise DataNotFoundError(f"paper setting {self.name!r}, split {split!r}: {e} {self._data_hint()}") from e

    # ---- data ------------------------------------------------------------------------------------
    def eval_splits(self, n_eval: int | None = None, seed: int | None = None, splits: list[str] | None = None,
                    offset: int = 0) -> dict[str, EvalSplit]:
        """``{split: EvalSplit}`` for ``id`` and every OOD split (or ``splits``): all images of each when
        ``n_eval`` is ``None``, 0 or at least the split's size, else a subset of ``n_eval`` images drawn
        with ``seed`` (default ``eval_seed``; one fixed subset per split, the same for every model).

        Raises:
            ParameterError: a bad ``n_eval``, ``offset`` or split name.
            DataNotFoundError: a data set is missing (the message names the variable to set).
        """
        if n_eval is not None and (isinstance(n_eval, bool) or not isinstance(n_eval, int) or n_eval < 0):
            raise ParameterError(f"n_eval={n_eval!r} must be a number of images per split (None or 0: all).")
        if offset != 0:
            raise ParameterError(f"offset={offset} is not supported by paper setting {self.name!r}: its splits are "
                                 "held-out data sets (use n_eval and seed).")
        names = splits or self.all_splits
        unknown = [s for s in names if s not in self.all_splits]
        if unknown:
            raise ParameterError(f"split(s) {unknown} are not in paper setting {self.name!r}; its splits: {self.all_splits}.")
        seed = self.eval_seed if seed is None else int(seed)
        transform = self.transform()
        specs = self._split_specs()
        out: dict[str, EvalSplit] = {}
        for name in names:
            ds_name, split = specs[name]
            ds = self._get(ds_name, split, transform)
            n = self._size(ds, name)
            indices = None
            if n_eval and n_eval < n:
                rng = np.random.default_rng([seed, zlib.crc32(name.encode())])
                indices = np.sort(rng.choice(n, size=n_eval, replace=False)).tolist()
            out[name] = EvalSplit(ds, indices, num_workers=self.num_workers, name=name)
        return out

    def id_training_data(self) -> tuple[LazyImages, torch.Tensor]:
        """The ID fine-tuning set: every training image (or ``train_per_class`` per class) in a fixed
        seeded order, as a :class:`LazyImages` (decoded when indexed) and a label tensor."""
        if self._train is None:
            kwargs = {"per_class": self.train_per_class} if self.train_per_class else {}
            train = self._get(self.dataset, self.id_train_split, self.transform(), **kwargs)
            self._size(train, f"{self.dataset}/{self.id_train_split}")
            targets = torch.as_tensor(list(train.targets), dtype=torch.long)
            order = torch.randperm(len(targets), generator=torch.Generator().manual_seed(0))
            self._train = (LazyImages(train, order.tolist(), self.decode_threads), targets[order])
        return self._train

    def train_data(self) -> tuple[LazyImages, torch.Tensor]:
        """The same as :meth:`id_training_data` (the fine-tuning pool)."""
        return self.id_training_data()

    def check(self) -> None:
        """Every cheap check (:meth:`problems`): raises :class:`CheckpointError` naming each missing thing."""
        problems = self.problems()
        if problems:
            raise CheckpointError(" ".join(problems))

    def problems(self) -> list[str]:
        """What is missing to run this setting (weights, data sets), each naming what to set; empty
        when all is there. Cheap: looks up files and folders, reads no image (for ``rft`` validation)."""
        out: list[str] = []
        try:
            self._weights_path()
        except CheckpointError as e:
            out.append(str(e))
        try:
            root = self.data_root
        except DataNotFoundError as e:
            return out + [str(e)]
        if not root.is_dir():
            return out + [f"paper setting {self.name!r}: data_root {root} is not a folder; {self._data_hint()}"]
        from rftlib.worlds.paperdata import ImageFolderDataset

        missing = []
        for split, (name, sp) in self._split_specs(train=True).items():
            ds = self._get(name, sp, None)
            try:
                if isinstance(ds, ImageFolderDataset):
                    ds.image_dir  # noqa: B018 - locates the folder of class folders (lists one folder)
                else:
                    ds.locate()
            except DataNotFoundError as e:
                missing.append(f"{split} ({e})")
        if missing:
            out.append(f"paper setting {self.name!r}: data missing under data_root={str(root)!r}: "
                       + "; ".join(missing) + f". {self._data_hint()}")
        return out

    # ---- checkpoint ------------------------------------------------------------------------------
    def verify_checkpoint(self) -> str:
        """The weights file's sha256, checked against ``sha256`` when the setting gives one.

        Raises:
            CheckpointError: the file is not configured, missing, or does not match.
        """
        from rftlib.models.checkpoints import sha256

        path = self._weights_path()
        st = path.stat()
        key = (str(path), st.st_size, st.st_mtime_ns)
        if self._hash_cache is None or self._hash_cache[0] != key:
            self._hash_cache = (key, sha256(path))
        digest = self._hash_cache[1]
        if self.expected_sha256 and digest != self.expected_sha256:
            raise CheckpointError(f"paper setting {self.name!r}: weights file {path} has sha256 {digest}, but the "
                                  f"setting expects {self.expected_sha256}; use the right file or update `sha256` "
                                  f"in {self._setting_file()}.")
        return digest

    def manifest(self) -> dict[str, Any]:
        """What the zero-shot step records of θ_zs: no pretraining history (OpenAI pretrained it)."""
        return {"kind": KIND, "world": self.name, "model": self.model, "pretrained": self.checkpoint.name,
                "sha256": self.verify_checkpoint(), "history": [],
                "platform": {"system": platform.system(), "machine": platform.machine()}}

    def load_clip(self, checkpoint: str | os.PathLike | None = None, verify: bool = True):
        """The pretrained CLIP and tokenizer on :meth:`torch_device` (``checkpoint`` overrides the file)."""
        from rftlib.models.factory import create_clip

        return create_clip(self.model, pretrained=self._weights_for(checkpoint, verify), device=self.torch_device())

    def _weights_for(self, checkpoint: str | os.PathLike | None, verify: bool) -> Path:
        if checkpoint is not None:
            return Path(checkpoint)
        if verify:
            self.verify_checkpoint()
        return self._weights_path()

    def zeroshot_classifier(self, checkpoint: str | os.PathLike | None = None, verify: bool = True):
        """θ_zs: the CLIP image tower with the zero-shot head (class names × templates), normalizing
        its [0, 1] inputs with ``input_mean``/``input_std``. Built once per file, then copied."""
        from rftlib.models.factory import build_classifier, create_clip

        path = self._weights_for(checkpoint, verify)
        st = path.stat() if path.is_file() else None
        key = (str(path), st.st_size if st else None, st.st_mtime_ns if st else None, self.device)
        if self._zs_cache is None or self._zs_cache[0] != key:
            self._zs_cache = None
            clip, tok = create_clip(self.model, pretrained=path, device=self.torch_device())
            clf = build_classifier(clip, tok, self.classnames, self.templates, self.input_mean, self.input_std)
            del clip
            self._zs_cache = (key, clf)
        return copy.deepcopy(self._zs_cache[1])

    def __repr__(self) -> str:
        return (f"PaperWorld({self.name!r}: {self.model}, id={self.dataset}/{self.id_eval_split}, "
                f"ood={self.ood})")


__all__ = ["PaperWorld", "EvalSplit", "LazyImages", "image_transform", "expand_env", "env_names",
           "is_paper_setting", "ENV_WEIGHTS", "ENV_DATA"]


def _check_id(idc: Any, where: str) -> tuple[str, str, str, int | None]:
    """The checked ``id:`` entry of a paper setting: data set, evaluation split, training split and
    images per class (``None``: all)."""
    from rftlib.worlds.paperdata import DATASETS, ImageFolderDataset

    raw = idc
    if isinstance(idc, str):
        idc = {"dataset": idc}
    if not isinstance(idc, Mapping) or "dataset" not in idc:
        raise ParameterError(f"{where}: id={raw!r} must be a mapping with at least `dataset`.")
    bad = sorted(set(idc) - ID_KEYS)
    if bad:
        raise ParameterError(f"{where}: id has unknown key(s) {bad}; allowed: {sorted(ID_KEYS)}.")
    id_name = idc["dataset"]
    if id_name not in ("imagenet", "cifar10"):
        raise ParameterError(f"{where}: id.dataset={id_name!r} must be 'imagenet' or 'cifar10' (a data set with a training split).")
    splits = DATASETS[id_name].splits
    eval_split = idc.get("eval_split") or ("val" if id_name == "imagenet" else "test")
    train_split = idc.get("train_split") or "train"
    for key, value in (("eval_split", eval_split), ("train_split", train_split)):
        if value not in splits:
            raise ParameterError(f"{where}: id.{key}={value!r} is not a split of {id_name}; allowed: {list(splits)}.")
    per_class = idc.get("train_per_class")
    if per_class is not None:
        if isinstance(per_class, bool) or not isinstance(per_class, int) or per_class <= 0:
            raise ParameterError(f"{where}: id.train_per_class={per_class!r} must be a positive integer or null (all).")
        if not issubclass(DATASETS[id_name], ImageFolderDataset):
            raise ParameterError(f"{where}: id.train_per_class applies to image-folder data sets (imagenet), not {id_name!r}.")
    return id_name, eval_split, train_split, per_class


def _check_ood(ood: Any, id_name: str, where: str) -> list[str]:
    """The checked ``ood:`` list: distinct data sets labelled in the ID data set's label space."""
    from rftlib.worlds.paperdata import DATASETS

    if not isinstance(ood, (list, tuple)) or not ood or not all(isinstance(o, str) for o in ood):
        raise ParameterError(f"{where}: ood={ood!r} must be a non-empty list of data set names.")
    scale = _scale_of(id_name)
    for o in ood:
        if o not in DATASETS or o == id_name:
            raise ParameterError(f"{where}: ood entry {o!r} is not a distribution shift; known data sets: {sorted(DATASETS)}.")
        if _scale_of(o) != scale:
            raise ParameterError(f"{where}: ood entry {o!r} is not labelled in {id_name}'s label space; "
                                 f"{id_name}'s shifts: {[s for s in DATASETS if _scale_of(s) == scale and s != id_name]}.")
    if len(set(ood)) != len(ood):
        raise ParameterError(f"{where}: ood={list(ood)} repeats a data set.")
    return list(ood)


def _check_preprocess(pre: Any, where: str) -> tuple[int | None, Any, Any]:
    """The checked ``preprocess:`` mapping: image size (``None``: the model's), mean and std."""
    if not isinstance(pre, Mapping) or set(pre) - PREPROCESS_KEYS:
        raise ParameterError(f"{where}: preprocess={pre!r} must be a mapping with keys among {sorted(PREPROCESS_KEYS)}.")
    size = pre.get("image_size")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or size <= 0):
        raise ParameterError(f"{where}: preprocess.image_size={size!r} must be a positive integer or null (the model's).")
    return size, _mean_std(pre.get("mean"), "mean", where), _mean_std(pre.get("std"), "std", where)
