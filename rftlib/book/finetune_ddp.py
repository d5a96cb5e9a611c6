"""Fine-tune the runs of a grid data-parallel on N processes: the study's fine-tuning step under
``torch.distributed``, behind ``rft finetune`` and ``rft pipeline ... --ddp N``.

Miniature world (same files as the notebook step ``notebooks/finetune.ipynb``, which then finds the
runs done and reuses them)::

    rft finetune --world fashion --grid notebooks/params/grids/fashion.yaml --runs lr3e-4 --nproc 2

With ``--nproc N`` (N > 1) ``rft`` launches ``python -m torch.distributed.run --standalone
--nproc_per_node=N -m rftlib.cli finetune ...`` itself (:func:`launch`); on several machines, start
``torchrun ... -m rftlib.cli finetune ...`` on each instead. ``rft pipeline PARAMFILE --ddp N`` does
the same for every fine-tuning step it is about to run (:func:`pipeline_jobs`), with that step's
``world``, ``grid``, ``runs``, ``runs_root`` and ``force``, before the first notebook starts; the
notebook step then finds the runs done and only collects their histories.

Paper scale: a paper setting (``worlds/paper-imagenet/world.yaml``, ``kind: paper``,
:mod:`rftlib.worlds.paper`) is a world too; its weights and data are named by ``RFT_CLIP_WEIGHTS`` and
``RFT_DATA_ROOT``, and the runs land where the notebooks of ``rft pipeline paper-imagenet`` look
(``runs/paper-imagenet/<run>``; see book/paper-scale.md). Another model, weights file or data set
is another setting file (``--world path/to/world.yaml``).

What it does, per run of the grid: every rank builds θ_zs (same seed, same weights), and
:func:`rftlib.models.finetune.finetune` trains it under ``DistributedDataParallel`` (each rank takes its
slice of every global batch, so the result equals one process with the same global batch and seed).
Rank 0 writes ``<runs-root>/<world>/<run>/theta_ft.safetensors`` and ``manifest.json`` in
the layout of :func:`rftlib.steps.finetune.finetune_grid`; a run whose manifest holds the same recipe and
parent checkpoint is skipped (``force`` re-runs it); an interrupted run resumes from its last
epoch (``state.pt``).

Precision: on CUDA the forwards run in bfloat16 autocast and the loss in float32
(:func:`rftlib.models.device.autocast_forward`; ``bf16=False`` for float32); on CPUs everything is
float32. The manifest records the precision, the number of ranks and the device.

Paper-scale data: the training images are decoded on the fly by threads of each rank
(:class:`rftlib.worlds.paper.LazyImages`; ``decode_threads``), resized (shorter side, bicubic) and
centre-cropped to the model's input size, in [0, 1]; the classifier normalizes them with OpenAI's mean
and std. The training set is put in a fixed, seeded order once, so a recipe's ``n_train`` takes a
random subset rather than the first classes.

Example:
    >>> o = FinetuneOptions(world="fashion", grid="g.yaml", runs=("a", "b"), threads=1)
    >>> o.argv()
    ['finetune', '--world', 'fashion', '--grid', 'g.yaml', '--runs', 'a', 'b', '--threads', '1']
"""

from __future__ import annotations

import json
import sys
import time
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import torch

from rftlib.errors import ParameterError, RftError
from rftlib.files.io import atomic_write_json
from rftlib.files.manifest import build_manifest, repo_root
from rftlib.models import distributed as D
from rftlib.models.checkpoints import save_state_dict, sha256
from rftlib.models.device import autocast_forward, device_summary, maybe_compile
from rftlib.models.finetune import Recipe, finetune
from rftlib.steps.common import load_grid, run_folder

__all__ = ["FinetuneOptions", "Job", "finetune_runs", "launch", "pipeline_jobs", "run_finetune"]

#: the notebook whose steps ``rft pipeline --ddp N`` fine-tunes data-parallel
FINETUNE_NOTEBOOK = "finetune.ipynb"


