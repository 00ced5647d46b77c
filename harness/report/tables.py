"""The plan's table and the measurement's own evidence (checks, time breakdown, harness checks),
as Markdown, from the cells' results (harness.measure.results.CellInfo). The suite prints them at
the end of a run; `python -m harness.report out.json` makes the same from the JSON."""
from __future__ import annotations

import statistics

from harness.compute.modes import MODES
from harness.compute.phase import PHASES
from harness.measure.payload import CLOSURE_TOLERANCE
from harness.report.analysis import TIME_PARTS
from harness.report.floors import FLOOR_COLUMNS, MEMORY_COLUMNS, floor_rows, memory_caption, memory_rows, per_step
from harness.report.invariants import ANALYSIS_SHARE_MAX, RETRANSMISSION_NOTE, RPC_BOUND, busy_host_misses
from harness.report.sessions import sessions_cells, sessions_columns, spread_caption
from harness.report.units import human_bytes
from harness.report.verdicts import (
    LOOP_OVER_GENERATE_MAX,
    PROBE_OVERHEAD_MAX,
    TPOT_SLACK_S,
    VERDICT_COLUMNS,
    of_run,
    peer_name,
    verdict_rows,
)

COLUMNS = ["Phase", "Mode", "Latency (s)", "Network Bytes Transferred", "Avg. GPU Utilization (%)"]


def _pm(stat, fmt) -> str:
    if stat.mean is None:
        return "n/a"
    return f"{fmt(stat.mean)} ± {fmt(stat.std)}"


def _sort_key(info):
    return PHASES.index(info.phase), list(MODES).index(info.mode)


def _gpu_cell(s) -> str:
    """The plan's dmon SM% average over the rounds long enough for dmon, saying how many of the
    measured rounds that was; never a 0 that only means 'no sample' or 'no GPU'."""
    sm, how = s.sm_pct
    if s.window and sm is not None:
        return f"{sm:.1f} ({how})"
    if sm is not None:
        return f"{_pm(s.util_dmon_sm_pct, lambda v: f'{v:.1f}')} ({how})"
    if s.gpu_sm_pct.mean is None:
        return "n/a (no GPU)"
    nvml = s.util_nvml_pct.mean
    return "n/a (round < dmon's 1 s)" + ("" if nvml is None else f"; NVML {nvml:.1f}")


BUSY_MARK = " (busy host?)"  # beside a latency that busy_host_misses doubts
HARNESS_CALL = " (the harness's call, no model data)"  # beside local's bytes: the call that runs a phase on the GPU host


def busy_cells(infos) -> set[str]:
    """The cells a busy host put in doubt: run beside busy neighbours, or local and sys_simulated
    of a phase disagreeing as only a busy host explains (both then)."""
    infos = list(infos)
    out = {i.name for i in infos if busy_host_misses(i, [])}
    for i in infos:
        if i.mode == "sys_simulated" and len(busy_host_misses(i, infos)) > len(busy_host_misses(i, [])):
            out |= {f"{i.phase}-local", i.name}
    return out


def table_rows(infos) -> list[dict]:
    """One row per cell, in plan order; numeric columns kept beside the display strings."""
    rows, busy = [], busy_cells(infos)
    any_sessions = any(i.across_sessions("latency_s") for i in infos)
    for info in sorted(infos, key=_sort_key):
        s = info.summary
        mark = BUSY_MARK if info.name in busy else ""
        rows.append({
            "Phase": info.phase, "Mode": info.mode,
            "Latency (s)": _pm(s.latency_s, lambda v: f"{v:.4f}") + mark,
            "Network Bytes Transferred": _pm(s.link_bytes, human_bytes)
            + (HARNESS_CALL if info.mode == "local" and s.link_bytes.mean else ""),
            "Avg. GPU Utilization (%)": _gpu_cell(s),
            "latency_s_mean": s.latency_s.mean, "latency_s_std": s.latency_s.std,
            "link_bytes_mean": s.link_bytes.mean, "link_bytes_std": s.link_bytes.std,
            "pcap_bytes_mean": s.pcap_bytes.mean,
            # dmon over the rounds at least one dmon period long: what the table shows
            "gpu_sm_pct_mean": s.util_dmon_sm_pct.mean, "gpu_sm_pct_std": s.util_dmon_sm_pct.std,
            "gpu_sm_pct_rounds": s.util_dmon_sm_pct.n,
            "ttft_s_mean": s.ttft_s.mean, "tpot_s_mean": s.tpot_s.mean,
            **sessions_cells(info, _pm, any_sessions),
        })
    return rows


