"""One mode x phase cell of the experiment, as a plain class that pytest-benchmark drives:

    cell = Cell(cfg, backend, probe)
    benchmark.pedantic(cell.run_round, setup=cell.setup, teardown=cell.teardown,
                       rounds=cfg.rounds, warmup_rounds=cfg.warmup_rounds)
    cell.info()         # harness.report.summary.CellInfo: per-round bytes, utilization, tokens ...

setup/teardown bracket every round (warm-ups too) with the probe, outside the timed region.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field

from harness.compute.phase import PhaseResult, run_phase
from harness.measure.probe import ProbeReading, RoundProbe
from harness.measure.timeline import call_timeline
from harness.report.analysis import CellContext, analyse_round
from harness.report.summary import CellInfo, CellSummary


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


@dataclass
class RoundRecord:
    warmup: bool
    result: PhaseResult
    probe: ProbeReading
    timeline: dict | None = None   # harness.measure.timeline parts summed over the round's calls
    analysis_s: float | None = None  # reading the capture + placing the calls on the timeline

    def to_dict(self) -> dict:
        d = ({"warmup": self.warmup, "timeline": self.timeline, "analysis_s": self.analysis_s}
             | self.result.to_dict() | asdict(self.probe))
        d.pop("mode"), d.pop("phase")
        return d


@dataclass
class Cell:
    cfg: CellConfig
    backend: object
    prompt: object                 # [1, T] int64
    probe: RoundProbe
    on_step: object = None         # progress callback(round_label, step, n_steps)
    context: CellContext | None = None
    records: list[RoundRecord] = field(default_factory=list)
    _pending: PhaseResult | None = None

    def setup(self):
        self._pending = None
        self.probe.start()
        return (), {}

    def run_round(self) -> None:
        label = self._round_label()
        hook = (lambda i, n: self.on_step(label, i, n)) if self.on_step else None
        self._pending = run_phase(self.backend, self.prompt, self.cfg.phase, self.cfg.steps, hook)

    def teardown(self) -> None:
        reading = self.probe.stop()
        warmup = len(self.records) < self.cfg.warmup_rounds
        t0 = time.perf_counter()
        timeline = call_timeline(self._pending.call_stamps, self.probe.packets, reading.clock_offset_s)
        analysis_s = None if reading.pcap_read_s is None else reading.pcap_read_s + time.perf_counter() - t0
        self.records.append(RoundRecord(warmup, self._pending, reading, timeline, analysis_s))

    def _round_label(self) -> str:
        i = len(self.records)
        w = self.cfg.warmup_rounds
        return f"warm-up {i + 1}/{w}" if i < w else f"round {i - w + 1}/{self.cfg.rounds}"

    def info(self) -> CellInfo:
        """Every round (warm-ups marked) and the measured rounds' summary."""
        rounds = [r.to_dict() for r in self.records]
        if self.context:
            for r in rounds:
                r["analysis"] = analyse_round(r, self.context)
        load = self.backend.load
        return CellInfo(self.cfg.mode, self.cfg.phase, self.cfg.steps, self.cfg.model, self.cfg.dtype,
                        self.probe.link.label, rounds, CellSummary.of([r for r in rounds if not r["warmup"]]),
                        None if load is None else asdict(load))

    @property
    def measured(self) -> list[RoundRecord]:
        return [r for r in self.records if not r.warmup]
