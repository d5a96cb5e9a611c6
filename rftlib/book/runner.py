"""Run a parameterized notebook with papermill: validated, cached, and never leaving half results.

:func:`run_notebook` validates the parameters against the notebook's ``parameters`` cell (before any
kernel starts), then executes the notebook with papermill (explicit kernel, working folder and
per-cell timeout) and writes into the step's results folder:

* ``<notebook name>.ipynb``: the executed notebook, with its outputs (the book includes it);
* ``manifest.json``: parameters, seed, versions, git commit, times, the notebook's content hash and
  the SHA-256 of its inputs (see :mod:`rftlib.files.manifest`).

**Cache.** A run is skipped when the folder holds the executed notebook and a manifest with the same
parameters, notebook content (cell types and sources; outputs are ignored) and input hashes
(``force=True`` reruns). Inputs are the files named by ``inputs`` and every file or folder that a
parameter (given or default) names, e.g. an upstream step's results folder: a step reruns when the
data it reads changed (a folder's manifest and executed notebooks do not count). Package versions and the git commit are recorded but do not invalidate
the cache (every commit would otherwise rerun every step); the result says when the library's
sources changed since.

**Failures.** The results folder is backed up before the run; if the notebook fails, the folder is
restored as it was and the executed notebook with the error is saved beside it as
``<notebook name>.failed.ipynb``; :class:`NotebookExecutionError` names the failing cell.

**Killed runs.** The backup is copied under a temporary name (``.<out>.backup.partial``), its
completion marker ``.<out>.backup.complete`` is written, and only then is it renamed to
``.<out>.backup``; it is renamed away before it is deleted. So a backup with its marker is always
complete. The next run, *before* its cache check, restores such a backup (the results folder of a
killed run may mix its tables with the earlier run's manifest), discards a backup without a marker
(it may be partial: it never replaces the results folder, and that run ignores the cache), and
deletes the temporary files of killed atomic writes (``.<name>.<random>.tmp``, see
:func:`rftlib.files.io.atomic_path`) from the results folder.

**Output folder parameter.** A notebook that declares a parameter ``out_dir`` is given the results
folder (repository-relative) unless the caller sets it.

Example:
    >>> from rftlib.book.runner import default_out_dir
    >>> default_out_dir("notebooks/finetune.ipynb").as_posix().endswith("book/results/finetune")
    True
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from rftlib.errors import RftError
from rftlib.files.manifest import (
    build_manifest,
    hash_input,
    input_hashes,
    manifests_match,
    portable_path,
    read_manifest,
    repo_root,
    rftlib_source_hash,
    write_manifest,
)
from rftlib.book.params import notebook_parameters, resolve_path, validate_params

RESULTS_DIR = Path("book") / "results"
OUT_DIR_PARAM = "out_dir"
DEFAULT_TIMEOUT = 3600.0
#: Manifest keys that decide whether a cached run can be reused.
CACHE_KEYS = ("parameters", "notebook_sha256", "input_sha256")


class NotebookExecutionError(RftError):
    """A notebook raised an error (or timed out) while running; the message names the cell."""

    def __init__(self, message: str, *, cell_index: int | None = None, ename: str = "", evalue: str = "",
                 failed_notebook: Path | None = None) -> None:
        super().__init__(message)
        self.cell_index = cell_index
        self.ename = ename
        self.evalue = evalue
        self.failed_notebook = failed_notebook


@dataclass
class RunResult:
    """What :func:`run_notebook` did: where the outputs are, whether it was cached, and how long."""

    name: str
    notebook: Path          # the executed notebook
    out_dir: Path
    manifest: dict[str, Any]
    cached: bool
    seconds: float          # execution seconds (for a cached run: those of the run that made it)
    library_changed: bool = False  # cached, but rftlib's sources changed since


# ---------------------------------------------------------------------------------------------
# Kernel


def ensure_kernel(name: str = "python3") -> str:
    """Make sure the Jupyter kernel ``name`` runs this Python (the project's venv); return ``name``.

    A spec whose command is plain ``python`` is run by jupyter_client with the launching
    interpreter, so it counts as this one. If the kernel is missing or points elsewhere, it is
    installed into this environment's own ``share/jupyter/kernels`` (``ipykernel install
    --sys-prefix``).

    Raises:
        RftError: a kernel of that name elsewhere (e.g. in ``~/.local/share/jupyter``) shadows it.
    """
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    def ours() -> tuple[bool, str]:
        try:
            spec = KernelSpecManager().get_kernel_spec(name)
        except NoSuchKernel:
            return False, ""
        cmd = spec.argv[0] if spec.argv else ""
        if cmd in {"python", f"python{sys.version_info[0]}", "python%d.%d" % sys.version_info[:2]}:
            return True, spec.resource_dir
        try:
            same = Path(cmd).resolve() == Path(sys.executable).resolve() or (
                Path(cmd).parent.resolve() == Path(sys.executable).parent.resolve())
        except OSError:
            same = False
        return same, spec.resource_dir

    ok, where = ours()
    if ok:
        return name
    from ipykernel.kernelspec import install

    install(kernel_name=name, prefix=sys.prefix, display_name=f"Python 3 ({Path(sys.prefix).name})")
    ok, where = ours()
    if not ok:
        raise RftError(
            f"the Jupyter kernel {name!r} at {where} runs another Python than {sys.executable}; "
            f"remove that folder or pass another kernel name"
        )
    return name


# ---------------------------------------------------------------------------------------------
# Helpers


def notebook_content_hash(notebook: str | os.PathLike) -> str:
    """SHA-256 over a notebook's cell types, sources and tags (outputs and metadata ignored)."""
    import nbformat

    nb = nbformat.read(str(notebook), as_version=4)
    payload = [
        [c.get("cell_type"), c.get("source", ""), sorted(c.get("metadata", {}).get("tags", []))]
        for c in nb.cells
    ]
    payload.append(nb.metadata.get("rft", {}))
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


