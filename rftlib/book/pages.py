"""Book fragments generated from the result files: every number on a findings page comes from here.

``render_pages(results)`` reads a results root (default ``book/results``; ``rft book --results ROOT``)
and writes Markdown fragments into ``book/_generated/``, which the hand-written pages pull in with
``{include}``. Nothing in the fragments is typed by hand: tables are rendered from the CSV files,
sentences are filled from them, verdicts come from the steps' ``claims.csv``, and figures are those
of the same root. The introduction and the reproduction page say which root, and which pipeline
(``<root>/pipeline/manifest.json``), the book was built from. ``rft book`` runs this before building.
"""

from __future__ import annotations

import copy
import json
import math
import os
from pathlib import Path
from typing import Any, Mapping

import pandas as pd

from rftlib.book.claims import claims_matrix_html, read_claims, read_power
from rftlib.files.io import atomic_write_text
from rftlib.errors import ParameterError
from rftlib.files.manifest import read_manifest, repo_path, repo_root
from rftlib.book.params import DEFAULT_RESULTS_ROOT, check_results_root

GENERATED = "book/_generated"
WORLDS = ("fashion", "digits", "digits-clean")
#: The pipeline's own folder under a results root (timings and the pipeline's manifest).
PIPELINE_DIR = "pipeline"


def results_folder(results: str | os.PathLike = DEFAULT_RESULTS_ROOT, what: str = "--results") -> Path:
    """The results root the book is rendered from, as an absolute path: a folder inside the
    repository (:func:`rftlib.book.params.check_results_root`) that exists.

    Raises:
        ParameterError: outside the repository, or missing (the fix: run the pipeline that writes
            it, named when a pipeline file in ``notebooks/params/`` has that ``results_root``).

    Example:
        >>> results_folder("book/results").relative_to(repo_root()).as_posix()
        'book/results'
        >>> results_folder("book/no-such-results")  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        rftlib.errors.ParameterError: --results book/no-such-results does not exist: run the pipeline that writes it first, or give an existing results root
    """
    rel = check_results_root(results, what)
    folder = repo_root() / rel
    if not folder.is_dir():
        writers = _pipelines_writing(rel)
        how = " or ".join(f"`rft pipeline {w}`" for w in writers) if writers else "the pipeline that writes it"
        raise ParameterError(f"{what} {rel} does not exist: run {how} first, or give an existing results root")
    return folder


def _pipelines_writing(rel: str) -> list[str]:
    """The pipeline files of ``notebooks/params/`` whose ``results_root`` is ``rel``."""
    from rftlib.book.params import yaml_load
    from rftlib.files.layout import PARAMS_DIR

    found = []
    for f in sorted((repo_root() / PARAMS_DIR).glob("*.y*ml")):
        try:
            data = yaml_load(f.read_text(encoding="utf-8"))
            if isinstance(data, dict) and "steps" in data and \
                    check_results_root(data.get("results_root", DEFAULT_RESULTS_ROOT)) == rel:
                found.append(f"{PARAMS_DIR}/{f.name}")
        except Exception:  # noqa: BLE001 - an unreadable file or a bad root names no root
            continue
    return found


def _root() -> Path:
    """The book's default results root (the fragments take another as their ``results``)."""
    return repo_root() / DEFAULT_RESULTS_ROOT


def _rel(root: Path) -> str:
    """A results root as the book names it: repository-relative, POSIX style."""
    return Path(os.path.abspath(root)).relative_to(repo_root()).as_posix()


def _read(root: Path, step: str, name: str) -> pd.DataFrame | None:
    p = root / step / f"{name}.csv"
    return pd.read_csv(p) if p.is_file() else None


def _fig(root: Path, step: str, name: str, caption: str) -> str:
    p = root / step / f"{name}.png"
    if not p.is_file():
        return f"*(figure `{step}/{name}.png` not produced yet: run step `{step}`)*\n\n"
    return f"```{{figure}} /{_rel(root)}/{step}/{name}.png\n:width: 100%\n\n{caption}\n```\n\n"


def pipeline_name(root: Path) -> str | None:
    """The pipeline that wrote a results root, from its ``pipeline/manifest.json`` (``None`` if unknown).

    Example:
        >>> pipeline_name(repo_root() / "book" / "results"), pipeline_name(Path("/nonexistent"))
        ('default', None)
    """
    m = read_manifest(root / PIPELINE_DIR / "manifest.json") or {}
    name = m.get("parameters", {}).get("pipeline") if isinstance(m.get("parameters"), dict) else None
    return str(name) if name else None


