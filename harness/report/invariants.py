"""What every cell must satisfy; each failure is a sentence with the numbers in it.
Cells are harness.report.summary.CellInfo."""
from __future__ import annotations

from harness.compute.modes import MODES
from harness.report.units import human_bytes


def check_cell(info, others) -> list[str]:
    return (_wire_covers_payload(info) + _capture_complete(info) + _same_tokens(info, others)
            + _blind_exceeds_aware(info, others))


def _wire_covers_payload(info) -> list[str]:
    out = []
    for i, r in enumerate(info.measured):
        for way, wire, payload in (("client->GPU", r["link_tx_bytes"], r["payload_tx_bytes"]),
                                   ("GPU->client", r["link_rx_bytes"], r["payload_rx_bytes"])):
            if wire < payload:
                out.append(f"{info.mode} {info.phase} round {i + 1}: {way} link bytes "
                           f"{wire} < analytic payload {payload}: the tensors did not cross the link")
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
    if b.summary.link_bytes.mean > a.summary.link_bytes.mean:
        return []
    return [f"{info.phase}: {b.mode} moved {human_bytes(b.summary.link_bytes.mean)} <= {a.mode}'s "
            f"{human_bytes(a.summary.link_bytes.mean)}: the semantic gap vanished"]
