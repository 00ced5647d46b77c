"""An honest local baseline: the suite's decode loop against transformers' own generate() on the
same model, machine and prompt, timed side by side (alternating, medians)."""
from __future__ import annotations

import statistics
import time

import torch

from harness.compute.engine import EngineSpec, resolved
from harness.compute.modes import LocalBackend
from harness.compute.phase import run_phase
from harness.compute.timers import spin


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def generate_s(model, prompt, new_tokens: int, engine: EngineSpec = EngineSpec(), compiled: bool = False) -> float:
    device = next(model.parameters()).device
    ids = prompt.to(device)
    _sync(device)
    t0 = time.perf_counter()
    with torch.inference_mode():
        model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                       min_new_tokens=new_tokens, do_sample=False, **generate_cache(engine, compiled))
    _sync(device)
    return time.perf_counter() - t0


def generate_cache(engine: EngineSpec, compiled: bool = False) -> dict:
    """generate()'s arguments for the kind of cache the engine keeps: a static cache's masked
    attention rounds differently from a dynamic one's in fp16, so compare like with like.
    compiled: transformers' own fast path, a static cache whose decode step generate() compiles
    (torch.compile, reduce-overhead: CUDA graphs) on a CUDA device; else that compilation is off,
    so that the uncompiled peer times the loop's equal."""
    if engine.name == "eager":
        return {}
    return {"cache_implementation": "static", "disable_compile": not compiled}


def generate_tpot_s(model, prompt, steps: int, engine: EngineSpec = EngineSpec(), compiled: bool = False) -> float:
    """generate()'s time per output token after the first: (T(steps + 1) - T(1)) / steps."""
    return (generate_s(model, prompt, steps + 1, engine, compiled)
            - generate_s(model, prompt, 1, engine, compiled)) / steps


def loop_tpot_s(backend, prompt, steps: int) -> float:
    return run_phase(backend, prompt, "decode", steps).tpot_s


def compare(model, prompt, steps: int, engine: EngineSpec = EngineSpec(), repeats: int = 3) -> dict:
    """The local loop's time per token against generate()'s, alternating so drift on a shared
    machine hits both alike; medians. On CUDA the peer is generate()'s compiled static-cache step
    (its compilation, in the first call, timed apart as compile_generate_s) and the uncompiled one
    is a second row; elsewhere generate() does not compile and the uncompiled one is the peer.
    One local backend for every repeat: its slot, and a captured graph, are made once, in the warm-up."""
    engine = resolved(engine, model)
    cuda = next(model.parameters()).device.type == "cuda"
    peers = {"generate": cuda and engine.name != "eager", "generate_uncompiled": False} if cuda \
        else {"generate": False}
    backend = LocalBackend(model, engine)
    t0 = time.perf_counter()
    loop_tpot_s(backend, prompt, 2)  # warm-up: capture (and compilation) of the loop's graphs
    out = {"compile_loop_s": time.perf_counter() - t0}
    for name, compiled in peers.items():
        t0 = time.perf_counter()
        generate_tpot_s(model, prompt, 2, engine, compiled)
        out[f"compile_{name}_s"] = time.perf_counter() - t0
    times = {name: [] for name in ("loop", *peers)}
    for _ in range(repeats):
        times["loop"].append(loop_tpot_s(backend, prompt, steps))
        for name, compiled in peers.items():
            times[name].append(generate_tpot_s(model, prompt, steps, engine, compiled))
    backend.end()
    med = {name: statistics.median(t) for name, t in times.items()}
    out |= {"tpot_loop_s": med["loop"], "tpot_generate_s": med["generate"],
            "loop_over_generate": med["loop"] / med["generate"], "generate_compiled": peers["generate"],
            "tpot_loop_all_s": times["loop"], "tpot_generate_all_s": times["generate"]}
    if "generate_uncompiled" in peers:
        out |= {"tpot_generate_uncompiled_s": med["generate_uncompiled"],
                "loop_over_generate_uncompiled": med["loop"] / med["generate_uncompiled"],
                "tpot_generate_uncompiled_all_s": times["generate_uncompiled"]}
    return out


def gap_cost(model, prompt, steps: int, gap_s: float, engine: EngineSpec = EngineSpec(), repeats: int = 3) -> dict:
    """What the GPU's idle time between steps costs a step, with no RPC: the local loop's time per
    token with and without a wait of gap_s between steps (the wait itself not timed), alternating,
    medians. A remote step leaves the GPU idle for a round trip; on the H200 the local llama-1b step
    went from 3.06 to 3.25 ms after a 1 ms gap, its copies of the ids in and the token out doubling
    (scripts/diagnose_step_gap.py). The part of sys_simulated's extra time per token that is the
    GPU's, not the RPC's."""
    backend = LocalBackend(model, resolved(engine, model))
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
