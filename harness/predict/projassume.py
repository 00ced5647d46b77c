"""The parts of a projected model page that state the procedure: every figure it assumes, and the
procedure checked on a measured run of the same model (projcheck.procedure_check)."""
from __future__ import annotations

from harness.measure.payload import HEADER_BYTES
from harness.predict import costmodel as cm
from harness.predict import plantestbed as tb
from harness.predict import projcheck as pc
from harness.report.tables import markdown_table
from harness.report.units import human_bytes


def fmt_s(v: float) -> str:
    return f"{v:.4f}" if v < 10 else f"{v:,.1f}"


def fmt_bytes(n: float) -> str:
    return f"{n / 1e12:.2f} TB" if n >= 1e12 else human_bytes(n)


# --- the procedure checked on a measured run -------------------------------------------------------------

def _measured(m: cm.Measured) -> str:
    return f"{m.latency_s:.4f}" + (f" ± {m.latency_se_s:.4f}" if m.latency_se_s else "")


def check_rows(check: pc.ProcedureCheck) -> list[dict]:
    before = pc.by_cell(check.per_layer)
    rows = []
    for r in check.family.rows:
        b = before[r.point.phase, r.point.mode]
        rows.append({"Cell": f"{r.point.phase}-{r.point.mode}",
                     "Latency measured (s, ± SE)": _measured(r.point.measured),
                     "Predicted (s)": f"{r.prediction.latency_s:.4f}", "Latency error": f"{r.latency_error:+.1%}",
                     "Predicted, per-layer rule (s)": f"{b.prediction.latency_s:.4f}",
                     "Its error": f"{b.latency_error:+.1%}",
                     "Bytes measured": human_bytes(r.point.measured.bytes),
                     "Bytes predicted": human_bytes(r.prediction.bytes),
                     "Bytes error": "n/a (local)" if r.bytes_error is None else f"{r.bytes_error:+.3%}",
                     "Largest gap": pc.largest_gap(r)})
    return rows


def verdict(check: pc.ProcedureCheck) -> str:
    cells = " and ".join(f"{phase}-{mode}" for phase, mode in pc.CHECK_CELLS)
    errs = ", ".join(f"{p}-{m} {check.error((p, m)):+.1%}" for p, m in pc.CHECK_CELLS)
    head = f"Done-when (issue 27): |latency error| ≤ {pc.CHECK_TARGET:.0%} in {cells}: "
    if not check.misses():
        return head + f"met ({errs})."
    why = "; ".join(f"{p}-{m} by {(abs(check.error((p, m))) - pc.CHECK_TARGET) * 100:.1f} points, where the "
                    f"largest gap is {pc.largest_gap(pc.by_cell(check.family)[p, m])}" for p, m in check.misses())
    return head + f"missed ({errs}): {why}."


def scatter_lines(check: pc.ProcedureCheck, ref_run: pc.Calibration | None) -> list[str]:
    """Each cell beyond the target, beside the same cell's compute in the reference run where that
    run measured the same model: a gap that is the two runs' own difference."""
    out = []
    for r in check.family.rows:
        cell = (r.point.phase, r.point.mode)
        if abs(r.latency_error) <= pc.CHECK_TARGET:
            continue
        line = f"{'-'.join(cell)} {r.latency_error:+.1%}: {pc.largest_gap(r)}"
        same = {(p.phase, p.mode): p for p in ref_run.points} if ref_run and ref_run.key == check.run.key else {}
        if cell in same and same[cell].measured.compute_s is not None:
            line += (f"; the same cell of `{ref_run.name}` (the reference, the same model) measured "
                     f"{same[cell].measured.compute_s:.4f} s of compute: the two runs' own difference, which no "
                     "rule fitted on the reference can see")
        out.append(f"- {line}.")
    return (["Cells beyond the target:", "", *out, ""] if out else [])


