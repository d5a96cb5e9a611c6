"""One look for every figure of the book, and the few plots the notebooks share.

Call :func:`set_style` once at the top of a notebook. The helpers build figures with
``matplotlib.figure.Figure`` directly (no pyplot state, no GUI backend: they work headless and never
leak open figures) and return the Figure; save it with :func:`rftlib.book.results.save_figure`.

Plots (all take tidy tables, ``results.md`` columns):

- :func:`plot_alpha_curves`: a metric against α, one line per split, one panel per run;
- :func:`plot_id_ood_plane`: the WiSE-FT plane, ID accuracy (x) against OOD accuracy (y), each run's
  α path from the zero-shot point (α = 0, star) to its fine-tuned point (α = 1, square);
- :func:`plot_correlation`: scatter with a least-squares line and the Kendall τ annotation;
- :func:`plot_heatmap`: a layer × α heatmap of one value.

Example:
    >>> set_style()
    >>> df = pd.DataFrame({"run": "r", "alpha": [0, .5, 1] * 2, "split": ["id"] * 3 + ["ood"] * 3,
    ...                    "accuracy": [.5, .8, .9, .5, .6, .4]})
    >>> fig = plot_alpha_curves(df)
    >>> [ax.get_title() for ax in fig.axes]
    ['r']
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure

from rftlib.errors import ParameterError
from rftlib.core.stats import correlate

__all__ = ["FIGSIZE", "PALETTE", "set_style", "plot_alpha_curves", "plot_id_ood_plane", "plot_correlation", "plot_heatmap"]

#: Figure sizes in inches: one panel, a wide row of panels, a square.
FIGSIZE: dict[str, tuple[float, float]] = {"single": (5.0, 3.5), "wide": (10.0, 3.5), "square": (4.5, 4.5)}
#: Qualitative palette (colour-blind safe) for runs and splits.
PALETTE = "colorblind"
#: Sequential colour map for heatmaps; diverging for signed values.
CMAP, CMAP_DIVERGING = "viridis", "vlag"


def set_style(context: str = "notebook", font_scale: float = 0.9) -> None:
    """Apply the book's style (seaborn theme, palette, fonts, sizes) to matplotlib's rcParams.

    Example:
        >>> import matplotlib
        >>> set_style()
        >>> tuple(matplotlib.rcParams["figure.figsize"]) == FIGSIZE["single"]
        True
    """
    sns.set_theme(
        context=context, style="whitegrid", palette=PALETTE, font="DejaVu Sans", font_scale=font_scale,
        rc={
            "figure.figsize": FIGSIZE["single"],
            "figure.dpi": 100,
            "savefig.dpi": 150,
            "axes.titlesize": "medium",
            "axes.titleweight": "bold",
            "axes.spines.top": False,
            "axes.spines.right": False,
            "legend.frameon": False,
            "lines.linewidth": 1.8,
            "lines.markersize": 5,
            "image.cmap": CMAP,
            "svg.hashsalt": "rftlib",
        },
    )


def _need(df: Any, cols: Sequence[str], what: str = "df") -> None:
    if not isinstance(df, pd.DataFrame):
        raise ParameterError(f"{what} must be a pandas DataFrame; got {type(df).__name__}.")
    missing = [c for c in cols if c is not None and c not in df.columns]
    if missing:
        raise ParameterError(f"{what} lacks column(s) {missing}; it has {list(df.columns)}.")
    if df.empty:
        raise ParameterError(f"{what} is empty; nothing to plot.")


def _order(values: pd.Series) -> list:
    """Distinct values in order of first appearance (keeps 'block.2' before 'block.10')."""
    return list(dict.fromkeys(values.tolist()))


def plot_alpha_curves(df: pd.DataFrame, metric: str = "accuracy", hue: str = "split", panel: str | None = "run",
                      max_cols: int = 4) -> Figure:
    """``metric`` against α, one line per ``hue`` value, one panel per ``panel`` value (shared y).

    Example:
        >>> df = pd.DataFrame({"run": ["a"] * 4 + ["b"] * 4, "alpha": [0, 1] * 4,
        ...                    "split": (["id"] * 2 + ["ood"] * 2) * 2, "accuracy": np.linspace(0.2, 0.9, 8)})
        >>> len(plot_alpha_curves(df).axes)
        2
    """
    _need(df, ["alpha", metric, hue, panel])
    panels = _order(df[panel]) if panel else [None]
    ncols = min(len(panels), max_cols)
    nrows = int(np.ceil(len(panels) / ncols))
    w, h = FIGSIZE["single"]
    fig = Figure(figsize=(min(w * ncols, 14.0), h * nrows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols, sharex=True, sharey=True, squeeze=False)).ravel()
    hue_order = _order(df[hue])
    for i, (ax, p) in enumerate(zip(axes, panels)):
        sub = df if p is None else df[df[panel] == p]
        sns.lineplot(data=sub, x="alpha", y=metric, hue=hue, hue_order=hue_order, marker="o", ax=ax,
                     legend=(i == 0), errorbar=None)
        ax.set_title("" if p is None else str(p))
        ax.set_xlabel("α (0 = zero-shot, 1 = fine-tuned)")
        ax.set_ylabel(metric)
        ax.set_xlim(-0.02, 1.02)
    for ax in axes[len(panels):]:
        ax.set_visible(False)
        fig.delaxes(ax)
    return fig


def plot_id_ood_plane(df: pd.DataFrame, id_split: str = "id", ood_split: str = "ood_mean", run: str = "run") -> Figure:
    """The WiSE-FT plane: ID accuracy (x) against OOD accuracy (y), one α path per run.

    ``df`` is a curve table holding the ``id_split`` rows and the ``ood_split`` rows (e.g. the
    ``ood_mean`` rows of :func:`rftlib.core.curves.ood_mean` concatenated to it). α = 0 is marked with a
    star, α = 1 with a square; the dotted lines mark the zero-shot point.

    Example:
        >>> df = pd.DataFrame({"run": "r", "alpha": [0, .5, 1] * 2, "split": ["id"] * 3 + ["ood_mean"] * 3,
        ...                    "accuracy": [.5, .8, .9, .5, .6, .4]})
        >>> ax = plot_id_ood_plane(df).axes[0]
        >>> ax.get_xlabel(), len(ax.lines) >= 1
        ('ID accuracy', True)
    """
    _need(df, ["alpha", "split", "accuracy", run])
    for s in (id_split, ood_split):
        if s not in set(df["split"]):
            raise ParameterError(f"split {s!r} is not in the table (splits: {_order(df['split'])}).")
    idx = [run, "alpha"]
    wide = (df[df["split"].isin([id_split, ood_split])]
            .pivot_table(index=idx, columns="split", values="accuracy", aggfunc="mean", sort=False)
            .reset_index().sort_values([run, "alpha"], kind="stable"))
    fig = Figure(figsize=FIGSIZE["square"], layout="constrained")
    ax = fig.subplots()
    runs = _order(df[run])
    colors = dict(zip(runs, sns.color_palette(PALETTE, len(runs))))
    for r in runs:
        sub = wide[wide[run] == r].dropna(subset=[id_split, ood_split])
        if sub.empty:
            continue
        x, y, a = sub[id_split].to_numpy(), sub[ood_split].to_numpy(), sub["alpha"].to_numpy()
        ax.plot(x, y, "-o", color=colors[r], label=str(r), markersize=3.5)
        for target, marker in ((0.0, "*"), (1.0, "s")):
            k = np.flatnonzero(np.isclose(a, target))
            if k.size:
                ax.plot(x[k], y[k], marker, color=colors[r], markersize=11 if marker == "*" else 7,
                        markeredgecolor="black", markeredgewidth=0.6)
    zs = wide[np.isclose(wide["alpha"], 0.0)]
    if len(zs):
        ax.axvline(zs[id_split].mean(), color="grey", ls=":", lw=1)
        ax.axhline(zs[ood_split].mean(), color="grey", ls=":", lw=1)
    ax.set_xlabel("ID accuracy")
    ax.set_ylabel(f"OOD accuracy ({ood_split})")
    ax.legend(title=f"{run} (★ α=0, ■ α=1)", fontsize="small")
    return fig


def plot_correlation(df: pd.DataFrame, x: str, y: str, hue: str | None = None,
                     result: Mapping[str, Any] | None = None, n_boot: int = 1000, seed: int = 0,
                     xlabel: str | None = None, ylabel: str | None = None) -> Figure:
    """Scatter of ``y`` against ``x`` with a least-squares line and a Kendall τ-b annotation (as title).

    ``result`` is a :func:`rftlib.core.stats.correlate` dict to annotate; when None it is computed here with
    ``n_boot`` and ``seed``. The annotation reads ``τ = … [lo, hi], p = …, n = …``.

    Example:
        >>> df = pd.DataFrame({"s": [1, 2, 3, 4], "acc": [.9, .8, .6, .5], "run": list("aabb")})
        >>> fig = plot_correlation(df, "s", "acc", hue="run", n_boot=50)
        >>> fig.axes[0].get_title(loc="left").startswith("τ = -1")
        True
    """
    _need(df, [x, y, hue])
    if result is None:
        result = correlate(df[x].to_numpy(), df[y].to_numpy(), n_boot=n_boot, seed=seed)
    fig = Figure(figsize=FIGSIZE["single"], layout="constrained")
    ax = fig.subplots()
    sns.regplot(data=df, x=x, y=y, ax=ax, scatter=False, ci=None, color="0.35", line_kws={"lw": 1.2, "ls": "--"})
    sns.scatterplot(data=df, x=x, y=y, hue=hue, hue_order=_order(df[hue]) if hue else None, ax=ax,
                    palette=PALETTE if hue else None, s=36, legend=bool(hue))
    tau, lo, hi, p = (result.get(k, np.nan) for k in ("kendall_tau", "kendall_ci_low", "kendall_ci_high", "kendall_p"))
    text = f"τ = {tau:.2f}"
    if np.isfinite(lo) and np.isfinite(hi):
        text += f" [{lo:.2f}, {hi:.2f}]"
    if np.isfinite(p):
        text += f", p = {p:.2g}"
    text += f", n = {result.get('n', len(df))}"
    ax.set_title(text, loc="left", fontsize="small", fontweight="normal")
    ax.set_xlabel(xlabel or x)
    ax.set_ylabel(ylabel or y)
    return fig


def plot_heatmap(df: pd.DataFrame, value: str = "value", row: str = "layer", col: str = "alpha",
                 center: float | None = None, annot: bool = False, fmt: str = ".2f",
                 cbar_label: str | None = None, panel: str | None = None) -> Figure:
    """Heatmap of ``value`` with ``row`` (layers, in order of first appearance) against ``col`` (α).

    Duplicate (row, col) cells are averaged. ``center`` switches to the diverging map centred there.

    Example:
        >>> df = pd.DataFrame({"layer": ["b.0", "b.0", "b.1", "b.1"], "alpha": [0, 1, 0, 1],
        ...                    "value": [0.1, 0.2, 0.3, 0.4]})
        >>> ax = plot_heatmap(df).axes[0]
        >>> [t.get_text() for t in ax.get_yticklabels()]
        ['b.0', 'b.1']
    """
    _need(df, [row, col, value] + ([panel] if panel else []))
    rows, cols = _order(df[row]), sorted(_order(df[col]))
    panels = _order(df[panel]) if panel else [None]
    h = max(2.5, 0.3 * len(rows) + 1.2)
    w = max(FIGSIZE["single"][0], 0.5 * len(cols) + 2.0)
    fig = Figure(figsize=(min(w * len(panels), 15.0), h), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(panels), squeeze=False)).ravel()
    for ax, p in zip(axes, panels):
        sub = df if p is None else df[df[panel] == p]
        grid = sub.pivot_table(index=row, columns=col, values=value, aggfunc="mean").reindex(index=rows, columns=cols)
        sns.heatmap(grid, ax=ax, cmap=CMAP_DIVERGING if center is not None else CMAP, center=center,
                    annot=annot, fmt=fmt, cbar_kws={"label": cbar_label or value},
                    xticklabels=[f"{c:g}" if isinstance(c, (int, float, np.number)) else str(c) for c in cols],
                    yticklabels=[str(r) for r in rows])
        ax.set_xlabel(col)
        ax.set_ylabel(row)
        ax.set_title("" if p is None else str(p))
    return fig


def plot_pretraining(history: pd.DataFrame) -> Figure:
    """Contrastive loss and zero-shot accuracy (ID, mean OOD, unseen) per pretraining epoch.

    Example:
        >>> h = pd.DataFrame({"epoch": [1, 2], "loss": [3.0, 2.5], "zs_id": [.3, .5],
        ...                   "zs_ood_mean": [.2, .3], "zs_unseen_mean": [.2, .25]})
        >>> len(plot_pretraining(h).axes)
        2
    """
    _need(history, ["epoch", "loss", "zs_id", "zs_ood_mean", "zs_unseen_mean"])
    w, h = FIGSIZE["wide"]
    fig = Figure(figsize=(w, h), layout="constrained")
    ax1, ax2 = fig.subplots(1, 2)
    sns.lineplot(data=history, x="epoch", y="loss", marker="o", ax=ax1)
    ax1.set_title("contrastive loss")
    long = history.melt(id_vars="epoch", value_vars=["zs_id", "zs_ood_mean", "zs_unseen_mean"],
                        var_name="split", value_name="zero-shot accuracy")
    long["split"] = long["split"].map({"zs_id": "ID", "zs_ood_mean": "mean OOD", "zs_unseen_mean": "unseen styles"})
    sns.lineplot(data=long, x="epoch", y="zero-shot accuracy", hue="split", marker="o", ax=ax2)
    ax2.set_title("zero-shot accuracy")
    return fig


def plot_split_bars(df: pd.DataFrame, ood_splits: Sequence[str], unseen: Sequence[str] = (),
                    value: str = "accuracy") -> Figure:
    """Accuracy per split as bars, coloured by kind (ID, OOD seen in pretraining, unseen).

    Example:
        >>> df = pd.DataFrame({"split": ["id", "a", "b"], "accuracy": [.8, .5, .4]})
        >>> len(plot_split_bars(df, ["a"], ["b"]).axes)
        1
    """
    _need(df, ["split", value])
    kind = {s: "OOD" for s in ood_splits} | {s: "unseen" for s in unseen} | {"id": "ID"}
    d = df.assign(kind=df["split"].map(kind).fillna("other"))
    fig = Figure(figsize=FIGSIZE["wide"], layout="constrained")
    ax = fig.subplots()
    sns.barplot(data=d, x="split", y=value, hue="kind", dodge=False, ax=ax)
    ax.set_ylim(0, 1)
    ax.tick_params(axis="x", rotation=30)
    ax.set_xlabel("")
    return fig


def plot_layer_bars(df: pd.DataFrame, measures: Sequence[str], layer: str = "layer", hue: str = "run") -> Figure:
    """One bar panel per measure (e.g. barrier, OOD drop): layers on x, one bar per ``hue``.

    Example:
        >>> df = pd.DataFrame({"layer": ["a", "b"] * 2, "run": ["r1"] * 2 + ["r2"] * 2,
        ...                    "barrier": [.1, .2, .3, .1], "ood_drop": [0, .1, .2, .0]})
        >>> len(plot_layer_bars(df, ["barrier", "ood_drop"]).axes)
        2
    """
    _need(df, [layer, hue, *measures])
    w, h = FIGSIZE["wide"]
    fig = Figure(figsize=(w, h), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(measures), squeeze=False)).ravel()
    for i, (ax, m) in enumerate(zip(axes, measures)):
        sns.barplot(data=df, x=layer, y=m, hue=hue, order=_order(df[layer]), ax=ax, legend=(i == 0), errorbar=None)
        ax.tick_params(axis="x", rotation=30)
        ax.set_xlabel("")
        ax.set_title(m.replace("_", " "))
    return fig


def plot_sparsity_curves(rows: pd.DataFrame, ood_splits: Sequence[str], run: str = "run") -> Figure:
    """Mean OOD accuracy along α for each intervention × target × p (one panel per run); the
    unmodified path is drawn in black.

    Example:
        >>> r = pd.DataFrame({"run": "a", "intervention": ["none"] * 2 + ["mask_both"] * 2,
        ...     "target": ["none"] * 2 + ["stragglers"] * 2, "p": [0, 0, .5, .5], "alpha": [0, 1] * 2,
        ...     "split": "o", "accuracy": [.5, .4, .5, .45]})
        >>> len(plot_sparsity_curves(r, ["o"]).axes)
        1
    """
    _need(rows, [run, "intervention", "target", "p", "alpha", "split", "accuracy"])
    d = rows[rows["split"].isin(list(ood_splits))]
    d = d.groupby([run, "intervention", "target", "p", "alpha"], as_index=False)["accuracy"].mean()
    d["path"] = np.where(d["intervention"] == "none", "unmodified",
                         d["intervention"] + " · " + d["target"] + " · p=" + d["p"].map("{:g}".format))
    runs = _order(d[run])
    w, h = FIGSIZE["single"]
    fig = Figure(figsize=(min(w * len(runs) + 2.5, 15.0), h + 0.5), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(runs), sharey=True, squeeze=False)).ravel()
    for i, (ax, r) in enumerate(zip(axes, runs)):
        sub = d[d[run] == r]
        other = sub[sub["path"] != "unmodified"]
        sns.lineplot(data=other, x="alpha", y="accuracy", hue="path", style="target", ax=ax, legend=(i == len(runs) - 1),
                     errorbar=None, alpha=0.8)
        base = sub[sub["path"] == "unmodified"].sort_values("alpha")
        ax.plot(base["alpha"], base["accuracy"], color="black", lw=2.5, marker="o", label="unmodified")
        ax.set_title(str(r))
        ax.set_xlabel("α")
        ax.set_ylabel("mean OOD accuracy")
    if len(runs):
        handles, labels = axes[len(runs) - 1].get_legend_handles_labels()
        if axes[len(runs) - 1].get_legend() is not None:
            axes[len(runs) - 1].get_legend().remove()
        fig.legend(handles, labels, loc="outside right upper", fontsize="x-small")
    return fig


def plot_sharpness_vs_alpha(df: pd.DataFrame) -> Figure:
    """Whole-model sharpness against α per run (one panel per ρ), beside mean OOD accuracy.

    Example:
        >>> df = pd.DataFrame({"run": "a", "alpha": [0, .5, 1], "rho": 0.1, "value": [.1, .3, .2],
        ...                    "ood_acc": [.5, .55, .4]})
        >>> len(plot_sharpness_vs_alpha(df).axes)
        2
    """
    _need(df, ["run", "alpha", "rho", "value", "ood_acc"])
    rhos = sorted(df["rho"].unique())
    w, h = FIGSIZE["single"]
    fig = Figure(figsize=(min(w * (len(rhos) + 1), 15.0), h), layout="constrained")
    axes = np.atleast_1d(fig.subplots(1, len(rhos) + 1, squeeze=False)).ravel()
    for i, (ax, rho) in enumerate(zip(axes, rhos)):
        sns.lineplot(data=df[df["rho"] == rho], x="alpha", y="value", hue="run", marker="o", ax=ax,
                     legend=False, errorbar=None)
        ax.set_title(f"sharpness, ρ = {rho:g}")
        ax.set_xlabel("α")
    acc = df.drop_duplicates(["run", "alpha"])
    sns.lineplot(data=acc, x="alpha", y="ood_acc", hue="run", marker="o", ax=axes[-1], errorbar=None)
    axes[-1].set_title("mean OOD accuracy")
    axes[-1].set_xlabel("α")
    axes[-1].legend(fontsize="x-small")
    return fig


def plot_layer_correlations(corr: pd.DataFrame, stragglers: set | Sequence[str] = ()) -> Figure:
    """Mean within-run Kendall τ(sharpness, OOD accuracy) per layer with its bootstrap interval;
    straggler layers (and the summed straggler sharpness) highlighted.

    Example:
        >>> c = pd.DataFrame({"layer": ["all", "b0", "b1"], "rho": .1, "mean": [.1, -.5, .3],
        ...                   "ci_low": [-.2, -.8, 0], "ci_high": [.4, -.2, .6]})
        >>> len(plot_layer_correlations(c, {"b0"}).axes)
        1
    """
    _need(corr, ["layer", "mean", "ci_low", "ci_high"])
    d = corr.reset_index(drop=True)
    marked = set(stragglers) | {"stragglers"}
    colours = ["tab:red" if l in marked else ("0.3" if l == "all" else "tab:blue") for l in d["layer"]]
    fig = Figure(figsize=(max(FIGSIZE["single"][0], 0.6 * len(d) + 1.5), FIGSIZE["single"][1]), layout="constrained")
    ax = fig.subplots()
    x = np.arange(len(d))
    ax.bar(x, d["mean"], color=colours)
    ax.errorbar(x, d["mean"], yerr=[d["mean"] - d["ci_low"], d["ci_high"] - d["mean"]], fmt="none", ecolor="black", capsize=3)
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(x, [("whole model" if l == "all" else str(l)) for l in d["layer"]], rotation=30)
    ax.set_ylabel("mean within-run Kendall τ")
    ax.set_title("sharpness vs OOD accuracy (red: straggler layers)")
    return fig
