"""Run a parameterized notebook with papermill: validated, cached, and never leaving half results.

:func:`run_notebook` validates the parameters against the notebook's ``parameters`` cell (before any
kernel starts), then executes the notebook with papermill (explicit kernel, working folder and
per-cell timeout) and writes into the step's results folder:

* ``<notebook name>.ipynb``: the executed notebook, with its outputs (the book includes it);
* ``manifest.json``: parameters, seed, versions, git commit, times, the notebook's content hash and
  the SHA-256 of its inputs (see :mod:`rftlib.files.manifest`).

**Cache.** A run is skipped when the folder holds the executed notebook and a manifest with the same
parameters, notebook content (cell types and sources; outputs are ignored) and input hashes
(``force=True`` reruns), and every file the step declares it writes elsewhere is there (the
fine-tuned runs). Inputs are the files named by ``inputs``, every file or folder that a parameter
(given or default) names, e.g. an upstream step's results folder, and a study step's world file and
θ_zs checkpoint: a step reruns when the data it reads changed (a folder's manifest and executed
notebooks do not count). Package versions and the git commit are recorded but do not invalidate the
cache (every commit would otherwise rerun every step); the result says when the library's sources
changed since.

**Failures and kills.** A step runs into a staging folder that replaces the results folder in one
rename, and only when the notebook succeeded (:mod:`rftlib.book.staging`, which also cleans up after
a killed run before the next cache check). If the notebook fails, the results folder is as it was,
the executed notebook with the error is saved into it as ``<notebook name>.failed.ipynb``, and
:class:`NotebookExecutionError` names the failing cell (:mod:`rftlib.book.executed`).

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
import math
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

from rftlib.errors import ParameterError, RftError
from rftlib.files.layout import RESULTS_ROOT
from rftlib.files.manifest import (
    build_manifest,
    hash_input,
    input_hashes,
    manifests_match,
    portable_path,
    read_manifest,
    repo_path,
    repo_root,
    rftlib_source_hash,
    write_manifest,
)
from rftlib.book.executed import failing_cell, normalise_executed, shown_path, source_count, source_index
from rftlib.book.params import declared_files, notebook_parameters, resolve_path, validate_params
from rftlib.book.staging import StepInterrupted, begin_staging, discard_quietly, publish, recover

OUT_DIR_PARAM = "out_dir"
DEFAULT_TIMEOUT = 3600.0
#: Manifest keys that decide whether a cached run can be reused.
CACHE_KEYS = ("parameters", "notebook_sha256", "input_sha256", "environment_sha256")


class NotebookExecutionError(RftError):
    """A notebook raised an error (or timed out) while running; the message names the cell."""

    def __init__(self, message: str, *, cell_index: int | None = None, ename: str = "", evalue: str = "",
                 failed_notebook: Path | None = None) -> None:
        super().__init__(message)
        self.cell_index = cell_index  # 0-based index in the source notebook
        self.cell_number = cell_index + 1 if cell_index is not None else None  # as the message says
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
    return repo_root() / RESULTS_ROOT / (step or Path(notebook).stem)


#: Folders named by parameters are fingerprinted only up to this many files (else left out).
MAX_FOLDER_FILES = 5000


def _path_inputs(params: Mapping[str, Any], out_dir: Path, outputs: Sequence[Path] = ()) -> dict[str, Path]:
    """Parameters naming existing files or folders (other than the step's own results folder, a
    folder holding the step's declared ``outputs`` and anything holding the repository):
    fingerprinted as inputs ``param:<name>``."""
    found: dict[str, Path] = {}
    root = repo_root()
    own = out_dir.resolve()
    written = [Path(os.path.abspath(f)) for f in outputs]
    for k, v in params.items():
        if not isinstance(v, str) or not v.strip() or "\n" in v or len(v) > 1024:
            continue
        p = repo_path(v)
        try:
            rp = p.resolve()
            if rp == own or own in rp.parents or not p.exists() or any(p in f.parents for f in written):
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
        out[k] = hash_input(repo_path(v))
    return out


# ---------------------------------------------------------------------------------------------
# Checks made before any kernel starts


#: The shortest per-cell timeout accepted (seconds); nbclient itself needs whole seconds.
MIN_TIMEOUT = 1.0


def check_timeout(value: Any, where: str = "--timeout") -> float | None:
    """A per-cell timeout in seconds: a number ≥ 1 (``None``: the caller's default).

    Raises:
        ParameterError: a boolean, a non-number, zero, a negative or a fraction of a second.

    Example:
        >>> check_timeout(60), check_timeout(None)
        (60.0, None)
        >>> check_timeout(0.5)
        Traceback (most recent call last):
        ...
        rftlib.errors.ParameterError: --timeout must be a number of seconds >= 1 (e.g. 600), got 0.5
    """
    if value is None:
        return None
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    if not ok or not math.isfinite(value) or value < MIN_TIMEOUT:
        raise ParameterError(f"{where} must be a number of seconds >= {MIN_TIMEOUT:g} (e.g. 600), got {value!r}")
    return float(value)


def check_out_dir(out: str | os.PathLike, what: str = "--out") -> Path:
    """``out`` as an absolute path, once sure a results folder can be made there.

    Raises:
        ParameterError: ``out`` or one of its parents is a file, or the nearest existing folder
            is not writable.

    Example:
        >>> import tempfile, pathlib
        >>> d = pathlib.Path(tempfile.mkdtemp()); _ = (d / "f.txt").write_text("x")
        >>> check_out_dir(d / "new" / "step") == d / "new" / "step"
        True
        >>> check_out_dir(d / "f.txt" / "step")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        rftlib.errors.ParameterError: --out ...f.txt/step cannot be a results folder: .../f.txt is a file, not a folder
    """
    p = Path(os.path.abspath(out))
    for d in (p, *p.parents):
        if d.exists() or d.is_symlink():
            if not d.is_dir():
                raise ParameterError(f"{what} {out} cannot be a results folder: {d} is a file, not a folder")
            if not os.access(d, os.W_OK | os.X_OK):
                raise ParameterError(f"{what} {out} cannot be a results folder: {d} is not writable")
            return p
    return p


def step_out_dir(results_root: str | os.PathLike, step: str) -> Path:
    """The results folder of ``step`` under a pipeline's results root (relative roots start at
    the repository root).

    Example:
        >>> step_out_dir("book/results-quick", "fashion-zeroshot").relative_to(repo_root()).as_posix()
        'book/results-quick/fashion-zeroshot'
    """
    if not isinstance(step, str) or not step or "/" in step or step in (".", ".."):
        raise ParameterError(f"step name {step!r} must be a plain folder name (no '/', not '.' or '..')")
    return repo_path(results_root) / step


#: Environment variables that change what a step reads: part of the cache key.
CACHE_ENV_VARS = ("RFT_CLIP_WEIGHTS", "RFT_DATA_ROOT")


def environment_fingerprint(names: Sequence[str] = CACHE_ENV_VARS) -> dict[str, str]:
    """SHA-256 of each set variable of ``names`` (its value, and for a file its size and mtime):
    changes when the variable does, without recording a machine path. Unset variables are left out.

    Example:
        >>> import os
        >>> os.environ["RFT_DEMO"] = "/weights/a.safetensors"
        >>> a = environment_fingerprint(["RFT_DEMO", "RFT_UNSET_DEMO"])
        >>> os.environ["RFT_DEMO"] = "/weights/b.safetensors"
        >>> list(a), a != environment_fingerprint(["RFT_DEMO"])
        (['RFT_DEMO'], True)
    """
    out = {}
    for name in names:
        value = os.environ.get(name)
        if not value:
            continue
        text = value
        try:
            st = os.stat(value)
            text += f"|{st.st_size}|{st.st_mtime_ns}" if Path(value).is_file() else ""
        except OSError:
            pass
        out[name] = hashlib.sha256(text.encode()).hexdigest()
    return out


def _resolve_out(src: Path, step: str, out_dir: Any, given: Mapping[str, Any], specs: Mapping[str, Any]) -> Path:
    """The results folder: ``out_dir``, else the ``out_dir`` parameter the caller set, else
    ``book/results/<step>``; checked (a file in the way, an unwritable place) before any work."""
    param = given.get(OUT_DIR_PARAM) if OUT_DIR_PARAM in specs else None
    if param is not None and not isinstance(param, str):
        raise ParameterError(f"parameter {OUT_DIR_PARAM!r} must be a folder path (str), got {param!r}")
    param_path = None if param is None else repo_path(param)
    if param_path is not None:
        check_out_dir(param_path, what=f"-p {OUT_DIR_PARAM}=")
    if out_dir is None:
        return check_out_dir(param_path) if param_path is not None else default_out_dir(src, step)
    out = check_out_dir(out_dir)
    if param_path is not None and Path(os.path.abspath(param_path)) != out:
        raise ParameterError(
            f"the results folder {out_dir} and the parameter {OUT_DIR_PARAM}={param!r} disagree; give one of them"
        )
    return out


# ---------------------------------------------------------------------------------------------
# Running


def _prepare(src: Path, step: str, out: Path, checked: Mapping[str, Any], specs: Mapping[str, Any],
             inputs: Mapping[str, Any] | None, kernel_name: str,
             outputs: Sequence[Path] = ()) -> tuple[Any, dict[str, Any]]:
    """The run's manifest (what it depends on: parameters, notebook, inputs, environment) and its inputs."""
    root = repo_root()
    effective = {**{k: s.default for k, s in specs.items()}, **checked}
    all_inputs: dict[str, Any] = {**_path_inputs(effective, out, outputs), **dict(inputs or {})}
    executed = out / f"{src.stem}.ipynb"
    seed = checked.get("seed", specs["seed"].default if "seed" in specs else None)
    env = environment_fingerprint()
    extra = {"environment_sha256": env} if env else {}
    manifest = build_manifest(
        checked, seed=seed, inputs=all_inputs, root=root, computes=False,
        step_name=step, notebook=portable_path(src, root), notebook_sha256=notebook_content_hash(src),
        input_sha256=_fingerprints(all_inputs, root), kernel=kernel_name,
        executed_notebook=portable_path(executed, root), **extra,
    )
    return manifest, all_inputs


def _cached(out: Path, executed: Path, manifest: Mapping[str, Any], step: str, force: bool,
            say: Callable[[str], None], outputs: Sequence[Path] = ()) -> RunResult | None:
    """The earlier run, when it matches and the files it wrote outside ``out`` are all there (after
    recovering from a killed run); else ``None``."""
    root = repo_root()
    trusted = recover(out)
    if not trusted:
        say(f"{step}: an interrupted earlier run left a backup that may be partial; discarded it, rerunning")
    previous = read_manifest(out)
    if force or not trusted or not executed.is_file() or not manifests_match(previous, manifest, keys=CACHE_KEYS):
        return None
    missing = [f for f in outputs if not f.is_file()]
    if missing:
        say(f"{step}: {len(missing)} of its {len(outputs)} output file(s) outside its results folder are missing "
            f"(e.g. {shown_path(missing[0], root)}); rerunning")
        return None
    assert previous is not None
    changed = previous.get("rftlib_source_sha256") != rftlib_source_hash()
    secs = float(previous.get("steps", {}).get("execute", previous.get("wall_seconds") or 0.0))
    say(f"{step}: cached ({shown_path(out, root)})" + ("; rftlib changed since, --force reruns" if changed else ""))
    return RunResult(step, executed, out, dict(previous), True, secs, changed)


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
    kernel_env: Mapping[str, str] | None = None,
) -> RunResult:
    """Validate ``params``, execute ``notebook`` with papermill, and record it in ``out_dir``: a :class:`RunResult`.

    Args:
        notebook: the source notebook (relative paths: current folder, then repository root).
        params: parameter values; names and types are checked against the ``parameters`` cell.
        out_dir: the results folder (default: the ``out_dir`` parameter if given, else
            ``book/results/<name>``); checked before any kernel starts.
        kernel_name, cwd: the Jupyter kernel (:func:`ensure_kernel`); its folder (default: the repository root).
        timeout: seconds allowed per cell, ≥ 1 (``None``: no limit); see :func:`check_timeout`.
        force: rerun even when a matching cached run exists.
        inputs: named input files or folders, hashed into the cache key, beside the string
            parameters naming existing paths (``param:<name>``), a study step's declared inputs and
            outputs (:func:`rftlib.book.params.declared_files`: a step whose outputs are missing
            reruns) and the variables of :data:`CACHE_ENV_VARS`.
        extra_checks: value checks run before execution (see :func:`rftlib.book.params.validate_params`).
        name: the step name (default: the notebook's file name stem); ``start_timeout``: seconds to
            wait for the kernel; ``log``: where one-line progress messages go (default: none).
        kernel_env: environment variables for the kernel, on top of this process's (e.g. the
            pipeline's thread policy and progress file; see :mod:`rftlib.book.kernel`).

    Raises:
        ParameterError: bad parameters, timeout or results folder, before any execution.
        NotebookExecutionError: the message names the cell (numbered from 1) and the error; the
            results folder is as before, plus the failed notebook ``<name>.failed.ipynb``.
        StepInterrupted: Ctrl-C; the results folder is as before.
    """
    say = log or (lambda _msg: None)
    timeout = check_timeout(timeout, where="timeout")
    src = resolve_path(notebook, kind="notebook")
    step = name or src.stem
    specs = notebook_parameters(src)
    given = dict(params or {})
    out = _resolve_out(src, step, out_dir, given, specs)
    root = repo_root()
    if OUT_DIR_PARAM in specs:
        given[OUT_DIR_PARAM] = shown_path(out, root)
    checked = validate_params(src, given, extra_checks=extra_checks)
    declared, outputs = declared_files(src, checked)
    manifest, all_inputs = _prepare(src, step, out, checked, specs, {**declared, **dict(inputs or {})}, kernel_name,
                                    outputs)
    hit = _cached(out, out / f"{src.stem}.ipynb", manifest, step, force, say, outputs)
    return hit if hit is not None else _run_staged(
        src, step, out, checked, manifest, all_inputs, say, kernel_name=kernel_name,
        cwd=Path(cwd) if cwd is not None else root, timeout=timeout, start_timeout=start_timeout, kernel_env=kernel_env)


