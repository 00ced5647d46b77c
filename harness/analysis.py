"""Derived figures for one measured round: payload closure, where the time went, and GPU
utilization three ways. Everything here is computed from what the round recorded; which parts
are measured and which are derived is said per field.
"""
from __future__ import annotations

from dataclasses import dataclass

from harness import wire

DMON_PERIOD_S = 1.0


@dataclass(frozen=True)
class CellContext:
    payload: wire.Payload            # analytic, one round
    per_message_bytes: float         # RPC framing per round trip, measured on no-ops
    iperf_gbps: float | None         # the link's goodput, same session
    shape: wire.Shape                # weights tied-once and as listed, KV and logits sizes


def analyse_round(r: dict, ctx: CellContext) -> dict:
    """r: a RoundRecord.to_dict(). Returns the figures the report shows beside it."""
    link_bytes = r["link_tx_bytes"] + r["link_rx_bytes"]
    c = wire.closure(ctx.payload, link_bytes, r["link_packets"], ctx.per_message_bytes)
    return {
        "analytic_tx_bytes": ctx.payload.tx_bytes, "analytic_rx_bytes": ctx.payload.rx_bytes,
        "weights_bytes_tied_once": ctx.shape.weights_bytes,
        "weights_bytes_as_listed": ctx.shape.weights_listed_bytes,
        "analytic_equals_tensors": (ctx.payload.tx_bytes, ctx.payload.rx_bytes)
                                   == (r["payload_tx_bytes"], r["payload_rx_bytes"]),
        "closure_predicted_bytes": c.predicted_bytes, "closure_error": c.error,
        "closure_verdict": c.verdict,
        # the capture also holds the sampler's start/stop calls, which the counters leave out
        "pcap_vs_counters": ((r["pcap_bytes"] - r["control_bytes"]) / link_bytes)
                            if r["pcap_bytes"] and link_bytes else None,
        **breakdown(r, link_bytes, ctx.iperf_gbps),
        **utilization(r),
    }


def breakdown(r: dict, link_bytes: int, iperf_gbps: float | None) -> dict:
    """Where a round's wall-clock went. Measured: latency, time inside RPC calls (client), the
    server's load/h2d/compute/d2h (synchronised). Derived: client-side rest = latency - RPC time;
    transport = RPC time - server time (serialisation + wire + deserialisation); wire = bytes at
    iperf3's rate; serdes = transport - wire."""
    server = r["server_s"]
    server_total = sum(server.values())
    remote = r["calls"] > 0 and r["rpc_s"] > 0
    rpc_s = r["rpc_s"] if remote else 0.0
    client_s = r["latency_s"] - (rpc_s if remote else server.get("compute_s", 0.0))
    transport_s = rpc_s - server_total if remote else 0.0
    wire_s = link_bytes * 8 / (iperf_gbps * 1e9) if (iperf_gbps and remote) else None
    parts = {"client_s": client_s, "server_load_s": server.get("load_s", 0.0),
             "server_h2d_s": server.get("h2d_s", 0.0), "server_compute_s": server.get("compute_s", 0.0),
             "server_d2h_s": server.get("d2h_s", 0.0), "wire_s": wire_s or 0.0,
             "serdes_s": transport_s - (wire_s or 0.0) if remote else 0.0}
    total = sum(parts.values())
    return {"time": parts, "time_parts_sum_ratio": total / r["latency_s"] if r["latency_s"] else None,
            "transport_s": transport_s,
            "wire_gbps": link_bytes * 8 / transport_s / 1e9 if transport_s > 0 else None,
            "wire_vs_iperf": (link_bytes * 8 / transport_s / 1e9) / iperf_gbps
                             if transport_s > 0 and iperf_gbps else None}


def utilization(r: dict) -> dict:
    busy = r["server_s"].get("compute_s")
    short = r["latency_s"] < DMON_PERIOD_S
    return {"util_dmon_sm_pct": None if short else r["gpu_sm_pct"],
            "util_dmon_note": (f"round ({r['latency_s']:.3f} s) shorter than dmon's "
                               f"{DMON_PERIOD_S:.0f} s sample period: no honest average")
                              if short and r["gpu_sm_pct"] is not None else None,
            "util_nvml_pct": r["nvml_util_pct"],
            "util_busy_fraction": busy / r["latency_s"] if busy is not None and r["latency_s"] else None,
            "analysis_share": r["pcap_read_s"] / r["latency_s"] if r["pcap_read_s"] is not None else None}
