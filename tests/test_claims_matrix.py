"""The claims matrix (rftlib.book.claims.claims_matrix_html, rftlib.book.pages.claims_fragment) and the
introduction's generated conclusion: fast tests on the generated HTML."""

import math
import re
from html.parser import HTMLParser

import pandas as pd
import pytest

from rftlib.book import pages
from rftlib.book.claims import claims_matrix_html, read_claims, read_power, verdict_class
from rftlib.core.verdicts import CLAIM_IDS, Claim, untestable
from rftlib.errors import ParameterError

NAN = math.nan


class _Cells(HTMLParser):
    """Rows of the table body: (data-claim, [classes of each td])."""

    def __init__(self):
        super().__init__()
        self.rows, self.in_body = [], False

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if tag == "tbody":
            self.in_body = True
        elif tag == "tr" and self.in_body:
            self.rows.append((a.get("data-claim"), []))
        elif tag == "td" and self.in_body:
            self.rows[-1][1].append(a.get("class", ""))


def _claims():
    rows = [Claim("F1", "w1", "tau", 0.1, -0.2, 0.3, 0.5, "supported"),
            Claim("F1", "w2", "tau", -0.6, -0.9, -0.3, 0.001, "not supported"),
            Claim("F2", "w1", "tau", 0.2, -0.1, 0.4, 0.2, "mixed"),
            untestable("F4", "w2", "no run in the failure mode"),
            Claim("P1", "w1", "tau", 0.7, -0.1, 1.0, 0.09, "mixed")]
    return pd.DataFrame([r.to_row() for r in rows])


def test_matrix_has_one_row_per_claim_and_one_cell_per_world():
    df = _claims()
    p = _Cells()
    p.feed(claims_matrix_html(df, ["w1", "w2"]))
    assert [c for c, _ in p.rows] == [c for c in CLAIM_IDS if c in set(df["claim"])]
    assert all(len(cells) == 2 for _, cells in p.rows)
    flat = dict(((c, w), cls) for c, cells in p.rows for w, cls in zip(["w1", "w2"], cells))
    assert "verdict-not-supported" in flat[("F1", "w2")] and "verdict-untestable" in flat[("F4", "w2")]
    assert "verdict-none" in flat[("F2", "w2")]


def test_matrix_prints_the_detectable_effect_beside_an_absence_verdict():
    power = pd.DataFrame([{"claim": "F1", "world": "w1", "statistic": "tau", "mde": 0.42, "n_runs": 6},
                          {"claim": "F1", "world": "w2", "statistic": "tau", "mde": NAN, "n_runs": 3}])
    html = claims_matrix_html(_claims(), ["w1", "w2"], power)
    assert "detectable at 80 % power: 0.42" in html
    assert "no effect detectable with these runs" in html
    assert html.count("rft-mde") == 2


def test_every_verdict_has_a_css_class_in_the_stylesheet():
    from rftlib.files.manifest import repo_root

    css = (repo_root() / "book" / "_static" / "rft.css").read_text()
    for v in ("supported", "not supported", "mixed", "untestable"):
        assert f"td.{verdict_class(v)}" in css
    with pytest.raises(ParameterError, match="verdict='yes'"):
        verdict_class("yes")


def test_fragment_of_the_committed_results_has_one_row_per_claim():
    claims = read_claims("book/results", missing_ok=True)
    if claims.empty:
        pytest.skip("no committed claims")
    html = pages.claims_fragment(claims, read_power("book/results"))
    p = _Cells()
    p.feed(html.split("\n", 1)[1].rsplit("```", 1)[0])
    assert [c for c, _ in p.rows] == list(dict.fromkeys(claims["claim"]))
    assert all(len(cells) == claims["world"].nunique() for _, cells in p.rows)


def test_conclusion_is_two_sentences_from_the_results():
    text = pages.conclusion_sentences(_claims())
    assert len(re.findall(r"[.](?:\s|$)", text)) == 2
    assert "Of the 5 verdicts on 2 worlds, 1 is supported, 1 not supported, 2 mixed and 1 untestable." in text
    assert "holds in none of the worlds" in text and "F2" in text
    both = pd.concat([_claims(), pd.DataFrame([Claim("F2", "w2", "tau", 0.5, 0.2, 0.8, 0.01, "supported").to_row()])])
    both.loc[both["claim"].eq("F1") & both["world"].eq("w2"), "verdict"] = "supported"
    assert "holds in `w2`" in pages.conclusion_sentences(both)


def test_claim_pages_print_power_and_evidence_beside_the_verdict(tmp_path, monkeypatch):
    from rftlib.steps import evidence as ev

    sharp, summary = ev.synthetic_tables(n_runs=6, seed=0)
    e = ev.f1_evidence("w", sharp, summary, n_boot=100, n_perm=99)
    step = tmp_path / "w-sharpness"
    step.mkdir()
    pd.DataFrame([c.to_row() for c in e.claims]).to_csv(step / "claims.csv", index=False)
    e.power.to_csv(step / "power.csv", index=False)
    e.details.to_csv(step / "evidence.csv", index=False)
    monkeypatch.setattr(pages, "_root", lambda: tmp_path)
    claims = read_claims(tmp_path)
    text = pages._verdict(claims, "F1", "w")
    assert text.startswith(f"**{e.claims[0].verdict}**")
    if len(e.power):
        assert "detectable at 80 % power" in text or "no effect of any size" in text
    table = pages._evidence("w", ("F1",))
    assert table.count("\n| F1 |") == len(e.details)
    assert pages._evidence("w", ("F4",)) == ""
