"""Every target the harness holds a figure of its own to, judged on the figure's interval.

A verdict passes where the whole interval meets the target, fails where the whole interval lies
past it, and is inconclusive where the interval straddles it: a strict run fails only on a fail,
so that noise around a target never decides a run. An inconclusive verdict warns, with the
numbers; a control that can take more samples takes them first, up to a cap
(benchmarks/test_harness.py). The interval is the bootstrap's (LEVEL) of the figure's statistic
over its samples: rounds, or pairs of alternating rounds; with few samples it is wide, and says so.

The targets: the probe's cost (latency with the probe on over off), the local loop against
generate(), sys_simulated's time per token beyond local's against one empty round trip, and every
measured figure at or above its physical floor (FLOOR_MIN: under it the floor's inputs were wrong,
not the physics).
"""
from __future__ import annotations

import random
import statistics
from dataclasses import dataclass
from typing import Callable, Sequence

from harness.report.floors import cell_floors, overlapped_s

PASS, FAIL, INCONCLUSIVE = "pass", "fail", "inconclusive"
LEVEL = 0.95
RESAMPLES = 2000
PROBE_OVERHEAD_MAX = 1.02   # latency with the probe on over off
LOOP_OVER_GENERATE_MAX = 1.05  # the local loop's time per token over generate()'s
TPOT_SLACK_S = 0.5e-3       # what the semantic design may cost a token beyond one round trip
FLOOR_MIN = 0.95            # a measured figure over its floor


@dataclass(frozen=True)
class Verdict:
    check: str
    figure: float
    low: float
    high: float
    target: float
    at_most: bool = True     # the target bounds the figure from above (else from below)
    scale: float = 1.0       # printed as value x scale, with unit
    unit: str = ""
    samples: int = 0

    def _past(self, v: float) -> bool:
        return v > self.target if self.at_most else v < self.target

    @property
    def outcome(self) -> str:
        if self._past(self.low) and self._past(self.high):
            return FAIL
        return INCONCLUSIVE if self._past(self.low) or self._past(self.high) else PASS

    def _fmt(self, v: float) -> str:
        return f"{v * self.scale:.3f}{self.unit}"

    @property
    def interval(self) -> str:
        return f"{LEVEL:.0%} interval {self._fmt(self.low)}-{self._fmt(self.high)}, {self.samples} samples"

    @property
    def bound(self) -> str:
        return f"{'<=' if self.at_most else '>='} {self._fmt(self.target)}"

    def sentence(self) -> str:
        return f"{self.check}: {self._fmt(self.figure)} ({self.interval}) against {self.bound}: {self.outcome}"


def interval(samples: Sequence[float], stat: Callable = statistics.median, other: Sequence[float] | None = None,
             combine: Callable | None = None, seed: int = 0) -> tuple[float, float]:
    """The LEVEL bootstrap interval of stat(samples), or, with other, of combine(stat(samples),
    stat(other)) for two independent samples. Seeded: a report regenerates the same."""
    rng = random.Random(seed)
    values = []
    for _ in range(RESAMPLES):
        v = stat(rng.choices(samples, k=len(samples)))
        if other is not None:
            v = combine(v, stat(rng.choices(other, k=len(other))))
        values.append(v)
    values.sort()
    tail = int((1 - LEVEL) / 2 * RESAMPLES)
    return values[tail], values[RESAMPLES - 1 - tail]


def split(verdicts: list[Verdict]) -> tuple[list[str], list[str]]:
    """(failures, warnings): the failed verdicts' sentences, and the inconclusive ones'."""
    return ([v.sentence() for v in verdicts if v.outcome == FAIL],
            [v.sentence() for v in verdicts if v.outcome == INCONCLUSIVE])


def probe_overhead(pairs: Sequence[float]) -> Verdict:
    """pairs: latency with the probe on over off, one per alternating pair of rounds."""
    low, high = interval(pairs)
    return Verdict("the probe (tcpdump, dmon, NVML) on naive prefill rounds, latency on ÷ off",
                   statistics.median(pairs), low, high, PROBE_OVERHEAD_MAX, scale=1.0, unit="x", samples=len(pairs))


