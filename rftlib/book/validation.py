"""Parameter checks of the study's notebooks, run before any kernel starts.

One function per notebook (``check_zeroshot``, ``check_finetune``, ``check_interpolate``,
``check_stragglers``, ``check_sharpness``, ``check_sparsity``), each taking the notebook's full
parameter dict (defaults updated with the given values, as :func:`rftlib.book.params.validate_params`
passes it). A notebook names its check in its metadata, ``{"rft": {"validate":
"rftlib.book.validation:check_sharpness"}}``, so ``rft run``, ``rft pipeline`` and
:func:`rftlib.book.runner.run_notebook` reject bad values in milliseconds instead of failing a cell
minutes later.

Each check looks at ranges (counts ≥ 1, radii > 0, fractions in [0, 1)), known names (worlds, grid
files and their runs, granularities, ``hold``, ``kind``, ``norm``, ``rank_by``, ``select``,
interventions, using the owning modules' own constants) and consistency between parameters (a
radius for the claims that is one of the radii measured, sharpness alphas on the interpolation
step's α grid, a ranking that needs α = ½ on the grid). It collects *every* problem and raises one
:class:`~rftlib.errors.ParameterError`; each problem names the parameter, its bad value and what is
allowed, and the list is kept as the error's ``problems`` attribute.

Files are only read when small (a world's YAML, a grid file, an upstream step's manifest or the
``alpha`` column of its curves); a missing upstream result folder is no error, since a pipeline
validates every step before it runs the first.

:func:`check_endpoints` checks a pair of state dicts before an interpolation: same keys, shapes and
dtypes, a head with one row per class, and finite weights.

Example:
    >>> check_sparsity({"ps": [0.5, 1.0], "interventions": ["mask_both"], "n_alpha": 6})
    Traceback (most recent call last):
    ...
    rftlib.errors.ParameterError: bad parameters for notebooks/sparsity.ipynb: ps[1]=1.0 is out of range; allowed: a number in [0, 1) (1 would zero every weight)
"""

from __future__ import annotations

import csv
import difflib
import json
import math
import os
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from rftlib.errors import NumericalError, ParameterError

__all__ = [
    "CHECKS",
    "check_endpoints",
    "check_finetune",
    "check_interpolate",
    "check_sharpness",
    "check_sparsity",
    "check_stragglers",
    "check_zeroshot",
    "interpolation_alphas",
]

#: The α grid of the interpolation step when neither its results nor its notebook say otherwise.
DEFAULT_INTERPOLATION_N_ALPHA = 11
#: Float format of result tables (:func:`rftlib.files.io.atomic_write_csv`); alphas read back are rounded so.
_CSV_FLOAT = "%.6g"


# ---------------------------------------------------------------------------------------------
# Collecting problems


class _Problems:
    """Problems found in one notebook's parameters; :meth:`raise_if_any` raises them together."""

    def __init__(self, notebook: str) -> None:
        self.notebook = notebook
        self.items: list[str] = []

    def add(self, name: str, value: Any, reason: str, allowed: str) -> None:
        self.items.append(f"{name}={value!r} {reason}; allowed: {allowed}")

    def note(self, text: str) -> None:
        self.items.append(text)

    def raise_if_any(self) -> None:
        if self.items:
            err = ParameterError(f"bad parameters for notebooks/{self.notebook}.ipynb: " + "; ".join(self.items))
            err.problems = list(self.items)  # type: ignore[attr-defined]
            raise err


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _int_at_least(p: _Problems, params: Mapping[str, Any], name: str, minimum: int = 1,
                  why: str = "") -> int | None:
    """The integer ``params[name]`` if it is ≥ ``minimum``; else record a problem (absent: None)."""
    if name not in params:
        return None
    v = params[name]
    allowed = f"an integer >= {minimum}" + (f" ({why})" if why else "")
    if not _is_int(v):
        p.add(name, v, "is not an integer", allowed)
        return None
    if v < minimum:
        p.add(name, v, "is too small", allowed)
        return None
    return v


def _seed(p: _Problems, params: Mapping[str, Any]) -> None:
    _int_at_least(p, params, "seed", 0, "numpy and torch seeds are non-negative")


