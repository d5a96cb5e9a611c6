"""Contrastive pretraining of a miniature world's CLIP (open_clip's ``ClipLoss``), resumable.

Each epoch renders a fresh corpus (:func:`rftlib.worlds.corpus.render_corpus`, seeded by ``seed + epoch``),
shuffles it with its own seeded generator, and takes AdamW steps (β = 0.9/0.98, ε = 1e-6, weight
decay on ≥2-D weights only) under a linear-warmup cosine schedule; the learnable logit scale is
clamped at 100. After every epoch the full training state is saved atomically to
``<out_dir>/state.pt`` (tensors and plain containers only, so it loads with
``torch.load(weights_only=True)``); a rerun resumes after the last finished epoch and gives the same
weights as an uninterrupted run.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import open_clip
import pandas as pd
import torch

from rftlib.worlds.corpus import TokenCache, render_corpus
from rftlib.errors import NumericalError, ParameterError
from rftlib.core.evaluation import evaluate
from rftlib.files.io import atomic_path
from rftlib.models.checkpoints import load_resume_state
from rftlib.models.factory import build_classifier, create_clip
from rftlib.progress import bar
from rftlib.core.schedule import cosine_with_warmup
from rftlib.worlds.world import MiniWorld, save_world_checkpoint

TEXT_HALF_PREFIXES = ("token_embedding.", "transformer.", "positional_embedding", "ln_final.", "text_projection")


def param_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: decay on ≥2-D weights, none on biases, norms, embeddings' 1-D params and logit scale."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (decay if p.ndim >= 2 and "logit_scale" not in name else no_decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def recipe_of(world: MiniWorld, **overrides: Any) -> dict[str, Any]:
    """The world's pretraining recipe with overrides applied and validated."""
    r = {"eval_every": 1, **world.pretrain, **{k: v for k, v in overrides.items() if v is not None}}
    for k in ("epochs", "batch_size"):
        if int(r[k]) <= 0:
            raise ParameterError(f"pretraining {k}={r[k]} must be a positive integer.")
    if float(r["lr"]) <= 0:
        raise ParameterError(f"pretraining lr={r['lr']} must be > 0.")
    return r


def zero_shot_eval(clip, tokenizer, world: MiniWorld, splits) -> dict[str, float]:
    """Zero-shot accuracy of ``clip`` on ``splits``: ID, mean OOD (seen+natural) and mean unseen."""
    clf = build_classifier(clip, tokenizer, world.classnames, world.templates, world.input_mean, world.input_std)
    rows = {r["split"]: r["accuracy"] for r in evaluate(clf, splits, progress=False)}
    out = {"id": rows.get("id", float("nan"))}
    ood = [rows[s] for s in world.ood_splits if s in rows]
    unseen = [rows[s] for s in world.unseen_styles if s in rows]
    out["ood_mean"] = float(np.mean(ood)) if ood else float("nan")
    out["unseen_mean"] = float(np.mean(unseen)) if unseen else float("nan")
    return out


