"""A sweep's held-out verdicts (harness.predict.sweepreport's summary): each cell's largest errors
where the cost model did not see the point, against the targets decided for them.

- Latency: each held-out point within LATENCY_TARGET, or within two standard errors of its own
  mean where that is wider; the verdict says which rule applied.
- Bytes: cells moving >= 1 MB a call within BYTES_TARGET. A cell of a few KB a call repeats only
  to a few percent under Linux's default TCP, so its held-out error is held to its own run-to-run
  spread: the same cell in another run of the grid (--repeat-of), printed beside it.
"""
from __future__ import annotations

import math

from harness.compute.modes import MODES
from harness.measure.payload import CLOSURE_MIN_PAYLOAD
from harness.predict import costmodel as cm


def _grid_rate(p: cm.Point) -> float:
    """A point's link rate as the grid names it: unshaped is the fastest (each unshaped point
    measures its own iperf3, so their measured rates differ)."""
    return p.link.nominal_gbps or math.inf


def grid(p: cm.Point) -> tuple:
    """A point's place in the grid: link rate, prompt length, added round trip."""
    return _grid_rate(p), p.prompt_len, p.link.rtt_s


def _pct(v: float | None, digits: int) -> str:
    return "n/a" if v is None else f"{v:.{digits}%}"


LATENCY_TARGET, BYTES_TARGET = 0.10, 0.01  # held-out error: latency, and bytes of cells moving >= 1 MB a call


def summary_rows(ev: cm.Evaluation, spreads: dict | None = None) -> list[dict]:
    """Per mode and phase, the largest held-out errors: what the targets (10%, 1%) are read against;
    beside each, the largest standard error of a held-out point's own mean (its rounds' spread): an
    error no larger than that is within what the measurement itself can tell. And the verdicts
    (latency_verdict, bytes_verdict); spreads: (phase, mode) -> the cell's largest run-to-run
    bytes difference, from another run of the grid (--repeat-of)."""
    rows = []
    for phase in ("prefill", "decode"):
        for mode in MODES:
            held = [r for r in ev.held_out() if r.point.phase == phase and r.point.mode == mode]
            if not held:
                continue
            lat = max(abs(r.latency_error) for r in held)
            byt = [abs(r.bytes_error) for r in held if r.bytes_error is not None]
            lat_se = _largest_se(held, "latency_se_s", "latency_s")
            byt_se = _largest_se(held, "bytes_se", "bytes") if byt else None
            rows.append({"Phase": phase, "Mode": mode, "Held-out points": len(held),
                         "Worst latency error": f"{lat:.1%}",
                         "Latency's own standard error (largest)": _pct(lat_se, 1),
                         "Latency verdict": latency_verdict(held),
                         "Worst bytes error": f"{max(byt):.3%}" if byt else "n/a (local)",
                         "Bytes' own standard error (largest)": _pct(byt_se, 3) if byt else "n/a (local)",
                         "Bytes verdict": bytes_verdict(held, (spreads or {}).get((phase, mode))) if byt
                         else "n/a (local)"})
    return rows


def latency_verdict(held: list) -> str:
    """Each held-out point within LATENCY_TARGET, or within two standard errors of its own mean
    where that is wider; which rule each point was held to, and every miss with its numbers."""
    rules, misses = set(), []
    for r in held:
        m = r.point.measured
        two_se = 2 * m.latency_se_s / m.latency_s if m.latency_se_s else 0.0
        bound = max(LATENCY_TARGET, two_se)
        rules.add(f"{LATENCY_TARGET:.0%}" if bound == LATENCY_TARGET else "2 SE")
        if abs(r.latency_error) > bound:
            misses.append(f"{r.point.label}: {r.latency_error:+.1%} > {bound:.1%}")
    return "miss: " + "; ".join(misses) if misses else f"pass (within {' or '.join(sorted(rules))})"


def _bulk(p: cm.Point) -> bool:
    """The cell moves >= 1 MB a call (its calls: the prefill and each decode step)."""
    calls = 1 + (p.steps if p.phase == "decode" else 0)
    return p.measured.payload_bytes / calls >= CLOSURE_MIN_PAYLOAD


def bytes_verdict(held: list, spread: float | None) -> str:
    """Cells moving >= 1 MB a call: each held-out point within BYTES_TARGET. Smaller cells repeat
    only to a few percent under Linux's default TCP: their held-out error is held to the cell's
    own run-to-run spread (another run of the grid), printed beside it."""
    rows = [r for r in held if r.bytes_error is not None]
    worst = max(abs(r.bytes_error) for r in rows)
    if all(_bulk(r.point) for r in rows):
        return f"pass (within {BYTES_TARGET:.0%})" if worst <= BYTES_TARGET else f"miss: {worst:.3%} > {BYTES_TARGET:.0%}"
    if spread is None:
        return "n/a: under 1 MB a call, and no other run of the grid to judge against (--repeat-of)"
    within = "pass" if worst <= abs(spread) else "miss"
    return f"{within}: {worst:.3%} against the cell's run-to-run spread {abs(spread):.3%} (under 1 MB a call)"


def _largest_se(rows, se: str, mean: str) -> float | None:
    """The largest relative standard error (se / mean) among rows' measured points; None where none has one."""
    vals = [getattr(r.point.measured, se) / getattr(r.point.measured, mean) for r in rows
            if getattr(r.point.measured, se) is not None and getattr(r.point.measured, mean)]
    return max(vals, default=None)


def spreads(points: list[cm.Point], earlier: list[cm.Point] | None) -> dict:
    """(phase, mode) -> a remote cell's largest bytes difference from the other run of the grid."""
    theirs = {(grid(p), p.phase, p.mode): p for p in earlier or []}
    out = {}
    for phase in ("prefill", "decode"):
        for mode in (m for m in MODES if MODES[m].remote):
            pairs = [(p, theirs[(grid(p), phase, mode)]) for p in points
                     if p.phase == phase and p.mode == mode and (grid(p), phase, mode) in theirs]
            if pairs:
                out[phase, mode] = largest_difference(pairs, "bytes")[0]
    return out


def largest_difference(pairs: list[tuple[cm.Point, cm.Point]], field: str) -> tuple[float, str]:
    """The largest relative difference of measured `field` over (this, earlier) pairs, and its point."""
    def diff(pair):
        return getattr(pair[0].measured, field) / getattr(pair[1].measured, field) - 1
    worst = max(pairs, key=lambda pair: abs(diff(pair)))
    return diff(worst), worst[0].label.rsplit(" ", 1)[0]
