"""``rft compare OLD NEW``: the table-by-table comparison of two results roots (rftlib.book.compare)."""

from __future__ import annotations

from pathlib import Path

import pytest

from rftlib import cli


def _root(tmp_path: Path, name: str, acc: float, claim: str = "supported", extra: bool = False) -> Path:
    root = tmp_path / name
    (root / "w-interpolate").mkdir(parents=True)
    (root / "w-interpolate" / "curves.csv").write_text(f"run,alpha,accuracy,seconds\nr,0.5,{acc},{acc * 7}\n")
    (root / "w-evidence").mkdir()
    (root / "w-evidence" / "claims.csv").write_text(f"claim,world,verdict\nF1,w,{claim}\n")
    if extra:
        (root / "w-new").mkdir()
        (root / "w-new" / "t.csv").write_text("a\n1\n")
    return root


def test_equal_roots_pass_and_timings_are_ignored(tmp_path, capsys):
    old, new = _root(tmp_path, "old", 0.5), _root(tmp_path, "new", 0.5 + 1e-9)
    assert cli.main(["compare", str(old), str(new)]) == 0
    out = capsys.readouterr().out
    assert "2 of 2 tables equal within 1e-06" in out


def test_a_changed_number_or_verdict_fails_and_is_named(tmp_path, capsys):
    old, new = _root(tmp_path, "old", 0.5), _root(tmp_path, "new", 0.51, claim="mixed", extra=True)
    assert cli.main(["compare", str(old), str(new)]) == 1
    out = capsys.readouterr().out
    assert "different" in out and "w-interpolate/curves.csv" in out and "column 'accuracy'" in out
    assert "'supported' vs 'mixed'" in out and "only in new" in out


@pytest.mark.parametrize("args, fragment", [(["nowhere", "."], "OLD='nowhere' is not a folder"),
                                            ([".", ".", "--tol", "-1"], "--tol=-1.0 must be a number >= 0")])
def test_bad_input_is_one_line(args, fragment, capsys):
    assert cli.main(["compare", *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("rft: error: ") and fragment in err[0]
