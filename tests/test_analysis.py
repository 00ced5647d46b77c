"""The report's arithmetic on numbers written out by hand: the analytic payload of each mode, the
closure verdict at its ±2% edge, and the GPU utilization fields (short rounds, no GPU)."""
from __future__ import annotations

import pytest

from harness.compute.modes import MODES
from harness.measure.payload import Payload, Shape, cell_payload, closure, header_bytes
from harness.report.analysis import utilization

# a made-up shape small enough to add up by hand: KV(s) = 2 layers x 2 (K and V) x 3 heads x s x
# 4 head_dim x 2 bytes = 96 s bytes; logits = 10 x 2 = 20 bytes; ids are int64, 8 bytes a token
SHAPE = Shape(weights_bytes=1000, weights_listed_bytes=1200, layers=2, kv_heads=3, head_dim=4, vocab=10,
              elem_bytes=2)
PROMPT, STEPS = 5, 3


def test_shape_kv_and_logits():
    assert SHAPE.kv(0) == 0
    assert SHAPE.kv(1) == 96
    assert SHAPE.kv(5) == 480
    assert SHAPE.logits == 20


@pytest.mark.parametrize("mode,phase,expected", [
    ("local", "prefill", Payload(0, 0, 0)),
    ("local", "decode", Payload(0, 0, 0)),
    # one call: 5 ids (40) + weights (1000) + no KV yet; back: logits (20) + KV(5) (480)
    ("naive", "prefill", Payload(1040, 500, 1)),
    # + 3 steps at s_prev 5, 6, 7: each 1 id (8) + weights (1000) + KV(s_prev) (480, 576, 672);
    #   back: logits (20) + KV(s_prev + 1) (576, 672, 768)
    ("naive", "decode", Payload(1040 + 3 * 1008 + 480 + 576 + 672, 500 + 3 * 20 + 576 + 672 + 768, 4)),
    # ids each way only: the weights went once, apart, the KV cache stays on the GPU host and the
    # next token is taken there (8 bytes back a call)
    ("sys_simulated", "prefill", Payload(40, 8, 1)),
    ("sys_simulated", "decode", Payload(40 + 3 * 8, 8 + 3 * 8, 4)),
])
def test_cell_payload_by_hand(mode, phase, expected):
    assert cell_payload(SHAPE, MODES[mode], phase, PROMPT, STEPS) == expected


def test_naive_decode_numbers():
    """The same decode cell spelled out as totals, so a slip in the table above shows twice."""
    p = cell_payload(SHAPE, MODES["naive"], "decode", PROMPT, STEPS)
    assert (p.tx_bytes, p.rx_bytes, p.total) == (5792, 2576, 8368)


def test_payload_counts_tied_weights_once():
    """weights_bytes (tied tensors once) is what ships, never weights_listed_bytes."""
    listed = Shape(**{**SHAPE.__dict__, "weights_bytes": 1200})
    assert cell_payload(listed, MODES["naive"], "prefill", PROMPT, STEPS).tx_bytes == 1240


# closure: payload 1,000,000 B (exactly the 1 MB floor) in 2 calls, 100 packets, 700 B of RPC
# framing a call: predicted = 1,000,000 + 100 x 66 + 2 x 700 = 1,008,000 B.
# error = (wire - predicted) / wire; |error| <= 2% is ok:
#   wire 1,028,571: (20,571 / 1,028,571) = +0.0199999 ok;  wire 1,028,572: +0.0200006 INVALID
#   wire   988,236: (-19,764 / 988,236) = -0.0199993 ok;   wire   988,235: -0.0200003 INVALID
EDGE = Payload(tx_bytes=900_000, rx_bytes=100_000, calls=2)


@pytest.mark.parametrize("wire,verdict,error", [
    (1_008_000, "ok", 0.0),
    (1_028_571, "ok", 20_571 / 1_028_571),
    (1_028_572, "INVALID", 20_572 / 1_028_572),
    (988_236, "ok", -19_764 / 988_236),
    (988_235, "INVALID", -19_765 / 988_235),
    (2_016_000, "INVALID", 0.5),
])
def test_closure_at_the_two_percent_edge(wire, verdict, error):
    c = closure(EDGE, wire, packets=100, per_message_bytes=700.0)
    assert c.predicted_bytes == 1_008_000
    assert c.wire_bytes == wire
    assert c.verdict == verdict
    assert c.error == pytest.approx(error, rel=1e-9)


