"""Derived figures for one measured round: payload closure, where the time went, and GPU
utilization three ways. Everything here is computed from what the round recorded; which parts
are measured and which are derived is said per field.
"""
from __future__ import annotations

from harness.measure import payload as payload_model
from harness.measure.results import CellContext

DMON_PERIOD_S = 1.0


def analyse_round(r: dict, ctx: CellContext) -> dict:
    """r: a RoundRecord.to_dict(). Returns the figures the report shows beside it."""
    link_bytes = r["link_tx_bytes"] + r["link_rx_bytes"]
    c = payload_model.closure(ctx.payload, link_bytes, r["link_packets"], ctx.per_message_bytes, ctx.header_B)
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


SERVER_PARTS = ("server_dispatch_s", "server_load_s", "server_h2d_s", "server_compute_s", "server_d2h_s")
TIME_PARTS = ("client_s", "client_ser_s", "wire_tx_s", "server_deser_s", *SERVER_PARTS,
              "server_ser_s", "wire_rx_s", "client_deser_s")


def breakdown(r: dict, link_bytes: int, iperf_gbps: float | None) -> dict:
    """Where a round's wall-clock went, every part measured on its own:
    client_s: the client's own work between calls (choosing the next token; run_phase's timer);
    server_*: the worker's timers (CUDA-synchronised) and its hand-over to the compute thread;
    client_ser .. client_deser: the client's and server's clocks and the capture's packet times
    (harness.measure.timeline). Parts not measured in a round (no capture) are None, never derived from
    the others. unattributed_s is what no part covers (Python between the timers on either
    side); time_parts_sum_ratio is the parts' sum over the wall-clock.

    transport_s is what the naive mode spends moving bytes: time inside RPC calls less the time
    the server spent in its methods (its stamps), so wire_gbps is the RPC path's throughput."""
    server = r["server_s"]
    remote = r["calls"] > 0 and r["rpc_s"] > 0
    stamps = r.get("call_stamps") or []
    tl = r.get("timeline") or {}
    parts = {k: server.get(k.removeprefix("server_"), 0.0) for k in SERVER_PARTS}
    parts["client_s"] = r["client_s"]
    for k in ("client_ser_s", "wire_tx_s", "server_deser_s", "server_ser_s", "wire_rx_s", "client_deser_s"):
        parts[k] = tl.get(k) if remote else 0.0
    measured = [v for v in parts.values() if v is not None]
    total = sum(measured)
    handling = (sum(left - entered for _, entered, left, _ in stamps) if stamps
                else sum(parts[k] for k in SERVER_PARTS))
    transport_s = r["rpc_s"] - handling if remote else 0.0
    gbps = link_bytes * 8 / transport_s / 1e9 if transport_s > 0 else None
    wire_s = (tl["wire_tx_s"] + tl["wire_rx_s"]) if tl else None
    return {"time": {k: parts[k] for k in TIME_PARTS},
            "time_complete": len(measured) == len(parts),
            "unattributed_s": r["latency_s"] - total,
            "time_parts_sum_ratio": total / r["latency_s"] if r["latency_s"] and len(measured) == len(parts) else None,
            "transport_s": transport_s, "wire_gbps": gbps,
            "wire_vs_iperf": gbps / iperf_gbps if gbps and iperf_gbps else None,
            # the packets' own pace, first to last data packet of each request and reply
            "wire_only_gbps": link_bytes * 8 / wire_s / 1e9 if wire_s else None}


def utilization(r: dict) -> dict:
    # the forward passes' device time (CUDA events, first to last kernel, on the GPU host) over
    # the round's wall time: how much of the round the GPU had work in flight
    span = r["server_s"].get("gpu_span_s")
    short = r["latency_s"] < DMON_PERIOD_S
    return {"util_dmon_sm_pct": None if short else r["gpu_sm_pct"],
            "util_dmon_note": (f"round ({r['latency_s']:.3f} s) shorter than dmon's "
                               f"{DMON_PERIOD_S:.0f} s sample period: no honest average")
                              if short and r["gpu_sm_pct"] is not None else None,
            "util_nvml_pct": r["nvml_util_pct"],
            "sm_clock_mhz": r.get("nvml_sm_clock_mhz"),  # runs before it was sampled have none
            "util_gpu_span_fraction": span / r["latency_s"] if span is not None and r["latency_s"] else None,
            "analysis_share": r["analysis_s"] / r["latency_s"] if r.get("analysis_s") is not None else None}