def _run_staged(src: Path, step: str, out: Path, checked: Mapping[str, Any], manifest: Any, all_inputs: Any,
                say: Callable[[str], None], **kw: Any) -> RunResult:
    """Execute into a staging folder and rename it into ``out`` (a failure leaves ``out`` as it was)."""
    ensure_kernel(kw["kernel_name"])
    out.parent.mkdir(parents=True, exist_ok=True)
    stage = begin_staging(out)
    root = repo_root()
    say(f"{step}: running {portable_path(src, root)}")
    t0 = time.perf_counter()
    try:
        with manifest.step("execute"):
            _execute(src, stage, out, checked, step=step, **kw)
        _finish(src, stage, out, manifest, all_inputs)
    except BaseException:
        discard_quietly(stage.parent)
        raise
    secs = time.perf_counter() - t0
    executed = out / f"{src.stem}.ipynb"
    say(f"{step}: done in {secs:.1f} s -> {shown_path(executed, root)}")
    return RunResult(step, executed, out, dict(manifest), False, secs)


def _execute(src: Path, stage: Path, out: Path, checked: Mapping[str, Any], *, kernel_name: str, cwd: Path,
             timeout: float | None, start_timeout: float, step: str,
             kernel_env: Mapping[str, str] | None = None) -> None:
    """Run the notebook with the results folder pointed at ``stage``; the executed notebook is
    ``stage/<name>.running.ipynb``. A failure is turned into :class:`NotebookExecutionError`
    (the failed notebook saved into ``out``), Ctrl-C into :class:`StepInterrupted`."""
    import papermill as pm

    from rftlib.book.kernel import kernel_manager_class

    root = repo_root()
    params = dict(checked)
    if OUT_DIR_PARAM in params:
        params[OUT_DIR_PARAM] = shown_path(stage, root)
    running = stage / f".{src.stem}.running.ipynb"
    pm_log = logging.getLogger("papermill")
    level = pm_log.level
    pm_log.setLevel(logging.ERROR)  # its own parameter parsing warns about comments holding '='
    kernel_err = stage.parent / "kernel.stderr"
    interrupted = False
    try:
        with open(kernel_err, "wb") as err:
            pm.execute_notebook(
                str(src), str(running), parameters=params, kernel_name=kernel_name, cwd=str(cwd),
                execution_timeout=int(timeout) if timeout is not None else None, start_timeout=start_timeout,
                progress_bar=False, log_output=False, request_save_on_cell_execute=True,
                kernel_manager_class=_stderr_to(kernel_manager_class(kernel_env), err),
            )
    except KeyboardInterrupt:
        interrupted = True
        _quiet_after_interrupt()
        raise StepInterrupted(step, out) from None
    except Exception as e:  # noqa: BLE001 - every failure of the notebook is reported the same way
        failed = _save_failed(src, running, stage, out)
        raise _execution_error(src, e, failed, timeout) from e
    finally:
        pm_log.setLevel(level)
        _relay_kernel_stderr(kernel_err, show=not interrupted)


