"""The evidence step (rftlib.steps.evidence.Params / run, notebooks/evidence.ipynb): its parameter
checks, the verdicts it writes from a world's tables, and the committed claims it produced."""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from rftlib.book import pages
from rftlib.book.claims import read_claims, read_power
from rftlib.core.verdicts import CLAIM_IDS
from rftlib.errors import ParameterError, RftError
from rftlib.files.manifest import repo_root
from rftlib.steps import evidence as ev

RESULTS = repo_root() / "book" / "results"
WORLDS = ("fashion", "digits-clean")  # the default study's two main worlds
STRAGGLERS = pd.DataFrame({"run": ["r0", "r0", "r1", "r1"], "layer": ["block1", "head", "block1", "embed"]})


def null_verdict(claim: str, verdict: str, lo: float, hi: float) -> bool:
    """A verdict resting on the absence of an effect: F1 supported; another claim not supported with
    an interval containing 0 (or no interval)."""
    if claim == "F1":
        return verdict == "supported"
    return verdict == "not supported" and not (lo > 0 or hi < 0)


def world_folders(root: Path, summary: pd.DataFrame, sharp: pd.DataFrame, f4_parts: pd.DataFrame) -> dict[str, str]:
    """The four upstream folders of a made-up world under ``root``, as the evidence step's parameters."""
    tables = {"interpolate": ("summary", summary), "stragglers": ("stragglers", STRAGGLERS),
              "sharpness": ("sharpness", sharp), "sparsity": ("f4_parts", f4_parts)}
    out = {}
    for step, (name, table) in tables.items():
        (root / f"w-{step}").mkdir(parents=True, exist_ok=True)
        table.to_csv(root / f"w-{step}" / f"{name}.csv", index=False)
        out[f"{step}_dir"] = str(root / f"w-{step}")
    return out


def small(**dirs: str) -> ev.Params:
    return ev.Params(world="fashion", n_boot=100, n_perm=99, out_dir="/nonexistent/evidence", **dirs)


# ----------------------------------------------------------------------------------------------
# parameters: bad folders and missing tables are one-line errors before any work
# ----------------------------------------------------------------------------------------------

def test_a_folder_without_its_table_is_named_with_the_fix():
    with pytest.raises(ParameterError) as e:
        ev.Params(world="digits-clean", sharpness_dir="book/results/digits-clean-zeroshot")
    msg = str(e.value)
    assert "\n" not in msg
    assert ("sharpness_dir='book/results/digits-clean-zeroshot' holds no sharpness.csv; allowed: a results folder of "
            "the sharpness step (run the sharpness step first: rft run notebooks/sharpness.ipynb -p world=digits-clean "
            "--out book/results/digits-clean-zeroshot)") in msg


def test_a_table_without_its_columns_and_a_dir_of_another_type_are_problems(tmp_path):
    (tmp_path / "st").mkdir()
    (tmp_path / "st" / "stragglers.csv").write_text("run,rank\nr0,1\n")
    with pytest.raises(ParameterError) as e:
        ev.Params(stragglers_dir=str(tmp_path / "st"), sparsity_dir=3, n_perm=10)
    problems = e.value.problems
    assert any(p.startswith("stragglers_dir=") and "without the columns ['layer']" in p for p in problems)
    assert ev.Params(world="digits-clean", interpolate_dir="  ").interpolate_dir == "book/results/digits-clean-interpolate"
    assert any(p.startswith("sparsity_dir=3 is not a string") for p in problems)
    assert any(p.startswith("n_perm=10 is too small") for p in problems)


def test_run_checks_every_table_before_reading_any(tmp_path):
    sharp, summary = ev.synthetic_tables(n_runs=6, seed=0)
    dirs = world_folders(tmp_path, summary, sharp, pd.DataFrame({"world": ["w"]}))
    dirs["sharpness_dir"] = str(tmp_path / "not-yet")  # a folder a pipeline has not written yet: valid here
    dirs["sparsity_dir"] = str(tmp_path / "not-either")
    p = small(**dirs)
    with pytest.raises(ParameterError) as e:
        ev.run(p)
    msg = str(e.value)
    assert isinstance(e.value, RftError) and "\n" not in msg
    assert "sharpness_dir=" in msg and "holds no sharpness.csv" in msg
    assert "sparsity_dir=" in msg and "holds no f4_parts.csv" in msg