def built_from(root: Path) -> str:
    """The line that says which results root, and which pipeline, the book was built from.

    Example:
        >>> built_from(repo_root() / "book" / "results")
        'Built from the results in `book/results` (pipeline `default`).'
    """
    name = pipeline_name(root)
    return f"Built from the results in `{_rel(root)}`" + (f" (pipeline `{name}`)." if name else " (pipeline unknown).")


def _pct(x: float) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{100 * x:.1f} %"


def _num(x: float, d: int = 3) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.{d}g}" if abs(x) < 1e-2 and x != 0 else f"{x:.{d}f}"


def _table(df: pd.DataFrame, digits: int = 3) -> str:
    d = df.copy()
    for c in d.columns:
        if pd.api.types.is_float_dtype(d[c]):
            d[c] = d[c].map(lambda v: "" if pd.isna(v) else (f"{v:.{digits}g}" if 0 < abs(v) < 0.01 else f"{v:.{digits}f}"))
    head = "| " + " | ".join(map(str, d.columns)) + " |\n|" + "---|" * len(d.columns) + "\n"
    return head + "".join("| " + " | ".join(str(v) for v in row) + " |\n" for row in d.itertuples(index=False))


def _power_note(claim: str, world: str, root: Path | None = None) -> str:
    """The detectable-effect statement beside a verdict resting on the absence of an effect."""
    pw = read_power(root or _root())
    r = pw[(pw["claim"] == claim) & (pw["world"] == world)]
    if r.empty:
        return ""
    notes = [("no effect of any size detectable with these runs" if pd.isna(m) else
              f"smallest effect detectable at 80 % power: {_num(float(m))}") + f" ({st})"
             for m, st in zip(r["mde"], r["statistic"])]
    return "; " + "; ".join(notes)


def _verdict(claims: pd.DataFrame | None, claim: str, world: str, root: Path | None = None) -> str:
    if claims is None:
        return "*not yet measured*"
    r = claims[(claims["claim"] == claim) & (claims["world"] == world)]
    if r.empty:
        return "*not yet measured*"
    r = r.iloc[0]
    ci = "" if pd.isna(r["ci_low"]) else f", 95 % interval [{_num(r['ci_low'])}, {_num(r['ci_high'])}]"
    p = "" if pd.isna(r["p_value"]) else f", p = {_num(r['p_value'])}"
    if r["verdict"] == "untestable" or "untestable" in str(r["statistic"]):
        return f"**{r['verdict']}** — {str(r['statistic']).removeprefix('untestable: ')}"
    return f"**{r['verdict']}** — {r['statistic']} = {_num(r['value'])}{ci}{p}{_power_note(claim, world, root)}"


def _evidence(world: str, claims: tuple[str, ...], root: Path | None = None) -> str:
    """The population statistics of ``claims`` on ``world`` (``<world>-*/evidence.csv`` written from
    :mod:`rftlib.steps.evidence`), as a table; empty when no step wrote one."""
    files = sorted((root or _root()).glob(f"{world}-*/evidence.csv"))
    parts = [pd.read_csv(f) for f in files]
    d = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
    if d.empty or "claim" not in d:
        return ""
    d = d[d["claim"].isin(claims) & (d["world"] == world)]
    if d.empty:
        return ""
    cols = [c for c in ("claim", "statistic", "value", "ci_low", "ci_high", "p_value", "n_runs", "verdict") if c in d]
    return ("Across-run statistics (intervals: bootstrap over runs, clustered by recipe; `reported` = shown, "
            "not deciding):\n\n" + _table(d[cols]) + "\n")


def claims_fragment(claims: pd.DataFrame | None, power: pd.DataFrame | None = None) -> str:
    """The claims matrix (one row per claim, one column per world; :func:`rftlib.book.claims.claims_matrix_html`).

    Example:
        >>> from rftlib.core.verdicts import Claim
        >>> df = pd.DataFrame([Claim("F1", "fashion", "tau", 0.1, -0.2, 0.3, 0.5, "supported").to_row()])
        >>> claims_fragment(df).count('class="claim-row"')
        1
    """
    if claims is None or claims.empty:
        return "*No claims measured yet: run `rft pipeline notebooks/params/default.yaml`.*\n"
    worlds = [w for w in WORLDS if (claims["world"] == w).any()]
    worlds += [w for w in dict.fromkeys(claims["world"]) if w not in worlds]
    html = claims_matrix_html(claims, worlds, power)
    return "```{raw} html\n" + html + "\n```\n"


