"""`rft bench`: the sections measure what they say on tiny models; the job benchmark refuses bad input."""

import pytest

from rftlib.book.bench import GOALS, bench_sharpness_layerwise, build_random_classifier, headline_ratios
from rftlib.book.jobbench import GOAL_SHARED, job_ratio, run_job_benchmark
from rftlib.cli import main
from rftlib.errors import ParameterError


def test_layerwise_section_times_three_ways_and_naive_equals_cached():
    model = build_random_classifier("rft-tiny")
    r = bench_sharpness_layerwise(model, 28, 8, 2, 1)
    assert r["blocks"] == len(r["per_block"]) >= 2
    assert r["max_abs_diff_naive_cached"] == 0.0  # the prefix cache changes no number
    assert all(r[f"{k}_s"] > 0 for k in ("reference", "naive", "rftlib"))
    assert r["ratio"] == pytest.approx(r["reference_s"] / r["rftlib_s"])


def test_headline_ratios_carry_their_goals_and_say_what_was_not_run():
    sections = {"sweep_fp32": {"sweep_vs_forward": {"ratio": 1.0, "goal": 0.9, "met": True, "note": ""}},
                "sharpness_whole_rft-mini": {"ratio": 1.3}, "sharpness_layerwise_rft-tiny": {"ratio": 2.1}}
    r = headline_ratios(sections)
    assert set(r) == set(GOALS)
    assert r["sharpness_whole"]["met"] is False and r["sharpness_layerwise_tiny"]["met"] is True
    assert r["sharpness_layerwise_vitb32"]["met"] is None and "--full" in r["sharpness_layerwise_vitb32"]["note"]


def test_job_ratio_goal_is_at_most():
    assert job_ratio(100.0, 100.0 * GOAL_SHARED)["met"] and not job_ratio(100.0, 151.0)["met"]


def test_job_benchmark_refuses_an_unknown_condition_before_any_work(tmp_path, capsys):
    with pytest.raises(ParameterError, match="'loud'"):
        run_job_benchmark(tmp_path / "job.json", conditions=["quiet", "loud"])
    assert not (tmp_path / "job.json").exists()
    assert main(["bench", "--job", "--conditions", "loud", "--out", str(tmp_path / "j.json")]) == 2
    assert "'loud'" in capsys.readouterr().err


def test_job_benchmark_refuses_an_unknown_commit_before_any_work(tmp_path):
    with pytest.raises(ParameterError, match="not a commit"):
        run_job_benchmark(tmp_path / "job.json", commit="no-such-revision")
    assert not (tmp_path / "job.json").exists()