def test_cli_rejects_a_bad_folder_before_a_kernel_starts(tmp_path):
    r = subprocess.run([sys.executable, "-m", "rftlib.cli", "run", "notebooks/evidence.ipynb", "-p", "world=digits-clean",
                        "-p", "interpolate_dir=book/results/digits-clean-zeroshot", "--out", str(tmp_path / "out")],
                       cwd=repo_root(), capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("rft: error: ")
    assert "interpolate_dir='book/results/digits-clean-zeroshot' holds no summary.csv" in lines[0]
    assert not (tmp_path / "out").exists()


# ----------------------------------------------------------------------------------------------
# verdicts from synthetic tables
# ----------------------------------------------------------------------------------------------

def test_f4_is_untestable_when_no_run_is_in_the_failure_mode(tmp_path):
    sharp, summary = ev.synthetic_tables(n_runs=6, seed=0)
    assert not summary["failure_mode"].any()
    # parts that would otherwise decide: a straggler rescue far above its control
    parts = pd.DataFrame({"world": "w", "run": ["r0", "r1"], "p": 0.5, "gain_stragglers": [0.05, 0.06],
                          "gain_control": [-0.05, -0.04], "rescued_stragglers": True, "rescued_control": False})
    r = ev.run(small(**world_folders(tmp_path, summary, sharp, parts)))
    f4 = [c for c in r.claims if c.claim == "F4"]
    assert len(f4) == 1 and f4[0].verdict == "untestable"
    assert "no run in the failure mode" in f4[0].statistic
    assert math.isnan(f4[0].ci_low) and not (r.tables["power"]["claim"] == "F4").any()


def test_f4_with_failure_runs_and_no_rescue_is_not_supported_with_its_detectable_effect(tmp_path):
    sharp, summary = ev.synthetic_tables(n_runs=6, seed=0)
    summary["failure_mode"] = [True, True, True, False, False, False]
    rng = np.random.default_rng(0)
    parts = pd.DataFrame([{"world": "w", "run": f"r{i}", "p": p, "gain_stragglers": -0.02 + 0.01 * rng.normal(),
                           "gain_control": -0.02 + 0.01 * rng.normal(), "rescued_stragglers": False,
                           "rescued_control": False} for i in range(3) for p in (0.3, 0.7)])
    r = ev.run(small(**world_folders(tmp_path, summary, sharp, parts)))
    f4 = next(c for c in r.claims if c.claim == "F4")
    assert f4.verdict == "not supported" and "straggler rescues 0" in f4.statistic
    row = r.tables["power"][r.tables["power"]["claim"] == "F4"]
    assert len(row) == 1 and np.isfinite(row["mde"].iloc[0]) and row["mde"].iloc[0] > 0


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_null_verdict_has_a_finite_detectable_effect(seed):
    sharp, summary = ev.synthetic_tables(n_runs=12, seed=seed)
    e = ev.study_evidence("w", {"sharpness": sharp, "summary": summary, "stragglers": STRAGGLERS,
                                "f4_parts": None}, n_boot=200, n_perm=199, seed=seed)
    assert {c.verdict for c in e.claims} <= {"supported", "not supported", "mixed", "untestable"}
    nulls = [c for c in e.claims if null_verdict(c.claim, c.verdict, c.ci_low, c.ci_high)]
    assert nulls, [(c.claim, c.verdict) for c in e.claims]  # the synthetic world plants no effect
    for c in nulls:
        mde = e.power[(e.power["claim"] == c.claim) & (e.power["world"] == "w")]["mde"]
        assert len(mde) and np.isfinite(mde).all() and (mde > 0).all(), (c.claim, c.verdict, mde.tolist())
    # and a verdict that rests on a found effect gets no power row
    found = [c for c in e.claims if c.claim == "F1" and c.verdict == "not supported"]
    assert all(not (e.power["claim"] == c.claim).any() for c in found)


# ----------------------------------------------------------------------------------------------
# the committed results
# ----------------------------------------------------------------------------------------------

def test_each_claim_has_one_writer_the_evidence_step():
    writers = sorted(p.parent.name for p in RESULTS.glob("*/claims.csv"))
    assert writers == sorted(f"{w}-evidence" for w in WORLDS)
    claims = read_claims(RESULTS)
    assert not claims.duplicated(["claim", "world"]).any()
    assert sorted(map(tuple, claims[["claim", "world"]].values)) == sorted((c, w) for c in CLAIM_IDS for w in WORLDS)


def test_claims_matrix_of_the_committed_results_has_one_row_per_claim_and_one_column_per_world():
    from html.parser import HTMLParser

    class Cells(HTMLParser):
        def __init__(self):
            super().__init__()
            self.head, self.rows, self.body = [], [], False

        def handle_starttag(self, tag, attrs):
            a = dict(attrs)
            if tag == "tbody":
                self.body = True
            elif tag == "tr" and self.body:
                self.rows.append((a.get("data-claim"), []))
            elif tag == "td" and self.body:
                self.rows[-1][1].append(a.get("class", ""))

        def handle_data(self, data):
            if not self.body and data.strip():
                self.head.append(data.strip())

    claims, power = read_claims(RESULTS), read_power(RESULTS)
    html = pages.claims_fragment(claims, power)
    p = Cells()
    p.feed(html.split("\n", 1)[1].rsplit("```", 1)[0])
    assert p.head == ["paper claim", *WORLDS]
    assert [c for c, _ in p.rows] == list(CLAIM_IDS)
    assert all(len(cells) == len(WORLDS) and not any("verdict-none" in c for c in cells) for _, cells in p.rows)
    cells = {(c, w): cls for c, row in p.rows for w, cls in zip(WORLDS, row)}
    assert not any("verdict-untestable" in cells[("F4", w)] for w in WORLDS)  # each world has failure runs
    assert html.count('class="rft-mde"') == len(power)  # every power row is printed in its cell


@pytest.mark.parametrize("world", WORLDS)
def test_committed_run_population_has_seeds_failures_and_successes(world):
    """The population the claims rest on: at least 24 runs, at least 3 seeds of every recipe, and both
    failure-mode runs and successful interpolations at least a quarter of the runs; stragglers were
    identified on every run and F4 was measured on every failure-mode run."""
    s = pd.read_csv(RESULTS / f"{world}-interpolate" / "summary.csv")
    assert len(s) >= 24 and s["run"].is_unique
    seeds = s.groupby(ev.recipes(s).to_numpy())["seed"].nunique()
    assert seeds.min() >= 3, seeds.to_dict()
    # the "at least 1.5 decades", to one decimal: fashion's 1.6e-4 .. 5e-3 spans 1.495 decades
    assert round(math.log10(s["lr"].max() / s["lr"].min()), 1) >= 1.5 and set(s["augment"]) >= {"none", "strong"}
    assert s["failure_mode"].mean() >= 0.25 and s["successful"].mean() >= 0.25, \
        (s["failure_mode"].mean(), s["successful"].mean())
    strag = pd.read_csv(RESULTS / f"{world}-stragglers" / "stragglers.csv")
    assert set(strag["run"]) == set(s["run"])
    f4 = pd.read_csv(RESULTS / f"{world}-sparsity" / "f4_parts.csv")
    assert set(f4["run"]) == set(s.loc[s["failure_mode"], "run"])


def test_every_committed_null_verdict_states_its_detectable_effect():
    claims, power = read_claims(RESULTS), read_power(RESULTS)
    for r in claims.itertuples():
        if not null_verdict(r.claim, r.verdict, r.ci_low, r.ci_high):
            continue
        rows = power[(power["claim"] == r.claim) & (power["world"] == r.world)]
        assert len(rows), (r.claim, r.world, r.verdict)
        # finite wherever the design has the runs to detect anything (F4 on one failure-mode run has none)
        assert (np.isfinite(rows["mde"]) | (rows["n_runs"] < 2)).all(), rows


def test_a_parts_detectable_effect_beside_a_mixed_verdict_is_labelled_with_its_statistic():
    from rftlib.book.claims import claims_matrix_html
    from rftlib.core.verdicts import Claim

    df = pd.DataFrame([Claim("F1", "w", "T", 0.0, -0.3, 0.3, 0.9, "supported").to_row(),
                       Claim("P1", "w", "parts", 0.5, -0.1, 1.0, 0.09, "mixed").to_row()])
    power = pd.DataFrame([{"claim": "F1", "world": "w", "statistic": "T", "mde": 0.4, "n_runs": 6},
                          {"claim": "P1", "world": "w", "statistic": "part 2: τ", "mde": 0.8, "n_runs": 6}])
    html = claims_matrix_html(df, ["w"], power)
    assert "detectable at 80 % power: 0.4</span>" in html  # the verdict's own statistic: no label
    assert "detectable at 80 % power: 0.8 (part 2: τ)</span>" in html
