"""Checks of the parameters several steps share: the world, the grid file, results folders, the number
of held-out images, the layers of the world's model and the interpolation step's α grid.

Each check takes the :class:`~rftlib.steps.parameters.Problems` of one parameter object and records
what is wrong. Files are only read when small (a world's YAML, a grid file, a checkpoint's header, an
upstream step's manifest or the ``alpha`` column of its curves); a missing upstream results folder is
no error, since a pipeline validates every step before it runs the first.

Example:
    >>> world_name("worlds/digits/world.yaml")
    'digits'
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import Any

from rftlib.core.interpolation import alpha_grid
from rftlib.errors import CheckpointError
from rftlib.files.layout import GRIDS_DIR
from rftlib.files.manifest import repo_path, repo_root
from rftlib.steps.parameters import Problems, a_path, at_least, did_you_mean, param

__all__ = ["check_grid", "check_held_out", "check_layers", "check_training_images", "check_world",
           "grid_param", "image_counts", "interpolation_alphas", "layer_counts", "n_boot_param",
           "n_eval_param", "out_dir_param", "runs_root_param", "seed_param", "world_name", "world_param"]

#: Float format of result tables (:func:`rftlib.files.io.atomic_write_csv`); alphas read back are rounded so.
_CSV_FLOAT = "%.6g"


def world_name(world: str) -> str:
    """The name of a world given by name or as a ``world.yaml`` path (its folder's name).

    Example:
        >>> world_name("fashion"), world_name("worlds/digits/world.yaml")
        ('fashion', 'digits')
    """
    p = Path(world)
    return p.parent.name if p.suffix in (".yaml", ".yml") else world


# ---------------------------------------------------------------------------------------------
# The fields several steps declare, with their checks


def world_param(verify: bool = True) -> Any:
    """The ``world`` field: a world's name or world.yaml path, loaded and checked (:func:`check_world`)."""
    return param("fashion", "miniature world (worlds/<name>/world.yaml)", check=lambda p, _: check_world(p, verify))


def grid_param(doc: str) -> Any:
    """The ``grid`` field: a grid file of recipes (:func:`check_grid`)."""
    return param(f"{GRIDS_DIR}/fashion.yaml", doc, check=lambda p, _: check_grid(p))


def runs_root_param(doc: str = "folder of fine-tuned weights") -> Any:
    """The ``runs_root`` field: the folder of fine-tuned weights."""
    return param("runs", doc, check=a_path("the folder of fine-tuned weights"))


def n_eval_param(default: int) -> Any:
    """The ``n_eval`` field: images per evaluation split, at most the world's held-out images."""
    return param(default, "images per evaluation split", check=(at_least(1), check_held_out))


def n_boot_param(doc: str = "bootstrap resamples") -> Any:
    """The ``n_boot`` field."""
    return param(1000, doc, check=at_least(1))


def seed_param(doc: str, why: str = "numpy and torch seeds are non-negative") -> Any:
    """The ``seed`` field."""
    return param(0, doc, check=at_least(0, why))


def out_dir_param(step: str) -> Any:
    """The ``out_dir`` field of a step (the runner sets it)."""
    return param("", f"results folder (empty: book/results/<world>-{step}; the runner sets it)")


# ---------------------------------------------------------------------------------------------
# The checks


def _world_target(p: Problems, v: str) -> str | Path | None:
    from rftlib.worlds.world import available_worlds

    names = available_worlds()
    allowed = ", ".join(repr(n) for n in names) + " or the path of a world.yaml"
    if not v.strip():
        p.add("world", v, "is not a world name", allowed)
        return None
    if Path(v).suffix in (".yaml", ".yml"):
        path = Path(v) if Path(v).is_absolute() or (Path.cwd() / v).is_file() else repo_path(v)
        if not path.is_file():
            p.add("world", v, "names a world file that does not exist", allowed)
            return None
        return path
    if v not in names:
        p.add("world", v, f"is unknown{did_you_mean(v, names)}", allowed)
        return None
    return v


def check_world(p: Problems, verify: bool = True) -> Any:
    """The world named by the ``world`` field (a name or a world.yaml path), loaded; else ``None``.

    A paper setting's missing weights and data are problems; with ``verify``, a checkpoint that is
    there must match its manifest's sha256 (:meth:`rftlib.worlds.protocol.World.check`).
    """
    from rftlib.worlds import world as worlds

    v = p.values["world"]
    target = _world_target(p, v)
    if target is None:
        return None
    try:
        w = p.context["world"] = worlds.load_world(target)
    except Exception as e:  # noqa: BLE001 - any failure to read the world file is a parameter problem
        p.add("world", v, f"cannot be loaded ({type(e).__name__}: {e})", "a valid world.yaml (see worlds/*/world.yaml)")
        return None
    if w.kind == "paper":
        for problem in w.problems():  # each names the setting and the variable to set
            p.note(problem)
        return w
    try:
        w.check_data()  # the data set is there ($RFT_FASHION_MNIST, if set, must hold it), before any kernel
    except (FileNotFoundError, ValueError) as e:
        p.add("world", v, f"cannot find its data ({e})", "a world whose data set is installed, or fix the variable")
        return None
    if verify and w.checkpoint.is_file():
        try:
            w.check()
        except (CheckpointError, ValueError) as e:
            p.add("world", v, f"has a bad checkpoint ({e})",
                  f"a verified world: restore worlds/{w.name}/ with git, or pretrain it: rft world pretrain {w.name}")
    return w


def check_grid(p: Problems) -> list[Any] | None:
    """The recipes of the ``grid`` field (loaded with :func:`rftlib.steps.common.load_grid`, also kept
    as ``p.context["recipes"]``), or ``None``."""
    import yaml

    from rftlib.steps.common import load_grid, yaml_problem

    v = p.values["grid"]
    folder = repo_root() / GRIDS_DIR
    files = sorted(f"{GRIDS_DIR}/{f.name}" for f in folder.glob("*.y*ml")) if folder.is_dir() else []
    allowed = "a grid file, e.g. " + (", ".join(files) or f"{GRIDS_DIR}/fashion.yaml")
    if not v.strip() or not repo_path(v).is_file():
        p.add("grid", v, "does not exist" if v.strip() else "is not a path", allowed)
        return None
    try:
        recipes = load_grid(v)
    except (ValueError, TypeError, KeyError, AttributeError, OSError) as e:
        cause = e.__cause__
        if isinstance(cause, yaml.YAMLError):  # load_grid's ParameterError for a syntax error
            e, first = cause, yaml_problem(cause)
        else:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        p.add("grid", v, f"cannot be loaded ({type(e).__name__}: {first})", allowed)
        return None
    for r in recipes:
        if r.n_train is not None and r.n_train < r.batch_size:
            p.add(f"grid run {r.name!r}: n_train", r.n_train, f"is smaller than batch_size={r.batch_size}",
                  "n_train >= batch_size (or null: all training images)")
    p.context["recipes"] = recipes
    return recipes


def image_counts(world: Any) -> tuple[int | None, int | None]:
    """A miniature world's (training, held-out) images, known without reading them; ``None`` where
    the world cannot tell (a paper setting counts its images only when it reads them).

    Example:
        >>> from rftlib.worlds.world import load_world
        >>> image_counts(load_world("fashion")), image_counts(load_world("digits"))
        ((60000, 10000), (4000, 1000))
    """
    if world.kind != "mini":
        return None, None
    if world.dataset == "fashion-mnist":
        return 60000, 10000
    n_test = world.split.get("n_test")  # mnist5k: 5,000 images, split by the world file
    return (5000 - n_test, n_test) if isinstance(n_test, int) else (None, None)


def check_held_out(p: Problems, name: str = "n_eval") -> None:
    """``name`` (images per evaluation split) must not exceed the held-out images of the world that
    :func:`check_world` loaded."""
    _at_most_images(p, name, held_out=True)


def check_training_images(p: Problems, name: str = "n_examples") -> None:
    """``name`` (training examples used) must not exceed the training images of the world that
    :func:`check_world` loaded."""
    _at_most_images(p, name, held_out=False)


def _at_most_images(p: Problems, name: str, held_out: bool) -> None:
    n, world = p.values[name], p.context.get("world")
    if world is None or not p.ok(name):
        return
    limit = image_counts(world)[1 if held_out else 0]
    if isinstance(limit, int) and n > limit:
        what = "held-out" if held_out else "training"
        p.add(name, n, f"exceeds the {limit} {what} images of world {world.name!r}", f"an integer in [1, {limit}]")


def layer_counts(world: Any) -> dict[str, int]:
    """Layers of the world's classifier at each granularity it can tell without building the model:
    ``block`` from the model's config (embed, residual blocks, post, head), ``module`` and ``tensor``
    from the checkpoint's header (its ``visual.*`` keys plus the head's weight and bias).

    Example:
        >>> from rftlib.worlds.world import load_world
        >>> counts = layer_counts(load_world("fashion"))
        >>> counts["block"] < counts["module"] < counts["tensor"]
        True
    """
    from rftlib.models.factory import CONFIG_DIR

    out: dict[str, int] = {}
    try:
        layers = json.loads((CONFIG_DIR / f"{world.model}.json").read_text(encoding="utf-8"))["vision_cfg"]["layers"]
        out["block"] = int(layers) + 3
    except (OSError, KeyError, TypeError, ValueError):
        pass
    ckpt = world.checkpoint if world.kind == "mini" else None  # a paper setting's weights file is not read here
    if ckpt is not None and ckpt.is_file():
        from safetensors import safe_open

        with safe_open(str(ckpt), framework="pt") as f:
            keys = [k for k in f.keys() if k.startswith("visual.")] + ["head.weight", "head.bias"]
        out["module"] = len({k.rsplit(".", 1)[0] for k in keys})
        out["tensor"] = len(keys)
    return out


def check_layers(p: Problems, name: str = "k") -> None:
    """``name`` (a number of layers) must not exceed the layers of the world's model at ``granularity``."""
    world = p.context.get("world")
    if world is None or not p.ok(name, "granularity"):
        return
    k, granularity = p.values[name], p.values["granularity"]
    n = layer_counts(world).get(granularity)
    if n is not None and k > n:
        p.add(name, k, f"exceeds the {n} layers of model {world.model} (world {world.name!r}) at {granularity} granularity",
              f"an integer in [1, {n}]")


def _csv_round(a: float) -> float:
    return float(_CSV_FLOAT % a)


def interpolation_alphas(interpolate_dir: str, default_n_alpha: int) -> tuple[list[float], str]:
    """The α values of the interpolation step, as its results table holds them, and where they came from.

    In order: the ``alpha`` column of ``<interpolate_dir>/curves.csv``; the ``n_alpha`` in its
    ``manifest.json``; ``default_n_alpha`` (the interpolation step's default). Grid values are
    rounded as the CSV tables store them.

    Example:
        >>> alphas, source = interpolation_alphas("no/such/folder", 11)
        >>> alphas[0], alphas[-1], source
        (0.0, 1.0, "the interpolation step's default n_alpha (11 points)")
    """
    folder = repo_path(interpolate_dir)
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
            if isinstance(n, int) and n >= 2:
                return [_csv_round(a) for a in alpha_grid(n)], f"n_alpha={n} in {interpolate_dir}/manifest.json"
        except (OSError, KeyError, TypeError, ValueError):
            pass
    n = default_n_alpha
    return [_csv_round(a) for a in alpha_grid(n)], f"the interpolation step's default n_alpha ({n} points)"


def check_on_alpha_grid(p: Problems, interpolate_dir: str, default_n_alpha: int, fix: str) -> None:
    """Every α of ``alpha_grid(n_alpha)`` must be one of the interpolation step's α values, exactly as
    read back from its table (the steps join the two tables on α)."""
    if not p.ok("n_alpha", "interpolate_dir"):
        return
    n_alpha = p.values["n_alpha"]
    grid, source = interpolation_alphas(interpolate_dir, default_n_alpha)
    on = set(grid)
    if all(_csv_round(a) in on for a in alpha_grid(n_alpha)):
        return
    fits = [n for n in range(2, len(grid) + 1) if all(_csv_round(a) in on for a in alpha_grid(n))]
    p.add("n_alpha", n_alpha, f"puts alphas off the interpolation step's alpha grid (from {source})",
          ", ".join(map(str, fits)) if fits else f"none: {fix}")
