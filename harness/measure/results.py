"""Typed results, from the cell to the report: one `CellInfo` per mode x phase cell, holding its
per-round records and a `CellSummary` of mean ± std over the measured rounds.

The cell builds them, `CellInfo.to_dict()` turns them into pytest-benchmark's `extra_info` once,
and the report reads them back with `CellInfo.from_dict()`, which fails on a missing field (naming
it) instead of printing "n/a" for a key that was renamed.
"""
from __future__ import annotations

import dataclasses
import json
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path

from harness.measure.payload import HEADER_BYTES, Payload, Shape


@dataclass(frozen=True)
class CellContext:
    payload: Payload                 # analytic, one round
    per_message_bytes: float         # RPC framing per round trip, measured on no-ops
    iperf_gbps: float | None         # the link's goodput, same session
    shape: Shape                     # weights tied-once and as listed, KV and logits sizes
    header_B: int = HEADER_BYTES     # a packet's headers as the link counts them


@dataclass(frozen=True)
class Stat:
    """Mean and sample std of the values that exist; n says how many that was."""
    mean: float | None
    std: float | None
    n: int

    @classmethod
    def of(cls, values) -> "Stat":
        vals = [v for v in values if v is not None]
        if not vals:
            return cls(None, None, 0)
        return cls(statistics.fmean(vals), statistics.stdev(vals) if len(vals) > 1 else 0.0, len(vals))


# figures read from each measured round's record (the phase result and the probe) ...
ROUND_STATS = ("latency_s", "ttft_s", "tpot_s", "link_bytes", "pcap_bytes", "payload_tx_bytes",
               "payload_rx_bytes", "gpu_sm_pct")
# ... and from each measured round's analysis (harness.report.analysis.analyse_round)
ANALYSIS_STATS = ("closure_error", "util_dmon_sm_pct", "util_nvml_pct", "util_gpu_span_fraction", "wire_gbps",
                  "wire_vs_iperf", "wire_only_gbps", "analysis_share", "time_parts_sum_ratio",
                  "unattributed_s", "sm_clock_mhz")
# the figures that need the round's capture: from the capture round where the mode has one
# (harness.compute.modes.Mode.captured_while_timed), with the time breakdown and the dissection
FROM_CAPTURE = ("pcap_bytes", "wire_only_gbps", "analysis_share", "time_parts_sum_ratio", "unattributed_s")


@dataclass(frozen=True)
class CellSummary:
    latency_s: Stat
    ttft_s: Stat
    tpot_s: Stat
    link_bytes: Stat            # kernel counters, both directions
    pcap_bytes: Stat
    payload_tx_bytes: Stat      # counted from the tensors sent
    payload_rx_bytes: Stat
    gpu_sm_pct: Stat            # dmon's sm over every round that has samples
    closure_error: Stat
    util_dmon_sm_pct: Stat      # dmon's sm over rounds at least one dmon period long
    util_nvml_pct: Stat
    util_gpu_span_fraction: Stat  # forwards' CUDA-event span over the round's wall time
    wire_gbps: Stat
    wire_vs_iperf: Stat
    wire_only_gbps: Stat
    analysis_share: Stat
    time_parts_sum_ratio: Stat
    unattributed_s: Stat
    analytic_bytes: int | None          # the payload model's bytes of one round, both ways
    closure_verdicts: list[str]
    util_dmon_note: str | None          # why util_dmon_sm_pct has no value, where it has none
    time: dict[str, float | None]       # mean seconds per part (harness.report.analysis.TIME_PARTS)
    time_complete: bool                 # every part measured in every round
    window: dict | None = None          # harness.measure.probe.UtilWindow, where rounds were too short for dmon
    dissection: dict | None = None      # harness.measure.dissect.Dissection of the last measured round
    sm_clock_mhz: Stat = Stat(None, None, 0)  # NVML's SM clock over the rounds (older runs: none)

    @property
    def sm_pct(self) -> tuple[float | None, str]:
        """The cell's dmon SM% and what it averages: the window's where one ran, else the rounds'."""
        if self.window and self.window["dmon_samples"]:
            w = self.window
            return w["dmon_sm_pct"], f"{w['dmon_samples']} samples over {w['runs']} runs back to back"
        s = self.util_dmon_sm_pct
        return s.mean, f"{s.n}/{self.latency_s.n} rounds"

    @classmethod
    def of(cls, measured: list[dict], window: dict | None = None, captured: list[dict] | None = None) -> "CellSummary":
        """measured: the timed rounds' records (RoundRecord.to_dict(), with "analysis" where a
        payload model was given); window: a UtilWindow as a dict, where one ran; captured: the
        capture round of a mode timed without tcpdump, for the FROM_CAPTURE figures (by default
        the timed rounds, which then had it)."""
        captured = measured if captured is None else captured
        analysed = [r["analysis"] for r in measured if "analysis" in r]
        from_capture = [r["analysis"] for r in captured if "analysis" in r]
        stats = {k: Stat.of([_round_figure(r, k) for r in (captured if k in FROM_CAPTURE else measured)])
                 for k in ROUND_STATS}
        stats |= {k: Stat.of([a[k] for a in (from_capture if k in FROM_CAPTURE else analysed)])
                  for k in ANALYSIS_STATS}
        first = analysed[0] if analysed else None
        return cls(**stats,
                   analytic_bytes=first and first["analytic_tx_bytes"] + first["analytic_rx_bytes"],
                   closure_verdicts=sorted({a["closure_verdict"] for a in analysed}),
                   util_dmon_note=next((a["util_dmon_note"] for a in analysed if a["util_dmon_note"]), None),
                   time={k: Stat.of([a["time"][k] for a in from_capture]).mean
                         for k in (from_capture[0]["time"] if from_capture else {})},
                   time_complete=bool(from_capture) and all(a["time_complete"] for a in from_capture),
                   window=window, dissection=captured[-1].get("dissection") if captured else None)

    @classmethod
    def from_dict(cls, d: dict) -> "CellSummary":
        missing = [f.name for f in dataclasses.fields(cls) if f.name not in d and f.default is dataclasses.MISSING]
        if missing:
            raise ValueError(f"cell summary lacks {', '.join(missing)}: written by another version of the "
                             "suite; re-run it with this one")
        try:
            return cls(**{f.name: Stat(**d[f.name]) if f.type == "Stat" else d[f.name]
                          for f in dataclasses.fields(cls) if f.name in d})
        except TypeError as e:  # a Stat of another shape (no n, say)
            raise ValueError(f"cell summary unreadable ({e}): written by another version of the suite; "
                             "re-run it with this one") from None