def conclusion_sentences(claims: pd.DataFrame | None) -> str:
    """Two sentences, generated from the claim rows, on what the study concludes about the paper.

    Example:
        >>> from rftlib.core.verdicts import Claim
        >>> rows = [Claim(c, w, "s", 0.0, -1, 1, 0.5, v).to_row() for c, w, v in
        ...         [("F1", "a", "supported"), ("F2", "a", "not supported"), ("F4", "a", "untestable")]]
        >>> print(conclusion_sentences(pd.DataFrame(rows)))
        Of the 3 verdicts on 1 world, 1 is supported, 1 not supported, 0 mixed and 1 untestable. The paper's central contrast, whole-model sharpness failing (F1) where straggler layers succeed (F2), holds in none of the worlds; supported in no world: F2.
    """
    if claims is None or claims.empty:
        return ""
    n, worlds = len(claims), list(dict.fromkeys(claims["world"]))
    c = claims["verdict"].value_counts()
    tally = (f"Of the {n} verdicts on {len(worlds)} world{'s' if len(worlds) != 1 else ''}, "
             f"{c.get('supported', 0)} {'is' if c.get('supported', 0) == 1 else 'are'} supported, "
             f"{c.get('not supported', 0)} not supported, {c.get('mixed', 0)} mixed and {c.get('untestable', 0)} untestable.")
    v = {(r.claim, r.world): r.verdict for r in claims.itertuples()}
    both = [w for w in worlds if v.get(("F1", w)) == "supported" and v.get(("F2", w)) == "supported"]
    where = ", ".join(f"`{w}`" for w in both) if both else "none of the worlds"
    tested = [k for k in dict.fromkeys(claims["claim"]) if any(v.get((k, w)) not in (None, "untestable") for w in worlds)]
    nowhere = [k for k in tested if not any(v.get((k, w)) == "supported" for w in worlds)]
    tail = f"; supported in no world: {', '.join(nowhere)}" if nowhere else "; every tested claim is supported in at least one world"
    return (tally + " The paper's central contrast, whole-model sharpness failing (F1) where straggler layers "
            f"succeed (F2), holds in {where}{tail}.")


_STEPS = ("zeroshot", "finetune", "interpolate", "stragglers", "sharpness", "sparsity", "evidence")


def studied_worlds(root: Path) -> list[str]:
    """The worlds of :data:`WORLDS` with at least one step folder in the results root ``root`` (the
    default study has no ``digits``, the quick one no ``digits-clean``).

    Example:
        >>> studied_worlds(results_folder("book/results"))
        ['fashion', 'digits-clean']
    """
    return [w for w in WORLDS if any((root / f"{w}-{step}").is_dir() for step in _STEPS)]


