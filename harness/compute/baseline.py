"""An honest local baseline: the suite's decode loop against transformers' own generate() on the
same model, machine and prompt (harness.compute.peer times generate()), side by side (alternating,
medians)."""
from __future__ import annotations

import statistics
import time

from harness.compute import peer
from harness.compute.engine import EngineSpec, resolved
from harness.compute.modes import LocalBackend
from harness.compute.peer import generate_tpot_s
from harness.compute.phase import run_phase
from harness.compute.timers import spin


def loop_tpot_s(backend, prompt, steps: int) -> float:
    return run_phase(backend, prompt, "decode", steps).tpot_s


def compare(model, prompt, steps: int, engine: EngineSpec = EngineSpec(), repeats: int = 3,
            spec=None) -> dict:
    """The local loop's time per token against generate()'s, medians. The loop and the uncompiled
    generate() alternate, so drift on a shared machine hits both alike. On CUDA the peer is
    generate()'s compiled static-cache step, timed after them in a process of its own
    (harness.compute.peer says why; spec: the model it builds, the same as this one), its
    compilation apart, and the uncompiled one is a second row; elsewhere generate() does not
    compile and the uncompiled one is the peer. One local backend
    for every repeat: its slot, and a captured graph, are made once, in the warm-up."""
    engine = resolved(engine, model)
    device = next(model.parameters()).device
    compiled = device.type == "cuda" and engine.name != "eager" and spec is not None
    backend = LocalBackend(model, engine)
    t0 = time.perf_counter()
    loop_tpot_s(backend, prompt, 2)  # warm-up: capture (and compilation) of the loop's graphs
    out = {"compile_loop_s": time.perf_counter() - t0, "generate_compiled": compiled}
    generate_tpot_s(model, prompt, 2, engine)  # warm-up of the uncompiled generate()
    loop, gen = [], []
    for _ in range(repeats):
        loop.append(loop_tpot_s(backend, prompt, steps))
        gen.append(generate_tpot_s(model, prompt, steps, engine))
    backend.end()
    lm, gm = statistics.median(loop), statistics.median(gen)
    out |= {"tpot_loop_s": lm, "tpot_loop_all_s": loop}
    if not compiled:
        return out | {"tpot_generate_s": gm, "loop_over_generate": lm / gm, "tpot_generate_all_s": gen}
    fast = peer.run(spec, prompt.shape[1], steps, repeats, prompt.shape[0], str(device))
    return out | {"compile_generate_s": fast["compile_s"], "tpot_generate_s": fast["tpot_s"],
                  "loop_over_generate": lm / fast["tpot_s"], "tpot_generate_all_s": fast["tpot_all_s"],
                  "tpot_generate_uncompiled_s": gm, "loop_over_generate_uncompiled": lm / gm,
                  "tpot_generate_uncompiled_all_s": gen}


def gap_cost(model, prompt, steps: int, gap_s: float, engine: EngineSpec = EngineSpec(), repeats: int = 3) -> dict:
    """What the GPU's idle time between steps costs a step, with no RPC: the local loop's time per
    token with and without a wait of gap_s between steps (the wait itself not timed), alternating,
    medians. A remote step leaves the GPU idle for a round trip, and a local step after such a gap
    ran slower, its copies of the ids in and the token out taking longer
    (scripts/diagnose/step_gap.py; docs/evidence.md). The part of sys_simulated's extra time per
    token that is the GPU's, not the RPC's."""
    # the worker's one-synchronisation step: nothing is queued ahead, so the GPU idles for the gap
    backend = LocalBackend(model, resolved(engine, model), ahead=False)
    # the CPU waits awake, so only the GPU goes idle, as it does while a step's round trip runs;
    # run_phase calls it after each forward, outside the step's time
    wait = lambda i, n: spin(gap_s)
    run_phase(backend, prompt, "decode", 2), run_phase(backend, prompt, "decode", 2, wait)  # warm both
    plain, gapped = [], []
    for _ in range(repeats):
        plain.append(run_phase(backend, prompt, "decode", steps).tpot_s)
        gapped.append(run_phase(backend, prompt, "decode", steps, wait).tpot_s)
    backend.end()
    p, g = statistics.median(plain), statistics.median(gapped)
    return {"gap_s": gap_s, "tpot_no_gap_s": p, "tpot_gap_s": g, "gap_cost_s": g - p,
            "tpot_no_gap_all_s": plain, "tpot_gap_all_s": gapped}
