"""The default job's wall time on a quiet machine and beside one other CPU-bound process.

``rft bench --job`` clones the repository at a commit (``HEAD`` by default; a fresh clone, as a user gets it:
no fine-tuned runs, every step recomputed with ``--force``) once per condition, runs the pipeline
there with the layout of ``bash repro.sh book`` (``--jobs 2 --threads 1``), and records:

- per condition (``quiet``, then ``shared``: beside one busy-looping Python process that this module
  starts and stops), the pipeline's wall time, every step's seconds, and the 1-minute load average
  sampled every 15 s (its start, mean and maximum);
- the ratio shared / quiet of the wall time, against the goal (at most 1.5×);
- whether every result table of each run equals the committed one (:mod:`rftlib.book.compare`,
  timing columns skipped, tolerance 0): the determinism the speed work must keep.

The two conditions run one after the other in one command, so the machine is the same; the quiet one
is only as quiet as the machine (its load is recorded, and a warning is printed above 0.5; the
pipeline's own two kernels make a load of about 2). ``--keep`` re-measures one condition and keeps
the other from the file.

Example:
    >>> summary = condition_summary({"wall_seconds": 10.0, "execution": {"jobs": 2, "threads": 1}},
    ...                             {"a": 4.0, "b": 6.0}, [0.1, 0.3])
    >>> summary["wall_s"], summary["load"]["mean"], summary["steps"]["b"]
    (10.0, 0.2, 6.0)
    >>> job_ratio(10.0, 14.0)["met"]
    True
"""

from __future__ import annotations

import csv
import datetime as dt
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any, Sequence

from rftlib.errors import ParameterError, RftError
from rftlib.files.layout import DEFAULT_PIPELINE, RESULTS_ROOT
from rftlib.files.io import atomic_write_json
from rftlib.files.manifest import repo_root

__all__ = ["GOAL_SHARED", "Burner", "LoadSampler", "condition_summary", "job_ratio", "run_job_benchmark"]

#: the shared run may be at most this many times slower than the quiet one.
GOAL_SHARED = 1.5
#: the layout of ``bash repro.sh book``.
LAYOUT = ("--jobs", "2", "--threads", "1")
BURNER = "while True:\n    pass\n"


class Burner:
    """One other CPU-bound process (a Python busy loop) for the duration of a ``with`` block.

    Example:
        >>> with Burner() as b:
        ...     b.running()
        True
        >>> b.running()
        False
    """

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> "Burner":
        self.proc = subprocess.Popen([sys.executable, "-c", BURNER])
        return self

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def __exit__(self, *exc: Any) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()


class LoadSampler:
    """The 1-minute load average, sampled every ``every`` seconds in a thread while a ``with`` block runs.

    Example:
        >>> with LoadSampler(every=0.01) as s:
        ...     pass
        >>> len(s.samples) >= 1
        True
    """

    def __init__(self, every: float = 15.0) -> None:
        self.every, self.samples = every, []  # type: float, list[float]
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def _loop(self) -> None:
        while True:
            self.samples.append(os.getloadavg()[0])
            if self._stop.wait(self.every):
                return

    def __enter__(self) -> "LoadSampler":
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()


def condition_summary(manifest: dict[str, Any], steps: dict[str, float], loads: Sequence[float]) -> dict[str, Any]:
    """One condition's record: wall time, layout, step seconds, load start/mean/max."""
    return {"wall_s": float(manifest["wall_seconds"]), "execution": manifest.get("execution", {}),
            "steps": dict(steps),
            "load": {"start": loads[0], "mean": round(sum(loads) / len(loads), 3), "max": max(loads),
                     "samples": len(loads)}}


def job_ratio(quiet_s: float, shared_s: float) -> dict[str, Any]:
    """shared / quiet wall time against :data:`GOAL_SHARED` (``met``: at most the goal)."""
    r = shared_s / quiet_s
    return {"ratio": r, "goal_at_most": GOAL_SHARED, "met": bool(r <= GOAL_SHARED)}


def _clone(dest: Path, commit: str) -> None:
    subprocess.run(["git", "clone", "-q", str(repo_root()), str(dest)], check=True)
    subprocess.run(["git", "-C", str(dest), "checkout", "-q", commit], check=True)


def _resolve(commit: str) -> str:
    done = subprocess.run(["git", "-C", str(repo_root()), "rev-parse", "--verify", "-q", f"{commit}^{{commit}}"],
                          capture_output=True, text=True)
    if done.returncode != 0:
        raise ParameterError(f"commit={commit!r} is not a commit of this repository; give a hash, a tag or HEAD")
    return done.stdout.strip()