def markdown_table(rows: list[dict], columns: list[str] = COLUMNS) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(r[c]) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


CHECK_COLUMNS = ["Phase", "Mode", "Analytic payload", "pcap bytes", "Counter bytes", "Closure",
                 "dmon SM %", "NVML util %", "GPU span ÷ wall", "RPC path Gbit/s (÷ iperf3)",
                 "TCP (last round, tshark)"]


def check_columns(infos) -> list[str]:
    """CHECK_COLUMNS, with the SM clock beside NVML's utilization where the run sampled it."""
    if not any(i.summary.sm_clock_mhz.n for i in infos):
        return CHECK_COLUMNS
    at = CHECK_COLUMNS.index("NVML util %") + 1
    return [*CHECK_COLUMNS[:at], "SM clock MHz (NVML)", *CHECK_COLUMNS[at:]]


def _num(v, fmt):
    return "n/a" if v is None else fmt(v)


def check_rows(infos) -> list[dict]:
    """The measurement's own evidence per cell: payload closure, utilization three ways."""
    rows = []
    for info in sorted(infos, key=_sort_key):
        s = info.summary
        verdicts = ", ".join(s.closure_verdicts) or "n/a"
        err = s.closure_error.mean
        dmon = s.util_dmon_sm_pct.mean
        rows.append({
            "Phase": info.phase, "Mode": info.mode,
            "Analytic payload": human_bytes(s.analytic_bytes),
            "pcap bytes": human_bytes(s.pcap_bytes.mean),
            "Counter bytes": human_bytes(s.link_bytes.mean),
            "Closure": (f"{verdicts}" + ("" if err is None else f" ({err * 100:+.2f}%)")
                        + _retransmitted(s.dissection)),
            "dmon SM %": _num(dmon, lambda v: f"{v:.1f}") if dmon is not None or not s.util_dmon_note
                         else "n/a (< dmon period)",
            "NVML util %": _num(s.util_nvml_pct.mean, lambda v: f"{v:.1f}"),
            "SM clock MHz (NVML)": _num(s.sm_clock_mhz.mean, lambda v: f"{v:.0f}"),
            "GPU span ÷ wall": _num(s.util_gpu_span_fraction.mean, lambda v: f"{v:.2f}"),
            "RPC path Gbit/s (÷ iperf3)": _rpc_path(MODES[info.mode], s.wire_gbps.mean, s.wire_vs_iperf.mean),
            "TCP (last round, tshark)": _tcp(s.dissection),
        })
    return rows


def _retransmitted(d: dict | None) -> str:
    share = (d or {}).get("retransmission_share")
    return f"; {share:.1%} of TCP payload retransmitted" if share and share > RETRANSMISSION_NOTE else ""


def _tcp(d: dict | None) -> str:
    """Wireshark's TCP analysis of the cell's last measured round."""
    if not d:
        return "n/a"
    if "error" in d:
        return f"n/a ({d['error'].split(':')[0]})"
    return (f"retrans {d['retransmissions']} ({d['retransmission_share']:.2%}), zero-win {d['zero_window']}, "
            f"dup-ACK {d['duplicate_acks']}, {len(d['flows'])} flows; {d['how']}")


def _rpc_path(mode, gbps: float | None, ratio: float | None) -> str:
    """Only the stateless mode moves enough per call for a throughput to mean anything."""
    if not mode.stateless or gbps is None:
        return "n/a"
    if ratio is None:
        return f"{gbps:.2f}"
    return f"{gbps:.2f} ({ratio:.2f}{', RPC-bound' if ratio < RPC_BOUND else ''})"


def time_rows(infos) -> list[dict]:
    """Where the time went, mean per measured round, in seconds."""
    rows = []
    for info in sorted(infos, key=_sort_key):
        s = info.summary
        row = {"Phase": info.phase, "Mode": info.mode, "Latency (s)": _num(s.latency_s.mean, lambda v: f"{v:.4f}")}
        row |= {k: _num(s.time[k] if s.time else None, lambda v: f"{v:.4f}") for k in TIME_PARTS}
        row["sum / latency"] = _num(s.time_parts_sum_ratio.mean, lambda v: f"{v:.3f}") if s.time_complete \
            else "n/a (wire, serdes unmeasured: capture off, or a call with no data packet seen)"
        rows.append(row)
    return rows


GAP_COLUMNS = ["Phase", "Bytes ÷, steady state", "Bytes ÷, one session", "Latency ÷, steady state",
               "Latency ÷, one session"]


