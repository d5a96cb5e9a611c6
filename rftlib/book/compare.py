"""Compare two results roots table by table: every number equal within a tolerance.

Used to show that a change of the code (a re-tree, a speed lever) leaves the study's numbers as they
were: ``rft compare OLD_ROOT NEW_ROOT --tol 1e-6``. Every ``*.csv`` under either root is matched by
its path relative to the root; the claim rows are compared as one table (the concatenation of every
``claims.csv``, wherever a step wrote it), so a move of claim rows between files is no difference.
Columns that measure time (``seconds``, ``wall_s``, …) are skipped; other numeric columns must agree
to ``tol`` (absolute, or relative to the larger magnitude when that exceeds 1); text columns must be
equal.

Example:
    >>> import tempfile, pathlib
    >>> a, b = (pathlib.Path(tempfile.mkdtemp()) for _ in range(2))
    >>> for root, v in ((a, 0.5), (b, 0.5 + 1e-9)):
    ...     (root / "s").mkdir()
    ...     _ = (root / "s" / "t.csv").write_text(f"run,accuracy,seconds\\nr,{v},{v * 99}\\n")
    >>> [d.verdict for d in compare_roots(a, b)]
    ['equal']
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

#: columns that hold timings, load or provenance: not results.
SKIP = re.compile(r"(^|_)(seconds|secs|wall|time|timing|elapsed|duration|started|ended|threads|load)(_|$)|_s$")
CLAIMS = "<claims>"


@dataclass(frozen=True)
class TableDiff:
    """How one table of two roots compares: ``equal``, ``different``, or missing on one side."""

    table: str
    verdict: str
    max_abs_diff: float = 0.0
    detail: str = ""


def _tables(root: Path) -> dict[str, pd.DataFrame]:
    out: dict[str, pd.DataFrame] = {}
    claims = []
    for p in sorted(root.rglob("*.csv")):
        rel = p.relative_to(root).as_posix()
        if p.name == "claims.csv":
            claims.append(pd.read_csv(p, keep_default_na=False, na_values=["", "nan", "NaN"]))
        elif not rel.startswith(("pipeline/", "benchmarks/")):
            out[rel] = pd.read_csv(p, keep_default_na=False, na_values=["", "nan", "NaN"])
    if claims:
        c = pd.concat(claims, ignore_index=True)
        out[CLAIMS] = c.sort_values(["claim", "world"], kind="stable").reset_index(drop=True)
    return out


def _compare(name: str, a: pd.DataFrame, b: pd.DataFrame, tol: float) -> TableDiff:
    cols = [c for c in a.columns if not SKIP.search(str(c))]
    if sorted(cols) != sorted(c for c in b.columns if not SKIP.search(str(c))):
        return TableDiff(name, "different", math.inf, f"columns differ: {list(a.columns)} vs {list(b.columns)}")
    if len(a) != len(b):
        return TableDiff(name, "different", math.inf, f"{len(a)} vs {len(b)} rows")
    worst, where = 0.0, ""
    for c in cols:
        x, y = a[c], b[c]
        if pd.api.types.is_numeric_dtype(x) and pd.api.types.is_numeric_dtype(y):
            xv, yv = x.to_numpy(float), y.to_numpy(float)
            same_nan = np.isnan(xv) == np.isnan(yv)
            if not same_nan.all():
                return TableDiff(name, "different", math.inf, f"column {c!r}: NaN in one root only")
            d = np.abs(np.nan_to_num(xv) - np.nan_to_num(yv)) / np.maximum(1.0, np.abs(np.nan_to_num(xv)))
            if d.size and d.max() > worst:
                worst, where = float(d.max()), f"column {c!r}, row {int(d.argmax())}"
        elif not (x.astype(str).to_numpy() == y.astype(str).to_numpy()).all():
            i = int(np.argmax(x.astype(str).to_numpy() != y.astype(str).to_numpy()))
            return TableDiff(name, "different", math.inf, f"column {c!r}, row {i}: {x.iloc[i]!r} vs {y.iloc[i]!r}")
    return TableDiff(name, "equal" if worst <= tol else "different", worst, where if worst > tol else "")


def compare_roots(old: str | Path, new: str | Path, tol: float = 1e-6) -> list[TableDiff]:
    """Compare every result table of two roots (see the module docstring)."""
    ta, tb = _tables(Path(old)), _tables(Path(new))
    out = []
    for name in sorted(set(ta) | set(tb)):
        if name not in tb:
            out.append(TableDiff(name, "only in old"))
        elif name not in ta:
            out.append(TableDiff(name, "only in new"))
        else:
            out.append(_compare(name, ta[name], tb[name], tol))
    return out


def format_report(diffs: list[TableDiff], tol: float) -> str:
    """A plain-text report: one line per table, then the totals."""
    lines = [f"{d.verdict:11s} {d.max_abs_diff:9.2e}  {d.table}" + (f"  ({d.detail})" if d.detail else "")
             for d in diffs]
    n_eq = sum(d.verdict == "equal" for d in diffs)
    lines.append(f"{n_eq} of {len(diffs)} tables equal within {tol:g}; largest difference "
                 f"{max((d.max_abs_diff for d in diffs if d.verdict == 'equal'), default=0.0):.2e}")
    return "\n".join(lines)
