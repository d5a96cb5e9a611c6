"""Run a pipeline: the notebook steps of a parameter file, each into ``<results root>/<step>/``.

A pipeline file (``notebooks/params/<name>.yaml`` with a ``steps`` list; format in
:mod:`rftlib.book.params`) names each step's notebook and parameters. :func:`run_pipeline` validates
*every* step's parameters before running any, then runs the selected steps through
:func:`rftlib.book.runner.run_notebook` (cached steps are skipped): independent steps side by side
(``jobs``, each kernel with its own threads; graph and policy in :mod:`rftlib.book.schedule`), a
step once the steps it depends on succeeded. A failed step stops the steps that depend on it, not the
others; the run then raises (the final table says which failed). While steps run, their progress is
relayed to the terminal (:mod:`rftlib.book.relay`).

The results root is the file's ``results_root`` (default ``book/results``, the book's): it holds
every step's folder, the upstream folders its steps leave empty (``<root>/<world>-<step>``, see
:meth:`rftlib.book.params.ParamFile.parameters_for`) and the pipeline's own folder
``<root>/pipeline/``, so a pipeline with its own root never touches another's results. The timings
go to ``<root>/pipeline/timings.csv`` (columns ``step, seconds, cached``; for a cached step,
``seconds`` is the execution time of the run that made its results, so the table tells what a full
reproduction costs), and the policy (jobs, threads per kernel, load at the start) into each run
step's manifest (key ``execution``) and the pipeline's (``<root>/pipeline/manifest.json``, whose
``parameters.pipeline`` names the pipeline: the book says which one it was built from). The executed
notebook of step ``S`` is ``<root>/S/<notebook name>.ipynb``.

Example:
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / "p.yaml").write_text("steps:\\n  - {name: a, notebook: a.ipynb}\\n  - {name: b, notebook: b.ipynb}\\n  - {name: c, notebook: c.ipynb}\\n")
    >>> pf = load_param_file(d / "p.yaml")
    >>> [s.name for s in select_steps(pf, from_step="b")], [s.name for s in select_steps(pf, only=["a", "c"])]
    (['b', 'c'], ['a', 'c'])
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

import pandas as pd

from rftlib.errors import ParameterError
from rftlib.files.io import atomic_write_csv
from rftlib.files.manifest import build_manifest, portable_path, read_manifest, repo_path, repo_root, write_manifest
from rftlib.progress import PROGRESS_FILE_ENV
from rftlib.book import runner
from rftlib.book.params import ParamFile, Step, load_param_file, notebook_parameters, resolve_path, validate_params
from rftlib.book.relay import Relay, timing_table
from rftlib.book.runner import DEFAULT_TIMEOUT, NotebookExecutionError, RunResult, run_notebook
from rftlib.book.schedule import Policy, critical_path, kernel_env, restrict, run_graph, step_graph, thread_policy

PIPELINE_DIR = "pipeline"
TIMINGS_NAME = "timings.csv"
TIMING_COLUMNS = ["step", "seconds", "cached"]


def select_steps(
    pipeline: ParamFile, only: Iterable[str] | str | None = None, from_step: str | None = None
) -> list[Step]:
    """The steps to run: all, ``only`` those named (in pipeline order), or ``from_step`` onwards.

    Raises:
        ParameterError: an unknown step name (with close matches), or both options given.
    """
    if isinstance(only, str):
        only = [only]
    only = list(only or [])
    if only and from_step:
        raise ParameterError("give either --only or --from, not both")
    for name in [*only, *([from_step] if from_step else [])]:
        pipeline.get_step(name)  # raises with close matches
    if only:
        return [s for s in pipeline.steps if s.name in only]
    if from_step:
        names = pipeline.step_names()
        return pipeline.steps[names.index(from_step):]
    return list(pipeline.steps)


def step_folder(results_dir: Path, step: Step) -> str:
    """A step's results folder as ``rft pipeline --list`` shows it: repository-relative inside the
    repository, else absolute.

    Example:
        >>> pf, root = rooted(load_param_file("quick"))
        >>> step_folder(root, pf.steps[0])
        'book/results-quick/fashion-zeroshot'
    """
    folder = step_results_dir(results_dir, step)
    shown = portable_path(folder)
    return folder.as_posix() if shown.startswith("<external>") else shown


def step_results_dir(results_dir: Path, step: Step) -> Path:
    """The step's results folder: its ``out_dir`` parameter if given, else under the results root."""
    given = step.parameters.get(runner.OUT_DIR_PARAM)
    if isinstance(given, str) and given:
        return repo_path(given)
    return Path(runner.step_out_dir(results_dir, step.name))