def p1_fragment(claims: pd.DataFrame | None, results: str | os.PathLike = DEFAULT_RESULTS_ROOT) -> str:
    root = repo_path(results)
    parts = []
    for w in studied_worlds(root):
        step = f"{w}-interpolate"
        s = _read(root, step, "summary")
        parts.append(f"## World `{w}`\n\n")
        if s is None:
            parts.append(f"*Not yet run: step `{step}`.*\n\n")
            continue
        n_fail, n_succ, n = int(s["failure_mode"].sum()), int(s["successful"].sum()), len(s)
        fail = s[s["failure_mode"].astype(bool)]
        n_id = int((fail["acc_id_ft"] > fail["acc_id_zs"]).sum())
        seeds = f" ({s['recipe'].nunique()} recipes × {s['seed'].nunique()} seeds)" if {"recipe", "seed"} <= set(s) else ""
        parts.append(f"Of {n} fine-tuning runs{seeds}, **{n_succ}** interpolate successfully (an interior α beats both "
                     f"endpoints on mean OOD accuracy) and **{n_fail}** are in the failure mode (no interior α beats "
                     f"the zero-shot model). Of the failure-mode runs, {n_id} raised ID accuracy above the zero-shot "
                     f"model's (the paper's failure mode: fine-tuning worked in distribution); the other {n_fail - n_id} "
                     "ended at or below it, so in those fine-tuning itself failed (their recipes are in the table below)."
                     f" Verdict on P1: {_verdict(claims, 'P1', w, root)}.\n\n" + _evidence(w, ("P1",), root))
        cols = ["run", "lr", "augment", "label_smoothing", "seed", "acc_id_zs", "acc_ood_zs", "alpha_best", "acc_id_best", "acc_ood_best",
                "acc_id_ft", "acc_ood_ft", "loss_barrier", "failure_mode"]
        parts.append(_table(s[[c for c in cols if c in s]]) + "\n")
        pp = _read(root, step, "p1_parts")
        if pp is not None:
            parts.append("The four parts of P1:\n\n" + _table(pp[["part", "statistic", "value", "ci_low", "ci_high", "verdict"]]) + "\n")
        parts.append(_fig(root, step, "alpha_curves", f"World `{w}`: accuracy along α for every run (ID, mean OOD over the "
                          "styles seen in pretraining, mean over the unseen styles). A curve whose mean-OOD line rises "
                          "above both of its ends is a successful interpolation."))
        parts.append(_fig(root, step, "id_ood_plane", f"World `{w}`: the WiSE-FT plane. Each run's path from θ_zs (α = 0) "
                          "to θ_ft (α = 1); paths that bulge above the straight chord gain OOD accuracy by interpolating."))
        parts.append(_fig(root, step, "barrier_vs_gain", f"World `{w}`: ID loss barrier against the OOD gain of the best "
                          "interior α over the zero-shot model, one point per run."))
    return "".join(parts)


def sharpness_fragment(claims: pd.DataFrame | None, which: str, results: str | os.PathLike = DEFAULT_RESULTS_ROOT) -> str:
    root = repo_path(results)
    parts = []
    for w in studied_worlds(root):
        step = f"{w}-sharpness"
        parts.append(f"## World `{w}`\n\n")
        corr = _read(root, step, "correlations")
        if corr is None:
            parts.append(f"*Not yet run: step `{step}`.*\n\n")
            continue
        if which == "f1":
            parts.append(f"Verdict on F1: {_verdict(claims, 'F1', w, root)}.\n\n" + _evidence(w, ("F1",), root))
            parts.append(_fig(root, step, "sharpness_vs_alpha", f"World `{w}`: whole-model sharpness of θ(α) per run (left "
                              "panels, one per ρ) and the mean OOD accuracy of the same models (right)."))
            parts.append(_fig(root, step, "whole_vs_ood", f"World `{w}`: whole-model sharpness against mean OOD accuracy, "
                              "every run and α."))
        else:
            parts.append(f"Verdict on F2: {_verdict(claims, 'F2', w, root)}.\n\nVerdict on F3: {_verdict(claims, 'F3', w, root)}.\n\n"
                         + _evidence(w, ("F2", "F3"), root))
            cols = ["layer", "rho", "mean", "ci_low", "ci_high", "n_pos", "n_neg", "stouffer_p", "n_runs_used"]
            parts.append("Within-run Kendall τ between each layer's sharpness and mean OOD accuracy, combined "
                         "across runs (mean τ, bootstrap interval over runs, runs with positive/negative τ, "
                         "directional Stouffer p):\n\n" + _table(corr[[c for c in cols if c in corr]]) + "\n")
            parts.append(_fig(root, step, "layer_correlations", f"World `{w}`: mean within-run τ per layer; red bars are "
                              "straggler layers (and their summed sharpness)."))
            parts.append(_fig(root, step, "layer_alpha_heatmap", f"World `{w}`: layer-wise sharpness, layer × α, per run."))
    return "".join(parts)