def _nonempty_str(p: _Problems, params: Mapping[str, Any], name: str, allowed: str) -> str | None:
    if name not in params:
        return None
    v = params[name]
    if not isinstance(v, str) or not v.strip():
        p.add(name, v, "is not a usable path", allowed)
        return None
    return v


def _choice(p: _Problems, params: Mapping[str, Any], name: str, allowed: Sequence[str]) -> str | None:
    if name not in params:
        return None
    v = params[name]
    if v not in allowed:
        close = difflib.get_close_matches(str(v), [str(a) for a in allowed], n=1, cutoff=0.6)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        p.add(name, v, f"is unknown{hint}", ", ".join(repr(a) for a in allowed))
        return None
    return v


def _bool(p: _Problems, params: Mapping[str, Any], name: str) -> None:
    if name in params and not isinstance(params[name], bool):
        p.add(name, params[name], "is not a boolean", "true or false")


def _number_list(p: _Problems, params: Mapping[str, Any], name: str, ok: Callable[[float], bool],
                 allowed: str) -> list[float] | None:
    """A non-empty list of numbers each satisfying ``ok``, without repeats; else record problems."""
    if name not in params:
        return None
    v = params[name]
    if not isinstance(v, (list, tuple)) or not v:
        p.add(name, v, "is not a non-empty list", f"a list of numbers, each {allowed}")
        return None
    good = True
    for i, x in enumerate(v):
        if not _is_number(x) or not math.isfinite(float(x)) or not ok(float(x)):
            p.add(f"{name}[{i}]", x, "is out of range" if _is_number(x) else "is not a number", allowed)
            good = False
    if good and len(set(float(x) for x in v)) != len(v):
        p.add(name, list(v), "repeats a value", "each value once")
        good = False
    return [float(x) for x in v] if good else None


def _repo_path(value: str) -> Path:
    """A parameter's path as the notebooks see it: absolute, or relative to the repository root."""
    from rftlib.files.manifest import repo_root

    path = Path(value)
    return path if path.is_absolute() else repo_root() / path


# ---------------------------------------------------------------------------------------------
# Worlds and grids


def _world(p: _Problems, params: Mapping[str, Any]) -> Any:
    """The loaded world named by ``params["world"]`` (a name or a world.yaml path), or ``None``."""
    if "world" not in params:
        return None
    from rftlib.worlds.world import available_worlds, load_world

    v = params["world"]
    names = available_worlds()
    allowed = ", ".join(repr(n) for n in names) + " or the path of a world.yaml"
    if not isinstance(v, str) or not v.strip():
        p.add("world", v, "is not a world name", allowed)
        return None
    if Path(v).suffix in (".yaml", ".yml"):
        path = Path(v) if Path(v).is_absolute() or (Path.cwd() / v).is_file() else _repo_path(v)
        if not path.is_file():
            p.add("world", v, "names a world file that does not exist", allowed)
            return None
        target: str | Path = path
    elif v not in names:
        close = difflib.get_close_matches(v, names, n=1, cutoff=0.6)
        p.add("world", v, "is unknown" + (f" (did you mean {close[0]!r}?)" if close else ""), allowed)
        return None
    else:
        target = v
    try:
        world = load_world(target)
    except Exception as e:  # noqa: BLE001 - any failure to read the world file is a parameter problem
        p.add("world", v, f"cannot be loaded ({type(e).__name__}: {e})", "a valid world.yaml (see worlds/*/world.yaml)")
        return None
    if getattr(world, "kind", None) == "paper":  # a paper setting: its weights and data must be there
        for problem in world.problems():  # each names the setting and the variable to set
            p.note(problem.rstrip("."))
    return world


def _grid_files() -> list[str]:
    from rftlib.files.manifest import repo_root

    folder = repo_root() / "notebooks" / "params" / "grids"
    return sorted(f"notebooks/params/grids/{f.name}" for f in folder.glob("*.y*ml")) if folder.is_dir() else []


