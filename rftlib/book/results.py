"""Result folders: where each step writes its tidy tables and figures, and how pages read them back.

Every executed step writes ``<root>/<step>/`` with tidy CSV tables and PNG figures (plus the
manifest, see :mod:`rftlib.files.manifest`). ``root`` defaults to ``book/results``; a relative ``root`` is
taken relative to the repository root (:func:`rftlib.files.manifest.repo_root`), so notebooks, book pages and
tests find the same folder whatever their working directory. ``step`` is either a step *name*
(``"sharpness"``: the folder ``<root>/sharpness``) or a step *folder* (a ``Path``, or a string holding
a ``/``, e.g. the ``out_dir`` parameter the runner gives a notebook: ``"book/results/sharpness"``).
Writes are atomic (:mod:`rftlib.files.io`) and byte-reproducible:

- tables: fixed float format (``%.6g``), ``\\n`` line ends, no index, and the shared columns of
  ``results.md`` first, in that order (:data:`SHARED_COLUMNS`), then the table's other columns in their
  own order. Rows keep the caller's order, so equal input gives equal bytes.
- figures: PNG at 150 dpi with no ``Software``/time metadata, so equal figures give equal bytes across
  runs and matplotlib versions that render identically.

Example:
    >>> import tempfile
    >>> root = tempfile.mkdtemp()
    >>> df = pd.DataFrame({"accuracy": [0.5, 2 / 3], "alpha": [0.0, 1.0], "run": "lr3e-5", "world": "w"})
    >>> p = write_table("curves", "acc", df, root=root)
    >>> print(p.read_text().strip())
    world,run,alpha,accuracy
    w,lr3e-5,0,0.5
    w,lr3e-5,1,0.666667
    >>> read_table("curves", "acc", root=root).shape
    (2, 4)
"""

from __future__ import annotations

import math
import numbers
import os
import re
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from rftlib.errors import NumericalError, ParameterError, RftError
from rftlib.files.io import atomic_path, atomic_write_csv
from rftlib.files.layout import RESULTS_ROOT
from rftlib.files.manifest import repo_path

if TYPE_CHECKING:  # pragma: no cover
    from matplotlib.figure import Figure

__all__ = [
    "DEFAULT_ROOT",
    "SHARED_COLUMNS",
    "MissingResultError",
    "results_dir",
    "step_name",
    "order_columns",
    "write_table",
    "read_table",
    "list_tables",
    "save_figure",
]

DEFAULT_ROOT = RESULTS_ROOT

#: The shared columns of every tidy table (``results.md``), in the order they are written.
SHARED_COLUMNS: tuple[str, ...] = (
    "world", "run", "alpha", "split", "accuracy", "loss", "layer", "kind", "norm", "adaptive", "rho", "value",
)

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")


class MissingResultError(RftError, FileNotFoundError):
    """A result file is missing: the step that writes it has not run (or ran elsewhere)."""


def _check_name(value: object, what: str) -> str:
    if not isinstance(value, str) or not _NAME.match(value) or value in (".", ".."):
        raise ParameterError(
            f"{what}={value!r} is not a valid name: use letters, digits, '_', '-', '.', starting with a "
            "letter or digit, no path separators."
        )
    return value


def _is_folder(step: object) -> bool:
    return isinstance(step, os.PathLike) or (isinstance(step, str) and ("/" in step or os.sep in step))


def step_name(step: str | os.PathLike) -> str:
    """The step's name: ``step`` itself, or the last component of a step folder.

    Example:
        >>> step_name("sharpness"), step_name("book/results/sharpness")
        ('sharpness', 'sharpness')
    """
    return _check_name(Path(step).name if _is_folder(step) else step, "step")


def results_dir(step: str | os.PathLike, root: str | os.PathLike = DEFAULT_ROOT) -> Path:
    """The absolute folder of one step's results (not created; writers create it).

    ``step`` is a step name (→ ``<root>/<step>``) or a step folder (a ``Path`` or a string with ``/``,
    used as is; relative paths are taken from the repository root, as is a relative ``root``).

    Example:
        >>> results_dir("sharpness").as_posix().endswith("/book/results/sharpness")
        True
        >>> results_dir("/tmp/run1/sharpness").as_posix()
        '/tmp/run1/sharpness'
        >>> results_dir("..")
        Traceback (most recent call last):
        ...
        rftlib.errors.ParameterError: step='..' is not a valid name: use letters, digits, '_', '-', '.', starting with a letter or digit, no path separators.
    """
    if _is_folder(step):
        step_name(step)
        return repo_path(step)
    return repo_path(root) / _check_name(step, "step")


def _table_path(step: str | os.PathLike, name: str, root: str | os.PathLike) -> Path:
    name = _check_name(name, "name")
    if not name.endswith(".csv"):
        name += ".csv"
    return results_dir(step, root) / name


def order_columns(df: pd.DataFrame) -> pd.DataFrame:
    """The table with the shared columns first (in :data:`SHARED_COLUMNS` order), then the others.

    Example:
        >>> list(order_columns(pd.DataFrame(columns=["seed", "value", "world", "layer"])).columns)
        ['world', 'layer', 'value', 'seed']
    """
    shared = [c for c in SHARED_COLUMNS if c in df.columns]
    return df[shared + [c for c in df.columns if c not in SHARED_COLUMNS]]