def pretrain_world(world: MiniWorld, out_dir: str | Path, n_eval: int = 1000, progress: bool = True,
                   max_steps_per_epoch: int | None = None, eval_every: int | None = None, **overrides: Any) -> tuple[torch.nn.Module, Any, pd.DataFrame]:
    """Pretrain the world's CLIP; returns ``(clip, tokenizer, history)`` (one history row per epoch)."""
    r = recipe_of(world, **overrides)
    epochs, bs, seed = int(r["epochs"]), int(r["batch_size"]), int(r["seed"])
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    x_train, y_train = world.train_data()
    n = len(x_train)
    steps_per_epoch = n // bs if max_steps_per_epoch is None else min(n // bs, max_steps_per_epoch)
    total = epochs * steps_per_epoch
    clip, tok = create_clip(world.model, seed=seed)
    clip.train()
    opt = torch.optim.AdamW(param_groups(clip, float(r["weight_decay"])), lr=float(r["lr"]), betas=(0.9, 0.98), eps=1e-6)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: cosine_with_warmup(s, int(r["warmup_steps"]), total))
    mean = torch.tensor(world.input_mean).view(1, -1, 1, 1)
    std = torch.tensor(world.input_std).view(1, -1, 1, 1)
    tokens = TokenCache(tok)
    eval_splits = world.eval_splits(n_eval, offset=0)
    state_path = out / "state.pt"
    history, start_epoch = _resume(state_path, clip, opt, sched, r, steps_per_epoch)
    # one bar over every step of the pretraining: tqdm's time left counts only what this process has
    # left to do (a resumed run starts the bar at its last finished epoch)
    progress_bar = bar(total=epochs * steps_per_epoch, initial=start_epoch * steps_per_epoch, disable=not progress,
                       desc=f"pretrain {world.name}", unit="step")
    for epoch in range(start_epoch, epochs):
        t0 = time.perf_counter()
        images, captions, _ = render_corpus(x_train, y_train, world.pretrain_styles, world.classes,
                                            float(world.captions["p_coarse"]), float(world.captions["p_wrong"]),
                                            seed=seed * 1000 + epoch)
        text = tokens(captions)
        t_render = time.perf_counter() - t0
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1000 + epoch))
        progress_bar.set_description(f"pretrain {world.name} epoch {epoch + 1}/{epochs}")
        t1 = time.perf_counter()
        losses = _train_epoch(clip, opt, sched, images, text, perm, bs,
                              steps_per_epoch, (mean, std), epoch, progress_bar)
        t_train = time.perf_counter() - t1
        clip.eval()
        t2 = time.perf_counter()
        every = int(eval_every or r.get("eval_every", 1))
        if (epoch + 1) % every == 0 or epoch + 1 == epochs:
            zs = zero_shot_eval(clip, tok, world, eval_splits)
        else:
            zs = {"id": float("nan"), "ood_mean": float("nan"), "unseen_mean": float("nan")}
        history.append({"world": world.name, "epoch": epoch + 1, "loss": float(np.mean(losses)),
                        "logit_scale": clip.logit_scale.exp().item(), "zs_id": zs["id"], "zs_ood_mean": zs["ood_mean"],
                        "zs_unseen_mean": zs["unseen_mean"], "seconds_train": t_train, "seconds_render": t_render,
                        "seconds_eval": time.perf_counter() - t2})
        with atomic_path(state_path) as tmp:
            torch.save({"model": clip.state_dict(), "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                        "epoch": epoch + 1, "history": history, "steps_per_epoch": steps_per_epoch,
                        "recipe": {k: str(v) for k, v in r.items()}}, tmp)
    progress_bar.close()
    clip.eval()
    return clip, tok, pd.DataFrame(history)


def _resume(state_path: Path, clip: torch.nn.Module, opt: Any, sched: Any, r: Mapping[str, Any],
            steps_per_epoch: int) -> tuple[list[dict], int]:
    """Load a pretraining's saved state into model, optimizer and schedule: ``(history, first epoch to
    run)``; ``([], 0)`` without one. A state of another recipe is an error that says how to start over."""
    if not state_path.is_file():
        return [], 0
    state = load_resume_state(state_path, ("model", "optimizer", "scheduler", "history", "epoch", "recipe",
                                           "steps_per_epoch"))
    if state["recipe"] != {k: str(v) for k, v in r.items()} or state["steps_per_epoch"] != steps_per_epoch:
        raise ParameterError(f"{state_path} was written with another recipe {state['recipe']}; "
                             "use a new out_dir or delete it to start over.")
    clip.load_state_dict(state["model"])
    opt.load_state_dict(state["optimizer"])
    sched.load_state_dict(state["scheduler"])
    return list(state["history"]), int(state["epoch"])