def f4_fragment(claims: pd.DataFrame | None, results: str | os.PathLike = DEFAULT_RESULTS_ROOT) -> str:
    root = repo_path(results)
    parts = []
    for w in studied_worlds(root):
        parts.append(f"## World `{w}`\n\n")
        st = _read(root, f"{w}-stragglers", "stragglers")
        if st is not None:
            lst = "; ".join(f"`{r}`: {', '.join(g['layer'])}" for r, g in st.groupby("run", sort=False))
            parts.append(f"Straggler layers (top {int(st['rank'].max())} by {st['by'].iloc[0]}): {lst}.\n\n")
        parts.append(_fig(root, f"{w}-stragglers", "layer_barriers", f"World `{w}`: barrier and OOD drop of each single-layer path."))
        parts.append(f"Verdict on F4: {_verdict(claims, 'F4', w, root)}.\n\n" + _evidence(w, ("F4",), root))
        if (root / f"{w}-sparsity" / "manifest.json").is_file() and _read(root, f"{w}-sparsity", "summary") is None:
            parts.append("No run of this world is in the failure mode, so the sparsity step had nothing to rescue.\n\n")
            continue
        fp = _read(root, f"{w}-sparsity", "f4_parts")
        if fp is not None and "run" in fp:
            parts.append("Per failure-mode run and sparsity level p: OOD gain over the unmodified θ_zs with the "
                         "stragglers or the control layers sparsified, and whether the run is rescued:\n\n" + _table(fp) + "\n")
        parts.append(_fig(root, f"{w}-sparsity", "ood_vs_alpha", f"World `{w}`: mean OOD accuracy along α before (black) and "
                          "after zeroing a fraction p of the straggler layers' weights or of a matched control set."))
        sh = _read(root, f"{w}-sparsity", "sharpness")
        if sh is not None:
            t = sh.pivot_table(index=["run", "layer", "adaptive"], columns="sparse", values="value").reset_index()
            t.columns = [str(c) if not isinstance(c, bool) else ("sparse" if c else "dense") for c in t.columns]
            parts.append("Layer-wise average-case sharpness of the straggler layers at α = 0.5, dense vs sparse, "
                         "adaptive and standard:\n\n" + _table(t, 4) + "\n")
    return "".join(parts)


def worlds_fragment(results: str | os.PathLike = DEFAULT_RESULTS_ROOT) -> str:
    """Per world: pretraining cost and zero-shot accuracy per split, from the shipped manifests."""
    root = repo_path(results)
    cols: dict[str, dict[str, str]] = {}
    notes = []
    for w in WORLDS:
        p = repo_root() / "worlds" / w / "manifest.json"
        if not p.is_file():
            notes.append(f"*World `{w}` has no shipped checkpoint yet.*\n\n")
            continue
        m = json.loads(p.read_text())
        hist = pd.DataFrame(m["history"])
        col = {"pretraining epochs": str(len(hist)),
               "median seconds per epoch": f"{hist['seconds_train'].median():.0f}",
               "pretraining minutes (sum of epochs)": f"{m['pretrain_seconds'] / 60:.1f}",
               "checkpoint size (MB)": f"{m['size_bytes'] / 2**20:.1f}",
               "images per split": str(m.get("zeroshot_n_eval", ""))}
        col.update({f"zero-shot accuracy: {k}": _pct(v) for k, v in m["zeroshot_accuracy"].items()})
        cols[w] = col
    parts = []
    if cols:
        t = pd.DataFrame(cols).fillna("—").reset_index().rename(columns={"index": ""})
        parts.append("The shipped checkpoints, read from `worlds/<name>/manifest.json` (accuracy on held-out "
                     "images; times measured while pretraining on this project's 2-core machine, which other jobs were sharing "
                     "at the time, so read them as upper bounds):\n\n" + _table(t) + "\n")
    parts += notes
    for w in WORLDS:
        parts.append(_fig(root, f"{w}-zeroshot", "pretrain_history", f"World `{w}`: contrastive loss and zero-shot accuracy during pretraining."))
    return "".join(parts)


def intro_fragment(claims: pd.DataFrame | None, results: str | os.PathLike = DEFAULT_RESULTS_ROOT) -> str:
    """Which results the book was built from, the one figure of the introduction, and the verdicts
    in one line per world."""
    root = repo_path(results)
    out = [f"*{built_from(root)}*\n\n", _fig(root, "fashion-interpolate", "id_ood_plane", "The question in one picture (world `fashion`): each line is one "
                "fine-tuning run, traced from the zero-shot model (α = 0) to the fine-tuned model (α = 1). Paths that "
                "bulge above their endpoints gain OOD accuracy by interpolating; paths that only fall are in the "
                "failure mode. Which property of the models tells them apart?")]
    if claims is not None:
        out.append("**What the study concludes.** " + conclusion_sentences(claims) + " The verdicts in full are in "
                   "{doc}`findings/claims`.\n\n")
        for w in WORLDS:
            sub = claims[claims["world"] == w]
            if len(sub):
                out.append(f"**World `{w}`:** " + "; ".join(f"{r.claim} {r.verdict}" for r in sub.itertuples()) + ".\n\n")
    return "".join(out)