def gap_rows(infos) -> list[dict]:
    """The semantics-blind mode over the semantics-aware one, per phase, two ways: steady state (a
    round each, the aware mode's weights already on the GPU) and one whole session (the aware
    mode's one-time weight load added to its round). Both are true; they answer different questions."""
    by = {(i.phase, i.mode): i for i in infos}
    blind = next(m.name for m in MODES.values() if m.remote and m.stateless)
    aware = next(m.name for m in MODES.values() if m.remote and not m.stateless)
    rows = []
    for phase in PHASES:
        b, a = by.get((phase, blind)), by.get((phase, aware))
        if not (b and a):
            continue
        load = a.weight_load or {}
        load_bytes = (load.get("link_tx_bytes") or 0) + (load.get("link_rx_bytes") or 0)
        rows.append({"Phase": phase,
                     "Bytes ÷, steady state": _ratio(b.summary.link_bytes.mean, a.summary.link_bytes.mean),
                     "Bytes ÷, one session": _ratio(b.summary.link_bytes.mean,
                                                    a.summary.link_bytes.mean + load_bytes),
                     "Latency ÷, steady state": _ratio(b.summary.latency_s.mean, a.summary.latency_s.mean),
                     "Latency ÷, one session": _ratio(b.summary.latency_s.mean,
                                                      a.summary.latency_s.mean + load.get("latency_s", 0.0))})
    return rows


def _ratio(num: float | None, den: float | None) -> str:
    return "n/a" if not num or not den else f"{num / den:,.1f}x"


def harness_rows(infos, controls: dict, link: dict, worker_capture: dict | None = None,
                 local_capture: dict | None = None) -> list[dict]:
    """The harness's own evidence: is the link measured, is the RPC path fast enough, what does
    the probe cost, is the baseline honest, does the payload model close, do the parts add up.
    A check with nothing to show in this run (no link, no controls run) has no row."""
    summaries = {i.name: i.summary for i in infos}
    mode_of = {i.name: MODES[i.mode] for i in infos}
    rows = [_link_row(link), _rpc_path_row(summaries, mode_of), _probe_cost_row(controls.get("capture_overhead")),
            _capture_step_row(controls.get("capture_step_cost")),
            _analysis_row(summaries, mode_of), _baseline_row(controls.get("local_vs_generate")),
            _capture_row(worker_capture), _capture_row(local_capture, "the local loop's"),
            _tpot_row(infos, controls.get("rpc_noop"), controls.get("local_gap")),
            _step_parts_row(infos, controls.get("rpc_noop")), _step_io_row(controls.get("step_io")),
            _closure_row(summaries), _time_sum_row(summaries),
            _serialisation_row(summaries, controls.get("serialisation"))]
    return [{"Check": c, "Figure": f, "Target": t} for c, f, t in filter(None, rows)]


def _link_row(link):
    iperf = {k.split("_")[2]: v for k, v in (link or {}).items() if k.startswith("iperf3_gbps_")}
    if not iperf:
        return None
    shaped = f"shaped to {link['shaped_gbps']:g}" if link.get("shaped_gbps") else "unshaped"
    return (f"iperf3 Gbit/s ({'/'.join(iperf)} streams; {shaped})",
            " / ".join(f"{v:.1f}" for v in iperf.values()), "-")


def _rpc_path_row(summaries, mode_of):
    naive = {k.split("-")[0]: v.wire_vs_iperf.mean for k, v in summaries.items() if mode_of[k].stateless}
    figure = ", ".join(f"{phase} {v:.2f}" for phase, v in naive.items() if v is not None)
    return figure and ("naive RPC path ÷ iperf3 (as many streams as lanes)", figure, f">= {RPC_BOUND}")


def _probe_cost_row(cap):
    if not cap:
        return None
    q1, q3 = cap.get("on_over_off_iqr", (None, None))
    iqr = f" [quartiles {q1:.3f}-{q3:.3f}, {len(cap['latency_on_s'])} pairs]" if q1 else ""
    return "latency probe on ÷ off (naive prefill)", f"{cap['on_over_off']:.3f}{iqr}", f"<= {PROBE_OVERHEAD_MAX}"


def _capture_step_row(cost):
    if not cost:
        return None
    on, off = statistics.median(cost["tpot_captured_s"]), statistics.median(cost["tpot_uncaptured_s"])
    return ("tcpdump's cost per sys_simulated decode step (so its timed rounds run without it)",
            f"{cost['step_cost_s'] * 1e3:+.3f} ms (time per token {on * 1e3:.3f} ms captured, "
            f"{off * 1e3:.3f} ms not; medians of {len(cost['tpot_captured_s'])} rounds each)", "-")


