"""Points: what a cell ran on (Link, Run) and what was measured (Measured), and reading them from
calibration and sweep JSONs (load_points, load_all). See harness.predict.costmodel."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from harness.compute.modes import MODES
from harness.measure.payload import HEADER_BYTES, Shape, header_bytes
from harness.report import committed

# --- points: what a cell ran on, and what was measured -------------------------------------------------

@dataclass(frozen=True)
class Link:
    goodput_Bps: float              # TCP goodput, as many streams as the RPC channel's lanes
    rtt_s: float = 0.0              # propagation round trip the link adds (netem), not software's
    segment_B: float | None = None  # TCP payload per counted packet; None: as calibrated
    nominal_gbps: float | None = None
    label: str = ""
    empty_call_B: float | None = None  # an empty RPC's wire bytes both ways on this link, headers and
                                       # ACKs included (the run's own control); None: not measured
    header_B: float = HEADER_BYTES     # a packet's headers as this link's counters count them (a TUN: 52)

    @property
    def header_scale(self) -> float:
        """This link's bytes of a header-only packet (an ACK) per an Ethernet link's."""
        return self.header_B / HEADER_BYTES


@dataclass(frozen=True)
class Run:
    """What one calibration JSON says about its testbed (machine_info.semantic_gap, the controls)."""
    path: str
    gpu: str | None
    device: str
    engine: str | None
    noop_rtt_s: float | None          # the empty RPC's round trip (test_control_rpc_noop)
    pinned_h2d_Bps: float | None
    pinned_d2h_Bps: float | None


@dataclass(frozen=True)
class Measured:
    latency_s: float
    bytes: float                    # link counters, both directions, mean over measured rounds
    payload_bytes: float            # counted from the tensors sent
    compute_s: float | None         # server_compute_s
    load_s: float | None            # server_load_s + server_h2d_s (naive's landing of what it receives)
    d2h_s: float | None             # server_d2h_s
    wire_s: float | None            # wire_tx_s + wire_rx_s (packet times)
    step_s: tuple = ()              # decode: per-step wall time, mean over measured rounds
    gpu_sm_pct: float | None = None  # what the plan's table shows (dmon)
    span_fraction: float | None = None  # forwards' CUDA-event span / wall
    weight_load_s: float | None = None  # sys_simulated's one-time load (CellInfo.weight_load), apart
    weight_load_bytes: float | None = None
    latency_se_s: float | None = None  # standard error of latency_s (std / sqrt(rounds)); None: one round
    bytes_se: float | None = None      # standard error of bytes: its rounds differ by a few packets of ACKs


@dataclass(frozen=True)
class Point:
    model: str
    dtype: str
    shape: Shape
    mode: str
    phase: str
    prompt_len: int
    steps: int
    link: Link
    batch: int = 1
    measured: Measured | None = None
    run: Run | None = None

    @property
    def key(self) -> str:
        """Which compute fit serves this point: the model, its dtype (and batch, where not 1)."""
        return f"{self.model}/{self.dtype}" + (f"/b{self.batch}" if self.batch != 1 else "")

    @property
    def label(self) -> str:
        rtt = f", RTT {self.link.rtt_s * 1e3:g} ms" if self.link.rtt_s else ""
        rate = f"{self.link.nominal_gbps:g} Gbit/s" if self.link.nominal_gbps else "unshaped"
        return f"{self.model} P={self.prompt_len} {rate}{rtt} {self.phase}-{self.mode}"

    def calls(self) -> list[tuple[int, int]]:
        """(cache length before the call, new tokens) per forward, as payload_model counts them."""
        return [(0, self.prompt_len)] + ([(self.prompt_len + j, 1) for j in range(self.steps)]
                                         if self.phase == "decode" else [])


# --- reading calibration and sweep JSONs ----------------------------------------------------------------

def link_of(env: dict) -> Link:
    """The point's link from machine_info.semantic_gap as the suite writes it (fixtures/testbed.py's
    link_check, harness.report.environment): goodput = iperf3 with as many streams as the RPC
    channel has lanes; the rate the link was shaped to, else the rate stated for a real link; the
    round trip added to the link (link_rtt_ms: 0 or None where none was)."""
    from harness.measure.iperf import iperf_for_channel, run_channel
    check = env.get("link_check") or {}
    gbps = iperf_for_channel(check, run_channel(env))
    if not gbps:
        raise ValueError("no iperf3 figure with the RPC channel's lanes in link_check: the link's rate is unknown")
    # type None -> Ethernet's header: runs made before the type was recorded, all over veths
    # (results/h200/*-100gbit, llama-8b-nic25; sets removed since, read as COMMIT:PATH)
    kind = (env.get("client_link") or {}).get("type")
    return Link(goodput_Bps=gbps * 1e9 / 8, rtt_s=(env.get("link_rtt_ms") or 0.0) / 1e3,
                nominal_gbps=check.get("shaped_gbps") or check.get("nominal_gbps"), label=str(env.get("link") or ""),
                empty_call_B=env.get("rpc_noop_wire_bytes_per_call"), header_B=header_bytes(kind))


_SHAPES: dict = {}


def shape_for(model: str, dtype: str) -> Shape:
    """payload_model.shape_of for a preset (or local model directory), on the meta device: no weights."""
    if (model, dtype) not in _SHAPES:
        from harness.compute.models import ModelSpec, load_config
        from harness.measure.payload import shape_of
        spec = ModelSpec(model, dtype)
        _SHAPES[model, dtype] = shape_of(load_config(spec), spec.torch_dtype)
    return _SHAPES[model, dtype]


def _mean_steps(info) -> tuple:
    steps = [r.get("step_times_s") or [] for r in info.measured]
    n = min((len(s) for s in steps), default=0)
    return tuple(sum(s[i] for s in steps) / len(steps) for i in range(n)) if n else ()


def _se(stat) -> float | None:
    """Standard error of a summary statistic's mean over its rounds; None under two rounds."""
    return stat.std / stat.n ** 0.5 if stat.n and stat.n > 1 and stat.std is not None else None


