"""What every cell must satisfy; each failure is a sentence with the numbers in it."""
from __future__ import annotations

from harness.report.units import human_bytes


def check_cell(info: dict, others) -> list[str]:
    return (_wire_covers_payload(info) + _capture_complete(info) + _same_tokens(info, others)
            + _naive_exceeds_sys(info, others))


def _measured(info):
    return [r for r in info["rounds"] if not r["warmup"]]


def _wire_covers_payload(info) -> list[str]:
    out = []
    for i, r in enumerate(_measured(info)):
        for way, wire, payload in (("client->GPU", r["link_tx_bytes"], r["payload_tx_bytes"]),
                                   ("GPU->client", r["link_rx_bytes"], r["payload_rx_bytes"])):
            if wire < payload:
                out.append(f"{info['mode']} {info['phase']} round {i + 1}: {way} link bytes "
                           f"{wire} < analytic payload {payload}: the tensors did not cross the link")
    return out


def _capture_complete(info) -> list[str]:
    drops = [r["pcap_dropped"] for r in info["rounds"] if r["pcap_dropped"]]
    return [f"tcpdump dropped {sum(drops)} packets in {len(drops)} round(s): pcap bytes are short"] if drops else []


def _same_tokens(info, others) -> list[str]:
    out = []
    mine = [r["tokens"] for r in info["rounds"]]
    if any(t != mine[0] for t in mine):
        out.append(f"{info['mode']} {info['phase']}: rounds generated different tokens")
    for other in others:
        if other is not info and other["phase"] == info["phase"]:
            theirs = other["rounds"][0]["tokens"]
            if theirs != mine[0]:
                out.append(f"{info['mode']} and {other['mode']} {info['phase']} tokens differ: "
                           f"{mine[0][:8]}... vs {theirs[:8]}...")
    return out


def _naive_exceeds_sys(info, others) -> list[str]:
    pair = {o["mode"]: o for o in others if o["phase"] == info["phase"]} | {info["mode"]: info}
    if info["mode"] not in ("naive", "sys_simulated") or not {"naive", "sys_simulated"} <= pair.keys():
        return []
    naive = pair["naive"]["summary"]["link_bytes"]["mean"]
    sys_ = pair["sys_simulated"]["summary"]["link_bytes"]["mean"]
    if naive > sys_:
        return []
    return [f"{info['phase']}: naive moved {human_bytes(naive)} <= sys_simulated's "
            f"{human_bytes(sys_)}: the semantic gap vanished"]
