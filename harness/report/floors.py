"""Every cell beside its physical floor, from controls measured in the same run.

Per round (floor_rows): wire = payload ÷ the link's best iperf3 rate (1, 4 or 16 streams, so that
a slow stream count never makes the floor larger than what was measured); host↔device = what the
worker must move ÷ the pinned copy rates (naive: weights + cache in, cache + logits out); compute =
the local cell's forward time; round trips = calls × an empty RPC's (sys_simulated). Two floors:
serial, the parts one after another, and overlapped, where each direction's copy runs while its
bytes are still on the wire (max(wire in, load) + compute + max(device→host, wire out)), as an
API-remoting layer forwarding a copy per tensor or chunk does. A cell's ratio is taken against the
overlapped floor; under 1 it means the floor's inputs were wrong, not that overlap beat physics.

Per decode step (memory_rows): time per output token against the GPU's memory floor (the bytes a
step streams ÷ the card's read rate) and against a chain of batch-1 products over the model's
matrices (harness.compute.floor), with the device's own span of a step beside it, so that what
is left is named: the host between steps, or the kernels beyond the weights' stream.
"""
from __future__ import annotations

from harness.compute.modes import MODES
from harness.compute.phase import PHASES

FLOOR_PARTS = ("wire in", "host→device", "compute", "device→host", "wire out", "round trips")
FLOOR_COLUMNS = ["Phase", "Mode", "Latency (s)", "Serial floor (s)", "Overlapped floor (s)",
                 "Measured ÷ overlapped", "Measured ÷ serial", "Dominant part", *FLOOR_PARTS]
MEMORY_COLUMNS = ["Mode", "TPOT (ms)", "GPU span / step (ms)", "Memory floor (ms)", "TPOT ÷ floor",
                  "GEMV chain (ms)", "TPOT ÷ chain", "Beyond the floor"]


def best_iperf_gbps(check: dict) -> float | None:
    """The link's best iperf3 figure over the stream counts measured."""
    rates = [v for k, v in (check or {}).items() if k.startswith("iperf3_gbps_") and v]
    return max(rates, default=None)


def _sort_key(info):
    return PHASES.index(info.phase), list(MODES).index(info.mode)


def _fmt(v, spec: str = ".4f") -> str:
    return "n/a" if v is None else format(v, spec)


def cell_floor(info, compute_s: float | None, link_gbps: float | None, copy: dict, rtt_s: float | None) -> dict:
    """The floor's parts, seconds per round (the module's docstring says what each is)."""
    mode, s = MODES[info.mode], info.summary
    tx, rx = s.payload_tx_bytes.mean or 0, s.payload_rx_bytes.mean or 0
    calls = info.measured[0]["calls"] if info.measured else 0
    parts = dict.fromkeys(FLOOR_PARTS)
    parts["compute"] = compute_s
    if mode.remote and link_gbps:
        parts["wire in"], parts["wire out"] = tx * 8 / (link_gbps * 1e9), rx * 8 / (link_gbps * 1e9)
    if mode.stateless and copy:
        parts["host→device"] = tx / (copy["h2d_gbps"] * 1e9)
        parts["device→host"] = rx / (copy["d2h_gbps"] * 1e9)
    elif mode.remote:
        parts["round trips"] = calls * rtt_s if rtt_s else None
    return parts if compute_s is not None else {}


def serial_s(parts: dict) -> float:
    return sum(v for v in parts.values() if v is not None)


def overlapped_s(parts: dict) -> float:
    """Each direction's copy beside its wire time; compute and round trips in sequence."""
    p = {k: v or 0.0 for k, v in parts.items()}
    return (max(p["wire in"], p["host→device"]) + p["compute"] + max(p["device→host"], p["wire out"])
            + p["round trips"])


def cell_floors(infos, controls: dict, env: dict) -> list[tuple]:
    """(cell, its floor's parts) for every cell with a measured latency and its phase's local
    compute, in the table's order."""
    link_gbps = best_iperf_gbps(env.get("link_check") or {})
    copy = env.get("copy_gbps") or {}
    rtt = (controls.get("rpc_noop") or {}).get("rtt_s")
    compute = {i.phase: i.summary.time.get("server_compute_s") for i in infos if not MODES[i.mode].remote}
    out = []
    for info in sorted(infos, key=_sort_key):
        parts = cell_floor(info, compute.get(info.phase), link_gbps, copy, rtt)
        if parts and info.summary.latency_s.mean is not None:
            out.append((info, parts))
    return out


