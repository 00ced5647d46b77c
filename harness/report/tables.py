"""The plan's table and the measurement's own evidence (checks, time breakdown, harness checks),
as Markdown, from the cells' results (harness.report.summary.CellInfo). The suite prints them at
the end of a run; `python -m harness.report out.json` makes the same from the JSON."""
from __future__ import annotations

from harness.compute.modes import MODES
from harness.compute.phase import PHASES
from harness.report.analysis import TIME_PARTS
from harness.report.units import human_bytes

COLUMNS = ["Phase", "Mode", "Latency (s)", "Network Bytes Transferred", "Avg. GPU Utilization (%)"]


def _pm(stat, fmt) -> str:
    if stat.mean is None:
        return "n/a"
    return f"{fmt(stat.mean)} ± {fmt(stat.std)}"


def _sort_key(info):
    return PHASES.index(info.phase), list(MODES).index(info.mode)


def _gpu_cell(s) -> str:
    """The plan's dmon SM% average; never a 0 that only means 'no sample' or 'no GPU'."""
    if s.util_dmon_sm_pct.mean is not None:
        return _pm(s.util_dmon_sm_pct, lambda v: f"{v:.1f}")
    if s.gpu_sm_pct.mean is None:
        return "n/a (no GPU)"
    nvml = s.util_nvml_pct.mean
    return "n/a (round < dmon's 1 s)" + ("" if nvml is None else f"; NVML {nvml:.1f}")


def table_rows(infos) -> list[dict]:
    """One row per cell, in plan order; numeric columns kept beside the display strings."""
    rows = []
    for info in sorted(infos, key=_sort_key):
        s = info.summary
        rows.append({
            "Phase": info.phase, "Mode": info.mode,
            "Latency (s)": _pm(s.latency_s, lambda v: f"{v:.4f}"),
            "Network Bytes Transferred": _pm(s.link_bytes, human_bytes),
            "Avg. GPU Utilization (%)": _gpu_cell(s),
            "latency_s_mean": s.latency_s.mean, "latency_s_std": s.latency_s.std,
            "link_bytes_mean": s.link_bytes.mean, "link_bytes_std": s.link_bytes.std,
            "pcap_bytes_mean": s.pcap_bytes.mean,
            "gpu_sm_pct_mean": s.gpu_sm_pct.mean, "gpu_sm_pct_std": s.gpu_sm_pct.std,
            "ttft_s_mean": s.ttft_s.mean, "tpot_s_mean": s.tpot_s.mean,
        })
    return rows


def markdown_table(rows: list[dict], columns: list[str] = COLUMNS) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(str(r[c]) for c in columns) + " |" for r in rows]
    return "\n".join(lines)


CHECK_COLUMNS = ["Phase", "Mode", "Analytic payload", "pcap bytes", "Counter bytes", "Closure",
                 "dmon SM %", "NVML util %", "Busy fraction", "RPC path Gbit/s (÷ iperf3)"]
RPC_BOUND = 0.8  # below this share of iperf3 the RPC path, not the link, sets the naive mode's pace


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
            "Analytic payload": human_bytes(s.analytic_bytes or 0),
            "pcap bytes": human_bytes(s.pcap_bytes.mean),
            "Counter bytes": human_bytes(s.link_bytes.mean),
            "Closure": f"{verdicts}" + ("" if err is None else f" ({err * 100:+.2f}%)"),
            "dmon SM %": _num(dmon, lambda v: f"{v:.1f}") if dmon is not None or not s.util_dmon_note
                         else "n/a (< dmon period)",
            "NVML util %": _num(s.util_nvml_pct.mean, lambda v: f"{v:.1f}"),
            "Busy fraction": _num(s.util_busy_fraction.mean, lambda v: f"{v:.2f}"),
            "RPC path Gbit/s (÷ iperf3)": _rpc_path(MODES[info.mode], s.wire_gbps.mean, s.wire_vs_iperf.mean),
        })
    return rows


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
        row = {"Phase": info.phase, "Mode": info.mode, "Latency (s)": f"{s.latency_s.mean:.4f}"}
        row |= {k: _num(s.time[k] if s.time else None, lambda v: f"{v:.4f}") for k in TIME_PARTS}
        row["sum / latency"] = _num(s.time_parts_sum_ratio.mean, lambda v: f"{v:.3f}") if s.time_complete \
            else "n/a (wire, serdes unmeasured: capture off, or a call with no data packet seen)"
        rows.append(row)
    return rows


