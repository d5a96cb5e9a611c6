"""The pipeline as a whole: step graph, thread policy, side-by-side steps, progress relay, quiet kernels."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import textwrap
from pathlib import Path

import nbformat
import pandas as pd
import pytest

from rftlib import progress
from rftlib.book.params import load_param_file
from rftlib.book.pipeline import StepsFailed, pipeline_graph, run_pipeline
from rftlib.book.relay import Relay, step_line, time_left, timing_table
from rftlib.book.runner import NotebookExecutionError
from rftlib.book.schedule import (ISA_VARS, THREAD_VARS, ancestors, kernel_env, restrict, run_graph, step_graph,
                                  thread_policy)
from rftlib.errors import ParameterError
from rftlib.files.manifest import read_manifest, repo_root

ROOT = repo_root()

# ------------------------------------------------------------------------------------- the graph


@pytest.mark.parametrize("name", ["default", "quick"])
def test_graph_of_the_study_pipelines(name):
    pf = load_param_file(name)
    g = pipeline_graph(pf)
    worlds = sorted({s.parameters["world"] for s in pf.steps})
    for w in worlds:
        assert g[f"{w}-zeroshot"] == ()
        assert g[f"{w}-finetune"] == (f"{w}-zeroshot",)
        assert g[f"{w}-interpolate"] == (f"{w}-finetune",)
        assert g[f"{w}-stragglers"] == (f"{w}-interpolate",)
        # both name the interpolation and straggler folders: they depend on those, not on each other
        for leaf in ("sharpness", "sparsity"):
            assert g[f"{w}-{leaf}"] == (f"{w}-interpolate", f"{w}-stragglers")
        # the evidence step reads the four tables' folders, so it waits for all four steps
        assert g[f"{w}-evidence"] == tuple(f"{w}-{s}" for s in ("interpolate", "stragglers", "sharpness", "sparsity"))
    for s in pf.steps:  # worlds are independent
        world = s.parameters["world"]
        assert all(pf.get_step(t).parameters["world"] == world for t in ancestors(g, s.name))


def test_graph_rules_barrier_opaque_steps_and_inputs():
    names = ["a1", "a2", "b1", "a3", "a4", "a5", "sum", "b2"]
    params = {
        "a1": {"world": "a"}, "a2": {"world": "a", "x_dir": "book/results/a1"}, "b1": {"world": "b"},
        "a3": {"world": "a"},  # names nothing: may write shared files
        "a4": {"world": "a", "x_dir": "book/results/a2"}, "a5": {"world": "a", "x_dir": "book/results/a2"},
        "sum": {"files": ["book/results/a5/t.csv"]}, "b2": {"world": "b"},
    }
    outputs = {n: f"elsewhere/{n}" for n in names}
    g = step_graph(names, params, outputs, inputs={"b1": {"table": "elsewhere/a1/x.csv"}})
    assert g["a2"] == ("a1",)
    assert g["b1"] == ("a1",)            # an input inside a1's folder
    assert g["a3"] == ("a2",)            # file order within the world
    assert g["a4"] == ("a2", "a3")       # explicit, plus the opaque a3 after it
    assert g["a5"] == ("a2", "a3")       # not a4: both name their inputs
    assert g["sum"] == tuple(names[:6])  # no world: a barrier
    assert g["b2"] == ("sum",)
    assert restrict(g, ["a1", "a4", "b2"]) == {"a1": (), "a4": ("a1",), "b2": ("a1", "a4")}


def test_thread_policy_never_oversubscribes():
    for cpus in (1, 2, 4, 16):
        for load in (0.0, 0.7, 1.6, 3.0, 40.0):
            p = thread_policy(None, cpu_count=cpus, load=load)
            assert p.jobs * p.threads <= max(1, p.free_cores) and p.jobs >= 1 and p.threads == 1
    assert thread_policy(2, cpu_count=8, load=0.0).threads == 4
    assert thread_policy(None, cpu_count=2, load=3.2).jobs == 1
    with pytest.raises(ParameterError, match="--threads must be a positive integer"):
        thread_policy(1, 0)


def test_isa_defaults_to_avx2_on_x86_and_is_refused_where_it_cannot_apply(monkeypatch):
    for machine, want in (("x86_64", "avx2"), ("AMD64", "avx2"), ("aarch64", "native"), ("arm64", "native")):
        monkeypatch.setattr(platform, "machine", lambda m=machine: m)
        p = thread_policy(1, cpu_count=2, load=0.0)
        assert p.isa == want and p.to_dict()["isa"] == want
        assert ("ATEN_CPU_CAPABILITY" in kernel_env(p)) == (want == "avx2")
    with pytest.raises(ParameterError, match="--isa avx2 is for x86-64 CPUs; this one is 'arm64': use --isa native"):
        thread_policy(1, isa="avx2")
    with pytest.raises(ParameterError, match="--isa must be one of avx2, native, got 'sse'"):
        thread_policy(1, isa="sse")
    monkeypatch.setattr(platform, "machine", lambda: "x86_64")
    assert kernel_env(thread_policy(1, cpu_count=2, load=0.0, isa="native")) == {v: "2" for v in THREAD_VARS}


@pytest.mark.skipif(platform.machine() not in ("x86_64", "AMD64"), reason="the AVX2 cap is for x86-64")
def test_isa_variables_cap_torch_and_onednn_at_avx2(tmp_path):
    """The variable names are the libraries' own: a kernel started with them reports AVX2 (torch's
    CPU kernels) and oneDNN picks AVX2 for a convolution (its verbose line names the ISA)."""
    probe = ("import torch\n"
             "print('capability', torch.backends.cpu.get_cpu_capability())\n"
             "torch.nn.functional.conv2d(torch.randn(1, 3, 8, 8), torch.randn(2, 3, 4, 4), stride=4)\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "ONEDNN_VERBOSE": "1", **ISA_VARS}
    out = subprocess.run([sys.executable, "-c", probe], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    capability = next(ln.split()[1] for ln in out.stdout.splitlines() if ln.startswith("capability"))
    onednn = [ln for ln in out.stdout.splitlines() if ",isa:" in ln]
    if capability in ("DEFAULT", "NO AVX"):
        pytest.skip(f"this CPU has no AVX2 (torch reports {capability})")
    assert capability == "AVX2"
    assert onednn and onednn[0].rstrip().endswith("AVX2"), onednn


def test_scheduler_stops_dependants_of_a_failure_only():
    ran: list[str] = []

    def one(s):
        ran.append(s)
        if s == "a2":
            raise RuntimeError("boom")
        return s

    g = {"a1": (), "a2": ("a1",), "a3": ("a2",), "a4": ("a3",), "b1": (), "b2": ("b1",)}
    ok, bad, skipped = run_graph(g, one, jobs=2, priority={"b1": 10.0})
    assert set(ok) == {"a1", "b1", "b2"} and list(bad) == ["a2"] and skipped == {"a3": "a2", "a4": "a2"}
    assert ran[0] == "b1" or ran[:2] == ["a1", "b1"] or ran[:2] == ["b1", "a1"]


def test_scheduler_halts_after_an_interrupted_step():
    class Stop(Exception):
        pass

    def one(s):
        if s == "a":
            raise Stop()
        return s

    ok, bad, skipped = run_graph({"a": (), "b": ("a",), "c": ()}, one, jobs=1, halt_on=(Stop,))
    assert ok == {} and list(bad) == ["a"] and skipped == {"b": "a"}  # c was never started


# ------------------------------------------------------------------------------------- progress


def test_progress_file_written_by_bar_throttled(tmp_path, monkeypatch):
    path = tmp_path / "p.json"
    monkeypatch.setenv(progress.PROGRESS_FILE_ENV, str(path))
    writes = []
    real_replace = os.replace
    monkeypatch.setattr(progress.os, "replace", lambda a, b: (writes.append(b), real_replace(a, b)))
    with progress.bar(total=3, desc="runs", unit="run") as outer:
        for _ in progress.bar(range(2000), desc="alphas"):
            pass
        state = progress.read_state(path)
        assert [b["desc"] for b in state["bars"]] == ["runs"]  # the inner bar closed
        outer.update(2)
    state = progress.read_state(path)
    assert state["pid"] == os.getpid()
    assert [(b["desc"], b["n"], b["total"], b["unit"]) for b in state["bars"]] == [("runs", 2, 3, "run")]
    assert len(writes) <= 6  # 2000 updates: bars opening and closing, not every update
    monkeypatch.delenv(progress.PROGRESS_FILE_ENV)
    assert progress.progress_file() is None


def test_progress_nested_bars_reported_outermost_first(tmp_path, monkeypatch):
    path = tmp_path / "p.json"
    monkeypatch.setenv(progress.PROGRESS_FILE_ENV, str(path))
    monkeypatch.setattr(progress, "WRITES_PER_SECOND", 1e9)
    with progress.bar(total=2, desc="runs") as outer:
        outer.update(1)
        with progress.bar(total=11, desc="alphas") as inner:
            inner.update(4)
            state = progress.read_state(path)
    assert [(b["desc"], b["n"]) for b in state["bars"]] == [("runs", 1), ("alphas", 4)]
    assert progress.read_state(tmp_path / "missing.json") is None


def test_relay_eta_from_recorded_timing(tmp_path):
    timings = tmp_path / "timings.csv"
    pd.DataFrame({"step": ["w-fit"], "seconds": [300.0], "cached": [False]}).to_csv(timings, index=False)
    from rftlib.book.pipeline import _recorded_times

    recorded = _recorded_times(timings)
    state = {"bars": [{"desc": "fit", "n": 1, "total": 10, "elapsed": 10.0, "unit": "it"}]}
    assert step_line("w-fit", 120.0, state, recorded.get("w-fit")) == "w-fit  2:00 run, ~3:00 left  fit 1/10"
    assert time_left(400.0, recorded["w-fit"], state) == 0.0
    assert time_left(10.0, None, state) == pytest.approx(90.0)  # no record: the outer bar's rate
    assert "?" in step_line("w-new", 5.0, None, None)
    assert timing_table([{"step": "w-fit", "status": "ran", "seconds": 61, "recorded": 300.0}]).splitlines()[1].split() \
        == ["w-fit", "ran", "1:01", "5:00"]


def test_relay_plain_lines_are_periodic(tmp_path):
    pfile = tmp_path / "s.json"
    pfile.write_text(json.dumps({"bars": [{"desc": "alphas", "n": 3, "total": 11, "elapsed": 1.0}]}))
    lines: list[str] = []
    import time

    with Relay(echo=lines.append, interval=0.05) as relay:
        relay.start("w-interp", pfile, recorded=60.0)
        time.sleep(0.3)
        relay.stop("w-interp")
        relay.say("done")
    live = [ln for ln in lines if "w-interp" in ln]
    assert live and all("alphas 3/11" in ln and "left" in ln for ln in live) and lines[-1] == "done"


def test_relay_tty_redraws_in_place(tmp_path):
    import io

    pfile = tmp_path / "s.json"
    pfile.write_text(json.dumps({"bars": [{"desc": "runs", "n": 1, "total": 2}]}))
    out = io.StringIO()
    relay = Relay(tty=True, stream=out, interval=10)
    relay.start("w-a", pfile)
    relay.say("first")
    relay.say("second")
    text = out.getvalue()
    assert text.count("w-a") == 2 and "\x1b[1F\x1b[J" in text and text.index("first") < text.index("second")


# ------------------------------------------------------------------------ running fake notebooks

STEP_SOURCE = textwrap.dedent("""\
    import json, os, time
    from rftlib.progress import bar
    t0 = time.time()
    for _ in bar(range(4), desc="work"):
        time.sleep(sleep / 4)
    if fail:
        raise RuntimeError("failing on purpose")
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "times.json"), "w") as f:
        json.dump({"start": t0, "end": time.time(), "threads": os.environ.get("RFT_THREADS"),
                   "omp": os.environ.get("OMP_NUM_THREADS"), "progress": bool(os.environ.get("RFT_PROGRESS_FILE")),
                   "isa": os.environ.get("ATEN_CPU_CAPABILITY")}, f)
    """)


def _fake_notebook(folder: Path) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.cells = [
        nbformat.v4.new_code_cell(
            'world = "a"  # str: world\n'
            "sleep = 0.0  # float: seconds of work\n"
            "fail = False  # bool: raise instead of finishing\n"
            'in_dir = ""  # str: an upstream results folder\n'
            'out_dir = "book/results/x"  # str: results folder (the runner sets it)',
            metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell(STEP_SOURCE),
    ]
    path = folder / "step.ipynb"
    nbformat.write(nb, str(path))
    return path


def _pipeline(folder: Path, steps: list[tuple[str, str]]) -> Path:
    nb = _fake_notebook(folder)
    body = "".join(f"  - {{name: {n}, notebook: {nb}, parameters: {p}}}\n" for n, p in steps)
    path = folder / "pipe.yaml"
    path.write_text("description: fake steps\nsteps:\n" + body)
    return path


def _times(results: Path, step: str) -> dict:
    return json.loads((results / step / "times.json").read_text())


@pytest.mark.slow
def test_independent_steps_run_side_by_side_with_one_thread_each(tmp_path):
    pipe = _pipeline(tmp_path, [("a-one", "{world: a, sleep: 3.0}"), ("b-one", "{world: b, sleep: 3.0}")])
    results = tmp_path / "results"
    lines: list[str] = []
    done = run_pipeline(pipe, results_dir=results, echo=lines.append, jobs=2, threads=1)
    assert [r.name for r in done] == ["a-one", "b-one"]
    a, b = _times(results, "a-one"), _times(results, "b-one")
    assert a["start"] < b["end"] and b["start"] < a["end"], "the two steps did not overlap"
    assert a["threads"] == a["omp"] == "1" and a["progress"]
    m = read_manifest(results / "a-one")
    assert m["execution"]["jobs"] == 2 and m["execution"]["threads"] == 1 and "load" in m["execution"]
    assert a["isa"] == ("avx2" if m["execution"]["isa"] == "avx2" else None)  # the kernel got the cap
    assert m["execution"]["isa"] == ("avx2" if platform.machine() in ("x86_64", "AMD64") else "native")
    assert read_manifest(results / "pipeline")["execution"]["jobs"] == 2
    assert any(ln.startswith("step ") and "before" in ln for ln in lines)  # the final table
    assert not any("without encryption" in ln for ln in lines)


@pytest.mark.slow
def test_failed_step_stops_its_dependants_not_other_worlds(tmp_path, capsys, monkeypatch):
    pipe = _pipeline(tmp_path, [
        ("a-one", "{world: a, fail: true}"),
        ("a-two", "{world: a}"),
        ("b-one", "{world: b}"),
        ("b-two", "{world: b}"),
    ])
    results = tmp_path / "results"
    lines: list[str] = []
    with pytest.raises(StepsFailed, match="step a-one failed.*a-two \\(needs a-one\\)") as e:
        run_pipeline(pipe, results_dir=results, echo=lines.append, jobs=2)
    assert isinstance(e.value, NotebookExecutionError) and list(e.value.errors) == ["a-one"]
    assert (results / "b-two" / "times.json").is_file() and not (results / "a-two").exists()
    table = "\n".join(lines)
    assert "a-two  not run (needs a-one)" in table.replace("   ", "  ") or "not run (needs a-one)" in table
    assert "1 failed (a-one)" in lines[-1]
    t = pd.read_csv(results / "pipeline" / "timings.csv")
    assert list(t["step"]) == ["b-one", "b-two"]

    import functools

    from rftlib import cli
    from rftlib.book import pipeline as pipeline_module

    # the command line has no results option (a pipeline's results_root lies in the repository): keep it in tmp_path
    monkeypatch.setattr(pipeline_module, "run_pipeline",
                        functools.partial(pipeline_module.run_pipeline, results_dir=tmp_path / "cli-results"))
    assert cli.main(["pipeline", str(pipe), "--only", "a-one"]) == 1  # a failed run exits non-zero
    assert (tmp_path / "cli-results" / "a-one" / "step.failed.ipynb").is_file()
    assert "failing on purpose" in capsys.readouterr().err


@pytest.mark.slow
def test_kernel_warnings_silenced_in_a_runs_stderr(tmp_path):
    nb = _fake_notebook(tmp_path)
    code = ("from rftlib.book.runner import run_notebook; "
            f"run_notebook({str(nb)!r}, {{}}, {str(tmp_path / 'out')!r}, kernel_env={{'RFT_THREADS': '1'}})")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "without encryption" not in proc.stderr and "IPKernelApp] WARNING" not in proc.stderr
    assert "KeyboardInterrupt" not in proc.stderr  # no SIGINT before the shutdown request
    assert _times(tmp_path, "out")["threads"] == "1"
