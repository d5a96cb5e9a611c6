"""Claim verdicts: the decision rules and the :class:`Claim` row (pure: no files).

A claim row has exactly the columns :data:`COLUMNS` (``results.md``); each step writes its own rows
into its own results folder (:func:`rftlib.book.claims.write_claims`).

**Decision rules** (a verdict is never typed by hand; it comes from one of these):

:func:`verdict_from_interval` judges one statistic from its confidence interval [lo, hi] and, if
given, its p-value (significant: p < ``alpha``). "The interval excludes 0" means lo > 0 or hi < 0.

=============  ==========================================  ==============================  ===========
expect         supported                                   not supported                   mixed
=============  ==========================================  ==============================  ===========
``positive``   lo > 0 and p significant                    hi < 0, or interval contains 0  interval and
                                                           and p not significant           p disagree
``negative``   hi < 0 and p significant                    mirror of ``positive``          idem
``any``        interval excludes 0 and p significant       contains 0, p not significant   idem
``none``       interval contains 0 and p not significant   excludes 0 and p significant    idem
=============  ==========================================  ==============================  ===========

("Disagree": the interval excludes 0 on the expected side but p ≥ alpha, or the reverse. Without a
p-value only the interval decides.)

:func:`verdict_from_runs` (and :func:`verdict_from_combined` for a :func:`rftlib.core.stats.combine_within`
result) adds *consistency across runs*: the share of runs whose within-run coefficient has the
relevant sign must reach ``min_consistency`` (default 1.0: every run). The relevant sign is the
expected one (``positive``/``negative``), or for ``any``/``none`` the sign of the interval when it
excludes 0, else the majority sign.

- ``positive``/``negative``/``any`` (F2, F3: "layer-wise sharpness *tracks* OOD accuracy"):
  supported when the interval verdict is supported **and** the runs are consistent; not supported when
  the interval verdict is not supported **and** the runs are inconsistent; otherwise mixed.
- ``none`` (F1: "whole-model sharpness is *not* a reliable predictor"): supported when the interval
  verdict is supported (no significant association) **or** the sign is inconsistent across runs; not
  supported when the association is significant **and** consistent; mixed when interval and p-value
  disagree while the runs are consistent.

:func:`combine_verdicts` merges verdicts of parts of one claim (e.g. the parts of P1, or several
sharpness variants): untestable parts are left out; the rest all equal → that verdict, otherwise
mixed; no testable part → untestable.

``untestable`` (:func:`untestable`) is the verdict of a claim the world holds no data for (e.g. F4
without a run in the failure mode): the row's statistic says what is missing, its value is 0 and
its interval and p-value are NaN.

:func:`verdict_with_contrast` is F2's rule: the straggler layers must predict OOD accuracy (their
statistic's verdict, ``expect="any"``) **and** beat the whole model (the paired contrast
Δ = |T_strag| − |T_whole| has its interval above 0).

Example:
    >>> verdict_from_interval(0.12, 0.55, p_value=0.01, expect="positive")
    'supported'
    >>> verdict_from_interval(-0.2, 0.3, p_value=0.4, expect="none")
    'supported'
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any, Iterable, Literal, Mapping, Sequence

import numpy as np

from rftlib.errors import ParameterError

__all__ = [
    "COLUMNS",
    "POWER_COLUMNS",
    "CLAIM_IDS",
    "CLAIM_TEXTS",
    "VERDICTS",
    "Claim",
    "verdict_from_interval",
    "verdict_from_runs",
    "verdict_from_combined",
    "combine_verdicts",
    "verdict_with_contrast",
    "untestable",
]

#: The columns of ``claims.csv``, exactly and in this order (``results.md``).
COLUMNS: tuple[str, ...] = ("claim", "world", "statistic", "value", "ci_low", "ci_high", "p_value", "verdict")
#: The columns of ``power.csv``: the smallest detectable effect beside a verdict resting on an absence.
POWER_COLUMNS: tuple[str, ...] = ("claim", "world", "statistic", "mde", "n_runs")
VERDICTS: tuple[str, ...] = ("supported", "not supported", "mixed", "untestable")
#: Human-readable claim texts (``paper.md``); also their order in tables.
CLAIM_TEXTS: dict[str, str] = {
    "F1": "Whole-model sharpness is not a reliable predictor of the OOD accuracy of interpolated CLIP models",
    "F2": "The layer-wise sharpness of straggler layers reliably tracks the OOD accuracy of interpolated models",
    "F3": "Layer-wise sharpness correlates with OOD accuracy along robust fine-tuning (RFT) paths",
    "F4": "Inducing sparsity in straggler layers mitigates the failure mode of RFT",
    "P1": "RFT does not always beat the zero-shot model OOD; paths without a loss barrier give larger OOD "
          "gains; no data augmentation and smaller learning rates give lower OOD error",
}
CLAIM_IDS: tuple[str, ...] = tuple(CLAIM_TEXTS)

Expect = Literal["positive", "negative", "any", "none"]
_EXPECTS = ("positive", "negative", "any", "none")


# ----------------------------------------------------------------------------------------------
# decision rules
# ----------------------------------------------------------------------------------------------

def _num(v: Any, name: str, allow_nan: bool = False) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise ParameterError(f"{name}={v!r} is not a number.") from None
    if math.isinf(f) or (math.isnan(f) and not allow_nan):
        raise ParameterError(f"{name}={v!r} must be a finite number.")
    return f


def _check_rule_args(ci_low: Any, ci_high: Any, p_value: Any, expect: str, alpha: float) -> tuple[float, float, float | None]:
    if expect not in _EXPECTS:
        raise ParameterError(
            f"expect={expect!r} must be one of {list(_EXPECTS)} ('none' = the claim is that there is no "
            "reliable association, as F1)."
        )
    if not (isinstance(alpha, (int, float)) and 0.0 < float(alpha) < 1.0):
        raise ParameterError(f"alpha={alpha!r} must be a significance level strictly between 0 and 1.")
    lo, hi = _num(ci_low, "ci_low"), _num(ci_high, "ci_high")
    if lo > hi:
        raise ParameterError(f"ci_low={lo} is above ci_high={hi}; give the interval as (low, high).")
    p = None
    if p_value is not None and not (isinstance(p_value, float) and math.isnan(p_value)):
        p = _num(p_value, "p_value")
        if not 0.0 <= p <= 1.0:
            raise ParameterError(f"p_value={p} must lie in [0, 1].")
    return lo, hi, p


def verdict_from_interval(ci_low: float, ci_high: float, p_value: float | None = None,
                          expect: Expect = "positive", alpha: float = 0.05) -> str:
    """Verdict on one statistic from its confidence interval and optional p-value (rule: module doc).

    Args:
        ci_low, ci_high: the statistic's confidence interval (finite).
        p_value: its two-sided p-value, or None (NaN counts as None) to decide on the interval alone.
        expect: the claim's direction: ``"positive"``, ``"negative"``, ``"any"`` (a nonzero association
            of either sign) or ``"none"`` (no reliable association).
        alpha: significance level for ``p_value``.

    Example:
        >>> verdict_from_interval(0.1, 0.5, 0.01, expect="positive")
        'supported'
        >>> verdict_from_interval(-0.5, -0.1, 0.01, expect="positive")
        'not supported'
        >>> verdict_from_interval(0.1, 0.5, 0.20, expect="positive")   # interval and test disagree
        'mixed'
        >>> verdict_from_interval(-0.5, -0.1, 0.01, expect="any"), verdict_from_interval(-0.5, -0.1, 0.01, expect="none")
        ('supported', 'not supported')
    """
    lo, hi, p = _check_rule_args(ci_low, ci_high, p_value, expect, alpha)
    pos, neg = lo > 0.0, hi < 0.0
    sig = None if p is None else p < alpha
    if expect == "none":
        excludes = pos or neg
        if sig is None:
            return "not supported" if excludes else "supported"
        if excludes == sig:
            return "not supported" if excludes else "supported"
        return "mixed"
    if expect == "positive":
        right, wrong = pos, neg
    elif expect == "negative":
        right, wrong = neg, pos
    else:  # any
        right, wrong = pos or neg, False
    if wrong:
        return "not supported"
    if sig is None:
        return "supported" if right else "not supported"
    if right and sig:
        return "supported"
    if not right and not sig:
        return "not supported"
    return "mixed"


def _consistency_verdict(n_pos: int, n_neg: int, n_runs: int, ci_low: float, ci_high: float,
                         p_value: float | None, expect: str, alpha: float, min_consistency: float) -> str:
    base = verdict_from_interval(ci_low, ci_high, p_value, expect=expect, alpha=alpha)
    if not (0.0 < float(min_consistency) <= 1.0):
        raise ParameterError(f"min_consistency={min_consistency!r} must lie in (0, 1].")
    if n_runs < 1:
        raise ParameterError("no run with a finite coefficient; consistency across runs is undefined.")
    if expect == "positive":
        agree = n_pos
    elif expect == "negative":
        agree = n_neg
    elif ci_low > 0:
        agree = n_pos
    elif ci_high < 0:
        agree = n_neg
    else:
        agree = max(n_pos, n_neg)
    consistent = agree / n_runs >= min_consistency - 1e-12
    if expect == "none":
        if base == "supported" or not consistent:
            return "supported"
        return "not supported" if base == "not supported" else "mixed"
    if base == "supported" and consistent:
        return "supported"
    if base == "not supported" and not consistent:
        return "not supported"
    return "mixed"


def verdict_from_runs(coefficients: Sequence[float], ci_low: float, ci_high: float,
                      p_value: float | None = None, expect: Expect = "positive", alpha: float = 0.05,
                      min_consistency: float = 1.0) -> str:
    """Verdict from a combined statistic's interval *and* the per-run coefficients' sign consistency.

    ``coefficients`` are the within-run correlations of each run (NaN ones are ignored);
    ``ci_low``/``ci_high``/``p_value`` describe the combined statistic (e.g. mean τ over runs with its
    bootstrap interval and the Stouffer p-value). Rule: see the module docstring.

    Example:
        >>> verdict_from_runs([0.6, 0.7, 0.5], 0.5, 0.7, 0.001, expect="any")     # F2/F3-type
        'supported'
        >>> verdict_from_runs([0.6, -0.7, 0.5], 0.1, 0.5, 0.01, expect="any")     # significant, inconsistent
        'mixed'
        >>> verdict_from_runs([0.6, -0.7, 0.5], 0.1, 0.5, 0.01, expect="none")    # F1-type: signs disagree
        'supported'
        >>> verdict_from_runs([0.6, 0.7, 0.5], 0.5, 0.7, 0.001, expect="none")
        'not supported'
    """
    c = np.asarray(coefficients, dtype=np.float64).ravel()
    c = c[np.isfinite(c)]
    lo, hi, p = _check_rule_args(ci_low, ci_high, p_value, expect, alpha)
    return _consistency_verdict(int((c > 0).sum()), int((c < 0).sum()), int(c.size), lo, hi, p,
                                expect, alpha, min_consistency)


def verdict_from_combined(combined: Mapping[str, Any], expect: Expect = "positive", alpha: float = 0.05,
                          min_consistency: float = 1.0, p_key: str = "stouffer_p") -> str:
    """:func:`verdict_from_runs` on a :func:`rftlib.core.stats.combine_within` result.

    Uses its ``ci_low``/``ci_high`` (bootstrap over runs of the mean coefficient), ``p_key``
    (default the Stouffer p-value) and ``n_pos``/``n_neg``/``n_runs_used`` for consistency.

    Example:
        >>> verdict_from_combined({"ci_low": 0.2, "ci_high": 0.6, "stouffer_p": 0.001, "n_pos": 3,
        ...                        "n_neg": 0, "n_runs_used": 3}, expect="any")
        'supported'
    """
    missing = [k for k in ("ci_low", "ci_high", "n_pos", "n_neg", "n_runs_used") if k not in combined]
    if missing:
        raise ParameterError(f"combined lacks {missing}; pass the dict returned by rftlib.core.stats.combine_within.")
    lo, hi, p = _check_rule_args(combined["ci_low"], combined["ci_high"], combined.get(p_key), expect, alpha)
    return _consistency_verdict(int(combined["n_pos"]), int(combined["n_neg"]), int(combined["n_runs_used"]),
                                lo, hi, p, expect, alpha, min_consistency)


def combine_verdicts(verdicts: Iterable[str]) -> str:
    """Merge verdicts of parts of one claim: untestable parts are left out; the testable ones all
    equal → that verdict, else ``"mixed"``; ``"untestable"`` when no part is testable.

    Example:
        >>> combine_verdicts(["supported", "supported"]), combine_verdicts(["supported", "not supported"])
        ('supported', 'mixed')
        >>> combine_verdicts(["supported", "untestable"]), combine_verdicts(["untestable"])
        ('supported', 'untestable')
    """
    vs = list(verdicts)
    if not vs:
        raise ParameterError("verdicts is empty; give at least one.")
    bad = [v for v in vs if v not in VERDICTS]
    if bad:
        raise ParameterError(f"unknown verdict(s) {bad}; allowed: {list(VERDICTS)}.")
    vs = [v for v in vs if v != "untestable"]
    if not vs:
        return "untestable"
    return vs[0] if all(v == vs[0] for v in vs) else "mixed"


def verdict_with_contrast(verdict: str, contrast_low: float, contrast_high: float) -> str:
    """F2's rule: a predictor's verdict (``expect="any"``) combined with its paired contrast Δ to a rival.

    Supported only when ``verdict`` is supported and Δ's interval lies above 0; not supported when
    ``verdict`` is not supported or Δ's interval lies below 0; mixed otherwise (also when Δ has no
    interval, NaN).

    Example:
        >>> verdict_with_contrast("supported", 0.05, 0.4), verdict_with_contrast("supported", -0.1, 0.3)
        ('supported', 'mixed')
        >>> verdict_with_contrast("mixed", -0.5, -0.1)
        'not supported'
    """
    if verdict not in VERDICTS:
        raise ParameterError(f"verdict={verdict!r} must be one of {list(VERDICTS)}.")
    if verdict == "untestable":
        return verdict
    lo, hi = _num(contrast_low, "contrast_low", allow_nan=True), _num(contrast_high, "contrast_high", allow_nan=True)
    if verdict == "not supported" or hi < 0:
        return "not supported"
    if verdict == "supported" and lo > 0:
        return "supported"
    return "mixed"


def untestable(claim: str, world: str, why: str) -> "Claim":
    """The row of a claim the world cannot test: verdict ``untestable``, ``why`` in the statistic.

    Example:
        >>> untestable("F4", "w", "no run in the failure mode").to_row()["verdict"]
        'untestable'
    """
    return Claim(claim, world, f"untestable: {why}", 0.0, math.nan, math.nan, math.nan, "untestable")


# ----------------------------------------------------------------------------------------------
# rows
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Claim:
    """One row of ``claims.csv``: a claim's statistic and verdict on one world.

    ``value`` must be finite; ``ci_low``, ``ci_high`` and ``p_value`` may be NaN when a statistic has
    none (e.g. a count). ``statistic`` says in words what ``value`` is.

    Example:
        >>> c = Claim("F1", "mini-fashion", "mean within-run Kendall tau (whole-model S_avg, OOD acc)",
        ...           0.05, -0.3, 0.4, 0.6, "supported")
        >>> c.to_row()["verdict"]
        'supported'
        >>> Claim("F9", "w", "s", 0.0, 0.0, 0.0, 1.0, "supported")
        Traceback (most recent call last):
        ...
        rftlib.errors.ParameterError: claim='F9' is not one of ['F1', 'F2', 'F3', 'F4', 'P1'] (see paper.md).
    """

    claim: str
    world: str
    statistic: str
    value: float
    ci_low: float
    ci_high: float
    p_value: float
    verdict: str

    def __post_init__(self) -> None:
        if self.claim not in CLAIM_IDS:
            raise ParameterError(f"claim={self.claim!r} is not one of {list(CLAIM_IDS)} (see paper.md).")
        for name in ("world", "statistic"):
            v = getattr(self, name)
            if not isinstance(v, str) or not v.strip() or "\n" in v:
                raise ParameterError(f"{name}={v!r} must be a non-empty one-line string.")
        if self.verdict not in VERDICTS:
            raise ParameterError(f"verdict={self.verdict!r} must be one of {list(VERDICTS)}.")
        object.__setattr__(self, "value", _num(self.value, "value"))
        for name in ("ci_low", "ci_high", "p_value"):
            object.__setattr__(self, name, _num(getattr(self, name), name, allow_nan=True))
        if not (math.isnan(self.ci_low) or math.isnan(self.ci_high)) and self.ci_low > self.ci_high:
            raise ParameterError(f"ci_low={self.ci_low} is above ci_high={self.ci_high}.")
        if not math.isnan(self.p_value) and not 0.0 <= self.p_value <= 1.0:
            raise ParameterError(f"p_value={self.p_value} must lie in [0, 1] (or be NaN).")

    def to_row(self) -> dict[str, Any]:
        """The row as a dict with keys :data:`COLUMNS`."""
        return asdict(self)

    @classmethod
    def from_combined(cls, claim: str, world: str, combined: Mapping[str, Any], statistic: str,
                      expect: Expect = "any", alpha: float = 0.05, min_consistency: float = 1.0,
                      p_key: str = "stouffer_p") -> "Claim":
        """A row from a :func:`rftlib.core.stats.combine_within` result, judged by :func:`verdict_from_combined`.

        Example:
            >>> c = {"mean": 0.1, "ci_low": -0.4, "ci_high": 0.5, "stouffer_p": 0.5, "n_pos": 2,
            ...      "n_neg": 1, "n_runs_used": 3}
            >>> Claim.from_combined("F1", "w", c, "mean within-run tau", expect="none").verdict
            'supported'
        """
        v = verdict_from_combined(combined, expect=expect, alpha=alpha, min_consistency=min_consistency,
                                  p_key=p_key)
        return cls(claim, world, statistic, combined["mean"], combined["ci_low"], combined["ci_high"],
                   combined.get(p_key, float("nan")), v)
