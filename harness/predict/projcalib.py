"""results/projected/calibration.md: the compute rule across models before and after (projcheck),
each calibration's fitted components with its in-sample errors, and each calibration predicting
the others' cells held out. Every figure comes from the calibration JSONs."""
from __future__ import annotations

from harness.predict import costmodel as cm
from harness.predict import projcheck as pc
from harness.predict.plantestbed import TARGETS
from harness.predict.projpages import FIRST_LINE, checks_for
from harness.report.tables import markdown_table
from harness.report.units import human_bytes

EVAL_COLUMNS = ["Point", "Held out", "Latency measured (s)", "Latency predicted (s)", "Latency error",
                "Bytes measured", "Bytes predicted", "Bytes error"]
RULE_NAMES = {"per-layer": "per-layer rule (before)", "family": "family rule (after)"}


def own_fit(c: pc.Calibration) -> cm.Evaluation:
    return cm.evaluate(c.points, c.points, c.points, components=c.components)


# --- the compute rule, before and after ----------------------------------------------------------------

def rule_rows(ck: pc.Checks, b: pc.Calibration) -> list[dict]:
    """b's cells: its own fit's error, and each other calibration's by each rule."""
    own = pc.by_cell(own_fit(b))
    rows = []
    for cell in pc.CELLS:
        row = {"Cell": "-".join(cell), f"{b.name}'s own fit (in-sample)": f"{own[cell].latency_error:+.1%}"}
        for a in ck.calibs:
            for rule in ([] if a is b else pc.RULES):
                r = pc.by_cell(ck.rules[rule][f"{a.name} → {b.name}"]).get(cell)
                row[f"from {a.name}: {RULE_NAMES[rule]}"] = (f"{r.latency_error:+.1%}" if r else
                                                            "n/a: another family")
        rows.append(row)
    return rows


def term_rows(ck: pc.Checks) -> list[dict]:
    """The compute terms each rule gives another model, against that model's own fit."""
    rows = []
    for a, b in pc.pairs(ck.calibs, same_family=False):
        own, (prompt, _) = b.components.compute[b.key], b.components.refs[b.key]
        row = {"From → to": f"{a.name} → {b.name}"}
        for what, args in (("prefill", (0, prompt)), ("decode step", (prompt, 1))):
            row[f"{what}, own fit (ms)"] = f"{own.forward(*args) * 1e3:.3f}"
            for rule in pc.RULES:
                ev = ck.rules[rule][f"{a.name} → {b.name}"]
                v = ev and ev.components.compute[b.key].forward(*args)
                row[f"{what}, {rule} (ms)"] = "n/a" if v is None else \
                    f"{v * 1e3:.3f} ({v / own.forward(*args) - 1:+.1%})"
        rows.append(row)
    return rows


def _pct(v: float | None) -> str:
    return "not applied" if v is None else f"{v:.1%}"


def overhead_rows(ck: pc.Checks) -> list[dict]:
    """Each calibration's compute beyond its roofline: what either rule carries to another model."""
    rows = []
    for c in ck.calibs:
        (ref,) = pc.references([c])
        oh = ref.overhead
        rows.append({"Calibration": c.name, "Family": ref.family, "Layers": ref.layers,
                     "Engine": c.points[0].run.engine,
                     "Decode step beyond roofline, per layer (µs)": f"{oh.step_layer_s * 1e6:.1f}",
                     "Prefill beyond roofline, per forward (ms)": f"{ref.prefill_forward_s * 1e3:.2f}",
                     "Prefill beyond roofline, per layer (µs)": f"{oh.prefill_layer_s * 1e6:.0f}"})
    return rows


def _ratio(values: list[float]) -> str:
    return f"{max(values) / min(values):.2f}x" if len(values) > 1 and min(values) > 0 else "n/a"


def spread_line(ck: pc.Checks) -> str:
    """How far apart the overheads are, max ÷ min, within each family and over all calibrations."""
    refs = ck.refs
    terms = {"the decode step's per layer": lambda r: r.overhead.step_layer_s,
             "the prefill's per forward": lambda r: r.prefill_forward_s,
             "the prefill's per layer": lambda r: r.overhead.prefill_layer_s}
    groups = {f"within {f}": mine for f in sorted({r.family for r in refs})
              if len(mine := [r for r in refs if r.family == f]) > 1}
    groups["over every calibration"] = refs
    parts = [f"{name}: " + ", ".join(f"{t} {_ratio([get(r) for r in mine])}" for t, get in terms.items())
             for name, mine in groups.items()]
    return "Overhead, max ÷ min: " + "; ".join(parts) + "."


