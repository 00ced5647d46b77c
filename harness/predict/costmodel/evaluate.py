"""Held-out evaluation (fit on some points, predict others: evaluate) and the tables a reader sees
(component_rows, eval_rows). See harness.predict.costmodel."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable, Iterable

from harness.compute.modes import MODES
from harness.predict.costmodel.fit import fit
from harness.predict.costmodel.points import Point
from harness.predict.costmodel.predict import Prediction, predict
from harness.predict.costmodel.terms import TERMS, Components

# --- held-out evaluation --------------------------------------------------------------------------------

@dataclass(frozen=True)
class EvalRow:
    point: Point
    prediction: Prediction
    held_out: bool              # not among the points the components were fitted on

    @property
    def latency_error(self) -> float:
        return (self.prediction.latency_s - self.point.measured.latency_s) / self.point.measured.latency_s

    @property
    def bytes_error(self) -> float | None:
        """None for a local cell: the model says 0 and the counters see at most a stray packet (an ARP,
        a router solicitation), whose relative error means nothing."""
        m = self.point.measured.bytes
        return (self.prediction.bytes - m) / m if m and MODES[self.point.mode].remote else None


@dataclass(frozen=True)
class Evaluation:
    components: Components
    rows: list

    def held_out(self) -> list[EvalRow]:
        return [r for r in self.rows if r.held_out]

    def worst(self) -> tuple[float | None, float | None]:
        """Largest |relative error| of latency and of bytes over held-out rows."""
        rows = self.held_out()
        lat = max((abs(r.latency_error) for r in rows), default=None)
        byt = max((abs(r.bytes_error) for r in rows if r.bytes_error is not None), default=None)
        return lat, byt


Select = Callable[[Point], bool] | Iterable[Point]


def _select(points: list[Point], which: Select) -> list[Point]:
    if callable(which):
        return [p for p in points if which(p)]
    chosen = list(which)
    return [p for p in points if any(p is q for q in chosen)]


def evaluate(points: Iterable[Point], fit_on: Select, predict_on: Select,
             components: Components | None = None) -> Evaluation:
    """Fit on the points fit_on picks (a predicate or the points themselves), predict those
    predict_on picks; per point the measured and predicted latency and bytes and their relative
    errors (EvalRow). A predicted point that was also fitted on is marked held_out=False.
    components: given, the fit is skipped (fit_on then only marks which rows are not held out)."""
    points = [p for p in points if p.measured is not None]
    train = _select(points, fit_on)
    c = components or fit(train)
    rows = [EvalRow(p, predict(c, p), not any(p is q for q in train)) for p in _select(points, predict_on)]
    return Evaluation(c, rows)


# --- for a reader ---------------------------------------------------------------------------------------

def _si(v: float | None, unit: str) -> str:
    if v is None:
        return "n/a"
    if math.isinf(v):
        return "∞"
    if unit == "bytes/s":
        return f"{v / 1e9:.3f} GB/s ({v * 8 / 1e9:.1f} Gbit/s)"
    if unit.startswith("s"):
        return f"{v * 1e3:.4g} ms" if abs(v) < 1 else f"{v:.4g} s"
    if unit.startswith("bytes") or unit.startswith("payload bytes"):
        return f"{v:,.0f} B"
    return f"{v:.4g}"


def component_rows(c: Components) -> list[dict]:
    """One row per term: its value with unit, and how this fit got it."""
    rows = []
    for term in ("call_s", "round_s", "rtts_per_call", "local_call_s", "path_Bps", "path_k", "wire_call_s",
                 "load_Bps", "d2h_Bps", "round_B", "empty_call_B", "framing_B", "segment_B"):
        unit, meaning, _ = TERMS[term]
        if getattr(c, term) is None:
            continue
        rows.append({"Term": term, "Value": _si(getattr(c, term), unit), "Unit": unit, "Meaning": meaning,
                     "From": c.notes.get(term, TERMS[term][2])})
    for key, comp in c.compute.items():
        for term in ("prefill_s", "prefill_token_s", "step_s", "step_ctx_s"):
            unit, meaning, _ = TERMS[term]
            rows.append({"Term": f"{term} ({key})", "Value": _si(getattr(comp, term), unit), "Unit": unit,
                         "Meaning": meaning, "From": c.notes.get(f"{term} ({key})", comp.source)})
    rows.append({"Term": "beside: empty RPC round trip", "Value": _si(c.noop_rtt_s, "s"), "Unit": "s",
                 "Meaning": "test_control_rpc_noop's median, part of call_s", "From": "measured control"})
    for name, v in (("pinned host→device", c.pinned_h2d_Bps), ("pinned device→host", c.pinned_d2h_Bps)):
        rows.append({"Term": f"beside: {name}", "Value": _si(v, "bytes/s"), "Unit": "bytes/s",
                     "Meaning": "pinned copy rate (harness.compute.staging.copy_bandwidth)",
                     "From": "measured on the GPU host (machine_info.semantic_gap.copy_gbps)"})
    return rows


def eval_rows(e: Evaluation) -> list[dict]:
    from harness.report.units import human_bytes
    out = []
    for r in e.rows:
        m, p = r.point.measured, r.prediction
        be = r.bytes_error
        out.append({"Point": r.point.label, "Held out": "yes" if r.held_out else "no (fitted on)",
                    "Latency measured (s)": f"{m.latency_s:.4f}", "Latency predicted (s)": f"{p.latency_s:.4f}",
                    "Latency error": f"{r.latency_error:+.1%}",
                    "Bytes measured": human_bytes(m.bytes), "Bytes predicted": human_bytes(p.bytes),
                    "Bytes error": "n/a (local)" if be is None else f"{be:+.3%}",
                    "Compute from": p.compute_source})
    return out
