"""Many clients' sessions on one model, their decode steps batched: the semantics-aware worker
that many clients share (and the local mode's same loop, with no network).

One copy of the weights; each session holds a row of one batched static cache
(harness.compute.rows.Rows). Requests queue; one thread runs the model: each pass takes every
queued prefill (one at a time, into its row) and then every queued decode step, all of them in
one forward (continuous batching: sessions join and leave between passes). Every request gets a
torch Future, completed by that thread, so an RPC serving thread returns at once
(rpc.functions.async_execution) and many clients' steps can be pending together.

Isolation, because clients share it:
- a session id is unguessable (128 random bits) and bound to the client that opened it: another
  client's prefill, step or close on it is refused in one line;
- a session's lease is renewed by each of its requests; one idle for lease_s (a client killed
  mid-session) is freed by the model thread, whatever the other sessions do;
- when every row is taken, a new session is refused with "worker full", never an out-of-memory.
Rows and their buffers are reused, so memory stays flat as sessions come and go.
"""
from __future__ import annotations

import secrets
import threading
import time
from dataclasses import dataclass, field

import torch

LEASE_S = 5.0  # a killed client's row is free within about this (and one wake-up of the loop)
# How long a pass waits for the decoding sessions that have not sent their next step yet: each
# client sends a step only when its last token came back, so without a wait the sessions fall out
# of phase (one pass takes the first to return, the next the rest) and each token waits two passes.
# Half the last pass's time, within these bounds: a round trip is far shorter than a pass.
GATHER_MIN_S, GATHER_MAX_S = 0.002, 0.05


class WorkerFull(RuntimeError):
    """Every row is taken."""


@dataclass
class Session:
    owner: str
    row: int
    expires: float                      # time.monotonic() after which the row is freed
    pending: int = 0                    # requests queued, not yet answered
    decoding: bool = False              # prefilled: its next step is expected


@dataclass
class _Job:
    sid: str
    ids: list | None                    # a prefill's prompt; None for a decode step
    token: int | None                   # a decode step's input token
    future: torch.futures.Future = field(default_factory=torch.futures.Future)