def _stderr_to(manager: type, err: Any) -> type:
    """``manager`` whose kernels write their own stderr (not the cells': those are outputs) to
    the open file ``err``, so that a kernel's complaints while it is shut down after Ctrl-C do
    not reach the terminal; :func:`_relay_kernel_stderr` shows them otherwise."""

    class KernelStderrToFile(manager):  # type: ignore[misc, valid-type]
        async def _async_pre_start_kernel(self, **kw: Any) -> Any:
            kw.setdefault("stderr", err)
            return await super()._async_pre_start_kernel(**kw)

    return KernelStderrToFile


#: What an idle kernel logs for the SIGINT that jupyter_client sends before every shutdown request.
SHUTDOWN_NOISE = "KeyboardInterrupt caught in kernel"


def _relay_kernel_stderr(path: Path, show: bool) -> None:
    """Copy what the kernel wrote to its stderr to ours (unless ``show`` is false), without the
    shutdown's :data:`SHUTDOWN_NOISE` lines; never raises."""
    try:
        text = path.read_text(errors="replace") if path.is_file() else ""
        text = "".join(ln for ln in text.splitlines(keepends=True) if SHUTDOWN_NOISE not in ln)
        if show and text.strip():
            sys.stderr.write(text if text.endswith("\n") else text + "\n")
        path.unlink(missing_ok=True)
    except OSError:
        pass


