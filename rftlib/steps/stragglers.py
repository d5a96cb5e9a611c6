"""Step ``stragglers``: single-layer interpolation paths of the selected runs and their straggler layers.

Runs are chosen from the interpolation step's summary (:func:`rftlib.steps.common.select_runs`): the
runs in the failure mode, plus the most successful run as a contrast.

Example:
    >>> Params(hold="both", rank_by="barrier_mid", n_alpha=4)  # doctest: +NORMALIZE_WHITESPACE
    Traceback (most recent call last):
    ...
    rftlib.errors.ParameterError: bad parameters for notebooks/stragglers.ipynb: hold='both' cannot be ranked: the straggler table then has two rows per layer; allowed: 'ft', 'zs'; n_alpha=4 puts no alpha at 1/2, where rank_by='barrier_mid' is measured; allowed: an odd integer >= 3
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from rftlib.core.interpolation import alpha_grid
from rftlib.core.layers import GRANULARITIES
from rftlib.core.stragglers import HOLDS, PATH_RANK_BY, layer_barriers, rank_layers, ranking_agreement, single_layer_paths
from rftlib.steps.common import SELECTIONS, StepResults, load_endpoints, read_upstream, select_runs
from rftlib.steps.fields import check_layers, n_eval_param, out_dir_param, runs_root_param, seed_param, world_param
from rftlib.steps.parameters import Problems, StepParams, at_least, one_of, param
from rftlib.worlds.world import World, load_world

__all__ = ["Params", "ranking_agreements", "run", "straggler_paths", "straggler_table", "stragglers_of"]


def _rankable(p: Problems, name: str) -> None:
    if p.values[name] == "both":
        p.add(name, "both", "cannot be ranked: the straggler table then has two rows per layer",
              ", ".join(repr(h) for h in HOLDS if h != "both"))


@dataclass(frozen=True)
class Params(StepParams):
    """Parameters of ``notebooks/stragglers.ipynb``."""

    STEP = "stragglers"
    world: str = world_param()
    interpolate_dir: str = param("", "results of the interpolation step, whose summary picks the runs "
                                     "(empty: book/results/<world>-interpolate)")
    select: str = param("failure+best", "which runs: all, failure, failure+best", check=one_of(SELECTIONS))
    max_runs: int = param(2, "at most this many failure-mode runs (deepest failures first)", check=at_least(1))
    runs_root: str = runs_root_param()
    granularity: str = param("block", "what a layer is: block, module or tensor", check=one_of(GRANULARITIES))
    hold: str = param("ft", "endpoint where the other layers stay: ft or zs", check=(one_of(HOLDS), _rankable))
    n_alpha: int = param(5, "alphas per single-layer path", check=at_least(2))
    n_eval: int = n_eval_param(500)
    rank_by: str = param("barrier", "straggler ranking: barrier, ood_drop or barrier_mid", check=one_of(PATH_RANK_BY))
    k: int = param(2, "number of straggler layers per run", check=at_least(1))
    controls: bool = param(True, "also run the cumulative and random-direction controls")
    seed: int = seed_param("seed of the random-direction control")
    out_dir: str = out_dir_param("stragglers")

    def check_together(self, p: Problems) -> None:
        if p.ok("rank_by", "n_alpha") and p.values["rank_by"] == "barrier_mid" and p.values["n_alpha"] % 2 == 0:
            p.add("n_alpha", p.values["n_alpha"], "puts no alpha at 1/2, where rank_by='barrier_mid' is measured",
                  "an odd integer >= 3")
        if p.ok("k"):
            check_layers(p)


def straggler_paths(world: World, run: str, n_alpha: int, n_eval: int, runs_root: str | Path = "runs",
                    granularity: str = "block", hold: str = "ft", controls: bool = True,
                    seed: int = 0, progress: bool = True) -> pd.DataFrame:
    """Single-layer paths of one run (task direction; with ``controls``, also cumulative groups and a
    random direction of the same norm), tidy rows with ``world`` and ``run``."""
    model, theta_zs, theta_ft = load_endpoints(world, run, runs_root)
    splits = world.eval_splits(n_eval)
    alphas = alpha_grid(n_alpha)
    rows = single_layer_paths(model, theta_zs, theta_ft, splits, None, alphas, hold, granularity=granularity,
                              progress=progress)
    if controls:
        rows += single_layer_paths(model, theta_zs, theta_ft, splits, None, alphas, hold, granularity=granularity,
                                   cumulative=True, include_full=False, progress=progress)
        rows += single_layer_paths(model, theta_zs, theta_ft, splits, None, alphas, hold, granularity=granularity,
                                   direction="random", seed=seed, include_full=False, progress=progress)
    return pd.DataFrame(rows).assign(world=world.name, run=run)


def straggler_table(paths: pd.DataFrame, world: World) -> pd.DataFrame:
    """Per (run, path): barrier, midpoint barrier, OOD drop, … (:func:`rftlib.core.stragglers.layer_barriers`)."""
    out = []
    for run, sub in paths.groupby("run", sort=False):
        for r in layer_barriers(sub, ood_splits=list(world.ood_splits)):
            out.append({"world": world.name, "run": run, **r})
    return pd.DataFrame(out)


def stragglers_of(table: pd.DataFrame, by: str = "barrier", k: int = 2) -> pd.DataFrame:
    """Top-``k`` layers per run by ``by`` (single-layer, task-direction paths): rows world, run, layer, rank, by."""
    rows = []
    for (world, run), sub in table.groupby(["world", "run"], sort=False):
        for i, layer in enumerate(rank_layers(sub, by=by, k=k)):
            rows.append({"world": world, "run": run, "layer": layer, "rank": i + 1, "by": by})
    return pd.DataFrame(rows)


def ranking_agreements(table: pd.DataFrame, k: int = 2) -> pd.DataFrame:
    """Per run, agreement between the rankings by barrier, midpoint barrier and OOD drop."""
    rows = []
    for (world, run), sub in table.groupby(["world", "run"], sort=False):
        rankings = {by: rank_layers(sub, by=by) for by in PATH_RANK_BY}
        rows += [{"world": world, "run": run, **r} for r in ranking_agreement(rankings, k=k)]
    return pd.DataFrame(rows)


def run(p: Params) -> StepResults:
    """Single-layer paths of the selected runs: tables ``paths``, ``layers``, ``stragglers`` and
    ``ranking_agreement``; ``info["runs"]`` names the runs studied."""
    w = load_world(p.world)
    summary = read_upstream(p.interpolate_dir, "summary", "interpolate", p.world)
    runs = select_runs(summary, p.select, p.max_runs)
    paths = pd.concat([straggler_paths(w, r, p.n_alpha, p.n_eval, p.runs_root, p.granularity, p.hold, p.controls,
                                       p.seed) for r in runs], ignore_index=True)
    table = straggler_table(paths, w)
    tables = {"paths": paths, "layers": table, "stragglers": stragglers_of(table, p.rank_by, p.k),
              "ranking_agreement": ranking_agreements(table, p.k)}
    return StepResults(w, tables=tables, info={"runs": runs})