def _grid(p: _Problems, params: Mapping[str, Any]) -> list[Any] | None:
    """The recipes of ``params["grid"]`` (loaded with :func:`rftlib.steps.common.load_grid`), or ``None``."""
    if "grid" not in params:
        return None
    import yaml

    from rftlib.steps.common import load_grid

    v = params["grid"]
    allowed = "a grid file, e.g. " + (", ".join(_grid_files()) or "notebooks/params/grids/fashion.yaml")
    if not isinstance(v, str) or not v.strip():
        p.add("grid", v, "is not a path", allowed)
        return None
    if not _repo_path(v).is_file():
        p.add("grid", v, "does not exist", allowed)
        return None
    try:
        return load_grid(v)
    except (ValueError, TypeError, KeyError, AttributeError, OSError, yaml.YAMLError) as e:
        if isinstance(e.__cause__, yaml.YAMLError):  # load_grid's ParameterError for a syntax error
            from rftlib.steps.common import yaml_problem

            e, first = e.__cause__, yaml_problem(e.__cause__)
        else:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        p.add("grid", v, f"cannot be loaded ({type(e).__name__}: {first})", allowed)
        return None


# ---------------------------------------------------------------------------------------------
# The interpolation step's α grid


def _csv_round(a: float) -> float:
    return float(_CSV_FLOAT % a)


def interpolation_alphas(interpolate_dir: str | os.PathLike | None = None) -> tuple[list[float], str]:
    """The α values of the interpolation step, as its results table holds them, and where they came from.

    In order: the ``alpha`` column of ``<interpolate_dir>/curves.csv``; the ``n_alpha`` in its
    ``manifest.json``; the default ``n_alpha`` of ``notebooks/interpolate.ipynb``;
    :data:`DEFAULT_INTERPOLATION_N_ALPHA`. Grid values are rounded as the CSV tables store them.

    Example:
        >>> alphas, source = interpolation_alphas("no/such/folder")
        >>> alphas[0], alphas[-1], "interpolate.ipynb" in source
        (0.0, 1.0, True)
    """
    from rftlib.core.interpolation import alpha_grid

    if interpolate_dir:
        folder = _repo_path(str(interpolate_dir))
        curves = folder / "curves.csv"
        if curves.is_file():
            try:
                with open(curves, newline="", encoding="utf-8") as f:
                    values = sorted({float(row["alpha"]) for row in csv.DictReader(f)})
                if values:
                    return values, f"{interpolate_dir}/curves.csv"
            except (OSError, KeyError, ValueError, TypeError, csv.Error):
                pass
        manifest = folder / "manifest.json"
        if manifest.is_file():
            try:
                n = json.loads(manifest.read_text(encoding="utf-8"))["parameters"]["n_alpha"]
                if _is_int(n) and n >= 2:
                    return [_csv_round(a) for a in alpha_grid(n)], f"n_alpha={n} in {interpolate_dir}/manifest.json"
            except (OSError, KeyError, TypeError, ValueError):
                pass
    n, source = DEFAULT_INTERPOLATION_N_ALPHA, "the interpolation step's default"
    try:
        from rftlib.book.params import notebook_parameters

        spec = notebook_parameters("notebooks/interpolate.ipynb").get("n_alpha")
        if spec is not None and _is_int(spec.default) and spec.default >= 2:
            n, source = spec.default, "the default n_alpha of notebooks/interpolate.ipynb"
    except (ParameterError, OSError):
        pass
    return [_csv_round(a) for a in alpha_grid(n)], f"{source} ({n} points)"


def _alphas_on_grid(p: _Problems, n_alpha: int, interpolate_dir: Any) -> None:
    """Every α of ``alpha_grid(n_alpha)`` must be one of the interpolation step's α values, exactly as
    read back from its table (the sharpness step joins the two tables on α)."""
    from rftlib.core.interpolation import alpha_grid

    grid, source = interpolation_alphas(interpolate_dir if isinstance(interpolate_dir, str) else None)
    on = set(grid)
    if all(a in on for a in alpha_grid(n_alpha)):
        return
    fits = [n for n in range(2, len(grid) + 1) if all(a in on for a in alpha_grid(n))]
    p.add("n_alpha", n_alpha, f"puts alphas off the interpolation step's alpha grid (from {source})",
          ", ".join(map(str, fits)) if fits else "none: rerun the interpolation step with n_alpha = 11")


# ---------------------------------------------------------------------------------------------
# The checks, one per notebook


