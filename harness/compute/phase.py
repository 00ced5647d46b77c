"""One measured phase on any backend: prefill alone, or prefill then `steps` decode steps.

Decode is prefill + steps forward passes: prefill yields the first generated token and each step
one more, so a decode phase generates steps + 1 tokens (generate(max_new_tokens=steps + 1)) and
the naive mode ships the weights steps + 1 times.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Callable, Protocol

import torch

if TYPE_CHECKING:
    from harness.compute.modes import Tally


PHASES = ("prefill", "decode")


@dataclass
class PhaseResult:
    mode: str
    phase: str
    tokens: list                # a sequence's tokens; with a batch, one list per sequence
    latency_s: float            # the whole measured phase (prefill + steps for decode)
    ttft_s: float               # time to first token: the prefill call
    step_times_s: list[float]   # decode steps only
    payload_tx_bytes: int
    payload_rx_bytes: int
    calls: int = 0              # forward passes (RPC round trips in remote modes)
    rpc_s: float = 0.0          # client time inside RPC calls
    server_s: dict = field(default_factory=dict)
    call_stamps: list = field(default_factory=list)  # per RPC call: (sent, entered, left, returned)
    client_s: float = 0.0       # the client's own work between forwards

    @property
    def tpot_s(self) -> float | None:
        """Time per output token after the first (decode only)."""
        return sum(self.step_times_s) / len(self.step_times_s) if self.step_times_s else None

    def to_dict(self) -> dict:
        return asdict(self) | {"tpot_s": self.tpot_s}


def by_sequence(steps: list[list[int]]) -> list[int] | list[list[int]]:
    """Per-step tokens [step][sequence] -> each sequence's tokens; a batch of one as a plain list."""
    seqs = [list(s) for s in zip(*steps)]
    return seqs[0] if len(seqs) == 1 else seqs


class Backend(Protocol):
    """What run_phase drives: a mode's client side (harness.compute.modes). One that has
    run_phase_remote(prompt, phase, steps) runs whole phases where the model is (HostLocalBackend):
    run_phase hands the phase over, and no on_step is called."""
    mode: str
    tally: "Tally"
    load: object  # the one-time weight load a mode pays apart (WeightLoad), or None

    # steps: the decode steps that will follow (the request's max_new_tokens)
    def prefill(self, ids: torch.Tensor, steps: int = 0) -> list[int]: ...

    def step(self, tokens: list[int]) -> list[int]: ...

    def end(self) -> None: ...


@dataclass(frozen=True)
class Counters:
    """A Tally's running counters at one moment, so that a phase's are the difference of two."""
    tx_bytes: int
    rx_bytes: int
    server_s: dict
    calls: int
    rpc_s: float
    stamps: int
    client_s: float

    @classmethod
    def of(cls, t: "Tally") -> "Counters":
        return cls(t.payload_tx_bytes, t.payload_rx_bytes, dict(t.server_s), t.calls, t.rpc_s, len(t.stamps),
                   t.client_s)


def run_phase(backend: Backend, prompt: torch.Tensor, phase: str, steps: int,
              on_step: Callable[[int, int], None] | None = None, end_session: bool = True) -> PhaseResult:
    """prompt: [batch, T] int64 on the CPU (batch sequences decoded together). on_step(i, n) is
    called after each forward (progress).
    end_session=False leaves backend.end() (releasing the worker's cache) to the caller, so that a
    timer around this call (pytest-benchmark's) times the phase alone."""
    assert phase in PHASES, f"phase must be one of {PHASES}, got {phase!r}"
    whole = getattr(backend, "run_phase_remote", None)
    if whole is not None:  # a backend that runs the phase where the model is (HostLocalBackend)
        return whole(prompt, phase, steps)
    n_steps = steps if phase == "decode" else 0
    t = backend.tally
    start = Counters.of(t)
    # client_s: the client's own work between forwards (progress here, the next token and its
    # tensor inside the backend), timed apart so the time breakdown need not take it as "the rest"
    t0 = time.perf_counter()
    tokens = [backend.prefill(prompt, n_steps)]  # per step, one token per sequence
    mark = time.perf_counter()
    ttft = mark - t0
    step_times = []
    if on_step:
        on_step(0, n_steps)
    client_s = time.perf_counter() - mark
    for i in range(n_steps):
        ts = time.perf_counter()
        tokens.append(backend.step(tokens[-1]))
        back = time.perf_counter()
        step_times.append(back - ts)
        if on_step:
            on_step(i + 1, n_steps)
        client_s += time.perf_counter() - back
    latency = time.perf_counter() - t0
    if end_session:
        backend.end()  # after latency was taken: releasing a cache is session teardown
    end = Counters.of(t)
    server = {k: v - start.server_s.get(k, 0.0) for k, v in end.server_s.items()}
    return PhaseResult(backend.mode, phase, by_sequence(tokens), latency, ttft, step_times,
                       end.tx_bytes - start.tx_bytes, end.rx_bytes - start.rx_bytes, end.calls - start.calls,
                       end.rpc_s - start.rpc_s, server, t.stamps[start.stamps:],
                       client_s + end.client_s - start.client_s)