def test_closure_not_judged_under_one_megabyte_or_without_capture():
    small = Payload(tx_bytes=999_999, rx_bytes=0, calls=1)
    c = closure(small, 5_000_000, packets=10, per_message_bytes=700.0)
    # far off (predicted 999,999 + 660 + 700 = 1,001,359), but too small a payload to judge
    assert (c.predicted_bytes, c.verdict) == (1_001_359, "n/a (<1 MB)")
    assert c.error == pytest.approx((5_000_000 - 1_001_359) / 5_000_000)
    c = closure(EDGE, 2_016_000, packets=None, per_message_bytes=700.0)
    # no capture: no packet count, so headers are not predicted (1,000,000 + 2 x 700)
    assert (c.predicted_bytes, c.verdict) == (1_001_400, "n/a (no capture)")


def test_closure_counts_the_links_own_header():
    """A TUN counts 52 B of headers a packet (no Ethernet): 100 packets predict 1,400 B less."""
    assert header_bytes("65534") == 52 and header_bytes("1") == 66 and header_bytes(None) == 66
    c = closure(EDGE, 1_006_600, packets=100, per_message_bytes=700.0, header_B=header_bytes("65534"))
    assert (c.predicted_bytes, c.error, c.verdict) == (1_006_600, 0.0, "ok")


def test_closure_with_nothing_on_the_wire_is_invalid():
    """A 1 MB payload and no bytes on the wire (counters that read nothing) must not close."""
    c = closure(EDGE, 0, packets=100, per_message_bytes=700.0)
    assert c.verdict == "INVALID", c


def round_record(latency_s, gpu_sm_pct, nvml_util_pct=None, gpu_span_s=None, analysis_s=None):
    server_s = {"compute_s": 2 * gpu_span_s, "gpu_span_s": gpu_span_s} if gpu_span_s is not None else {}
    r = {"latency_s": latency_s, "gpu_sm_pct": gpu_sm_pct, "nvml_util_pct": nvml_util_pct, "server_s": server_s}
    if analysis_s is not None:
        r["analysis_s"] = analysis_s
    return r


def test_utilization_long_round_keeps_dmon():
    u = utilization(round_record(2.0, 37.0, nvml_util_pct=41.5, gpu_span_s=0.5, analysis_s=0.02))
    assert u == {"util_dmon_sm_pct": 37.0, "util_dmon_note": None, "util_nvml_pct": 41.5,
                 "util_gpu_span_fraction": 0.25, "analysis_share": 0.01, "sm_clock_mhz": None}


def test_utilization_one_second_round_is_not_short():
    assert utilization(round_record(1.0, 12.0))["util_dmon_sm_pct"] == 12.0


def test_utilization_short_round_drops_dmon_with_a_note():
    """Under dmon's 1 s period its figure is one sample or none: shown as n/a with the reason,
    while NVML's (20 ms samples) and the GPU span fraction stay."""
    u = utilization(round_record(0.4, 37.0, nvml_util_pct=55.0, gpu_span_s=0.1, analysis_s=0.004))
    assert u["util_dmon_sm_pct"] is None
    assert u["util_dmon_note"] == "round (0.400 s) shorter than dmon's 1 s sample period: no honest average"
    assert u["util_nvml_pct"] == 55.0
    assert u["util_gpu_span_fraction"] == pytest.approx(0.25)
    assert u["analysis_share"] == pytest.approx(0.01)


@pytest.mark.parametrize("latency_s", [0.4, 3.0])
def test_utilization_without_gpu_is_none_never_zero(latency_s):
    u = utilization(round_record(latency_s, None, gpu_span_s=latency_s / 2))
    assert u["util_dmon_sm_pct"] is None and u["util_nvml_pct"] is None
    assert u["util_dmon_note"] is None, "no GPU is not a short round"
    assert u["util_gpu_span_fraction"] == pytest.approx(0.5)  # no GPU for dmon; the span's arithmetic holds


def test_utilization_without_timers():
    u = utilization(round_record(2.0, 10.0))
    assert u["util_gpu_span_fraction"] is None and u["analysis_share"] is None
    assert utilization(round_record(0.0, None, gpu_span_s=0.1))["util_gpu_span_fraction"] is None
