"""The plan's testbed, projected (issue 13, item 5): the plan's six-row table for Llama-2-7B,
Llama-3-8B and Llama-3-70B shapes in fp16 on a GPU host with an A100 80GB SXM and a 25 GbE NIC,
from the cost model (harness.predict.costmodel) fitted on calibration runs of this suite.

    python -m harness.predict.project --calibration results/h200/llama-1b-100gbit/llama-1b.json \\
        [--calibration ...] --out results/projected/

The first --calibration gives every per-call cost, rate and the compute overhead; each further one
is fitted too, and the tables show the latency its components would give beside. Every figure is
generated from the JSONs and the constants below (public specifications, each with its source);
the files name the command that made them. Nothing here is measured: every table says PROJECTED.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from harness.compute.modes import MODES
from harness.compute.phase import PHASES
from harness.measure.payload import HEADER_BYTES, Shape, shape_of
from harness.predict import costmodel as cm
from harness.report.cli import report_written
from harness.report.tables import markdown_table
from harness.report.units import human_bytes

# --- the plan's testbed and workload: public figures, each with its source -------------------------------

GPU = cm.GPUS["NVIDIA A100-SXM4-80GB"]
NIC_GBPS = 25.0                 # 25 GbE line rate (IEEE 802.3by)
MTU = 1500                      # Ethernet's default
TCP_IP_HEADERS = 20 + 32        # IPv4 + TCP with timestamps (payload_model.HEADER_BYTES adds Ethernet's 14)
MSS = MTU - TCP_IP_HEADERS      # TCP payload per segment: 1448 B
FRAME_ON_WIRE = MTU + 14 + 4 + 8 + 12   # + Ethernet header, FCS, preamble, inter-frame gap: 1538 B
GOODPUT_SHARE = MSS / FRAME_ON_WIRE     # TCP goodput at line rate: 94.1%
ADDED_RTT_S = 0.0               # propagation within a rack is microseconds; the RPC's own software
                                # round trip is in call_s, measured on the calibration host
PROMPT_LEN, STEPS, DTYPE = 128, 50, "fp16"   # the plan's workload (the suite's defaults)


@dataclass(frozen=True)
class Target:
    slug: str
    name: str
    config: dict            # transformers LlamaConfig keyword arguments (the model's published config.json)
    params_stated: float    # the published parameter count, checked against the shape built here
    source: str


TARGETS = (
    Target("llama-2-7b", "Llama-2-7B",
           dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096,
                tie_word_embeddings=False),
           6.74e9, "meta-llama/Llama-2-7b-hf config.json (Touvron et al. 2023: 6.74 B parameters)"),
    Target("llama-3-8b", "Llama-3-8B",
           dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=8192,
                rope_theta=500000.0, tie_word_embeddings=False),
           8.03e9, "meta-llama/Meta-Llama-3-8B config.json (8.03 B parameters)"),
    Target("llama-3-70b", "Llama-3-70B",
           dict(vocab_size=128256, hidden_size=8192, intermediate_size=28672, num_hidden_layers=80,
                num_attention_heads=64, num_key_value_heads=8, max_position_embeddings=8192,
                rope_theta=500000.0, tie_word_embeddings=False),
           70.6e9, "meta-llama/Meta-Llama-3-70B config.json (70.6 B parameters)"),
)


def target_shape(t: Target) -> Shape:
    """payload_model.shape_of on the meta device: the shape only, no weights, no download."""
    from transformers import LlamaConfig
    return shape_of(LlamaConfig(**t.config), torch.float16)


def testbed_link() -> cm.Link:
    return cm.Link(goodput_Bps=NIC_GBPS * 1e9 / 8 * GOODPUT_SHARE, rtt_s=ADDED_RTT_S, segment_B=MSS,
                   nominal_gbps=NIC_GBPS, label=f"25 GbE NIC, MTU {MTU}")


def fits(shape: Shape) -> bool:
    """Weights and the whole cache of a decode (prompt + steps + 1 tokens) in one GPU's memory
    (activations and the CUDA context are left out: a generous test)."""
    return shape.weights_bytes + shape.kv(PROMPT_LEN + STEPS + 1) <= GPU.memory_B


def on_testbed(c: cm.Components, key: str, shape: Shape, with_overhead: bool = True) -> cm.Components:
    """The calibration's components moved to the A100 host: compute scaled to the target on the A100
    (roofline + the calibration's per-layer overhead), host<->device rates scaled by the PCIe links'
    ratio (the calibration host's efficiency over its nominal PCIe kept); per-call costs, the RPC
    path and the protocol bytes as calibrated."""
    calib_gpu = cm.GPUS[c.gpu]
    bus = GPU.pcie_Bps / calib_gpu.pcie_Bps
    ref = max(c.compute, key=lambda k: c.shapes[k].weights_bytes)
    compute = cm.scale_compute(c, ref, shape, GPU, with_overhead)
    return replace(c, load_Bps=c.load_Bps * bus, d2h_Bps=c.d2h_Bps * bus, compute={key: compute},
                   shapes={key: shape}, gpu=GPU.name)


def points_for(t: Target, shape: Shape) -> list[cm.Point]:
    link = testbed_link()
    return [cm.Point(t.slug, DTYPE, shape, mode, phase, PROMPT_LEN, STEPS, link)
            for phase in PHASES for mode in MODES]


# --- the files ------------------------------------------------------------------------------------------

def _s(v: float) -> str:
    return f"{v:.4f}" if v < 10 else f"{v:,.1f}"


def _bytes(n: float) -> str:
    return f"{n / 1e12:.2f} TB" if n >= 1e12 else human_bytes(n)


def model_page(t: Target, calibs: list[tuple[str, cm.Components]], points: dict, command: str) -> str:
    shape = target_shape(t)
    (primary_path, primary), others = calibs[0], calibs[1:]
    key = f"{t.slug}/{DTYPE}"
    comp = on_testbed(primary, key, shape)
    roof = on_testbed(primary, key, shape, with_overhead=False)
    series_free = replace(comp, path_Bps=float("inf"))
    fit = fits(shape)
    params = shape.weights_bytes / shape.elem_bytes
    rows, parts_rows, preds = [], [], {}
    for p in points_for(t, shape):
        pred = cm.predict(comp, p)
        preds[p.phase, p.mode] = pred
        remote = MODES[p.mode].remote
        no_fit = (f"n/a: does not fit one A100 80GB ({_bytes(shape.weights_bytes)} "
                  f"of fp16 weights > {GPU.memory_B / 2**30:.0f} GiB)")
        rows.append({
            "Phase": p.phase, "Mode": p.mode,
            "Latency (s)": _s(pred.latency_s) if fit else no_fit,
            "Network Bytes Transferred": _bytes(pred.bytes) if remote else "0 B",
            "Avg. GPU Utilization (%)": (f"{pred.gpu_busy * 100:.1f} (busy share: compute ÷ latency; not dmon)"
                                         if fit else "n/a: does not fit"),
        })
        other = {f"Latency, components fitted on {Path(path).name} (s)":
                 _s(cm.predict(on_testbed(oc, key, shape), p).latency_s) if fit else "n/a"
                 for path, oc in others}
        na = (lambda v: _s(v)) if fit else (lambda v: "n/a")   # the GPU side of a model that does not fit
        parts_rows.append({
            "Phase": p.phase, "Mode": p.mode,
            "compute": na(pred.parts["compute"]),
            "wire: link": _s(pred.bytes / p.link.goodput_Bps) if remote else "0",
            "wire: RPC path": _s(pred.parts["wire"] - pred.bytes / p.link.goodput_Bps) if remote else "0",
            "load (h2d)": na(pred.parts["load"]), "reply (d2h)": na(pred.parts["d2h"]),
            "calls + round": (_s if remote else na)(pred.parts["calls"] + pred.parts["round"]),
            "Network time (s)": _s(pred.network_s),
            "Latency, roofline compute (s)": _s(cm.predict(roof, p).latency_s) if fit else "n/a",
            "Latency, RPC path overlapped (s)": _s(cm.predict(series_free, p).latency_s) if fit and remote
            else ("n/a" if not fit else "-"),
            **other,
        })
    sys_p = next(p for p in points_for(t, shape) if p.mode == "sys_simulated")
    once = cm.weight_load(comp, sys_p)
    oh = cm.overhead_of(primary, max(primary.compute, key=lambda k: primary.shapes[k].weights_bytes))
    ratios = []
    for phase in PHASES:
        n, s = preds[phase, "naive"], preds[phase, "sys_simulated"]
        ratios.append(f"{phase}: bytes {n.bytes / s.bytes:,.0f}x"
                      + (f", latency {n.latency_s / s.latency_s:,.1f}x" if fit else ", latency n/a (does not fit)"))
    lines = [
        f"# PROJECTED: {t.name} (fp16) on an A100 80GB SXM host with a 25 GbE NIC",
        "",
        f"Generated by `{command}` from the calibration JSON(s) named below and the constants in "
        "`harness/predict/project.py`; do not edit by hand.",
        "",
        "**PROJECTED, not measured.** The cost model (`harness/predict/costmodel/`) fitted on "
        f"`{primary_path}` ({primary.gpu}), moved to the testbed by the assumptions listed below.",
        "",
    ]
    if not fit:
        lines += [f"**{t.name} does not fit one A100 80GB:** its fp16 weights are {_bytes(shape.weights_bytes)} "
                  f"({params / 1e9:.1f} B parameters x 2 B), more than the card's {GPU.memory_B / 2**30:.0f} GiB. "
                  "No single-GPU latency or utilization is projected (it would need two or more GPUs, which the "
                  "model does not describe); its bytes and its time on the network are.", ""]
    lines += [
        f"## The plan's table, projected ({PROMPT_LEN}-token prompt; decode = prefill + {STEPS} steps)",
        "",
        markdown_table(rows),
        "",
        f"naive ÷ sys_simulated, steady state: {'; '.join(ratios)}. sys_simulated's one-time weight load "
        f"(not in its rows, as in the plan's table): {_bytes(once.bytes)}, "
        + (f"{_s(once.latency_s)} s ({_s(once.network_s)} s of it on the network)." if fit else
           f"{_s(once.network_s)} s on the network (where it would land: no single A100 holds it)."),
        "",
        util_note(primary_path, primary, points[primary_path]),
        "",
        "## Where the time goes (s per round) and how far it could move",
        "",
        markdown_table(parts_rows, list(parts_rows[0])),
        "",
        "*wire: link* is bytes ÷ the NIC's TCP goodput; *wire: RPC path* is bytes ÷ the RPC path's own rate, "
        "in series (as fitted on the calibration run); *Latency, RPC path overlapped* drops the latter (the "
        "path pipelined with the link instead of in series: the two forms cannot be told apart on one link "
        "rate). *Latency, roofline compute* drops the per-layer overhead: the least compute could take. "
        "*Network time* is the wire terms plus the link's propagation per call.",
        "",
        "## Every figure it assumes",
        "",
        *assumption_lines(t, shape, params, primary_path, primary, others, comp, oh),
    ]
    return "\n".join(lines) + "\n"


def util_note(path: str, c: cm.Components, points: list[cm.Point]) -> str:
    """What the utilization column can and cannot say, checked on the calibration run's own cells."""
    ev = cm.evaluate(points, points, points, components=c)
    span = [abs(r.prediction.gpu_busy - r.point.measured.span_fraction) for r in ev.rows
            if r.point.measured.span_fraction is not None]
    dmon = [(r.point.measured.gpu_sm_pct / 100, r.prediction.gpu_busy) for r in ev.rows
            if r.point.measured.gpu_sm_pct is not None and r.prediction.gpu_busy]
    lo, hi = min(d / b for d, b in dmon), max(d / b for d, b in dmon)
    return ("GPU utilization: the model knows only when the GPU computes, so the column is its busy share, "
            "compute ÷ latency. On the calibration run (`" + path + "`, in-sample) that share is within "
            f"{max(span) * 100:.1f} points of the measured CUDA-event span ÷ wall in every cell, but dmon's SM% "
            f"(the plan's column) was {lo:.2f}x to {hi:.2f}x of it: the model predicts when the GPU has work, "
            "not what dmon reports, so this column is not a projected dmon SM%.")


def assumption_lines(t, shape, params, primary_path, primary, others, comp, oh) -> list[str]:
    calib_gpu = cm.GPUS[primary.gpu]
    link = testbed_link()
    kv_tok = shape.kv(1)
    return [
        f"- **Model shape** ({t.source}): {t.config['num_hidden_layers']} layers, "
        f"{t.config['num_attention_heads']} query / {t.config['num_key_value_heads']} KV heads of "
        f"{shape.head_dim}, hidden {t.config['hidden_size']}, MLP {t.config['intermediate_size']}, vocab "
        f"{shape.vocab}; built as a transformers `LlamaConfig` on the meta device (no weights): "
        f"{params / 1e9:.2f} B parameters (published: {t.params_stated / 1e9:.2f} B), "
        f"{_bytes(shape.weights_bytes)} in fp16; KV cache {human_bytes(kv_tok)} a token; logits "
        f"{human_bytes(shape.logits)} a call. Bytes per cell: `payload_model.cell_payload` (exact).",
        f"- **GPU**: {GPU.source}. Used: HBM {GPU.hbm_Bps / 1e12:.3f} TB/s, fp16 {GPU.fp16_flops / 1e12:.0f} TFLOP/s, "
        f"PCIe {GPU.pcie_Bps / 1e9:.1f} GB/s each way (Gen4 x16: 16 GT/s x 16 x 128/130 / 8), memory "
        f"{GPU.memory_B / 2**30:.0f} GiB. Fits one card: weights + the decode's whole cache ≤ memory "
        "(activations left out).",
        f"- **NIC**: {NIC_GBPS:g} Gbit/s line rate, MTU {MTU}: TCP goodput {link.goodput_Bps / 1e9:.3f} GB/s "
        f"= line rate x {MSS}/{FRAME_ON_WIRE} (TCP payload per segment over its frame with Ethernet header, FCS, "
        f"preamble and gap). Bytes count {HEADER_BYTES} B of Ethernet/IP/TCP headers per {MSS}-byte segment "
        "(the counters' view on a NIC that segments in hardware; ACK frames are not counted: one per two "
        f"segments would add {HEADER_BYTES / (2 * MSS):.1%}). Added propagation RTT {ADDED_RTT_S * 1e3:g} ms "
        "(one rack).",
        f"- **Workload**: {PROMPT_LEN}-token prompt, decode = prefill + {STEPS} single-token steps, batch 1, "
        f"{DTYPE}.",
        f"- **Calibration** (every per-call cost and rate): `{primary_path}` on {primary.gpu}, fitted by "
        "`costmodel.fit` (its terms, values and sources: calibration.md). Kept as measured there: "
        f"call_s {primary.call_s * 1e3:.3f} ms a call (its empty RPC round trip: "
        f"{(primary.noop_rtt_s or 0) * 1e3:.3f} ms), round_s {primary.round_s * 1e3:.3f} ms, local_call_s "
        f"{primary.local_call_s * 1e3:.3f} ms, RPC path {primary.path_Bps / 1e9:.2f} GB/s in series with the "
        f"link, framing {primary.call_B():,.0f} B a call + {primary.round_B:,.0f} B a round. The A100 "
        "host's CPU, NIC driver and RPC stack are assumed to perform as the calibration host's.",
        f"- **Host↔device**: the naive worker's load and reply rates as calibrated "
        f"({primary.load_Bps / 1e9:.2f} and {primary.d2h_Bps / 1e9:.2f} GB/s on PCIe "
        f"{calib_gpu.pcie_Bps / 1e9:.1f} GB/s, pinned copies measured at "
        f"{(primary.pinned_h2d_Bps or 0) / 1e9:.1f} GB/s) x the PCIe ratio "
        f"{GPU.pcie_Bps / calib_gpu.pcie_Bps:.2f}: {comp.load_Bps / 1e9:.2f} and {comp.d2h_Bps / 1e9:.2f} GB/s.",
        f"- **Compute** (an assumption, the largest of them): a forward = its roofline on the A100 (every weight "
        "read from HBM once per forward, 2 FLOPs per weight per token at the fp16 peak, the cache read once per "
        "decode step; memory and arithmetic time added) + layers x the per-layer overhead the calibration "
        f"measured beyond its own roofline on {calib_gpu.name} ({oh.source}): decode step "
        f"{oh.measured_step_s * 1e3:.3f} ms measured vs {oh.roofline_step_s * 1e3:.3f} ms roofline "
        f"(memory-bound estimate ÷ measured = {oh.ratio_step:.2f}), i.e. {oh.step_layer_s * 1e6:.1f} µs a layer; "
        f"prefill {oh.measured_prefill_s * 1e3:.2f} ms vs {oh.roofline_prefill_s * 1e3:.3f} ms "
        f"({oh.ratio_prefill:.3f}), {oh.prefill_layer_s * 1e6:.0f} µs a layer. The overhead per layer is held "
        "the same on the A100. Here: "
        f"decode step {comp.compute[f'{t.slug}/{DTYPE}'].forward(PROMPT_LEN, 1) * 1e3:.2f} ms, prefill "
        f"{comp.compute[f'{t.slug}/{DTYPE}'].forward(0, PROMPT_LEN) * 1e3:.2f} ms. How well the per-layer rule "
        "carries between models on one GPU is in calibration.md (predicting one calibration model's local "
        "cells from the other's).",
        *(["- **Other calibrations**, fitted the same way, shown as a column beside: "
           + ", ".join(f"`{p}` ({c.gpu})" for p, c in others) + "."] if others else []),
    ]


def calibration_page(calibs: list[tuple[str, cm.Components]], points: dict, command: str) -> str:
    lines = [
        "# Calibration of the cost model behind the PROJECTED tables",
        "",
        f"Generated by `{command}`; do not edit by hand. Terms: `harness/predict/costmodel/` (TERMS).",
        "",
    ]
    for path, c in calibs:
        lines += [f"## Components fitted on `{path}` ({c.gpu})", "",
                  markdown_table(cm.component_rows(c), ["Term", "Value", "Unit", "From"]), ""]
        ev = cm.evaluate(points[path], points[path], points[path], components=c)
        lines += ["In-sample (fitted on these cells; how well the model's form fits them):", "",
                  markdown_table(cm.eval_rows(ev), _EVAL_COLUMNS), "",
                  "GPU utilization, measured vs the model's busy share (compute ÷ latency):", "",
                  markdown_table(_util_rows(ev), ["Point", "dmon SM % (measured)", "GPU span ÷ wall (measured)",
                                                  "busy share (model)"]), "",
                  *_load_lines(c, points[path]), ""]
    for (pa, _), (pb, _) in ((a, b) for a in calibs for b in calibs if a is not b):
        a, b = points[pa], points[pb]
        local_b = [p for p in b if not MODES[p.mode].remote]
        for title, fit_on in ((f"compute of `{pb}` scaled from `{pa}`'s by the per-layer rule", a),
                              (f"compute of `{pb}` fitted on its own local cells", a + local_b)):
            ev = cm.evaluate(a + b, fit_on, b)
            lat, byt = ev.worst()
            lines += [f"## Held out: fitted on `{pa}`, predicting `{pb}`; {title}", "",
                      markdown_table(cm.eval_rows(ev), _EVAL_COLUMNS), "",
                      f"Worst held-out error: latency {lat:.1%} (target {cm.LATENCY_TARGET:.0%}), bytes "
                      f"{byt:.3%} (target {cm.BYTES_TARGET:.0%}).", ""]
    return "\n".join(lines) + "\n"


_EVAL_COLUMNS = ["Point", "Held out", "Latency measured (s)", "Latency predicted (s)", "Latency error",
                 "Bytes measured", "Bytes predicted", "Bytes error"]


def _load_lines(c: cm.Components, points: list[cm.Point]) -> list[str]:
    """sys_simulated's one-time weight load, measured vs the model (which has no term fitted on it)."""
    out = []
    for p in points:
        m = p.measured
        if p.phase == "prefill" and m.weight_load_s:
            pred = cm.weight_load(c, p)
            out.append(f"sys_simulated's one-time weight load ({p.phase} cell): measured {m.weight_load_s:.4f} s and "
                       f"{human_bytes(m.weight_load_bytes)}; the model, at the naive cells' rates: "
                       f"{pred.latency_s:.4f} s ({pred.latency_s / m.weight_load_s - 1:+.1%}) and "
                       f"{human_bytes(pred.bytes)} ({pred.bytes / m.weight_load_bytes - 1:+.3%}).")
    return out


def _util_rows(ev: cm.Evaluation) -> list[dict]:
    def pct(v, scale=1.0):
        return "n/a" if v is None else f"{v * scale:.1f}"
    return [{"Point": r.point.label, "dmon SM % (measured)": pct(r.point.measured.gpu_sm_pct),
             "GPU span ÷ wall (measured)": pct(r.point.measured.span_fraction, 100),
             "busy share (model)": pct(r.prediction.gpu_busy, 100)} for r in ev.rows]


def write(calibrations: list[str], out: Path) -> list[Path]:
    command = ("python -m harness.predict.project " + " ".join(f"--calibration {c}" for c in calibrations)
               + f" --out {out.as_posix().rstrip('/')}/")
    points = {c: cm.load_points(c) for c in calibrations}
    calibs = [(c, cm.fit(points[c])) for c in calibrations]
    for path, c in calibs:
        if c.gpu not in cm.GPUS:
            raise ValueError(f"{path}: calibrated on {c.gpu!r}, which costmodel.GPUS does not describe: "
                             "compute cannot be scaled from it")
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for t in TARGETS:
        f = out / f"{t.slug}.md"
        f.write_text(model_page(t, calibs, points, command))
        written.append(f)
    f = out / "calibration.md"
    f.write_text(calibration_page(calibs, points, command))
    return written + [f]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m harness.predict.project", description=__doc__.splitlines()[0])
    ap.add_argument("--calibration", action="append", required=True,
                    help="a pytest-benchmark JSON of this suite on a GPU (repeatable; the first is primary)")
    ap.add_argument("--out", type=Path, default=Path("results/projected"), help="folder for the tables")
    args = ap.parse_args(argv)
    return report_written("project", lambda: write(args.calibration, args.out))


if __name__ == "__main__":
    sys.exit(main())
