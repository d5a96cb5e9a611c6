"""Miniature CLIP worlds: a parameter file (``worlds/<name>/world.yaml``) → data, splits, prompts,
and the shipped zero-shot checkpoint.

A world names its data set, classes (with synonyms and coarse names for captions), the ID style,
the OOD styles seen in pretraining, the unseen styles, natural OOD sets, the caption noise and the
pretraining recipe. Its pretrained CLIP ships as ``worlds/<name>/zeroshot.safetensors`` with a
``manifest.json`` recording recipe, data, seed, versions, commit, sha256 and zero-shot accuracies.

Example:
    >>> w = load_world("digits")
    >>> w.classnames[:3], w.ood_splits[:2]
    (['zero', 'one', 'two'], ['inverted', 'sketch'])
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from dataclasses import dataclass, field
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Any, ClassVar, Mapping

import torch
import yaml

from rftlib.worlds import data as _data
from rftlib.worlds.corpus import ClassNames, zero_shot_templates
from rftlib.errors import CheckpointError, ParameterError, RftError
from rftlib.worlds.protocol import World
from rftlib.worlds.shifts import STYLES, check_styles, render_split, upscale_to

REPO_ROOT = Path(__file__).resolve().parents[2]
WORLDS_DIR = REPO_ROOT / "worlds"  # the default; $RFT_WORLDS replaces it (see worlds_dir)
NATURAL_OOD = ("uci-digits",)
DATASETS = ("fashion-mnist", "mnist5k")


REQUIRED_KEYS = ("name", "dataset", "model", "classes", "input_mean", "input_std", "id_style", "pretrain_styles",
                 "ood_styles", "unseen_styles", "captions", "split", "pretrain")
# the keys of a world file that change the pretrained weights (not comments, evaluation-only keys or order of
# mapping keys); their hash is recorded with the checkpoint
PRETRAINING_KEYS = ("dataset", "model", "classes", "input_mean", "input_std", "pretrain_styles", "captions",
                    "split", "pretrain")
EVAL_ONLY_PRETRAIN_KEYS = ("eval_every",)


def worlds_dir() -> Path:
    """The folder holding ``<name>/world.yaml``: ``$RFT_WORLDS`` if set, else the repository's ``worlds/``.

    Raises:
        ParameterError: ``$RFT_WORLDS`` is set but names no folder (the message names the variable).

    Example:
        >>> (worlds_dir() / "digits" / "world.yaml").is_file()
        True
    """
    env = os.environ.get("RFT_WORLDS")
    if env:
        if not Path(env).is_dir():
            raise ParameterError(f"RFT_WORLDS={env!r} is not a folder; point RFT_WORLDS at a folder holding "
                                 "<name>/world.yaml, or unset it to use the repository's worlds/.")
        return Path(env)
    return WORLDS_DIR


def available_worlds() -> list[str]:
    """Names of the worlds under ``worlds/`` (or ``$RFT_WORLDS``).

    Example:
        >>> {"digits", "fashion"} <= set(available_worlds())
        True
    """
    return sorted(p.parent.name for p in worlds_dir().glob("*/world.yaml"))


def _canonical(value: Any, keep_order: bool = False) -> Any:
    """A JSON-ready form of parsed YAML in which equal meaning gives equal text (numbers as floats,
    mapping keys sorted unless their order matters)."""
    if isinstance(value, Mapping):
        items = [(str(k), _canonical(v)) for k, v in value.items()]
        return [list(kv) for kv in items] if keep_order else dict(sorted(items))
    if isinstance(value, (list, tuple)):
        return [_canonical(v) for v in value]
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        return float(value)
    return str(value)


def world_file_hash(cfg: Mapping[str, Any]) -> str:
    """SHA-256 of a parsed world file's pretraining-relevant content (:data:`PRETRAINING_KEYS`).

    Comments, whitespace, key order inside mappings, ``1e-3`` vs ``0.001`` and the evaluation-only keys
    (``name``, splits and styles used only for evaluation, ``pretrain.eval_every``) do not change it;
    the order of ``pretrain_styles`` and ``classes`` does (it changes the rendered corpus).

    Example:
        >>> a = {"dataset": "mnist5k", "pretrain": {"lr": 1e-3, "epochs": 2}, "ood_styles": ["sketch"]}
        >>> b = {"pretrain": {"epochs": 2.0, "lr": 0.001, "eval_every": 5}, "dataset": "mnist5k"}
        >>> world_file_hash(a) == world_file_hash(b)
        True
        >>> world_file_hash(a) == world_file_hash({**a, "pretrain": {"lr": 1e-3, "epochs": 3}})
        False
    """
    content: dict[str, Any] = {}
    for k in PRETRAINING_KEYS:
        v = cfg.get(k)
        if k == "pretrain" and isinstance(v, Mapping):
            v = {kk: vv for kk, vv in v.items() if kk not in EVAL_ONLY_PRETRAIN_KEYS}
        content[k] = _canonical(v, keep_order=(k == "pretrain_styles"))
    text = json.dumps(content, sort_keys=False, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass
class MiniWorld:
    """A miniature world (see the module docstring); build with :func:`load_world`. It satisfies
    :class:`~rftlib.worlds.protocol.World`, as a paper setting does."""

    kind: ClassVar[str] = "mini"
    name: str
    dataset: str
    model: str
    classes: list[ClassNames]
    input_mean: list[float]
    input_std: list[float]
    id_style: str
    pretrain_styles: dict[str, float]
    ood_styles: list[str]
    unseen_styles: list[str]
    natural_ood: list[str]
    captions: dict[str, float]
    split: dict[str, Any]
    pretrain: dict[str, Any]
    folder: Path = field(default=Path("."))
    world_sha256: str = ""  # world_file_hash of the world file it was loaded from

    @property
    def classnames(self) -> list[str]:
        return [c.name for c in self.classes]

    @property
    def templates(self) -> list[str]:
        """Zero-shot prompt templates: the first plain template of each pretraining style."""
        return zero_shot_templates(list(self.pretrain_styles))

    @property
    def ood_splits(self) -> list[str]:
        """The splits averaged into "mean OOD accuracy": seen styles and natural shifts."""
        return [*self.ood_styles, *self.natural_ood]

    @property
    def all_splits(self) -> list[str]:
        return ["id", *self.ood_splits, *self.unseen_styles]

    @property
    def checkpoint(self) -> Path:
        return self.folder / "zeroshot.safetensors"

    @property
    def manifest_path(self) -> Path:
        return self.folder / "manifest.json"

    # ---- data -----------------------------------------------------------------------------
    def check_data(self) -> None:
        """Find the world's data set without reading an image (cheap, for checks before any work).

        Raises:
            DataNotFoundError: the data set is nowhere, or ``$RFT_FASHION_MNIST`` names a folder
                without it (the message names the variable and the fix).

        Example:
            >>> load_world("digits").check_data()
        """
        if self.dataset == "fashion-mnist":
            _data.find_fashion_mnist()

    @cached_property
    def _train_test(self) -> tuple[tuple[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]:
        if self.dataset == "fashion-mnist":
            return _data.load_fashion_mnist("train"), _data.load_fashion_mnist("test")
        x, y = _data.load_mnist5k()
        tr, te = _data.split_indices(len(x), int(self.split["n_test"]), int(self.split.get("seed", 0)))
        return (x[tr], y[tr]), (x[te], y[te])

    def train_data(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Training images (uint8 ``N×28×28``) and labels: the pretraining and fine-tuning pool."""
        return self._train_test[0]

    def id_training_data(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The ID fine-tuning set: the training images drawn in the world's ID style (clean)."""
        x, y = self.train_data()
        return render_split(x, self.id_style, seed=0), y

    def test_data(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Held-out images and labels, never seen in pretraining or fine-tuning."""
        return self._train_test[1]

    def natural(self, name: str) -> tuple[torch.Tensor, torch.Tensor]:
        if name == "uci-digits":
            x, y = _data.load_sklearn_digits()
            return upscale_to(x, 28, 20), y
        raise ParameterError(f"natural OOD set {name!r} unknown; known: {list(NATURAL_OOD)}.")

    def eval_splits(self, n_eval: int = 1000, seed: int = 1234, splits: list[str] | None = None,
                    offset: int = 0) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
        """Evaluation splits as float RGB tensors in [0, 1]: ``id`` (clean held-out images), each
        OOD style rendered on the same held-out images, and natural OOD sets (first ``n_eval``).

        Each style has its own fixed seed, so every model in the study sees identical pictures.
        """
        if n_eval <= 0:
            raise ParameterError(f"n_eval={n_eval} must be a positive number of images per split.")
        names = splits or self.all_splits
        unknown = [s for s in names if s not in self.all_splits]
        if unknown:
            raise ParameterError(f"split(s) {unknown} are not in world {self.name!r}; its splits: {self.all_splits}.")
        xt, yt = self.test_data()
        if offset + n_eval > len(xt):
            raise ParameterError(f"n_eval={n_eval} (+offset {offset}) exceeds the {len(xt)} held-out images of world {self.name!r}.")
        x, y = xt[offset:offset + n_eval], yt[offset:offset + n_eval]
        out: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        style_ids = {s: i for i, s in enumerate(STYLES)}
        for name in names:
            if name == "id":
                out[name] = (render_split(x, self.id_style, seed), y)
            elif name in NATURAL_OOD:
                xn, yn = self.natural(name)
                out[name] = (render_split(xn[:n_eval], self.id_style, seed), yn[:n_eval])
            else:
                out[name] = (render_split(x, name, seed + 1000 * (1 + style_ids[name])), y)
        return out

    # ---- checkpoint ----------------------------------------------------------------------
    def _shown(self, file: str) -> str:
        """``folder/file`` as the user sees it: ``worlds/<name>/file`` inside the repository."""
        path = self.folder / file
        try:
            return Path(os.path.abspath(path)).relative_to(REPO_ROOT).as_posix()
        except ValueError:
            return str(path)

    def _recreate_hint(self) -> str:
        return (f"restore the world's files with `git checkout -- {self._shown('')}` or pretrain it "
                f"(`rft world pretrain {self.name}`)")

    def manifest(self) -> dict[str, Any]:
        """The shipped checkpoint's manifest (``worlds/<name>/manifest.json``).

        Raises:
            CheckpointError: the manifest is missing, or is not a JSON object (the message names the
                world, the problem and the fix).
        """
        where = self._shown("manifest.json")
        if not self.manifest_path.is_file():
            raise CheckpointError(
                f"world {self.name!r} has no shipped checkpoint manifest at {where}; "
                f"pretrain it with `rft world pretrain {self.name}`."
            )
        try:
            m = json.loads(self.manifest_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise CheckpointError(f"world {self.name!r}: {where} is corrupt, not valid JSON ({e}); "
                                  f"{self._recreate_hint()}.") from e
        if not isinstance(m, dict):
            raise CheckpointError(f"world {self.name!r}: {where} holds a JSON {type(m).__name__}, not an object; "
                                  f"{self._recreate_hint()}.")
        return m

    def check(self) -> None:
        """Every cheap check of the world (:meth:`verify_checkpoint`; the file was checked on loading)."""
        self.verify_checkpoint()

    def verify_checkpoint(self) -> str:
        """Every cheap check of the shipped checkpoint (no model is built); returns its sha256.

        In order: the checkpoint and its manifest exist; the checkpoint's header is readable and
        records this world (a folder copied from another world keeps that world's checkpoint); the
        file's sha256 equals the manifest's; the recorded architecture is the world file's ``model``
        and the header's keys and shapes are that architecture's; the world file's pretraining-relevant
        content (:func:`world_file_hash`) is the one the checkpoint was pretrained from.

        Raises:
            CheckpointError: one line naming the world, the problem and the fix.
        """
        from rftlib.models.checkpoints import read_metadata, verify_sha256

        if not self.checkpoint.is_file():
            raise CheckpointError(f"world {self.name!r}: checkpoint {self._shown('zeroshot.safetensors')} is missing; "
                                  f"{self._recreate_hint()}.")
        m = self.manifest()
        expected = m.get("sha256")
        if not isinstance(expected, str) or not re.fullmatch(r"[0-9a-f]{64}", expected):
            raise CheckpointError(f"world {self.name!r}: {self._shown('manifest.json')} has no valid 'sha256' "
                                  f"(found {expected!r}); {self._recreate_hint()}.")
        meta = read_metadata(self.checkpoint)
        self._check_identity(meta, m)
        verify_sha256(self.checkpoint, expected, where=f"world {self.name!r}")
        self._check_architecture(meta)
        self._check_world_hash(meta, m)
        return expected

    def _check_identity(self, meta: Mapping[str, str], m: Mapping[str, Any]) -> None:
        recorded = {"checkpoint header": meta.get("world"), "manifest": (m.get("parameters") or {}).get("world")}
        for where, world in recorded.items():
            if world is None:
                raise CheckpointError(
                    f"world {self.name!r}: the {where} of {self._shown('zeroshot.safetensors')} records no world, so "
                    f"it cannot be told apart from another world's; pretrain it: `rft world pretrain {self.name}`.")
            if world != self.name:
                raise CheckpointError(
                    f"world {self.name!r}: {self._shown('zeroshot.safetensors')} was pretrained for world {world!r} "
                    f"(its {where} says so), not {self.name!r}: a copied folder keeps the other world's checkpoint; "
                    f"pretrain this world: `rft world pretrain {self.name}`, or restore its own files.")

    def _check_architecture(self, meta: Mapping[str, str]) -> None:
        from rftlib.models.checkpoints import architecture_problem, header_shapes

        model = meta.get("model")
        if model is not None and model != self.model:
            raise CheckpointError(
                f"world {self.name!r}: {self._shown('zeroshot.safetensors')} is a {model!r} checkpoint but "
                f"{self._shown('world.yaml')} says model: {self.model}; restore the world file's model or "
                f"pretrain the world: `rft world pretrain {self.name}`.")
        problem = architecture_problem(header_shapes(self.checkpoint), architecture_shapes(self.model))
        if problem:
            raise CheckpointError(
                f"world {self.name!r}: {self._shown('zeroshot.safetensors')} does not match architecture "
                f"{self.model!r} ({problem}); {self._recreate_hint()}.")

    def _check_world_hash(self, meta: Mapping[str, str], m: Mapping[str, Any]) -> None:
        recorded = m.get("world_sha256")
        if recorded is None:
            raise CheckpointError(
                f"world {self.name!r}: {self._shown('manifest.json')} records no 'world_sha256' (the hash of the world "
                f"file it was pretrained from), so a changed world file would go unnoticed; pretrain it: "
                f"`rft world pretrain {self.name}`.")
        for where, digest in (("manifest", recorded), ("checkpoint header", meta.get("world_sha256", recorded))):
            if digest != self.world_sha256:
                changed = self._changed_keys(m)
                raise CheckpointError(
                    f"world {self.name!r}: {self._shown('world.yaml')} changed since its checkpoint was pretrained "
                    f"(pretraining-relevant content hashes to {self.world_sha256[:12]}…, the {where} records "
                    f"{str(digest)[:12]}…{'; changed: ' + ', '.join(changed) if changed else ''}); restore the world "
                    f"file, or pretrain it again: `rft world pretrain {self.name}`.")

    def _changed_keys(self, m: Mapping[str, Any]) -> list[str]:
        """Best effort: the recorded pretraining parameters that differ from the world file's."""
        params = m.get("parameters") or {}
        now = {"model": self.model, "dataset": self.dataset, "pretrain_styles": self.pretrain_styles,
               "captions": self.captions}
        return [k for k, v in now.items() if k in params and _canonical(params[k]) != _canonical(v)]

    def load_clip(self, checkpoint: str | Path | None = None, verify: bool = True):
        """The pretrained CLIP (and tokenizer) of this world; verifies the shipped checksum."""
        from rftlib.models.factory import create_clip

        if checkpoint is None:
            if verify:
                self.verify_checkpoint()
            checkpoint = self.checkpoint
        return create_clip(self.model, pretrained=checkpoint)

    def zeroshot_classifier(self, checkpoint: str | Path | None = None, verify: bool = True):
        """θ_zs: the world's image classifier with the zero-shot head (open_clip prompts × classes)."""
        from rftlib.models.factory import build_classifier

        clip, tok = self.load_clip(checkpoint, verify)
        return build_classifier(clip, tok, self.classnames, self.templates, self.input_mean, self.input_std)


@lru_cache(maxsize=None)
def architecture_shapes(model: str) -> dict[str, tuple[int, ...]]:
    """Key → shape of the CLIP state dict of architecture ``model`` (built on the meta device: no memory,
    no weights, about 50 ms).

    Example:
        >>> architecture_shapes("rft-tiny")["logit_scale"]
        ()
    """
    import open_clip

    from rftlib.models.factory import check_model_name

    check_model_name(model)
    logging.disable(logging.WARNING)  # open_clip warns that no pretrained weights were loaded
    try:
        net = open_clip.create_model(model, pretrained=None, device="meta")
    finally:
        logging.disable(logging.NOTSET)
    return {k: tuple(v.shape) for k, v in net.state_dict().items()}


def _world_path(name_or_path: str | Path) -> tuple[Path, str | None]:
    """The world file and, when loaded by name, the name it must carry."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml"):
        if not p.is_file():
            raise ParameterError(f"world file {p} does not exist.")
        return p, None
    path = worlds_dir() / str(name_or_path) / "world.yaml"
    if not path.is_file():
        import difflib

        names = available_worlds()
        close = difflib.get_close_matches(str(name_or_path), names, n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ParameterError(f"world={name_or_path!r} unknown{hint}; available worlds: {names} (or a path to a world.yaml).")
    return path, str(name_or_path)


def world_file(name_or_path: str | Path) -> Path:
    """The world file of a world given by name (``worlds/<name>/world.yaml``) or by path.

    Example:
        >>> world_file("digits") == worlds_dir() / "digits" / "world.yaml"
        True
    """
    return _world_path(name_or_path)[0]


def _read_world_file(path: Path) -> dict[str, Any]:
    try:
        cfg = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ParameterError(f"world file {path} is not valid YAML ({' '.join(str(e).split())}).") from e
    if not isinstance(cfg, dict):
        raise ParameterError(f"world file {path} holds a YAML {type(cfg).__name__}, not a mapping of keys.")
    return cfg


def _check_config(cfg: dict[str, Any], path: Path, by_name: str | None) -> None:
    """The world file's own consistency (keys, names, styles); raises :class:`ParameterError`."""
    label = f"world {by_name or cfg.get('name')!r} ({path})"
    missing = [k for k in REQUIRED_KEYS if k not in cfg]
    if missing:
        raise ParameterError(f"{label}: the world file lacks keys {missing}; see worlds/digits/world.yaml for each key.")
    if by_name is not None and cfg["name"] != by_name:
        raise ParameterError(f"{label}: the file says name: {cfg['name']}, but a world's name must be its folder's; "
                             f"set `name: {by_name}` (a copied world file keeps the old name).")
    if cfg["dataset"] not in DATASETS:
        raise ParameterError(f"world {cfg['name']!r}: dataset={cfg['dataset']!r} must be one of {list(DATASETS)}.")
    check_styles([cfg["id_style"], *cfg["pretrain_styles"], *cfg["ood_styles"], *cfg["unseen_styles"]])
    seen = [s for s in cfg["unseen_styles"] if s in cfg["pretrain_styles"]]
    if seen:
        raise ParameterError(f"{label}: unseen_styles {seen} are also in pretrain_styles, so the checkpoint sees "
                             "them in pretraining; an unseen style must be absent from pretrain_styles.")
    natural = list(cfg.get("natural_ood") or [])
    bad = [n for n in natural if n not in NATURAL_OOD]
    if bad:
        raise ParameterError(f"world {cfg['name']!r}: natural_ood {bad} unknown; known: {list(NATURAL_OOD)}.")


def load_world(name_or_path: str | Path) -> World:
    """Load a world by name (``worlds/<name>/world.yaml``) or from a YAML path; checks the world file
    (keys, name = folder name when loaded by name, styles) but not the checkpoint (:func:`check_world`).

    Example:
        >>> load_world("digits").world_sha256 == load_world("digits").world_sha256
        True
    """
    path, by_name = _world_path(name_or_path)
    cfg = _read_world_file(path)
    if cfg.get("kind") == "paper":  # a paper-scale setting: rftlib.worlds.paper
        from rftlib.worlds.paper import PaperWorld

        return PaperWorld.from_config(cfg, path)
    _check_config(cfg, path, by_name)
    classes = [ClassNames(c["name"], list(c.get("synonyms", [])), list(c.get("coarse", []))) for c in cfg["classes"]]
    return MiniWorld(
        name=cfg["name"], dataset=cfg["dataset"], model=cfg["model"], classes=classes,
        input_mean=list(cfg["input_mean"]), input_std=list(cfg["input_std"]), id_style=cfg["id_style"],
        pretrain_styles=dict(cfg["pretrain_styles"]), ood_styles=list(cfg["ood_styles"]),
        unseen_styles=list(cfg["unseen_styles"]), natural_ood=list(cfg.get("natural_ood") or []),
        captions=dict(cfg["captions"]), split=dict(cfg["split"]), pretrain=dict(cfg["pretrain"]),
        folder=path.parent, world_sha256=world_file_hash(cfg),
    )


def check_world(name_or_path: str | Path) -> World:
    """Load a world and run every cheap check of it and its checkpoint (no model built, no kernel):
    the world file's keys and consistency, the checkpoint's presence, header, recorded world and
    architecture, sha256 against the manifest, and the world file's hash against the one recorded.

    Paper settings (``kind: paper``) get their own checks (:meth:`~rftlib.worlds.paper.PaperWorld.check`).

    Raises:
        ParameterError: the world file is unknown, unreadable or inconsistent.
        CheckpointError: the checkpoint is missing, corrupt, another world's, another architecture's,
            or the world file changed since pretraining. Each message is one line naming the world and the fix.

    Example:
        >>> check_world("digits").name
        'digits'
    """
    world = load_world(name_or_path)
    world.check()
    return world


def save_world_checkpoint(world: MiniWorld, state_dict: Mapping[str, torch.Tensor],
                          manifest: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """Write ``worlds/<name>/zeroshot.safetensors`` (header: world, model, world_sha256) and its
    ``manifest.json`` (``manifest`` plus world, model, sha256, size_bytes, world_sha256); returns the manifest.

    Example:
        >>> import tempfile, shutil
        >>> d = Path(tempfile.mkdtemp()) / "digits"
        >>> _ = shutil.copytree(load_world("digits").folder, d, ignore=shutil.ignore_patterns("*.safetensors", "*.json"))
        >>> w = load_world(d / "world.yaml")
        >>> from rftlib.models.factory import create_clip
        >>> w.model = "rft-tiny"; w.world_sha256 = "0" * 64  # a stand-in world for the example
        >>> _ = save_world_checkpoint(w, create_clip("rft-tiny", seed=0)[0].state_dict())
        >>> w.verify_checkpoint() == w.manifest()["sha256"]
        True
    """
    from rftlib.files.io import atomic_write_json, sha256
    from rftlib.models.checkpoints import save_state_dict

    save_state_dict(world.checkpoint, state_dict,
                    metadata={"world": world.name, "model": world.model, "world_sha256": world.world_sha256})
    m = dict(manifest or {})
    m["parameters"] = {**(m.get("parameters") or {}), "world": world.name, "model": world.model}
    m.update(sha256=sha256(world.checkpoint), size_bytes=world.checkpoint.stat().st_size,
             world_sha256=world.world_sha256)
    atomic_write_json(world.manifest_path, m)
    return m


class WorldsNotVerifiedError(CheckpointError):
    """One or more worlds failed :func:`verify_checkpoints`; ``verified`` maps the good ones to their
    sha256, ``failed`` maps the bad ones to their error."""

    def __init__(self, message: str, verified: dict[str, str], failed: dict[str, CheckpointError]) -> None:
        super().__init__(message)
        self.verified = verified
        self.failed = failed


def verify_checkpoints(names: list[str] | None = None) -> dict[str, str]:
    """Run :func:`check_world` on every world (``rft verify``); name → sha256 of its checkpoint.

    Every world is checked, also after a failure; a world file that cannot be read counts as that
    world's failure (its message names the world).

    Raises:
        WorldsNotVerifiedError: (a :class:`CheckpointError`) one line naming every world that failed,
            each with its problem; ``.failed`` maps each to its own error.

    Example:
        >>> sorted(verify_checkpoints(["digits"]))
        ['digits']
    """
    if not names:  # paper settings (kind: paper) ship no checkpoint: verified only when named
        from rftlib.worlds.paper import is_paper_setting

        names = [n for n in available_worlds() if not is_paper_setting(worlds_dir() / n / "world.yaml")]
    names = list(names)
    verified: dict[str, str] = {}
    failed: dict[str, RftError] = {}
    for n in names:
        try:
            verified[n] = load_world(n).verify_checkpoint()  # for a miniature world: every check of check_world
        except RftError as e:
            failed[n] = e
    if failed:
        msgs = [_named(n, e) for n, e in failed.items()]
        if len(msgs) == 1:
            message = msgs[0]
        else:
            message = (f"{len(failed)} of {len(names)} worlds failed verification "
                       f"({', '.join(map(repr, failed))}): " + " | ".join(msgs))
        raise WorldsNotVerifiedError(message, verified, failed)  # type: ignore[arg-type]
    return verified


def _named(name: str, e: Exception) -> str:
    """``e``'s message on one line, starting with the world's name unless it names it already."""
    msg = " ".join(str(e).split())
    return msg if repr(name) in msg else f"world {name!r}: {msg}"