# what each session of a cell contributes to the spread over sessions: its measured rounds' means
SESSION_STATS = ("latency_s", "ttft_s", "tpot_s", "link_bytes")


def session_figures(summary: CellSummary) -> dict:
    """One session's figures of a cell, for CellInfo.sessions: the means of its measured rounds."""
    return {k: getattr(summary, k).mean for k in SESSION_STATS} | {"rounds": summary.latency_s.n}


def _round_figure(r: dict, key: str):
    return r["link_tx_bytes"] + r["link_rx_bytes"] if key == "link_bytes" else r[key]


@dataclass
class CellInfo:
    """One cell's whole result: what ran, every round, and their summary."""
    mode: str
    phase: str
    steps: int
    model: str
    dtype: str
    link: str
    rounds: list[dict]                  # RoundRecord.to_dict() per round, warm-ups included
    summary: CellSummary
    weight_load: dict | None = None     # sys_simulated's one-time load (harness.compute.modes.WeightLoad)
    host_load: dict | None = None       # the client host's load over the cell (harness.measure.hostload)
    sessions: list[dict] | None = None  # --gap-sessions N > 1: session_figures() of each session, this one first

    @property
    def name(self) -> str:
        return f"{self.phase}-{self.mode}"

    @property
    def measured(self) -> list[dict]:
        """The timed rounds: not warm-ups, not a capture round (older results have no "timed")."""
        return [r for r in self.rounds if not r["warmup"] and r.get("timed", True)]

    def to_dict(self) -> dict:
        return asdict(self)

    def across_sessions(self, key: str) -> Stat | None:
        """Mean and std of the sessions' own means of `key` (SESSION_STATS); None for one session."""
        if not self.sessions or len(self.sessions) < 2:
            return None
        return Stat.of([s[key] for s in self.sessions])

    @classmethod
    def from_dict(cls, d: dict) -> "CellInfo":
        missing = [f.name for f in dataclasses.fields(cls) if f.name not in d and f.default is dataclasses.MISSING
                   and f.default_factory is dataclasses.MISSING]
        if missing:
            raise ValueError(f"cell result lacks {', '.join(missing)}: written by another version of the "
                             "suite; re-run it with this one")
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in known} | {"summary": CellSummary.from_dict(d["summary"])})


CONTROL_TESTS = {"test_local_loop_vs_generate": "local_vs_generate", "test_capture_overhead": "capture_overhead",
                 "test_serialisation_alone": "serialisation", "test_control_rpc_noop": "rpc_noop",
                 "test_control_local_step_after_gap": "local_gap", "test_capture_cost_per_step": "capture_step_cost",
                 "test_control_step_io": "step_io"}


def load_infos(path: Path) -> tuple[list[CellInfo], dict, dict]:
    """(the cells, the harness checks' extra_info by name, the environment: machine_info's
    semantic_gap, with the link check, copy rates and RPC channel) from a JSON."""
    data = json.loads(Path(path).read_text())
    benches = data.get("benchmarks", [])
    infos = [CellInfo.from_dict(b["extra_info"]) for b in benches if "summary" in b.get("extra_info", {})]
    if not infos:
        raise ValueError(f"{path}: no semantic-gap cells in it (was it written by `pytest benchmarks "
                         "--benchmark-json=...`?)")
    controls = {CONTROL_TESTS[b["name"]]: b["extra_info"] for b in benches if b["name"] in CONTROL_TESTS}
    return infos, controls, data.get("machine_info", {}).get("semantic_gap", {})


SWEEP_INDEX = "sweep.json"  # in a sweep's folder: every invocation's command line and what each point did


def point_files(out: Path) -> list[Path]:
    """The measured points' pytest-benchmark JSON in a sweep's folder: not the index, a failed
    point's record or a run under way (.NAME.partial.json)."""
    return sorted(f for f in out.glob("*.json") if f.name != SWEEP_INDEX and not f.name.startswith(".")
                  and not f.name.endswith((".failure.json", ".failed-run.json")))