def loop_vs_generate(loop_s: Sequence[float], generate_s: Sequence[float], peer: str = "generate()") -> Verdict:
    """The local loop's time per token over generate()'s, ratio of medians over their repeats."""
    ratio = lambda a, b: a / b
    low, high = interval(loop_s, other=generate_s, combine=ratio)
    return Verdict(f"local loop ÷ {peer}, time per token", statistics.median(loop_s) / statistics.median(generate_s),
                   low, high, LOOP_OVER_GENERATE_MAX, unit="x", samples=min(len(loop_s), len(generate_s)))


def tpot_over_rtt(local_s: Sequence[float], sys_s: Sequence[float], rtt_s: float) -> Verdict:
    """sys_simulated's time per output token less local's (means over their rounds) against one
    back-to-back empty round trip + TPOT_SLACK_S."""
    low, high = interval(sys_s, statistics.mean, local_s, lambda s, l: s - l)
    return Verdict("sys_simulated TPOT − local TPOT", statistics.mean(sys_s) - statistics.mean(local_s), low, high,
                   rtt_s + TPOT_SLACK_S, scale=1e3, unit=" ms", samples=min(len(local_s), len(sys_s)))


def over_floor(what: str, measured_s: Sequence[float], floor_s: float, floor: str = "its floor") -> Verdict:
    """A measured time (its rounds' mean) over its physical floor, at least FLOOR_MIN."""
    low, high = interval(measured_s, statistics.mean)
    return Verdict(f"{what} ÷ {floor} ({floor_s * 1e3:.3f} ms)", statistics.mean(measured_s) / floor_s,
                   low / floor_s, high / floor_s, FLOOR_MIN, at_most=False, unit="x", samples=len(measured_s))


def peer_name(base: dict) -> str:
    """What the local loop was compared with (harness.compute.baseline.compare's result)."""
    return "compiled static-cache generate()" if base.get("generate_compiled") else "generate()"


def of_controls(controls: dict) -> list[Verdict]:
    """The verdicts of the harness's own controls (benchmarks/test_harness.py), where they ran."""
    out = []
    cap = controls.get("capture_overhead")
    if cap and cap.get("latency_on_s"):
        out.append(probe_overhead([a / b for a, b in zip(cap["latency_on_s"], cap["latency_off_s"])]))
    base = controls.get("local_vs_generate")
    if base and base.get("tpot_generate_all_s"):
        out.append(loop_vs_generate(base["tpot_loop_all_s"], base["tpot_generate_all_s"], peer_name(base)))
    return out


def across_cells(infos, controls: dict, env: dict) -> list[Verdict]:
    """The verdicts that take several cells and the empty RPC: time per token beyond local's,
    and every cell's latency and the decode cells' TPOT over their floors."""
    by = {(i.phase, i.mode): i for i in infos}
    tpots = lambda info: [r["tpot_s"] for r in info.measured if r.get("tpot_s")] if info else []
    local, aware, noop = tpots(by.get(("decode", "local"))), tpots(by.get(("decode", "sys_simulated"))), controls.get("rpc_noop")
    out = [tpot_over_rtt(local, aware, noop["rtt_s"])] if local and aware and noop else []
    for info, parts in cell_floors(infos, controls, env):
        out.append(over_floor(f"{info.name} latency", [r["latency_s"] for r in info.measured], overlapped_s(parts),
                              "its overlapped floor"))
    memory = env.get("memory_floor")
    for mode, rounds in (("local", local), ("sys_simulated", aware)):
        if memory and rounds:
            out.append(over_floor(f"decode-{mode} TPOT", rounds, memory["floor_s"], "the GPU's memory floor"))
    return out


def of_run(infos, controls: dict, env: dict) -> list[Verdict]:
    return of_controls(controls) + across_cells(infos, controls, env)


VERDICT_COLUMNS = ["Target", "Figure", "Interval", "Bound", "Verdict"]


def verdict_rows(verdicts: list[Verdict]) -> list[dict]:
    return [{"Target": v.check, "Figure": v._fmt(v.figure), "Interval": v.interval, "Bound": v.bound,
             "Verdict": v.outcome} for v in verdicts]
