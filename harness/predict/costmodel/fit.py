"""Fitting Components on calibration points: the term groups and sources the package's docstring
(harness.predict.costmodel) describes, by relative non-negative least squares."""
from __future__ import annotations

import math
import statistics
from dataclasses import replace
from typing import Iterable

import numpy as np

from harness.compute.modes import MODES
from harness.measure.payload import HEADER_BYTES, cell_payload
from harness.predict.costmodel.points import Point
from harness.predict.costmodel.predict import bulk_calls, combine, predict, release_calls
from harness.predict.costmodel.terms import Components, Compute

# --- fitting --------------------------------------------------------------------------------------------

def _lstsq_nonneg(A, t, names, drop_first=()) -> tuple[dict, dict]:
    """min |A b - t|^2 over b >= 0, rows already scaled. Columns no row exercises, or that the rows
    cannot tell apart from the others (rank; dropped in drop_first order, then from the last), are
    held at 0; a coefficient that fits negative is held at 0 and the rest refitted.
    Returns (values, notes: why a term holds 0)."""
    A, t = np.asarray(A, float).reshape(len(t), len(names)), np.asarray(t, float)
    active = [j for j in range(len(names)) if np.any(A[:, j])]
    notes = {names[j]: "no calibration point exercises it: 0" for j in range(len(names)) if j not in active}

    def rank(cols):
        if not cols:
            return 0
        M = A[:, cols] / np.linalg.norm(A[:, cols], axis=0)
        return int(np.linalg.matrix_rank(M, tol=1e-6 * max(1, len(M))))

    order = [names.index(n) for n in drop_first if names.index(n) in active]
    order += [j for j in reversed(active) if j not in order]
    while active and rank(active) < len(active):
        j = next(j for j in order if j in active and rank([k for k in active if k != j]) == rank(active))
        active.remove(j)
        notes[names[j]] = "not identifiable from these points (collinear with the other terms): 0, folded into them"
    while True:
        b = np.zeros(len(names))
        if active:
            b[active] = np.linalg.lstsq(A[:, active], t, rcond=None)[0]
        neg = [j for j in active if b[j] < 0]
        if not neg:
            return {n: float(b[i]) for i, n in enumerate(names)}, notes
        j = min(neg, key=lambda k: b[k])
        active.remove(j)
        notes[names[j]] = f"fitted negative ({b[j]:.3g}): held at 0"


def _rel_lstsq(X, y, names, drop_first=()) -> tuple[dict, dict]:
    """min sum(((X b - y) / y)^2) over b >= 0: each point's relative error."""
    X, y = np.asarray(X, float).reshape(len(y), len(names)), np.asarray(y, float)
    keep = np.abs(y) > 0
    w = 1.0 / np.abs(y[keep])
    return _lstsq_nonneg(X[keep] * w[:, None], y[keep] * w, names, drop_first)


def _weighted_lstsq(X, y, scale, names) -> tuple[dict, dict]:
    """min sum(((X b - y) / scale)^2) over b >= 0: a remainder y weighed by its cell's whole latency."""
    X, w = np.asarray(X, float).reshape(len(y), len(names)), 1.0 / np.asarray(scale, float)
    return _lstsq_nonneg(X * w[:, None], np.asarray(y, float) * w, names)


def _through_origin(pairs) -> float | None:
    """x minimising sum((t - B x) / t)^2 over (B, t) pairs: the relative fit of t = B x."""
    u = [b / t for b, t in pairs if t and t > 0]
    return sum(u) / sum(v * v for v in u) if u else None


PATH_K = (1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, math.inf)
LINK_SPREAD = 1.5  # goodputs further apart than this are two link rates (one link's runs vary by a few %)


