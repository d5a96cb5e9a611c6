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

import json
import os
import re
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import torch
import yaml

from rftlib.worlds import data as _data
from rftlib.worlds.corpus import ClassNames, zero_shot_templates
from rftlib.errors import CheckpointError, ParameterError
from rftlib.worlds.shifts import STYLES, check_styles, render_split, upscale_to

REPO_ROOT = Path(__file__).resolve().parents[2]
WORLDS_DIR = Path(os.environ.get("RFT_WORLDS", REPO_ROOT / "worlds"))
NATURAL_OOD = ("uci-digits",)
DATASETS = ("fashion-mnist", "mnist5k")


def available_worlds() -> list[str]:
    """Names of the worlds under ``worlds/``."""
    return sorted(p.parent.name for p in WORLDS_DIR.glob("*/world.yaml"))


@dataclass
class World:
    """A miniature world (see the module docstring); build with :func:`load_world`."""

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
    def _recreate_hint(self) -> str:
        return (f"restore it with `git checkout -- worlds/{self.name}/` or re-create it by pretraining "
                f"(`rft run notebooks/zeroshot.ipynb -p world={self.name} -p recreate=true`)")

    def manifest(self) -> dict[str, Any]:
        """The shipped checkpoint's manifest (``worlds/<name>/manifest.json``).

        Raises:
            CheckpointError: the manifest is missing, or is not a JSON object (the message names the
                world, the problem and the fix).
        """
        where = f"worlds/{self.name}/manifest.json"
        if not self.manifest_path.is_file():
            raise CheckpointError(
                f"world {self.name!r} has no shipped checkpoint manifest at {where}; "
                f"pretrain it with `rft run notebooks/zeroshot.ipynb -p world={self.name} -p recreate=true`."
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

    def verify_checkpoint(self) -> str:
        """Check the shipped checkpoint against its manifest's sha256; returns the hash.

        Raises:
            CheckpointError: the checkpoint or its manifest is missing or corrupt, or the checksum does
                not match; the message names the world.
        """
        from rftlib.models.checkpoints import verify_sha256

        if not self.checkpoint.is_file():
            raise CheckpointError(f"world {self.name!r}: checkpoint worlds/{self.name}/zeroshot.safetensors is missing; "
                                  f"{self._recreate_hint()}.")
        expected = self.manifest().get("sha256")
        if not isinstance(expected, str) or not re.fullmatch(r"[0-9a-f]{64}", expected):
            raise CheckpointError(f"world {self.name!r}: worlds/{self.name}/manifest.json has no valid 'sha256' "
                                  f"(found {expected!r}); {self._recreate_hint()}.")
        verify_sha256(self.checkpoint, expected, where=f"world {self.name!r}")
        return expected

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


def load_world(name_or_path: str | Path) -> World:
    """Load a world by name (``worlds/<name>/world.yaml``) or from a YAML path."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml"):
        path = p
    else:
        path = WORLDS_DIR / str(name_or_path) / "world.yaml"
        if not path.is_file():
            raise ParameterError(f"world={name_or_path!r} unknown; available worlds: {available_worlds()} (or a path to a world.yaml).")
    if not path.is_file():
        raise ParameterError(f"world file {path} does not exist.")
    cfg = yaml.safe_load(path.read_text())
    if isinstance(cfg, dict) and cfg.get("kind") == "paper":  # a paper-scale setting: rftlib.worlds.paper
        from rftlib.worlds.paper import PaperWorld

        return PaperWorld.from_config(cfg, path)  # type: ignore[return-value]
    required = ["name", "dataset", "model", "classes", "input_mean", "input_std", "id_style", "pretrain_styles",
                "ood_styles", "unseen_styles", "captions", "split", "pretrain"]
    missing = [k for k in required if k not in cfg]
    if missing:
        raise ParameterError(f"world file {path.name} lacks keys {missing}.")
    if cfg["dataset"] not in DATASETS:
        raise ParameterError(f"world {cfg['name']!r}: dataset={cfg['dataset']!r} must be one of {list(DATASETS)}.")
    check_styles([cfg["id_style"], *cfg["pretrain_styles"], *cfg["ood_styles"], *cfg["unseen_styles"]])
    natural = list(cfg.get("natural_ood") or [])
    bad = [n for n in natural if n not in NATURAL_OOD]
    if bad:
        raise ParameterError(f"world {cfg['name']!r}: natural_ood {bad} unknown; known: {list(NATURAL_OOD)}.")
    classes = [ClassNames(c["name"], list(c.get("synonyms", [])), list(c.get("coarse", []))) for c in cfg["classes"]]
    return World(
        name=cfg["name"], dataset=cfg["dataset"], model=cfg["model"], classes=classes,
        input_mean=list(cfg["input_mean"]), input_std=list(cfg["input_std"]), id_style=cfg["id_style"],
        pretrain_styles=dict(cfg["pretrain_styles"]), ood_styles=list(cfg["ood_styles"]),
        unseen_styles=list(cfg["unseen_styles"]), natural_ood=natural, captions=dict(cfg["captions"]),
        split=dict(cfg["split"]), pretrain=dict(cfg["pretrain"]), folder=path.parent,
    )


class WorldsNotVerifiedError(CheckpointError):
    """One or more worlds failed :func:`verify_checkpoints`; ``verified`` maps the good ones to their
    sha256, ``failed`` maps the bad ones to their error."""

    def __init__(self, message: str, verified: dict[str, str], failed: dict[str, CheckpointError]) -> None:
        super().__init__(message)
        self.verified = verified
        self.failed = failed


def verify_checkpoints(names: list[str] | None = None) -> dict[str, str]:
    """Verify every shipped world checkpoint against its manifest (``rft verify``); name → sha256.

    Every world is checked, also after a failure.

    Raises:
        WorldsNotVerifiedError: (a :class:`CheckpointError`) one line naming every world that failed,
            each with its problem.
    """
    if not names:  # paper settings (kind: paper) ship no checkpoint: verified only when named
        from rftlib.worlds.paper import is_paper_setting

        names = [n for n in available_worlds() if not is_paper_setting(WORLDS_DIR / n / "world.yaml")]
    names = list(names)
    verified: dict[str, str] = {}
    failed: dict[str, CheckpointError] = {}
    for n in names:
        try:
            verified[n] = load_world(n).verify_checkpoint()
        except CheckpointError as e:
            failed[n] = e
    if failed:
        msgs = [" ".join(str(e).split()) for e in failed.values()]
        if len(msgs) == 1:
            message = msgs[0]
        else:
            message = (f"{len(failed)} of {len(names)} world checkpoints failed verification "
                       f"({', '.join(map(repr, failed))}): " + " | ".join(msgs))
        raise WorldsNotVerifiedError(message, verified, failed)
    return verified