@dataclass(frozen=True)
class FinetuneOptions:
    """The options of ``rft finetune`` (the same names, ``-`` written ``_``)."""

    world: str | None = None
    grid: str = ""
    runs: tuple[str, ...] = ()
    runs_root: str = "runs"
    force: bool = False
    device: str = "auto"
    bf16: bool = True
    compile: bool = False
    threads: int | None = None
    nproc: int = 1

    def check(self) -> "FinetuneOptions":
        """These options, checked before any process starts.

        Raises:
            ParameterError: no ``world``, or a count below 1.
        """
        if not self.world:
            raise ParameterError("give --world NAME: a miniature world or a paper setting (worlds/<name>/world.yaml, "
                                 "or a path to a world.yaml), e.g. --world fashion or --world paper-imagenet")
        for name in ("nproc", "threads"):
            v = getattr(self, name)
            if v is not None and v < 1:
                raise ParameterError(f"--{name.replace('_', '-')}={v} must be at least 1")
        _check_devices(self.nproc, self.device)
        return self

    def argv(self) -> list[str]:
        """The ``rft`` arguments that give these options (without ``--nproc``: what each rank runs)."""
        out = ["finetune"]
        defaults = FinetuneOptions()
        for f in fields(self):
            v, flag = getattr(self, f.name), "--" + f.name.replace("_", "-")
            if f.name == "nproc" or v == getattr(defaults, f.name):
                continue
            if f.name in ("bf16",):
                out.append("--no-bf16")
            elif isinstance(v, bool):
                out.append(flag)
            elif f.name == "runs":
                out += [flag, *v]
            else:
                out += [flag, str(v)]
        return out


def _check_devices(nproc: int, device: str) -> None:
    if nproc > 1 and str(device) in ("auto", "cuda") and torch.cuda.is_available():
        n = torch.cuda.device_count()
        if nproc > n:
            raise ParameterError(f"--nproc={nproc} exceeds the {n} CUDA device(s) of this machine; "
                                 f"allowed: 1 to {n} (or --device cpu for CPU processes)")


@dataclass
class Job:
    """What to fine-tune, from which weights, on which data."""

    name: str                       # folder under runs-root: the world's name
    parent: str                     # sha256 of θ_zs's checkpoint (the cache key of a run)
    make_model: Callable[[], torch.nn.Module]
    x: Any
    y: torch.Tensor
    params: dict[str, Any] = field(default_factory=dict)


def world_job(world_name: str, device: torch.device | None = None) -> Job:
    """A miniature world, or a paper setting (``kind: paper``; θ_zs is then built on ``device``)."""
    from rftlib.worlds.world import load_world

    world = load_world(world_name)
    params: dict[str, Any] = {}
    if world.kind == "paper":
        if device is not None:
            world.device = str(device)
        params = {"model": world.model, "pretrained": world.checkpoint.name, "image_size": world.image_size}
    parent = world.verify_checkpoint()
    x, y = world.id_training_data()
    return Job(world.name, parent, lambda: world.zeroshot_classifier(verify=False), x, y, params)


def cached(folder: Path, recipe: Recipe, parent: str) -> bool:
    """Same test as rftlib.steps.finetune.finetune_grid: weights present, manifest with this recipe and parent."""
    mp = folder / "manifest.json"
    if not (mp.is_file() and (folder / "theta_ft.safetensors").is_file()):
        return False
    m = json.loads(mp.read_text())
    return m.get("parameters", {}).get("recipe") == recipe.to_dict() and m.get("inputs", {}).get("theta_zs") == parent


def _write_run(folder: Path, job: Job, recipe: Recipe, theta_ft: Mapping[str, torch.Tensor], history: list,
               seconds: float, info: D.DistInfo, bf16: bool, compiled: bool) -> None:
    save_state_dict(folder / "theta_ft.safetensors", theta_ft, metadata={"world": job.name, "run": recipe.name})
    m = build_manifest({"world": job.name, "recipe": recipe.to_dict(), **job.params}, seed=recipe.seed, inputs={})
    m["inputs"] = {"theta_zs": job.parent}
    m["history"] = history  # train_loss: rank 0's share of each batch
    m["seconds"] = seconds
    m["sha256"] = sha256(folder / "theta_ft.safetensors")
    m["distributed"] = {"world_size": info.world, "backend": info.backend, "bf16_autocast": bf16,
                        "compile": compiled, "device": device_summary(info.device), "command": "rft finetune"}
    atomic_write_json(folder / "manifest.json", m)
    (folder / "state.pt").unlink(missing_ok=True)


def run_recipe(job: Job, recipe: Recipe, info: D.DistInfo, o: FinetuneOptions) -> str:
    """Fine-tune one run on every rank (rank 0 writes it); ``"cached"`` when it is done already."""
    folder = run_folder(o.runs_root, job.name, recipe.name)
    if cached(folder, recipe, job.parent) and not o.force:
        return "cached"
    torch.manual_seed(recipe.seed)
    model = job.make_model().to(info.device)
    bf16 = bool(o.bf16 and info.device.type == "cuda")
    undo = autocast_forward(model, info.device, enabled=bf16)
    maybe_compile(model, enabled=o.compile)
    t0 = time.time()
    theta_ft, history = finetune(model, job.x, job.y, recipe, out_dir=folder, progress=info.is_main)
    seconds = time.time() - t0
    undo()
    if info.is_main:
        _write_run(folder, job, recipe, theta_ft, history, seconds, info, bf16,
                   bool(o.compile and info.device.type == "cuda"))
    D.barrier()
    return f"done in {seconds:.0f} s"