def check_zeroshot(params: Mapping[str, Any]) -> None:
    """Check the parameters of ``notebooks/zeroshot.ipynb``.

    Raises:
        ParameterError: every problem found (unknown world, n_eval < 1, epochs < 1, a shipped
            checkpoint that is missing while ``recreate`` is false, ...).

    Example:
        >>> check_zeroshot({"world": "fashoin", "n_eval": 0, "recreate": True})  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        rftlib.errors.ParameterError: bad parameters for notebooks/zeroshot.ipynb: world='fashoin' is unknown (did you mean 'fashion'?); allowed: ... or the path of a world.yaml; n_eval=0 is too small; allowed: an integer >= 1
    """
    p = _Problems("zeroshot")
    w = _world(p, params)
    _bool(p, params, "recreate")
    n_eval = _int_at_least(p, params, "n_eval")
    if params.get("epochs") is not None:
        _int_at_least(p, params, "epochs", 1, "or null: the world's own pretraining epochs")
    _nonempty_str(p, params, "out_dir", "a results folder")
    if w is not None:
        _held_out(p, w, n_eval)
        if getattr(w, "kind", None) == "paper":  # weights and data were checked with the world
            if params.get("recreate") is True:
                p.add("recreate", True, f"cannot pretrain paper setting {w.name!r}: its CLIP weights are a given file",
                      "false")
        elif params.get("recreate") is False and not w.checkpoint.is_file():
            p.add("recreate", False, f"needs the shipped checkpoint of world {w.name!r}, which is missing "
                  f"({w.checkpoint.name} in {w.folder.name}/)",
                  "true (pretrain and write the checkpoint), or restore the file with git")
    p.raise_if_any()


def _held_out(p: _Problems, world: Any, n_eval: int | None) -> None:
    """``n_eval`` must not exceed the world's held-out images (known without loading them)."""
    if n_eval is None:
        return
    held = {"fashion-mnist": 10000}.get(world.dataset)
    if world.dataset == "mnist5k":
        held = world.split.get("n_test")
    if _is_int(held) and n_eval > held:
        p.add("n_eval", n_eval, f"exceeds the {held} held-out images of world {world.name!r}",
              f"an integer in [1, {held}]")


def check_finetune(params: Mapping[str, Any]) -> None:
    """Check the parameters of ``notebooks/finetune.ipynb``: the world, the grid (it loads, every
    recipe is valid and has at least one batch of data) and the runs named (they are in the grid).

    Example:
        >>> check_finetune({"grid": "notebooks/params/grids/fashion.yaml", "runs": ["no-such-run"]})  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        rftlib.errors.ParameterError: bad parameters for notebooks/finetune.ipynb: runs[0]='no-such-run' is not a run of notebooks/params/grids/fashion.yaml; allowed: ...
    """
    p = _Problems("finetune")
    _world(p, params)
    recipes = _grid(p, params)
    runs = params.get("runs")
    if "runs" in params:
        if not isinstance(runs, (list, tuple)) or not all(isinstance(r, str) for r in runs):
            p.add("runs", runs, "is not a list of run names", "a list of run names of the grid (empty: all)")
        elif recipes is not None:
            names = [r.name for r in recipes]
            for i, r in enumerate(runs):
                if r not in names:
                    close = difflib.get_close_matches(r, names, n=1, cutoff=0.6)
                    p.add(f"runs[{i}]", r, f"is not a run of {params['grid']}"
                          + (f" (did you mean {close[0]!r}?)" if close and close[0] != r else ""),
                          ", ".join(repr(n) for n in names))
            if len(set(runs)) != len(runs):
                p.add("runs", list(runs), "repeats a run", "each run once")
    if recipes is not None:
        for r in recipes:
            if r.n_train is not None and r.n_train < r.batch_size:
                p.add(f"grid run {r.name!r}: n_train", r.n_train, f"is smaller than batch_size={r.batch_size}",
                      "n_train >= batch_size (or null: all training images)")
    _nonempty_str(p, params, "runs_root", "a folder for fine-tuned weights")
    _bool(p, params, "force")
    _nonempty_str(p, params, "out_dir", "a results folder")
    p.raise_if_any()