def _fit_path(samples, ks, per_call: bool) -> tuple[float, float, float]:
    """(path_Bps, k, wire_call_s) with the least sum of squared relative errors of the wire time,
    samples being (bytes, wire time, link time, calls); the first k of ks wins a tie (1: in series,
    where the points cannot tell). per_call: fit wire_call_s (the samples span two call counts), else 0."""
    best = None
    for k in ks:
        x, call, err = _path_for(samples, k, per_call)
        if best is None or err < best[0] * (1 - 1e-9):
            best = (err, x, k, call)
    _, x, k, call = best
    return (1 / x if x > 0 else math.inf), k, call


def _path_for(samples, k: float, per_call: bool) -> tuple[float, float, float]:
    """x = 1 / path_Bps and the per-call time minimising the relative error for one k, and that
    error: the per-call time is closed-form for each x (least squares, held >= 0); x the best of
    the paths that fit one sample exactly (and none), refined by golden-section search around it."""
    def call_for(x):
        if not per_call:
            return 0.0
        r = [(w - combine(a, b * x, k), w, n) for b, w, a, n in samples]
        return max(0.0, sum(n * d / w ** 2 for d, w, n in r) / sum(n * n / w ** 2 for _, w, n in r))

    def err(x):
        c = call_for(x)
        return sum(((combine(a, b * x, k) + n * c - w) / w) ** 2 for b, w, a, n in samples)
    xs = [0.0]
    for b, w, a, _ in samples:
        if w > a:
            xs.append((w - a if math.isinf(k) else (w ** k - a ** k) ** (1 / k)) / b)
    x = min(xs, key=err)
    if x > 0:
        lo, hi, g = x / 4, x * 4, (math.sqrt(5) - 1) / 2
        for _ in range(80):
            m1, m2 = hi - g * (hi - lo), lo + g * (hi - lo)
            lo, hi = (lo, m2) if err(m1) <= err(m2) else (m1, hi)
        x = min((x, (lo + hi) / 2), key=err)
    return x, call_for(x), err(x)


def _payload(p: Point):
    kw = {"batch": p.batch} if p.batch != 1 else {}
    return cell_payload(p.shape, MODES[p.mode], p.phase, p.prompt_len, p.steps, **kw)


def _fit_compute(points: list[Point]) -> tuple[Compute, dict]:
    names = ["prefill_s", "prefill_token_s", "step_s", "step_ctx_s"]
    rows, y = [], []
    for p in points:
        if p.measured.compute_s is None:
            continue
        calls = p.calls()
        rows.append([1, p.prompt_len, len(calls) - 1, sum(s for s, _ in calls[1:])])
        y.append(p.measured.compute_s)
    steps = _local_steps(points)
    if steps:   # the decode step from its own times, not from totals that hold a prefill as well
        values, notes = _fit_with_steps(rows, y, names, steps)
    else:
        values, notes = _rel_lstsq(rows, y, names, drop_first=["prefill_token_s", "step_ctx_s"])
    if not steps and "step_ctx_s" in notes:   # totals cannot separate it: per-step times may
        slope, note = _step_slope([p for p in points if not MODES[p.mode].remote and p.measured.step_s])
        if slope:
            rows_fixed = [r[:3] for r in rows]
            y_fixed = [t - slope * r[3] for r, t in zip(rows, y)]
            values, notes = _rel_lstsq(rows_fixed, y_fixed, names[:3], drop_first=["prefill_token_s"])
            values["step_ctx_s"] = slope
        notes["step_ctx_s"] = note
    cells = sorted({p.label.rsplit(" ", 1)[1] for p in points if p.measured.compute_s is not None})
    src = f"fitted on server_compute_s of {len(y)} cells ({', '.join(cells)})"
    return Compute(**values, source=src), notes


def _local_steps(points: list[Point]) -> list[tuple[int, float]]:
    """(cache length, compute) of every decode step the local cells timed: each step's wall time
    less the cell's own cost per forward beyond compute ((latency - compute) / forwards: moving
    ids and the next token). A decode round's total is largely its prefill where steps are few,
    and a prefill is noisy (docs/evidence.md), so steps fitted from totals inherit the prefill's
    scatter."""
    out = []
    for p in points:
        m = p.measured
        if MODES[p.mode].remote or p.phase != "decode" or not m.step_s or m.compute_s is None:
            continue
        calls = p.calls()
        if len(m.step_s) != len(calls) - 1:
            continue
        overhead = (m.latency_s - m.compute_s) / len(calls)
        out += [(s, t - overhead) for (s, _), t in zip(calls[1:], m.step_s)]
    return out