def check_pointer(ck: pc.Checks) -> str:
    pages = [f"{t.slug}.md" for t in TARGETS if checks_for(t, ck)]
    if not pages:
        return "No run that no choice saw was given (--check): the procedure is not checked whole here."
    return (f"A run that no choice and no fit saw, `{ck.procedure.run.path}`, checks the whole procedure: "
            f"{', '.join(pages)}.")


def rule_section(ck: pc.Checks) -> list[str]:
    lines = ["## The compute rule across models, before and after", "",
             "Each calibration's components (fitted on its own run) predict another calibration's cells on the "
             "same GPU, the other model's compute carried from the first's by a rule: the *per-layer rule* "
             "(`costmodel.scale_compute`: roofline + layers x the overhead per layer, in both phases; the "
             "projected pages used it, from the primary calibration) and the *family rule* "
             "(`costmodel/family.py`: the decode step's overhead per layer, the prefill's per forward, from a "
             "calibration of the same family only). Latency error per cell; the model's own fit beside it is "
             "the least any compute rule could leave (the cells' own scatter about one fitted compute).", ""]
    if len(ck.calibs) < 2:
        return lines + ["One calibration: no other model to carry compute to, so neither rule is checked here "
                        "(give two calibrations of a family, --calibration).", ""]
    for b in ck.calibs:
        lines += [f"### Predicting `{b.path}`", "", markdown_table(rule_rows(ck, b), list(rule_rows(ck, b)[0])), ""]
    lines += ["### The compute terms each rule gives, against the model's own fit", "",
              markdown_table(term_rows(ck), list(term_rows(ck)[0])), "",
              f"Worst |latency error| within a family: per-layer rule {_pct(ck.worst_rule('per-layer'))}, family "
              f"rule {_pct(ck.worst_rule('family'))} (target {pc.RULE_TARGET:.0%}); across families: per-layer rule "
              f"{_pct(ck.worst_rule('per-layer', False))}, family rule {_pct(ck.worst_rule('family', False))} (it "
              "needs a calibration of the predicted model's family).", "",
              "### What each calibration spends beyond its roofline", "",
              markdown_table(overhead_rows(ck), list(overhead_rows(ck)[0])), "",
              spread_line(ck) + " The family rule's form was chosen on these calibrations, which the tables "
              "above then check: within a family that check is not independent of the choice. " + check_pointer(ck),
              ""]
    return lines


# --- each calibration, and each predicting the others --------------------------------------------------

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


def component_section(c: pc.Calibration) -> list[str]:
    ev = own_fit(c)
    return [f"## Components fitted on `{c.path}` ({c.components.gpu})", "",
            markdown_table(cm.component_rows(c.components), ["Term", "Value", "Unit", "From"]), "",
            "In-sample (fitted on these cells; how well the model's form fits them):", "",
            markdown_table(cm.eval_rows(ev), EVAL_COLUMNS), "",
            "GPU utilization, measured vs the model's busy share (compute ÷ latency):", "",
            markdown_table(_util_rows(ev), ["Point", "dmon SM % (measured)", "GPU span ÷ wall (measured)",
                                            "busy share (model)"]), "",
            *_load_lines(c.components, c.points), ""]


def held_out_section(title: str, ev: cm.Evaluation) -> list[str]:
    lat, byt = ev.worst()
    return [f"## Held out: {title}", "", markdown_table(cm.eval_rows(ev), EVAL_COLUMNS), "",
            f"Worst held-out error: latency {lat:.1%} (target {cm.LATENCY_TARGET:.0%}), bytes "
            f"{byt:.3%} (target {cm.BYTES_TARGET:.0%}).", ""]


def calibration_page(ck: pc.Checks, command: str) -> str:
    lines = [f"# {FIRST_LINE}. Calibration of the cost model behind the projected pages", "",
             f"Generated by `{command}`; do not edit by hand. Terms: `harness/predict/costmodel/` (TERMS). "
             "Every run here is measured (on the GPU each names); none is an A100.", ""]
    lines += rule_section(ck)
    for c in ck.calibs:
        lines += component_section(c)
    for a, b in pc.pairs(ck.calibs, same_family=False):
        lines += held_out_section(f"components of `{a.path}`, predicting `{b.path}`; compute of `{b.name}` "
                                  "fitted on its own local cells", pc.held_out(a, b))
    for a, b in pc.pairs(ck.calibs, same_family=True):
        ev = ck.rules["family"][f"{a.name} → {b.name}"]
        lines += held_out_section(f"components of `{a.path}`, predicting `{b.path}`; compute of `{b.name}` "
                                  f"carried from `{a.name}`'s by the family rule", ev)
    return "\n".join(lines) + "\n"