def check_interpolate(params: Mapping[str, Any]) -> None:
    """Check the parameters of ``notebooks/interpolate.ipynb``.

    Example:
        >>> check_interpolate({"n_alpha": 2, "n_boot": 100})
        Traceback (most recent call last):
        ...
        rftlib.errors.ParameterError: bad parameters for notebooks/interpolate.ipynb: n_alpha=2 is too small; allowed: an integer >= 3 (the run summary needs an interior alpha in (0, 1))
    """
    p = _Problems("interpolate")
    w = _world(p, params)
    _grid(p, params)
    _nonempty_str(p, params, "runs_root", "the folder of fine-tuned weights")
    _int_at_least(p, params, "n_alpha", 3, "the run summary needs an interior alpha in (0, 1)")
    n_eval = _int_at_least(p, params, "n_eval")
    if w is not None:
        _held_out(p, w, n_eval)
    _int_at_least(p, params, "n_boot")
    _seed(p, params)
    _nonempty_str(p, params, "out_dir", "a results folder")
    p.raise_if_any()


def _block_count(world: Any) -> int | None:
    """Layers of the world's model at ``block`` granularity (embed, residual blocks, post, head)."""
    from rftlib.models.factory import CONFIG_DIR

    cfg = CONFIG_DIR / f"{world.model}.json"
    try:
        layers = json.loads(cfg.read_text(encoding="utf-8"))["vision_cfg"]["layers"]
    except (OSError, KeyError, TypeError, ValueError):
        return None
    return layers + 3 if _is_int(layers) else None


def check_stragglers(params: Mapping[str, Any]) -> None:
    """Check the parameters of ``notebooks/stragglers.ipynb``.

    Besides ranges and names: ``hold="both"`` gives two rows per layer, which the straggler ranking
    cannot order, ``rank_by="barrier_mid"`` needs α = ½ on the grid (an odd ``n_alpha``), and ``k``
    cannot exceed the number of layers of the world's model at ``block`` granularity.

    Example:
        >>> check_stragglers({"hold": "both", "rank_by": "barrier_mid", "n_alpha": 4})
        Traceback (most recent call last):
        ...
        rftlib.errors.ParameterError: bad parameters for notebooks/stragglers.ipynb: hold='both' cannot be ranked: the straggler table then has two rows per layer; allowed: 'ft', 'zs'; n_alpha=4 puts no alpha at 1/2, where rank_by='barrier_mid' is measured; allowed: an odd integer >= 3
    """
    from rftlib.core.layers import GRANULARITIES
    from rftlib.steps.layerwise import RANK_BY, SELECTIONS
    from rftlib.core.stragglers import HOLDS

    p = _Problems("stragglers")
    w = _world(p, params)
    _nonempty_str(p, params, "interpolate_dir", "the interpolation step's results folder")
    _choice(p, params, "select", SELECTIONS)
    _int_at_least(p, params, "max_runs")
    _nonempty_str(p, params, "runs_root", "the folder of fine-tuned weights")
    granularity = _choice(p, params, "granularity", GRANULARITIES)
    hold = _choice(p, params, "hold", HOLDS)
    if hold == "both":
        p.add("hold", hold, "cannot be ranked: the straggler table then has two rows per layer",
              ", ".join(repr(h) for h in HOLDS if h != "both"))
    n_alpha = _int_at_least(p, params, "n_alpha", 2)
    n_eval = _int_at_least(p, params, "n_eval")
    if w is not None:
        _held_out(p, w, n_eval)
    rank_by = _choice(p, params, "rank_by", RANK_BY)
    if rank_by == "barrier_mid" and n_alpha is not None and n_alpha % 2 == 0:
        p.add("n_alpha", n_alpha, "puts no alpha at 1/2, where rank_by='barrier_mid' is measured",
              "an odd integer >= 3")
    k = _int_at_least(p, params, "k")
    if k is not None and w is not None and granularity == "block":
        n_layers = _block_count(w)
        if n_layers is not None and k > n_layers:
            p.add("k", k, f"exceeds the {n_layers} layers of model {w.model} (world {w.name!r}) at block granularity",
                  f"an integer in [1, {n_layers}]")
    _bool(p, params, "controls")
    _seed(p, params)
    _nonempty_str(p, params, "out_dir", "a results folder")
    p.raise_if_any()