def _step_seconds(results: Path) -> dict[str, float]:
    with open(results / "pipeline" / "timings.csv", newline="") as f:
        return {r["step"]: float(r["seconds"]) for r in csv.DictReader(f)}


def _identical(committed: Path, produced: Path) -> dict[str, Any]:
    from rftlib.book.compare import compare_roots

    diffs = compare_roots(committed, produced, tol=0.0)  # skips pipeline/ and benchmarks/ itself
    bad = [d.table for d in diffs if d.verdict != "equal"]
    return {"tables": len(diffs), "different_or_missing": bad, "all_equal": not bad}


def _run_condition(pipeline: str, shared: bool, committed: Path, commit: str) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="rft-jobbench-") as tmp:
        checkout = Path(tmp) / "clone"
        _clone(checkout, commit)
        env = {**os.environ, "PYTHONPATH": str(checkout), "RFT_REPO_ROOT": str(checkout)}
        cmd = [sys.executable, "-m", "rftlib.cli", "pipeline", pipeline, *LAYOUT, "--force"]
        with LoadSampler() as load:
            if shared:
                with Burner():
                    done = subprocess.run(cmd, cwd=checkout, env=env)
            else:
                done = subprocess.run(cmd, cwd=checkout, env=env)
        if done.returncode != 0:
            raise RftError(f"the pipeline {pipeline} failed in the clone (exit {done.returncode}); see its output above")
        results = checkout / RESULTS_ROOT
        manifest = json.loads((results / "pipeline" / "manifest.json").read_text())
        out = condition_summary(manifest, _step_seconds(results), load.samples)
        out["results_equal_committed"] = _identical(committed, results)
        return out


def run_job_benchmark(out: str | Path, pipeline: str = DEFAULT_PIPELINE,
                      conditions: Sequence[str] = ("quiet", "shared"), keep: bool = False,
                      commit: str = "HEAD") -> dict[str, Any]:
    """Run the pipeline in a fresh clone of ``commit`` per condition and write the JSON to ``out`` (atomically).

    Uncommitted changes are not measured (a warning says so). With
    ``keep``, the conditions already in ``out`` that are not run again are kept (e.g. to re-measure
    a quiet run that other work disturbed); each condition records when it started and its commit.

    Raises:
        ParameterError: an unknown condition, or no ``git`` to clone with.
    """
    bad = [c for c in conditions if c not in ("quiet", "shared")]
    if bad or not conditions:
        raise ParameterError(f"conditions {list(conditions)!r}: each must be 'quiet' or 'shared'")
    if shutil.which("git") is None:
        raise ParameterError("rft bench --job clones the repository: git is not on PATH")
    root = repo_root()
    result: dict[str, Any] = {
        "benchmark": "the default job (the pipeline of `bash repro.sh book`, every step recomputed in a fresh clone "
                     "of HEAD) quiet and beside one other CPU-bound process (a Python busy loop)",
        "pipeline": pipeline, "layout": " ".join(LAYOUT), "cpu_count": os.cpu_count(),
        "platform": platform.platform(), "created": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "commit": _resolve(commit), "conditions": {}}
    if keep and Path(out).is_file():
        result["conditions"] = {k: v for k, v in json.loads(Path(out).read_text())["conditions"].items()
                                if k not in conditions}
    if subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"], capture_output=True,
                      text=True).stdout.strip():
        print("rft bench --job: uncommitted changes are not measured (the clone checks out a commit)", file=sys.stderr)
    for c in conditions:
        if c == "quiet" and os.getloadavg()[0] > 0.5:
            print(f"rft bench --job: the load average is {os.getloadavg()[0]:.2f}: the quiet run is not quiet",
                  file=sys.stderr)
        print(f"rft bench --job: {c} run of {pipeline}", file=sys.stderr, flush=True)
        started = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
        result["conditions"][c] = {"started": started, "commit": result["commit"],
                                   **_run_condition(pipeline, c == "shared", root / RESULTS_ROOT,
                                                    result["commit"])}
        atomic_write_json(out, result)  # what was measured is kept if the next condition fails
    if {"quiet", "shared"} <= set(result["conditions"]):
        result["shared_vs_quiet"] = job_ratio(result["conditions"]["quiet"]["wall_s"],
                                              result["conditions"]["shared"]["wall_s"])
    atomic_write_json(out, result)
    return result
