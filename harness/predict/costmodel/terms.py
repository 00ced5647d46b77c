"""The cost model's terms (TERMS: unit, meaning, source of each), the held-out targets, and the
fitted components (Compute per model, Components in all). See harness.predict.costmodel."""
from __future__ import annotations

from dataclasses import dataclass, field

from harness.measure.payload import HEADER_BYTES

LATENCY_TARGET = 0.10   # issue 13: held-out latency within 10%
BYTES_TARGET = 0.01     # ... and bytes within 1%

# term -> (unit, meaning, where its number comes from)
TERMS = {
    "call_s": ("s per call", "fixed cost of one remote forward call: an empty RPC's round trip plus "
               "pickling, hand-over to the compute thread, the small copies of ids and logits (sys: tokens), the "
               "client's token choice and the wire latency of a small message",
               "fitted: remote cells' latency less their modelled compute, wire, load and reply terms"),
    "round_s": ("s per round", "a round's one-off remote cost beyond its calls (a session's first call: "
                "a new cache slot and id)", "fitted with call_s (prefill rounds have 1 call, decode 1 + steps)"),
    "rtts_per_call": ("link RTTs per call", "how many of the link's propagation round trips one call "
                      "waits for", "fitted where the calibration varies the link's RTT, else 1 (a request "
                      "and its reply)"),
    "local_call_s": ("s per forward", "the local loop's own cost per forward beyond compute (token choice)",
                     "fitted: local cells' latency less their measured compute"),
    "goodput_Bps": ("bytes/s", "the link's TCP goodput with as many streams as the RPC channel has lanes",
                    "per point: iperf3 in the same run (machine_info.semantic_gap.link_check)"),
    "path_Bps": ("bytes/s", "the RPC path's own ceiling, combined with the link's by path_k: "
                 "wire time = (link^k + path^k)^(1/k) of the two times", "fitted with path_k: measured wire "
                 "time of the cells moving >= 1 MB per call; infinite where the path kept up with the link"),
    "path_k": ("exponent", "how the RPC path and the link combine: 1 in series (their times add), inf "
               "overlapped (the slower sets the pace), between: partly overlapped",
               "fitted with path_Bps where the calibration has two link rates or more (the least relative "
               "error over k in 1, 1.5, 2, 3, 4, 6, 8, inf), else 1: one link cannot tell them apart"),
    "wire_call_s": ("s per call", "wire time a call moving >= 1 MB takes beyond its bytes at the combined "
                    "rate; fitted, not traced to one cause (candidates: TCP's window growing again on a "
                    "connection that idled between calls, a shaped queue's bucket, TensorPipe's descriptor "
                    "before the payload)",
                    "fitted with path_Bps where those cells span two call counts (prefill 1, decode 1 + steps), "
                    "else 0; counted only for calls moving >= 1 MB, as the cells it is fitted on"),
    "load_Bps": ("bytes/s", "rate at which the naive worker lands what it receives (weights through pinned "
                 "staging, the cache) on the device", "fitted: naive cells' server_load_s + server_h2d_s"),
    "d2h_Bps": ("bytes/s", "rate at which the naive worker packs its reply (cache + logits) back to host "
                "memory", "fitted: naive cells' server_d2h_s"),
    "prefill_s": ("s per prefill", "compute of a prefill forward, fixed part",
                  "fitted per model: server_compute_s of every cell"),
    "prefill_token_s": ("s per prompt token", "compute of a prefill forward per prompt token",
                        "fitted per model where prompt lengths vary, else 0 (folded into prefill_s)"),
    "step_s": ("s per decode step", "compute of one decode step, fixed part", "fitted per model"),
    "step_ctx_s": ("s per cached token per step", "growth of a decode step's compute with its cache",
                   "fitted per model from totals where prompt lengths vary, else from the local decode's "
                   "per-step times (slope against cache length), else 0"),
    "framing_B": ("bytes per call", "wire bytes of a call beyond its payload and per-segment headers: "
                  "pickled call, tensor descriptors, TensorPipe headers, small packets (ACKs, descriptors); "
                  "beyond an empty call's (empty_call_B) where the runs measured that; an Ethernet link's, "
                  "scaled by a link's header per packet (a TUN's 52 B: x 52/66)",
                  "fitted: remote cells' link bytes - payload"),
    "empty_call_B": ("bytes per call", "an empty RPC's wire bytes both ways, headers and ACKs included: "
                     "how many packets a small call takes is the link's (a shaped queue packs small writes "
                     "together, a TUN counts no Ethernet header)", "measured per run by the empty-call "
                     "control on the run's own link; the calibration's mean where a point has none"),
    "round_B": ("bytes per round", "wire bytes of a round beyond its calls' (a session's first call: its "
                "cache id, the channel's first use); an Ethernet link's, scaled as framing_B",
                "fitted with framing_B (prefill rounds have 1 call)"),
    "segment_B": ("payload bytes per packet", "TCP payload per packet the counters count (a veth counts "
                  "GSO super-packets; a NIC at MTU 1500 counts 1448-byte segments)",
                  f"fitted with framing_B ({HEADER_BYTES} B of headers per packet), or set by the link"),
}


# --- the model ------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Compute:
    prefill_s: float
    prefill_token_s: float
    step_s: float
    step_ctx_s: float
    source: str = ""

    def forward(self, s_prev: int, new: int) -> float:
        return self.prefill_s + self.prefill_token_s * new if s_prev == 0 else self.step_s + self.step_ctx_s * s_prev


@dataclass(frozen=True)
class Components:
    call_s: float
    round_s: float
    rtts_per_call: float
    local_call_s: float
    path_Bps: float
    load_Bps: float
    d2h_Bps: float
    framing_B: float
    segment_B: float
    round_B: float = 0.0
    empty_call_B: float | None = None               # None: framing_B is a call's whole framing; else
                                                    # framing_B is beyond an empty call's on the point's link
    path_k: float = 1.0                             # 1: path and link in series; inf: overlapped
    wire_call_s: float = 0.0                        # wire time per call beyond the bytes' (s)
    compute: dict = field(default_factory=dict)     # Point.key -> Compute
    # what scaling compute to another model or GPU needs, and what the report shows beside the fit
    shapes: dict = field(default_factory=dict)      # Point.key -> Shape
    refs: dict = field(default_factory=dict)        # Point.key -> (prompt_len, steps) calibrated
    gpu: str | None = None
    noop_rtt_s: float | None = None
    pinned_h2d_Bps: float | None = None
    pinned_d2h_Bps: float | None = None
    notes: dict = field(default_factory=dict)       # term -> how this fit got it
    sources: tuple = ()                             # the calibration JSONs

    def empty_B(self, link_empty_call_B: float | None = None) -> float:
        """An empty call's wire bytes on the link: its run's measure, else the calibration's; 0 where
        the calibration measured none (framing_B then holds a whole call's framing, and round_B the
        release call's)."""
        if self.empty_call_B is None:
            return 0.0
        return self.empty_call_B if link_empty_call_B is None else link_empty_call_B

    def call_B(self, link_empty_call_B: float | None = None) -> float:
        """A call's wire bytes beyond its payload's headers: the link's empty call, then framing_B."""
        return self.empty_B(link_empty_call_B) + self.framing_B