def _fit_with_steps(rows, y, names, steps) -> tuple[dict, dict]:
    """step_s and step_ctx_s from the local decode's per-step compute (relative least squares;
    the slope only where the steps span cache lengths), then the prefill terms from every cell's
    total less its steps."""
    ctx = {s for s, _ in steps}
    cols = ["step_s", "step_ctx_s"] if len(ctx) > 1 else ["step_s"]
    sv, snotes = _rel_lstsq([[1, s][:len(cols)] for s, _ in steps], [t for _, t in steps], cols)
    step_s, slope = sv["step_s"], sv.get("step_ctx_s", 0.0)
    rest = [t - r[2] * step_s - r[3] * slope for r, t in zip(rows, y)]
    values, notes = _rel_lstsq([r[:2] for r in rows], rest, names[:2], drop_first=["prefill_token_s"])
    values |= {"step_s": step_s, "step_ctx_s": slope}
    how = f"from {len(steps)} timed local decode steps (wall time less the cell's per-forward cost)"
    notes |= {"step_s": snotes.get("step_s", how), "step_ctx_s": snotes.get("step_ctx_s", how)}
    return values, notes


def _step_slope(points: list[Point]) -> tuple[float, str]:
    """Slope of the local decode's per-step wall time against cache length, pooled within cells (a
    constant per-step cost does not bias it); used only where it is > 2 standard errors from 0."""
    xs, ys = [], []
    for p in points:
        ctx = np.array([s for s, _ in p.calls()[1:]], float)
        t = np.array(p.measured.step_s, float)
        if len(t) != len(ctx) or len(t) < 3:
            continue
        xs.append(ctx - ctx.mean())
        ys.append(t - t.mean())
    if not xs:
        return 0.0, "not identifiable (one prompt length, no per-step times): 0"
    x, yv = np.concatenate(xs), np.concatenate(ys)
    slope = float(x @ yv / (x @ x))
    resid = yv - slope * x
    se = math.sqrt(float(resid @ resid) / max(1, len(x) - 1 - len(xs)) / float(x @ x))
    span = f"{int(min(min(p.calls()[1:])[0] for p in points))}-{int(max(max(p.calls()[1:])[0] for p in points))}"
    if slope > 2 * se:
        return slope, (f"from the local decode's per-step times, cache {span} tokens ({slope:.3g} ± {se:.2g} "
                       "s/token): extrapolating far beyond that range is uncertain")
    return 0.0, (f"per-step times over a cache of {span} tokens give {slope:.3g} ± {se:.2g} s/token, not "
                 "distinguishable from 0 (or negative): 0")


