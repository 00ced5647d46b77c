"""The baseline gate for bytes and GPU utilization, as pytest-benchmark's --benchmark-compare-fail
gates time: a cell fails when it moved past a tolerance against a stored run."""
from __future__ import annotations

from harness.report.units import human_bytes


def regressions(cur, base, tolerances: dict) -> list[str]:
    """cur, base: CellSummary of this run and of the baseline. bytes: fail when mean link bytes
    grew by more than the fraction; gpu: when dmon's SM% (the table's figure: over the rounds, or
    over a window of back-to-back runs where rounds were too short for dmon) moved by more than
    that many percentage points (either way: a drop can mean the GPU is no longer used, a rise
    that work moved onto it)."""
    out = []
    if "bytes" in tolerances and base.link_bytes.mean:
        now, then = cur.link_bytes.mean, base.link_bytes.mean
        if now > then * (1 + tolerances["bytes"]):
            out.append(f"bytes regressed: {human_bytes(now)} vs baseline {human_bytes(then)} "
                       f"(+{(now / then - 1) * 100:.1f}% > {tolerances['bytes'] * 100:.1f}%)")
    if "gpu" in tolerances:
        now, then = cur.sm_pct[0], base.sm_pct[0]
        if (now is None) != (then is None):
            out.append(f"GPU utilization availability changed: {now} vs baseline {then}")
        elif now is not None and abs(now - then) > tolerances["gpu"] * 100:
            out.append(f"GPU utilization moved: {now:.1f}% vs baseline {then:.1f}% "
                       f"(more than {tolerances['gpu'] * 100:.1f} points)")
    return out