def write_table(step: str | os.PathLike, name: str, df: pd.DataFrame, root: str | os.PathLike = DEFAULT_ROOT,
                float_format: str = "%.6g") -> Path:
    """Write a tidy table atomically to ``<root>/<step>/<name>.csv``; return its path.

    Raises:
        ParameterError: bad ``step``/``name``, not a DataFrame, or duplicated column names.
        NumericalError: a measurement (:data:`FINITE_COLUMNS`) is NaN, infinite or missing; the
            message names the table, the column and the first offending row. Nothing is written.

    Example:
        >>> import tempfile
        >>> write_table("curves", "bad", pd.DataFrame({"alpha": [0.0, 1.0], "loss": [0.3, float("nan")]}),
        ...             root=tempfile.mkdtemp())
        Traceback (most recent call last):
        ...
        rftlib.errors.NumericalError: table 'bad' (step 'curves'): column 'loss' is nan in row 1 (alpha=1.0), 1 row(s) in all; no NaN/inf may reach a results table: find where it was computed.
    """
    if not isinstance(df, pd.DataFrame):
        raise ParameterError(f"df must be a pandas DataFrame; got {type(df).__name__}.")
    if df.columns.duplicated().any():
        raise ParameterError(f"df has duplicated column names {list(df.columns[df.columns.duplicated()])}.")
    path = _table_path(step, name, root)
    table = order_columns(df.reset_index(drop=True))
    _check_finite(table, name, step)
    atomic_write_csv(path, table, float_format=float_format)
    return path


#: Measurement columns that must be finite in every table (a cheap backstop: a NaN is a bug upstream).
#: ``value`` may be NaN in a table of statistics (with a ``statistic`` column, like ``claims.csv``),
#: where it marks a statistic that cannot be computed (e.g. a claim part untestable with too few runs).
FINITE_COLUMNS = ("accuracy", "loss", "value")


def _nonfinite_mask(col: pd.Series) -> np.ndarray:
    if pd.api.types.is_bool_dtype(col):
        return np.zeros(len(col), dtype=bool)
    if pd.api.types.is_numeric_dtype(col):
        return ~np.isfinite(col.to_numpy(dtype=float, na_value=np.nan))

    def bad(v: object) -> bool:
        if v is None or v is pd.NA or v is pd.NaT:
            return True
        return isinstance(v, numbers.Real) and not isinstance(v, bool) and not math.isfinite(float(v))

    return np.fromiter((bad(v) for v in col), dtype=bool, count=len(col))


def _plain(v: object) -> object:
    return v.item() if isinstance(v, np.generic) else v


def _check_finite(table: pd.DataFrame, name: str, step: str | os.PathLike) -> None:
    for c in FINITE_COLUMNS:
        if c not in table.columns or (c == "value" and "statistic" in table.columns):
            continue
        mask = _nonfinite_mask(table[c])
        if mask.any():
            i = int(np.flatnonzero(mask)[0])
            ident = ", ".join(f"{k}={_plain(table[k].iloc[i])!r}" for k in SHARED_COLUMNS
                              if k in table.columns and k not in FINITE_COLUMNS)
            raise NumericalError(
                f"table {name!r} (step {step_name(step)!r}): column {c!r} is {table[c].iloc[i]} in row {i}"
                + (f" ({ident})" if ident else "") + f", {int(mask.sum())} row(s) in all; no NaN/inf may reach "
                "a results table: find where it was computed.")


def list_tables(step: str | os.PathLike, root: str | os.PathLike = DEFAULT_ROOT) -> list[str]:
    """Names (without ``.csv``) of the tables a step has written; empty when it has not run.

    Example:
        >>> list_tables("no-such-step", root="/nonexistent")
        []
    """
    d = results_dir(step, root)
    return sorted(p.stem for p in d.glob("*.csv")) if d.is_dir() else []


def read_table(step: str | os.PathLike, name: str, root: str | os.PathLike = DEFAULT_ROOT) -> pd.DataFrame:
    """Read a table written by :func:`write_table`.

    Raises:
        MissingResultError: the file does not exist; the message names the step to run first.

    Example:
        >>> read_table("sharpness", "whole_model", root="/nonexistent")
        Traceback (most recent call last):
        ...
        rftlib.book.results.MissingResultError: /nonexistent/sharpness/whole_model.csv does not exist: run step 'sharpness' first (`rft pipeline`, or `rft run <its notebook> --step sharpness`). The step has written no tables yet.
    """
    path = _table_path(step, name, root)
    if not path.is_file():
        have = list_tables(step, root)
        has = f"It has written: {', '.join(have)}." if have else "The step has written no tables yet."
        st = step_name(step)
        raise MissingResultError(
            f"{path.as_posix()} does not exist: run step {st!r} first (`rft pipeline`, or "
            f"`rft run <its notebook> --step {st}`). {has}"
        )
    return pd.read_csv(path)


def save_figure(fig: "Figure", step: str | os.PathLike, name: str, root: str | os.PathLike = DEFAULT_ROOT,
                dpi: int = 150) -> Path:
    """Save a figure as ``<root>/<step>/<name>.png`` atomically, with reproducible bytes.

    PNG metadata is stripped of the ``Software`` entry (matplotlib writes no timestamp into PNGs);
    ``bbox_inches="tight"`` keeps labels inside. The figure stays open; close it when done.

    Example:
        >>> import tempfile
        >>> from matplotlib.figure import Figure
        >>> fig = Figure(figsize=(2, 2)); _ = fig.subplots().plot([0, 1], [1, 0])
        >>> root = tempfile.mkdtemp()
        >>> a = save_figure(fig, "demo", "line", root=root).read_bytes()
        >>> a[:8] == b"\\x89PNG\\r\\n\\x1a\\n", a == save_figure(fig, "demo", "line", root=root).read_bytes()
        (True, True)
    """
    if not hasattr(fig, "savefig"):
        raise ParameterError(f"fig must be a matplotlib Figure; got {type(fig).__name__}.")
    name = _check_name(name, "name")
    if name.endswith(".png"):
        name = name[:-4]
    path = results_dir(step, root) / f"{name}.png"
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi, bbox_inches="tight", metadata={"Software": None})
    return path