def check_sharpness(params: Mapping[str, Any]) -> None:
    """Check the parameters of ``notebooks/sharpness.ipynb``.

    Besides ranges and names: ``rho_claims`` must be one of ``rhos``, and the sharpness alphas
    (``alpha_grid(n_alpha)``) must lie on the interpolation step's α grid, read from
    ``interpolate_dir`` when it holds results (else the interpolation notebook's default, 11 points:
    then ``n_alpha − 1`` must divide 10).

    Example:
        >>> check_sharpness({"rhos": [0.005, -1.0], "rho_claims": 0.01, "kind": "worse"})
        Traceback (most recent call last):
        ...
        rftlib.errors.ParameterError: bad parameters for notebooks/sharpness.ipynb: kind='worse' is unknown (did you mean 'worst'?); allowed: 'worst', 'average'; rhos[1]=-1.0 is out of range; allowed: a finite number > 0; rho_claims=0.01 is not one of the radii measured; allowed: one of rhos=[0.005, -1.0]
    """
    from rftlib.core.layers import GRANULARITIES
    from rftlib.core.sharpness import KINDS, NORMS

    p = _Problems("sharpness")
    _world(p, params)
    _nonempty_str(p, params, "interpolate_dir", "the interpolation step's results folder")
    _nonempty_str(p, params, "stragglers_dir", "the straggler step's results folder")
    _grid(p, params)
    _nonempty_str(p, params, "runs_root", "the folder of fine-tuned weights")
    n_alpha = _int_at_least(p, params, "n_alpha", 2)
    _choice(p, params, "kind", KINDS)
    _choice(p, params, "norm", NORMS)
    _bool(p, params, "adaptive")
    rhos = _number_list(p, params, "rhos", lambda r: r > 0, "a finite number > 0")
    if "rho_claims" in params:
        rc = params["rho_claims"]
        if not _is_number(rc) or not math.isfinite(float(rc)) or rc <= 0:
            p.add("rho_claims", rc, "is not a positive radius", "one of rhos")
        else:
            given = params.get("rhos")
            measured = ([float(r) for r in given if _is_number(r) and math.isfinite(float(r)) and r > 0]
                        if isinstance(given, (list, tuple)) else [])
            if measured and not any(math.isclose(float(rc), r, rel_tol=1e-12, abs_tol=0) for r in measured):
                p.add("rho_claims", rc, "is not one of the radii measured", f"one of rhos={list(given)}")
    n_examples = _int_at_least(p, params, "n_examples")
    m = _int_at_least(p, params, "m")
    if n_examples is not None and m is not None and m > n_examples:
        p.add("m", m, f"exceeds n_examples={n_examples} (a batch cannot be larger than the data)",
              f"an integer in [1, {n_examples}]")
    _int_at_least(p, params, "n_iters")
    _bool(p, params, "logit_norm")
    _choice(p, params, "granularity", GRANULARITIES)
    _int_at_least(p, params, "n_boot")
    _seed(p, params)
    _nonempty_str(p, params, "out_dir", "a results folder")
    if n_alpha is not None:
        _alphas_on_grid(p, n_alpha, params.get("interpolate_dir"))
    p.raise_if_any()


