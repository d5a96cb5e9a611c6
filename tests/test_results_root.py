"""Each pipeline writes into its own results root, and the book says which root it was built from.

Before: ``quick.yaml`` wrote into the book's ``book/results/<world>-<step>/`` (replacing the
committed default results of two worlds), and the book was always rendered from ``book/results``.
The fast tests run pipelines with a stand-in for the notebook runner in a scratch checkout
(``RFT_REPO_ROOT``: a folder with ``pyproject.toml`` whose ``notebooks/`` is the real one), so no
kernel starts; one slow test runs a real notebook step into a root of its own, twice.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pandas as pd
import pytest
import yaml

from rftlib import cli
from rftlib.book import pages, pipeline
from rftlib.book.params import load_param_file, validate_params
from rftlib.book.runner import RunResult
from rftlib.errors import ParameterError
from rftlib.files.manifest import read_manifest, repo_root

REAL = repo_root()
DUMMY = REAL / "tests" / "fixtures" / "dummy.ipynb"


@pytest.fixture
def checkout(tmp_path, monkeypatch):
    """A scratch checkout (the repository root for rftlib) with the real notebooks and pipeline files,
    and a default results root holding one step's results; yields its root."""
    root = tmp_path / "repo"
    (root / "book" / "results" / "fashion-interpolate").mkdir(parents=True)
    (root / "pyproject.toml").write_text("")
    (root / "notebooks").symlink_to(REAL / "notebooks")
    (root / "_toc.yml").symlink_to(REAL / "_toc.yml")
    (root / "book" / "results" / "fashion-interpolate" / "summary.csv").write_text("run\nr1\n")
    monkeypatch.setenv("RFT_REPO_ROOT", str(root))
    return root


def _snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every path under ``folder`` with its size and modification time (folders too)."""
    out = {}
    for p in sorted(folder.rglob("*")):
        st = p.lstat()
        out[p.relative_to(folder).as_posix()] = (st.st_size if p.is_file() else -1, st.st_mtime_ns)
    return out


def _fake_runner(calls: list[dict]):
    """A stand-in for :func:`rftlib.book.runner.run_notebook` that records what each step is given
    and writes one file into its results folder."""

    def run_notebook(notebook, params, out_dir, *, kernel_env=None, name=None, **kw):
        out = Path(out_dir)
        calls.append({"name": name, "params": dict(params), "out_dir": out})
        out.mkdir(parents=True, exist_ok=True)
        (out / "done.txt").write_text("ran")
        return RunResult(name, out / f"{Path(notebook).stem}.ipynb", out, {}, False, 0.01)

    return run_notebook


def _paths_named(params: dict) -> list[str]:
    """The string values of a step's parameters that name a folder under ``book/``."""
    values = [v for v in params.values() if isinstance(v, str)]
    return [v for v in values if v.startswith("book/")]


# ---------------------------------------------------------------------------------------------
# the loader: quick.yaml's outputs all lie under its root


def test_quick_file_resolves_every_output_under_its_root():
    pf = load_param_file("quick")
    assert pf.results_root == "book/results-quick"
    pf, root = pipeline.rooted(pf)
    assert root == REAL / "book" / "results-quick"
    for step in pf.steps:
        out = pipeline.step_folder(root, step)
        assert out == f"book/results-quick/{step.name}"
        given = pf.parameters_for(step)
        full = validate_params(step.notebook, {**given, "out_dir": out})
        dirs = {k: v for k, v in full.items() if k.endswith("_dir")}
        assert dirs and all(v.startswith("book/results-quick/") for v in dirs.values()), (step.name, dirs)
        assert not [v for v in _paths_named(given) if not v.startswith("book/results-quick/")], step.name
    sharp = pf.parameters_for(pf.get_step("digits-sharpness"))
    assert sharp["interpolate_dir"] == "book/results-quick/digits-interpolate"
    assert sharp["stragglers_dir"] == "book/results-quick/digits-stragglers"


def test_default_file_keeps_its_parameters_and_root():
    pf = load_param_file("default")
    assert pf.results_root == "book/results"
    step = pf.get_step("fashion-sharpness")
    assert pf.parameters_for(step) == {"runs_root": "runs", "seed": 0, **step.parameters}  # nothing added


def test_quick_graph_follows_the_resolved_folders():
    g = pipeline.pipeline_graph(load_param_file("quick"))
    assert g["fashion-sparsity"] == ("fashion-interpolate", "fashion-stragglers")
    assert g["digits-stragglers"] == ("digits-interpolate",)


