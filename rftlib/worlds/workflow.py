"""Adding a miniature world: create it from another, pretrain it, verify it, list the worlds.

The verbs of ``rft world``::

    rft world new mine --from digits --set seed=1     # worlds/mine/world.yaml, a changed copy
    rft world pretrain mine [--threads N]             # resumable; writes checkpoint + manifest, verifies
    rft world verify [mine]                           # every cheap check (all worlds without a name)
    rft world list                                    # each world and the state of its checkpoint

:func:`create_world` copies only the world file, never the checkpoint or its manifest (a copied
checkpoint would be another world's, which :meth:`~rftlib.worlds.world.MiniWorld.verify_checkpoint`
refuses). :func:`pretrain_world` runs the world's own pretraining
(:func:`rftlib.worlds.pretrain.recreate_checkpoint`), which saves its full state after every epoch
to ``runs/<name>/pretrain/state.pt`` and resumes from it after a kill.

Example:
    >>> override_key("seed"), override_key("captions.p_wrong")
    ('pretrain.seed', 'captions.p_wrong')
    >>> check_world_name("my world")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    rftlib.errors.ParameterError: world name 'my world' is not allowed; ...
"""

from __future__ import annotations

import difflib
import os
import re
import shutil
from pathlib import Path
from typing import Any, Mapping

import yaml

from rftlib.errors import CheckpointError, ParameterError
from rftlib.files.io import atomic_write_text
from rftlib.worlds import world as _world

#: A world's name: its folder, the prefix of its pipeline steps and of its results folders.
NAME_PATTERN = r"[a-z][a-z0-9-]{0,39}"
#: Short names for the keys one changes most (``--set seed=1``).
ALIASES = {"seed": "pretrain.seed", "epochs": "pretrain.epochs", "batch_size": "pretrain.batch_size",
           "lr": "pretrain.lr", "warmup_steps": "pretrain.warmup_steps", "eval_every": "pretrain.eval_every",
           "p_coarse": "captions.p_coarse", "p_wrong": "captions.p_wrong", "n_test": "split.n_test"}
#: Keys of a world file that ``create_world`` does not change (the name is the new world's).
FIXED_KEYS = ("name", "kind")
STATE_NAME = "state.pt"
RESUME_KEYS = ("model", "optimizer", "scheduler", "history", "epoch", "recipe", "steps_per_epoch")


def check_world_name(name: str) -> str:
    """``name`` if it can name a new world (lower-case letters, digits and ``-``, at most 40).

    Example:
        >>> check_world_name("digits-seed1")
        'digits-seed1'
    """
    if not isinstance(name, str) or not re.fullmatch(NAME_PATTERN, name):
        raise ParameterError(f"world name {name!r} is not allowed; a world name starts with a lower-case letter "
                             "and has only lower-case letters, digits and '-' (at most 40), e.g. 'digits-seed1'.")
    return name


def override_key(key: str) -> str:
    """The full (dotted) world-file key of an override: aliases expanded (:data:`ALIASES`).

    Example:
        >>> override_key("p_wrong")
        'captions.p_wrong'
    """
    return ALIASES.get(key, key)


def _known_keys(cfg: Mapping[str, Any]) -> list[str]:
    """Every key an override may name: top-level keys, ``section.key`` of mapping sections, aliases."""
    keys = [k for k in cfg if k not in FIXED_KEYS]
    keys += [f"{k}.{kk}" for k, v in cfg.items() if isinstance(v, Mapping) for kk in v]
    return sorted({*keys, *ALIASES})


def _same_kind(old: Any, new: Any) -> bool:
    """Whether ``new`` may replace ``old`` (numbers for numbers, integers for integers, lists for lists)."""
    if isinstance(old, bool) or isinstance(new, bool):
        return isinstance(old, bool) and isinstance(new, bool)
    if isinstance(old, int):
        return isinstance(new, int)
    if isinstance(old, float):
        return isinstance(new, (int, float))
    return isinstance(new, type(old))  # str for str, list for list, dict for dict


