"""--gap-sessions N (fixtures/sessions.py): what a later session runs, and how the spread over
sessions reaches the table (the run itself: tests/test_suite.py)."""
from __future__ import annotations

from dataclasses import replace

from harness.measure.results import CellInfo, Stat, session_figures
from harness.report.sessions import SESSIONS_COLUMN, sessions_columns, spread_caption
from harness.report.tables import table_rows
from tests.test_verdicts import cell, round_record


def test_a_later_session_runs_the_same_cells_writing_its_own_json(tmp_path):
    """The same selection and settings, one session, its own JSON; saving and comparing stay with
    the first run."""
    from fixtures.sessions import session_argv
    args = ["benchmarks", "-k", "decode", "--gap-model", "gpt2", "--gap-sessions", "3", "--benchmark-json=out.json",
            "--benchmark-compare", "--benchmark-save", "base", "--gap-compare-fail=bytes:5%", "--gap-strict"]
    assert session_argv(args, tmp_path / "s.json") == [
        "benchmarks", "-k", "decode", "--gap-model", "gpt2", "--gap-strict", "--gap-sessions", "1",
        f"--benchmark-json={tmp_path / 's.json'}"]


def _info(latencies: list[float], sessions: list[float] | None) -> CellInfo:
    """A local decode cell whose measured rounds took `latencies`, and whose sessions' means were `sessions`."""
    info = cell("local", rounds=[round_record("local", "decode", latency_s=v) for v in latencies])
    figures = None if sessions is None else [session_figures(info.summary) | {"latency_s": v} for v in sessions]
    return replace(info, sessions=figures)


def test_the_spread_over_sessions_is_the_spread_of_their_means():
    info = _info([1.0, 1.0, 1.0], [1.0, 1.2, 1.4])
    assert info.across_sessions("latency_s") == Stat.of([1.0, 1.2, 1.4])
    assert _info([1.0, 1.1], None).across_sessions("latency_s") is None


def test_the_table_shows_the_sessions_column_only_where_more_than_one_ran():
    one, more = _info([1.0, 1.1], None), _info([1.0, 1.1], [1.05, 1.25])
    rows = table_rows([one])
    assert sessions_columns(rows) == [] and "one session ran" in spread_caption([one])
    rows = table_rows([more])
    assert sessions_columns(rows) == [SESSIONS_COLUMN]
    assert rows[0][SESSIONS_COLUMN] == "1.1500 ± 0.1414 (2 sessions)"
    assert "2 sessions' means" in spread_caption([more])



def test_a_cell_that_ran_one_session_says_so_beside_one_that_ran_more():
    rows = table_rows([_info([1.0, 1.1], None), _info([1.0, 1.1], [1.05, 1.25])])
    assert sessions_columns(rows) == [SESSIONS_COLUMN]
    assert sorted(r[SESSIONS_COLUMN] for r in rows) == ["1.1500 ± 0.1414 (2 sessions)", "n/a (one session)"]
