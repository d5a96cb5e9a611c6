"""Tests of rftlib.book.results (result folders) and rftlib.book.figures (the shared plots)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from matplotlib.figure import Figure
from PIL import Image

from rftlib.book import figures, results
from rftlib.errors import ParameterError


def _table() -> pd.DataFrame:
    return pd.DataFrame({
        "seed": [0, 0],
        "accuracy": [0.5, 1 / 3],
        "split": ["id", "sketch"],
        "alpha": [0.0, 0.1],
        "run": ["lr1e-5", "lr1e-5"],
        "world": ["mini", "mini"],
        "adaptive": [True, False],
    })


def test_results_dir_and_name_validation(tmp_path):
    assert results.results_dir("curves", root=tmp_path) == tmp_path / "curves"
    for bad in ("", "..", ".hidden", "a b", "x/.."):
        with pytest.raises(ParameterError, match="step="):
            results.results_dir(bad, root=tmp_path)
    with pytest.raises(ParameterError, match="name="):
        results.write_table("curves", "../x", _table(), root=tmp_path)


def test_write_table_orders_shared_columns_first_and_formats_floats(tmp_path):
    p = results.write_table("curves", "acc", _table(), root=tmp_path)
    assert p == tmp_path / "curves" / "acc.csv"
    lines = p.read_text().splitlines()
    assert lines[0] == "world,run,alpha,split,accuracy,adaptive,seed"
    assert lines[2] == "mini,lr1e-5,0.1,sketch,0.333333,False,0"


def test_write_table_is_byte_identical_for_equal_input(tmp_path):
    a = results.write_table("s", "t", _table(), root=tmp_path / "a").read_bytes()
    b = results.write_table("s", "t", _table().copy(), root=tmp_path / "b").read_bytes()
    assert a == b
    # a float differing below the 6th significant digit gives the same bytes too
    t = _table()
    t.loc[1, "accuracy"] += 1e-12
    assert results.write_table("s", "t", t, root=tmp_path / "c").read_bytes() == a


def test_read_table_round_trip_and_listing(tmp_path):
    results.write_table("curves", "acc.csv", _table(), root=tmp_path)
    back = results.read_table("curves", "acc", root=tmp_path)
    assert list(back.columns) == ["world", "run", "alpha", "split", "accuracy", "adaptive", "seed"]
    assert back["accuracy"].tolist() == [0.5, 0.333333]
    assert results.list_tables("curves", root=tmp_path) == ["acc"]


def test_read_table_missing_names_the_step(tmp_path):
    with pytest.raises(results.MissingResultError, match="run step 'sharpness' first") as e:
        results.read_table("sharpness", "whole", root=tmp_path)
    assert isinstance(e.value, FileNotFoundError)
    results.write_table("sharpness", "layers", _table(), root=tmp_path)
    with pytest.raises(results.MissingResultError, match="It has written: layers"):
        results.read_table("sharpness", "whole", root=tmp_path)


def test_write_table_rejects_non_frames_and_duplicate_columns(tmp_path):
    with pytest.raises(ParameterError, match="DataFrame"):
        results.write_table("s", "t", {"a": [1]}, root=tmp_path)
    with pytest.raises(ParameterError, match="duplicated"):
        results.write_table("s", "t", pd.DataFrame([[1, 2]], columns=["a", "a"]), root=tmp_path)


def _line_figure() -> Figure:
    fig = Figure(figsize=(3, 2))
    ax = fig.subplots()
    ax.plot([0, 0.5, 1], [0.2, 0.7, 0.4], "-o")
    ax.set_title("α path")
    return fig


def test_save_figure_bytes_are_reproducible_and_metadata_free(tmp_path):
    a = results.save_figure(_line_figure(), "fig", "line", root=tmp_path / "a").read_bytes()
    b = results.save_figure(_line_figure(), "fig", "line.png", root=tmp_path / "b").read_bytes()
    assert a == b
    assert b"Software" not in a and b"matplotlib" not in a.lower()
    with Image.open(tmp_path / "a" / "fig" / "line.png") as im:
        assert im.format == "PNG"
        assert tuple(round(d) for d in im.info["dpi"]) == (150, 150)


def test_save_figure_rejects_non_figures(tmp_path):
    with pytest.raises(ParameterError, match="Figure"):
        results.save_figure("not a figure", "fig", "x", root=tmp_path)


# ---------------------------------------------------------------------------------------------
# figures
# ---------------------------------------------------------------------------------------------

def _curves() -> pd.DataFrame:
    rows = []
    for run, shape in [("hump", lambda a: 0.5 + 0.2 * np.sin(np.pi * a)), ("down", lambda a: 0.5 - 0.2 * a)]:
        for a in np.linspace(0, 1, 5):
            rows.append({"world": "w", "run": run, "alpha": a, "split": "id", "accuracy": 0.5 + 0.4 * a})
            rows.append({"world": "w", "run": run, "alpha": a, "split": "ood_mean", "accuracy": shape(a)})
    return pd.DataFrame(rows)


def test_plots_return_figures_and_save_reproducibly(tmp_path):
    figures.set_style()
    df = _curves()
    heat = pd.DataFrame([{"layer": f"block.{i}", "alpha": a, "value": i * a} for i in range(12) for a in (0, .5, 1)])
    made = {
        "curves": lambda: figures.plot_alpha_curves(df),
        "plane": lambda: figures.plot_id_ood_plane(df),
        "corr": lambda: figures.plot_correlation(df, "alpha", "accuracy", hue="run", n_boot=50),
        "heat": lambda: figures.plot_heatmap(heat),
    }
    for name, make in made.items():
        fig = make()
        assert isinstance(fig, Figure)
        first = results.save_figure(fig, "f", name, root=tmp_path / "1").read_bytes()
        again = results.save_figure(make(), "f", name, root=tmp_path / "2").read_bytes()
        assert first == again, name


def test_alpha_curves_panels_and_heatmap_layer_order():
    fig = figures.plot_alpha_curves(_curves())
    assert [ax.get_title() for ax in fig.axes] == ["hump", "down"]
    heat = pd.DataFrame([{"layer": f"block.{i}", "alpha": a, "value": 1.0} for i in (0, 2, 10) for a in (0, 1)])
    labels = [t.get_text() for t in figures.plot_heatmap(heat).axes[0].get_yticklabels()]
    assert labels == ["block.0", "block.2", "block.10"]


def test_id_ood_plane_marks_endpoints_and_checks_splits():
    ax = figures.plot_id_ood_plane(_curves()).axes[0]
    stars = [ln for ln in ax.lines if ln.get_marker() == "*"]
    assert len(stars) == 2 and stars[0].get_xdata()[0] == pytest.approx(0.5)
    with pytest.raises(ParameterError, match="split 'ood'"):
        figures.plot_id_ood_plane(_curves(), ood_split="ood")


def test_correlation_annotation_uses_given_result():
    df = pd.DataFrame({"s": [1.0, 2.0, 3.0], "acc": [3.0, 2.0, 1.0]})
    res = {"kendall_tau": -0.5, "kendall_ci_low": -0.9, "kendall_ci_high": 0.1, "kendall_p": 0.3, "n": 3}
    title = figures.plot_correlation(df, "s", "acc", result=res).axes[0].get_title(loc="left")
    assert title == "τ = -0.50 [-0.90, 0.10], p = 0.3, n = 3"


def test_plot_input_errors():
    with pytest.raises(ParameterError, match="lacks column"):
        figures.plot_alpha_curves(_curves(), metric="loss")
    with pytest.raises(ParameterError, match="empty"):
        figures.plot_heatmap(pd.DataFrame(columns=["layer", "alpha", "value"]))


def test_step_may_be_a_folder_and_relative_roots_use_the_repo_root(tmp_path, monkeypatch):
    out = tmp_path / "results" / "curves"
    p = results.write_table(out, "acc", _table())
    assert p == out / "acc.csv"
    assert results.read_table(str(out), "acc").shape == (2, 7)
    with pytest.raises(results.MissingResultError, match="run step 'curves' first"):
        results.read_table(out, "nope")
    (tmp_path / "pyproject.toml").touch()  # a checkout: RFT_REPO_ROOT must name one
    monkeypatch.setenv("RFT_REPO_ROOT", str(tmp_path))
    monkeypatch.chdir(tmp_path / "results")
    assert results.results_dir("curves") == tmp_path / "book" / "results" / "curves"
    assert results.results_dir("book/results/curves") == tmp_path / "book" / "results" / "curves"