def floor_rows(infos, controls: dict, env: dict) -> list[dict]:
    """Per cell with a measured latency and the local cell's compute, its floors and ratios."""
    rows = []
    for info, parts in cell_floors(infos, controls, env):
        measured = info.summary.latency_s.mean
        serial, overlapped = serial_s(parts), overlapped_s(parts)
        rows.append({"Phase": info.phase, "Mode": info.mode, "Latency (s)": f"{measured:.4f}",
                     "Serial floor (s)": f"{serial:.4f}", "Overlapped floor (s)": f"{overlapped:.4f}",
                     "Measured ÷ overlapped": _fmt(measured / overlapped if overlapped else None, ".2f"),
                     "Measured ÷ serial": _fmt(measured / serial if serial else None, ".2f"),
                     "Dominant part": max(parts, key=lambda k: parts[k] or 0),
                     **{k: _fmt(v) for k, v in parts.items()}})
    return rows


def _span_s(info) -> float | None:
    """A cell's forwards' device span per measured round (CUDA events; None off CUDA)."""
    spans = [r["server_s"].get("gpu_span_s") for r in info.measured]
    return sum(spans) / len(spans) if spans and None not in spans else None


def per_step(infos, mode: str, value):
    """A decode step's share of value(cell), a round's figure: the decode cell's less the prefill
    cell's, over the steps (None where a cell or its figure is missing). value may return a dict of
    figures, each then taken apart."""
    by = {(i.phase, i.mode): i for i in infos}
    decode, prefill = by.get(("decode", mode)), by.get(("prefill", mode))
    if not decode or not prefill or not decode.steps:
        return None
    d, p = value(decode), value(prefill)
    if d is None or p is None:
        return None
    if isinstance(d, dict):
        return {k: ((d.get(k) or 0.0) - (p.get(k) or 0.0)) / decode.steps for k in d}
    return (d - p) / decode.steps


def memory_rows(infos, floor: dict | None) -> list[dict]:
    """Per mode that computes beside the GPU, its decode TPOT against the memory floor."""
    if not floor:
        return []
    by = {(i.phase, i.mode): i for i in infos}
    rows = []
    for mode in ("local", "sys_simulated"):
        info = by.get(("decode", mode))
        tpot = info and info.summary.tpot_s.mean
        if not tpot:
            continue
        span = per_step(infos, mode, _span_s)
        rows.append({"Mode": mode, "TPOT (ms)": f"{tpot * 1e3:.3f}",
                     "GPU span / step (ms)": _fmt(span and span * 1e3, ".3f"),
                     "Memory floor (ms)": f"{floor['floor_s'] * 1e3:.3f}",
                     "TPOT ÷ floor": f"{tpot / floor['floor_s']:.2f}",
                     "GEMV chain (ms)": f"{floor['gemv_chain_s'] * 1e3:.3f}",
                     "TPOT ÷ chain": f"{tpot / floor['gemv_chain_s']:.2f}",
                     "Beyond the floor": _beyond(tpot, span, floor['floor_s'])})
    return rows


def _beyond(tpot: float, span: float | None, floor_s: float) -> str:
    """Where a step's time beyond the memory floor goes: the host between the device's steps
    (TPOT − span), or kernels beyond the weights' stream (span − floor)."""
    if span is None:
        return f"{(tpot - floor_s) * 1e3:.3f} ms (no device span to split it)"
    host, kernels = tpot - span, span - floor_s
    which = "host between steps" if host > kernels else "kernels beyond the stream"
    return f"{which}: host {host * 1e3:.3f} ms, kernels {kernels * 1e3:.3f} ms"


def memory_caption(floor: dict) -> str:
    return (f"Decode step against the GPU's memory floor ({floor['device']}: {floor['streamed_bytes'] / 1e9:.3f} GB "
            f"a step, {floor['weights_bytes'] / 1e9:.3f} GB of it weights, read at {floor['read_gbps']:.0f} GB/s; "
            f"GEMV chain: {floor['gemv_kernels']} batch-1 products over the model's matrices as one graph):")
