"""Reliability of the runner and the ``rft`` front door: bad roots, folders and timeouts refused before
any kernel starts; Ctrl-C ends quietly; steps run into a staging folder; the cache follows the
environment variables that change inputs.

Each check fails on the runner as it was before (noted per test).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

from rftlib import cli
from rftlib.book import runner, staging
from rftlib.book.runner import NotebookExecutionError, run_notebook
from rftlib.errors import ParameterError
from rftlib.files.manifest import repo_root

FIXTURES = Path(__file__).parent / "fixtures"
DUMMY = FIXTURES / "dummy.ipynb"
STAGED = FIXTURES / "reliability" / "staged.ipynb"
RFT = Path(sys.executable).parent / "rft"


def _rft(*args: str) -> list[str]:
    return [str(RFT), *args] if RFT.exists() else [sys.executable, "-m", "rftlib.cli", *args]


def _env(**extra: str) -> dict[str, str]:
    return {**os.environ, "CUDA_VISIBLE_DEVICES": "", "HF_HUB_OFFLINE": "1", "RFT_PROGRESS": "0",
            "PYTHONWARNINGS": "ignore", **extra}


@pytest.fixture
def no_execution(monkeypatch):
    """Fail the test if papermill would start a kernel."""
    import papermill

    def boom(*a, **k):
        raise AssertionError("papermill.execute_notebook was called")

    monkeypatch.setattr(papermill, "execute_notebook", boom)


def _one_error_line(err: str, fragment: str) -> None:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert lines and lines[-1].startswith("rft: error: ") and fragment in lines[-1], err
    assert "Traceback" not in err, err


# ---------------------------------------------------------------------------------------------
# 1. RFT_REPO_ROOT (before: a missing folder was used as the root, and created)


def test_repo_root_env_naming_no_folder_is_refused(tmp_path):
    missing = tmp_path / "nonexistent"
    r = subprocess.run(_rft("run", str(DUMMY)), env=_env(RFT_REPO_ROOT=str(missing)),
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    _one_error_line(r.stderr, "RFT_REPO_ROOT")
    assert str(missing) in r.stderr and not missing.exists()


def test_repo_root_env_naming_a_folder_that_is_no_checkout_is_refused(tmp_path, monkeypatch, capsys):
    (tmp_path / "somewhere").mkdir()
    monkeypatch.setenv("RFT_REPO_ROOT", str(tmp_path / "somewhere"))
    assert cli.main(["run", str(DUMMY)]) == 2
    _one_error_line(capsys.readouterr().err, "is not a checkout")
    assert list((tmp_path / "somewhere").iterdir()) == []
    (tmp_path / "somewhere" / "pyproject.toml").touch()  # a checkout: accepted
    assert repo_root() == (tmp_path / "somewhere").resolve()


# ---------------------------------------------------------------------------------------------
# 2. results folders (before: a traceback from the recovery code; -p out_dir was not checked)


@pytest.mark.parametrize("how", ["--out", "-p"])
def test_results_folder_under_a_file_is_refused_before_any_kernel(tmp_path, how, capsys, no_execution):
    blocker = tmp_path / "README.md"
    blocker.write_text("a file\n")
    target = f"{blocker}/x"
    argv = ["run", str(DUMMY), "--out", target] if how == "--out" else ["run", str(DUMMY), "-p", f"out_dir={target}"]
    assert cli.main(argv) == 2
    _one_error_line(capsys.readouterr().err, "is a file, not a folder")
    assert blocker.read_text() == "a file\n"


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root may write anywhere")
def test_unwritable_results_folder_is_refused(tmp_path, no_execution):
    locked = tmp_path / "locked"
    locked.mkdir(mode=0o500)
    try:
        with pytest.raises(ParameterError, match="not writable"):
            run_notebook(DUMMY, {}, locked / "step")
    finally:
        locked.chmod(0o700)


def test_out_and_out_dir_parameter_that_disagree_are_refused(tmp_path, no_execution):
    with pytest.raises(ParameterError, match="disagree"):
        run_notebook(DUMMY, {"out_dir": str(tmp_path / "a")}, tmp_path / "b")


def test_failed_run_given_out_dir_parameter_lands_in_that_folder(tmp_path):
    out = tmp_path / "mine"
    with pytest.raises(NotebookExecutionError) as e:
        run_notebook(DUMMY, {"fail": True, "out_dir": str(out)})  # no out_dir argument: the parameter decides
    assert e.value.failed_notebook == out / "dummy.failed.ipynb" and e.value.failed_notebook.is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mine"]  # no staging folder left beside it
    assert not (repo_root() / "book" / "results" / "dummy").exists()


def test_saving_a_failed_notebook_never_raises(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    running = tmp_path / ".dummy.running.ipynb"
    running.write_text("{not a notebook")
    # a results folder that cannot be made, and a running notebook that is no notebook
    assert runner._save_failed(DUMMY, running, tmp_path, blocker / "out") is None
    saved = runner._save_failed(DUMMY, running, tmp_path, tmp_path / "out")
    assert saved == tmp_path / "out" / "dummy.failed.ipynb" and saved.read_text() == "{not a notebook"
    assert runner._save_failed(DUMMY, tmp_path / "missing.ipynb", tmp_path, tmp_path / "out2") is None


# ---------------------------------------------------------------------------------------------
# 3. timeouts (before: -5 accepted, 0 meant 3600, 0.5 failed "in a cell" with a TraitError)


@pytest.mark.parametrize("value", ["-5", "0", "0.5", "nan"])
def test_bad_timeout_is_refused_by_run_and_pipeline(value, capsys, no_execution, tmp_path):
    assert cli.main(["run", str(DUMMY), "--out", str(tmp_path / "d"), "--timeout", value]) == 2
    _one_error_line(capsys.readouterr().err, "--timeout must be a number of seconds >= 1")
    assert cli.main(["pipeline", "quick", "--list", "--timeout", value]) == 2
    _one_error_line(capsys.readouterr().err, "--timeout must be a number of seconds >= 1")
    assert not (tmp_path / "d").exists()


def test_pipeline_file_timeout_below_one_second_is_refused(tmp_path, capsys, no_execution):
    f = tmp_path / "p.yaml"
    f.write_text(f"steps:\n  - notebook: {DUMMY}\n    timeout: 0.5\n    parameters: {{alpha: 0.1}}\n")
    assert cli.main(["pipeline", str(f), "--list"]) == 2
    _one_error_line(capsys.readouterr().err, "'timeout'")


def test_timeout_is_checked_by_run_notebook(tmp_path, no_execution):
    for bad in (0, -1, 0.5, True, "60"):
        with pytest.raises(ParameterError, match="timeout must be a number of seconds >= 1"):
            run_notebook(DUMMY, {}, tmp_path / "t", timeout=bad)


# ---------------------------------------------------------------------------------------------
# 5. Ctrl-C (before: a 20-line ZMQError traceback from the kernel, exit 1)


@pytest.mark.slow
def test_ctrl_c_ends_quietly_and_keeps_the_earlier_results(tmp_path):
    out = tmp_path / "staged"
    args = ["run", str(STAGED), "--out", str(out), "-p", "n_rows=50", "-p", "n_tables=3"]
    first = subprocess.run(_rft(*args, "-p", "pause=0"), env=_env(), capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    before = {p.name: p.read_bytes() for p in sorted(out.iterdir())}
    # a shell starts background jobs with SIGINT ignored, and children inherit that: give rft the
    # default disposition a terminal's foreground job has, whatever started pytest
    proc = subprocess.Popen(_rft(*args, "-p", "pause=3", "-p", "seed=1"), env=_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    t0 = time.perf_counter()
    while not list(tmp_path.glob(".staged.staging/staged/stage0.csv")) and time.perf_counter() - t0 < 120:
        time.sleep(0.05)  # the step has begun writing (into its staging folder)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert lines[-1].startswith("rft: interrupted; step staged") and str(out) in lines[-1], err
    assert "Traceback" not in err and "ZMQError" not in err, err
    assert {p.name: p.read_bytes() for p in sorted(out.iterdir())} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["staged"]


# ---------------------------------------------------------------------------------------------
# 6. the staging folder (before: a step wrote into its results folder in place)


def test_step_runs_in_a_staging_folder_and_is_renamed_into_place(tmp_path):
    out = tmp_path / "dummy"
    up = tmp_path / "seen"
    up.mkdir()
    r = run_notebook(DUMMY, {"epochs": 4}, out)
    assert (out / "result.csv").is_file() and sorted(p.name for p in tmp_path.iterdir()) == ["dummy", "seen"]
    # the notebook was given the staging folder; what it records names the results folder
    text = r.notebook.read_text()
    assert ".staging" not in text and ".staging" not in (out / "manifest.json").read_text()
    assert json.loads((out / "manifest.json").read_text())["parameters"]["out_dir"] == "<external>/dummy"


def test_recovery_puts_back_results_renamed_aside_by_a_killed_publish(tmp_path):
    out = tmp_path / "step"
    aside = tmp_path / ".step.replaced"
    aside.mkdir()
    (aside / "a.csv").write_text("x\n1\n")  # killed between the two renames of publish
    stage = tmp_path / ".step.staging" / "step"
    stage.mkdir(parents=True)
    (stage / "a.csv").write_text("x\n2\n")
    assert staging.recover(out)
    assert (out / "a.csv").read_text() == "x\n1\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step"]


def test_recovery_drops_a_leftover_staging_folder_and_keeps_the_results(tmp_path):
    out = tmp_path / "step"
    out.mkdir()
    (out / "a.csv").write_text("x\n1\n")
    (tmp_path / ".step.staging" / "step").mkdir(parents=True)
    (tmp_path / ".step.replaced").mkdir()  # with the results folder in place, the aside copy is stale
    assert staging.recover(out)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["step"] and (out / "a.csv").read_text() == "x\n1\n"


# ---------------------------------------------------------------------------------------------
# 7. the cache key follows RFT_CLIP_WEIGHTS and RFT_DATA_ROOT (before: ignored)


def test_environment_variables_that_change_inputs_invalidate_the_cache(tmp_path, monkeypatch):
    out = tmp_path / "dummy"
    for name in runner.CACHE_ENV_VARS:
        monkeypatch.delenv(name, raising=False)
    run_notebook(DUMMY, {"epochs": 3}, out)
    assert run_notebook(DUMMY, {"epochs": 3}, out).cached
    monkeypatch.setenv("RFT_DATA_ROOT", str(tmp_path / "data-a"))
    assert not run_notebook(DUMMY, {"epochs": 3}, out).cached
    assert run_notebook(DUMMY, {"epochs": 3}, out).cached
    monkeypatch.setenv("RFT_CLIP_WEIGHTS", str(tmp_path / "b32.safetensors"))
    assert not run_notebook(DUMMY, {"epochs": 3}, out).cached
    raw = (out / "manifest.json").read_text()
    assert str(tmp_path) not in raw  # fingerprints, not the machine's paths
    monkeypatch.delenv("RFT_CLIP_WEIGHTS")
    monkeypatch.delenv("RFT_DATA_ROOT")
    assert not run_notebook(DUMMY, {"epochs": 3}, out).cached
    assert "environment_sha256" not in json.loads((out / "manifest.json").read_text())
