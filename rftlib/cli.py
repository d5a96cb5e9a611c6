"""The ``rft`` command: run notebooks and pipelines, show parameters, build the book.

::

    rft run NOTEBOOK [--params NAME] [--step STEP] [-p key=value ...] [--out DIR] [--force] [--timeout S] [--isa I]
    rft pipeline PARAMFILE [--only STEP ...] [--from STEP] [--force] [--timeout S] [--list] [--ddp N] [--isa I]
    rft params NOTEBOOK
    rft book [--results ROOT] [--strict] [--builder html]
    rft mathjax [--force] [--status]
    rft verify                       (alias of rft world verify)
    rft world new NAME --from BASE [--set key=value ...]
    rft world pretrain NAME [--threads N] [--restart] [--force]
    rft world verify [NAME ...]
    rft world list
    rft pipeline --world NAME [--quick] [--list]
    rft bench [--full] [--world W] [--threads N] [--out FILE]
    rft bench --job [--pipeline FILE] [--conditions quiet,shared] [--keep] [--commit REV] [--out FILE]
    rft compare OLD NEW [--tol T]
    rft data [--download]
    rft convert-openai SRC.pt DEST.safetensors
    rft gpu-measure [--device D] [--tiny] [--out FILE] [--time-budget S] [--phases P,...] ...
    rft finetune --world W --grid GRID [--runs RUN ...] [--nproc N] ...

Errors print one line, ``rft: error: ...``, without a traceback (``RFT_DEBUG=1`` shows it); the exit
code is 2 for bad input (parameters, names, missing files), 1 for a failed run or build.

Example:
    >>> build_parser().prog
    'rft'
    >>> main(["params", "no/such/notebook.ipynb"])
    2
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from rftlib.errors import ParameterError, RftError
from rftlib.files.layout import DEFAULT_PIPELINE, RESULTS_ROOT
from rftlib.book.mathjax import MATHJAX_DIR, MATHJAX_VERSION
from rftlib.book.schedule import ISAS

if TYPE_CHECKING:  # pragma: no cover
    from rftlib.book.finetune_ddp import FinetuneOptions
    from rftlib.book.params import ParamFile

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130



class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line and exit 2, as for every bad input
        self.print_usage(sys.stderr)
        self.exit(EXIT_BAD_INPUT, f"rft: error: {message}\n")


ISA_HELP = ("kernels' CPU instructions: avx2 (default on x86-64: the same numbers with or without AVX-512) "
            "or native (the machine's best)")


def _echo(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# run, pipeline, params


def cmd_run(a: argparse.Namespace) -> int:
    from rftlib.book.params import apply_overrides, load_param_file, resolve_path
    from rftlib.book.pipeline import rooted, step_results_dir
    from rftlib.book.runner import DEFAULT_TIMEOUT, check_timeout, run_notebook
    from rftlib.book.schedule import isa_env, resolve_isa

    timeout = check_timeout(a.timeout)
    env = isa_env(resolve_isa(a.isa))
    nb = resolve_path(a.notebook, kind="notebook")
    params: dict = {}
    name, inputs, check = None, {}, None
    out = a.out
    if a.params:
        pf, root = rooted(load_param_file(a.params))
        step = pf.step_for(nb, a.step)
        params = pf.parameters_for(step)
        name = step.name if pf.is_pipeline else None
        if out is None and pf.is_pipeline:  # a pipeline's step writes under that pipeline's results root
            out = step_results_dir(root, step)
        inputs, check = step.inputs, step.validate
        timeout = timeout or check_timeout(step.timeout, where=f"{a.params}: step {step.name}: 'timeout'")
    elif a.step:
        raise ParameterError("--step needs --params NAME (the step of a pipeline file)")
    params = apply_overrides(params, a.set or [])
    r = run_notebook(nb, params, out, kernel_name=a.kernel, timeout=timeout or DEFAULT_TIMEOUT, force=a.force,
                     inputs=inputs, extra_checks=check, name=name, log=_echo, kernel_env=env)
    print(r.notebook)
    return EXIT_OK


def cmd_pipeline(a: argparse.Namespace) -> int:
    from rftlib.book.pipeline import run_pipeline, select_steps
    from rftlib.book.runner import check_timeout
    from rftlib.book.schedule import thread_policy

    check_timeout(a.timeout)
    thread_policy(a.jobs, a.threads, isa=a.isa)  # a bad --jobs, --threads or --isa is refused with --list too
    pf = pipeline_file(a)
    for s in pf.steps:
        check_timeout(s.timeout, where=f"{a.paramfile or pf.name}: step {s.name}: 'timeout'")
    ddp_jobs = _pipeline_ddp_jobs(pf, a) if a.ddp is not None else []
    if a.list:
        from rftlib.book.pipeline import rooted, step_folder

        _, results = rooted(pf)
        _echo(f"pipeline {pf.name}: results root {pf.results_root}")
        for s in select_steps(pf, a.only, a.from_step):
            print(f"{s.name}\t{s.notebook}\t{step_folder(results, s)}")
        if ddp_jobs:
            from rftlib.book.finetune_ddp import torchrun_command

            for job in ddp_jobs:
                _echo("first, data-parallel: $ " + " ".join(torchrun_command(job)))
        return EXIT_OK
    if ddp_jobs:
        from rftlib.book.finetune_ddp import run_finetune

        for job in ddp_jobs:  # the fine-tuning steps below then find their runs done
            run_finetune(job)
    run_pipeline(pf, only=a.only, from_step=a.from_step, force=a.force, kernel_name=a.kernel,
                 timeout=a.timeout, jobs=a.jobs, threads=a.threads, isa=a.isa)
    return EXIT_OK


def _pipeline_ddp_jobs(pf: "ParamFile", a: argparse.Namespace) -> "list[FinetuneOptions]":
    """``--ddp N``: the fine-tuning jobs to run data-parallel first (every step validated before)."""
    from rftlib.book.finetune_ddp import pipeline_jobs
    from rftlib.book.pipeline import select_steps, validate_pipeline

    if a.ddp < 1:  # before anything is validated or loaded
        raise ParameterError(f"--ddp={a.ddp} must be at least 1 (the number of processes that fine-tune "
                             "data-parallel), e.g. --ddp 2")
    steps = select_steps(pf, a.only, a.from_step)
    return pipeline_jobs(steps, validate_pipeline(pf, steps), a.ddp, a.threads)


def cmd_params(a: argparse.Namespace) -> int:
    from rftlib.book.params import format_parameters

    print(format_parameters(a.notebook))
    return EXIT_OK


# ---------------------------------------------------------------------------------------------
# MathJax (served from the book itself: no CDN) and the book


def fetch_mathjax(force: bool = False) -> Path:
    """Put MathJax into ``book/_static/mathjax`` if missing (see :mod:`rftlib.book.mathjax`)."""
    from rftlib.book.mathjax import ensure

    return ensure(force=force)


def cmd_mathjax(a: argparse.Namespace) -> int:
    if a.status:
        from rftlib.book.mathjax import is_installed, mathjax_dir

        installed = is_installed()
        print(f"MathJax {MATHJAX_VERSION}: {'installed' if installed else 'missing'} in {mathjax_dir()}")
        return EXIT_OK if installed else EXIT_FAILED
    print(fetch_mathjax(force=a.force))
    return EXIT_OK


def book_command(strict: bool = True, builder: str = "html", path_output: str | None = None,
                 toc: Path | None = None) -> list[str]:
    """The ``jupyter-book build`` command line for the book at the repository root (``toc``: another
    table of contents than ``_toc.yml``)."""
    jb = Path(sys.executable).parent / "jupyter-book"
    cmd = [str(jb) if jb.exists() else "jupyter-book", "build", ".", "--builder", builder]
    if toc is not None:
        cmd += ["--toc", str(toc)]
    if path_output:
        cmd += ["--path-output", path_output]
    if strict:
        cmd += ["-W", "-n", "--keep-going"]
    return cmd


def cmd_book(a: argparse.Namespace) -> int:
    from rftlib.book.pages import render_pages, results_folder, toc_for
    from rftlib.files.manifest import repo_root

    root = repo_root()
    results_folder(a.results)  # inside the repository and there, before anything is fetched or built
    if a.builder == "html":
        fetch_mathjax()
    render_pages(a.results)
    cmd = book_command(a.strict, a.builder, a.path_output, toc=toc_for(a.results))
    _echo("$ " + " ".join(cmd))
    rc = subprocess.run(cmd, cwd=root).returncode
    if rc != 0:
        raise RftError(f"the book build failed (exit code {rc}); the first warning or error above says why")
    return EXIT_OK


def cmd_bench(a: argparse.Namespace) -> int:
    from rftlib.book.bench import run_benchmarks

    if a.threads < 1:
        raise ParameterError(f"--threads={a.threads} must be at least 1")
    if a.job:
        from rftlib.book.jobbench import run_job_benchmark

        out = Path(a.out) if a.out else Path("book/results/benchmarks/job.json")
        run_job_benchmark(out, a.pipeline, conditions=a.conditions.split(","), keep=a.keep,
                          commit=a.commit)
        print(out)
        return EXIT_OK
    out = Path(a.out) if a.out else Path("book/results/benchmarks/path.json")
    run_benchmarks(quick=not a.full, out=out, world=a.world, threads=a.threads)
    print(out)
    return EXIT_OK


def cmd_compare(a: argparse.Namespace) -> int:
    from rftlib.book.compare import compare_roots, format_report

    for what, folder in (("OLD", a.old), ("NEW", a.new)):
        if not Path(folder).is_dir():
            raise ParameterError(f"{what}={folder!r} is not a folder; give two results roots (e.g. book/results and "
                                 "book/results-quick)")
    if not a.tol >= 0:
        raise ParameterError(f"--tol={a.tol} must be a number >= 0 (e.g. 1e-6)")
    diffs = compare_roots(a.old, a.new, a.tol)
    print(format_report(diffs, a.tol))
    return EXIT_FAILED if any(d.verdict == "different" for d in diffs) else EXIT_OK


# ---------------------------------------------------------------------------------------------
# data sets, weights conversion, the GPU measurement, data-parallel fine-tuning


def cmd_data(a: argparse.Namespace) -> int:
    from rftlib.worlds.data import data_report

    data_report(download=a.download)
    return EXIT_OK


def cmd_convert_openai(a: argparse.Namespace) -> int:
    from rftlib.models.convert_openai import convert, describe

    if not Path(a.src).is_file():
        raise ParameterError(f"SRC={a.src!r} does not exist; allowed: OpenAI's TorchScript CLIP file "
                             "(e.g. ViT-B-32.pt), a file you trust")
    if Path(a.dest).suffix != ".safetensors":
        raise ParameterError(f"DEST={a.dest!r} is not a .safetensors file; allowed: a path ending in .safetensors")
    state = convert(a.src, a.dest)
    print(f"wrote {a.dest}: {describe(state)}")
    return EXIT_OK


def cmd_gpu_measure(a: argparse.Namespace) -> int:
    from dataclasses import fields

    from rftlib.book.gpu_measure import MeasureOptions, measure

    measure(MeasureOptions(**{f.name: getattr(a, f.name) for f in fields(MeasureOptions)}))
    return EXIT_OK


def cmd_finetune(a: argparse.Namespace) -> int:
    from dataclasses import fields

    from rftlib.book.finetune_ddp import FinetuneOptions, run_finetune

    if a.run_typo is not None:
        raise ParameterError(f"--run {' '.join(a.run_typo)}: use --runs NAME [NAME ...] (torchrun's parser "
                             "takes --run for its own --run-path option)")
    values = {f.name: getattr(a, f.name) for f in fields(FinetuneOptions)}
    run_finetune(FinetuneOptions(**{**values, "runs": tuple(a.runs)}))
    return EXIT_OK


def _parser_mathjax(sub: argparse._SubParsersAction) -> None:
    m = sub.add_parser("mathjax", help=f"fetch MathJax {MATHJAX_VERSION} into {MATHJAX_DIR.as_posix()} (offline math)")
    m.add_argument("--force", action="store_true", help="fetch again even if present")
    m.add_argument("--status", action="store_true", help="say whether it is installed (exit 1 if not); fetch nothing")
    m.set_defaults(func=cmd_mathjax)


def _parser_data(sub: argparse._SubParsersAction) -> None:
    d = sub.add_parser("data", help="say where each data set is found; --download fetches Fashion-MNIST if missing")
    d.add_argument("--download", action="store_true", help="fetch Fashion-MNIST with torchvision into ./data if missing")
    d.set_defaults(func=cmd_data)


def _parser_convert_openai(sub: argparse._SubParsersAction) -> None:
    c = sub.add_parser("convert-openai", help="convert an OpenAI TorchScript CLIP file (trusted) to safetensors")
    c.add_argument("src", metavar="SRC.pt", help="the TorchScript archive, e.g. OpenAI's ViT-B-32.pt (loading it runs its code)")
    c.add_argument("dest", metavar="DEST.safetensors", help="the safetensors file to write")
    c.set_defaults(func=cmd_convert_openai)


def _parser_gpu_measure(sub: argparse._SubParsersAction) -> None:
    g = sub.add_parser("gpu-measure", help="measure on one GPU what the paper-scale cost table extrapolates")
    g.add_argument("--device", default="auto", help="auto, cuda or cpu")
    g.add_argument("--tiny", action="store_true", help="smoke test: rft-tiny, tiny sizes (seconds on a CPU)")
    g.add_argument("--out", default=None, help="JSON file (default: $OUT/gpu_measure.json, else book/results/gpu/)")
    g.add_argument("--time-budget", type=float, default=420.0, help="seconds for all phases (global guard)")
    g.add_argument("--model", default="ViT-B-32-quickgelu")
    g.add_argument("--n-classes", type=int, default=1000)
    g.add_argument("--batch-size", type=int, default=256)
    g.add_argument("--warmup", type=int, default=5)
    g.add_argument("--steps", type=int, default=20)
    g.add_argument("--n-examples", type=int, default=1024)
    g.add_argument("--m", type=int, default=128)
    g.add_argument("--n-iters", type=int, default=20)
    g.add_argument("--rho", type=float, default=5e-4, help="ℓ∞ adaptive radius (smallest of the reference grid)")
    g.add_argument("--max-blocks", type=int, default=None, help="measure at most this many blocks")
    g.add_argument("--no-compile", dest="compile", action="store_false", help="skip the torch.compile phase")
    g.add_argument("--phases", default=None,
                   help="comma-separated subset of the phases to run (default: all), e.g. finetune_throughput")
    g.add_argument("--threads", type=int, default=None, help="CPU threads (torch.set_num_threads)")
    g.set_defaults(func=cmd_gpu_measure)


def _parser_finetune(sub: argparse._SubParsersAction) -> None:
    f = sub.add_parser("finetune", allow_abbrev=False,
                       help="fine-tune a grid's runs, data-parallel on --nproc N processes (torch.distributed)")
    f.add_argument("--world", help="miniature world or paper setting (worlds/<name>/world.yaml, or a path to a world.yaml)")
    f.add_argument("--grid", default="", help="grid file of recipes (notebooks/params/grids/*.yaml)")
    f.add_argument("--runs", nargs="+", action="extend", default=[], metavar="RUN",
                   help="run names to fine-tune (default: every run of the grid)")
    f.add_argument("--run", dest="run_typo", nargs="*", help=argparse.SUPPRESS)
    f.add_argument("--runs-root", default="runs", help="folder of fine-tuned weights (default: runs)")
    f.add_argument("--force", action="store_true", help="re-run runs that already have weights")
    f.add_argument("--nproc", type=int, default=1, metavar="N",
                   help="processes (one per GPU; gloo on CPUs), launched with torch.distributed.run (default 1)")
    f.add_argument("--device", default="auto", help="auto (CUDA device LOCAL_RANK if present), cpu or cuda")
    f.add_argument("--no-bf16", dest="bf16", action="store_false", help="float32 forwards on CUDA too")
    f.add_argument("--compile", action="store_true", help="torch.compile the model (CUDA only)")
    f.add_argument("--threads", type=int, default=None, help="CPU threads per process (torch.set_num_threads)")
    f.set_defaults(func=cmd_finetune)


# ---------------------------------------------------------------------------------------------


def _parser_compare(sub: argparse._SubParsersAction) -> None:
    co = sub.add_parser("compare", help="compare the result tables of two results roots (every number within --tol)")
    co.add_argument("old", metavar="OLD", help="results root before (e.g. a copy of book/results)")
    co.add_argument("new", metavar="NEW", help="results root after")
    co.add_argument("--tol", type=float, default=1e-6, help="largest allowed difference (default 1e-6)")
    co.set_defaults(func=cmd_compare)
# rft world: new, pretrain, verify, list (rftlib.worlds.workflow); rft pipeline --world


def pipeline_file(a: argparse.Namespace):
    """The pipeline of ``rft pipeline``: PARAMFILE, or the one generated by ``--world NAME [--quick]``
    (:func:`rftlib.book.params.world_pipeline`)."""
    from rftlib.book.params import load_param_file, world_pipeline
    from rftlib.worlds.workflow import check_world_name

    if a.world is None:
        if a.quick:
            raise ParameterError("--quick needs --world NAME (it picks the quick study for that world); "
                                 "for the quick study of every world run `rft pipeline quick`")
        if not a.paramfile:
            raise ParameterError("rft pipeline needs a PARAMFILE (e.g. default, quick) or --world NAME")
        return load_param_file(a.paramfile)
    if a.paramfile:
        raise ParameterError(f"give either PARAMFILE ({a.paramfile}) or --world {a.world}, not both; --world "
                             "generates the pipeline from the default (or, with --quick, the quick) study")
    check_world_name(a.world)
    return world_pipeline(a.world, "quick" if a.quick else "default")


def _check_world_env() -> None:
    """The variables every ``rft world`` verb depends on ($RFT_REPO_ROOT, $RFT_WORLDS) name folders."""
    from rftlib.files.manifest import repo_root
    from rftlib.worlds.world import worlds_dir

    repo_root()
    worlds_dir()


def _world_overrides(pairs: Sequence[str]) -> dict:
    """``--set KEY=VALUE`` of ``rft world new``: KEY may be ``section.key``; VALUE is YAML."""
    from rftlib.book.params import parse_override

    out = {}
    for text in pairs:
        key, sep, raw = text.partition("=")
        section, dot, sub = key.strip().partition(".")
        if not sep or (dot and not sub.isidentifier()):
            raise ParameterError(f"bad override {text!r}: write KEY=VALUE or SECTION.KEY=VALUE, e.g. seed=1 or "
                                 "captions.p_wrong=0.3")
        out[key.strip()] = parse_override(f"{section}={raw}")[1]
    return out


def cmd_world_new(a: argparse.Namespace) -> int:
    from rftlib.worlds.workflow import create_world

    _check_world_env()
    path = create_world(a.name, a.base, _world_overrides(a.set or []))
    _echo(f"rft: created world {a.name!r} from {a.base!r}; next: rft world pretrain {a.name}")
    print(path)
    return EXIT_OK


def cmd_world_pretrain(a: argparse.Namespace) -> int:
    from rftlib.worlds.workflow import pretrain_world

    _check_world_env()
    m = pretrain_world(a.name, resume=not a.restart, threads=a.threads, n_eval=a.n_eval, work_dir=a.work_dir,
                       log=lambda msg: _echo(f"rft: {msg}"), force=a.force)
    acc = m.get("zeroshot_accuracy", {})
    print(f"{a.name}: sha256 {m['sha256']} OK (pretraining {m.get('pretrain_seconds')} s, "
          f"{m.get('threads')} thread(s); zero-shot ID accuracy {acc.get('id')})")
    return EXIT_OK


def cmd_world_verify(a: argparse.Namespace) -> int:
    from rftlib.worlds.world import verify_checkpoints

    _check_world_env()
    try:
        verified = verify_checkpoints(list(a.names) or None)
    except RftError as e:  # every world was checked: show the good ones, then the one-line error
        for name, digest in getattr(e, "verified", {}).items():
            print(f"{name}: sha256 {digest} OK")
        raise
    for name, digest in verified.items():
        print(f"{name}: sha256 {digest} OK")
    return EXIT_OK


def cmd_world_list(a: argparse.Namespace) -> int:
    from rftlib.worlds.workflow import list_worlds

    _check_world_env()
    for name, state in list_worlds():
        print(f"{name}\t{state}")
    return EXIT_OK


def add_world_parser(sub) -> None:
    """``rft world new | pretrain | verify | list``."""
    w = sub.add_parser("world", help="add a miniature world: new, pretrain, verify, list")
    verbs = w.add_subparsers(dest="verb", metavar="VERB", parser_class=_Parser)
    verbs.required = True
    n = verbs.add_parser("new", help="create worlds/NAME/world.yaml from another world's, with changes")
    n.add_argument("name", metavar="NAME", help="the new world's name (lower-case letters, digits, '-')")
    n.add_argument("--from", dest="base", required=True, metavar="BASE", help="the world to start from, e.g. digits")
    n.add_argument("--set", action="append", metavar="KEY=VALUE",
                   help="change a key (YAML value): seed=1, p_wrong=0.4, pretrain.epochs=10, ...; repeatable")
    n.set_defaults(func=cmd_world_new)
    pr = verbs.add_parser("pretrain", help="pretrain NAME (resumable; writes checkpoint and manifest, then verifies)")
    pr.add_argument("name", metavar="NAME")
    pr.add_argument("--threads", type=int, metavar="N", help="torch CPU threads (default: torch's own)")
    pr.add_argument("--restart", action="store_true", help="start from epoch 1, discarding a resume state")
    pr.add_argument("--force", action="store_true", help="overwrite a checkpoint that verifies (a shipped world's)")
    pr.add_argument("--n-eval", type=int, default=1000, metavar="N", help="images per split for the manifest's accuracies")
    pr.add_argument("--work-dir", metavar="DIR", help="folder of the per-epoch resume state (default runs/NAME/pretrain)")
    pr.set_defaults(func=cmd_world_pretrain)
    v = verbs.add_parser("verify", help="verify worlds and their checkpoints (all miniature worlds without NAME)")
    v.add_argument("names", nargs="*", metavar="NAME")
    v.set_defaults(func=cmd_world_verify)
    li = verbs.add_parser("list", help="each world and the state of its checkpoint")
    li.set_defaults(func=cmd_world_list)


# ---------------------------------------------------------------------------------------------


def _parser_pipeline(sub: argparse._SubParsersAction) -> None:
    pl = sub.add_parser("pipeline", help="run the steps of a pipeline file in order")
    pl.add_argument("paramfile", metavar="PARAMFILE", nargs="?",
                    help="pipeline file: NAME (notebooks/params/NAME.yaml) or a path (or --world NAME)")
    pl.add_argument("--world", metavar="NAME", help="the default study for this one world, generated from its name")
    pl.add_argument("--quick", action="store_true", help="with --world: the quick study instead of the default")
    pl.add_argument("--only", action="append", metavar="STEP", help="run only this step; repeatable")
    pl.add_argument("--from", dest="from_step", metavar="STEP", help="run this step and the ones after it")
    pl.add_argument("--force", action="store_true", help="rerun steps even if cached")
    pl.add_argument("--timeout", type=float, metavar="S", help="seconds per cell for steps that set none")
    pl.add_argument("--kernel", default="python3", help="Jupyter kernel name (default python3)")
    pl.add_argument("--list", action="store_true", help="list the steps that would run, and stop")
    pl.add_argument("--jobs", type=int, metavar="N",
                    help="independent steps run side by side (default: free cores, from the load average)")
    pl.add_argument("--threads", type=int, metavar="N", help="compute threads per kernel (default: free cores // jobs)")
    pl.add_argument("--isa", choices=ISAS, help=ISA_HELP)
    pl.add_argument("--ddp", type=int, metavar="N", help="first fine-tune the runs on N processes (data-parallel)")
    pl.set_defaults(func=cmd_pipeline)


def _parser_bench(sub: argparse._SubParsersAction) -> None:
    be = sub.add_parser("bench", help="benchmark the whole path (ratios side by side) into book/results/benchmarks/path.json")
    be.add_argument("--full", action="store_true", help="full mode (larger sizes, ViT-B/32 shape; tens of minutes)")
    be.add_argument("--world", default="fashion", help="miniature world whose classifier is measured")
    be.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: steady on a shared machine)")
    be.add_argument("--job", action="store_true",
                    help="instead: the default job's wall time quiet and beside one CPU-bound process, each in a fresh "
                         "clone of --commit (about an hour on 2 cores) into book/results/benchmarks/job.json")
    be.add_argument("--pipeline", default=DEFAULT_PIPELINE, help="with --job: the pipeline file")
    be.add_argument("--conditions", default="quiet,shared", help="with --job: quiet, shared or both (comma-separated)")
    be.add_argument("--keep", action="store_true", help="with --job: keep the other conditions already in the file")
    be.add_argument("--commit", default="HEAD", help="with --job: the commit measured (default HEAD)")
    be.add_argument("--out", help="JSON file to write (default book/results/benchmarks/path.json, with --job job.json)")
    be.set_defaults(func=cmd_bench)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``rft`` (one sub-command per task)."""
    p = _Parser(
        prog="rft",
        description="Run the study's notebooks (validated, cached) and build its book.",
        epilog="Parameter files live in notebooks/params/NAME.yaml; see `rft params NOTEBOOK` for a notebook's parameters.",
    )
    sub = p.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True

    r = sub.add_parser("run", help="run one notebook with validated parameters into book/results/<step>/")
    r.add_argument("notebook", metavar="NOTEBOOK", help="the notebook (.ipynb)")
    r.add_argument("--params", metavar="NAME", help="parameter file: notebooks/params/NAME.yaml or a path")
    r.add_argument("--step", metavar="STEP", help="which step of a pipeline file (if it runs the notebook twice)")
    r.add_argument("-p", "--set", action="append", metavar="KEY=VALUE", help="override a parameter (YAML value); repeatable")
    r.add_argument("--out", metavar="DIR", help="results folder (default book/results/<step>)")
    r.add_argument("--force", action="store_true", help="rerun even if a cached run matches")
    r.add_argument("--timeout", type=float, metavar="S", help="seconds allowed per cell (default 3600)")
    r.add_argument("--kernel", default="python3", help="Jupyter kernel name (default python3)")
    r.add_argument("--isa", choices=ISAS, help=ISA_HELP)
    r.set_defaults(func=cmd_run)
    _parser_pipeline(sub)

    pa = sub.add_parser("params", help="show a notebook's parameters: name, type, default, meaning")
    pa.add_argument("notebook", metavar="NOTEBOOK")
    pa.set_defaults(func=cmd_params)

    b = sub.add_parser("book", help="build the Jupyter Book (fetches MathJax first if missing)")
    b.add_argument("--results", default=RESULTS_ROOT, metavar="ROOT",
                   help="results root the pages are rendered from, inside the repository (default book/results; "
                        "the quick pipeline writes book/results-quick)")
    b.add_argument("--strict", action="store_true", help="warnings are errors: -W -n --keep-going")
    b.add_argument("--builder", default="html", help="Sphinx builder (default html)")
    b.add_argument("--path-output", metavar="DIR", help="build into DIR/_build instead of ./_build")
    b.set_defaults(func=cmd_book)

    v = sub.add_parser("verify", help="verify the checksums of the shipped checkpoints (rft world verify)")
    v.set_defaults(func=cmd_world_verify, names=[])

    for add in (_parser_bench, _parser_mathjax, _parser_data, _parser_convert_openai,
                _parser_gpu_measure, _parser_finetune, _parser_compare):
        add(sub)
    add_world_parser(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``rft``; returns the exit code (also raised as ``SystemExit`` by ``--help``)."""
    args = build_parser().parse_args(argv)
    from rftlib.book.runner import StepInterrupted

    try:
        return int(args.func(args) or 0)
    except StepInterrupted as e:
        _echo(f"rft: {e}")
        return EXIT_INTERRUPTED
    except (ParameterError, FileNotFoundError) as e:
        if os.environ.get("RFT_DEBUG"):
            raise
        _echo(f"rft: error: {e}")
        return EXIT_BAD_INPUT
    except RftError as e:
        if os.environ.get("RFT_DEBUG"):
            raise
        _echo(f"rft: error: {e}")
        return EXIT_FAILED
    except KeyboardInterrupt:
        _echo("rft: interrupted")
        return EXIT_INTERRUPTED


def _console() -> None:  # pragma: no cover - python -m rftlib.cli
    sys.exit(main())


if __name__ == "__main__":  # pragma: no cover
    _console()
