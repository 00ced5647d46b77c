"""The load N clients put on one worker: its shape, the open loop's arrivals, and which sessions
(one prefill plus the decode steps) each client runs with which prompt.

Closed loop (request_rate None): each client starts its next session as soon as its last one
ends, so N sessions are always in flight (AIPerf's --concurrency).
Open loop (request_rate set): sessions are scheduled at seeded arrival times, as vLLM's
`bench serve --request-rate R --burstiness B` schedules requests, and the N clients are the
concurrency limit (vLLM's --max-concurrency, AIPerf's --concurrency beside --request-rate): a
session whose client is still busy starts when that client frees, and the wait, start minus
scheduled, is recorded as its queueing delay (harness.serve.metrics.RequestRecord.queue_s).
"""
from __future__ import annotations

import itertools
import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from harness.errors import UsageError


@dataclass(frozen=True)
class LoadShape:
    clients: int                        # N concurrent users, one process each
    request_rate: float | None = None   # None: closed loop; else requests/s over all clients
    burstiness: float = 1.0             # gamma shape of the inter-arrival times; 1.0: Poisson
    duration_s: float | None = None     # no session starts after it; those running count unfinished
    sessions: int | None = None         # sessions over all clients; None: until duration_s
    seed: int = 0

    def __post_init__(self):
        if isinstance(self.clients, bool) or not isinstance(self.clients, int) or self.clients < 1:
            raise UsageError(f"clients {self.clients!r} must be an integer >= 1 (one per concurrent user)")
        if self.request_rate is not None and not 0 < self.request_rate < math.inf:
            raise UsageError(f"request_rate {self.request_rate!r} must be > 0 and finite requests/s "
                             "(or left out for a closed loop)")
        if not self.burstiness > 0:
            raise UsageError(f"burstiness {self.burstiness!r} must be > 0 (1.0: Poisson; below 1 burstier, "
                             "above 1 more even)")
        if self.duration_s is None and self.sessions is None:
            raise UsageError("duration_s and sessions are both unset: give at least one, or the load "
                             "never ends")
        if self.duration_s is not None and not self.duration_s > 0:
            raise UsageError(f"duration_s {self.duration_s!r} must be > 0 seconds (or left out: until "
                             "sessions are done)")
        if self.sessions is not None and (isinstance(self.sessions, bool) or not isinstance(self.sessions, int)
                                          or self.sessions < 1):
            raise UsageError(f"sessions {self.sessions!r} must be an integer >= 1 (or left out: until "
                             "duration_s)")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int) or self.seed < 0:
            raise UsageError(f"seed {self.seed!r} must be an integer >= 0")

    @property
    def open_loop(self) -> bool:
        return self.request_rate is not None


def arrivals(shape: LoadShape) -> list[float]:
    """The open loop's scheduled start offsets (seconds from t0), ascending, as vLLM draws them:
    the first at 0 (no idle lead-in), then gaps drawn from a gamma distribution with shape
    `burstiness` and mean 1/request_rate, so the gaps' CV² is 1/burstiness (burstiness 1: a
    Poisson process). As many as `sessions`, stopping before `duration_s`, whichever is first.
    The same shape gives the same list: numpy's Generator seeded with shape.seed."""
    if not shape.open_loop:
        raise UsageError("request_rate is not set: a closed loop has no arrival schedule (each client "
                         "starts its next session when its last ends); set request_rate for an open loop")
    rng = np.random.default_rng(shape.seed)
    scale = 1.0 / (shape.request_rate * shape.burstiness)  # mean = shape * scale = 1 / rate
    limit = shape.duration_s if shape.duration_s is not None else float("inf")
    out: list[float] = []
    t = 0.0
    # draw in chunks: a seeded Generator yields the same stream however it is chunked, and the
    # chunk sizes depend only on the shape, so the list is reproducible either way
    chunk = shape.sessions or int(limit * shape.request_rate * 1.2) + 16
    while True:
        for gap in rng.gamma(shape.burstiness, scale, size=chunk):
            if t >= limit or (shape.sessions is not None and len(out) >= shape.sessions):
                return out
            out.append(t)
            t += float(gap)


def prompt_seed(seed: int, client: int, session: int) -> int:
    """A session's prompt seed from the run's seed, the client and the session index: the same run
    gets the same prompts, and 64 bits keep two sessions' seeds (so prompts) from colliding."""
    return int(np.random.SeedSequence([seed, client, session]).generate_state(1, np.uint64)[0])


def prompt_ids(seed: int, length: int, vocab: int) -> list[int]:
    """`length` token ids uniform in [0, vocab), the same for the same seed."""
    if length < 1 or vocab < 1:
        raise UsageError(f"prompt length {length} and vocab {vocab} must both be >= 1")
    return np.random.default_rng(seed).integers(0, vocab, size=length).tolist()


@dataclass(frozen=True)
class Session:
    client: int
    session: int                 # index over the whole run, unique
    prompt_seed: int             # prompt_ids(prompt_seed, prompt_len, vocab)
    scheduled_s: float | None    # open loop: its arrival offset from t0; closed loop: None

    def prompt(self, length: int, vocab: int) -> list[int]:
        return prompt_ids(self.prompt_seed, length, vocab)


@dataclass(frozen=True)
class ClientPlan:
    """One client's sessions in the order it runs them: the run's sessions c, c+N, c+2N, ... The
    runner stops iterating at duration_s; a closed loop without `sessions` never ends on its own.

    Round-robin, fixed before the run, so that every client's prompts are known without a shared
    queue between the processes. It hands out sessions as a shared pool of N slots would
    (vLLM's semaphore) while sessions take equal time: the same prompt length and steps."""
    client: int
    clients: int
    seed: int
    count: int | None                              # None: unbounded (closed loop until duration)
    scheduled_s: tuple[float, ...] | None = None   # open loop: each session's arrival, in order

    def __iter__(self) -> Iterator[Session]:
        ks = range(self.count) if self.count is not None else itertools.count()
        for k in ks:
            index = self.client + k * self.clients
            yield Session(self.client, index, prompt_seed(self.seed, self.client, index),
                          None if self.scheduled_s is None else self.scheduled_s[k])


def plan(shape: LoadShape) -> list[ClientPlan]:
    """Per client (index = client id), the sessions it runs; see ClientPlan. Open loop: arrival i
    goes to client i mod N. Closed loop: `sessions` split round-robin, or unbounded."""
    n = shape.clients
    if shape.open_loop:
        when = arrivals(shape)
        return [ClientPlan(c, n, shape.seed, len(when[c::n]), tuple(when[c::n])) for c in range(n)]
    return [ClientPlan(c, n, shape.seed, None if shape.sessions is None else len(range(c, shape.sessions, n)))
            for c in range(n)]