def check_lines(check: pc.ProcedureCheck, ck: pc.Checks) -> list[str]:
    run, link = check.run, check.link
    p = run.points[0]
    ref = cm.nearest(ck.refs, run.family, p.shape)
    gpu, calib_gpu = cm.gpu_of(run.components), cm.gpu_of(ck.primary.components)
    return [f"## The procedure checked on a measured run: `{run.path}`", "",
            f"This page's procedure, run with the {gpu.name}'s parameters in place of the A100's (HBM "
            f"{gpu.hbm_Bps / 1e12:.2f} TB/s, fp16 {gpu.fp16_flops / 1e12:.0f} TFLOP/s, PCIe ratio to the "
            f"calibration's GPU {gpu.pcie_Bps / calib_gpu.pcie_Bps:.2f}) and the run's link in "
            f"place of the NIC ({link.label}: TCP goodput {link.goodput_Bps / 1e9:.3f} GB/s; the run's iperf3 with "
            f"as many streams as the RPC channel has lanes: {p.link.goodput_Bps / 1e9:.3f} GB/s), predicting every "
            f"cell of `{run.path}` ({p.prompt_len}-token prompt, {p.steps} decode steps). No fit used that run: "
            f"{', '.join(f'`{c.path}`' for c in ck.calibs)}. Compute by the family rule from {ref.key} "
            f"(`{ref.source}`); beside it, the per-layer rule from `{ck.primary.path}` that the pages used before.",
            "", markdown_table(check_rows(check), list(check_rows(check)[0])), "",
            verdict(check) + " *Largest gap* names the time part (the run's own: server_compute_s, the wire's "
            "packet times, the naive worker's load and reply, the rest) where the family rule's prediction and "
            "the run differ most.", "",
            *scatter_lines(check, next((c for c in ck.calibs if c.path == ref.source), None))]


# --- every figure the page assumes -----------------------------------------------------------------------

def shape_line(t: tb.Target) -> str:
    shape = tb.target_shape(t)
    params = shape.weights_bytes / shape.elem_bytes
    return (f"- **Model shape** ({t.source}): {t.config['num_hidden_layers']} layers, "
            f"{t.config['num_attention_heads']} query / {t.config['num_key_value_heads']} KV heads of "
            f"{shape.head_dim}, hidden {t.config['hidden_size']}, MLP {t.config['intermediate_size']}, vocab "
            f"{shape.vocab}; built as a transformers `LlamaConfig` on the meta device (no weights): "
            f"{params / 1e9:.2f} B parameters (published: {t.params_stated / 1e9:.2f} B), "
            f"{fmt_bytes(shape.weights_bytes)} in fp16; KV cache {human_bytes(shape.kv(1))} a token; logits "
            f"{human_bytes(shape.logits)} a call. Bytes per cell: `payload_model.cell_payload` (exact).")


def testbed_lines() -> list[str]:
    gpu, link = tb.GPU, tb.nic_link()
    return [
        f"- **GPU**: {gpu.source}. Used: HBM {gpu.hbm_Bps / 1e12:.3f} TB/s, fp16 {gpu.fp16_flops / 1e12:.0f} TFLOP/s, "
        f"PCIe {gpu.pcie_Bps / 1e9:.1f} GB/s each way (Gen4 x16: 16 GT/s x 16 x 128/130 / 8), memory "
        f"{gpu.memory_B / 2**30:.0f} GiB. Fits one card: weights + the decode's whole cache ≤ memory "
        "(activations left out).",
        f"- **NIC**: {tb.NIC_GBPS:g} Gbit/s line rate, MTU {tb.MTU}: TCP goodput {link.goodput_Bps / 1e9:.3f} GB/s "
        f"= line rate x {tb.MSS}/{tb.FRAME_ON_WIRE} (TCP payload per segment over its frame with Ethernet header, "
        f"FCS, preamble and gap). Bytes count {HEADER_BYTES} B of Ethernet/IP/TCP headers per {tb.MSS}-byte "
        "segment (the counters' view on a NIC that segments in hardware; ACK frames are not counted: one per two "
        f"segments would add {HEADER_BYTES / (2 * tb.MSS):.1%}). Added propagation RTT {tb.ADDED_RTT_S * 1e3:g} ms "
        "(one rack).",
        f"- **Workload**: {tb.PROMPT_LEN}-token prompt, decode = prefill + {tb.STEPS} single-token steps, batch 1, "
        f"{tb.DTYPE}."]