def default_out_dir(notebook: str | os.PathLike, step: str | None = None) -> Path:
    """``<repo>/book/results/<step>``; the step defaults to the notebook's file name stem."""
    return repo_root() / RESULTS_DIR / (step or Path(notebook).stem)


#: Folders named by parameters are fingerprinted only up to this many files (else left out).
MAX_FOLDER_FILES = 5000


def _path_inputs(params: Mapping[str, Any], out_dir: Path) -> dict[str, Path]:
    """Parameters naming existing files or folders (other than the step's own results folder and
    anything holding the repository): fingerprinted as inputs ``param:<name>``."""
    found: dict[str, Path] = {}
    root = repo_root()
    own = out_dir.resolve()
    for k, v in params.items():
        if not isinstance(v, str) or not v.strip() or "\n" in v or len(v) > 1024:
            continue
        p = Path(v)
        p = p if p.is_absolute() else root / p
        try:
            rp = p.resolve()
            if rp == own or own in rp.parents or not p.exists():
                continue
            if p.is_dir():
                if rp == root or rp in root.parents or ".git" in rp.parts or ".venv" in rp.parts:
                    continue
                if sum(1 for _ in zip(range(MAX_FOLDER_FILES + 1), rp.rglob("*"))) > MAX_FOLDER_FILES:
                    continue
            found[f"param:{k}"] = p
        except OSError:
            continue
    return found


def _fingerprints(inputs: Mapping[str, Any], root: Path) -> dict[str, str]:
    out = {}
    for k, v in sorted(inputs.items()):
        p = Path(v)
        out[k] = hash_input(p if p.is_absolute() else root / p)
    return out


def _failing_cell(nb_path: Path) -> tuple[int | None, int | None, str]:
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


def _show(path: Path, root: Path) -> str:
    """A path for messages: repository-relative inside the repository, else absolute."""
    p = portable_path(path, root)
    return str(path) if p.startswith("<external>") else p


def _source_index(executed: Path, exec_index: int | None) -> int | None:
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


