"""Why a decode step on the GPU worker takes longer than the same step in the local loop (H200,
llama-1b at dfd7157: 3.89 against 3.34 ms, with the ids' copy in and the next token's copy out each
~0.1 ms slower there): the same graphs-engine step, timed by its parts, in this process with a gap
between steps (none; sleeping; spinning; with an NVML sampler thread beside it), then on the worker
over the embedded link, in one child each without and with a busy loop on every CPU
(SGAP_CPU_POLL=1, harness/compute/cpuidle.py):

    python scripts/diagnose/step_gap.py [--model llama-1b] [--steps 60] [--link-gbps 100]

Prints the median per step of: h2d (ids in), gpu_span (CUDA events around the replay), compute,
d2h (the next token out) and the step's wall time, all in ms.
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

PARTS = ("h2d_s", "gpu_span_s", "compute_s", "d2h_s")


def wait(kind: str, s: float) -> None:
    if kind == "sleep":
        time.sleep(s)
    elif kind == "spin":
        end = time.perf_counter() + s
        while time.perf_counter() < end:
            pass


def decode(backend, prompt, steps: int, gap: tuple[str, float]) -> dict:
    """Median per-step parts (ms) over steps, after 5 unmeasured steps."""
    tokens = backend.prefill(prompt)
    rows = []
    for i in range(steps + 5):
        wait(*gap)
        before = dict(backend.tally.server_s)
        t0 = time.perf_counter()
        tokens = backend.step(tokens)
        wall = time.perf_counter() - t0
        after = backend.tally.server_s
        if i >= 5:
            rows.append({k: after.get(k, 0) - before.get(k, 0) for k in PARTS} | {"wall_s": wall})
    backend.end()
    return {k: statistics.median(r[k] for r in rows) * 1e3 for k in (*PARTS, "wall_s")}


def show(label: str, parts: dict) -> None:
    print(f"  {label:34s} " + "  ".join(f"{k[:-2]} {v:.3f}" for k, v in parts.items()), flush=True)


def measure(args) -> None:
    import torch

    from harness.compute import cpuidle
    from harness.compute.engine import EngineSpec
    from harness.compute.models import ModelSpec, build_model, load_config, prompt_ids
    from harness.compute.modes import LocalBackend
    from harness.compute.nvml import make_sampler
    from harness.compute.packing import pack
    from harness.testbed import bed as tb
    cuda = torch.cuda.is_available()
    spec = ModelSpec(args.model, "fp16" if cuda else "fp32")
    engine = EngineSpec("graphs" if cuda else "static", max_len=128 + args.steps + 16)
    prompt = prompt_ids(load_config(spec), 128, 0)
    print(f"SGAP_CPU_POLL={os.environ.get('SGAP_CPU_POLL', '0')}", flush=True)
    if args.local:
        cpuidle.hold_low_latency()
        model = build_model(spec, "cuda" if cuda else "cpu")
        local = LocalBackend(model, engine)
        for gap in (("none", 0), ("sleep", 0.001), ("spin", 0.001), ("sleep", 0.004)):
            show(f"local, gap {gap[0]} {gap[1] * 1e3:g} ms", decode(local, prompt, args.steps, gap))
        sampler = make_sampler(torch.device("cuda")) if cuda else None
        if sampler:
            sampler.start()
            show("local, NVML sampler thread, no gap", decode(local, prompt, args.steps, ("none", 0)))
            sampler.stop()
        del local, model
        if cuda:
            torch.cuda.empty_cache()
    weights = pack(build_model(spec, "cpu").state_dict())
    with tb.testbed(link_gbps=args.link_gbps) as bed:
        sys_backend = bed.backend("sys_simulated", spec, weights, engine)
        show("worker (sys_simulated), no gap", decode(sys_backend, prompt, args.steps, ("none", 0)))
        handle = bed.worker(spec, engine)
        handle.rpc_sync().gpu_sampler_start_remote()
        show("worker, NVML sampler on", decode(sys_backend, prompt, args.steps, ("none", 0)))
        handle.rpc_sync().gpu_sampler_stop_remote()


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="llama-1b")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--link-gbps", type=float, default=100)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--local", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        return measure(args)
    base = [sys.executable, __file__, "--child", "--model", args.model, "--steps", str(args.steps),
            "--link-gbps", f"{args.link_gbps:g}"]
    subprocess.run(base + ["--local"], check=True)
    subprocess.run(base, env={**os.environ, "SGAP_CPU_POLL": "1"}, check=True)


if __name__ == "__main__":
    main()