def check_sparsity(params: Mapping[str, Any]) -> None:
    """Check the parameters of ``notebooks/sparsity.ipynb``.

    Example:
        >>> check_sparsity({"interventions": ["mask_bot"], "rho": 0.0})
        Traceback (most recent call last):
        ...
        rftlib.errors.ParameterError: bad parameters for notebooks/sparsity.ipynb: interventions[0]='mask_bot' is unknown (did you mean 'mask_both'?); allowed: 'mask_both', 'mask_ft', 'drop_tau', 'drop_tau_rescaled', 'magnitude'; rho=0.0 is out of range; allowed: a finite number > 0
    """
    from rftlib.core.sparsity import INTERVENTIONS

    p = _Problems("sparsity")
    w = _world(p, params)
    _nonempty_str(p, params, "interpolate_dir", "the interpolation step's results folder")
    _nonempty_str(p, params, "stragglers_dir", "the straggler step's results folder")
    _int_at_least(p, params, "max_runs")
    _nonempty_str(p, params, "runs_root", "the folder of fine-tuned weights")
    _number_list(p, params, "ps", lambda x: 0 <= x < 1, "a number in [0, 1) (1 would zero every weight)")
    if "interventions" in params:
        iv = params["interventions"]
        if not isinstance(iv, (list, tuple)) or not iv:
            p.add("interventions", iv, "is not a non-empty list",
                  "a list of " + ", ".join(repr(i) for i in INTERVENTIONS) + " (the first is judged by claim F4)")
        else:
            for i, x in enumerate(iv):
                if x not in INTERVENTIONS:
                    close = difflib.get_close_matches(str(x), list(INTERVENTIONS), n=1, cutoff=0.6)
                    p.add(f"interventions[{i}]", x, "is unknown" + (f" (did you mean {close[0]!r}?)" if close else ""),
                          ", ".join(repr(k) for k in INTERVENTIONS))
            if len(set(map(str, iv))) != len(iv):
                p.add("interventions", list(iv), "repeats an intervention", "each intervention once")
    _int_at_least(p, params, "n_alpha", 3, "the sparsity summary needs an interior alpha in (0, 1)")
    n_eval = _int_at_least(p, params, "n_eval")
    if w is not None:
        _held_out(p, w, n_eval)
    if "sharpness_p" in params:
        sp = params["sharpness_p"]
        if not _is_number(sp) or not 0 <= sp < 1:
            p.add("sharpness_p", sp, "is out of range", "a number in [0, 1)")
    if "rho" in params:
        rho = params["rho"]
        if not _is_number(rho) or not math.isfinite(float(rho)) or rho <= 0:
            p.add("rho", rho, "is out of range", "a finite number > 0")
    _int_at_least(p, params, "n_boot")
    _seed(p, params)
    _nonempty_str(p, params, "out_dir", "a results folder")
    p.raise_if_any()


#: Notebook stem → its check (what ``metadata.rft.validate`` names).
CHECKS: dict[str, Callable[[Mapping[str, Any]], None]] = {
    "zeroshot": check_zeroshot,
    "finetune": check_finetune,
    "interpolate": check_interpolate,
    "stragglers": check_stragglers,
    "sharpness": check_sharpness,
    "sparsity": check_sparsity,
}


# ---------------------------------------------------------------------------------------------
# Endpoints of an interpolation


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
        >>> import torch
        >>> zs = {"head.weight": torch.zeros(3, 4)}
        >>> check_endpoints(zs, {"head.weight": torch.ones(3, 4)}, num_classes=3)
        >>> check_endpoints(zs, {"head.weight": torch.ones(3, 4)}, num_classes=10)
        Traceback (most recent call last):
        ...
        rftlib.errors.ParameterError: num_classes=10 does not match the head: head.weight of theta_zs has 3 rows (one per class); allowed: 3, or endpoints built for 10 classes
    """
    import torch

    from rftlib.core.interpolation import check_compatible

    check_compatible(theta_zs, theta_ft)
    if num_classes is not None:
        if not _is_int(num_classes) or num_classes < 1:
            raise ParameterError(f"num_classes={num_classes!r} is not a class count; allowed: an integer >= 1")
        if head_key not in theta_zs:
            heads = [k for k in theta_zs if "head" in k]
            raise ParameterError(f"head_key={head_key!r} is not a key of the endpoints; allowed: "
                                 + (", ".join(repr(k) for k in heads) if heads else "the key of the classification head"))
        rows = theta_zs[head_key].shape[0] if theta_zs[head_key].ndim else 0
        if rows != num_classes:
            raise ParameterError(f"num_classes={num_classes} does not match the head: {head_key} of theta_zs has "
                                 f"{rows} rows (one per class); allowed: {rows}, or endpoints built for {num_classes} classes")
    for name, theta in (("theta_zs", theta_zs), ("theta_ft", theta_ft)):
        for k, v in theta.items():
            if isinstance(v, torch.Tensor) and v.is_floating_point() and not bool(torch.isfinite(v).all()):
                n_bad = int((~torch.isfinite(v)).sum())
                raise NumericalError(f"{name}[{k!r}] holds {n_bad} NaN/inf value(s) of {v.numel()}; "
                                     "the checkpoint is corrupt or training diverged: re-create it.")
