"""A decode step against the GPU's memory floor, per engine, in one process on one card:

    python scripts/decode_floor.py --model llama-1b [--engines graphs-all,compact] [--steps 50]

prints the floor (harness.compute.floor: read bandwidth, bytes a step streams, the chain of batch-1
products) and, per engine, the local loop's time per output token, its first capture's seconds
(compilation included), and the ratios. The suite measures the same in every run (the memory floor
table); this puts engines side by side without the rest of the suite.
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

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
    model = build_model(ModelSpec(args.model, args.dtype), default_device())
    prompt = prompt_ids(model.config, args.prompt_len, seed=0)
    mem = floor.measure(model, args.prompt_len + args.steps // 2)
    print(json.dumps({"model": args.model, "device": torch.cuda.get_device_name() if torch.cuda.is_available()
                      else "cpu", **mem.to_dict()}), flush=True)
    for name in args.engines.split(","):
        backend = LocalBackend(model, EngineSpec(name, args.prompt_len + args.steps + 1))
        t0 = time.perf_counter()
        run_phase(backend, prompt, "decode", 2)  # capture, and compilation where the engine compiles
        warm_s = time.perf_counter() - t0
        runs = [run_phase(backend, prompt, "decode", args.steps) for _ in range(args.repeats)]
        tpot = statistics.median(r.tpot_s for r in runs)
        print(json.dumps({"engine": name, "tpot_ms": tpot * 1e3, "warm_up_s": warm_s,
                          "tpot_over_floor": tpot / mem.floor_s, "tpot_over_chain": tpot / mem.gemv_chain_s,
                          "tokens": runs[0].tokens[:8]}), flush=True)


if __name__ == "__main__":
    main()