def calibration_lines(ck: pc.Checks, comp: cm.Components) -> list[str]:
    path, c = ck.primary.path, ck.primary.components
    calib_gpu = cm.gpu_of(c)
    return [
        f"- **Calibration** (every per-call cost and rate): `{path}` on {c.gpu}, fitted by "
        "`costmodel.fit` (its terms, values and sources: calibration.md). Kept as measured there: "
        f"call_s {c.call_s * 1e3:.3f} ms a call (its empty RPC round trip: {(c.noop_rtt_s or 0) * 1e3:.3f} ms), "
        f"round_s {c.round_s * 1e3:.3f} ms, local_call_s {c.local_call_s * 1e3:.3f} ms, RPC path "
        f"{c.path_Bps / 1e9:.2f} GB/s in series with the link, framing {c.call_B():,.0f} B a call + "
        f"{c.round_B:,.0f} B a round. The A100 host's CPU, NIC driver and RPC stack are assumed to perform as "
        "the calibration host's.",
        f"- **Host↔device**: the naive worker's load and reply rates as calibrated ({c.load_Bps / 1e9:.2f} and "
        f"{c.d2h_Bps / 1e9:.2f} GB/s on PCIe {calib_gpu.pcie_Bps / 1e9:.1f} GB/s, pinned copies measured at "
        f"{(c.pinned_h2d_Bps or 0) / 1e9:.1f} GB/s) x the PCIe ratio {tb.GPU.pcie_Bps / calib_gpu.pcie_Bps:.2f}: "
        f"{comp.load_Bps / 1e9:.2f} and {comp.d2h_Bps / 1e9:.2f} GB/s."]


def compute_line(t: tb.Target, ck: pc.Checks, refs: list, comp: cm.Components) -> str:
    shape = tb.target_shape(t)
    ref = cm.nearest(refs, t.family, shape)
    oh = ref.overhead
    engine = next(c.points[0].run.engine for c in ck.calibs if c.path == ref.source)
    mine = comp.compute[f"{t.slug}/{tb.DTYPE}"]
    step_ms, prefill_ms = mine.forward(tb.PROMPT_LEN, 1) * 1e3, mine.forward(0, tb.PROMPT_LEN) * 1e3
    return (
        "- **Compute** (an assumption, the largest of them), by the family rule (`harness/predict/costmodel/"
        "family.py`): a forward = its roofline on the A100 (every weight read from HBM once per forward, 2 FLOPs "
        "per weight per token at the fp16 peak, the cache read once per decode step; memory and arithmetic time "
        f"added) + the overhead that {ref.key}, the {t.family} calibration nearest in layers ({ref.layers}), "
        f"measured beyond its own roofline on {oh.source.split(' on ')[-1]} (`{ref.source}`, engine `{engine}`): "
        f"decode step {oh.measured_step_s * 1e3:.3f} ms measured vs {oh.roofline_step_s * 1e3:.3f} ms roofline, "
        f"{oh.step_layer_s * 1e6:.1f} µs a layer, x {shape.layers} layers; prefill {oh.measured_prefill_s * 1e3:.2f} "
        f"ms vs {oh.roofline_prefill_s * 1e3:.3f} ms, {ref.prefill_forward_s * 1e3:.2f} ms a forward. The overhead "
        "is held the same on the A100 (the host's launches and the kernels between the weight streams assumed to "
        f"cost there what they cost on the calibration GPU). Here: decode step {step_ms:.2f} ms, prefill "
        f"{prefill_ms:.2f} ms. The rule's error across models, and the "
        "per-layer rule it replaced (the primary calibration's overhead per layer in both phases): calibration.md.")


def assumption_lines(t: tb.Target, ck: pc.Checks, refs: list, comp: cm.Components) -> list[str]:
    others = ck.calibs[1:]
    return [shape_line(t), *testbed_lines(), *calibration_lines(ck, comp), compute_line(t, ck, refs, comp),
            *(["- **Other calibrations**, fitted the same way, shown as a column beside: "
               + ", ".join(f"`{c.path}` ({c.components.gpu})" for c in others) + "."] if others else [])]
