"""Tests of the claim verdicts (rftlib.core.verdicts) and of step-owned claim files (rftlib.book.claims)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest

from rftlib.book import claims
from rftlib.book.claims import ClaimsFileError
from rftlib.core import verdicts
from rftlib.core.verdicts import Claim
from rftlib.errors import ParameterError

V = verdicts.verdict_from_interval


@pytest.mark.parametrize(
    "lo, hi, p, expect, verdict",
    [
        (0.1, 0.5, 0.01, "positive", "supported"),
        (0.1, 0.5, None, "positive", "supported"),
        (-0.1, 0.5, 0.30, "positive", "not supported"),
        (-0.5, -0.1, 0.01, "positive", "not supported"),   # significant, wrong sign
        (0.1, 0.5, 0.20, "positive", "mixed"),             # interval and test disagree
        (-0.1, 0.5, 0.01, "positive", "mixed"),
        (-0.5, -0.1, 0.01, "negative", "supported"),
        (0.1, 0.5, 0.01, "negative", "not supported"),
        (-0.5, -0.1, 0.01, "any", "supported"),
        (0.1, 0.5, 0.01, "any", "supported"),
        (-0.1, 0.1, 0.60, "any", "not supported"),
        (-0.1, 0.1, 0.60, "none", "supported"),           # F1: no reliable association
        (-0.1, 0.1, None, "none", "supported"),
        (0.2, 0.6, 0.001, "none", "not supported"),
        (0.2, 0.6, None, "none", "not supported"),
        (0.2, 0.6, 0.30, "none", "mixed"),
        (0.0, 0.6, 0.30, "positive", "not supported"),     # touching 0 is not excluding it
        (0.1, 0.5, float("nan"), "positive", "supported"),  # NaN p-value = no p-value
    ],
)
def test_verdict_from_interval_rule(lo, hi, p, expect, verdict):
    assert V(lo, hi, p, expect=expect) == verdict


def test_verdict_alpha_threshold():
    assert V(0.1, 0.5, 0.03, alpha=0.05) == "supported"
    assert V(0.1, 0.5, 0.03, alpha=0.01) == "mixed"


@pytest.mark.parametrize(
    "args, kw, msg",
    [
        ((0.5, 0.1, 0.01), {}, "above ci_high"),
        ((0.1, 0.5, 1.5), {}, r"\[0, 1\]"),
        ((0.1, 0.5, 0.01), {"expect": "up"}, "expect="),
        ((0.1, 0.5, 0.01), {"alpha": 5}, "alpha="),
        ((float("nan"), 0.5, 0.01), {}, "ci_low"),
    ],
)
def test_verdict_rejects_bad_arguments(args, kw, msg):
    with pytest.raises(ParameterError, match=msg):
        V(*args, **kw)


@pytest.mark.parametrize(
    "taus, lo, hi, p, expect, verdict",
    [
        # F2/F3-type: significant and consistent in sign
        ([0.6, 0.7, 0.5], 0.5, 0.7, 0.001, "any", "supported"),
        ([-0.6, -0.7, -0.5], -0.7, -0.5, 0.001, "any", "supported"),
        ([0.6, -0.7, 0.5], 0.1, 0.5, 0.01, "any", "mixed"),         # significant, inconsistent
        ([0.2, 0.1, 0.3], -0.1, 0.4, 0.3, "any", "mixed"),           # consistent, not significant
        ([0.2, -0.1, 0.3], -0.1, 0.4, 0.3, "any", "not supported"),  # neither
        ([0.6, 0.7, 0.5], 0.5, 0.7, 0.001, "negative", "not supported"),  # significant, wrong sign
        # F1-type: "sharpness does not predict OOD"
        ([0.6, -0.7, 0.5], 0.1, 0.5, 0.01, "none", "supported"),     # sign inconsistent
        ([0.2, 0.1, 0.3], -0.1, 0.4, 0.3, "none", "supported"),      # CI includes 0
        ([0.6, 0.7, 0.5], 0.5, 0.7, 0.001, "none", "not supported"),  # significant and consistent
        ([0.6, 0.7, 0.5], 0.5, 0.7, 0.3, "none", "mixed"),           # CI/p disagree, consistent
    ],
)
def test_verdict_from_runs_rule(taus, lo, hi, p, expect, verdict):
    assert verdicts.verdict_from_runs(taus, lo, hi, p, expect=expect) == verdict


def test_min_consistency_relaxes_the_sign_rule():
    taus = [0.6, 0.7, 0.5, -0.1]
    assert verdicts.verdict_from_runs(taus, 0.3, 0.7, 0.001, expect="positive") == "mixed"
    assert verdicts.verdict_from_runs(taus, 0.3, 0.7, 0.001, expect="positive", min_consistency=0.75) == "supported"
    with pytest.raises(ParameterError, match="no run"):
        verdicts.verdict_from_runs([np.nan], 0.3, 0.7, 0.001)


def test_verdict_from_combined_uses_stouffer_and_counts():
    from rftlib.core.stats import combine_within

    comb = combine_within([0.6, 0.7, 0.8], [0.01, 0.005, 0.001], n_boot=200)
    assert verdicts.verdict_from_combined(comb, expect="any") == "supported"
    assert verdicts.verdict_from_combined(comb, expect="none") == "not supported"
    with pytest.raises(ParameterError, match="combine_within"):
        verdicts.verdict_from_combined({"ci_low": 0.1})


def test_combine_verdicts():
    assert verdicts.combine_verdicts(["not supported"] * 3) == "not supported"
    assert verdicts.combine_verdicts(["supported", "mixed"]) == "mixed"
    with pytest.raises(ParameterError):
        verdicts.combine_verdicts([])
    with pytest.raises(ParameterError, match="unknown verdict"):
        verdicts.combine_verdicts(["yes"])


def _c(claim="F1", world="w", value=0.1, verdict="supported", lo=-0.2, hi=0.3, p=0.5, stat="mean tau"):
    return Claim(claim, world, stat, value, lo, hi, p, verdict)


@pytest.mark.parametrize(
    "kw, msg",
    [
        ({"claim": "F5"}, "claim="),
        ({"verdict": "yes"}, "verdict="),
        ({"world": ""}, "world="),
        ({"stat": "a\nb"}, "statistic="),
        ({"value": float("nan")}, "value="),
        ({"lo": 0.5, "hi": 0.1}, "above"),
        ({"p": 2.0}, "p_value"),
    ],
)
def test_claim_validation(kw, msg):
    with pytest.raises(ParameterError, match=msg):
        _c(**kw)


def test_claim_allows_missing_interval_and_p():
    c = _c(lo=float("nan"), hi=float("nan"), p=float("nan"))
    assert math.isnan(c.ci_low) and list(c.to_row()) == list(claims.COLUMNS)


def test_write_claims_creates_the_step_file_with_exact_columns(tmp_path):
    path = claims.write_claims(tmp_path / "w-sharpness", _c())
    assert path == tmp_path / "w-sharpness" / "claims.csv"
    assert path.read_text().splitlines()[0] == "claim,world,statistic,value,ci_low,ci_high,p_value,verdict"


def test_read_claims_concatenates_every_step_folder(tmp_path):
    claims.write_claims(tmp_path / "a-sharpness", [_c("F1", "a"), _c("F2", "a", verdict="mixed")])
    claims.write_claims(tmp_path / "b-sharpness", _c("F1", "b", verdict="not supported"))
    claims.write_claims(tmp_path / "a-interpolate", _c("P1", "a"))
    (tmp_path / "no-claims").mkdir()
    out = claims.read_claims(tmp_path)
    assert out[["claim", "world", "verdict"]].values.tolist() == [
        ["F1", "a", "supported"], ["F1", "b", "not supported"], ["F2", "a", "mixed"], ["P1", "a", "supported"]]


def test_a_key_written_by_two_steps_is_an_error_naming_both(tmp_path):
    claims.write_claims(tmp_path / "one", _c("F1", "a"))
    claims.write_claims(tmp_path / "two", _c("F1", "a"))
    with pytest.raises(ClaimsFileError, match=r"several steps: \['one', 'two'\]"):
        claims.read_claims(tmp_path)


def test_write_claims_bytes_do_not_depend_on_row_order(tmp_path):
    rows = [_c("P1", "b"), _c("F1", "b"), _c("F1", "a"), _c("F4", "a", lo=float("nan"), hi=float("nan"))]
    a = claims.write_claims(tmp_path / "a", rows)
    b = claims.write_claims(tmp_path / "b", rows[::-1])
    assert a.read_bytes() == b.read_bytes()
    assert [line.split(",")[0] for line in a.read_text().splitlines()[1:]] == ["F1", "F1", "F4", "P1"]


def test_write_claims_rejects_duplicates_and_bad_rows(tmp_path):
    with pytest.raises(ParameterError, match="more than once"):
        claims.write_claims(tmp_path, [_c(), _c()])
    with pytest.raises(ParameterError, match="exactly the columns"):
        claims.write_claims(tmp_path, {"claim": "F1"})
    assert not (tmp_path / "claims.csv").exists()


def test_read_claims_refuses_a_foreign_file(tmp_path):
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "claims.csv").write_text("claim,world,verdict\nF1,w,supported\n")
    with pytest.raises(ClaimsFileError, match="exactly"):
        claims.read_claims(tmp_path)


def test_read_claims_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="write_claims"):
        claims.read_claims(tmp_path / "claims.csv")
    assert claims.read_claims(tmp_path, missing_ok=True).empty


def test_claims_table_markdown():
    df = pd.DataFrame([
        _c("F2", "w|2", value=0.41, lo=0.1, hi=0.6, p=0.004, stat="mean tau | straggler").to_row(),
        _c("F1", "w", lo=float("nan"), hi=float("nan"), p=float("nan")).to_row(),
    ])
    lines = claims.claims_table_markdown(df).splitlines()
    assert lines[0] == "| paper claim | our statistic | value | interval | verdict | world |"
    assert lines[2].startswith("| **F1** Whole-model sharpness is not a reliable predictor")
    assert "| 0.1 | — | supported | w |" in lines[2]
    assert "| mean tau \\| straggler | 0.41 (p = 0.004) | [0.1, 0.6] | supported | w\\|2 |" in lines[3]
    assert len(claims.claims_table_markdown(df.iloc[:0]).splitlines()) == 2
    with pytest.raises(ParameterError, match="lacks"):
        claims.claims_table_markdown(df.drop(columns="verdict"))


def test_claim_texts_cover_all_ids():
    assert verdicts.CLAIM_IDS == ("F1", "F2", "F3", "F4", "P1")
    assert all(verdicts.CLAIM_TEXTS[c] for c in verdicts.CLAIM_IDS)


def test_relative_claims_path_is_taken_from_the_repo_root(tmp_path, monkeypatch):
    (tmp_path / "pyproject.toml").touch()  # a checkout: RFT_REPO_ROOT must name one
    monkeypatch.setenv("RFT_REPO_ROOT", str(tmp_path))
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    claims.write_claims("book/results/w-sharpness", _c())
    assert (tmp_path / "book" / "results" / "w-sharpness" / "claims.csv").is_file()
    assert len(claims.read_claims()) == 1
