"""Prediction of a cell's latency and bytes from fitted Components (predict, weight_load), and compute
scaled to another model or GPU from public specifications (GPUS, roofline, scale_compute).
See harness.predict.costmodel."""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

from harness.compute.modes import MODES
from harness.measure.payload import CLOSURE_MIN_PAYLOAD, Shape, cell_payload
from harness.predict.costmodel.points import Link, Point
from harness.predict.costmodel.terms import Components, Compute

# --- public specifications of GPUs (datasheets), used only to scale compute to another GPU ---------------

def pcie_Bps(gen: int, lanes: int = 16) -> float:
    """A PCIe link's bytes/s each way: GT/s per lane x lanes x 128/130 (encoding) / 8 (PCIe 3.0-5.0)."""
    gts = {3: 8e9, 4: 16e9, 5: 32e9}[gen]
    return gts * lanes * 128 / 130 / 8


@dataclass(frozen=True)
class Gpu:
    name: str
    hbm_Bps: float          # device memory bandwidth, bytes/s
    fp16_flops: float       # dense fp16 tensor-core FLOP/s (no sparsity)
    pcie_Bps: float         # host link, bytes/s each way (nominal)
    memory_B: float         # device memory, bytes
    source: str


GPUS = {g.name: g for g in (
    Gpu("NVIDIA H100 80GB HBM3", 3.35e12, 989.4e12, pcie_Bps(5), 80 * 2**30,
        "NVIDIA H100 Tensor Core GPU datasheet, H100 SXM: HBM3 3.35 TB/s, FP16 tensor 1,979 TFLOPS with "
        "sparsity (989.4 dense), PCIe Gen5 x16 (128 GB/s both ways), 80 GB"),
    Gpu("NVIDIA H200", 4.8e12, 989.4e12, pcie_Bps(5), 141 * 10**9,
        "NVIDIA H200 Tensor Core GPU datasheet, H200 SXM: HBM3e 4.8 TB/s, FP16 tensor 1,979 TFLOPS with "
        "sparsity (989.4 dense), PCIe Gen5 x16 (128 GB/s both ways), 141 GB"),
    Gpu("NVIDIA A100-SXM4-80GB", 2.039e12, 312e12, pcie_Bps(4), 80 * 2**30,
        "NVIDIA A100 Tensor Core GPU datasheet, A100 80GB SXM: HBM2e 2,039 GB/s (~2.0 TB/s), FP16 tensor "
        "312 TFLOPS dense, PCIe Gen4 x16 (64 GB/s both ways, ~32 GB/s each), 80 GB"),
)}


# --- predicting a cell ----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Prediction:
    """`latency_s, bytes = predict(c, p)` unpacks the two headline figures; the rest explains them."""
    latency_s: float
    bytes: float
    payload_bytes: int
    parts: dict                     # seconds per term: compute, wire, load, d2h, calls, round, rtt
    compute_source: str = ""

    def __iter__(self):
        return iter((self.latency_s, self.bytes))

    @property
    def gpu_busy(self) -> float:
        """Share of the round the GPU computes: the model's figure nearest to a utilization."""
        return self.parts["compute"] / self.latency_s if self.latency_s else 0.0

    @property
    def network_s(self) -> float:
        """Time on the network: bytes through link and RPC path, plus the link's propagation per call."""
        return self.parts["wire"] + self.parts["rtt"]


def release_calls(mode) -> int:
    """Calls a round makes beyond its forwards: a stateful session ends with one, releasing the
    worker's KV cache (a handle, no payload), whose bytes are the link's empty call."""
    return 1 if mode.remote and not mode.stateless else 0


def _bytes_overhead(c: Components, payload: int, calls: int, link: Link, empty_calls: int = 0) -> float:
    """Beyond the payload: the round's own bytes, each call's (empty call + framing), the calls that
    carry nothing (release_calls: an empty call each, where the calibration measured them) and a header per
    segment of payload. round_B and framing_B are an Ethernet link's and scale with the link's header
    (they are mostly header-only packets: ACKs, descriptors); the empty call is the link's own measure."""
    segment = link.segment_B or c.segment_B
    headers = payload * link.header_B / segment if math.isfinite(segment) else 0.0
    protocol = link.header_scale * (c.round_B + calls * c.framing_B)
    empty = (calls + empty_calls) * c.empty_B(link.empty_call_B)
    return protocol + empty + headers


def combine(a: float, b: float, k: float) -> float:
    """Two times of one transfer (the link's, the RPC path's), combined as their k-norm: k = 1 adds
    them (one waits for the other), k = inf takes the larger (they overlap fully)."""
    if math.isinf(k):
        return max(a, b)
    return a + b if k == 1 else (a ** k + b ** k) ** (1 / k)


def bulk_calls(payload) -> int:
    """The round's calls that move >= 1 MB each (naive's; sys_simulated's carry ids and tokens): those
    the path's fit sees (their packet times show the wire), and the only ones wire_call_s is charged to."""
    return payload.calls if payload.total / payload.calls >= CLOSURE_MIN_PAYLOAD else 0


def wire_s(c: Components, wire_bytes: float, link: Link, calls: int) -> float:
    """Bytes through the link (its goodput) and the RPC path (its ceiling), combined by path_k, and
    each call's own wire time beyond its bytes."""
    return combine(wire_bytes / link.goodput_Bps, wire_bytes / c.path_Bps, c.path_k) + calls * c.wire_call_s


