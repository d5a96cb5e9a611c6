"""What the study's steps share: grid files, fine-tuned runs, the endpoints θ_zs and θ_ft, run
selection, the sharpness data and the upstream steps' tables.

Fine-tuned weights live in ``<runs_root>/<world>/<run>/theta_ft.safetensors`` with a
``manifest.json`` (recipe, seed, parent checkpoint hash, versions, commit, timings), written by
:mod:`rftlib.steps.finetune`.

Example:
    >>> grid = load_grid("notebooks/params/grids/quick.yaml")
    >>> [r.name for r in grid], grid[0].n_train
    (['lr1e-4', 'lr1e-3', 'lr1e-3-aug'], 5120)
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import pandas as pd
import torch
import yaml

from rftlib.core.interpolation import check_compatible
from rftlib.core.verdicts import Claim
from rftlib.errors import CheckpointError, NumericalError, ParameterError
from rftlib.files.manifest import repo_path, repo_root
from rftlib.models.checkpoints import load_state_dict, sha256
from rftlib.models.finetune import Recipe
from rftlib.worlds.world import World


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
    p = repo_path(path)
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
    recipes = [Recipe.from_dict(r, **(cfg.get("defaults") or {})) for r in _with_seeds(cfg, path)]
    names = [r.name for r in recipes]
    if len(set(names)) != len(names):
        raise ParameterError(f"grid file {path}: run names must be unique, got {names}.")
    if only:
        unknown = [n for n in only if n not in names]
        if unknown:
            raise ParameterError(f"runs {unknown} are not in grid {path}; its runs: {names}.")
        recipes = [r for r in recipes if r.name in only]
    return recipes


def _with_seeds(cfg: dict, path: str | Path) -> list[dict]:
    """The grid's runs, each repeated once per seed of ``seeds:`` (named ``<run>-s<seed>``) when the file has that key; else the runs as written.

    Example:
        >>> [r["name"] for r in _with_seeds({"seeds": [0, 1], "runs": [{"name": "a", "lr": 1e-3}]}, "g")]
        ['a-s0', 'a-s1']
    """
    seeds = cfg.get("seeds")
    if seeds is None:
        return cfg["runs"]
    if (not isinstance(seeds, list) or not seeds or len(set(map(str, seeds))) != len(seeds)
            or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds)):
        raise ParameterError(f"grid file {path}: seeds={seeds!r} must be a non-empty list of distinct "
                             "integers >= 0 (each run is fine-tuned once per seed).")
    out = []
    for r in cfg["runs"]:
        if not isinstance(r, dict) or "seed" in r:
            raise ParameterError(f"grid file {path}: run {r!r} sets its own seed; with `seeds:` the seed "
                                 "comes from that list: remove the run's `seed`.")
        out += [{**r, "name": f"{r.get('name')}-s{s}", "seed": s} for s in seeds]
    return out


def run_folder(runs_root: str | Path, world: str, run: str) -> Path:
    return repo_path(runs_root) / world / run


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



def load_endpoints(world: World, run: str | None = None, runs_root: str | Path = "runs"
                   ) -> tuple[torch.nn.Module, dict[str, torch.Tensor], dict[str, torch.Tensor] | None]:
    """The world's zero-shot classifier, a copy of its weights θ_zs, and θ_ft of ``run`` (or ``None``).

    θ_ft is checked against θ_zs (:func:`check_endpoints`: same keys, shapes, dtypes, finite weights)."""
    model = world.zeroshot_classifier()
    theta_zs = {k: v.clone() for k, v in model.state_dict().items()}
    if run is None:
        return model, theta_zs, None
    theta_ft = load_theta_ft(world, run, runs_root)
    check_endpoints(theta_zs, theta_ft)
    return model, theta_zs, theta_ft


def check_endpoints(theta_zs: Mapping[str, Any], theta_ft: Mapping[str, Any], num_classes: int | None = None,
                    head_key: str = "head.weight") -> None:
    """Check θ_zs and θ_ft before interpolating between them.

    Same keys, shapes and dtypes (:func:`rftlib.core.interpolation.check_compatible`); when
    ``num_classes`` is given, a head ``head_key`` with one row per class in both; every floating
    tensor finite.

    Raises:
        ParameterError: mismatched architectures or class counts (naming the key and both shapes).
        NumericalError: a NaN or infinite weight (naming the endpoint and the key).

    Example:
        >>> zs = {"head.weight": torch.zeros(3, 4)}
        >>> check_endpoints(zs, {"head.weight": torch.ones(3, 4)}, num_classes=3)
        >>> check_endpoints(zs, {"head.weight": torch.ones(3, 4)}, num_classes=10)
        Traceback (most recent call last):
        ...
        rftlib.errors.ParameterError: num_classes=10 does not match the head: head.weight of theta_zs has 3 rows (one per class); allowed: 3, or endpoints built for 10 classes
    """
    check_compatible(theta_zs, theta_ft)
    if num_classes is not None:
        _check_head(theta_zs, num_classes, head_key)
    for name, theta in (("theta_zs", theta_zs), ("theta_ft", theta_ft)):
        for k, v in theta.items():
            if isinstance(v, torch.Tensor) and v.is_floating_point() and not bool(torch.isfinite(v).all()):
                n_bad = int((~torch.isfinite(v)).sum())
                raise NumericalError(f"{name}[{k!r}] holds {n_bad} NaN/inf value(s) of {v.numel()}; "
                                     "the checkpoint is corrupt or training diverged: re-create it.")


def _check_head(theta_zs: Mapping[str, Any], num_classes: int, head_key: str) -> None:
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 1:
        raise ParameterError(f"num_classes={num_classes!r} is not a class count; allowed: an integer >= 1")
    if head_key not in theta_zs:
        heads = [k for k in theta_zs if "head" in k]
        raise ParameterError(f"head_key={head_key!r} is not a key of the endpoints; allowed: "
                             + (", ".join(repr(k) for k in heads) if heads else "the key of the classification head"))
    rows = theta_zs[head_key].shape[0] if theta_zs[head_key].ndim else 0
    if rows != num_classes:
        raise ParameterError(f"num_classes={num_classes} does not match the head: {head_key} of theta_zs has "
                             f"{rows} rows (one per class); allowed: {rows}, or endpoints built for {num_classes} classes")


SELECTIONS = ("all", "failure", "failure+best")


def select_runs(summary: pd.DataFrame, mode: str = "failure+best", max_runs: int | None = None) -> list[str]:
    """Runs to study: ``all``; ``failure`` (runs in the failure mode); ``failure+best`` (those plus the
    run with the largest OOD gain over both endpoints). At most ``max_runs`` failure runs, the
    deepest failures (most negative gain over θ_zs) first.

    Example:
        >>> s = pd.DataFrame({"run": ["a", "b", "c"], "failure_mode": [True, False, True],
        ...                   "gain_over_zs": [-0.02, 0.01, -0.05], "gain_over_both": [-.02, .01, -.05]})
        >>> select_runs(s), select_runs(s, "failure", max_runs=1)
        (['c', 'a', 'b'], ['c'])
    """
    if mode not in SELECTIONS:
        raise ParameterError(f"run selection {mode!r} must be one of {SELECTIONS}.")
    if mode == "all":
        return list(summary["run"])
    fail = summary[summary["failure_mode"].astype(bool)].sort_values("gain_over_zs")
    runs = list(fail["run"])[: max_runs if max_runs else None]
    if mode == "failure+best":
        best = summary.sort_values("gain_over_both", ascending=False)["run"].iloc[0]
        if best not in runs:
            runs.append(best)
    return runs


def sharpness_data(world: World, n: int) -> tuple:
    """The first ``n`` ID training images (clean, no augmentation) and labels: sharpness is measured on
    training data, as in the reference study."""
    x, y = world.id_training_data()
    if n > len(x):
        raise ParameterError(f"n_examples={n} exceeds the {len(x)} training images of world {world.name!r}.")
    if not isinstance(x, torch.Tensor):  # lazily decoded images (a paper setting): decode the n used
        return x[torch.arange(n)], y[:n]
    return x[:n], y[:n]


def read_upstream(folder: str | Path, table: str, step: str, world: str) -> pd.DataFrame:
    """Table ``table`` of an upstream step's results folder; a missing one names the command that writes it.

    Example:
        >>> read_upstream("/nonexistent/x", "summary", "interpolate", "fashion")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        FileNotFoundError: /nonexistent/x/summary.csv does not exist: run the interpolate step first: rft run notebooks/interpolate.ipynb -p world=fashion --out /nonexistent/x
    """
    path = repo_path(folder) / f"{table}.csv"
    if not path.is_file():
        shown = Path(folder).as_posix()
        raise FileNotFoundError(f"{shown}/{table}.csv does not exist: run the {step} step first: "
                                f"rft run notebooks/{step}.ipynb -p world={world} --out {shown}")
    return pd.read_csv(path)


@dataclass
class StepResults:
    """What a step's ``run`` returns: the world, the tables the notebook writes (name → table, in
    writing order), claim rows (only the evidence step, :mod:`rftlib.steps.evidence`, has them: each
    claim has one writer), and other facts the notebook shows (``info``)."""

    world: World
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    claims: list[Claim] = field(default_factory=list)
    info: dict[str, Any] = field(default_factory=dict)
