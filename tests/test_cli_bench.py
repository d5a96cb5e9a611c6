"""`rft bench`: the whole-path benchmark is a verb of the front door; bad input is refused before any work."""

from rftlib.cli import main


def test_bench_is_a_verb_and_refuses_a_bad_thread_count(capsys):
    assert main(["bench", "--threads", "0"]) == 2
    assert "--threads=0 must be at least 1" in capsys.readouterr().err