# ---------------------------------------------------------------------------------------------
# a run: the default root is never touched


def test_pipeline_with_its_own_root_never_touches_book_results(checkout, monkeypatch):
    before = _snapshot(checkout / "book" / "results")
    calls: list[dict] = []
    monkeypatch.setattr(pipeline, "run_notebook", _fake_runner(calls))
    lines: list[str] = []
    done = pipeline.run_pipeline("quick", echo=lines.append, jobs=1, threads=1)
    assert len(done) == len(calls) == len(load_param_file("quick").steps) == 14
    assert _snapshot(checkout / "book" / "results") == before
    quick = checkout / "book" / "results-quick"
    for c in calls:
        assert c["out_dir"] == quick / c["name"] and (quick / c["name"] / "done.txt").is_file()
        assert all(v.startswith("book/results-quick/") for v in _paths_named(c["params"])), c
    assert calls[-1]["params"]["stragglers_dir"] == "book/results-quick/digits-stragglers"
    timings = pd.read_csv(quick / "pipeline" / "timings.csv")
    assert list(timings["step"]) == load_param_file("quick").step_names()
    assert read_manifest(quick / "pipeline")["parameters"]["pipeline"] == "quick"
    assert "into book/results-quick" in lines[0]


def test_pipeline_list_shows_the_root(capsys):
    assert cli.main(["pipeline", "quick", "--list", "--only", "digits-sparsity"]) == 0
    io = capsys.readouterr()
    assert io.out == "digits-sparsity\tnotebooks/sparsity.ipynb\tbook/results-quick/digits-sparsity\n"
    assert "results root book/results-quick" in io.err


@pytest.mark.slow
def test_a_step_in_its_own_root_is_cached_as_before(checkout):
    shutil.copy(DUMMY, checkout / "dummy.ipynb")
    (checkout / "mine.yaml").write_text(
        "results_root: book/results-mine\nsteps:\n  - {name: one, notebook: dummy.ipynb, parameters: {alpha: 0.25}}\n")
    before = _snapshot(checkout / "book" / "results")
    first = pipeline.run_pipeline(checkout / "mine.yaml", echo=lambda _: None, jobs=1, threads=1)
    again = pipeline.run_pipeline(checkout / "mine.yaml", echo=lambda _: None, jobs=1, threads=1)
    step = checkout / "book" / "results-mine" / "one"
    assert [r.cached for r in first + again] == [False, True]
    assert (step / "result.csv").read_text() == "alpha,epochs,world\n0.25,2,fashion\n"
    assert read_manifest(step)["parameters"]["out_dir"] == "book/results-mine/one"
    assert _snapshot(checkout / "book" / "results") == before


# ---------------------------------------------------------------------------------------------
# the book: rendered from the root it is given, and saying so


def _results_root(checkout: Path, name: str = "results-x", pipeline_name: str = "x") -> Path:
    root = checkout / "book" / name
    (root / "fashion-interpolate").mkdir(parents=True)
    (root / "fashion-interpolate" / "id_ood_plane.png").write_bytes(b"\x89PNG")
    (root / "fashion-sharpness").mkdir()
    (root / "fashion-sharpness" / "claims.csv").write_text(
        "claim,world,statistic,value,ci_low,ci_high,p_value,verdict\nF1,fashion,tau,0.1,-0.2,0.3,0.5,mixed\n")
    (root / "pipeline").mkdir()
    (root / "pipeline" / "manifest.json").write_text(json.dumps({"parameters": {"pipeline": pipeline_name}}))
    pd.DataFrame({"step": ["fashion-zeroshot"], "seconds": [60.0], "cached": [False]}).to_csv(
        root / "pipeline" / "timings.csv", index=False)
    return root


def test_render_pages_from_a_root_says_so_and_shows_its_figures(checkout):
    _results_root(checkout)
    paths = pages.render_pages("book/results-x")
    text = {p.name: p.read_text() for p in paths}
    line = "Built from the results in `book/results-x` (pipeline `x`)."
    assert line in text["intro.md"] and line in text["reproduce.md"]
    assert "```{figure} /book/results-x/fashion-interpolate/id_ood_plane.png" in text["intro.md"]
    assert "`book/results-x/pipeline/timings.csv`" in text["reproduce.md"]
    assert "F1 mixed" in text["intro.md"]  # the claims of that root
    assert not [n for n, t in text.items() if "/book/results/" in t or "`book/results/" in t]