def _analysis_row(summaries, mode_of):
    shares = [(v.analysis_share.mean, k) for k, v in summaries.items() if mode_of[k].remote]
    worst = max((s for s in shares if s[0] is not None), default=None)
    return worst and ("capture analysis ÷ round (worst remote cell)", f"{worst[0] * 100:.1f}% ({worst[1]})",
                      f"<= {ANALYSIS_SHARE_MAX:.0%}")


def _tpot_row(infos, noop, gap=None):
    """sys_simulated's time per output token beyond local's, against one empty round trip +
    TPOT_SLACK_S. The round trip as measured back to back, after both hosts idled, and across a
    server busy for a local step's time (a decode step's own pattern), where the run measured
    them; the target for each of the first and the last. Beside it, where measured, what the
    GPU's idle time between steps costs a local step (no RPC in it)."""
    tpot = {i.mode: i.summary.tpot_s.mean for i in infos if i.phase == "decode"}
    if not noop or tpot.get("local") is None or tpot.get("sys_simulated") is None:
        return None
    extra = tpot["sys_simulated"] - tpot["local"]
    ms = lambda s: f"{s * 1e3:.3f} ms"
    idle, step = noop.get("rtt_after_idle_s"), noop.get("rtt_in_step_s")
    after = f"; after {noop['idle_s'] * 1e3:g} ms idle {ms(idle)}" if idle else ""
    across = f"; across {noop['hold_s'] * 1e3:.2f} ms of server work {ms(step)}" if step else ""
    gpu = f"; a local step after the GPU idled {ms(gap['gap_s'])}: {gap['gap_cost_s'] * 1e3:+.3f} ms" if gap else ""
    target = f"<= round trip + {TPOT_SLACK_S * 1e3:g} ms = {ms(noop['rtt_s'] + TPOT_SLACK_S)}"
    if step:
        target += f" back to back, {ms(step + TPOT_SLACK_S)} across a step"
    return ("sys_simulated TPOT − local TPOT, against the empty RPC round trip",
            f"{ms(extra)} (round trip {ms(noop['rtt_s'])} back to back{after}{across}{gpu})", target)


def _step_parts_row(infos, noop):
    """Where sys_simulated's time per token beyond local's goes, part by part (the time
    breakdown's parts, a decode round's less its prefill's, per step), beside the empty RPC."""
    parts = lambda info: {k: info.summary.time.get(k) for k in TIME_PARTS} if info.summary.time else None
    sys_, local = per_step(infos, "sys_simulated", parts), per_step(infos, "local", parts)
    if not sys_ or not local:
        return None
    diff = {k: sys_[k] - local[k] for k in TIME_PARTS}
    us = lambda v: f"{v * 1e6:+.0f}"
    parts = ", ".join(f"{k.removesuffix('_s')} {us(v)}" for k, v in sorted(diff.items(), key=lambda kv: -abs(kv[1]))
                      if abs(v) >= 1e-6)
    rtt = f"; the empty RPC back to back {noop['rtt_s'] * 1e6:.0f} µs" if noop else ""
    return ("sys_simulated − local per decode step, by part (µs)", f"{sum(diff.values()) * 1e6:+.0f}: {parts}{rtt}", "-")


def _step_io_row(io):
    if not io:
        return None
    return ("a step's [1, 1] id up and token down, no model: small pinned buffers vs .to() and .tolist()",
            f"{io['pinned_round_trip_s'] * 1e6:.1f} µs vs {io['plain_round_trip_s'] * 1e6:.1f} µs "
            f"(medians of {io['round_trips']})", "-")


def _capture_row(capture, whose: str = "the worker's"):
    """The worker's capture (and compilation) of its steps before any cell, or the local loop's in
    its cells' warm-up (inductor's cache, on disk, serves the second process), by step length."""
    if not capture:
        return None
    when = "before the cells" if whose == "the worker's" else "in its first cells' warm-up, after the worker's"
    return (f"{whose} graphs captured (compiled) {when}, by tokens a step",
            ", ".join(f"{n}: {s:.1f} s" for n, s in sorted(capture.items(), key=lambda kv: int(kv[0]))), "-")