def _normalise_executed(path: Path, source: str, executed: str) -> None:
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
    atomic_write_text(path, strip_machine_paths(nbformat.writes(nb)))


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


#: Temporary files of :func:`rftlib.files.io.atomic_path` (``.<name>.<random>.tmp``), left by killed writes.
ATOMIC_TMP = re.compile(r"\..+\.[A-Za-z0-9_]+\.tmp")


def _sibling(out_dir: Path, suffix: str) -> Path:
    """The runner's bookkeeping paths beside a results folder: ``.<out>.<suffix>``."""
    return out_dir.parent / f".{out_dir.name}.{suffix}"


def _remove_tree(path: Path) -> None:
    """Delete a folder: first renamed away (so a kill never leaves a half-deleted folder under its
    name), then removed."""
    if not path.exists() and not path.is_symlink():
        return
    trash = path if path.name.endswith(".trash") else path.with_name(path.name + ".trash")
    if trash != path:
        _remove_tree(trash)
        os.replace(path, trash)
    if trash.is_dir() and not trash.is_symlink():
        shutil.rmtree(trash)
    else:
        trash.unlink()


def _make_backup(out_dir: Path) -> Path | None:
    """Back up ``out_dir`` as ``.<out>.backup`` (with its completion marker); ``None`` if there is
    nothing to back up. The copy goes to a temporary name and is renamed when complete."""
    if not out_dir.exists():
        return None
    backup, partial, marker = (_sibling(out_dir, s) for s in ("backup", "backup.partial", "backup.complete"))
    _remove_tree(partial)
    shutil.copytree(out_dir, partial, symlinks=True)
    from rftlib.files.io import atomic_write_text

    atomic_write_text(marker, f"{backup.name} is a complete backup of {out_dir.name}\n")
    os.replace(partial, backup)
    return backup


def _drop_backup(out_dir: Path) -> None:
    """Delete the backup after a successful run: renamed away first, the marker last."""
    _remove_tree(_sibling(out_dir, "backup"))
    _sibling(out_dir, "backup.complete").unlink(missing_ok=True)


def _restore(out_dir: Path, backup: Path | None) -> None:
    """Put the (complete) backup back in place of ``out_dir``."""
    if backup is None or not backup.exists():
        return
    aside = _sibling(out_dir, "replaced")
    _remove_tree(aside)
    if out_dir.exists():
        os.replace(out_dir, aside)
    os.replace(backup, out_dir)
    _sibling(out_dir, "backup.complete").unlink(missing_ok=True)
    _remove_tree(aside)


def _recover(out_dir: Path) -> bool:
    """Clean up after an earlier run that was killed; returns ``False`` when the results folder
    cannot be trusted (the cache is then ignored).

    A complete backup (with its marker) is restored: it holds the last good results, which the
    killed run may have begun to overwrite. A backup without a marker may be partial (killed while
    it was copied, or made by an older rftlib): it is discarded, never restored, and the results
    folder, which that run may have changed, does not count as cached. Leftover temporary folders
    and the temporary files of killed atomic writes are deleted.
    """
    trusted = True
    backup, marker = _sibling(out_dir, "backup"), _sibling(out_dir, "backup.complete")
    for suffix in ("backup.partial", "replaced", "backup.trash", "backup.partial.trash", "replaced.trash"):
        _remove_tree(_sibling(out_dir, suffix))
    if backup.exists():
        if marker.is_file():
            _restore(out_dir, backup)
        else:
            _remove_tree(backup)
            trusted = False
    marker.unlink(missing_ok=True)
    if out_dir.is_dir():
        for p in sorted(out_dir.rglob(".*.tmp")):
            if ATOMIC_TMP.fullmatch(p.name) and p.is_file() and not p.is_symlink():
                p.unlink(missing_ok=True)
    return trusted


# ---------------------------------------------------------------------------------------------
# Running