def test_rft_book_renders_from_the_root_it_is_given(checkout, monkeypatch):
    _results_root(checkout, "results-quick", "quick")
    ran: list[list[str]] = []
    monkeypatch.setattr(cli, "fetch_mathjax", lambda force=False: None)
    monkeypatch.setattr(cli.subprocess, "run", lambda cmd, **kw: ran.append(cmd) or type("P", (), {"returncode": 0}))
    assert cli.main(["book", "--results", "book/results-quick"]) == 0
    assert ran and "Built from the results in `book/results-quick` (pipeline `quick`)." in (
        checkout / "book" / "_generated" / "intro.md").read_text()
    toc = ran[0][ran[0].index("--toc") + 1]
    assert Path(toc) == checkout / "book" / "_generated" / "_toc.yml"


def test_the_toc_of_another_root_lists_that_roots_executed_notebooks(checkout):
    """Methods pages come from the root the book is built from, and what it lacks is left out: the
    notebooks, and a world's methods chapter when none of its notebooks is there."""
    root = _results_root(checkout, "results-quick", "quick")
    (root / "fashion-interpolate" / "interpolate.ipynb").write_text("{}")
    toc = yaml.safe_load(pages.toc_for("book/results-quick").read_text())
    files = []

    def walk(entries):
        for e in entries:
            files.extend([e["file"]] if "file" in e else [])
            walk(e.get("sections", []) + e.get("chapters", []))

    walk(toc["parts"])
    executed = [f for f in files if f.startswith("book/results")]
    assert executed == ["book/results-quick/fashion-interpolate/interpolate"]
    assert "book/methods/fashion" in files and "book/methods/worlds" in files and "book/findings/claims" in files
    assert "book/methods/digits" not in files and "book/methods/digits-clean" not in files


def _one_error_line(err: str, *fragments: str) -> None:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("rft: error: "), err
    assert all(f in lines[0] for f in fragments), err


@pytest.mark.parametrize("value, fragment", [
    ("/elsewhere/results", "lies outside the repository"),
    ("../results", "lies outside the repository"),
    (".", "is the repository itself"),
    ("3", "is not a folder path"),
])
def test_bad_results_root_in_a_pipeline_file_is_one_line(checkout, capsys, value, fragment):
    f = checkout / "p.yaml"
    f.write_text(f"results_root: {value}\nsteps:\n  - {{notebook: {DUMMY}}}\n")
    assert cli.main(["pipeline", str(f), "--list"]) == 2
    _one_error_line(capsys.readouterr().err, "results_root", fragment, "e.g. book/results-quick")


@pytest.mark.parametrize("value, fragments", [
    ("/elsewhere/results", ("--results", "lies outside the repository")),
    ("book/results-none", ("--results book/results-none does not exist", "run the pipeline that writes it first")),
    ("book/results-quick", ("does not exist", "run `rft pipeline notebooks/params/quick.yaml` first")),
])
def test_bad_book_root_is_one_line_before_anything_runs(checkout, capsys, monkeypatch, value, fragments):
    def boom(*a, **k):
        raise AssertionError("the book was fetched or built")

    monkeypatch.setattr(cli, "fetch_mathjax", boom)
    monkeypatch.setattr(cli.subprocess, "run", boom)
    assert cli.main(["book", "--results", value]) == 2
    _one_error_line(capsys.readouterr().err, *fragments)
    assert not (checkout / "book" / "_generated").exists()


def test_render_pages_refuses_a_root_outside_the_repository(tmp_path):
    with pytest.raises(ParameterError, match="outside the repository"):
        pages.render_pages(tmp_path)
    assert os.listdir(tmp_path) == []


def test_rft_run_of_a_pipeline_step_writes_under_that_pipelines_root(checkout, monkeypatch):
    """``rft run NB --params quick`` runs quick's step into quick's root, not ``book/results``."""
    from rftlib.book import runner

    calls: list[dict] = []
    monkeypatch.setattr(runner, "run_notebook", _fake_runner(calls))
    before = _snapshot(checkout / "book" / "results")
    assert cli.main(["run", "notebooks/zeroshot.ipynb", "--params", "quick", "--step", "fashion-zeroshot"]) == 0
    assert calls[0]["out_dir"] == checkout / "book" / "results-quick" / "fashion-zeroshot"
    assert _snapshot(checkout / "book" / "results") == before
