#!/usr/bin/env python
"""Fine-tune the runs of a grid data-parallel on N devices: the study's fine-tuning step under torchrun.

Miniature world (same files as the notebook step ``notebooks/finetune.ipynb``, which then finds the
runs done and reuses them)::

    torchrun --nproc_per_node=2 scripts/finetune_ddp.py --world fashion \\
        --grid notebooks/params/grids/default.yaml --runs lr3e-4

(``--runs``, like the notebook's parameter ``runs``; not ``--run``: torchrun's own parser reads
``--run`` as an abbreviation of its ``--run-path`` and stops with "ambiguous option".)

Paper scale: a paper setting (``worlds/paper-imagenet/world.yaml``, ``kind: paper``,
:mod:`rftlib.worlds.paper`) is a world too; its weights and data are named by ``RFT_CLIP_WEIGHTS`` and
``RFT_DATA_ROOT``, and the runs land where the notebooks of ``rft pipeline paper-imagenet`` look
(``runs/paper-imagenet/<run>``; see book/paper-scale.md)::

    export RFT_CLIP_WEIGHTS=/weights/ViT-B-32-openai.safetensors RFT_DATA_ROOT=/data
    torchrun --nproc_per_node=8 scripts/finetune_ddp.py --world paper-imagenet \\
        --grid notebooks/params/grids/paper-imagenet.yaml

The older form names everything on the command line and writes ``runs/<setting>/<run>``::

    torchrun --nproc_per_node=8 scripts/finetune_ddp.py --setting imagenet --data-root /data \\
        --model ViT-B-32-quickgelu --pretrained /weights/vit_b_32_openai.safetensors \\
        --grid notebooks/params/grids/paper-imagenet.yaml

What it does, per run of the grid: every rank builds θ_zs (same seed, same weights), and
:func:`rftlib.models.finetune.finetune` trains it under ``DistributedDataParallel`` (each rank takes its
slice of every global batch, so the result equals one process with the same global batch and seed).
Rank 0 writes ``<runs-root>/<world or setting>/<run>/theta_ft.safetensors`` and ``manifest.json`` in
the layout of :func:`rftlib.steps.finetune.finetune_grid`; a run whose manifest holds the same recipe and
parent checkpoint is skipped (``--force`` re-runs it); an interrupted run resumes from its last
epoch (``state.pt``).

Precision: on CUDA the forwards run in bfloat16 autocast and the loss in float32
(:func:`rftlib.models.device.autocast_forward`; ``--no-bf16`` for float32); on CPUs everything is float32.
The manifest records the precision, the number of ranks and the device.

Paper-scale data: the training images are decoded on the fly by threads of each rank
(:class:`rftlib.worlds.paper.LazyImages`; ``--decode-threads``, or the setting's ``decode_threads``),
resized (shorter side, bicubic) and centre-cropped to the model's input size, in [0, 1]; the
classifier normalizes them with OpenAI's mean and std. The training set is put in a fixed, seeded
order once, so a recipe's ``n_train`` takes a random subset rather than the first classes. Decoding
is synchronous: on ImageNet it, not the GPU, bounds the speed (see the book page).

Also works without torchrun (one process) for debugging: ``python scripts/finetune_ddp.py ...``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:  # run from a checkout without installing
    sys.path.insert(0, str(REPO))

from rftlib.models import distributed as D  # noqa: E402
from rftlib.models.checkpoints import save_state_dict, sha256  # noqa: E402
from rftlib.models.device import autocast_forward, device_summary, maybe_compile  # noqa: E402
from rftlib.errors import ParameterError  # noqa: E402
from rftlib.models.finetune import Recipe, finetune  # noqa: E402
from rftlib.files.io import atomic_write_json  # noqa: E402
from rftlib.files.manifest import build_manifest  # noqa: E402
from rftlib.worlds.paper import LazyImages, image_transform  # noqa: E402,F401 - paper-scale data finetune() indexes
from rftlib.steps.common import load_grid, run_folder  # noqa: E402

SETTINGS = ("imagenet", "cifar10")


# ---------------------------------------------------------------------------------------------
# jobs: what to fine-tune, from which weights, on which data


@dataclass
class Job:
    name: str                       # folder under runs-root: the world's name or the setting
    parent: str                     # sha256 of θ_zs's checkpoint (the cache key of a run)
    make_model: Callable[[], torch.nn.Module]
    x: Any
    y: torch.Tensor
    params: dict[str, Any] = field(default_factory=dict)


def world_job(world_name: str, device: torch.device | None = None) -> Job:
    """A miniature world, or a paper setting (``kind: paper``; θ_zs is then built on ``device``)."""
    from rftlib.steps.common import id_training_data
    from rftlib.worlds.world import load_world

    world = load_world(world_name)
    params: dict[str, Any] = {}
    if getattr(world, "kind", None) == "paper":
        if device is not None:
            world.device = str(device)
        params = {"model": world.model, "pretrained": world.checkpoint.name, "image_size": world.image_size}
    parent = world.verify_checkpoint()
    x, y = id_training_data(world)
    return Job(world.name, parent, lambda: world.zeroshot_classifier(verify=False), x, y, params)


def paper_job(args: argparse.Namespace, device: torch.device) -> Job:
    import copy

    import open_clip

    from rftlib.models.factory import build_classifier, create_clip
    from rftlib.worlds.paperdata import get_dataset
    from rftlib.worlds.templates import classnames, templates

    if args.pretrained is None:
        raise ParameterError("--pretrained is required with --setting: a local weights file (.safetensors or a "
                             "weights-only .pt), e.g. OpenAI's ViT-B/32 converted to a state dict.")
    if args.data_root is None:
        raise ParameterError("--data-root is required with --setting: the folder holding the data sets "
                             "(layout: rftlib.worlds.paperdata).")
    pretrained = Path(args.pretrained)
    # refuses OpenAI-format weights paired with a GELU architecture (silently wrong otherwise)
    clip, tok = create_clip(args.model, pretrained=pretrained, device=device)
    size = clip.visual.image_size
    size = int(size[0] if isinstance(size, (tuple, list)) else size)
    kwargs = {"per_class": args.train_per_class} if args.train_per_class else {}
    train = get_dataset(args.setting, args.data_root, split="train", transform=image_transform(size), **kwargs)
    targets = torch.as_tensor(train.targets, dtype=torch.long)
    order = torch.randperm(len(targets), generator=torch.Generator().manual_seed(0)).tolist()
    x = LazyImages(train, order, args.decode_threads)
    y = targets[order]
    names, temps = classnames(args.setting), templates(args.templates or args.setting)
    # θ_zs once (the zero-shot head encodes every class × template), copied for each run
    theta_zs = build_classifier(clip, tok, names, temps, open_clip.OPENAI_DATASET_MEAN, open_clip.OPENAI_DATASET_STD)
    del clip

    def make_model() -> torch.nn.Module:
        return copy.deepcopy(theta_zs)

    parent = sha256(pretrained)
    params = {"model": args.model, "pretrained": pretrained.name, "templates": args.templates or args.setting,
              "image_size": size, "train_per_class": args.train_per_class, "n_train_images": len(targets)}
    return Job(args.setting, parent, make_model, x, y, params)


# ---------------------------------------------------------------------------------------------


def cached(folder: Path, recipe: Recipe, parent: str) -> bool:
    """Same test as rftlib.steps.finetune.finetune_grid: weights present, manifest with this recipe and parent."""
    mp = folder / "manifest.json"
    if not (mp.is_file() and (folder / "theta_ft.safetensors").is_file()):
        return False
    m = json.loads(mp.read_text())
    return m.get("parameters", {}).get("recipe") == recipe.to_dict() and m.get("inputs", {}).get("theta_zs") == parent


def run_recipe(job: Job, recipe: Recipe, info: D.DistInfo, args: argparse.Namespace) -> str:
    folder = run_folder(args.runs_root, job.name, recipe.name)
    if cached(folder, recipe, job.parent) and not args.force:
        return "cached"
    torch.manual_seed(recipe.seed)
    model = job.make_model().to(info.device)
    bf16 = bool(args.bf16 and info.device.type == "cuda")
    undo = autocast_forward(model, info.device, enabled=bf16)
    maybe_compile(model, enabled=args.compile)
    t0 = time.time()
    theta_ft, history = finetune(model, job.x, job.y, recipe, out_dir=folder, progress=info.is_main)
    seconds = time.time() - t0
    undo()
    if info.is_main:
        save_state_dict(folder / "theta_ft.safetensors", theta_ft, metadata={"world": job.name, "run": recipe.name})
        m = build_manifest({"world": job.name, "recipe": recipe.to_dict(), **job.params}, seed=recipe.seed, inputs={})
        m["inputs"] = {"theta_zs": job.parent}
        m["history"] = history  # train_loss: rank 0's share of each batch
        m["seconds"] = seconds
        m["sha256"] = sha256(folder / "theta_ft.safetensors")
        m["distributed"] = {"world_size": info.world, "backend": info.backend, "bf16_autocast": bf16,
                            "compile": bool(args.compile and info.device.type == "cuda"),
                            "device": device_summary(info.device), "script": "scripts/finetune_ddp.py"}
        atomic_write_json(folder / "manifest.json", m)
        (folder / "state.pt").unlink(missing_ok=True)
    D.barrier()
    return f"done in {seconds:.0f} s"


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                epilog="See book/paper-scale.md for the paper-scale commands.", allow_abbrev=False)
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--world", help="miniature world or paper setting (worlds/<name>/world.yaml, or a path to a world.yaml)")
    src.add_argument("--setting", choices=SETTINGS, help="paper scale: ImageNet or CIFAR-10 (rftlib.worlds.paperdata)")
    p.add_argument("--grid", required=True, help="grid file of recipes (notebooks/params/grids/*.yaml)")
    p.add_argument("--runs", nargs="+", action="extend", default=[], metavar="RUN",
                   help="run names to fine-tune (default: every run of the grid)")
    p.add_argument("--runs-root", default="runs", help="folder of fine-tuned weights (default: runs)")
    p.add_argument("--force", action="store_true", help="re-run runs that already have weights")
    p.add_argument("--model", default="ViT-B-32-quickgelu", help="paper scale: open_clip architecture")
    p.add_argument("--pretrained", help="paper scale: local weights file of θ_zs's CLIP (never downloaded)")
    p.add_argument("--data-root", help="paper scale: data directory (layout: rftlib.worlds.paperdata)")
    p.add_argument("--templates", help="paper scale: prompt templates (default: the setting's; e.g. imagenet-simple)")
    p.add_argument("--train-per-class", type=int, default=None, help="paper scale: at most this many training images per class")
    p.add_argument("--decode-threads", type=int, default=8, help="paper scale: image-decoding threads per rank")
    p.add_argument("--device", default="auto", help="auto (CUDA device LOCAL_RANK if present), cpu or cuda")
    p.add_argument("--no-bf16", dest="bf16", action="store_false", help="float32 forwards on CUDA too")
    p.add_argument("--compile", action="store_true", help="torch.compile the model (CUDA only)")
    p.add_argument("--threads", type=int, default=None, help="CPU threads per process (torch.set_num_threads)")
    argv = list(sys.argv[1:] if argv is None else argv)
    if any(a == "--run" or a.startswith("--run=") for a in argv):
        p.error("use --runs NAME [NAME ...] (torchrun's parser takes --run for its own --run-path option)")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    info = D.init_from_env(device=args.device)
    try:
        recipes = load_grid(args.grid, args.runs or None)
        job = world_job(args.world, info.device) if args.world else paper_job(args, info.device)
        for r in recipes:
            status = run_recipe(job, r, info, args)
            if info.is_main:
                print(f"[finetune_ddp] {job.name}/{r.name}: {status} ({info.world} rank(s), {info.device})", flush=True)
    finally:
        D.cleanup()
    return 0


if __name__ == "__main__":
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.exit(main())