def finetune_runs(o: FinetuneOptions, echo: Callable[[str], None] = print) -> None:
    """What each rank runs: join the process group (if launched by torchrun), fine-tune every run.

    Without torchrun's variables it is a single process, no group.
    """
    o.check()
    if o.threads:
        torch.set_num_threads(o.threads)
    info = D.init_from_env(device=o.device)
    try:
        recipes = load_grid(o.grid, list(o.runs) or None)
        job = world_job(str(o.world), info.device)
        for r in recipes:
            status = run_recipe(job, r, info, o)
            if info.is_main:
                echo(f"[rft finetune] {job.name}/{r.name}: {status} ({info.world} rank(s), {info.device})")
    finally:
        D.cleanup()


def torchrun_command(o: FinetuneOptions) -> list[str]:
    """The command that runs ``o`` on ``o.nproc`` processes of this machine.

    Example:
        >>> torchrun_command(FinetuneOptions(world="fashion", grid="g.yaml", nproc=2))[1:6]
        ['-m', 'torch.distributed.run', '--standalone', '--nproc_per_node=2', '-m']
    """
    return D.torchrun_command(o.nproc, ["-m", "rftlib.cli", *o.argv()])


def _to_stderr(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def launch(o: FinetuneOptions, echo: Callable[[str], None] = _to_stderr) -> None:
    """Run ``o`` on ``o.nproc`` processes (``torch.distributed.run``), from the repository root; the
    command goes to ``echo`` (standard error), the ranks' output to this process's.

    Raises:
        RftError: a rank failed (its output above says why).
    """
    cmd = torchrun_command(o)
    echo("$ " + " ".join(cmd))
    rc = D.launch(cmd, cwd=repo_root())
    if rc != 0:
        raise RftError(f"data-parallel fine-tuning on {o.nproc} processes failed (exit code {rc}); "
                       "the first error above says why")


def run_finetune(o: FinetuneOptions, echo: Callable[[str], None] = print) -> None:
    """``rft finetune``: in this process (``nproc`` 1, or already under torchrun), else launched on ``nproc``.

    Raises:
        ParameterError: bad options or grid (before any process starts).
    """
    o.check()
    load_grid(o.grid, list(o.runs) or None)  # a bad grid or run name is refused before any launch
    if o.nproc > 1 and not D.launched_by_torchrun():
        launch(o)
    else:
        finetune_runs(o, echo)


def pipeline_jobs(steps: Sequence[Any], params: Mapping[str, Mapping[str, Any]], nproc: int,
                  threads: int | None = None) -> list[FinetuneOptions]:
    """What ``rft pipeline --ddp N`` fine-tunes first: one job per fine-tuning step among ``steps``
    (validated ``params`` by step name), with the step's world, grid, runs, runs root and force.

    Raises:
        ParameterError: ``nproc`` below 1, or no fine-tuning step among ``steps``.
    """
    if nproc < 1:
        raise ParameterError(f"--ddp={nproc} must be at least 1 (the number of processes that fine-tune "
                             "data-parallel), e.g. --ddp 2")
    jobs = []
    for s in steps:
        if Path(s.notebook or "").name != FINETUNE_NOTEBOOK:
            continue
        p = _step_parameters(s, params.get(s.name, {}))
        jobs.append(FinetuneOptions(world=str(p["world"]), grid=str(p["grid"]), runs=tuple(p["runs"] or ()),
                                    runs_root=str(p["runs_root"]), force=bool(p["force"]), threads=threads,
                                    nproc=nproc).check())
    if not jobs:
        names = ", ".join(s.name for s in steps) or "none"
        raise ParameterError(f"--ddp={nproc} needs a fine-tuning step ({FINETUNE_NOTEBOOK}) among the steps to "
                             f"run (selected: {names}); drop --ddp or select one with --only")
    return jobs


def _step_parameters(step: Any, given: Mapping[str, Any]) -> dict[str, Any]:
    """A fine-tuning step's parameters: its notebook's defaults, then the validated values."""
    from rftlib.book.params import notebook_parameters, resolve_path

    specs = notebook_parameters(resolve_path(step.notebook or "", kind="notebook"))
    return {**{k: sp.default for k, sp in specs.items()}, **given}
