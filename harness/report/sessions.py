"""The spread across sessions (--gap-sessions N, fixtures/sessions.py) in the run's table: a column
beside the rounds' own spread, and a caption that says which ± is which."""
from __future__ import annotations

SESSIONS_COLUMN = "Latency over sessions (s)"


def sessions_cells(info, pm, any_sessions: bool) -> dict:
    """A table row's sessions column (pm formats a Stat as mean ± std) where any cell of the table
    ran more than one session (any_sessions); a cell that ran one says so."""
    if not any_sessions:
        return {}
    across = info.across_sessions("latency_s")
    if across is None:
        return {SESSIONS_COLUMN: "n/a (one session)"}
    return {SESSIONS_COLUMN: f"{pm(across, lambda v: f'{v:.4f}')} ({across.n} sessions)",
            "latency_s_sessions_mean": across.mean, "latency_s_sessions_std": across.std}


def sessions_columns(rows: list[dict]) -> list[str]:
    """[SESSIONS_COLUMN] where the rows have it."""
    return [SESSIONS_COLUMN] if rows and SESSIONS_COLUMN in rows[0] else []


def spread_caption(infos) -> str:
    """What the table's ± means: the rounds of one session, and where more ran, the sessions' means."""
    n = max((len(i.sessions) for i in infos if i.sessions), default=1)
    within = "± is the spread of the measured rounds within one session (one worker process and client)"
    if n < 2:
        return within + "; one session ran (--gap-sessions N runs more)."
    return (within + f"; {SESSIONS_COLUMN[0].lower() + SESSIONS_COLUMN[1:]}: the spread of {n} sessions' means, "
            "each a fresh worker and client.")
