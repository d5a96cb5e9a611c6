"""Run a pipeline: the ordered notebook steps of a parameter file, each into ``book/results/<step>/``.

A pipeline file (``notebooks/params/<name>.yaml`` with a ``steps`` list; format in
:mod:`rftlib.book.params`) names each step's notebook and parameters. :func:`run_pipeline` validates
*every* step's parameters before running any, then runs the selected steps in order through
:func:`rftlib.book.runner.run_notebook` (cached steps are skipped), prints one progress line per step,
and records the timings in ``book/results/pipeline/timings.csv`` (columns ``step, seconds,
cached``; for a cached step, ``seconds`` is the execution time of the run that made its results, so
the table tells what a full reproduction costs). The executed notebook of step ``S`` is
``book/results/S/<notebook name>.ipynb``.

Example:
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / "p.yaml").write_text("steps:\\n  - {name: a, notebook: a.ipynb}\\n  - {name: b, notebook: b.ipynb}\\n  - {name: c, notebook: c.ipynb}\\n")
    >>> pf = load_param_file(d / "p.yaml")
    >>> [s.name for s in select_steps(pf, from_step="b")], [s.name for s in select_steps(pf, only=["a", "c"])]
    (['b', 'c'], ['a', 'c'])
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import pandas as pd

from rftlib.errors import ParameterError
from rftlib.files.io import atomic_write_csv
from rftlib.files.manifest import build_manifest, repo_root, write_manifest
from rftlib.book.params import ParamFile, Step, load_param_file, notebook_parameters, resolve_path, validate_params
from rftlib.book.runner import DEFAULT_TIMEOUT, RESULTS_DIR, RunResult, run_notebook

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


def _step_out_dir(results_dir: Path, step: Step) -> Path:
    return results_dir / step.name


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
    """Merge ``rows`` into the timings table at ``path`` (rows of other steps are kept)."""
    old = pd.read_csv(path) if path.is_file() else pd.DataFrame(columns=TIMING_COLUMNS)
    new = pd.DataFrame(rows, columns=TIMING_COLUMNS)
    table = pd.concat([old[~old["step"].isin(new["step"])], new], ignore_index=True)
    rank = {n: i for i, n in enumerate(order)}
    table["_o"] = table["step"].map(lambda s: rank.get(s, len(rank)))
    table = table.sort_values(["_o"], kind="stable").drop(columns="_o")
    table["seconds"] = table["seconds"].astype(float).round(3)
    table["cached"] = table["cached"].astype(bool)
    atomic_write_csv(path, table[TIMING_COLUMNS])


def run_pipeline(
    pipeline: ParamFile | str | os.PathLike,
    *,
    only: Iterable[str] | str | None = None,
    from_step: str | None = None,
    force: bool = False,
    results_dir: str | os.PathLike | None = None,
    kernel_name: str = "python3",
    timeout: float | None = None,
    echo: Callable[[str], None] | None = None,
) -> list[RunResult]:
    """Run a pipeline's steps in order (validated first), caching unchanged steps.

    Args:
        pipeline: a loaded :class:`~rftlib.book.params.ParamFile`, or a parameter file name or path.
        only: run only these steps. from_step: run this step and the ones after it.
        force: rerun steps even when cached.
        results_dir: where step folders go (default ``book/results``).
        kernel_name: the Jupyter kernel.
        timeout: seconds per cell, for steps whose file sets no ``timeout`` (default 3600).
        echo: where progress lines go (default: standard error).

    Returns:
        One :class:`~rftlib.book.runner.RunResult` per step run.

    Raises:
        ParameterError: bad step names or parameters (before anything runs).
        rftlib.book.runner.NotebookExecutionError: a step failed (timings of the steps before it are kept).
    """
    pf = pipeline if isinstance(pipeline, ParamFile) else load_param_file(pipeline)
    say = echo or (lambda msg: print(msg, file=sys.stderr, flush=True))
    results = Path(results_dir) if results_dir is not None else repo_root() / RESULTS_DIR
    steps = select_steps(pf, only, from_step)
    params = validate_pipeline(pf, steps)

    timings_dir = results / PIPELINE_DIR
    done: list[RunResult] = []
    rows: list[dict[str, Any]] = []
    t_all = time.perf_counter()
    manifest = build_manifest({"pipeline": pf.name, "steps": [s.name for s in steps], "force": force},
                              inputs={"pipeline_file": pf.path})
    try:
        for i, step in enumerate(steps, 1):
            prefix = f"[{i}/{len(steps)}] {step.name}"
            say(f"{prefix}: {step.notebook} ...")
            out_dir = _step_out_dir(results, step)
            with manifest.step(step.name):
                r = run_notebook(
                    step.notebook or "", params[step.name], out_dir, kernel_name=kernel_name,
                    timeout=step.timeout or timeout or DEFAULT_TIMEOUT, force=force, inputs=step.inputs,
                    extra_checks=step.validate, name=step.name,
                )
            note = "cached" if r.cached else f"done in {r.seconds:.1f} s"
            if r.library_changed:
                note += " (rftlib changed since; --force reruns)"
            say(f"{prefix}: {note}")
            done.append(r)
            rows.append({"step": step.name, "seconds": r.seconds, "cached": r.cached})
    finally:
        if rows:
            _write_timings(timings_dir / TIMINGS_NAME, rows, pf.step_names())
            write_manifest(timings_dir, manifest.finish())
    ran = sum(not r.cached for r in done)
    say(f"pipeline {pf.name}: {len(done)} step(s), {ran} run, {len(done) - ran} cached, "
        f"{time.perf_counter() - t_all:.1f} s")
    return done


__all__ = ["TIMING_COLUMNS", "run_pipeline", "select_steps", "validate_pipeline"]
