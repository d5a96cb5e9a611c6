"""A step's results folder is replaced whole or not at all, and a killed run is cleaned up after.

A step runs into a staging folder beside its results folder (``.<out>.staging/<out>``, a copy of the
current results: a step may reuse what it wrote before), which :func:`publish` renames into place:
the old folder is first renamed aside (``.<out>.replaced``), so a kill between the two renames leaves
it to be put back. :func:`recover`, called before every cache check, deletes a leftover staging
folder, puts an aside folder back, restores a complete backup of an older rftlib (one with its
``.<out>.backup.complete`` marker) or discards an incomplete one, and deletes the temporary files of
killed atomic writes (:func:`rftlib.files.io.atomic_path`). Folders are always renamed away before
they are deleted (:func:`remove_tree`), so no kill leaves a half-deleted folder under its name.

Example:
    >>> import tempfile
    >>> out = Path(tempfile.mkdtemp()) / "fashion-zeroshot"
    >>> stage = begin_staging(out)
    >>> _ = (stage / "zeroshot.csv").write_text("split,accuracy\\nid,0.5\\n")
    >>> publish(stage, out)
    >>> sorted(p.name for p in out.iterdir()), recover(out), sorted(p.name for p in out.parent.iterdir())
    (['zeroshot.csv'], True, ['fashion-zeroshot'])
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

from rftlib.errors import RftError

__all__ = ["StepInterrupted", "begin_staging", "discard_quietly", "publish", "recover", "remove_tree", "sibling"]


#: Temporary files of :func:`rftlib.files.io.atomic_path` (``.<name>.<random>.tmp``), left by killed writes.
ATOMIC_TMP = re.compile(r"\..+\.[A-Za-z0-9_]+\.tmp")


def sibling(out_dir: Path, suffix: str) -> Path:
    """The runner's bookkeeping paths beside a results folder: ``.<out>.<suffix>``."""
    return out_dir.parent / f".{out_dir.name}.{suffix}"


def remove_tree(path: Path) -> None:
    """Delete a folder: first renamed away (so a kill never leaves a half-deleted folder under its
    name), then removed."""
    if not path.exists() and not path.is_symlink():
        return
    trash = path if path.name.endswith(".trash") else path.with_name(path.name + ".trash")
    if trash != path:
        remove_tree(trash)
        os.replace(path, trash)
    if trash.is_dir() and not trash.is_symlink():
        shutil.rmtree(trash)
    else:
        trash.unlink()


def _restore(out_dir: Path, backup: Path | None) -> None:
    """Put the (complete) backup back in place of ``out_dir``."""
    if backup is None or not backup.exists():
        return
    aside = sibling(out_dir, "replaced")
    remove_tree(aside)
    if out_dir.exists():
        os.replace(out_dir, aside)
    os.replace(backup, out_dir)
    sibling(out_dir, "backup.complete").unlink(missing_ok=True)
    remove_tree(aside)


def recover(out_dir: Path) -> bool:
    """Clean up after an earlier run that was killed; returns ``False`` when the results folder
    cannot be trusted (the cache is then ignored).

    A leftover staging folder (``.<out>.staging``) is deleted: the results folder was never touched
    by that run. A kill between the two renames of :func:`publish` leaves no results folder but
    the earlier one aside as ``.<out>.replaced``: it is put back. A complete backup (with its
    marker, from an rftlib that ran steps in place) is restored; a backup without a marker may be
    partial: it is discarded, never restored, and the results folder does not count as cached.
    Temporary files of killed atomic writes are deleted.
    """
    trusted = True
    backup, marker = sibling(out_dir, "backup"), sibling(out_dir, "backup.complete")
    aside = sibling(out_dir, "replaced")
    for suffix in ("staging", "staging.trash", "backup.partial", "backup.trash", "backup.partial.trash", "replaced.trash"):
        remove_tree(sibling(out_dir, suffix))
    if aside.exists() and not out_dir.exists() and not (backup.exists() and marker.is_file()):
        os.replace(aside, out_dir)
    remove_tree(aside)
    if backup.exists():
        if marker.is_file():
            _restore(out_dir, backup)
        else:
            remove_tree(backup)
            trusted = False
    marker.unlink(missing_ok=True)
    if out_dir.is_dir():
        for p in sorted(out_dir.rglob(".*.tmp")):
            if ATOMIC_TMP.fullmatch(p.name) and p.is_file() and not p.is_symlink():
                p.unlink(missing_ok=True)
    return trusted


class StepInterrupted(RftError):
    """The run was interrupted (Ctrl-C); the results folder is as it was before the run."""

    def __init__(self, step: str, out_dir: Path) -> None:
        super().__init__(f"interrupted; step {step} stopped, its earlier results are kept as they were in {out_dir}")
        self.step, self.out_dir = step, out_dir


def _staging(out_dir: Path) -> Path:
    """The staging folder of ``out_dir``: ``.<out>.staging/<out>``, so that the step sees a folder
    of its own name (notebooks take their step name from it)."""
    return sibling(out_dir, "staging") / out_dir.name


def begin_staging(out_dir: Path) -> Path:
    """A fresh staging folder holding a copy of the current results (a step may reuse what it
    wrote before, e.g. cached weights)."""
    stage = _staging(out_dir)
    remove_tree(stage.parent)
    stage.parent.mkdir(parents=True)
    if out_dir.is_dir():
        shutil.copytree(out_dir, stage, symlinks=True)
    else:
        stage.mkdir()
    return stage


def publish(stage: Path, out_dir: Path) -> None:
    """Put the finished staging folder in place of ``out_dir``: the old folder is renamed aside
    first (``.<out>.replaced``, restored by :func:`recover` if a kill lands between the renames)."""
    aside = sibling(out_dir, "replaced")
    remove_tree(aside)
    if out_dir.exists() or out_dir.is_symlink():
        os.replace(out_dir, aside)
    os.replace(stage, out_dir)
    remove_tree(aside)
    remove_tree(stage.parent)


def discard_quietly(path: Path) -> None:
    """Remove a staging folder; never raises (the caller is already handling a failure)."""
    try:
        remove_tree(path)
    except OSError:
        pass