def run_notebook(
    notebook: str | os.PathLike,
    params: Mapping[str, Any] | None = None,
    out_dir: str | os.PathLike | None = None,
    *,
    kernel_name: str = "python3",
    cwd: str | os.PathLike | None = None,
    timeout: float | None = DEFAULT_TIMEOUT,
    force: bool = False,
    inputs: Mapping[str, str | os.PathLike] | None = None,
    extra_checks: str | Callable[[dict], Any] | Sequence[str | Callable[[dict], Any]] | None = None,
    name: str | None = None,
    start_timeout: float = 120.0,
    log: Callable[[str], None] | None = None,
) -> RunResult:
    """Validate ``params``, execute ``notebook`` with papermill, and record it in ``out_dir``.

    Args:
        notebook: the source notebook (relative paths: current folder, then repository root).
        params: parameter values; names and types are checked against the ``parameters`` cell.
        out_dir: the results folder (default ``book/results/<name>``).
        kernel_name: the Jupyter kernel (checked/installed with :func:`ensure_kernel`).
        cwd: working folder of the kernel (default: the repository root).
        timeout: seconds allowed per cell (``None``: no limit).
        force: rerun even when a matching cached run exists.
        inputs: named input files or folders, hashed into the manifest and the cache key; string
            parameters (given or default) naming existing files or folders, such as an upstream
            step's results folder, are added automatically as ``param:<name>``.
        extra_checks: value checks run before execution (see :func:`rftlib.book.params.validate_params`).
        name: the step name (default: the notebook's file name stem).
        start_timeout: seconds to wait for the kernel to start.
        log: where to send one-line progress messages (default: none).

    Returns:
        A :class:`RunResult`.

    Raises:
        ParameterError: bad parameters, before any execution.
        NotebookExecutionError: the notebook failed; the message names the cell and the error, the
            results folder is as before, and the failed notebook is saved beside it.
    """
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    say = log or (lambda _msg: None)
    src = resolve_path(notebook, kind="notebook")
    step = name or src.stem
    out = Path(os.path.abspath(out_dir)) if out_dir is not None else default_out_dir(src, step)
    root = repo_root()
    workdir = Path(cwd) if cwd is not None else root

    # 1. parameters: validated before anything expensive
    specs = notebook_parameters(src)
    given = dict(params or {})
    if OUT_DIR_PARAM in specs and OUT_DIR_PARAM not in given:
        given[OUT_DIR_PARAM] = _show(out, root)
    checked = validate_params(src, given, extra_checks=extra_checks)

    # 2. what this run depends on
    effective = {**{k: s.default for k, s in specs.items()}, **checked}
    all_inputs: dict[str, Any] = {**_path_inputs(effective, out), **dict(inputs or {})}
    input_sha = _fingerprints(all_inputs, root)
    nb_sha = notebook_content_hash(src)
    executed = out / f"{src.stem}.ipynb"
    seed = checked.get("seed", specs["seed"].default if "seed" in specs else None)
    manifest = build_manifest(
        checked, seed=seed, inputs=all_inputs, root=root,
        step_name=step, notebook=portable_path(src, root), notebook_sha256=nb_sha, input_sha256=input_sha,
        kernel=kernel_name, executed_notebook=portable_path(executed, root),
    )

    # 3. an earlier run killed mid-way: restore its backup *before* the cache check, so results it
    #    had begun to overwrite are never served as cached; drop temporary files of killed writes
    trusted = _recover(out)
    if not trusted:
        say(f"{step}: an interrupted earlier run left a backup that may be partial; discarded it, rerunning")

    # 4. cache
    previous = read_manifest(out)
    if not force and trusted and executed.is_file() and manifests_match(previous, manifest, keys=CACHE_KEYS):
        assert previous is not None
        changed = previous.get("rftlib_source_sha256") != rftlib_source_hash()
        secs = float(previous.get("steps", {}).get("execute", previous.get("wall_seconds") or 0.0))
        say(f"{step}: cached ({_show(out, root)})" + ("; rftlib changed since, --force reruns" if changed else ""))
        return RunResult(step, executed, out, previous, True, secs, changed)

    # 5. execute: back up the folder, run into a temporary notebook, restore on failure
    ensure_kernel(kernel_name)
    out.parent.mkdir(parents=True, exist_ok=True)
    backup = _make_backup(out)
    running = out.parent / f".{out.name}.{src.stem}.running.ipynb"
    failed = out / f"{src.stem}.failed.ipynb"
    say(f"{step}: running {portable_path(src, root)}")
    t0 = time.perf_counter()
    pm_log = logging.getLogger("papermill")
    level = pm_log.level
    pm_log.setLevel(logging.ERROR)  # its own parameter parsing warns about comments holding '='
    try:
        with manifest.step("execute"):
            pm.execute_notebook(
                str(src), str(running), parameters=checked, kernel_name=kernel_name, cwd=str(workdir),
                execution_timeout=timeout, start_timeout=start_timeout, progress_bar=False,
                log_output=False, request_save_on_cell_execute=True,
            )
    except BaseException as e:  # noqa: BLE001 - restore on any failure, Ctrl-C included
        _restore(out, backup)
        failed_path: Path | None = None
        if running.exists():
            out.mkdir(parents=True, exist_ok=True)
            os.replace(running, failed)
            failed_path = failed
            try:
                _normalise_executed(failed, portable_path(src, root), portable_path(failed, root))
            except Exception:  # noqa: BLE001 - a half-written notebook stays as it is
                pass
        if not isinstance(e, Exception):
            raise
        if isinstance(e, PapermillExecutionError):
            idx, count, ename, evalue = e.cell_index, e.exec_count, e.ename, e.evalue
            first = (str(e.source).strip().splitlines() or [""])[0]
        else:
            idx, count, first = _failing_cell(failed_path) if failed_path else (None, None, "")
            ename = type(e).__name__
            if isinstance(e, TimeoutError) and ename == "CellTimeoutError":
                evalue = f"the cell ran longer than the timeout of {timeout:g} s (raise it with --timeout)"
            else:
                evalue = str(e).strip().splitlines()[-1] if str(e).strip() else ""
        src_idx = _source_index(failed_path, idx) if failed_path else idx
        where = f"cell {src_idx}" if src_idx is not None else "a cell"
        if count is not None:
            where += f" [In {count}]"
        msg = (
            f"{portable_path(src, root)} failed in {where}"
            + (f" ({first[:80]!r})" if first else "")
            + f": {ename}: {evalue}"
            + (f"; the executed notebook with the error is {_show(failed_path, root)}" if failed_path else "")
            + "; previous results were left as they were"
        )
        raise NotebookExecutionError(msg, cell_index=src_idx, ename=ename, evalue=evalue,
                                     failed_notebook=failed_path) from e
    finally:
        pm_log.setLevel(level)

    # 6. success: publish the notebook and the manifest, drop the backup
    out.mkdir(parents=True, exist_ok=True)
    _normalise_executed(running, portable_path(src, root), portable_path(executed, root))
    os.replace(running, executed)
    failed.unlink(missing_ok=True)
    # inputs as the run left them: a folder the step also writes into (e.g. weights it caches)
    # then matches on the next check, so the step is not rerun for its own writes
    manifest["inputs"] = input_hashes(all_inputs, root)
    manifest["input_sha256"] = {k: v["sha256"] for k, v in manifest["inputs"].items()}
    own = read_manifest(out)
    if own is not None and own != previous:
        # the notebook wrote its own manifest during the run: keep its extra keys and step times
        for k, v in own.items():
            if k == "steps" and isinstance(v, dict):
                manifest["steps"] = {**v, **manifest["steps"]}
            elif k not in manifest:
                manifest[k] = v
    write_manifest(out, manifest.finish())
    _drop_backup(out)
    secs = time.perf_counter() - t0
    say(f"{step}: done in {secs:.1f} s -> {_show(executed, root)}")
    return RunResult(step, executed, out, dict(manifest), False, secs)


__all__ = [
    "CACHE_KEYS",
    "NotebookExecutionError",
    "RunResult",
    "default_out_dir",
    "ensure_kernel",
    "notebook_content_hash",
    "run_notebook",
]