class Batcher:
    def __init__(self, rows, lease_s: float = LEASE_S):
        """rows: a harness.compute.rows.Rows, whose methods run on the batcher's thread only, or a
        function that makes one, called on that thread: then the model's every op can run on one
        thread (on a CPU, steps on a second thread after the first had run the model's ops took
        1.25x as long: docs/evidence.md)."""
        self.lease_s = lease_s
        self.sessions: dict[str, Session] = {}
        self.queue: list[_Job] = []
        self.passes = 0                 # forwards of the decode batch
        self.pass_s = 0.0               # the last pass's seconds (the gather window's measure)
        self.batched = 0                # decode steps they served (÷ passes: the mean batch)
        self.cv = threading.Condition()
        self.stopped = False
        made, failed = threading.Event(), []
        self.thread = threading.Thread(target=self._start, args=(rows, made, failed), name="batcher", daemon=True)
        self.thread.start()
        made.wait()
        if failed:
            raise failed[0]
        self.free_rows = list(range(self.rows.slots))[::-1]

    def _start(self, rows, made: threading.Event, failed: list) -> None:
        try:
            self.rows = rows() if callable(rows) else rows
        except BaseException as e:  # the caller raises it
            failed.append(e)
            return
        finally:
            made.set()
        self._loop()

    # -- the clients' side (any thread) -----------------------------------------------------------
    def open(self, owner: str) -> str:
        with self.cv:
            self._reap(time.monotonic())
            if not self.free_rows:
                raise WorkerFull(f"worker full: all {self.rows.slots} session rows are in use; retry when a "
                                 "session ends, or give the worker more rows (--gap-slots)")
            sid = secrets.token_hex(16)
            self.sessions[sid] = Session(owner, self.free_rows.pop(), time.monotonic() + self.lease_s)
            return sid

    def prefill(self, sid: str, owner: str, ids: list[int]) -> torch.futures.Future:
        """The session's prompt; the future gives its first output token."""
        return self._submit(_Job(sid, list(ids), None), owner)

    def step(self, sid: str, owner: str, token: int) -> torch.futures.Future:
        """One decode step of the session; the future gives its next token."""
        return self._submit(_Job(sid, None, int(token)), owner)

    def close(self, sid: str, owner: str) -> None:
        with self.cv:
            self._owned(sid, owner)
            self._free(sid)

    def stop(self) -> None:
        with self.cv:
            self.stopped = True
            self.cv.notify()
        self.thread.join(10)

    def stats(self) -> dict:
        with self.cv:
            return {"sessions": len(self.sessions), "free_rows": len(self.free_rows), "passes": self.passes,
                    "mean_batch": self.batched / self.passes if self.passes else None}

    def _submit(self, job: _Job, owner: str) -> torch.futures.Future:
        with self.cv:
            session = self._owned(job.sid, owner)
            session.pending += 1
            session.decoding = True
            session.expires = time.monotonic() + self.lease_s
            self.queue.append(job)
            self.cv.notify()
        return job.future

    def _owned(self, sid: str, owner: str) -> Session:
        session = self.sessions.get(sid)
        if session is None:
            raise KeyError(f"unknown session {sid[:8]}…: it ended, its lease ran out ({self.lease_s:g} s "
                           "without a request), or it was never opened; open a new one")
        if session.owner != owner:
            raise PermissionError(f"session {sid[:8]}… belongs to another client: a client may prefill, "
                                  "step or close only the sessions it opened")
        return session

    def _free(self, sid: str) -> None:
        session = self.sessions.pop(sid)
        self.free_rows.append(session.row)

    def _reap(self, now: float) -> None:
        """Free every session whose lease ran out with nothing queued (under self.cv)."""
        for sid in [s for s, v in self.sessions.items() if v.expires < now and v.pending == 0]:
            self._free(sid)

    # -- the model's thread ---------------------------------------------------------------------
    def _loop(self) -> None:
        while True:
            with self.cv:
                self.cv.wait_for(lambda: self.queue or self.stopped, timeout=self.lease_s / 4)
                if self.queue:
                    self.cv.wait_for(self._gathered, timeout=min(GATHER_MAX_S, max(GATHER_MIN_S, self.pass_s / 2)))
                if self.stopped:
                    return
                jobs, self.queue = self.queue, []
                self._reap(time.monotonic())
                rows = {sid: s.row for sid, s in self.sessions.items()}
            t0 = time.perf_counter()
            self._run(jobs, rows)
            self.pass_s = time.perf_counter() - t0

    def _gathered(self) -> bool:
        """Every decoding session has its next step queued (under self.cv)."""
        return self.stopped or all(s.pending or not s.decoding for s in self.sessions.values())

    def _run(self, jobs: list[_Job], rows: dict[str, int]) -> None:
        """Prefills one by one, then every decode step in one forward. A session freed since its
        job was queued (closed, or reaped) has no row: its job fails, nothing else does."""
        live = [j for j in jobs if j.sid in rows]
        for job in jobs:
            if job.sid not in rows:
                job.future.set_exception(KeyError(f"session {job.sid[:8]}… ended before its request ran"))
        steps, later = {}, []
        for job in live:
            row = rows[job.sid]
            if job.ids is not None:
                self._answer([job], lambda row=row, job=job: {row: self.rows.prefill(row, job.ids)}, rows)
            elif row in steps:  # a second step of one session waits for the next pass
                later.append(job)
            elif self.rows.length(row) >= self.rows.max_len:
                job.future.set_exception(ValueError(f"session {job.sid[:8]}… is at the cache's {self.rows.max_len} "
                                                    "positions: end it (the worker sizes rows to --gap-prompt-len + --gap-steps + 1)"))
                self._done([job])
            else:
                steps[row] = job
        if later:
            with self.cv:
                self.queue[:0] = later
        if steps:
            self._answer(list(steps.values()), lambda: self.rows.step({r: j.token for r, j in steps.items()}),
                         rows)
            self.passes += 1
            self.batched += len(steps)

    def _answer(self, jobs: list[_Job], run, rows: dict[str, int]) -> None:
        try:
            out = run()
        except Exception as e:  # noqa: BLE001  (the requests that ran fail with it; the loop goes on)
            out, error = {}, e
        else:
            error = None
        self._done(jobs)
        for job in jobs:
            if error is not None:
                job.future.set_exception(error)
            else:
                job.future.set_result(out[rows[job.sid]])

    def _done(self, jobs: list[_Job]) -> None:
        with self.cv:
            for job in jobs:
                if job.sid in self.sessions:
                    self.sessions[job.sid].pending -= 1