def rooted(pf: ParamFile, results_dir: str | os.PathLike | None = None) -> tuple[ParamFile, Path]:
    """The pipeline with its results root (``results_dir`` if given, else its own), and that root
    as an absolute path.

    Example:
        >>> pf, root = rooted(load_param_file("quick"))
        >>> pf.results_root, root.relative_to(repo_root()).as_posix()
        ('book/results-quick', 'book/results-quick')
    """
    if results_dir is None:
        return pf, Path(os.path.abspath(repo_root() / pf.results_root))
    root = Path(os.path.abspath(results_dir))
    given = portable_path(root)
    return dataclasses.replace(pf, results_root=root.as_posix() if given.startswith("<external>") else given), root


def validate_pipeline(pipeline: ParamFile, steps: Sequence[Step] | None = None) -> dict[str, dict[str, Any]]:
    """Validate the parameters of ``steps`` (default: all) before running any; return them by step.

    Raises:
        ParameterError: every problem of every step, each prefixed with its step name.
    """
    out: dict[str, dict[str, Any]] = {}
    problems: list[str] = []
    for step in steps if steps is not None else pipeline.steps:
        try:
            nb = resolve_path(step.notebook or "", kind="notebook")
            params = pipeline.parameters_for(step, notebook_parameters(nb))
            validate_params(nb, params, extra_checks=step.validate)
            out[step.name] = params
        except ParameterError as e:
            problems.append(f"step {step.name}: {e}")
    if problems:
        raise ParameterError("; ".join(problems))
    return out


def _write_timings(path: Path, rows: list[dict[str, Any]], order: list[str]) -> None:
    """Merge ``rows`` into the timings table at ``path``: rows of the pipeline's other steps (``order``)
    are kept, rows of steps the pipeline no longer has are dropped."""
    old = pd.read_csv(path) if path.is_file() else pd.DataFrame(columns=TIMING_COLUMNS)
    new = pd.DataFrame(rows, columns=TIMING_COLUMNS)
    old = old[old["step"].isin(order) & ~old["step"].isin(new["step"])]
    table = pd.concat([old, new], ignore_index=True)
    rank = {n: i for i, n in enumerate(order)}
    table["_o"] = table["step"].map(lambda s: rank.get(s, len(rank)))
    table = table.sort_values(["_o"], kind="stable").drop(columns="_o")
    table["seconds"] = table["seconds"].astype(float).round(3)
    table["cached"] = table["cached"].astype(bool)
    atomic_write_csv(path, table[TIMING_COLUMNS])


class StepsFailed(NotebookExecutionError):
    """Steps of a pipeline failed; ``errors`` maps each failed step to its error, ``skipped`` each
    step not run to the failed step it needed."""

    def __init__(self, errors: Mapping[str, BaseException], skipped: Mapping[str, str]) -> None:
        parts = [f"step {s} failed: {e}" for s, e in errors.items()]
        if skipped:
            parts.append("not run, as a step they need failed: " + ", ".join(f"{s} (needs {f})" for s, f in skipped.items()))
        super().__init__("; ".join(parts))
        self.errors, self.skipped = dict(errors), dict(skipped)


def _effective_params(pf: ParamFile, step: Step, validated: Mapping[str, dict[str, Any]]) -> dict[str, Any]:
    """A step's parameters with its notebook's defaults (only its own if the notebook is missing)."""
    try:
        specs = notebook_parameters(resolve_path(step.notebook or "", kind="notebook"))
    except (ParameterError, OSError):
        return dict(step.parameters)
    given = validated.get(step.name) or pf.parameters_for(step, specs)
    return {**{k: sp.default for k, sp in specs.items()}, **given}


def pipeline_graph(pf: ParamFile, results_dir: str | os.PathLike | None = None,
                   validated: Mapping[str, dict[str, Any]] | None = None) -> dict[str, tuple[str, ...]]:
    """The direct dependencies of every step of ``pf`` (rules in :mod:`rftlib.book.schedule`).

    Example:
        >>> g = pipeline_graph(load_param_file("default"))
        >>> g["fashion-sparsity"], g["digits-clean-zeroshot"]
        (('fashion-interpolate', 'fashion-stragglers'), ())
    """
    pf, results = rooted(pf, results_dir)
    params = {s.name: _effective_params(pf, s, validated or {}) for s in pf.steps}
    outputs = {s.name: step_results_dir(results, s) for s in pf.steps}
    return step_graph(pf.step_names(), params, outputs, {s.name: s.inputs for s in pf.steps}, results)


