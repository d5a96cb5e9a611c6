"""Step ``finetune``: every recipe of a grid file fine-tunes the world's θ_zs into a θ_ft.

A run whose ``manifest.json`` records the same recipe and parent checkpoint is reused; an
interrupted one resumes from its last saved epoch (:func:`rftlib.models.finetune.finetune`).

Example:
    >>> Params(grid="notebooks/params/grids/quick.yaml", runs=["lr1e-3"]).runs
    ['lr1e-3']
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import pandas as pd
import torch

from rftlib.files.io import atomic_write_json
from rftlib.files.manifest import build_manifest
from rftlib.models.checkpoints import save_state_dict, sha256
from rftlib.models.finetune import Recipe, finetune
from rftlib.steps.common import StepResults, load_grid, run_folder
from rftlib.steps.fields import grid_param, out_dir_param, runs_root_param, world_param
from rftlib.steps.parameters import Problems, StepParams, did_you_mean, param
from rftlib.worlds.world import World, load_world

__all__ = ["Params", "finetune_grid", "run"]


@dataclass(frozen=True)
class Params(StepParams):
    """Parameters of ``notebooks/finetune.ipynb``."""

    STEP = "finetune"
    world: str = world_param()
    grid: str = grid_param("grid file of fine-tuning recipes")
    runs: list[str] = param((), "run names to fine-tune (empty: every run of the grid)")
    runs_root: str = runs_root_param("folder of fine-tuned weights (not committed)")
    force: bool = param(False, "re-run runs that already have weights")
    out_dir: str = out_dir_param("finetune")

    def check_runs(self, p: Problems) -> None:
        recipes = p.context.get("recipes")
        runs = p.values["runs"]
        if recipes is None:
            return
        names = [r.name for r in recipes]
        for i, r in enumerate(runs):
            if r not in names:
                p.add(f"runs[{i}]", r, f"is not a run of {p.values['grid']}{did_you_mean(r, names)}",
                      ", ".join(repr(n) for n in names))
        if len(set(runs)) != len(runs):
            p.add("runs", list(runs), "repeats a run", "each run once")

    def outputs(self) -> list[Path]:
        """Each run's θ_ft (``<runs_root>/<world>/<run>/theta_ft.safetensors``): not in the results
        folder, so a fresh checkout holding the results but no runs reruns the step.

        Example:
            >>> from rftlib.files.manifest import portable_path
            >>> [portable_path(f) for f in Params(grid="notebooks/params/grids/quick.yaml", runs=["lr1e-3"]).outputs()]
            ['runs/fashion/lr1e-3/theta_ft.safetensors']
        """
        name = load_world(self.world).name
        return [run_folder(self.runs_root, name, r.name) / "theta_ft.safetensors"
                for r in load_grid(self.grid, only=self.runs or None)]


def _cached_history(folder: Path, r: Recipe, parent: str, world: str) -> list[dict] | None:
    """The history of a finished run with this recipe and parent checkpoint, else ``None``."""
    manifest_path = folder / "manifest.json"
    if not (manifest_path.is_file() and (folder / "theta_ft.safetensors").is_file()):
        return None
    m = json.loads(manifest_path.read_text())
    if m.get("parameters", {}).get("recipe") == r.to_dict() and m.get("inputs", {}).get("theta_zs") == parent:
        return [{**h, "world": world, "cached": True} for h in m.get("history", [])]
    return None


def _finetune_one(world: World, r: Recipe, x: torch.Tensor, y: torch.Tensor, folder: Path, parent: str,
                  progress: bool) -> list[dict]:
    """Fine-tune one recipe, write its weights and manifest; its per-epoch history."""
    torch.manual_seed(r.seed)
    model = world.zeroshot_classifier(verify=False)
    t0 = time.time()
    theta_ft, hist = finetune(model, x, y, r, out_dir=folder, progress=progress)
    seconds = time.time() - t0
    save_state_dict(folder / "theta_ft.safetensors", theta_ft, metadata={"world": world.name, "run": r.name})
    m = build_manifest({"world": world.name, "recipe": r.to_dict()}, seed=r.seed, inputs={})
    m["inputs"] = {"theta_zs": parent}
    m["history"] = hist
    m["seconds"] = seconds
    m["sha256"] = sha256(folder / "theta_ft.safetensors")
    atomic_write_json(folder / "manifest.json", m)
    (folder / "state.pt").unlink(missing_ok=True)
    return [{**h, "world": world.name, "cached": False} for h in hist]


def finetune_grid(world: World, recipes: Sequence[Recipe], runs_root: str | Path = "runs",
                  force: bool = False, progress: bool = True) -> pd.DataFrame:
    """Fine-tune every recipe from the world's θ_zs; returns the per-epoch history of all runs.

    A run whose ``manifest.json`` records the same recipe and parent checkpoint is reused
    (``cached = True``), unless ``force``.
    """
    parent = world.verify_checkpoint()
    x, y = world.id_training_data()
    history = []
    for r in recipes:
        folder = run_folder(runs_root, world.name, r.name)
        cached = None if force else _cached_history(folder, r, parent, world.name)
        history += cached if cached is not None else _finetune_one(world, r, x, y, folder, parent, progress)
    return pd.DataFrame(history)


def run(p: Params) -> StepResults:
    """Fine-tune the grid's runs (or those named): tables ``recipes`` (shown) and ``history`` (written)."""
    w = load_world(p.world)
    recipes = load_grid(p.grid, only=p.runs)
    out = StepResults(w, info={"recipes": pd.DataFrame([r.to_dict() for r in recipes]).set_index("name")})
    out.tables["history"] = finetune_grid(w, recipes, runs_root=p.runs_root, force=p.force)
    return out
