"""The robust fine-tuning study's steps: zero-shot evaluation, the fine-tuning grid, WiSE-FT sweeps.

Each step is one function that a thin notebook calls; it returns tidy tables (``results.md``
columns) and leaves writing and plotting to the notebook. Fine-tuned weights live in
``<runs_root>/<world>/<run>/theta_ft.safetensors`` with a ``manifest.json`` (recipe, seed, parent
checkpoint hash, versions, commit, timings); a run whose manifest matches is reused, an interrupted
one resumes from its last saved epoch.

Example:
    >>> grid = load_grid("notebooks/params/grids/quick.yaml")
    >>> [r.name for r in grid], grid[0].n_train
    (['lr1e-4', 'lr1e-3', 'lr1e-3-aug'], 5120)
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Sequence

import pandas as pd
import torch
import yaml

from rftlib.models.checkpoints import load_state_dict, save_state_dict, sha256
from rftlib.errors import CheckpointError, ParameterError
from rftlib.core.evaluation import evaluate
from rftlib.models.finetune import Recipe, finetune
from rftlib.files.io import atomic_write_json
from rftlib.files.manifest import build_manifest, repo_root
from rftlib.core.sweep import interpolation_sweep
from rftlib.worlds.world import World


def _path(p: str | Path) -> Path:
    p = Path(p)
    return p if p.is_absolute() else repo_root() / p


def yaml_problem(e: yaml.YAMLError) -> str:
    """One line describing a YAML syntax error: the problem and where it is.

    Example:
        >>> try:
        ...     yaml.safe_load("a: [1, 2")
        ... except yaml.YAMLError as e:
        ...     print(yaml_problem(e))
        expected ',' or ']', but got '<stream end>' at line 1, column 9 (while parsing a flow sequence at line 1, column 4)
    """
    if isinstance(e, yaml.MarkedYAMLError) and e.problem:
        text = e.problem
        if e.problem_mark is not None:
            text += f" at line {e.problem_mark.line + 1}, column {e.problem_mark.column + 1}"
        if e.context:
            text += f" ({e.context}"
            if e.context_mark is not None:
                text += f" at line {e.context_mark.line + 1}, column {e.context_mark.column + 1}"
            text += ")"
        return " ".join(text.split())
    lines = str(e).strip().splitlines()
    return lines[0] if lines else type(e).__name__


def load_grid(path: str | Path, only: Sequence[str] | None = None) -> list[Recipe]:
    """Recipes of a grid file (``defaults`` + ``runs``), optionally only the named runs.

    Raises:
        ParameterError: the file is missing, is not valid YAML (the message names the file and the
            YAML problem; the ``yaml.YAMLError`` is its ``__cause__``), or holds a bad recipe.
    """
    p = _path(path)
    if not p.is_file():
        raise ParameterError(f"grid file {path} does not exist; grids live in notebooks/params/grids/.")
    try:
        cfg = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise ParameterError(f"grid file {path} is not valid YAML: {yaml_problem(e)}; fix its syntax.") from e
    if not isinstance(cfg, dict):
        raise ParameterError(f"grid file {path} must hold a mapping with a non-empty list `runs:`, "
                             f"not a {type(cfg).__name__}.")
    if not isinstance(cfg.get("runs"), list) or not cfg["runs"]:
        raise ParameterError(f"grid file {path} must hold a non-empty list `runs:`.")
    recipes = [Recipe.from_dict(r, **(cfg.get("defaults") or {})) for r in cfg["runs"]]
    names = [r.name for r in recipes]
    if len(set(names)) != len(names):
        raise ParameterError(f"grid file {path}: run names must be unique, got {names}.")
    if only:
        unknown = [n for n in only if n not in names]
        if unknown:
            raise ParameterError(f"runs {unknown} are not in grid {path}; its runs: {names}.")
        recipes = [r for r in recipes if r.name in only]
    return recipes


def run_folder(runs_root: str | Path, world: str, run: str) -> Path:
    return _path(runs_root) / world / run


def id_training_data(world: World) -> tuple[torch.Tensor, torch.Tensor]:
    """The ID fine-tuning set: the world's training images drawn in its ID style (clean); a world with
    its own ``id_training_data()`` (a paper setting, :mod:`rftlib.worlds.paper`) provides it."""
    if hasattr(world, "id_training_data"):
        return world.id_training_data()
    from rftlib.worlds.shifts import render_split

    x, y = world.train_data()
    return render_split(x, world.id_style, seed=0), y


def zeroshot_rows(world: World, n_eval: int, checkpoint: str | Path | None = None) -> pd.DataFrame:
    """θ_zs evaluated on every split of the world: rows with ``run = "zeroshot"``, ``alpha = 0``."""
    clf = world.zeroshot_classifier(checkpoint)
    rows = evaluate(clf, world.eval_splits(n_eval), progress=True, desc=f"zero-shot {world.name}")
    return pd.DataFrame([{"world": world.name, "run": "zeroshot", "alpha": 0.0, **r} for r in rows])


def finetune_grid(world: World, recipes: Sequence[Recipe], runs_root: str | Path = "runs",
                  force: bool = False, progress: bool = True) -> pd.DataFrame:
    """Fine-tune every recipe from the world's θ_zs; returns the per-epoch history of all runs.

    A run whose ``manifest.json`` records the same recipe and parent checkpoint is reused
    (``cached = True``), unless ``force``.
    """
    parent = world.verify_checkpoint()
    x, y = id_training_data(world)
    history = []
    for r in recipes:
        folder = run_folder(runs_root, world.name, r.name)
        manifest_path = folder / "manifest.json"
        if manifest_path.is_file() and (folder / "theta_ft.safetensors").is_file() and not force:
            m = json.loads(manifest_path.read_text())
            if m.get("parameters", {}).get("recipe") == r.to_dict() and m.get("inputs", {}).get("theta_zs") == parent:
                history += [{**h, "world": world.name, "cached": True} for h in m.get("history", [])]
                continue
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
        atomic_write_json(manifest_path, m)
        (folder / "state.pt").unlink(missing_ok=True)
        history += [{**h, "world": world.name, "cached": False} for h in hist]
    return pd.DataFrame(history)


def load_theta_ft(world: World, run: str, runs_root: str | Path = "runs") -> dict[str, torch.Tensor]:
    """θ_ft of a finished run, checked against its manifest's sha256."""
    folder = run_folder(runs_root, world.name, run)
    path = folder / "theta_ft.safetensors"
    if not path.is_file():
        raise CheckpointError(f"run {world.name}/{run} has no fine-tuned weights at {path.relative_to(repo_root()) if path.is_relative_to(repo_root()) else path}; "
                              "run the fine-tuning step first (notebooks/finetune.ipynb).")
    m = json.loads((folder / "manifest.json").read_text())
    if m.get("sha256") != sha256(path):
        raise CheckpointError(f"run {world.name}/{run}: theta_ft.safetensors does not match its manifest's sha256; "
                              "the file changed after fine-tuning. Re-run the fine-tuning step with force=True.")
    return load_state_dict(path)


def sweep_runs(world: World, runs: Sequence[str], alphas: Sequence[float], n_eval: int,
               runs_root: str | Path = "runs", progress: bool = True) -> pd.DataFrame:
    """WiSE-FT curves of every run on every split (tidy: world, run, alpha, split, accuracy, loss, n)."""
    model = world.zeroshot_classifier()
    theta_zs = {k: v.clone() for k, v in model.state_dict().items()}
    splits = world.eval_splits(n_eval)
    rows: list[dict[str, Any]] = []
    for run in runs:
        theta_ft = load_theta_ft(world, run, runs_root)
        rows += interpolation_sweep(model, theta_zs, theta_ft, splits, alphas, world=world.name, run=run, progress=progress)
    return pd.DataFrame(rows)


def check_positive(**values: int) -> None:
    """Raise :class:`ParameterError` unless every named value is a positive integer.

    Example:
        >>> check_positive(n_eval=10)
        >>> check_positive(n_eval=0)
        Traceback (most recent call last):
        ...
        rftlib.errors.ParameterError: n_eval=0 must be a positive integer.
    """
    for k, v in values.items():
        if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
            raise ParameterError(f"{k}={v!r} must be a positive integer.")