def _quiet_after_interrupt() -> None:
    """Silence the kernel client's complaints (ZMQ errors of a kernel that was interrupted too)."""
    for name in ("traitlets", "papermill", "nbclient", "jupyter_client", "asyncio"):
        logging.getLogger(name).setLevel(logging.CRITICAL + 1)


def _save_failed(src: Path, running: Path, stage: Path, out: Path) -> Path | None:
    """Move the executed notebook with the error into ``out`` as ``<name>.failed.ipynb``, with the
    rest of the results folder as it was; never raises (returns ``None`` when it could not)."""
    root = repo_root()
    failed = out / f"{src.stem}.failed.ipynb"
    try:
        if not running.is_file():
            return None
        out.mkdir(parents=True, exist_ok=True)
        os.replace(running, failed)
    except OSError:
        return None
    try:
        normalise_executed(failed, portable_path(src, root), portable_path(failed, root), stage, out)
    except Exception:  # noqa: BLE001 - a half-written notebook stays as it is
        pass
    return failed


def _execution_error(src: Path, e: Exception, failed: Path | None, timeout: float | None) -> NotebookExecutionError:
    """The one-line error of a failed notebook, naming the cell as the user's notebook numbers it."""
    from papermill.exceptions import PapermillExecutionError

    root = repo_root()
    if isinstance(e, PapermillExecutionError):
        idx, count, ename, evalue = e.cell_index, e.exec_count, e.ename, e.evalue
        first = (str(e.source).strip().splitlines() or [""])[0]
    else:
        idx, count, first = failing_cell(failed) if failed else (None, None, "")
        ename = type(e).__name__
        if isinstance(e, TimeoutError) and ename == "CellTimeoutError":
            evalue = f"the cell ran longer than the timeout of {timeout:g} s (raise it with --timeout)"
        else:
            evalue = str(e).strip().splitlines()[-1] if str(e).strip() else ""
    src_idx = source_index(failed, idx) if failed else idx
    if count is not None and failed is not None:
        count = source_count(failed, count)
    where = f"cell {src_idx + 1}" if src_idx is not None else "a cell"
    if count is not None:
        where += f" [In {count}]"
    msg = (
        f"{portable_path(src, root)} failed in {where}"
        + (f" ({first[:80]!r})" if first else "")
        + f": {ename}: {evalue}"
        + (f"; the executed notebook with the error is {shown_path(failed, root)}" if failed else "")
        + "; previous results were left as they were"
    )
    return NotebookExecutionError(msg, cell_index=src_idx, ename=ename, evalue=evalue, failed_notebook=failed)


