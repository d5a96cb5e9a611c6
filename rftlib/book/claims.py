"""Claim rows on disk: the evidence step (:mod:`rftlib.steps.evidence`, one per world) writes each
world's ``claims.csv`` and ``power.csv`` into its own results folder; the book's claims table
concatenates them (:func:`read_claims` over a results root), and a (claim, world) key written twice
is an error. No shared mutable file, no lock.

The decision rules and the :class:`~rftlib.core.verdicts.Claim` row live in
:mod:`rftlib.core.verdicts`.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import pandas as pd

from rftlib.core.verdicts import CLAIM_IDS, CLAIM_TEXTS, COLUMNS, POWER_COLUMNS, VERDICTS, Claim
from rftlib.errors import ParameterError, RftError
from rftlib.files.io import atomic_write_csv
from rftlib.files.layout import RESULTS_ROOT



def _claims_path(path: str | os.PathLike) -> Path:
    from rftlib.files.manifest import repo_path  # lazy: keeps this module light

    return repo_path(path)


class ClaimsFileError(RftError):
    """``claims.csv`` exists but is not a valid claims table (wrong columns or values)."""


def _to_frame(rows: Claim | Mapping[str, Any] | pd.DataFrame | Iterable[Claim | Mapping[str, Any]]) -> pd.DataFrame:
    if isinstance(rows, pd.DataFrame):
        items: list[Any] = rows.to_dict("records")
    elif isinstance(rows, (Claim, Mapping)):
        items = [rows]
    else:
        items = list(rows)
    claims = []
    for it in items:
        if isinstance(it, Claim):
            claims.append(it)
        elif isinstance(it, Mapping):
            extra = sorted(set(it) - set(COLUMNS))
            missing = [c for c in COLUMNS if c not in it]
            if extra or missing:
                raise ParameterError(f"claim row must have exactly the columns {list(COLUMNS)}; missing {missing}, extra {extra}.")
            claims.append(Claim(**{c: it[c] for c in COLUMNS}))
        else:
            raise ParameterError(f"claim rows must be Claim objects or mappings; got {type(it).__name__}.")
    return pd.DataFrame([c.to_row() for c in claims], columns=list(COLUMNS))


def _sorted(df: pd.DataFrame) -> pd.DataFrame:
    order = {c: i for i, c in enumerate(CLAIM_IDS)}
    df = df.assign(_o=df["claim"].map(order)).sort_values(["_o", "world"], kind="stable")
    return df.drop(columns="_o").reset_index(drop=True)


# ----------------------------------------------------------------------------------------------
# each step's own file, and the book's concatenation
# ----------------------------------------------------------------------------------------------

def _read_one(p: Path) -> pd.DataFrame:
    df = pd.read_csv(p, keep_default_na=False, na_values=["", "nan", "NaN"],
                     dtype={"claim": str, "world": str, "statistic": str, "verdict": str})
    if tuple(df.columns) != COLUMNS:
        raise ClaimsFileError(f"{p} has columns {list(df.columns)}; claims.csv must have exactly {list(COLUMNS)}.")
    try:
        return _to_frame(df)
    except ParameterError as e:
        raise ClaimsFileError(f"{p} has an invalid row: {e}") from None


def read_claims(path: str | os.PathLike = RESULTS_ROOT, missing_ok: bool = False) -> pd.DataFrame:
    """Read and validate claim rows: one ``claims.csv``, or every ``<step>/claims.csv`` under a results root.

    Returns an empty table with :data:`COLUMNS` when nothing is found and ``missing_ok``.

    Raises:
        FileNotFoundError: no claims file (unless ``missing_ok``).
        ClaimsFileError: wrong columns, unknown claim ids or verdicts, a (claim, world) key written by
            two steps.

    Example:
        >>> read_claims("/nonexistent/claims.csv", missing_ok=True).columns.tolist()
        ['claim', 'world', 'statistic', 'value', 'ci_low', 'ci_high', 'p_value', 'verdict']
    """
    p = _claims_path(path)
    files = sorted(p.glob("*/claims.csv")) if p.is_dir() else ([p] if p.is_file() else [])
    if not files:
        if missing_ok:
            return pd.DataFrame({c: pd.Series(dtype=float if c in ("value", "ci_low", "ci_high", "p_value") else object)
                                 for c in COLUMNS})
        raise FileNotFoundError(
            f"{p.as_posix()} holds no claims.csv: run the evidence step of each world first (rft pipeline "
            "notebooks/params/default.yaml --only <world>-evidence; it writes the rows into its own results "
            "folder with rftlib.book.claims.write_claims)."
        )
    parts = [(f, _read_one(f)) for f in files]
    checked = pd.concat([d for _, d in parts], ignore_index=True)
    dup = checked.duplicated(["claim", "world"])
    if dup.any():
        r = checked[dup].iloc[0]
        owners = [f.parent.name for f, d in parts if ((d["claim"] == r["claim"]) & (d["world"] == r["world"])).any()]
        raise ClaimsFileError(f"claim={r['claim']!r}, world={r['world']!r} is written by several steps: {owners}.")
    return _sorted(checked)


def write_claims(out_dir: str | os.PathLike,
                 rows: Claim | Mapping[str, Any] | pd.DataFrame | Iterable[Claim | Mapping[str, Any]]) -> Path:
    """Write a step's claim rows to ``<out_dir>/claims.csv`` (atomically; sorted by claim, then world).

    Example:
        >>> import tempfile
        >>> d = tempfile.mkdtemp()
        >>> _ = write_claims(d, [Claim("F2", "w", "tau", 0.5, 0.2, 0.7, 0.01, "supported"),
        ...                      Claim("F1", "w", "tau", 0.1, -0.2, 0.3, 0.5, "supported")])
        >>> read_claims(Path(d) / "claims.csv")["claim"].tolist()
        ['F1', 'F2']
    """
    new = _to_frame(rows)
    dup = new.duplicated(["claim", "world"])
    if dup.any():
        r = new[dup].iloc[0]
        raise ParameterError(f"rows contain (claim={r['claim']!r}, world={r['world']!r}) more than once.")
    path = _claims_path(out_dir) / "claims.csv"
    atomic_write_csv(path, _sorted(new)[list(COLUMNS)], float_format="%.6g")
    return path


# ----------------------------------------------------------------------------------------------
# the book's table
# ----------------------------------------------------------------------------------------------

def _check_claims_frame(df: Any) -> None:
    if not isinstance(df, pd.DataFrame):
        raise ParameterError(f"df must be a pandas DataFrame (e.g. read_claims()); got {type(df).__name__}.")
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise ParameterError(f"df lacks claims columns {missing}; it has {list(df.columns)}.")


def _fmt(v: Any, digits: int = 3) -> str:
    try:
        f = float(v)
    except (TypeError, ValueError):
        return "—"
    if math.isnan(f):
        return "—"
    return f"{f:.{digits}g}"


def _cell(text: Any) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def claims_table_markdown(df: pd.DataFrame, claim_texts: Mapping[str, str] = CLAIM_TEXTS, digits: int = 3) -> str:
    """Render the claims table as Markdown: paper claim | our statistic | value | interval | verdict | world.

    ``value`` shows the p-value beside it when there is one; the interval is ``[low, high]`` or ``—``.
    Rows are ordered by claim (F1…P1), then world.

    Example:
        >>> df = pd.DataFrame([Claim("F1", "mini", "mean tau", 0.05, -0.3, 0.4, 0.61, "supported").to_row()])
        >>> print(claims_table_markdown(df))
        | paper claim | our statistic | value | interval | verdict | world |
        |---|---|---|---|---|---|
        | **F1** Whole-model sharpness is not a reliable predictor of the OOD accuracy of interpolated CLIP models | mean tau | 0.05 (p = 0.61) | [-0.3, 0.4] | supported | mini |
    """
    _check_claims_frame(df)
    lines = ["| paper claim | our statistic | value | interval | verdict | world |", "|---|---|---|---|---|---|"]
    if len(df):
        df = _sorted(df.copy())
    for r in df.itertuples(index=False):
        text = claim_texts.get(r.claim, "")
        claim = f"**{r.claim}** {text}".strip()
        value = _fmt(r.value, digits)
        if _fmt(r.p_value) != "—":
            value += f" (p = {_fmt(r.p_value, 2)})"
        lo, hi = _fmt(r.ci_low, digits), _fmt(r.ci_high, digits)
        interval = "—" if lo == "—" or hi == "—" else f"[{lo}, {hi}]"
        lines.append("| " + " | ".join(_cell(c) for c in (claim, r.statistic, value, interval, r.verdict, r.world)) + " |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# the claims matrix (claims × worlds) and the power table
# ----------------------------------------------------------------------------------------------

def read_power(path: str | os.PathLike = RESULTS_ROOT) -> pd.DataFrame:
    """Every ``<step>/power.csv`` under a results root, concatenated (empty table when there is none).

    Example:
        >>> read_power("/nonexistent").columns.tolist()
        ['claim', 'world', 'statistic', 'mde', 'n_runs']
    """
    p = _claims_path(path)
    files = sorted(p.glob("*/power.csv")) if p.is_dir() else ([p] if p.is_file() else [])
    parts = [pd.read_csv(f) for f in files]
    parts = [d for d in parts if len(d)]
    for f, d in zip(files, parts):
        missing = [c for c in POWER_COLUMNS if c not in d.columns]
        if missing:
            raise ClaimsFileError(f"{f} lacks columns {missing}; power.csv must have {list(POWER_COLUMNS)}.")
    if not parts:
        return pd.DataFrame(columns=list(POWER_COLUMNS))
    return pd.concat([d[list(POWER_COLUMNS)] for d in parts], ignore_index=True)


def _esc(text: Any) -> str:
    import html

    return html.escape(str(text), quote=True)


def verdict_class(verdict: str) -> str:
    """The CSS class of a verdict cell: ``verdict-supported``, ``verdict-not-supported``, ... .

    Example:
        >>> verdict_class("not supported"), verdict_class("untestable")
        ('verdict-not-supported', 'verdict-untestable')
    """
    if verdict not in VERDICTS:
        raise ParameterError(f"verdict={verdict!r} must be one of {list(VERDICTS)}.")
    return "verdict-" + verdict.replace(" ", "-")


def _mde_text(mde: float, digits: int = 2) -> str:
    """The detectable-effect statement of one power row (NaN: the design detects no effect of any size)."""
    return ("no effect detectable with these runs" if math.isnan(mde)
            else f"smallest effect detectable at 80 % power: {_fmt(mde, digits)}")


def _matrix_cell(r: Any, mdes: Sequence[tuple[str, float]], digits: int) -> str:
    parts = [f'<span class="rft-verdict">{_esc(r.verdict)}</span>']
    if r.verdict == "untestable":
        parts.append(f'<span class="rft-stat">{_esc(str(r.statistic).removeprefix("untestable: "))}</span>')
    else:
        lo, hi = _fmt(r.ci_low, digits), _fmt(r.ci_high, digits)
        val = f"{_fmt(r.value, digits)}" + ("" if lo == "—" else f" [{lo}, {hi}]")
        if _fmt(r.p_value) != "—":
            val += f", p = {_fmt(r.p_value, 2)}"
        parts.append(f'<span class="rft-stat">{_esc(r.statistic)}</span>')
        parts.append(f'<span class="rft-value">{_esc(val)}</span>')
    for statistic, mde in mdes:  # one per statistic resting on an absence (P1: per part)
        label = f" ({statistic})" if len(mdes) > 1 or r.verdict == "mixed" else ""  # a part's, not the verdict's
        parts.append(f'<span class="rft-mde">{_esc(_mde_text(mde) + label)}</span>')
    return f'<td class="verdict {verdict_class(r.verdict)}">' + "<br>".join(parts) + "</td>"


def claims_matrix_html(df: pd.DataFrame, worlds: Sequence[str] | None = None, power: pd.DataFrame | None = None,
                       claim_texts: Mapping[str, str] = CLAIM_TEXTS, digits: int = 3) -> str:
    """The claims matrix as HTML: one row per claim, one column per world.

    Each cell holds the verdict (its CSS class from :func:`verdict_class`), the statistic, its value
    with interval and p-value, and, for every row ``power`` has for that claim and world (a verdict,
    or for P1 a part, resting on the absence of an effect), the smallest effect detectable at 80 %
    power (labelled with its statistic when the cell has several, or when it is a part's beside a
    *mixed* verdict). A claim not
    measured on a world gets an empty ``verdict-none`` cell. The table has id ``claims-table`` and
    class ``rft-claims``.

    Example:
        >>> df = pd.DataFrame([Claim("F1", "a", "tau", 0.05, -0.3, 0.4, 0.61, "supported").to_row(),
        ...                    Claim("F4", "a", "untestable: no failure", 0, float("nan"), float("nan"),
        ...                          float("nan"), "untestable").to_row()])
        >>> html = claims_matrix_html(df, ["a", "b"])
        >>> html.count("<tr class=\\"claim-row\\""), html.count("verdict-untestable"), html.count("verdict-none")
        (2, 1, 2)
    """
    _check_claims_frame(df)
    worlds = list(worlds) if worlds is not None else list(dict.fromkeys(df["world"]))
    mdes: dict[tuple[str, str], list[tuple[str, float]]] = {}
    for r in ([] if power is None else power.itertuples()):
        mdes.setdefault((r.claim, r.world), []).append((str(r.statistic), float(r.mde)))
    claims = [c for c in CLAIM_IDS if (df["claim"] == c).any()]
    head = "<tr><th>paper claim</th>" + "".join(f"<th>{_esc(w)}</th>" for w in worlds) + "</tr>"
    rows = []
    for c in claims:
        cells = [f'<th class="claim"><strong>{_esc(c)}</strong> {_esc(claim_texts.get(c, ""))}</th>']
        for w in worlds:
            sub = df[(df["claim"] == c) & (df["world"] == w)]
            cells.append('<td class="verdict verdict-none">not measured</td>' if sub.empty else
                         _matrix_cell(sub.iloc[0], mdes.get((c, w), []), digits))
        rows.append(f'<tr class="claim-row" data-claim="{_esc(c)}">' + "".join(cells) + "</tr>")
    return (f'<table id="claims-table" class="rft-claims rft-matrix">\n<thead>{head}</thead>\n<tbody>\n'
            + "\n".join(rows) + "\n</tbody>\n</table>")
