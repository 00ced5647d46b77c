"""What every cell must satisfy, and the targets the harness holds itself to. Each finding is a
sentence with the numbers in it. Cells are harness.measure.results.CellInfo.

check_cell: a measurement that is wrong (tokens differ, packets dropped, bytes unexplained, the
gap gone): the cell fails. target_misses: a measurement that is right but less than the plan
asks (the RPC path, not the link, set the pace; the analysis took a large share of a round):
a warning, and a failure under --gap-strict. The targets judged on an interval, where noise
could straddle them, are harness.report.verdicts'.
"""
from __future__ import annotations

from harness.compute.modes import MODES
from harness.report.units import human_bytes

RPC_BOUND = 0.8             # below this share of iperf3 the RPC path, not the link, sets naive's pace
ANALYSIS_SHARE_MAX = 0.05   # the capture's analysis, as a share of the round it describes...
ANALYSIS_FLOOR_S = 0.01     # ...once it takes longer than this: every capture already costs tcpdump's start
                            # (polled every 50 ms) and stop, so a read of a few packets under this
                            # slows no run, whatever its share of a short round (docs/evidence.md)
COMPUTE_AGREEMENT_MAX = 1.5  # the same forward's time in the client (local) and the worker (sys_simulated)
OTHERS_MAX = 0.25            # of the host's CPUs that processes other than the suite's may use during a cell
RETRANSMISSION_NOTE = 0.01  # above this share of TCP payload, retransmissions explain closure misses


def check_cell(info, others) -> list[str]:
    return (_wire_covers_payload(info) + _payload_as_modelled(info) + _capture_complete(info) + _closure_holds(info)
            + _same_tokens(info, others) + _blind_exceeds_aware(info, others))


def target_misses(info) -> list[str]:
    return _rpc_path_reaches_link(info) + _analysis_is_cheap(info)


def _closure_holds(info) -> list[str]:
    out = []
    for i, r in enumerate(info.measured):
        a = r.get("analysis")
        if a and a["closure_verdict"] == "INVALID":
            wire = r["link_tx_bytes"] + r["link_rx_bytes"]
            out.append(f"{info.name} round {i + 1}: wire {wire} B vs {a['closure_predicted_bytes']} B predicted "
                       f"(payload + headers + RPC framing), {a['closure_error'] * 100:+.2f}%: outside the "
                       f"closure tolerance, so the link carried bytes the payload model does not explain"
                       + _why(r))
    return out


def _why(r: dict) -> str:
    d = r.get("dissection") or {}
    share = d.get("retransmission_share")
    if not share or share <= RETRANSMISSION_NOTE:
        return ""
    return f" ({share * 100:.2f}% of TCP payload was retransmitted)"


def _rpc_path_reaches_link(info) -> list[str]:
    ratio = info.summary.wire_vs_iperf.mean
    if not MODES[info.mode].stateless or ratio is None or ratio >= RPC_BOUND:
        return []
    return [f"{info.name}: the RPC path moved {info.summary.wire_gbps.mean:.2f} Gbit/s, {ratio:.2f} of iperf3's "
            f"rate on this link (target >= {RPC_BOUND}): the RPC path, not the link, set this cell's pace"]


def _analysis_is_cheap(info) -> list[str]:
    share = info.summary.analysis_share.mean
    if not MODES[info.mode].remote or share is None or share <= ANALYSIS_SHARE_MAX:
        return []
    if share * info.summary.latency_s.mean <= ANALYSIS_FLOOR_S:
        return []
    return [f"{info.name}: reading the capture took {share * 100:.1f}% of a round's time "
            f"(target <= {ANALYSIS_SHARE_MAX:.0%} beyond {ANALYSIS_FLOOR_S * 1e3:.0f} ms; outside the timed "
            "region, but it slows the run)"]


def _wire_covers_payload(info) -> list[str]:
    out = []
    for i, r in enumerate(info.measured):
        for way, wire, payload in (("client->GPU", r["link_tx_bytes"], r["payload_tx_bytes"]),
                                   ("GPU->client", r["link_rx_bytes"], r["payload_rx_bytes"])):
            if wire < payload:
                out.append(f"{info.mode} {info.phase} round {i + 1}: {way} link bytes "
                           f"{wire} < analytic payload {payload}: the tensors did not cross the link")
    return out