def load_points(path: Path | str) -> list[Point]:
    """One Point per cell of one pytest-benchmark JSON (a calibration run, or one point of a sweep)."""
    from harness.measure.results import load_infos
    infos, controls, env = load_infos(Path(path))
    copy = env.get("copy_gbps") or {}
    run = Run(str(path), (env.get("gpu") or {}).get("name"), env.get("device", "?"), env.get("engine"),
              (controls.get("rpc_noop") or {}).get("rtt_s"),
              copy.get("h2d_gbps") and copy["h2d_gbps"] * 1e9, copy.get("d2h_gbps") and copy["d2h_gbps"] * 1e9)
    link = link_of(env)
    points = []
    for info in infos:
        s, t = info.summary, info.summary.time or {}
        mode = MODES[info.mode]

        def part(*keys):
            vals = [t.get(k) for k in keys]
            return None if any(v is None for v in vals) else sum(vals)
        measured = Measured(
            latency_s=s.latency_s.mean, bytes=s.link_bytes.mean or 0.0,
            payload_bytes=(s.payload_tx_bytes.mean or 0) + (s.payload_rx_bytes.mean or 0),
            compute_s=part("server_compute_s"),
            load_s=part("server_load_s", "server_h2d_s") if mode.stateless else None,
            d2h_s=part("server_d2h_s") if mode.stateless else None,
            wire_s=part("wire_tx_s", "wire_rx_s") if mode.remote else None,
            step_s=_mean_steps(info) if info.phase == "decode" else (),
            gpu_sm_pct=s.sm_pct[0], span_fraction=s.util_gpu_span_fraction.mean,
            weight_load_s=(info.weight_load or {}).get("latency_s"),
            weight_load_bytes=info.weight_load and (info.weight_load.get("link_tx_bytes") or 0)
            + (info.weight_load.get("link_rx_bytes") or 0),
            latency_se_s=_se(s.latency_s), bytes_se=_se(s.link_bytes))
        batch = int(env.get("batch") or 1)
        points.append(Point(info.model, info.dtype, shape_for(info.model, info.dtype), info.mode, info.phase,
                            int(env.get("prompt_len")), int(info.steps), link, batch, measured, run))
    return points


def load_all(paths: Iterable[Path | str]) -> list[Point]:
    """Points of every JSON named, a folder standing for every *.json under it (a sweep's output);
    COMMIT:PATH names one that git keeps (harness.report.committed)."""
    points = []
    for path in paths:
        path = committed.local(path)
        files = sorted(path.rglob("*.json")) if path.is_dir() else [path]
        for f in files:
            try:
                points += load_points(f)
            except ValueError:
                if not path.is_dir():
                    raise   # a folder may hold JSONs that are not runs (soak, stored baselines)
    return points
