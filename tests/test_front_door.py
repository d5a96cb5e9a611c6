"""One front door: every command a user runs is a verb of ``rft`` (one argument parser), and
``repro.sh`` only sets up and hands over.

- no module of ``rftlib`` but ``rftlib.cli`` parses a command line or runs as ``__main__``, and there is
  no ``scripts/`` folder;
- ``rft data``, ``rft convert-openai``, ``rft gpu-measure`` and ``rft finetune`` keep the options of the
  commands they replace; ``rft finetune --nproc N`` and ``rft pipeline --ddp N`` launch
  ``torch.distributed.run`` themselves (here with the launch replaced: the end-to-end runs on 2
  ranks are the slow tests of ``test_distributed.py``).
"""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

from rftlib import cli
from rftlib.book import finetune_ddp
from rftlib.book.finetune_ddp import FinetuneOptions
from rftlib.book.gpu_measure import MeasureOptions
from rftlib.errors import DataNotFoundError
from rftlib.models import distributed as D
from rftlib.worlds import data

ROOT = Path(__file__).resolve().parents[1]
QUICK_GRID = "notebooks/params/grids/quick.yaml"


def _one_error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("rft: error: "), err
    return err[0]


# ---------------------------------------------------------------------------------------------
# one parser


def _parses_a_command_line(path: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) else [])
            if "argparse" in names:
                found.append(f"{path.name}:{node.lineno} imports argparse")
        if isinstance(node, ast.If) and "__name__" in ast.unparse(node.test) and "__main__" in ast.unparse(node.test):
            found.append(f"{path.name}:{node.lineno} runs as __main__")
    return found


def test_only_the_cli_parses_a_command_line():
    found = [f for p in sorted((ROOT / "rftlib").rglob("*.py")) if p != ROOT / "rftlib" / "cli.py"
             for f in _parses_a_command_line(p)]
    assert found == []
    assert not (ROOT / "scripts").exists()


def test_repro_sh_hands_over_to_rft():
    text = (ROOT / "repro.sh").read_text()
    assert "-m rftlib" not in text
    for verb in ("data", "data --download", "mathjax", "pipeline", "book --strict"):
        assert f'"$VENV/bin/rft" {verb}' in text


def test_every_verb_is_in_the_one_parser():
    verbs = set(cli.build_parser()._subparsers._group_actions[0].choices)
    assert {"run", "pipeline", "params", "book", "mathjax", "verify", "bench", "data", "convert-openai",
            "gpu-measure", "finetune"} <= verbs


# ---------------------------------------------------------------------------------------------
# rft data


