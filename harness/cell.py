"""One mode x phase cell of the experiment, as a plain class that pytest-benchmark drives:

    cell = Cell(cfg, backend, prompt, probe)
    benchmark.pedantic(cell.run_round, setup=cell.setup, teardown=cell.teardown,
                       rounds=cfg.rounds, warmup_rounds=cfg.warmup_rounds)
    cell.info()         # harness.measure.results.CellInfo: per-round bytes, utilization, tokens ...

setup/teardown bracket every round (warm-ups too) with the probe, outside the timed region.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Callable

import torch

from harness.compute.modes import MODES
from harness.compute.phase import Backend, PhaseResult, run_phase
from harness.measure.dissect import dissect
from harness.measure.hostload import LoadWindow
from harness.measure.probe import ProbeReading, RoundProbe, UtilWindow
from harness.measure.results import CellContext, CellInfo, CellSummary
from harness.measure.timeline import call_timeline
from harness.report.analysis import analyse_round

WINDOW_SAMPLES = 5  # dmon samples (1 s each) a cell's utilization figure averages at least
# Calls a stateless worker takes before its receive buffer stays put. Its second call's message
# lands beside the first's, not in it (later calls land at the first's address again); each new
# address is paged in and, on a GPU, staged and page-locked again, so a round measured before
# that has settled is several times slower than the rounds after it (docs/evidence.md).
SETTLE_CALLS = 2
# Rounds a stateful cell (local, sys_simulated) runs before the first measured one. Its second
# round is still slow: a fresh process's first local prefill is by far its slowest and its second
# is still slower than the rest, all of it inside the forward's GPU span
# (scripts/diagnose/prefill.py), and after one warm-up round every H200 run's first measured local
# prefill round was its slowest (docs/evidence.md).
SETTLE_ROUNDS = 2
@dataclass(frozen=True)
class CellConfig:
    mode: str
    phase: str
    steps: int
    model: str
    dtype: str
    rounds: int = 3
    warmup_rounds: int = 1

    @property
    def name(self) -> str:
        return f"{self.phase}-{self.mode}"


def warmup_rounds(mode: str, phase: str, steps: int, requested: int) -> int:
    """The warm-up rounds a cell runs: those asked for, at least SETTLE_ROUNDS for a stateful mode,
    and for the stateless mode at least enough that SETTLE_CALLS calls precede the first measured
    one (a prefill round is one call)."""
    if not MODES[mode].stateless:
        return max(requested, SETTLE_ROUNDS)
    calls = 1 + (steps if phase == "decode" else 0)
    return max(requested, -(-SETTLE_CALLS // calls))


@dataclass
class RoundRecord:
    warmup: bool
    result: PhaseResult
    probe: ProbeReading
    timeline: dict | None = None   # harness.measure.timeline parts summed over the round's calls
    analysis_s: float | None = None  # reading the capture + placing the calls on the timeline
    dissection: dict | None = None  # harness.measure.dissect.Dissection of this round's capture
    timed: bool = True             # False: the capture round of a mode timed without one

    def to_dict(self) -> dict:
        d = ({"warmup": self.warmup, "timed": self.timed, "timeline": self.timeline, "analysis_s": self.analysis_s,
              "dissection": self.dissection}
             | self.result.to_dict() | asdict(self.probe))
        d.pop("mode"), d.pop("phase")
        return d


@dataclass
class Cell:
    cfg: CellConfig
    backend: Backend
    prompt: torch.Tensor           # [batch, T] int64, on the CPU
    probe: RoundProbe
    on_step: Callable[[str, int, int], None] | None = None  # progress: (round label, step, steps)
    context: CellContext | None = None
    records: list[RoundRecord] = field(default_factory=list)
    window: UtilWindow | None = None  # utilization over back-to-back runs (measure_utilization)
    host: LoadWindow | None = None    # the host's load from the first round on
    _pending: PhaseResult | None = None

    def setup(self, capture: bool | None = None):
        self._pending = None
        self.host = self.host or LoadWindow().start()
        self.probe.start(MODES[self.cfg.mode].captured_while_timed if capture is None else capture)
        return (), {}

    def run_round(self) -> None:
        label = self._round_label()
        hook = (lambda i, n: self.on_step(label, i, n)) if self.on_step else None
        self._pending = run_phase(self.backend, self.prompt, self.cfg.phase, self.cfg.steps, hook,
                                  end_session=False)

    def teardown(self, timed: bool = True) -> None:
        self.backend.end()  # the release call: in the round's bytes, outside pytest-benchmark's timer
        reading = self.probe.stop()
        warmup = len(self.records) < self.cfg.warmup_rounds
        t0 = time.perf_counter()
        timeline = call_timeline(self._pending.call_stamps, self.probe.packets, reading.clock_offset_s)
        analysis_s = None if reading.pcap_read_s is None else reading.pcap_read_s + time.perf_counter() - t0
        self.records.append(RoundRecord(warmup, self._pending, reading, timeline, analysis_s, timed=timed))

    def capture_round(self) -> None:
        """For a mode timed without tcpdump (harness.compute.modes.Mode.captured_while_timed): one
        more round, with it, after the timed ones; the packet-level figures (time breakdown, pcap
        bytes, dissection) come from it, latency and counters from the timed rounds."""
        if MODES[self.cfg.mode].captured_while_timed or not self.probe.capture_on:
            return
        self.round(capture=True, timed=False)

    def round(self, capture: bool | None = None, timed: bool = True) -> RoundRecord:
        """One round outside pytest-benchmark (controls, the capture round): probe, phase, record."""
        self.setup(capture)
        self.run_round()
        self.teardown(timed)
        return self.records[-1]

    def _round_label(self) -> str:
        i = len(self.records)
        w = self.cfg.warmup_rounds
        if i >= w + self.cfg.rounds:
            return "capture round"
        return f"warm-up {i + 1}/{w}" if i < w else f"round {i - w + 1}/{self.cfg.rounds}"

    def measure_utilization(self, samples: int = WINDOW_SAMPLES) -> None:
        """Where a measured round holds fewer than `samples` dmon samples, run the phase back to
        back under dmon until the window holds that many: every cell gets a dmon figure on a GPU.
        samples 0: no window (--gap-util-samples 0)."""
        if samples == 0 or min(r.probe.dmon_samples for r in self.measured) >= samples:
            return
        # + 2.5 s: the window's first and last dmon samples straddle its edges and are left out
        self.window = self.probe.window(
            lambda: run_phase(self.backend, self.prompt, self.cfg.phase, self.cfg.steps), samples + 2.5)

    def dissect(self) -> None:
        """Wireshark's TCP analysis of the last measured round's capture (harness.measure.dissect:
        retransmissions, zero windows, duplicate ACKs, bytes per lane), into that round's record.
        Where tshark is missing (a GPU host without a registry) the record says so."""
        captured = [r for r in self.records if not r.warmup and r.probe.pcap_bytes is not None]
        last = captured[-1] if captured else None
        if last is None or not self.probe.last_pcap.exists():
            return
        link = self.probe.link
        try:
            last.dissection = asdict(dissect(self.probe.last_pcap, link.client_addr, link.gpu_addr))
        except RuntimeError as e:  # a tool missing: say so in the result, never silently
            last.dissection = {"error": str(e)}

    def info(self) -> CellInfo:
        """Every round (warm-ups marked) and the measured rounds' summary."""
        rounds = [r.to_dict() for r in self.records]
        if self.context:
            for r in rounds:
                r["analysis"] = analyse_round(r, self.context)
        load = self.backend.load
        window = None if self.window is None else asdict(self.window)
        timed = [r for r in rounds if not r["warmup"] and r["timed"]]
        captured = [r for r in rounds if not r["timed"]]
        return CellInfo(self.cfg.mode, self.cfg.phase, self.cfg.steps, self.cfg.model, self.cfg.dtype,
                        self.probe.link.label, rounds, CellSummary.of(timed, window, captured or None),
                        None if load is None else asdict(load), self.host and self.host.stop().to_dict())

    @property
    def measured(self) -> list[RoundRecord]:
        """The timed rounds (not warm-ups, not a capture round)."""
        return [r for r in self.records if not r.warmup and r.timed]