def _recorded_times(path: Path) -> dict[str, float]:
    """Each step's last recorded execution seconds (from the timings table), if any."""
    try:
        t = pd.read_csv(path)
        return {str(r.step): float(r.seconds) for r in t.itertuples() if float(r.seconds) > 0}
    except (OSError, ValueError, AttributeError, pd.errors.EmptyDataError):
        return {}


def _record_policy(out_dir: Path, policy: Policy) -> None:
    """Add the policy to a step's manifest (key ``execution``; not part of the cache key)."""
    m = read_manifest(out_dir)
    if m is not None:
        write_manifest(out_dir, {**m, "execution": policy.to_dict()})


#: Errors of an interrupted step (Ctrl-C): no further step starts, and the run ends with that error.
_INTERRUPTED: tuple[type[BaseException], ...] = tuple(
    t for t in (getattr(runner, "StepInterrupted", None),) if isinstance(t, type))


def run_pipeline(
    pipeline: ParamFile | str | os.PathLike, *, only: Iterable[str] | str | None = None,
    from_step: str | None = None, force: bool = False, results_dir: str | os.PathLike | None = None,
    kernel_name: str = "python3", timeout: float | None = None, echo: Callable[[str], None] | None = None,
    jobs: int | None = None, threads: int | None = None, tty: bool | None = None, isa: str | None = None,
) -> list[RunResult]:
    """Run a pipeline's steps (validated first), independent ones side by side, caching unchanged steps.

    Args:
        pipeline: a loaded :class:`~rftlib.book.params.ParamFile`, or a parameter file name or path.
        only, from_step: run only these steps; this step and the ones after it. ``force``: even cached ones.
        results_dir: where step folders go (default: the pipeline's ``results_root``); the folders
            its steps leave empty are resolved against it too.
        timeout: seconds per cell, for steps whose file sets no ``timeout`` (default 3600).
        echo: where progress lines go (default: standard error, live lines on a terminal).
        jobs, threads: steps side by side, threads per kernel (default: the free cores, and free cores
            // jobs; :func:`~rftlib.book.schedule.thread_policy`); ``isa``: the kernels' instructions
            (default ``avx2`` on x86-64: the same numbers with or without AVX-512). ``tty``: update progress lines in
            place (default: when standard error is a terminal and no ``echo`` is given).

    Returns:
        One :class:`~rftlib.book.runner.RunResult` per step run, in pipeline order.

    Raises:
        ParameterError: bad step names, parameters, ``jobs``, ``threads`` or ``isa`` (before anything runs).
        rftlib.book.runner.NotebookExecutionError: a step failed (the others ran; timings are kept);
            :class:`StepsFailed` when several did or steps were left out for it.
    """
    pf, results = rooted(pipeline if isinstance(pipeline, ParamFile) else load_param_file(pipeline), results_dir)
    steps = select_steps(pf, only, from_step)
    params = validate_pipeline(pf, steps)
    policy = thread_policy(jobs, threads, isa=isa)
    graph = restrict(pipeline_graph(pf, results, params), [s.name for s in steps])
    timings_dir = results / PIPELINE_DIR
    recorded = _recorded_times(timings_dir / TIMINGS_NAME)
    priority = critical_path(graph, {s: recorded.get(s, 1.0) for s in graph})
    manifest = build_manifest({"pipeline": pf.name, "steps": [s.name for s in steps], "force": force},
                              inputs={"pipeline_file": pf.path}, computes=False, execution=policy.to_dict())
    relay = Relay(echo=echo, tty=tty)
    progress_dir = Path(tempfile.mkdtemp(prefix="rft-progress-"))
    run_one = _step_runner(steps, params, results, policy, relay, recorded, progress_dir, manifest,
                           kernel_name=kernel_name, timeout=timeout, force=force)
    t_all = time.perf_counter()
    relay.say(f"pipeline {pf.name}: {len(steps)} step(s) into {pf.results_root}, up to {policy.jobs} side by side, "
              f"{policy.threads} thread(s) each, {policy.isa} instructions ({policy.cpu_count} cores, "
              f"load {policy.load:.1f})")
    try:
        with relay:
            done, errors, skipped = run_graph(graph, run_one, policy.jobs, priority, halt_on=_INTERRUPTED)
    finally:
        shutil.rmtree(progress_dir, ignore_errors=True)
    ordered = [done[s.name] for s in steps if s.name in done]
    _record_run(timings_dir, ordered, pf.step_names(), manifest)
    _summary(relay, pf, steps, done, errors, skipped, recorded, time.perf_counter() - t_all)
    _raise_failures(errors, skipped)
    return ordered


