"""A decode step against the GPU's memory floor, per engine, in one process on one card:

    python scripts/decode_floor.py --model llama-1b [--engines graphs-all,compact] [--steps 50]

prints the floor (harness.compute.floor: read bandwidth, bytes a step streams, the chain of batch-1
products) and, per engine, the local loop's time per output token, its warm-up's seconds
(capture, and compilation where the engine compiles), the ratios, and the first generated token
that differs from the first engine's (in bf16 two engines round differently). The suite measures the same in every run (the memory floor
table); this puts engines side by side without the rest of the suite.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harness.compute import floor
from harness.compute.engine import EngineSpec
from harness.compute.models import ModelSpec, build_model, default_device, prompt_ids
from harness.compute.modes import LocalBackend
from harness.compute.phase import run_phase


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="llama-1b")
    p.add_argument("--dtype", default="bf16")
    p.add_argument("--engines", default="graphs-all,compact")
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    from harness.compute import cpuidle
    cpuidle.hold_low_latency()  # as the suite's processes do: the host's wake after each step's wait
    model = build_model(ModelSpec(args.model, args.dtype), default_device())
    prompt = prompt_ids(model.config, args.prompt_len, seed=0)
    mem = floor.measure(model, args.prompt_len + args.steps // 2)
    print(json.dumps({"model": args.model, "device": torch.cuda.get_device_name() if torch.cuda.is_available()
                      else "cpu", **mem.to_dict()}), flush=True)
    first = None  # the first engine's tokens: each later engine's are compared with them
    for name in args.engines.split(","):
        backend = LocalBackend(model, EngineSpec(name, args.prompt_len + args.steps + 1))
        t0 = time.perf_counter()
        run_phase(backend, prompt, "decode", 2)  # capture, and compilation where the engine compiles
        warm_s = time.perf_counter() - t0
        runs = [run_phase(backend, prompt, "decode", args.steps) for _ in range(args.repeats)]
        tpot = statistics.median(r.tpot_s for r in runs)
        span = statistics.median((r.server_s["gpu_span_s"] if "gpu_span_s" in r.server_s else 0.0) / r.calls
                                 for r in runs)  # a forward's device span, prefill's share included
        tokens = runs[0].tokens
        first = first or (name, tokens)
        parted = next((i for i, (a, b) in enumerate(zip(tokens, first[1])) if a != b), None)
        print(json.dumps({"engine": name, "tpot_ms": tpot * 1e3, "gpu_span_per_forward_ms": span * 1e3,
                          "warm_up_s": warm_s,
                          "tpot_over_floor": tpot / mem.floor_s, "tpot_over_chain": tpot / mem.gemv_chain_s,
                          "tokens": tokens[:8], f"first_token_differing_from_{first[0]}": parted}), flush=True)
        backend.end()


if __name__ == "__main__":
    main()