#: Wall-time goals of the pipelines on a quiet 2-core machine, minutes (set-up excluded).
BUDGET_MINUTES = {"default": 30.0, "quick": 5.0}


def _budget_sentence(t: pd.DataFrame, run: Mapping[str, Any] | None) -> str:
    """The last pipeline run's wall time and layout against its pipeline's goal (:data:`BUDGET_MINUTES`;
    when that run covered every step), and which kinds of step cost most.

    Example:
        >>> t = pd.DataFrame({"step": ["w-finetune", "w-sharpness"], "seconds": [600.0, 300.0]})
        >>> _budget_sentence(t, {"wall_seconds": 840, "parameters": {"steps": ["w-finetune", "w-sharpness"]},
        ...                      "execution": {"jobs": 2, "threads": 1, "load": 0.1, "cpu_count": 2}})[:95]
        'The whole run took 14.0 minutes of wall time (2 steps side by side, 1 thread each, on 2 cores; '
    """
    kind = t.assign(kind=t["step"].str.split("-").str[-1]).groupby("kind")["seconds"].sum().sort_values(ascending=False)
    top = ", ".join(f"{k} ({v / 60:.1f} min)" for k, v in kind.head(3).items())
    out = f"Summed over steps, the costliest were {top}."
    if run and set(run.get("parameters", {}).get("steps", [])) >= set(t["step"]) and run.get("wall_seconds"):
        ex, minutes = run.get("execution", {}), run["wall_seconds"] / 60
        name = run.get("parameters", {}).get("pipeline", "default")
        budget_min = BUDGET_MINUTES.get(name, BUDGET_MINUTES["default"])
        verdict = "within" if minutes <= budget_min else "over"
        out = (f"The whole run took {minutes:.1f} minutes of wall time ({ex.get('jobs')} steps side by side, "
               f"{ex.get('threads')} thread each, on {ex.get('cpu_count')} cores; 1-minute load average "
               f"{ex.get('load')} at its start), {verdict} the {name} job's goal of {budget_min:.0f} minutes on a quiet "
               "machine. " + out)
    return out


def reproduce_fragment(results: str | os.PathLike = DEFAULT_RESULTS_ROOT) -> str:
    """Which results the book was built from, the measured cost of each pipeline step and of
    pretraining, and the benchmarks (all from the results root but pretraining, read from the
    shipped worlds)."""
    root = repo_path(results)
    timings = f"`{_rel(root)}/{PIPELINE_DIR}/timings.csv`"
    parts = [f"*{built_from(root)}*\n\n"]
    t = _read(root, PIPELINE_DIR, "timings")
    if t is not None and len(t):
        t = t.copy()
        t["minutes"] = (t["seconds"] / 60).round(2)
        total = t["seconds"].sum() / 60
        mpath = root / PIPELINE_DIR / "manifest.json"
        run = json.loads(mpath.read_text()) if mpath.is_file() else None
        parts.append("Wall time of each step of the last pipeline run on this project's machine "
                     f"({timings}; the run's layout and load in `{_rel(root)}/{PIPELINE_DIR}/manifest.json`); "
                     f"{total:.1f} step-minutes in all, plus the book build. "
                     + _budget_sentence(t, run) + "\n\n"
                     + _table(t[["step", "minutes"]], 2) + "\n")
    else:
        parts.append(f"*No pipeline timings yet ({timings}).*\n\n")
    rows = []
    for w in WORLDS:
        p = repo_root() / "worlds" / w / "manifest.json"
        if p.is_file():
            m = json.loads(p.read_text())
            rows.append({"world": w, "epochs": len(m["history"]), "minutes": round(m["pretrain_seconds"] / 60, 1)})
    if rows:
        parts.append("Re-creating a world's zero-shot checkpoint from scratch (`rft world pretrain NAME`; not part of the default "
                     "run, which uses the shipped checkpoints) took, measured while pretraining here:\n\n"
                     + _table(pd.DataFrame(rows), 1) + "\n")
    parts.append(path_benchmark_fragment(root / "benchmarks" / "path.json"))
    parts.append(job_benchmark_fragment(root / "benchmarks" / "job.json"))
    return "".join(parts)