def _record_run(timings_dir: Path, ordered: Sequence[RunResult], order: list[str], manifest: Any) -> None:
    """The steps' times (``timings.csv``) and the pipeline's manifest, when any step ran."""
    if ordered:
        rows = [{"step": r.name, "seconds": r.seconds, "cached": r.cached} for r in ordered]
        _write_timings(timings_dir / TIMINGS_NAME, rows, order)
        write_manifest(timings_dir, manifest.finish())


def _raise_failures(errors: Mapping[str, BaseException], skipped: Mapping[str, str]) -> None:
    """Ctrl-C first; one failure as itself; several, or steps left out, as :class:`StepsFailed`."""
    stopped = [e for e in errors.values() if isinstance(e, _INTERRUPTED)]
    if stopped:
        raise stopped[0]
    if errors:
        if len(errors) == 1 and not skipped:
            raise next(iter(errors.values()))
        raise StepsFailed(errors, skipped)


def _step_runner(steps: Sequence[Step], params: Mapping[str, dict[str, Any]], results: Path, policy: Policy,
                 relay: Relay, recorded: Mapping[str, float], progress_dir: Path, manifest: Any, *,
                 kernel_name: str, timeout: float | None, force: bool) -> Callable[[str], RunResult]:
    """The function that runs one step by name: messages, progress file, policy, manifest."""
    by_name = {s.name: s for s in steps}
    index = {s.name: i for i, s in enumerate(steps, 1)}

    def run_one(name: str) -> RunResult:
        step, prefix = by_name[name], f"[{index[name]}/{len(steps)}] {name}"
        relay.say(f"{prefix}: {step.notebook} ...")
        progress = progress_dir / f"{name}.json"
        env = {**kernel_env(policy), PROGRESS_FILE_ENV: str(progress)}
        relay.start(name, progress, recorded.get(name))
        try:
            with manifest.step(name):
                r = _run_step(step, params[name], step_results_dir(results, step), env, kernel_name=kernel_name,
                              timeout=step.timeout or timeout or DEFAULT_TIMEOUT, force=force)
        except Exception as e:
            relay.say(f"{prefix}: FAILED: {e}")
            raise
        finally:
            relay.stop(name)
        if not r.cached:
            _record_policy(r.out_dir, policy)
        note = "cached" if r.cached else f"done in {r.seconds:.1f} s"
        relay.say(f"{prefix}: {note}" + (" (rftlib changed since; --force reruns)" if r.library_changed else ""))
        return r

    return run_one


def _run_step(step: Step, params: dict[str, Any], out_dir: Path, env: Mapping[str, str], **kw: Any) -> RunResult:
    """Run one step's notebook with ``env`` for its kernel."""
    return run_notebook(step.notebook or "", params, out_dir, kernel_env=dict(env), inputs=step.inputs,
                        extra_checks=step.validate, name=step.name, **kw)


def _summary(relay: Relay, pf: ParamFile, steps: Sequence[Step], done: Mapping[str, RunResult],
             errors: Mapping[str, BaseException], skipped: Mapping[str, str], recorded: Mapping[str, float],
             seconds: float) -> None:
    """Print the final table of step times and a one-line count."""
    rows = []
    for s in steps:
        r = done.get(s.name)
        status = ("cached" if r.cached else "ran") if r else (
            "failed" if s.name in errors else f"not run (needs {skipped[s.name]})" if s.name in skipped else "not run")
        rows.append({"step": s.name, "status": status, "seconds": r.seconds if r else None,
                     "recorded": recorded.get(s.name)})
    relay.say(timing_table(rows))
    ran = sum(not r.cached for r in done.values())
    tail = f", {len(errors)} failed ({', '.join(errors)})" if errors else ""
    tail += f", {len(skipped)} not run" if skipped else ""
    relay.say(f"pipeline {pf.name}: {len(done)} step(s), {ran} run, {len(done) - ran} cached{tail}, {seconds:.1f} s")


__all__ = ["TIMING_COLUMNS", "StepsFailed", "pipeline_graph", "rooted", "run_pipeline", "select_steps",
           "step_folder", "validate_pipeline"]
