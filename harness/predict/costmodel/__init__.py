"""A cost model of every cell (issue 13, item 3): a cell's latency and bytes from a few measured
components, fitted on calibration runs and checked on points it was not fitted on.

A round is a sequence of forward calls: the prefill (P prompt tokens, empty cache), then for decode
one call per step j = 0..steps-1 (one token, a cache of P + j tokens). Per round:

  local:   T = sum_calls compute(call) + calls x local_call_s
  remote:  T = sum_calls compute(call) + round_s + calls x (call_s + rtts_per_call x rtt_s)
               + wire(wire_bytes / goodput_Bps, wire_bytes / path_Bps) + bulk_calls x wire_call_s
           wire(a, b) = (a^k + b^k)^(1/k), k = path_k: 1 in series (the times add), inf overlapped (max)
           bulk_calls: the calls moving >= 1 MB (naive's; sys_simulated's carry ids and tokens)
  naive adds   + load_bytes / load_Bps + reply_bytes / d2h_Bps
               (load_bytes = what it receives: weights + cache + ids; reply_bytes = cache + logits)

  compute(prefill of P tokens)          = prefill_s + prefill_token_s x P
  compute(decode step over a c-token cache) = step_s + step_ctx_s x c

Bytes of a round, both directions, Ethernet/IP/TCP headers included as the link's counters count:

  bytes = payload + s x (round_B + calls x framing_B + payload x HEADER_BYTES / segment_B)
          + calls x empty_call_B     (s: the link's header per an Ethernet one's, Link.header_scale)

payload is harness.measure.payload.cell_payload's, exact; the other terms are the protocol: a
session's set-up, an empty call's bytes on the point's link (its run's own control; 0 where the
calibration runs did not measure it), RPC framing per call beyond that, and one 66-byte header per
packet of segment_B payload bytes; the first three are mostly header-only packets, so on a link whose
counters count a smaller header (a TUN: 52 B, no Ethernet) they scale with it.

Every term, its unit and where its number comes from is in TERMS; `Components.notes` says, per fit,
which cells gave it or why it holds a default. The fit is relative least squares (each point's error
divided by its measured value) term group by term group, from the time parts the suite measures
(harness.report.analysis.TIME_PARTS), so that each component comes from the part that shows it:
  compute        <- server_compute_s of every cell (all modes run the same engine), per model
  load / d2h     <- server_load_s + server_h2d_s / server_d2h_s of the naive cells
  path, path_k,  <- wire_tx_s + wire_rx_s of the cells moving >= 1 MB per call, less one link RTT a
  wire_call_s       call (the packet times' span is taken to hold one), against bytes / goodput; k is
                    fitted only over two link rates or more (one link cannot tell series from overlap),
                    wire_call_s only over two call counts (a prefill's 1, a decode's 1 + steps)
  call / round   <- what remains of each remote cell's latency after the modelled terms
  round/framing/segment <- link bytes - payload (- calls x empty_call_B) of the remote cells
A term no calibration point can tell apart from another (one prompt length cannot separate
prefill_s from prefill_token_s) is held at 0 and the note says so: its effect is folded into the term
it is collinear with, which is exact at the calibrated point and unknown away from it.

Its modules: terms.py (TERMS, the targets, Compute and Components), points.py (what a cell ran on and
measured; reading calibration and sweep JSONs), predict.py (GPU specifications, predict, weight_load,
compute scaled to another model or GPU), family.py (compute carried within a model family: the rule the
projected pages use), fit.py (the fit above), evaluate.py (held-out evaluation and the tables for a reader).

No pytest here: tests/test_costmodel.py drives it; harness/predict/project.py uses it.
"""
from __future__ import annotations

from harness.predict.costmodel.evaluate import EvalRow, Evaluation, Select, component_rows, eval_rows, evaluate
from harness.predict.costmodel.family import Reference, family_compute, family_of, gpu_of, nearest, references
from harness.predict.costmodel.fit import fit
from harness.predict.costmodel.points import (
                                             Link,
                                             Measured,
                                             Point,
                                             Run,
                                             link_of,
                                             load_all,
                                             load_points,
                                             shape_for,
)
from harness.predict.costmodel.predict import (
                                             GPUS,
                                             Gpu,
                                             Overhead,
                                             Prediction,
                                             compute_for,
                                             overhead_of,
                                             pcie_Bps,
                                             predict,
                                             roofline,
                                             scale_compute,
                                             weight_load,
)
from harness.predict.costmodel.terms import BYTES_TARGET, LATENCY_TARGET, TERMS, Components, Compute

__all__ = [
    "BYTES_TARGET", "LATENCY_TARGET", "TERMS", "Components", "Compute",
    "Link", "Measured", "Point", "Run", "link_of", "load_all", "load_points", "shape_for",
    "GPUS", "Gpu", "Overhead", "Prediction", "compute_for", "overhead_of", "pcie_Bps", "predict", "roofline",
    "scale_compute", "weight_load",
    "Reference", "family_compute", "family_of", "gpu_of", "nearest", "references",
    "fit",
    "EvalRow", "Evaluation", "Select", "component_rows", "eval_rows", "evaluate",
]