def _finish(src: Path, stage: Path, out: Path, manifest: Any, all_inputs: Mapping[str, Any]) -> None:
    """Complete the staging folder (executed notebook, manifest) and rename it into place."""
    root = repo_root()
    running = stage / f".{src.stem}.running.ipynb"
    executed = stage / f"{src.stem}.ipynb"
    normalise_executed(running, portable_path(src, root), portable_path(out / executed.name, root), stage, out)
    os.replace(running, executed)
    (stage / f"{src.stem}.failed.ipynb").unlink(missing_ok=True)
    # inputs as the run left them: a folder the step also writes into (e.g. weights it caches)
    # then matches on the next check, so the step is not rerun for its own writes
    manifest["inputs"] = input_hashes(all_inputs, root)
    manifest["input_sha256"] = {k: v["sha256"] for k, v in manifest["inputs"].items()}
    previous = read_manifest(out)
    own = read_manifest(stage)
    if own is not None and own != previous:
        # the notebook wrote its own manifest during the run: keep its extra keys and step times
        for k, v in own.items():
            if k == "steps" and isinstance(v, dict):
                manifest["steps"] = {**v, **manifest["steps"]}
            elif k not in manifest:
                manifest[k] = v
    write_manifest(stage, manifest.finish())
    publish(stage, out)


__all__ = [
    "CACHE_ENV_VARS",
    "CACHE_KEYS",
    "StepInterrupted",
    "check_out_dir",
    "check_timeout",
    "environment_fingerprint",
    "step_out_dir",
    "NotebookExecutionError",
    "RunResult",
    "default_out_dir",
    "ensure_kernel",
    "notebook_content_hash",
    "run_notebook",
]