def harness_rows(infos, controls: dict, link: dict | None) -> list[dict]:
    """The harness's own evidence: is the link measured, is the RPC path fast enough, what does
    the probe cost, is the baseline honest, does the payload model close, do the parts add up.
    A check with nothing to show in this run (no link, no controls run) has no row."""
    summaries = {i.name: i.summary for i in infos}
    rows = [_link_row(link), _rpc_path_row(summaries), _probe_cost_row(controls.get("capture_overhead")),
            _analysis_row(summaries), _baseline_row(controls.get("local_vs_generate")),
            _closure_row(summaries), _time_sum_row(summaries)]
    return [{"Check": c, "Figure": f, "Target": t} for c, f, t in filter(None, rows)]


def _link_row(link):
    iperf = {k.split("_")[2]: v for k, v in (link or {}).items() if k.startswith("iperf3_gbps_")}
    if not iperf:
        return None
    shaped = f"shaped to {link['shaped_gbps']:g}" if link.get("shaped_gbps") else "unshaped"
    return (f"iperf3 Gbit/s ({'/'.join(iperf)} streams; {shaped})",
            " / ".join(f"{v:.1f}" for v in iperf.values()), "-")


def _rpc_path_row(summaries):
    naive = {k.split("-")[0]: v.wire_vs_iperf.mean for k, v in summaries.items()
             if MODES[k.split("-", 1)[1]].stateless}
    figure = ", ".join(f"{phase} {v:.2f}" for phase, v in naive.items() if v is not None)
    return figure and ("naive RPC path ÷ iperf3 (as many streams as lanes)", figure, f">= {RPC_BOUND}")


def _probe_cost_row(cap):
    if not cap:
        return None
    q1, q3 = cap.get("on_over_off_iqr", (None, None))
    iqr = f" [quartiles {q1:.3f}-{q3:.3f}, {len(cap['latency_on_s'])} pairs]" if q1 else ""
    return "latency probe on ÷ off (naive prefill)", f"{cap['on_over_off']:.3f}{iqr}", "<= 1.02"


def _analysis_row(summaries):
    shares = [(v.analysis_share.mean, k) for k, v in summaries.items() if MODES[k.split("-", 1)[1]].remote]
    worst = max((s for s in shares if s[0] is not None), default=None)
    return worst and ("capture analysis ÷ round (worst remote cell)", f"{worst[0] * 100:.1f}% ({worst[1]})", "<= 5%")


def _baseline_row(base):
    return base and ("local loop ÷ generate(), time per token", f"{base['loop_over_generate']:.2f}", "<= 1.05")


def _closure_row(summaries):
    judged = [(k, v.closure_error.mean) for k, v in summaries.items()
              if any(not verdict.startswith("n/a") for verdict in v.closure_verdicts)]
    figure = ", ".join(f"{k} {e * 100:+.2f}%" for k, e in judged)
    return figure and ("payload closure error (cells >= 1 MB)", figure, "within ±2%")


def _time_sum_row(summaries):
    sums = [v.time_parts_sum_ratio.mean for v in summaries.values() if v.time_parts_sum_ratio.mean]
    return sums and ("time parts ÷ wall-clock (all cells)", f"{min(sums):.3f} - {max(sums):.3f}", "0.95 - 1.05")


def full_report(infos, controls: dict | None = None, link: dict | None = None) -> str:
    infos = list(infos)
    checks = harness_rows(infos, controls or {}, link)
    return "\n\n".join([
        markdown_table(table_rows(infos)),
        "Measurement checks (means over measured rounds; iperf3 with as many streams as the RPC "
        f"channel has lanes; RPC-bound: under {RPC_BOUND:.0%} of it, the RPC path and not the link sets "
        "the naive mode's pace):\n" + markdown_table(check_rows(infos), CHECK_COLUMNS),
        "Time breakdown (s per round, each part measured: client and server clocks, server timers,"
        " packet times; see harness/measure/timeline.py):\n"
        + markdown_table(time_rows(infos), ["Phase", "Mode", "Latency (s)", *TIME_PARTS, "sum / latency"]),
        *(["Harness checks (this run):\n" + markdown_table(checks, ["Check", "Figure", "Target"])] if checks else [])])