def _load_words(load: float, cores: Any) -> str:
    """How busy the machine was: the ratios measured side by side mean something either way."""
    busy = isinstance(cores, int) and load >= 0.5 * cores
    return (f"load average {load:.1f} at the start" + (" (a shared machine: only the ratios, measured side by side in "
                                                         "one run, mean anything)" if busy else ""))


def path_benchmark_fragment(path: Path) -> str:
    """The whole-path benchmark's ratios beside their goals (``rftlib.book.bench``), with the load.

    Example:
        >>> import json, tempfile
        >>> p = Path(tempfile.mkdtemp()) / "path.json"
        >>> _ = p.write_text(json.dumps({"quick": True, "threads": 1, "loadavg_start": [3.0, 2.0, 1.0],
        ...     "ratios": {"sweep_vs_forward": {"ratio": 1.03, "goal": 0.9, "met": True, "note": "fp32"}}}))
        >>> "| sweep_vs_forward | 1.03 | ≥ 0.9 | met | fp32 |" in path_benchmark_fragment(p)
        True
    """
    if not path.is_file():
        return "*No whole-path benchmark yet (`rft bench`).*\n\n"
    data = json.loads(path.read_text())
    rows = []
    for name, r in data.get("ratios", {}).items():
        met = {True: "met", False: "**not met**", None: "not measured"}[r.get("met")]
        ratio = "—" if r.get("ratio") is None else f"{r['ratio']:.2f}"
        rows.append(f"| {name} | {ratio} | ≥ {r.get('goal', float('nan')):g} | {met} | {r.get('note', '')} |")
    load = data.get("loadavg_start", [float("nan")])[0]
    return (f"The whole path (`rft bench{'' if data.get('quick') else ' --full'}`, "
            + ("quick mode, " if data.get("quick") else "") + f"{data.get('threads', '?')} thread(s), "
            + _load_words(load, data.get("cpu_count")) + f", {data.get('created', '')[:10]}):\n\n"
            "| ratio | value | goal | status | note |\n|---|---|---|---|---|\n" + "\n".join(rows) + "\n\n")


def job_benchmark_fragment(path: Path) -> str:
    """The default job quiet and beside one CPU-bound process (``rftlib.book.jobbench``): each step's
    seconds, the wall times, the loads, and the shared / quiet ratio against its goal.

    Example:
        >>> import json, tempfile
        >>> p = Path(tempfile.mkdtemp()) / "job.json"
        >>> c = lambda w, s, l: {"wall_s": w, "steps": {"a": s}, "load": {"start": l, "mean": l, "max": l},
        ...                      "results_equal_committed": {"all_equal": True, "tables": 3}}
        >>> _ = p.write_text(json.dumps({"layout": "--jobs 2 --threads 1", "cpu_count": 2,
        ...     "conditions": {"quiet": c(60.0, 50.0, 0.1), "shared": c(84.0, 70.0, 3.0)},
        ...     "shared_vs_quiet": {"ratio": 1.4, "goal_at_most": 1.5, "met": True}}))
        >>> text = job_benchmark_fragment(p)
        >>> "| a | 50.0 | 70.0 | 1.40 |" in text, "1.40× (goal: at most 1.5×, met)" in text
        (True, True)
    """
    if not path.is_file():
        return "*The default job has not been timed quiet against shared yet (`rft bench --job`).*\n\n"
    data = json.loads(path.read_text())
    cond = data.get("conditions", {})
    if not {"quiet", "shared"} <= set(cond):
        return f"*The default job's timing (`{path.name}`) lacks a condition: it has {sorted(cond)}.*\n\n"
    q, s = cond["quiet"], cond["shared"]
    rows = [f"| {n} | {q['steps'][n]:.1f} | {s['steps'][n]:.1f} | {s['steps'][n] / q['steps'][n]:.2f} |"
            for n in q["steps"] if n in s["steps"]]
    rows.append(f"| **wall time of the pipeline** | {q['wall_s']:.1f} | {s['wall_s']:.1f} | {s['wall_s'] / q['wall_s']:.2f} |")
    r = data.get("shared_vs_quiet", {})
    met = "met" if r.get("met") else "**not met**"
    same = all(c.get("results_equal_committed", {}).get("all_equal") for c in (q, s))
    loads = "; ".join(f"{k}" + (f" (started {c['started'][:16].replace('T', ' ')} UTC)" if c.get("started") else "")
                      + f": {c['load']['start']:.2f} at the start, mean {c['load']['mean']:.2f}, max {c['load']['max']:.2f}"
                      for k, c in (("quiet", q), ("shared", s)))
    return ("The default job measured by `rft bench --job` (a fresh clone of the commit "
            f"`{str(data.get('commit', ''))[:7]}` per condition, every step recomputed, `{data.get('layout', '')}` on "
            f"{data.get('cpu_count')} cores), quiet and beside one other "
            f"CPU-bound process (a Python busy loop). Shared / quiet wall time: {r.get('ratio', float('nan')):.2f}× "
            f"(goal: at most {r.get('goal_at_most', float('nan')):g}×, {met}). 1-minute load averages, sampled every "
            f"15 s (the pipeline's own two kernels make about 2): {loads}. "
            + ("Every result table of both runs equals the committed one (timing columns aside)."
               if same else "**Some result tables differ from the committed ones** (see the JSON).")
            + "\n\n| step | quiet (s) | shared (s) | shared / quiet |\n|---|---|---|---|\n" + "\n".join(rows) + "\n\n")


