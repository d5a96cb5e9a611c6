"""The ``rft`` command: run notebooks and pipelines, show parameters, build the book.

::

    rft run NOTEBOOK [--params NAME] [--step STEP] [-p key=value ...] [--out DIR] [--force] [--timeout S]
    rft pipeline PARAMFILE [--only STEP ...] [--from STEP] [--force] [--timeout S] [--list]
    rft params NOTEBOOK
    rft book [--strict] [--builder html]
    rft mathjax [--force]
    rft verify                       (alias of rft world verify)
    rft world new NAME --from BASE [--set key=value ...]
    rft world pretrain NAME [--threads N] [--restart] [--force]
    rft world verify [NAME ...]
    rft world list
    rft pipeline --world NAME [--quick] [--list]
    rft bench [--full] [--world W] [--threads N] [--out FILE]

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
from typing import Sequence

from rftlib.errors import ParameterError, RftError
from rftlib.book.mathjax import MATHJAX_DIR, MATHJAX_VERSION

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130



class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line and exit 2, as for every bad input
        self.print_usage(sys.stderr)
        self.exit(EXIT_BAD_INPUT, f"rft: error: {message}\n")


def _echo(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# run, pipeline, params


def cmd_run(a: argparse.Namespace) -> int:
    from rftlib.book.params import apply_overrides, load_param_file, resolve_path
    from rftlib.book.runner import DEFAULT_TIMEOUT, check_timeout, run_notebook

    timeout = check_timeout(a.timeout)
    nb = resolve_path(a.notebook, kind="notebook")
    params: dict = {}
    name, inputs, check = None, {}, None
    if a.params:
        pf = load_param_file(a.params)
        step = pf.step_for(nb, a.step)
        params = pf.parameters_for(step)
        name = step.name if pf.is_pipeline else None
        inputs, check = step.inputs, step.validate
        timeout = timeout or check_timeout(step.timeout, where=f"{a.params}: step {step.name}: 'timeout'")
    elif a.step:
        raise ParameterError("--step needs --params NAME (the step of a pipeline file)")
    params = apply_overrides(params, a.set or [])
    r = run_notebook(nb, params, a.out, kernel_name=a.kernel, timeout=timeout or DEFAULT_TIMEOUT, force=a.force,
                     inputs=inputs, extra_checks=check, name=name, log=_echo)
    print(r.notebook)
    return EXIT_OK


def cmd_pipeline(a: argparse.Namespace) -> int:
    from rftlib.book.pipeline import run_pipeline, select_steps
    from rftlib.book.runner import check_timeout

    check_timeout(a.timeout)
    pf = pipeline_file(a)
    for s in pf.steps:
        check_timeout(s.timeout, where=f"{a.paramfile or pf.name}: step {s.name}: 'timeout'")
    if a.list:
        for s in select_steps(pf, a.only, a.from_step):
            print(f"{s.name}\t{s.notebook}")
        return EXIT_OK
    run_pipeline(pf, only=a.only, from_step=a.from_step, force=a.force, kernel_name=a.kernel,
                 timeout=a.timeout, jobs=a.jobs, threads=a.threads)
    return EXIT_OK


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
    print(fetch_mathjax(force=a.force))
    return EXIT_OK


def book_command(strict: bool = True, builder: str = "html", path_output: str | None = None) -> list[str]:
    """The ``jupyter-book build`` command line for the book at the repository root."""
    jb = Path(sys.executable).parent / "jupyter-book"
    cmd = [str(jb) if jb.exists() else "jupyter-book", "build", ".", "--builder", builder]
    if path_output:
        cmd += ["--path-output", path_output]
    if strict:
        cmd += ["-W", "-n", "--keep-going"]
    return cmd


def cmd_book(a: argparse.Namespace) -> int:
    from rftlib.files.manifest import repo_root

    root = repo_root()
    if a.builder == "html":
        fetch_mathjax()
    from rftlib.book.pages import render_pages

    render_pages()
    cmd = book_command(a.strict, a.builder, a.path_output)
    _echo("$ " + " ".join(cmd))
    rc = subprocess.run(cmd, cwd=root).returncode
    if rc != 0:
        raise RftError(f"the book build failed (exit code {rc}); the first warning or error above says why")
    return EXIT_OK


def cmd_verify(a: argparse.Namespace) -> int:
    try:
        from rftlib.worlds.world import verify_checkpoints  # type: ignore[attr-defined]
    except ImportError:
        _echo("rft: checksum verification is not available (rftlib.worlds.world.verify_checkpoints is missing)")
        return EXIT_FAILED
    try:
        verified = verify_checkpoints()
    except RftError as e:  # every world was checked: show the good ones, then the one-line error
        for name, digest in getattr(e, "verified", {}).items():
            print(f"{name}: sha256 {digest} OK")
        raise
    for name, digest in verified.items():
        print(f"{name}: sha256 {digest} OK")
    return EXIT_OK


def cmd_bench(a: argparse.Namespace) -> int:
    from rftlib.book.bench import run_benchmarks

    if a.threads < 1:
        raise ParameterError(f"--threads={a.threads} must be at least 1")
    out = Path(a.out) if a.out else Path("book/results/benchmarks/path.json")
    run_benchmarks(quick=not a.full, out=out, world=a.world, threads=a.threads)
    print(out)
    return EXIT_OK


# ---------------------------------------------------------------------------------------------
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
    r.set_defaults(func=cmd_run)

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
    pl.set_defaults(func=cmd_pipeline)

    pa = sub.add_parser("params", help="show a notebook's parameters: name, type, default, meaning")
    pa.add_argument("notebook", metavar="NOTEBOOK")
    pa.set_defaults(func=cmd_params)

    b = sub.add_parser("book", help="build the Jupyter Book (fetches MathJax first if missing)")
    b.add_argument("--strict", action="store_true", help="warnings are errors: -W -n --keep-going")
    b.add_argument("--builder", default="html", help="Sphinx builder (default html)")
    b.add_argument("--path-output", metavar="DIR", help="build into DIR/_build instead of ./_build")
    b.set_defaults(func=cmd_book)

    m = sub.add_parser("mathjax", help=f"fetch MathJax {MATHJAX_VERSION} into {MATHJAX_DIR.as_posix()} (offline math)")
    m.add_argument("--force", action="store_true", help="fetch again even if present")
    m.set_defaults(func=cmd_mathjax)

    v = sub.add_parser("verify", help="verify the checksums of the shipped checkpoints")
    v.set_defaults(func=cmd_verify)

    be = sub.add_parser("bench", help="benchmark the whole path (ratios side by side) into book/results/benchmarks/path.json")
    be.add_argument("--full", action="store_true", help="full mode (larger sizes, ViT-B/32 shape; tens of minutes)")
    be.add_argument("--world", default="fashion", help="miniature world whose classifier is measured")
    be.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: steady on a shared machine)")
    be.add_argument("--out", help="JSON file to write (default book/results/benchmarks/path.json)")
    be.set_defaults(func=cmd_bench)
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
