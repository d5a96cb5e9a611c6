"""The one interface of a world: what every study step asks of it.

A miniature world (:class:`rftlib.worlds.world.MiniWorld`, ``kind == "mini"``) and a paper-scale
setting (:class:`rftlib.worlds.paper.PaperWorld`, ``kind == "paper"``) both satisfy :class:`World`,
so a step takes either from :func:`rftlib.worlds.world.load_world` and never asks which it has.

Example:
    >>> from rftlib.worlds.world import load_world
    >>> isinstance(load_world("digits"), World), load_world("digits").kind
    (True, 'mini')
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Protocol, runtime_checkable

import torch

__all__ = ["World", "KINDS"]

#: the kinds of world: miniature (pretrained here) and paper-scale (OpenAI weights, real data sets)
KINDS = ("mini", "paper")


@runtime_checkable
class World(Protocol):
    """A world: its model and classes, its splits, its θ_zs checkpoint and the cheap checks of them."""

    kind: str
    name: str
    model: str
    dataset: str
    input_mean: list[float]
    input_std: list[float]

    @property
    def classnames(self) -> list[str]:
        """The class names, in label order."""

    @property
    def templates(self) -> list[str]:
        """The zero-shot prompt templates (``"a photo of a {}."``)."""

    @property
    def ood_splits(self) -> list[str]:
        """The splits averaged into mean OOD accuracy."""

    @property
    def all_splits(self) -> list[str]:
        """Every evaluation split: ``id``, the OOD splits, and any others the world reports."""

    @property
    def checkpoint(self) -> Path:
        """The file θ_zs is loaded from."""

    def check(self) -> None:
        """Every cheap check (files, checksums; no model built, no image read); raises
        :class:`rftlib.errors.RftError` naming the problem and the fix."""

    def verify_checkpoint(self) -> str:
        """The θ_zs checkpoint's sha256, once checked; raises :class:`rftlib.errors.CheckpointError`."""

    def manifest(self) -> dict[str, Any]:
        """What the zero-shot step records of θ_zs (its pretraining, or where it came from)."""

    def eval_splits(self, n_eval: int, seed: int, splits: list[str] | None = None) -> Mapping[str, Any]:
        """The evaluation splits by name: ``(images, labels)`` or a data set of them."""

    def id_training_data(self) -> tuple[Any, torch.Tensor]:
        """The ID fine-tuning set: images (indexable, float in [0, 1]) and labels."""

    def load_clip(self, checkpoint: str | Path | None = None, verify: bool = True) -> tuple[Any, Any]:
        """The pretrained CLIP model and its tokenizer."""

    def zeroshot_classifier(self, checkpoint: str | Path | None = None, verify: bool = True) -> torch.nn.Module:
        """θ_zs: the image classifier with the zero-shot head (prompts × classes)."""