def predict(c: Components, p: Point) -> Prediction:
    mode = MODES[p.mode]
    kw = {"batch": p.batch} if p.batch != 1 else {}
    payload = cell_payload(p.shape, mode, p.phase, p.prompt_len, p.steps, **kw)
    compute = compute_for(c, p)
    calls = p.calls()
    parts = dict.fromkeys(("compute", "wire", "load", "d2h", "calls", "round", "rtt"), 0.0)
    parts["compute"] = sum(compute.forward(s, n) for s, n in calls)
    if not mode.remote:
        parts["calls"] = len(calls) * c.local_call_s
        return Prediction(sum(parts.values()), 0, 0, parts, compute.source)
    wire_bytes = payload.total + _bytes_overhead(c, payload.total, payload.calls, p.link, release_calls(mode))
    parts["wire"] = wire_s(c, wire_bytes, p.link, bulk_calls(payload))
    parts["calls"] = len(calls) * c.call_s
    parts["round"] = c.round_s
    parts["rtt"] = len(calls) * c.rtts_per_call * p.link.rtt_s
    if mode.stateless:
        parts["load"] = payload.tx_bytes / c.load_Bps
        parts["d2h"] = payload.rx_bytes / c.d2h_Bps
    return Prediction(sum(parts.values()), wire_bytes, payload.total, parts, compute.source)


def weight_load(c: Components, p: Point) -> Prediction:
    """sys_simulated's one-time weight load (not in its rounds): one call carrying the weights, at the
    rates fitted on the naive cells (its own call is not fitted on: calibration.md compares them)."""
    w = p.shape.weights_bytes
    wire_bytes = w + _bytes_overhead(c, w, 1, p.link)
    parts = dict.fromkeys(("compute", "wire", "load", "d2h", "calls", "round", "rtt"), 0.0)
    parts |= {"wire": wire_s(c, wire_bytes, p.link, 1), "load": w / c.load_Bps,
              "calls": c.call_s, "rtt": c.rtts_per_call * p.link.rtt_s}
    return Prediction(sum(parts.values()), wire_bytes, w, parts, "no compute")


# --- compute on another model or GPU ----------------------------------------------------------------

def roofline(shape: Shape, gpu: Gpu) -> Compute:
    """Compute with no overhead: a forward streams every weight from device memory once (W / HBM), does
    2 FLOPs per weight per token (embedding included: a slight overcount) at the dense fp16 peak, and a
    decode step reads the cache (KV bytes per token / HBM per cached token). Memory time and arithmetic
    time are added, not overlapped: at 128 prompt tokens on these GPUs they are alike, so this is up to
    2x the roofline's max() for a prefill and within 1% of it for a decode step (memory-bound)."""
    params = shape.weights_bytes / shape.elem_bytes
    flops_token = 2 * params / gpu.fp16_flops
    return Compute(prefill_s=shape.weights_bytes / gpu.hbm_Bps, prefill_token_s=flops_token + shape.kv(1) / gpu.hbm_Bps,
                   step_s=shape.weights_bytes / gpu.hbm_Bps + flops_token, step_ctx_s=shape.kv(1) / gpu.hbm_Bps,
                   source=f"roofline on {gpu.name}")


@dataclass(frozen=True)
class Overhead:
    """What the measured compute spends beyond the roofline, per layer: kernel launches and tails,
    graph replay, norms and attention that the roofline's weight stream does not see."""
    prefill_layer_s: float
    step_layer_s: float
    ratio_step: float           # roofline / measured, decode step at the calibration's mid cache
    ratio_prefill: float        # the same for the prefill at the calibration's prompt
    measured_step_s: float
    roofline_step_s: float
    measured_prefill_s: float
    roofline_prefill_s: float
    source: str


def overhead_of(c: Components, key: str) -> Overhead:
    gpu = GPUS.get(c.gpu or "")
    if gpu is None:
        raise KeyError(f"no public specification for {c.gpu!r} in costmodel.GPUS: cannot scale compute")
    m, shape = c.compute[key], c.shapes[key]
    prompt, steps = c.refs[key]
    roof = roofline(shape, gpu)
    mid = prompt + (steps - 1) / 2
    mp, rp = m.forward(0, prompt), roof.forward(0, prompt)
    ms, rs = m.forward(int(mid), 1), roof.forward(int(mid), 1)
    return Overhead(max(0.0, (mp - rp) / shape.layers), max(0.0, (ms - rs) / shape.layers), rs / ms, rp / mp,
                    ms, rs, mp, rp, f"{key} on {gpu.name}")


def scale_compute(c: Components, key: str, shape: Shape, gpu: Gpu, with_overhead: bool = True) -> Compute:
    """Compute of `shape` on `gpu` = its roofline + layers x the per-layer overhead measured for `key`
    on the calibration GPU (held the same on the other GPU: an assumption). with_overhead=False: the
    roofline alone, the least it could take."""
    roof = roofline(shape, gpu)
    if not with_overhead:
        return roof
    oh = overhead_of(c, key)
    return replace(roof, prefill_s=roof.prefill_s + shape.layers * oh.prefill_layer_s,
                   step_s=roof.step_s + shape.layers * oh.step_layer_s,
                   source=f"roofline on {gpu.name} + {shape.layers} layers x overhead per layer of {oh.source}")


def compute_for(c: Components, p: Point) -> Compute:
    """The point's fitted compute, else the calibration's largest model scaled to it on the same GPU."""
    if p.key in c.compute:
        return c.compute[p.key]
    if c.compute and c.gpu in GPUS:
        ref = max(c.compute, key=lambda k: c.shapes[k].weights_bytes)
        return scale_compute(c, ref, p.shape, GPUS[c.gpu])
    raise KeyError(f"no compute for {p.key}: fit on points of that model (its local cells suffice), or "
                   f"calibrate on a GPU costmodel.GPUS describes (this one: {c.gpu!r})")