def _payload_as_modelled(info) -> list[str]:
    """What the backends counted from the tensors sent must be what the payload model says."""
    out = []
    for i, r in enumerate(info.measured):
        a = r.get("analysis")
        if a and not a["analytic_equals_tensors"]:
            out.append(f"{info.name} round {i + 1}: tensors sent {r['payload_tx_bytes']} B / received "
                       f"{r['payload_rx_bytes']} B, the payload model says {a['analytic_tx_bytes']} / "
                       f"{a['analytic_rx_bytes']}: the model or a backend is wrong")
    return out


def _capture_complete(info) -> list[str]:
    drops = [r["pcap_dropped"] for r in info.rounds if r["pcap_dropped"]]
    return [f"tcpdump dropped {sum(drops)} packets in {len(drops)} round(s): pcap bytes are short"] if drops else []


def _same_tokens(info, others) -> list[str]:
    out = []
    mine = [r["tokens"] for r in info.rounds]
    if any(t != mine[0] for t in mine):
        out.append(f"{info.mode} {info.phase}: rounds generated different tokens")
    for other in others:
        if other is not info and other.phase == info.phase:
            theirs = other.rounds[0]["tokens"]
            if theirs != mine[0]:
                out.append(f"{info.mode} and {other.mode} {info.phase} tokens differ: "
                           f"{mine[0][:8]}... vs {theirs[:8]}...")
    return out


def _blind_exceeds_aware(info, others) -> list[str]:
    """The semantics-blind remote mode must move more bytes than the semantics-aware one."""
    remote = {o.mode: o for o in [*others, info] if o.phase == info.phase and MODES[o.mode].remote}
    blind = [o for o in remote.values() if MODES[o.mode].stateless]
    aware = [o for o in remote.values() if not MODES[o.mode].stateless]
    if info.mode not in remote or not blind or not aware:
        return []
    b, a = blind[0], aware[0]
    if b.summary.link_bytes.mean is None or a.summary.link_bytes.mean is None:
        return []  # a cell with no measured round has failed already
    if b.summary.link_bytes.mean > a.summary.link_bytes.mean:
        return []
    return [f"{info.phase}: {b.mode} moved {human_bytes(b.summary.link_bytes.mean)} <= {a.mode}'s "
            f"{human_bytes(a.summary.link_bytes.mean)}: the semantic gap vanished"]


def _compute_s(info) -> float | None:
    """A cell's forwards' time in its least disturbed measured round (the client's or the worker's
    own timer): a neighbour only ever slows a round, so the fastest are what the two sides compare."""
    values = [r["server_s"].get("compute_s") for r in info.measured]
    return min(values) if values and None not in values else None


def busy_host_misses(info, others) -> list[str]:
    """A cell measured beside a busy neighbour: other processes took more than OTHERS_MAX of the
    host's CPUs while it ran (harness.measure.hostload). And where local and sys_simulated of one
    phase cannot both be right: they compute the same function, one in the client, one in the
    worker, so their compute times agree and sys_simulated, local plus its RPC, is never faster
    than local; when they disagree a busy host is the likely cause."""
    out = []
    share = (info.host_load or {}).get("others_share")
    if share is not None and share > OTHERS_MAX:
        out.append(f"{info.name}: other processes used {share:.0%} of the host's CPUs while it ran (target <= "
                   f"{OTHERS_MAX:.0%}): its figures are the neighbours' as much as the suite's; measure on an idle host")
    cells = {o.mode: o for o in [*others, info] if o.phase == info.phase}
    local, aware = cells.get("local"), cells.get("sys_simulated")
    if info.mode not in ("local", "sys_simulated") or not local or not aware:
        return out
    a, b = _compute_s(local), _compute_s(aware)
    if a and b and max(a, b) / min(a, b) > COMPUTE_AGREEMENT_MAX:
        out.append(f"{info.phase}: the same forwards took {a:.4f} s in the client (local) and {b:.4f} s in the "
                   f"worker (sys_simulated) in their fastest rounds, {max(a, b) / min(a, b):.1f}x apart (target <= "
                   f"{COMPUTE_AGREEMENT_MAX}){_busy(local, aware)}")
    la, sa = local.summary.latency_s, aware.summary.latency_s
    if la.mean is not None and sa.mean is not None and la.mean - la.std > sa.mean + sa.std:
        out.append(f"{info.phase}: local took {la.mean:.4f} ± {la.std:.4f} s, longer than sys_simulated's "
                   f"{sa.mean:.4f} ± {sa.std:.4f} s, which is local's work plus an RPC{_busy(local, aware)}")
    return out


def _busy(*infos) -> str:
    others = [i.host_load["others_share"] for i in infos if i.host_load]
    share = f" (other processes used {max(others):.0%} of the host's CPUs during these cells)" if others else ""
    return f": a busy host is the likely cause{share}; measure on an idle host"
