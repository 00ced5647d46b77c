"""Where each RPC call's time went, measured: the client's clock around the call, the server's
clock around its method, and the packets tcpdump stamped on the client's interface, put on one
timeline (the client's wall clock; the server's stamps shifted by the measured clock offset).

    sent ─client_ser─ first request byte ─wire_tx─ last request byte ─server_deser─ entered
    entered ─ the server's method: its own timers (load, h2d, compute, d2h) + the rest ─ left
    left ─server_ser─ first reply byte ─wire_rx─ last reply byte ─client_deser─ returned

The request is the client's data packets between sending and the server's entering its method,
the reply the server's data packets between its leaving and the client's return: the client sends
data packets of its own while the server works (TensorPipe's), so the server's stamps must bound
the request. Over two hosts an offset error larger than the server's receive or send time (its
bound: half of clock_rtt_s) would move a packet across; on one kernel the offset is 0.

client_ser: Python's RPC call, pickling, TensorPipe's descriptors until the first data byte
leaves. wire_tx/wire_rx: first to last data-carrying packet of each direction, as the client's
interface saw them. server_deser: the rest of the request's arrival, unpickling and the hand-over
to the method (on a real network also one propagation delay). server_ser and client_deser the
same the other way. Pure ACKs and the other direction's packets are not "data" here.
"""
from __future__ import annotations

import numpy as np

from harness.measure.pcap import A_TO_B, B_TO_A

PARTS = ("client_ser_s", "wire_tx_s", "server_deser_s", "server_ser_s", "wire_rx_s", "client_deser_s")


def call_timeline(stamps: list, packets, offset_s: float) -> dict | None:
    """Sums over a round's calls of each part of PARTS, plus the server's method time
    (server_method_s) and the number of calls placed. stamps: (sent, entered, left, returned)
    per call, the server's two in its own clock; packets: harness.measure.pcap.PcapPackets of the
    round; offset_s: server clock - client clock. None when a call has no data packet each way
    (capture lost them, or no capture): then nothing here is trustworthy."""
    if not stamps or packets is None:
        return None
    order = np.argsort(packets.ts_s, kind="stable")  # capture order across CPUs can jitter
    ts = packets.ts_s[order]
    data = packets.payload_len[order] > 0
    tx = ts[data & (packets.direction[order] == A_TO_B)]
    rx = ts[data & (packets.direction[order] == B_TO_A)]
    sums = dict.fromkeys(PARTS, 0.0)
    method = 0.0
    for sent, entered, left, returned in stamps:
        entered, left = entered - offset_s, left - offset_s
        req = tx[np.searchsorted(tx, sent):np.searchsorted(tx, entered, "right")]
        rep = rx[np.searchsorted(rx, left):np.searchsorted(rx, returned, "right")]
        if not len(req) or not len(rep):
            return None
        for name, t_a, t_b in (("client_ser_s", sent, req[0]), ("wire_tx_s", req[0], req[-1]),
                               ("server_deser_s", req[-1], entered), ("server_ser_s", left, rep[0]),
                               ("wire_rx_s", rep[0], rep[-1]), ("client_deser_s", rep[-1], returned)):
            sums[name] += float(t_b - t_a)
        method += left - entered
    return sums | {"server_method_s": method, "calls_placed": len(stamps)}