def test_rft_data_says_where_each_data_set_is(tmp_path, monkeypatch, capsys):
    for pair in data.FASHION_FILES.values():
        for stem in pair:
            (tmp_path / stem).write_bytes(b"")
    monkeypatch.setenv("RFT_FASHION_MNIST", str(tmp_path))
    assert cli.main(["data"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == f"Fashion-MNIST: {tmp_path}"
    assert out[1].startswith("MNIST-5k: (5000, 28, 28)") and out[2].startswith("sklearn digits: (1797, 8, 8)")


def test_rft_data_download_fetches_only_what_is_missing(tmp_path, monkeypatch, capsys):
    def missing(root=None):
        raise DataNotFoundError("Fashion-MNIST was not found. Do one of: ...")

    fetched = []
    monkeypatch.delenv("RFT_FASHION_MNIST", raising=False)
    monkeypatch.setattr(data, "find_fashion_mnist", missing)
    monkeypatch.setattr(data, "download_fashion_mnist", lambda: fetched.append(1) or tmp_path)
    assert cli.main(["data"]) == 2
    assert "Fashion-MNIST was not found" in _one_error_line(capsys) and not fetched
    assert cli.main(["data", "--download"]) == 0
    assert fetched == [1] and f"Fashion-MNIST: downloaded to {tmp_path}" in capsys.readouterr().out


def test_rft_mathjax_status_fetches_nothing(monkeypatch, capsys):
    from rftlib.book import mathjax

    monkeypatch.setattr(mathjax, "ensure", lambda force=False: pytest.fail("fetched"))
    monkeypatch.setattr(mathjax, "is_installed", lambda dest=None: False)
    assert cli.main(["mathjax", "--status"]) == 1
    assert capsys.readouterr().out.startswith(f"MathJax {mathjax.MATHJAX_VERSION}: missing in ")
    monkeypatch.setattr(mathjax, "is_installed", lambda dest=None: True)
    assert cli.main(["mathjax", "--status"]) == 0


# ---------------------------------------------------------------------------------------------
# rft gpu-measure: the options of the measurement, checked before any model is built


def _measure_options(argv: list[str]) -> MeasureOptions:
    ns = cli.build_parser().parse_args(["gpu-measure", *argv])
    return MeasureOptions(**{f.name: getattr(ns, f.name) for f in dataclasses.fields(MeasureOptions)})


def test_gpu_measure_options():
    assert _measure_options([]) == MeasureOptions()
    o = _measure_options(["--device", "cpu", "--tiny", "--threads", "2", "--batch-size", "32", "--no-compile",
                          "--phases", "finetune_throughput", "--time-budget", "600"]).resolved()
    assert (o.device, o.threads, o.compile, o.model, o.batch_size, o.time_budget) == ("cpu", 2, False, "rft-tiny", 16, 120.0)
    assert o.phase_names() == ["finetune_throughput"]


def test_gpu_measure_refuses_bad_options_before_building_a_model(monkeypatch, capsys):
    from rftlib.book import gpu_measure

    monkeypatch.setattr(gpu_measure, "build_model", lambda *a, **k: pytest.fail("a model was built"))
    assert cli.main(["gpu-measure", "--n-iters", "0"]) == 2
    assert "--n-iters=0 must be at least 1" in _one_error_line(capsys)


# ---------------------------------------------------------------------------------------------
# rft finetune and rft pipeline --ddp: torch.distributed.run is launched by rft itself


def _finetune_options(argv: list[str]) -> FinetuneOptions:
    ns = cli.build_parser().parse_args(argv)
    values = {f.name: getattr(ns, f.name) for f in dataclasses.fields(FinetuneOptions)}
    return FinetuneOptions(**{**values, "runs": tuple(ns.runs)})


def test_each_rank_gets_the_options_of_the_command():
    o = FinetuneOptions(world="paper-cifar10", grid="g.yaml", runs=("a", "b"), runs_root="r", force=True,
                        device="cpu", bf16=False, compile=True, threads=1, nproc=3)
    assert _finetune_options(o.argv()) == dataclasses.replace(o, nproc=1)
    assert _finetune_options(["finetune"]) == FinetuneOptions()


@pytest.fixture
def launches(monkeypatch):
    """The commands ``rft`` launches (none runs); each returns ``launches.rc``."""
    calls: list[list[str]] = []

    def fake(cmd, cwd=None, env=None):
        calls.append(list(cmd))
        return fake.rc

    fake.rc = 0
    fake.calls = calls
    for v in D.ENV_VARS:
        monkeypatch.delenv(v, raising=False)
    monkeypatch.setattr(D, "launch", fake)
    monkeypatch.setattr(finetune_ddp, "finetune_runs", lambda o, echo=print: pytest.fail("ran in this process"))
    return fake


def test_rft_finetune_nproc_launches_torch_distributed_run(launches, capsys):
    argv = ["finetune", "--world", "fashion", "--grid", QUICK_GRID, "--runs", "lr1e-3", "--threads", "1"]
    assert cli.main([*argv, "--nproc", "2"]) == 0
    (cmd,) = launches.calls
    assert cmd[1:5] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    assert cmd[5:] == ["-m", "rftlib.cli", *argv]
    launches.rc = 1
    assert cli.main([*argv, "--nproc", "2"]) == 1
    assert "data-parallel fine-tuning on 2 processes failed (exit code 1)" in capsys.readouterr().err


def test_rft_finetune_under_torchrun_runs_in_the_rank(launches, monkeypatch):
    ran = []
    monkeypatch.setattr(finetune_ddp, "finetune_runs", lambda o, echo=print: ran.append(o))
    monkeypatch.setenv("RANK", "0")
    assert cli.main(["finetune", "--world", "fashion", "--grid", QUICK_GRID, "--nproc", "2"]) == 0
    assert launches.calls == [] and [o.nproc for o in ran] == [2]


def test_rft_finetune_refuses_a_bad_run_before_launching(launches, capsys):
    assert cli.main(["finetune", "--world", "fashion", "--grid", QUICK_GRID, "--runs", "lr9", "--nproc", "2"]) == 2
    assert "lr9" in _one_error_line(capsys) and launches.calls == []
    assert cli.main(["finetune", "--world", "fashion", "--grid", QUICK_GRID, "--run", "lr1e-3"]) == 2
    assert "use --runs NAME" in _one_error_line(capsys)


def test_pipeline_ddp_fine_tunes_first_then_runs_the_pipeline(launches, monkeypatch):
    from rftlib.book import pipeline

    order = []
    monkeypatch.setattr(pipeline, "run_pipeline", lambda pf, **kw: order.append(("pipeline", kw["only"])))
    launches_calls = launches.calls
    assert cli.main(["pipeline", "quick", "--only", "fashion-finetune", "--ddp", "2", "--threads", "1"]) == 0
    assert order == [("pipeline", ["fashion-finetune"])]
    (cmd,) = launches_calls
    assert cmd[cmd.index("rftlib.cli") + 1:] == ["finetune", "--world", "fashion", "--grid", QUICK_GRID,
                                                 "--runs-root", "runs/quick", "--threads", "1"]


def test_pipeline_ddp_checks_every_step_before_fine_tuning(launches, tmp_path, capsys):
    bad = tmp_path / "p.yaml"
    bad.write_text("steps:\n"
                   f"  - {{name: ft, notebook: notebooks/finetune.ipynb, parameters: {{grid: {QUICK_GRID}, runs: [lr9]}}}}\n")
    assert cli.main(["pipeline", str(bad), "--ddp", "2"]) == 2
    assert "runs[0]='lr9' is not a run of" in _one_error_line(capsys) and launches.calls == []
