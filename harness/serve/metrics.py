"""Per-request records and the run's summary, with vLLM's `bench serve` definitions.

Each request (one session: a prefill and its decode steps) leaves a RequestRecord, written as a
JSON line. summarize() turns a run's records into a Summary:
  - tokens_per_s counts every output token over the run's wall time, from the first start to the
    last token, unfinished and failed requests' tokens included: what the GPU did produce;
  - requests_per_s and goodput_per_s count finished requests only, goodput only those meeting
    every SLO given (vLLM's --goodput: each metric <= its SLO);
  - TTFT and TPOT percentiles are over finished requests (vLLM's completed ones), one value per
    request; ITL percentiles over every gap between tokens of finished requests, pooled;
  - percentiles are numpy's default, linear interpolation between the closest ranks (vLLM's too).
"""
from __future__ import annotations

import dataclasses
import itertools
from dataclasses import asdict, dataclass, field

import numpy as np


def _from_dict(cls, d: dict, what: str):
    """Fails on a missing field, naming it, rather than reading a renamed one as absent."""
    missing = [f.name for f in dataclasses.fields(cls) if f.name not in d]
    if missing:
        raise ValueError(f"{what} lacks {', '.join(missing)}: written by another version of the suite; "
                         "re-run it with this one")
    return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls)})


@dataclass
class RequestRecord:
    client: int
    session: int                 # harness.serve.load.Session.session
    scheduled_s: float | None    # open loop: when it was due (start_s's clock); closed loop: None
    start_s: float               # when its client sent the prefill
    first_token_s: float | None  # None: it never produced a token
    token_times_s: list[float] = field(default_factory=list)  # each output token's arrival, first included
    tokens: list[int] = field(default_factory=list)
    finished: bool = False       # every step done; False where the duration ended it or it failed
    error: str | None = None     # the failure, one line, where it failed

    def __post_init__(self):
        if len(self.tokens) != len(self.token_times_s):
            raise ValueError(f"client {self.client} session {self.session}: {len(self.tokens)} tokens but "
                             f"{len(self.token_times_s)} token times; record one time per token")

    @property
    def queue_s(self) -> float | None:
        """How long it waited for its client to free (open loop), as max-concurrency queues."""
        return None if self.scheduled_s is None else self.start_s - self.scheduled_s

    @property
    def ttft_s(self) -> float | None:
        return None if self.first_token_s is None else self.first_token_s - self.start_s

    @property
    def tpot_s(self) -> float | None:
        """vLLM's time per output token: the decode's time over the tokens after the first."""
        t = self.token_times_s
        return (t[-1] - t[0]) / (len(t) - 1) if len(t) >= 2 else None

    @property
    def itl_s(self) -> list[float]:
        t = self.token_times_s
        return [b - a for a, b in itertools.pairwise(t)]

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> RequestRecord:
        return _from_dict(cls, d, "request record")


@dataclass
class Summary:
    tokens_per_s: float | None       # every output token ÷ duration_s; None when duration_s is 0
    requests_per_s: float | None     # finished requests ÷ duration_s
    ttft_p50_s: float | None
    ttft_p90_s: float | None
    ttft_p99_s: float | None
    tpot_p50_s: float | None
    tpot_p90_s: float | None
    tpot_p99_s: float | None
    itl_p50_s: float | None
    itl_p99_s: float | None
    link_bytes_per_token: float | None  # the link's bytes, both ways, ÷ output_tokens
    goodput_per_s: float | None      # finished requests within every SLO ÷ duration_s; None: no SLO
    finished: int
    unfinished: int                  # still running when the duration ended, no error
    errors: int                      # failed (finished + unfinished + errors = requests)
    output_tokens: int               # every request's, unfinished and failed included
    duration_s: float                # first start to last token

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> Summary:
        return _from_dict(cls, d, "serving summary")


def percentile(values: list[float], q: float) -> float | None:
    """numpy's default (linear) percentile; None where there is nothing to rank."""
    return float(np.percentile(values, q)) if values else None


def meets_slo(r: RequestRecord, slo_tpot_s: float | None, slo_ttft_s: float | None) -> bool:
    """vLLM's goodput test: every SLO given is met (metric <= SLO). A one-token request has no
    TPOT, so, as in vLLM, its TPOT cannot miss."""
    ttft, tpot = r.ttft_s, r.tpot_s
    return ((slo_ttft_s is None or (ttft is not None and ttft <= slo_ttft_s))
            and (slo_tpot_s is None or tpot is None or tpot <= slo_tpot_s))


def summarize(records: list[RequestRecord], link_bytes: int | None, slo_tpot_s: float | None,
              slo_ttft_s: float | None = None) -> Summary:
    """The run's figures (see the module's docstring); link_bytes: the link's counters over the
    run, None where not measured."""
    if not records:
        raise ValueError("no request records to summarize: did any client run?")
    done = [r for r in records if r.finished and r.error is None]
    errors = sum(r.error is not None for r in records)
    output_tokens = sum(len(r.tokens) for r in records)
    start = min(r.start_s for r in records)
    end = max((r.token_times_s[-1] for r in records if r.token_times_s), default=start)
    duration_s = end - start
    per_s = (lambda n: n / duration_s) if duration_s > 0 else (lambda n: None)
    ttft = [r.ttft_s for r in done if r.ttft_s is not None]
    tpot = [r.tpot_s for r in done if r.tpot_s is not None]
    itl = [gap for r in done for gap in r.itl_s]
    no_slo = slo_tpot_s is None and slo_ttft_s is None
    return Summary(
        tokens_per_s=per_s(output_tokens), requests_per_s=per_s(len(done)),
        ttft_p50_s=percentile(ttft, 50), ttft_p90_s=percentile(ttft, 90), ttft_p99_s=percentile(ttft, 99),
        tpot_p50_s=percentile(tpot, 50), tpot_p90_s=percentile(tpot, 90), tpot_p99_s=percentile(tpot, 99),
        itl_p50_s=percentile(itl, 50), itl_p99_s=percentile(itl, 99),
        link_bytes_per_token=link_bytes / output_tokens if link_bytes is not None and output_tokens else None,
        goodput_per_s=None if no_slo else per_s(sum(meets_slo(r, slo_tpot_s, slo_ttft_s) for r in done)),
        finished=len(done), unfinished=len(records) - len(done) - errors, errors=errors,
        output_tokens=output_tokens, duration_s=duration_s)
