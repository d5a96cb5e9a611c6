"""The executed notebook as a result: byte-stable across equal runs, free of this machine's paths,
and the cell that failed found in it.

Example:
    >>> import sys
    >>> strip_machine_paths(sys.prefix + "/lib/python3/site.py")
    '<env>/lib/python3/site.py'
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from rftlib.files.manifest import portable_path, repo_root

__all__ = ["failing_cell", "normalise_executed", "shown_path", "source_count", "source_index", "strip_machine_paths"]


def failing_cell(nb_path: Path) -> tuple[int | None, int | None, str]:
    """(index in the executed notebook, execution count, first source line) of the first cell with
    an error output, or else the one papermill marked as failed or still running."""
    import nbformat

    try:
        nb = nbformat.read(str(nb_path), as_version=4)
    except Exception:  # noqa: BLE001
        return None, None, ""

    def first_line(c: Any) -> str:
        return (c.get("source", "").strip().splitlines() or [""])[0]

    for i, c in enumerate(nb.cells):
        if any(o.get("output_type") == "error" for o in c.get("outputs", [])):
            return i, c.get("execution_count"), first_line(c)
    for i, c in enumerate(nb.cells):
        pm = c.get("metadata", {}).get("papermill", {})
        if pm.get("exception") or pm.get("status") in ("failed", "running"):
            return i, c.get("execution_count"), first_line(c)
    return None, None, ""


def shown_path(path: Path, root: Path) -> str:
    """A path for messages: repository-relative inside the repository, else absolute."""
    p = portable_path(path, root)
    return str(path) if p.startswith("<external>") else p


def source_index(executed: Path, exec_index: int | None) -> int | None:
    """Map a cell index of the executed notebook (with papermill's injected and error cells) to
    the index in the source notebook."""
    if exec_index is None:
        return None
    import nbformat

    try:
        cells = nbformat.read(str(executed), as_version=4).cells
    except Exception:  # noqa: BLE001
        return exec_index
    extra = {"injected-parameters", "papermill-error-cell-tag"}
    return sum(1 for c in cells[:exec_index] if not extra & set(c.get("metadata", {}).get("tags", [])))


def source_count(executed: Path, count: int) -> int:
    """An execution count ``[In N]`` of the executed notebook as the user's notebook would have
    it: without papermill's injected cells that ran before it."""
    import nbformat

    try:
        cells = nbformat.read(str(executed), as_version=4).cells
    except Exception:  # noqa: BLE001
        return count
    extra = {"injected-parameters", "papermill-error-cell-tag"}
    before = [c for c in cells if extra & set(c.get("metadata", {}).get("tags", []))
              and isinstance(c.get("execution_count"), int) and c["execution_count"] < count]
    return count - len(before)


#: Tags of the cells papermill adds to an executed notebook, and the fixed cell id each gets.
PAPERMILL_CELL_IDS = {"injected-parameters": "injected-parameters", "papermill-error-cell-tag": "papermill-error-cell"}


def _fixed_cell_ids(cells: Sequence[Any]) -> None:
    """Give the cells papermill added (which carry random nbformat ids) fixed, unique ids; the
    notebook's own cells keep theirs."""
    added = [(c, tag) for c in cells for tag in PAPERMILL_CELL_IDS if tag in c.get("metadata", {}).get("tags", [])]
    taken = {c.get("id") for c in cells} - {c.get("id") for c, _ in added}
    for c, tag in added:
        base, i = PAPERMILL_CELL_IDS[tag], 1
        new = base
        while new in taken:
            i += 1
            new = f"{base}-{i}"
        taken.add(new)
        c["id"] = new


def normalise_executed(path: Path, source: str, executed: str, stage: Path | None = None,
                        out: Path | None = None) -> None:
    """Make an executed notebook host-independent and byte-stable across equal runs: record
    repository-relative paths, drop papermill's and nbclient's timestamps and durations, and give
    the cells papermill added (injected parameters, error cells) fixed ids instead of random ones."""
    import nbformat

    from rftlib.files.io import atomic_write_text

    nb = nbformat.read(str(path), as_version=4)
    meta = nb.metadata.get("papermill")
    if isinstance(meta, dict):
        for k in ("start_time", "end_time", "duration"):
            meta.pop(k, None)
        meta["input_path"], meta["output_path"] = source, executed
    for cell in nb.cells:
        cell.metadata.pop("execution", None)
        pm_meta = cell.metadata.get("papermill")
        if isinstance(pm_meta, dict):
            for k in ("start_time", "end_time", "duration"):
                pm_meta.pop(k, None)
    if (nb.nbformat, nb.nbformat_minor) >= (4, 5):  # cell ids exist from nbformat 4.5 on
        _fixed_cell_ids(nb.cells)
    text = nbformat.writes(nb)
    if stage is not None and out is not None:  # the step ran into its staging folder: name the results folder
        root = repo_root()
        for a, b in ((str(stage), str(out)), (shown_path(stage, root), shown_path(out, root))):
            text = text.replace(a, b)
    atomic_write_text(path, strip_machine_paths(text))


def strip_machine_paths(text: str) -> str:
    """Replace this machine's paths in notebook outputs by portable ones: the repository root by
    nothing (paths become repository-relative), the Python environment by ``<env>``.

    Example:
        >>> import sys
        >>> strip_machine_paths(str(repo_root() / "book" / "x.png")), strip_machine_paths(sys.prefix + "/lib")
        ('book/x.png', '<env>/lib')
    """
    import sys

    root = str(repo_root())
    for prefix, repl in ((sys.prefix, "<env>"), (root + "/", ""), (root, ".")):
        text = text.replace(prefix, repl)
    return text
