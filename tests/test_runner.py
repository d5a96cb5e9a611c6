"""The papermill runner, the pipeline and the ``rft`` command, on tiny dummy notebooks.

Each executed notebook starts a kernel (about 1.5 s); results go to temporary folders, never into
``book/results``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import nbformat
import pandas as pd
import pytest

from rftlib import cli
from rftlib.errors import ParameterError
from rftlib.files.manifest import repo_root
from rftlib.book.pipeline import run_pipeline
from rftlib.book.params import load_param_file
from rftlib.book.runner import NotebookExecutionError, ensure_kernel, notebook_content_hash, run_notebook

FIXTURES = Path(__file__).parent / "fixtures"
DUMMY = FIXTURES / "dummy.ipynb"
ROOT = repo_root()


def _stdout(nb_path: Path) -> str:
    nb = nbformat.read(str(nb_path), as_version=4)
    return "".join(o.get("text", "") for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []))


@pytest.fixture
def no_execution(monkeypatch):
    """Fail the test if papermill would start a kernel."""
    import papermill

    def boom(*a, **k):
        raise AssertionError("papermill.execute_notebook was called")

    monkeypatch.setattr(papermill, "execute_notebook", boom)


def test_ensure_kernel():
    assert ensure_kernel("python3") == "python3"


def test_run_writes_notebook_manifest_and_results(tmp_path):
    out = tmp_path / "dummy"
    r = run_notebook(DUMMY, {"alpha": 1, "layers": [3]}, out)
    assert not r.cached and r.notebook == out / "dummy.ipynb" and r.notebook.is_file()
    text = _stdout(r.notebook)
    assert "alpha 1.0 epochs 2 layers [3]" in text
    # the kernel runs in the repository root, which the executed notebook records as "." (no machine paths)
    assert "cwd .\n" in text and str(repo_root()) not in text
    assert (out / "result.csv").read_text().splitlines()[1] == "1.0,2,fashion"

    m = json.loads((out / "manifest.json").read_text())
    assert m["parameters"]["alpha"] == 1.0 and m["parameters"]["layers"] == [3]
    assert m["parameters"]["out_dir"] == "<external>/dummy"  # injected, made host-independent
    assert m["seed"] == 0  # the notebook's default seed
    assert m["notebook"] == "tests/fixtures/dummy.ipynb" and len(m["notebook_sha256"]) == 64
    assert m["versions"]["torch"] and m["versions"]["python"] and m["versions"]["rftlib"]
    assert m["git"]["commit"]
    assert m["steps"]["execute"] > 0 and m["wall_seconds"] >= m["steps"]["execute"]
    raw = (out / "manifest.json").read_text()
    assert str(tmp_path) not in raw and str(repo_root()) not in raw
    # the executed notebook holds no machine paths and no timestamps
    executed = nbformat.read(str(r.notebook), as_version=4)
    meta = executed.metadata.papermill
    assert meta.input_path == "tests/fixtures/dummy.ipynb" and meta.output_path == "<external>/dummy.ipynb"
    assert meta.parameters.alpha == 1.0
    nb_text = r.notebook.read_text()
    assert '"start_time"' not in nb_text and '"iopub.execute_input"' not in nb_text


def test_cache_skip_and_rerun(tmp_path):
    out = tmp_path / "dummy"
    ckpt = tmp_path / "theta.bin"
    ckpt.write_bytes(b"v1")
    first = run_notebook(DUMMY, {"alpha": 0.25}, out, inputs={"theta": ckpt})
    mtime = first.notebook.stat().st_mtime_ns

    same = run_notebook(DUMMY, {"alpha": 0.25}, out, inputs={"theta": ckpt})
    assert same.cached and same.notebook.stat().st_mtime_ns == mtime
    assert same.seconds == pytest.approx(first.manifest["steps"]["execute"])

    changed = run_notebook(DUMMY, {"alpha": 0.75}, out, inputs={"theta": ckpt})
    assert not changed.cached and "alpha 0.75" in _stdout(changed.notebook)

    forced = run_notebook(DUMMY, {"alpha": 0.75}, out, inputs={"theta": ckpt}, force=True)
    assert not forced.cached

    ckpt.write_bytes(b"v2")  # an input changed: rerun
    assert not run_notebook(DUMMY, {"alpha": 0.75}, out, inputs={"theta": ckpt}).cached

    # editing the notebook's code reruns; saving it with outputs does not change its hash
    edited = tmp_path / "dummy.ipynb"
    shutil.copy(DUMMY, edited)
    nb = nbformat.read(str(edited), as_version=4)
    nb.cells[3].outputs = [nbformat.v4.new_output("stream", name="stdout", text="old output")]
    nbformat.write(nb, str(edited))
    assert notebook_content_hash(edited) == notebook_content_hash(DUMMY)
    nb.cells[3].source += "\nprint('edited')"
    nbformat.write(nb, str(edited))
    assert notebook_content_hash(edited) != notebook_content_hash(DUMMY)


def test_folders_named_by_parameters_are_inputs(tmp_path):
    up = tmp_path / "upstream"
    up.mkdir()
    (up / "a.csv").write_text("x\n1\n")
    out = tmp_path / "dummy"
    first = run_notebook(DUMMY, {"touch": str(up)}, out)
    assert "param:touch" in first.manifest["inputs"] and (up / "marker.txt").exists()
    # the step's own write into the folder does not make it stale
    assert run_notebook(DUMMY, {"touch": str(up)}, out).cached
    (up / "manifest.json").write_text("{}")  # times of an upstream rerun: not data
    (up / "up.ipynb").write_text("{}")
    assert run_notebook(DUMMY, {"touch": str(up)}, out).cached
    (up / "a.csv").write_text("x\n2\n")  # the upstream data changed
    assert not run_notebook(DUMMY, {"touch": str(up)}, out).cached


def test_failing_notebook_names_cell_and_keeps_good_outputs(tmp_path):
    out = tmp_path / "dummy"
    good = run_notebook(DUMMY, {"alpha": 0.1}, out)
    before = {p.name: p.read_bytes() for p in out.iterdir()}

    with pytest.raises(NotebookExecutionError) as e:
        run_notebook(DUMMY, {"alpha": 0.9, "fail": True}, out)
    msg = str(e.value)
    # cells are numbered from 1 as in the user's notebook (a markdown cell, the parameters, then the
    # failing cell); papermill's injected-parameters cell counts neither in the number nor in [In N]
    assert "failed in cell 3 [In 2]" in msg and "RuntimeError: deliberate failure for alpha=0.9" in msg
    assert e.value.cell_index == 2 and e.value.cell_number == 3 and e.value.ename == "RuntimeError"
    source_cells = nbformat.read(str(DUMMY), as_version=4).cells
    assert "raise RuntimeError" in source_cells[e.value.cell_number - 1].source
    assert e.value.failed_notebook == out / "dummy.failed.ipynb"
    assert "deliberate failure" in json.dumps(nbformat.read(str(e.value.failed_notebook), as_version=4))
    # previous successful outputs untouched, nothing left behind
    after = {p.name: p.read_bytes() for p in out.iterdir() if p.name != "dummy.failed.ipynb"}
    assert after == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dummy"]

    # the cache still holds the good run; a new good run clears the failed notebook
    assert run_notebook(DUMMY, {"alpha": 0.1}, out).cached
    run_notebook(DUMMY, {"alpha": 0.2}, out)
    assert not (out / "dummy.failed.ipynb").exists()
    assert good.notebook.is_file()


def test_timeout_names_the_cell(tmp_path):
    with pytest.raises(NotebookExecutionError, match=r"cell 3 .*longer than the timeout of 1 s"):
        run_notebook(DUMMY, {"sleep": 30.0}, tmp_path / "t", timeout=1)


def test_bad_parameters_fail_before_any_execution(tmp_path, no_execution):
    with pytest.raises(ParameterError, match="did you mean 'epochs'"):
        run_notebook(DUMMY, {"epoch": 1}, tmp_path / "x")
    with pytest.raises(ParameterError, match="'alpha' must be float"):
        run_notebook(DUMMY, {"alpha": "one"}, tmp_path / "x")
    with pytest.raises(ParameterError, match="rejected by"):
        run_notebook(DUMMY, {"alpha": 2.0}, tmp_path / "x", extra_checks=_alpha_in_unit_interval)
    assert not (tmp_path / "x").exists()


def _alpha_in_unit_interval(p):
    if not 0 <= p["alpha"] <= 1:
        raise ValueError(f"alpha must be in [0, 1], got {p['alpha']}")


def _pipeline_file(tmp_path: Path, second: str = "{alpha: 0.5}") -> Path:
    p = tmp_path / "pipe.yaml"
    p.write_text(
        "description: two dummy steps\n"
        "defaults: {epochs: 4}\n"
        "steps:\n"
        f"  - name: first\n    notebook: {DUMMY}\n    parameters: {{alpha: 0.0}}\n"
        f"  - name: second\n    notebook: {DUMMY}\n    parameters: {second}\n"
    )
    return p


def test_pipeline_runs_caches_and_records_timings(tmp_path):
    results = tmp_path / "results"
    lines: list[str] = []
    done = run_pipeline(_pipeline_file(tmp_path), results_dir=results, echo=lines.append)
    assert [r.name for r in done] == ["first", "second"] and not any(r.cached for r in done)
    assert (results / "first" / "dummy.ipynb").is_file() and (results / "second" / "dummy.ipynb").is_file()
    assert "epochs 4" in _stdout(results / "second" / "dummy.ipynb")  # pipeline default applied
    assert any(line.startswith("[1/2] first") for line in lines) and "[2/2] second" in "\n".join(lines)
    t = pd.read_csv(results / "pipeline" / "timings.csv")
    assert list(t.columns) == ["step", "seconds", "cached"] and list(t["step"]) == ["first", "second"]
    assert (t["seconds"] > 0).all() and not t["cached"].any()

    again = run_pipeline(_pipeline_file(tmp_path), results_dir=results, echo=lines.append, only=["second"])
    assert [r.cached for r in again] == [True]
    t2 = pd.read_csv(results / "pipeline" / "timings.csv")
    assert list(t2["step"]) == ["first", "second"] and list(t2["cached"]) == [False, True]


def test_pipeline_validates_every_step_first(tmp_path, no_execution):
    pf = load_param_file(_pipeline_file(tmp_path, second="{alpah: 0.5}"))
    with pytest.raises(ParameterError, match="step second: unknown parameter 'alpah'.*did you mean 'alpha'"):
        run_pipeline(pf, results_dir=tmp_path / "r", echo=lambda s: None)
    with pytest.raises(ParameterError, match="no step 'thrid'"):
        run_pipeline(pf, results_dir=tmp_path / "r", only=["thrid"], echo=lambda s: None)
    assert not (tmp_path / "r").exists()


# ------------------------------------------------------------------------------------------ CLI


def _cli(argv, capsys) -> tuple[int, str]:
    """Run ``rft ARGV`` in this process: (exit code, standard error)."""
    capsys.readouterr()
    try:
        rc = cli.main(argv)
    except SystemExit as e:  # argparse: --help and usage errors
        rc = e.code
    return rc, capsys.readouterr().err


def test_cli_help(capsys):
    proc = subprocess.run([sys.executable, "-m", "rftlib.cli", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0
    verbs = ("run", "pipeline", "params", "book", "mathjax", "verify", "bench", "data", "convert-openai",
             "gpu-measure", "finetune")
    for sub in verbs:
        assert sub in proc.stdout
    for sub in verbs:
        assert _cli([sub, "--help"], capsys)[0] == 0


def test_cli_bad_input_in_a_real_process():
    proc = subprocess.run([sys.executable, "-m", "rftlib.cli", "run", str(DUMMY), "-p", "epoch=3"],
                          capture_output=True, text=True, cwd=repo_root())
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip().splitlines() == [
        "rft: error: unknown parameter 'epoch' for tests/fixtures/dummy.ipynb (did you mean 'epochs'?); "
        "allowed: alpha, epochs, world, layers, budget, seed, fail, sleep, touch, out_dir"
    ]


@pytest.mark.parametrize(
    "argv, fragment",
    [
        (["run", str(DUMMY), "-p", "alpha=big"], "parameter 'alpha' must be float, got str 'big'"),
        (["run", str(DUMMY), "-p", "alpha"], "write NAME=VALUE"),
        (["run", "notebooks/nothing.ipynb"], "notebook not found"),
        (["run", str(DUMMY), "--params", "no-such-params"], "parameter file 'no-such-params' not found"),
        (["run", str(DUMMY), "--step", "x"], "--step needs --params"),
        (["pipeline", "no-such-pipeline"], "not found"),
        (["params", "missing.ipynb"], "notebook not found"),
        (["frobnicate"], "invalid choice"),
        (["run"], "required"),
    ],
)
def test_cli_bad_input_exits_2_with_one_line(argv, fragment, capsys, no_execution):
    rc, err = _cli(argv, capsys)
    assert rc == 2, err
    assert "Traceback" not in err and fragment in err
    assert len([ln for ln in err.splitlines() if ln.startswith("rft: error:")]) == 1


def test_cli_run_params_and_list(tmp_path, capsys):
    pfile = _pipeline_file(tmp_path)
    out = tmp_path / "cli-out"
    assert cli.main(["run", str(DUMMY), "--params", str(pfile), "--step", "second", "-p", "alpha=0.125",
                     "--out", str(out)]) == 0
    assert "alpha 0.125 epochs 4" in _stdout(out / "dummy.ipynb")
    assert cli.main(["params", str(DUMMY)]) == 0
    assert "interpolation coefficient" in capsys.readouterr().out
    assert cli.main(["pipeline", str(pfile), "--list", "--from", "second"]) == 0
    assert capsys.readouterr().out.split("\t")[0] == "second"
    assert cli.main(["run", str(DUMMY), "--params", str(pfile)]) == 2  # two steps run it: ambiguous


def test_cli_failed_run_exits_1(tmp_path):
    rc = cli.main(["run", str(DUMMY), "-p", "fail=true", "--out", str(tmp_path / "f")])
    assert rc == 1


def test_cli_verify_reports_availability(capsys):
    rc = cli.main(["verify"])
    assert rc in (0, 1)
    if rc == 1:
        assert "verif" in capsys.readouterr().err.lower()


def test_book_command_is_strict():
    cmd = cli.book_command(strict=True)
    assert cmd[1:3] == ["build", "."] and {"-W", "-n", "--keep-going"} <= set(cmd)
    assert os.path.basename(cmd[0]) == "jupyter-book"


def test_kernel_stderr_is_relayed_without_the_shutdown_noise(tmp_path, capsys):
    from rftlib.book.runner import SHUTDOWN_NOISE, _relay_kernel_stderr

    log = tmp_path / "kernel.err"
    log.write_text(f"[IPKernelApp] ERROR | {SHUTDOWN_NOISE}.\nUserWarning: a real warning\n")
    _relay_kernel_stderr(log, show=True)
    err = capsys.readouterr().err
    assert "a real warning" in err and "KeyboardInterrupt" not in err and not log.exists()
    log.write_text(f"[IPKernelApp] ERROR | {SHUTDOWN_NOISE}.\n")
    _relay_kernel_stderr(log, show=True)
    assert capsys.readouterr().err == ""


# ---------------------------------------------------------------------------------------------
# What a study step declares: its world as an input, its fine-tuned runs as outputs


@pytest.mark.slow
def test_a_cached_finetune_step_whose_runs_are_missing_runs_again(tmp_path):
    """A fresh checkout holds the committed results but no runs/: the fine-tuning step must not be
    served from the cache (the next step would find no weights)."""
    import yaml

    grid = tmp_path / "grid.yaml"
    grid.write_text(yaml.safe_dump({"defaults": {"epochs": 1, "batch_size": 16, "warmup_steps": 1, "n_train": 32},
                                    "runs": [{"name": "t1", "lr": 1e-4}]}))
    params = {"world": "digits", "grid": str(grid), "runs_root": str(tmp_path / "runs")}
    out, weights = tmp_path / "out", tmp_path / "runs" / "digits" / "t1" / "theta_ft.safetensors"
    first = run_notebook(ROOT / "notebooks" / "finetune.ipynb", params, out)
    assert not first.cached and weights.is_file()
    assert set(first.manifest["input_sha256"]) == {"param:grid", "world", "theta_zs"}  # runs_root holds its outputs
    assert run_notebook(ROOT / "notebooks" / "finetune.ipynb", params, out).cached
    shutil.rmtree(tmp_path / "runs")
    messages: list[str] = []
    third = run_notebook(ROOT / "notebooks" / "finetune.ipynb", params, out, log=messages.append)
    assert not third.cached and weights.is_file()
    assert any("1 of its 1 output file(s) outside its results folder are missing" in m for m in messages)


@pytest.mark.slow
def test_an_edited_world_file_reruns_its_steps(tmp_path, monkeypatch):
    worlds = tmp_path / "worlds"
    shutil.copytree(ROOT / "worlds" / "digits", worlds / "digits")
    monkeypatch.setenv("RFT_WORLDS", str(worlds))
    params, out = {"world": "digits", "n_eval": 8}, tmp_path / "out"
    first = run_notebook(ROOT / "notebooks" / "zeroshot.ipynb", params, out)
    assert not first.cached and {"world", "theta_zs"} <= set(first.manifest["input_sha256"])
    assert run_notebook(ROOT / "notebooks" / "zeroshot.ipynb", params, out).cached
    world_file = worlds / "digits" / "world.yaml"
    world_file.write_text(world_file.read_text() + "# an edit\n")
    assert not run_notebook(ROOT / "notebooks" / "zeroshot.ipynb", params, out).cached
