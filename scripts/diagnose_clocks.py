"""Is the local prefill slow because the GPU's clocks fell while it idled? On the H200 the local
prefill (the first cell of a run, each round after ~0.5 s of probe start/stop) measured 50-65 ms for
the 8B where the worker's own prefill compute was 30 ms. This times the same prefill, in one
process, after the GPU idled as a round does, after a busy warm-up of the GPU, and back to back,
reading the SM clock (NVML) just before each prefill and over it:

    python scripts/diagnose_clocks.py [--model llama-1b] [--rounds 8] [--idle-s 0.5] [--warm-s 0.2]

Prints, per way, the median prefill in ms and the SM clock in MHz before and during it.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def busy(seconds: float, device) -> None:
    """Matrix products on the GPU for about `seconds`: work that raises its clocks."""
    import torch
    a = torch.randn(4096, 4096, device=device, dtype=torch.float16)
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        for _ in range(10):
            a @ a
        torch.cuda.synchronize(device)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="llama-1b")
    p.add_argument("--rounds", type=int, default=8)
    p.add_argument("--idle-s", type=float, default=0.5)
    p.add_argument("--warm-s", type=float, default=0.2)
    args = p.parse_args()
    import pynvml
    import torch

    from harness.compute.engine import EngineSpec
    from harness.compute.models import ModelSpec, build_model, load_config, prompt_ids
    from harness.compute.modes import LocalBackend
    from harness.compute.nvml import NvmlSampler
    spec = ModelSpec(args.model, "fp16")
    device = torch.device("cuda")
    local = LocalBackend(build_model(spec, device), EngineSpec("graphs", max_len=160))
    prompt = prompt_ids(load_config(spec), 128, 0)
    pynvml.nvmlInit()
    handle = pynvml.nvmlDeviceGetHandleByIndex(torch.cuda.current_device())
    for _ in range(3):
        local.prefill(prompt)  # first-call costs (kernel loading, allocator) out of the way
    ways = {"after idle": lambda: time.sleep(args.idle_s),
            f"after {args.warm_s:g} s busy": lambda: (time.sleep(args.idle_s), busy(args.warm_s, device)),
            "back to back": lambda: None}
    for name, before in ways.items():
        times, clock_before, clock_during = [], [], []
        for _ in range(args.rounds):
            before()
            clock_before.append(pynvml.nvmlDeviceGetClockInfo(handle, pynvml.NVML_CLOCK_SM))
            sampler = NvmlSampler(interval_s=0.002)
            sampler.start()
            t0 = time.perf_counter()
            local.prefill(prompt)
            torch.cuda.synchronize(device)
            times.append(time.perf_counter() - t0)
            clock_during.append(sampler.stop()[2])
        print(f"  {name:22s} prefill {statistics.median(times) * 1e3:7.2f} ms "
              f"(min {min(times) * 1e3:.2f}, max {max(times) * 1e3:.2f})  SM clock before "
              f"{statistics.median(clock_before):.0f} MHz, during {statistics.median(c for c in clock_during if c):.0f} MHz",
              flush=True)
    local.end()


if __name__ == "__main__":
    main()