def _fit_bytes(c: Components, remote: list[Point]) -> tuple[Components, dict]:
    """link - payload = s x (round_B + calls x framing_B + payload x 66 / segment) + calls x empty_call,
    s the link's header per an Ethernet header's (Link.header_scale: 52/66 on a TUN). Where every
    cell's run measured an empty call on its own link (Link.empty_call_B), that is a call's base and
    framing_B what a call carries beyond it: how many packets a small call takes (headers, ACKs, writes
    that a shaped queue packs together) is the link's, not the cell's. Else framing_B is all of it.
    Why s: on the CPU box's sweep the bytes beyond payload and empty calls were fewer through the
    delay line's TUNs than on the veth for the same cells, by about that ratio (docs/evidence.md):
    header-only packets, 52 B there."""
    measured = all(p.link.empty_call_B is not None for p in remote)
    rows, y = [], []
    for p in remote:
        pay = _payload(p)
        rows.append([p.link.header_scale * x for x in (1, pay.calls, pay.total)])
        empty_calls = pay.calls + release_calls(MODES[p.mode])
        y.append(p.measured.bytes - pay.total - (empty_calls * p.link.empty_call_B if measured else 0))
    # each cell weighed by its whole link bytes: the target is the round's bytes, not the overhead
    v, n = _weighted_lstsq(rows, y, [p.measured.bytes for p in remote], ["round_B", "framing_B", "header_share"])
    segment = HEADER_BYTES / v["header_share"] if v["header_share"] > 0 else math.inf
    empty = statistics.fmean(p.link.empty_call_B for p in remote) if measured else None
    c = replace(c, round_B=v["round_B"], framing_B=v["framing_B"], segment_B=segment, empty_call_B=empty)
    base = " less each call's empty call on its link" if measured else ""
    notes = {"round_B": n.get("round_B", f"fitted on link bytes - payload{base} of {len(y)} remote cells"),
             "framing_B": n.get("framing_B", f"fitted on link bytes - payload{base} of {len(y)} remote cells"),
             "segment_B": n.get("header_share", f"fitted with framing_B ({HEADER_BYTES} B of headers a packet)"),
             "empty_call_B": (f"measured per run (rpc_noop_wire_bytes_per_call), mean of {len(y)} remote cells' "
                              "runs; a point's own link's where it has one" if measured else
                              "not measured by every calibration run: framing_B holds a whole call's framing")}
    return c, notes


