"""Step ``zeroshot``: the world's zero-shot model θ_zs, verified (or re-created) and evaluated on every split.

Example:
    >>> Params().world, Params(world="digits", n_eval=500).n_eval
    ('fashion', 500)
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from rftlib.core.evaluation import evaluate
from rftlib.steps.common import StepResults
from rftlib.steps.fields import check_world, n_eval_param, out_dir_param
from rftlib.steps.parameters import Problems, StepParams, at_least, param
from rftlib.worlds.world import World, load_world

__all__ = ["Params", "run", "zeroshot_rows"]


@dataclass(frozen=True)
class Params(StepParams):
    """Parameters of ``notebooks/zeroshot.ipynb``."""

    STEP = "zeroshot"
    world: str = param("fashion", "miniature world (worlds/<name>/world.yaml)")
    recreate: bool = param(False, "pretrain from scratch and overwrite the shipped checkpoint (minutes)")
    epochs: int | None = param(None, "override the world's pretraining epochs when recreating (null: the world's own)",
                               check=at_least(1, "or null: the world's own pretraining epochs"))
    n_eval: int = n_eval_param(1000)
    out_dir: str = out_dir_param("zeroshot")

    def check_world(self, p: Problems) -> None:
        w = check_world(p, verify=p.values["recreate"] is False)  # a shipped checkpoint must pass every check
        if w is None:
            return
        if w.kind == "paper":  # weights and data were checked with the world
            if p.values["recreate"] is True:
                p.add("recreate", True, f"cannot pretrain paper setting {w.name!r}: its CLIP weights are a given file",
                      "false")
        elif p.values["recreate"] is False and not w.checkpoint.is_file():
            p.add("recreate", False, f"needs the shipped checkpoint of world {w.name!r}, which is missing "
                  f"({w.checkpoint.name} in {w.folder.name}/)",
                  "true (pretrain and write the checkpoint), or restore the file with git")


def zeroshot_rows(world: World, n_eval: int, checkpoint: str | None = None) -> pd.DataFrame:
    """θ_zs evaluated on every split of the world: rows with ``run = "zeroshot"``, ``alpha = 0``."""
    clf = world.zeroshot_classifier(checkpoint)
    rows = evaluate(clf, world.eval_splits(n_eval), progress=True, desc=f"zero-shot {world.name}")
    return pd.DataFrame([{"world": world.name, "run": "zeroshot", "alpha": 0.0, **r} for r in rows])


def run(p: Params) -> StepResults:
    """Verify (or, with ``recreate``, pretrain) θ_zs and evaluate it: tables ``pretrain_history`` (only
    for checkpoints pretrained here) and ``zeroshot``; ``info`` holds the checkpoint's manifest and hash."""
    from rftlib.worlds.pretrain import recreate_checkpoint

    w = load_world(p.world)
    if p.recreate:
        recreate_checkpoint(w, n_eval=p.n_eval, epochs=p.epochs)
    manifest = w.manifest()
    out = StepResults(w, info={"manifest": manifest, "sha256": w.verify_checkpoint()})
    history = pd.DataFrame(manifest.get("history", []))
    if not history.empty:
        out.tables["pretrain_history"] = history
    out.tables["zeroshot"] = zeroshot_rows(w, p.n_eval)
    return out
