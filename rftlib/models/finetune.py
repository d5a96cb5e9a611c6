"""Fine-tuning of θ_zs into θ_ft: end-to-end or linear probe, seeded and resumable.

WiSE-FT's recipe, scaled down: cross-entropy (optional label smoothing), AdamW with weight decay,
linear warmup then cosine decay in steps, gradient-norm clipping, optional augmentation
(:mod:`rftlib.core.augment`). The head starts from the zero-shot head. Randomness (shuffling,
augmentation) is drawn per epoch from generators seeded by ``seed`` and the epoch, so a run resumed
from its last saved epoch equals an uninterrupted one.

Data-parallel: inside an initialized ``torch.distributed`` process group the model is wrapped in
``DistributedDataParallel`` and each rank takes its slice of every global batch; gradients are
averaged, so the result equals a single process with the same global batch and seed.

Example:
    >>> r = Recipe(name="demo", lr=1e-3, epochs=1)
    >>> r.mode, r.augment, r.batch_size
    ('end-to-end', 'none', 256)
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rftlib.core import augment as aug
from rftlib.errors import NumericalError, ParameterError
from rftlib.files.io import atomic_path
from rftlib.models.checkpoints import load_resume_state
from rftlib.progress import bar
from rftlib.core.schedule import cosine_with_warmup

MODES = ("end-to-end", "linear-probe")


@dataclass
class Recipe:
    """A fine-tuning recipe (one run of the grid)."""

    name: str
    lr: float
    epochs: int = 2
    mode: str = "end-to-end"
    augment: str = "none"
    batch_size: int = 256
    weight_decay: float = 0.1
    warmup_steps: int = 50
    grad_clip: float = 1.0
    label_smoothing: float = 0.0
    n_train: int | None = None
    seed: int = 0

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        if not isinstance(self.name, str) or not self.name or "/" in self.name:
            raise ParameterError(f"recipe name={self.name!r} must be a non-empty string without '/'.")
        if not (isinstance(self.lr, (int, float)) and self.lr > 0):
            raise ParameterError(f"recipe {self.name}: lr={self.lr!r} must be a number > 0.")
        for k in ("epochs", "batch_size"):
            v = getattr(self, k)
            if not (isinstance(v, int) and v > 0):
                raise ParameterError(f"recipe {self.name}: {k}={v!r} must be a positive integer.")
        if self.mode not in MODES:
            raise ParameterError(f"recipe {self.name}: mode={self.mode!r} must be one of {MODES}.")
        aug.check_level(self.augment)
        if not (self.weight_decay >= 0 and self.grad_clip > 0 and self.warmup_steps >= 0):
            raise ParameterError(f"recipe {self.name}: weight_decay >= 0, grad_clip > 0 and warmup_steps >= 0 are required.")
        if not 0 <= self.label_smoothing < 1:
            raise ParameterError(f"recipe {self.name}: label_smoothing={self.label_smoothing} must be in [0, 1).")
        if self.n_train is not None and self.n_train <= 0:
            raise ParameterError(f"recipe {self.name}: n_train={self.n_train} must be positive (or null for all).")

    @classmethod
    def from_dict(cls, d: Mapping[str, Any], **defaults: Any) -> "Recipe":
        known = {f.name for f in fields(cls)}
        merged = {**defaults, **d}
        unknown = sorted(set(merged) - known)
        if unknown:
            raise ParameterError(f"recipe {merged.get('name')!r}: unknown keys {unknown}; allowed: {sorted(known)}.")
        return cls(**merged)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _dist() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def finetune(model: nn.Module, x: torch.Tensor, y: torch.Tensor, recipe: Recipe,
             out_dir: str | Path | None = None, progress: bool = True) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """Fine-tune ``model`` (an :class:`~rftlib.models.factory.ImageClassifier` at θ_zs) in place.

    Args:
        model: the classifier; its state is θ_zs on entry and θ_ft on return.
        x, y: ID training images (float RGB in [0, 1], ``N×3×H×W``) and labels.
        recipe: the :class:`Recipe`.
        out_dir: where ``state.pt`` (resume point, saved after every epoch) lives; ``None`` = no resume.
        progress: show a tqdm bar with loss and throughput.

    Returns:
        θ_ft (a detached CPU state dict) and the per-epoch history.
    """
    recipe.validate()
    rank, world = _dist()
    if recipe.batch_size % world:
        raise ParameterError(f"batch_size={recipe.batch_size} must be divisible by the {world} data-parallel ranks.")
    if recipe.n_train is not None:
        x, y = x[:recipe.n_train], y[:recipe.n_train]
    if len(x) < recipe.batch_size:
        raise ParameterError(f"recipe {recipe.name}: {len(x)} training images are fewer than batch_size={recipe.batch_size}.")
    device = next(model.parameters()).device
    steps_per_epoch = len(x) // recipe.batch_size
    params, opt, sched = _optimizer(model, recipe, recipe.epochs * steps_per_epoch)
    state_path = Path(out_dir) / "state.pt" if out_dir is not None else None
    history, start = _resume(state_path, model, opt, sched, recipe, device)
    train_model: nn.Module = model
    if world > 1:
        train_model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    for epoch in range(start, recipe.epochs):
        model.train()
        history.append(_epoch(train_model, params, opt, sched, x, y, recipe, epoch, steps_per_epoch,
                              progress and rank == 0))
        if state_path is not None and rank == 0:
            with atomic_path(state_path) as tmp:
                torch.save({"model": model.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                            "epoch": epoch + 1, "history": history, "recipe": _recipe_key(recipe)}, tmp)
    model.eval()
    for p in model.parameters():
        p.requires_grad_(True)
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}, history


def _recipe_key(recipe: Recipe) -> dict[str, str]:
    """The recipe as stored in (and compared against) a resume state."""
    return {k: str(v) for k, v in recipe.to_dict().items()}


def _optimizer(model: nn.Module, recipe: Recipe, total: int) -> tuple[list[nn.Parameter], Any, Any]:
    """The trained parameters (all, or the head's for a linear probe), AdamW with weight decay on the
    matrices only, and the warm-up-then-cosine schedule over ``total`` steps."""
    for p in model.parameters():
        p.requires_grad_(True)
    if recipe.mode == "linear-probe":
        for p in model.visual.parameters():
            p.requires_grad_(False)
    params = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in params if p.ndim >= 2]
    other = [p for p in params if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": recipe.weight_decay},
                             {"params": other, "weight_decay": 0.0}], lr=recipe.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: cosine_with_warmup(s, recipe.warmup_steps, total))
    return params, opt, sched


def _resume(state_path: Path | None, model: nn.Module, opt: Any, sched: Any, recipe: Recipe,
            device: torch.device) -> tuple[list[dict], int]:
    """Load a saved resume state into model, optimizer and schedule: ``(history, first epoch to run)``;
    ``([], 0)`` when there is none."""
    if state_path is None or not state_path.is_file():
        return [], 0
    state = load_resume_state(state_path, ("model", "optimizer", "scheduler", "history", "epoch", "recipe"), device)
    if state["recipe"] != _recipe_key(recipe):
        raise ParameterError(f"{state_path} belongs to another recipe; delete it or use another out_dir.")
    model.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    return list(state["history"]), int(state["epoch"])


def _epoch(train_model: nn.Module, params: list[nn.Parameter], opt: Any, sched: Any, x: torch.Tensor,
           y: torch.Tensor, recipe: Recipe, epoch: int, steps: int, progress: bool) -> dict:
    """One epoch: shuffling and augmentation drawn from a generator seeded by (seed, epoch), this rank's
    slice of every global batch; returns the epoch's history row."""
    rank, world = _dist()
    device = next(train_model.parameters()).device
    g = torch.Generator().manual_seed(recipe.seed * 1000 + epoch)
    perm = torch.randperm(len(x), generator=g)
    local = slice(rank, None, world)
    losses, t0 = [], time.perf_counter()
    it = bar(range(steps), desc=f"finetune {recipe.name} epoch {epoch + 1}/{recipe.epochs}", disable=not progress,
             unit="step")
    for i in it:
        idx = perm[i * recipe.batch_size:(i + 1) * recipe.batch_size]
        params_aug = aug.sample_params(recipe.augment, len(idx), g)
        li = idx[local]
        xb = aug.apply(x[li].to(device), params_aug, local)
        loss = F.cross_entropy(train_model(xb), y[li].to(device), label_smoothing=recipe.label_smoothing)
        if not torch.isfinite(loss):
            raise NumericalError(f"fine-tuning {recipe.name}: loss is {loss.item()} at epoch {epoch + 1}, step {i}; lower lr.")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, recipe.grad_clip)
        opt.step()
        sched.step()
        losses.append(loss.item())
        if i % 10 == 0:
            it.set_postfix(loss=f"{np.mean(losses[-10:]):.3f}",
                           img_s=f"{(i + 1) * recipe.batch_size / (time.perf_counter() - t0):.0f}")
    return {"run": recipe.name, "epoch": epoch + 1, "train_loss": float(np.mean(losses)),
            "seconds": time.perf_counter() - t0, "steps": steps}
