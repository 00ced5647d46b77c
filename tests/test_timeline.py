"""Placing one RPC call's packets between the client's and the server's clocks."""
from __future__ import annotations

import numpy as np
import pytest

from harness.measure.pcap import A_TO_B, B_TO_A, OTHER, PcapPackets
from harness.measure.timeline import call_timeline


def packets(rows):
    """rows: (time, direction, payload bytes)."""
    ts, d, pay = zip(*rows)
    return PcapPackets(np.array(ts, float), np.array(d, np.int8), np.array(pay, np.int64) + 66,
                       np.array(pay, np.int64))


# one call: sent 0, request data 1..3, server in its method 4..8, reply data 9..10, returned 12;
# pure ACKs (payload 0) both ways and another host's packet (OTHER) must be ignored
CALL = [(0.0, 4.0, 8.0, 12.0)]
PKTS = packets([(1.0, A_TO_B, 1000), (1.5, B_TO_A, 0), (3.0, A_TO_B, 1000), (5.0, OTHER, 500),
                (9.0, B_TO_A, 800), (9.5, A_TO_B, 0), (10.0, B_TO_A, 800)])


def test_parts_of_one_call():
    t = call_timeline(CALL, PKTS, 0.0)
    assert t == {"client_ser_s": 1.0, "wire_tx_s": 2.0, "server_deser_s": 1.0, "server_ser_s": 1.0,
                 "wire_rx_s": 1.0, "client_deser_s": 2.0, "server_method_s": 4.0, "calls_placed": 1}


@pytest.mark.parametrize("offset", [-0.9, -0.5, 0.5, 0.9])
def test_offset_error_within_the_server_gaps_moves_time_only_between_server_parts(offset):
    """A clock offset off by less than the server's receive and send times keeps every packet on
    its side: only the split between server_deser and server_ser moves, not their sum."""
    right, wrong = call_timeline(CALL, PKTS, 0.0), call_timeline(CALL, PKTS, offset)
    for k in ("client_ser_s", "wire_tx_s", "wire_rx_s", "client_deser_s", "server_method_s"):
        assert wrong[k] == pytest.approx(right[k]), k
    assert wrong["server_deser_s"] + wrong["server_ser_s"] == pytest.approx(2.0)


def test_client_data_while_the_server_works_is_not_request():
    """TensorPipe's client sends data packets of its own while the server computes (seen here):
    the server's stamps bound the request."""
    late = packets(list(zip(PKTS.ts_s, PKTS.direction, PKTS.payload_len)) + [(6.0, A_TO_B, 40)])
    assert call_timeline(CALL, late, 0.0) == call_timeline(CALL, PKTS, 0.0)


def test_unsorted_packets_and_several_calls():
    two = [(0.0, 4.0, 8.0, 12.0), (20.0, 24.0, 28.0, 32.0)]
    later = [(t + 20, d, p) for t, d, p in zip(PKTS.ts_s, PKTS.direction, PKTS.payload_len)]
    both = packets(list(zip(PKTS.ts_s, PKTS.direction, PKTS.payload_len)) + later)
    order = np.random.default_rng(0).permutation(len(both.ts_s))
    shuffled = PcapPackets(*(a[order] for a in (both.ts_s, both.direction, both.orig_len, both.payload_len)))
    t = call_timeline(two, shuffled, 0.0)
    assert t["wire_tx_s"] == 4.0 and t["client_deser_s"] == 4.0 and t["calls_placed"] == 2


def test_a_call_without_data_packets_gives_nothing():
    assert call_timeline([(0.0, 4.0, 8.0, 12.0)], packets([(1.0, A_TO_B, 1000), (9.0, B_TO_A, 0)]), 0.0) is None
    assert call_timeline(CALL, None, 0.0) is None
    assert call_timeline([], PKTS, 0.0) is None