def render_pages(results: str | os.PathLike = DEFAULT_RESULTS_ROOT, out: str | Path = GENERATED) -> list[Path]:
    """Write every fragment, rendered from the results root ``results`` (checked by
    :func:`results_folder`: inside the repository, existing); returns their paths.

    Raises:
        ParameterError: ``results`` outside the repository or missing.
    """
    root = results_folder(results)
    folder = repo_root() / out
    claims = read_claims(root, missing_ok=True)
    claims = None if claims is None or claims.empty else claims
    frags = {"claims_table.md": claims_fragment(claims, read_power(root)), "p1.md": p1_fragment(claims, root),
             "f1.md": sharpness_fragment(claims, "f1", root), "f2_f3.md": sharpness_fragment(claims, "f2", root),
             "f4.md": f4_fragment(claims, root), "worlds.md": worlds_fragment(root),
             "intro.md": intro_fragment(claims, root), "reproduce.md": reproduce_fragment(root)}
    paths = []
    for name, text in frags.items():
        p = folder / name
        atomic_write_text(p, text)
        paths.append(p)
    return paths


def toc_for(results: str | os.PathLike = DEFAULT_RESULTS_ROOT, out: str | Path = GENERATED) -> Path | None:
    """The table of contents of a book built from a results root: ``_toc.yml`` with every executed
    notebook under ``book/results/`` taken from ``results`` instead, the notebooks that root lacks left
    out, and a world's methods chapter left out with them when none of its notebooks is there (the
    default study has no ``digits`` world, the quick one no ``digits-clean``); written to
    ``<out>/_toc.yml`` for ``jupyter-book build --toc``. ``None`` when that is the hand-written
    ``_toc.yml`` unchanged.

    Example:
        >>> toc_for("book/results") is None  # the default root has every notebook _toc.yml names
        True
    """
    import yaml

    root = results_folder(results)
    base = repo_root()
    rel = root.relative_to(base).as_posix()
    original = yaml.safe_load((base / "_toc.yml").read_text())
    toc = copy.deepcopy(original)

    def keep(entry: dict) -> dict | None:
        f = entry.get("file", "")
        if f.startswith(DEFAULT_RESULTS_ROOT + "/"):
            f = rel + f[len(DEFAULT_RESULTS_ROOT):]
            if not (base / (f + ".ipynb")).is_file():
                return None
            entry = {**entry, "file": f}
        for key in ("sections", "chapters"):
            if key in entry:
                entry = {**entry, key: [e for e in (keep(x) for x in entry[key]) if e is not None]}
                if not entry[key]:
                    if key == "sections" and f.startswith("book/methods/"):
                        return None  # a world's chapter with none of its notebooks
                    del entry[key]
        return entry

    toc["parts"] = [keep(part) for part in toc.get("parts", [])]
    if toc == original:
        return None
    path = base / out / "_toc.yml"
    atomic_write_text(path, "# Generated by rft book --results " + rel + " from _toc.yml; do not edit.\n"
                      + yaml.safe_dump(toc, sort_keys=False))
    return path