def _train_epoch(clip: torch.nn.Module, opt: Any, sched: Any, images: torch.Tensor, text: torch.Tensor,
                 perm: torch.Tensor, bs: int, steps: int, norm: tuple[torch.Tensor, torch.Tensor], epoch: int,
                 progress_bar: Any) -> list[float]:
    """One epoch of contrastive pretraining over ``perm``'s batches; returns the step losses."""
    mean, std = norm
    loss_fn = open_clip.ClipLoss()
    clip.train()
    losses: list[float] = []
    for i in range(steps):
        idx = perm[i * bs:(i + 1) * bs]
        img = (images[idx] - mean) / std
        f_img = clip.encode_image(img, normalize=True)
        f_txt = clip.encode_text(text[idx], normalize=True)
        loss = loss_fn(f_img, f_txt, clip.logit_scale.exp())
        if not torch.isfinite(loss):
            raise NumericalError(f"pretraining loss is {loss.item()} at epoch {epoch + 1}, step {i}; lower lr.")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        with torch.no_grad():
            clip.logit_scale.clamp_(0, float(np.log(100.0)))
        losses.append(loss.item())
        progress_bar.update(1)
        if i % 5 == 0:
            progress_bar.set_postfix(loss=f"{np.mean(losses[-5:]):.3f}", refresh=False)
    return losses


def clip_state_for_shipping(clip: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The CLIP state dict to ship: image tower and logit scale in float32, the text tower (only
    used to build the zero-shot head; its 49,408-token embedding is most of the size) in float16."""
    sd = clip.state_dict()
    return {k: (v.half() if k.startswith(TEXT_HALF_PREFIXES) and v.is_floating_point() else v) for k, v in sd.items()}


def recreate_checkpoint(world: MiniWorld, n_eval: int = 1000, work_dir: str | Path | None = None,
                        progress: bool = True, **overrides: Any) -> dict[str, Any]:
    """Pretrain the world from scratch (resuming an interrupted run from ``work_dir``, default
    ``runs/<world>/pretrain``) and :func:`ship` the result."""
    from rftlib.files.manifest import repo_root

    recipe = recipe_of(world, **overrides)
    work = Path(work_dir) if work_dir is not None else repo_root() / "runs" / world.name / "pretrain"
    clip, _, history = pretrain_world(world, work, n_eval=n_eval, progress=progress, **overrides)
    m = ship(world, clip, history, recipe, n_eval)
    (work / "state.pt").unlink(missing_ok=True)
    return m


def ship(world: MiniWorld, clip: torch.nn.Module, history: pd.DataFrame, recipe: dict[str, Any],
         n_eval: int = 1000) -> dict[str, Any]:
    """Write ``worlds/<name>/zeroshot.safetensors`` (its header records world, model and the world
    file's hash) and its ``manifest.json``: recipe, data, seed, versions, commit, sha256, the world
    file's hash (``world_sha256``), the zero-shot accuracy per split measured on the saved file, the
    pretraining history and time."""
    from rftlib.models.checkpoints import sha256
    from rftlib.files.io import atomic_write_json
    from rftlib.files.manifest import build_manifest

    save_world_checkpoint(world, clip_state_for_shipping(clip))
    clf = world.zeroshot_classifier(verify=False)
    rows = evaluate(clf, world.eval_splits(n_eval), progress=False)
    m = build_manifest({"world": world.name, "model": world.model, "recipe": recipe, "captions": world.captions,
                        "pretrain_styles": world.pretrain_styles, "dataset": world.dataset}, seed=int(recipe["seed"]))
    m["sha256"] = sha256(world.checkpoint)
    m["size_bytes"] = world.checkpoint.stat().st_size
    m["world_sha256"] = world.world_sha256
    # the sum of the epochs' own times (a resumed run counts each epoch once)
    m["pretrain_seconds"] = round(float(history[["seconds_train", "seconds_render", "seconds_eval"]].sum().sum()), 1)
    m["threads"] = torch.get_num_threads()
    m["history"] = history.round(6).to_dict(orient="records")
    m["zeroshot_accuracy"] = {r["split"]: round(float(r["accuracy"]), 6) for r in rows}
    m["zeroshot_n_eval"] = n_eval
    atomic_write_json(world.manifest_path, dict(m))
    return dict(m)