def _baseline_row(base):
    """The local loop against generate(): compiled (transformers' own fast path, on CUDA) where
    the run had it, with the uncompiled one beside it; compilation times apart."""
    if not base:
        return None
    peer = peer_name(base)
    figure = (f"{base['loop_over_generate']:.2f} ({base['tpot_loop_s'] * 1e3:.3f} ms against "
              f"{base['tpot_generate_s'] * 1e3:.3f} ms")
    if "loop_over_generate_uncompiled" in base:
        figure += (f"; uncompiled generate() {base['tpot_generate_uncompiled_s'] * 1e3:.3f} ms, "
                   f"ratio {base['loop_over_generate_uncompiled']:.2f}")
    compiles = [f"{k.removeprefix('compile_').removesuffix('_s')} {v:.1f} s" for k, v in base.items()
                if k.startswith("compile_") and v is not None]
    figure += f"; compile and capture, apart: {', '.join(compiles)})" if compiles else ")"
    return f"local loop ÷ {peer}, time per token", figure, f"<= {LOOP_OVER_GENERATE_MAX}"


def _closure_row(summaries):
    judged = [(k, v.closure_error.mean) for k, v in summaries.items()
              if any(not verdict.startswith("n/a") for verdict in v.closure_verdicts)]
    figure = ", ".join(f"{k} {e * 100:+.2f}%" for k, e in judged)
    return figure and ("payload closure error (cells >= 1 MB)", figure, f"within ±{CLOSURE_TOLERANCE:.0%}")


def _serialisation_row(summaries, ser):
    """Pickling measured alone against the timeline's client-side serialisation per call: the
    timeline's part tiles the call between events, this one is timed on its own."""
    naive = summaries.get("prefill-naive")
    if not ser or not naive or naive.time.get("client_ser_s") is None:
        return None
    return ("naive prefill request: torch RPC pickle + unpickle alone vs the timeline's client_ser_s",
            f"{ser['pickle_round_trip_s'] * 1e3:.3f} ms vs {naive.time['client_ser_s'] * 1e3:.3f} ms", "-")


def _time_sum_row(summaries):
    sums = [v.time_parts_sum_ratio.mean for v in summaries.values() if v.time_parts_sum_ratio.mean]
    return sums and ("time parts ÷ wall-clock (all cells)", f"{min(sums):.3f} - {max(sums):.3f}", "0.95 - 1.05")


def full_report(infos, controls: dict | None = None, env: dict | None = None) -> str:
    """env: machine_info's semantic_gap (link check, copy rates, RPC channel), where known."""
    infos, controls, env = list(infos), controls or {}, env or {}
    checks = harness_rows(infos, controls, env.get("link_check") or {}, env.get("worker_capture_s"),
                          env.get("local_capture_s"))
    floors = floor_rows(infos, controls, env)
    memory = memory_rows(infos, env.get("memory_floor"))
    targets = of_run(infos, controls, env)
    gaps = gap_rows(infos)
    busy = [m for i in infos for m in busy_host_misses(i, infos if i.mode == "sys_simulated" else [])]
    rows = table_rows(infos)
    return "\n\n".join([
        markdown_table(rows, COLUMNS + sessions_columns(rows)),
        spread_caption(infos),
        *([f"{BUSY_MARK.strip()}: " + "; ".join(busy)] if busy else []),
        *(["naive ÷ sys_simulated (steady state: a round each; one session: sys_simulated's one-time "
           "weight load added to its round):\n" + markdown_table(gaps, GAP_COLUMNS)] if gaps else []),
        "Measurement checks (means over measured rounds; iperf3 with as many streams as the RPC "
        f"channel has lanes; RPC-bound: under {RPC_BOUND:.0%} of it, the RPC path and not the link sets "
        "the naive mode's pace):\n" + markdown_table(check_rows(infos), check_columns(infos)),
        *(["Physical floor per round (s), from controls of this run (harness/report/floors.py): the link "
           "(its best iperf3 figure), the bus (pinned copies) and the GPU (the local cell's forward time); "
           "serial adds the parts, overlapped runs each direction's copy beside its wire time:\n"
           + markdown_table(floors, FLOOR_COLUMNS)] if floors else []),
        *([memory_caption(env["memory_floor"]) + "\n" + markdown_table(memory, MEMORY_COLUMNS)] if memory else []),
        "Time breakdown (s per round, each part measured: client and server clocks, server timers,"
        " packet times; see harness/measure/timeline.py):\n"
        + markdown_table(time_rows(infos), ["Phase", "Mode", "Latency (s)", *TIME_PARTS, "sum / latency"]),
        *(["Harness checks (this run):\n" + markdown_table(checks, ["Check", "Figure", "Target"])] if checks else []),
        *([f"Targets, each judged on its interval (harness/report/verdicts.py: a fail lies wholly past its bound, "
           f"an inconclusive one straddles it):\n" + markdown_table(verdict_rows(targets), VERDICT_COLUMNS)]
          if targets else [])])