def fit(points: Iterable[Point]) -> Components:
    """Components from calibration points (each with .measured). See the module's docstring."""
    points = [p for p in points if p.measured is not None]
    if not points:
        raise ValueError("fit needs measured points")
    notes = {}
    compute, shapes, refs = {}, {}, {}
    for key in sorted({p.key for p in points}):
        mine = [p for p in points if p.key == key]
        compute[key], cnotes = _fit_compute(mine)
        shapes[key] = mine[0].shape
        refs[key] = (mine[0].prompt_len, mine[0].steps)
        notes |= {f"{t} ({key})": n for t, n in cnotes.items()}
    c = Components(call_s=0.0, round_s=0.0, rtts_per_call=1.0, local_call_s=0.0, path_Bps=math.inf,
                   load_Bps=math.inf, d2h_Bps=math.inf, framing_B=0.0, segment_B=math.inf, compute=compute,
                   shapes=shapes, refs=refs)
    remote = [p for p in points if MODES[p.mode].remote]
    naive = [p for p in remote if MODES[p.mode].stateless]
    local = [p for p in points if not MODES[p.mode].remote]

    if remote:
        c, bnotes = _fit_bytes(c, remote)
        notes |= bnotes

    # naive worker's load and reply rates
    load = _through_origin([(_payload(p).tx_bytes, p.measured.load_s) for p in naive if p.measured.load_s])
    d2h = _through_origin([(_payload(p).rx_bytes, p.measured.d2h_s) for p in naive if p.measured.d2h_s])
    c = replace(c, load_Bps=1 / load if load else math.inf, d2h_Bps=1 / d2h if d2h else math.inf)
    notes["load_Bps"] = f"fitted on {sum(1 for p in naive if p.measured.load_s)} naive cells" if load else \
        "no naive cell with a measured load: not modelled (infinite rate)"
    notes["d2h_Bps"] = f"fitted on {sum(1 for p in naive if p.measured.d2h_s)} naive cells" if d2h else \
        "no naive cell with a measured reply copy: not modelled (infinite rate)"

    # the RPC path with the link: wire_s - calls x rtt = combine(bytes/goodput, bytes/path, k)
    samples = []
    for p in remote:
        pay = _payload(p)
        if p.measured.wire_s is None or not bulk_calls(pay):
            continue
        b = p.measured.bytes
        samples.append((b, p.measured.wire_s - pay.calls * p.link.rtt_s, b / p.link.goodput_Bps, pay.calls))
    if samples:
        rates = [b / a for b, _, a, _ in samples if a > 0]  # goodput: one link's runs differ by a few %
        spread = max(rates) / min(rates) if rates else 1.0
        counts = sorted({n for *_, n in samples})
        path, k, call = _fit_path(samples, PATH_K if spread > LINK_SPREAD else (1.0,), len(counts) > 1)
        c = replace(c, path_Bps=path, path_k=k, wire_call_s=call)
        notes["path_Bps"] = (f"fitted on the wire time of {len(samples)} cells moving >= 1 MB a call"
                             + ("" if math.isfinite(path) else ": the path kept up with the link (infinite)"))
        notes["path_k"] = (f"fitted with path_Bps over goodputs {min(rates) * 8e-9:.3g}-{max(rates) * 8e-9:.3g} "
                           "Gbit/s" if spread > LINK_SPREAD else
                           "one link rate cannot tell series from overlap: 1 (in series) assumed")
        notes["wire_call_s"] = (
            f"fitted with path_Bps over calls of {counts[0]}-{counts[-1]} per round" if len(counts) > 1
            else "every cell moving >= 1 MB a call makes as many calls: 0, folded into path_Bps")
    else:
        notes["path_Bps"] = "no cell moving >= 1 MB a call with packet times: the link alone (infinite)"

    # per call, per round, per RTT: what the modelled terms leave of each remote cell's latency
    # (measured compute, so that the compute fit's scatter does not land here)
    rows, y = [], []
    for p in remote:
        pred = predict(c, replace(p, link=replace(p.link, rtt_s=0.0)))
        compute = p.measured.compute_s if p.measured.compute_s is not None else pred.parts["compute"]
        calls = len(p.calls())
        rows.append([1, calls, calls * p.link.rtt_s])
        y.append(p.measured.latency_s - compute - pred.parts["wire"] - pred.parts["load"] - pred.parts["d2h"])
    if remote:
        varied = len({p.link.rtt_s for p in remote}) > 1
        names = ["round_s", "call_s", "rtts_per_call"]
        if not varied:  # one RTT: one per call assumed and subtracted, not fitted
            y = [t - r[2] for r, t in zip(rows, y)]
            rows, names = [r[:2] for r in rows], names[:2]
        v, n = _weighted_lstsq(rows, y, [p.measured.latency_s for p in remote], names)
        c = replace(c, round_s=v["round_s"], call_s=v["call_s"], rtts_per_call=v.get("rtts_per_call", 1.0))
        notes["round_s"] = n.get("round_s", f"fitted on {len(y)} remote cells")
        notes["call_s"] = n.get("call_s", f"fitted on {len(y)} remote cells")
        notes["rtts_per_call"] = n.get("rtts_per_call", "fitted across the calibration's RTTs") if varied else \
            "the calibration has one RTT: 1 assumed (a request and its reply)"
    rows, y, lat = [], [], []
    for p in local:
        measured_compute = p.measured.compute_s if p.measured.compute_s is not None else predict(c, p).parts["compute"]
        rows.append([len(p.calls())])
        y.append(p.measured.latency_s - measured_compute)
        lat.append(p.measured.latency_s)
    if local:
        v, n = _weighted_lstsq(rows, y, lat, ["local_call_s"])
        c = replace(c, local_call_s=v["local_call_s"])
        notes["local_call_s"] = n.get("local_call_s", f"fitted on {len(y)} local cells")

    runs = {p.run.path: p.run for p in points if p.run}
    gpus = {r.gpu for r in runs.values()}

    def mean(vals):
        vals = [v for v in vals if v]
        return sum(vals) / len(vals) if vals else None
    return replace(c, notes=notes, sources=tuple(sorted(runs)), gpu=gpus.pop() if len(gpus) == 1 else None,
                   noop_rtt_s=mean(r.noop_rtt_s for r in runs.values()),
                   pinned_h2d_Bps=mean(r.pinned_h2d_Bps for r in runs.values()),
                   pinned_d2h_Bps=mean(r.pinned_d2h_Bps for r in runs.values()))