def apply_world_overrides(cfg: Mapping[str, Any], overrides: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of the parsed world file ``cfg`` with ``overrides`` (``key`` or ``section.key`` → value).

    Raises:
        ParameterError: an unknown key (with "did you mean"), or a value of another type than the key's.

    Example:
        >>> cfg = {"name": "a", "pretrain": {"seed": 0, "lr": 1e-3}, "captions": {"p_wrong": 0.2}}
        >>> apply_world_overrides(cfg, {"seed": 1, "captions.p_wrong": 0.4})["pretrain"]
        {'seed': 1, 'lr': 0.001}
        >>> apply_world_overrides(cfg, {"sed": 1})  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        rftlib.errors.ParameterError: --set sed=1: unknown world key 'sed' (did you mean 'seed'?); ...
    """
    out = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in cfg.items()}
    known = _known_keys(cfg)
    for raw, value in overrides.items():
        key = override_key(raw)
        section, _, sub = key.partition(".")
        if key not in known or key in FIXED_KEYS:
            close = difflib.get_close_matches(raw, known, n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            sections = sorted({k.split(".")[0] for k in known if "." in k})
            raise ParameterError(f"--set {raw}={value}: unknown world key {raw!r}{hint}; allowed: a top-level key of "
                                 f"the world file, SECTION.KEY of a key it has (sections: {', '.join(sections)}), "
                                 f"or {', '.join(sorted(ALIASES))}.")
        old = out[section][sub] if sub else out[section]
        if not _same_kind(old, value):
            raise ParameterError(f"--set {raw}={value!r}: {key} takes a value of type {type(old).__name__} "
                                 f"(now {old!r}); give a value of that type.")
        if sub:
            out[section][sub] = value
        else:
            out[section] = value
    return out


def _check_recipe(cfg: Mapping[str, Any], where: str) -> None:
    """The pretraining recipe's numbers are usable (positive epochs, batch size and learning rate)."""
    r = cfg.get("pretrain") or {}
    for k in ("epochs", "batch_size", "eval_every"):
        if k in r and (not isinstance(r[k], int) or r[k] < 1):
            raise ParameterError(f"{where}: pretrain.{k}={r[k]!r} must be an integer >= 1.")
    if "lr" in r and not float(r["lr"]) > 0:
        raise ParameterError(f"{where}: pretrain.lr={r['lr']!r} must be > 0.")
    for k, v in (cfg.get("captions") or {}).items():
        if not 0.0 <= float(v) <= 1.0:
            raise ParameterError(f"{where}: captions.{k}={v!r} must be a probability in [0, 1].")


def _world_text(cfg: Mapping[str, Any], name: str, base: str, overrides: Mapping[str, Any]) -> str:
    changes = ", ".join(f"{override_key(k)}={v}" for k, v in overrides.items()) or "no changes"
    head = (f"# The miniature world {name!r}: worlds/{base}/world.yaml with {changes}\n"
            f"# (made by `rft world new {name} --from {base}`). Pretrain it with `rft world pretrain {name}`;\n"
            f"# see worlds/{base}/world.yaml for what each key means.\n")
    return head + yaml.safe_dump(dict(cfg), sort_keys=False, default_flow_style=None, width=200, allow_unicode=True)


def create_world(name: str, base: str, overrides: Mapping[str, Any] | None = None) -> Path:
    """Create ``worlds/<name>/world.yaml``: ``worlds/<base>/world.yaml`` with ``overrides`` applied.

    Only the world file is written (never a checkpoint or manifest): the new world has no checkpoint
    until :func:`pretrain_world`. The folder appears whole or not at all (written beside, then renamed).

    Args:
        name: the new world's name (:func:`check_world_name`); it must not exist yet.
        base: an existing miniature world (not a paper setting).
        overrides: ``key`` or ``section.key`` (or an alias, :data:`ALIASES`) → parsed value.

    Returns:
        The new world file.

    Raises:
        ParameterError: a bad or taken name, an unknown base or key, or a change the world file refuses.

    Example:
        >>> import tempfile
        >>> os.environ["RFT_WORLDS"] = d = tempfile.mkdtemp()
        >>> _ = shutil.copytree(_world.WORLDS_DIR / "digits", Path(d) / "digits")
        >>> create_world("digits-s1", "digits", {"seed": 1}).relative_to(d).as_posix()
        'digits-s1/world.yaml'
        >>> _world.load_world("digits-s1").pretrain["seed"], sorted(p.name for p in (Path(d) / "digits-s1").iterdir())
        (1, ['world.yaml'])
        >>> del os.environ["RFT_WORLDS"]
    """
    check_world_name(name)
    root = _world.worlds_dir()
    target = root / name
    if target.exists():
        raise ParameterError(f"world name {name!r} is taken: {_shown(target)} exists already; choose another "
                             f"name (`rft world list` shows the worlds), or delete that folder first.")
    path, _ = _world._world_path(base)
    cfg = _world._read_world_file(path)
    if cfg.get("kind") == "paper":
        raise ParameterError(f"--from {base}: {base!r} is a paper setting, not a miniature world; "
                             f"start from one of {_miniature_worlds()}.")
    overrides = dict(overrides or {})
    cfg = apply_world_overrides(cfg, overrides)
    cfg["name"] = name
    _world._check_config(cfg, target / "world.yaml", name)
    _check_recipe(cfg, f"world {name!r}")
    tmp = root / f".{name}.new-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        atomic_write_text(tmp / "world.yaml", _world_text(cfg, name, base, overrides))
        os.rename(tmp, target)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return target / "world.yaml"


def _shown(path: Path) -> str:
    """``path`` as the user sees it: relative to the repository when inside it."""
    try:
        return Path(os.path.abspath(path)).relative_to(_world.REPO_ROOT).as_posix()
    except ValueError:
        return str(path)


def _miniature_worlds() -> list[str]:
    from rftlib.worlds.paper import is_paper_setting

    return [n for n in _world.available_worlds() if not is_paper_setting(_world.worlds_dir() / n / "world.yaml")]


def _miniature(name: str) -> _world.MiniWorld:
    """The miniature world ``name`` (a paper setting has no pretraining here)."""
    w = _world.load_world(name)
    if w.kind == "paper":
        raise ParameterError(f"world {name!r} is a paper setting: its CLIP weights are a given file, there is nothing "
                             f"to pretrain; check it with `rft world verify {name}`.")
    return w


def resume_folder(name: str) -> Path:
    """Where the pretraining of world ``name`` keeps its per-epoch state: ``runs/<name>/pretrain``
    (the folder :func:`rftlib.worlds.pretrain.recreate_checkpoint` uses too).

    Example:
        >>> resume_folder("digits").relative_to(_world.REPO_ROOT).as_posix()
        'runs/digits/pretrain'
    """
    from rftlib.files.manifest import repo_root

    return repo_root() / "runs" / name / "pretrain"


def _check_resume_state(w: _world.MiniWorld, state_path: Path) -> int:
    """The last finished epoch recorded in ``state_path`` (0 when there is none), checked before any
    model is built: the file must load safely and hold the world's current recipe.

    Raises:
        CheckpointError: the file is corrupt or unsafe (names the file and the fix), or was written
            for another recipe (the world file changed since).
    """
    from rftlib.models.checkpoints import load_resume_state
    from rftlib.worlds.pretrain import recipe_of

    if not state_path.is_file():
        return 0
    state = load_resume_state(state_path, RESUME_KEYS)
    recipe = {k: str(v) for k, v in recipe_of(w).items()}
    if state["recipe"] != recipe:
        changed = sorted(k for k in {*recipe, *state["recipe"]} if recipe.get(k) != state["recipe"].get(k))
        raise CheckpointError(f"resume state {_shown(state_path)} of world {w.name!r} was written with another "
                              f"pretraining recipe (changed: {', '.join(changed)}); start over with "
                              f"`rft world pretrain {w.name} --restart` (or rm {_shown(state_path)}).")
    return int(state["epoch"])


def _check_not_shipped(w: _world.MiniWorld) -> None:
    """Refuse to overwrite a checkpoint that verifies (a shipped world's results depend on it)."""
    from rftlib.errors import RftError

    if not w.checkpoint.is_file():
        return
    try:
        digest = w.verify_checkpoint()
    except RftError:
        return  # a bad or stale checkpoint: pretraining replaces it
    raise ParameterError(f"world {w.name!r} already has a verified checkpoint ({_shown(w.checkpoint)}, sha256 "
                         f"{digest[:12]}…), which its results were computed with; to pretrain it again and overwrite "
                         f"it, pass --force (or make a new world: `rft world new NAME --from {w.name}`).")


def pretrain_world(name: str, resume: bool = True, threads: int | None = None, n_eval: int = 1000,
                   work_dir: str | os.PathLike | None = None, progress: bool = True,
                   log: Any = None, force: bool = False) -> dict[str, Any]:
    """Pretrain world ``name`` (its recipe, :func:`rftlib.worlds.pretrain.recreate_checkpoint`), write
    its checkpoint and manifest, then verify them; returns the manifest.

    A tqdm bar over every pretraining step shows the time left. After each epoch the training state
    is saved atomically to ``work_dir/state.pt`` (default :func:`resume_folder`); a run killed at any
    point resumes from its last finished epoch (``resume``) and gives the weights an uninterrupted run
    gives. The resume state is checked before any model is built; it is removed once the world ships.
    Checkpoint and manifest are each written atomically; a kill between the two leaves a pair that
    verification refuses and the resume state in place, so a rerun ships again.

    Args:
        name: a miniature world (``worlds/<name>/world.yaml``).
        resume: continue from ``state.pt`` if there is one (``False``: delete it and start over).
        threads: torch CPU threads (``None``: torch's default).
        n_eval: images per split for the zero-shot accuracies recorded in the manifest.
        work_dir: folder of the resume state.
        progress: show the bar (``RFT_PROGRESS=0`` hides it too).
        log: called with one line of news (which epoch it resumes from, what it verifies).
        force: overwrite a checkpoint that verifies (without it, that is refused).

    Raises:
        ParameterError: unknown or paper world, bad ``threads``/``n_eval``.
        CheckpointError: an unreadable or stale resume state, or a result that fails verification.
    """
    import torch

    from rftlib.worlds.pretrain import recreate_checkpoint

    say = log or (lambda _msg: None)
    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ParameterError(f"--threads={threads!r} must be an integer >= 1 (torch CPU threads), e.g. --threads 1.")
    if isinstance(n_eval, bool) or not isinstance(n_eval, int) or n_eval < 1:
        raise ParameterError(f"--n-eval={n_eval!r} must be an integer >= 1 (images per evaluation split).")
    w = _miniature(name)
    work = Path(work_dir) if work_dir is not None else resume_folder(name)
    state_path = work / STATE_NAME
    if not force and not (resume and state_path.is_file()):  # an unfinished pretraining may finish
        _check_not_shipped(w)
    w.check_data()
    if not resume:
        state_path.unlink(missing_ok=True)
    done = _check_resume_state(w, state_path)
    epochs = int(w.pretrain["epochs"])
    say(f"world {name}: resuming after epoch {done}/{epochs} ({_shown(state_path)})" if done
        else f"world {name}: pretraining {epochs} epoch(s) from scratch (state after each epoch: {_shown(state_path)})")
    if threads is not None:
        torch.set_num_threads(threads)
    manifest = recreate_checkpoint(w, n_eval=n_eval, work_dir=work, progress=progress)
    say(f"world {name}: wrote {_shown(w.checkpoint)} and {_shown(w.manifest_path)}; verifying")
    verify_world(name)
    return manifest


def verify_world(name: str) -> str:
    """Every cheap check of world ``name`` and its checkpoint (:func:`rftlib.worlds.world.check_world`);
    returns the checkpoint's sha256 (empty for a paper setting, whose weights are a given file).

    Raises:
        ParameterError: the world is unknown or its world file is unreadable or inconsistent.
        CheckpointError: one line naming the world, the problem and the fix.

    Example:
        >>> len(verify_world("digits"))
        64
    """
    w = _world.check_world(name)
    return "" if w.kind == "paper" else w.manifest()["sha256"]


def world_state(name: str) -> str:
    """One line on the checkpoint of world ``name``: verified, missing (and whether a pretraining was
    interrupted), or what is wrong with it.

    Example:
        >>> world_state("digits")  # doctest: +ELLIPSIS
        'verified, sha256 66306559b523…'
    """
    from rftlib.errors import RftError

    try:
        w = _world.load_world(name)
        if w.kind == "paper":
            problems = w.problems()  # type: ignore[attr-defined]
            missing = sorted(set(re.findall(r"\bRFT_[A-Z_]+", " ".join(problems))))
            return "paper setting, " + ("ready" if not problems else
                                        f"not ready: set {', '.join(missing) or 'its weights and data'} "
                                        f"(`rft world verify {name}` says more; see book/paper-scale.md)")
        if not w.checkpoint.is_file():
            return _missing_state(w)
        return f"verified, sha256 {w.verify_checkpoint()[:12]}…"
    except RftError as e:
        return "refused: " + " ".join(str(e).split())


def _missing_state(w: _world.MiniWorld) -> str:
    """The state of a world without a checkpoint: never pretrained, or interrupted at some epoch."""
    from rftlib.errors import RftError

    state_path = resume_folder(w.name) / STATE_NAME
    try:
        done = _check_resume_state(w, state_path)
    except RftError as e:
        return "no checkpoint; " + " ".join(str(e).split())
    if done:
        return (f"no checkpoint; pretraining stopped after epoch {done}/{w.pretrain['epochs']}: "
                f"resume with `rft world pretrain {w.name}`")
    return f"no checkpoint: pretrain it with `rft world pretrain {w.name}`"


def list_worlds() -> list[tuple[str, str]]:
    """``(name, state)`` for every world under ``worlds/`` (or ``$RFT_WORLDS``), see :func:`world_state`.

    Example:
        >>> dict(list_worlds())["digits"].startswith("verified")
        True
    """
    return [(n, world_state(n)) for n in _world.available_worlds()]


__all__ = ["ALIASES", "NAME_PATTERN", "apply_world_overrides", "check_world_name", "create_world", "list_worlds",
           "override_key", "pretrain_world", "resume_folder", "verify_world", "world_state"]
