"""One mode x phase cell of the experiment, as a plain class that pytest-benchmark drives:

    cell = Cell(cfg, backend, probe)
    benchmark.pedantic(cell.run_round, setup=cell.setup, teardown=cell.teardown,
                       rounds=cfg.rounds, warmup_rounds=cfg.warmup_rounds)
    cell.extra_info()   # per-round bytes, utilization, tokens ...

setup/teardown bracket every round (warm-ups too) with the probe, outside the timed region.
"""
from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field

from harness.engine import PhaseResult, run_phase
from harness.probe import ProbeReading, RoundProbe


@dataclass(frozen=True)
class CellConfig:
    mode: str
    phase: str
    steps: int
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

    def to_dict(self) -> dict:
        d = {"warmup": self.warmup} | self.result.to_dict() | asdict(self.probe)
        d.pop("mode"), d.pop("phase")
        return d


@dataclass
class Cell:
    cfg: CellConfig
    backend: object
    prompt: object                 # [1, T] int64
    probe: RoundProbe
    on_step: object = None         # progress callback(round_label, step, n_steps)
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
        self.records.append(RoundRecord(warmup, self._pending, reading))

    def _round_label(self) -> str:
        i = len(self.records)
        w = self.cfg.warmup_rounds
        return f"warm-up {i + 1}/{w}" if i < w else f"round {i - w + 1}/{self.cfg.rounds}"

    @property
    def measured(self) -> list[RoundRecord]:
        return [r for r in self.records if not r.warmup]

    def series(self, key: str) -> list:
        """One figure per measured round, from the result or the probe (None where absent)."""
        out = []
        for r in self.measured:
            src = r.result if hasattr(r.result, key) else r.probe
            out.append(getattr(src, key))
        return out

    def extra_info(self) -> dict:
        return {"mode": self.cfg.mode, "phase": self.cfg.phase, "steps": self.cfg.steps,
                "rounds": [r.to_dict() for r in self.records],
                "summary": summarise(self)}


def mean_std(values: list) -> tuple[float | None, float | None]:
    vals = [v for v in values if v is not None]
    if not vals:
        return None, None
    return statistics.fmean(vals), (statistics.stdev(vals) if len(vals) > 1 else 0.0)


def summarise(cell: Cell) -> dict:
    """Mean and std over measured rounds of the figures the plan's table reports."""
    out = {}
    for key in ("latency_s", "ttft_s", "tpot_s", "link_bytes", "pcap_bytes",
                "payload_tx_bytes", "payload_rx_bytes", "gpu_sm_pct"):
        m, s = mean_std(cell.series(key))
        out[key] = {"mean": m, "std": s}
    return out
