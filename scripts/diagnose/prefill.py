"""Why is the local prefill's first measured round slow? On the H200 the local prefill, after one
warm-up round, measured 33-65 ms in its first measured round against 15-28 ms later (llama-1b and
the 8B, 12 runs), and the sweep, one round a point, kept only that first round. This runs the
local prefill as a cell does (a fresh session a round, after the idle a round's probe start
leaves), in a fresh process, and prints every call: wall time and the forward's GPU span (CUDA
events), so a host-side cost (launches, allocation) and a device-side one tell apart. Then the
same with NVML polled every 20 ms from another process, as the worker's sampler polls it during
every round, and without it again:

    python scripts/diagnose/prefill.py [--model llama-1b] [--calls 8] [--idle-s 0.5]
"""
from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

POLL_NVML = ("import pynvml, time\npynvml.nvmlInit()\nh = pynvml.nvmlDeviceGetHandleByIndex(0)\n"
             "while True:\n    pynvml.nvmlDeviceGetUtilizationRates(h); "
             "pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_SM); time.sleep(0.02)\n")


def calls(backend, prompt, n: int, idle_s: float) -> str:
    from harness.compute.phase import run_phase
    out = []
    for _ in range(n):
        time.sleep(idle_s)
        r = run_phase(backend, prompt, "prefill", 0)
        out.append(f"{r.latency_s * 1e3:.1f}/{r.server_s['gpu_span_s'] * 1e3:.1f}")
    return " ".join(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="llama-1b")
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--calls", type=int, default=8)
    p.add_argument("--idle-s", type=float, default=0.5)
    args = p.parse_args()
    import torch

    from harness.compute.engine import EngineSpec
    from harness.compute.models import ModelSpec, build_model, load_config, prompt_ids
    from harness.compute.modes import LocalBackend
    spec = ModelSpec(args.model, "fp16")
    local = LocalBackend(build_model(spec, "cuda"), EngineSpec("graphs", max_len=args.prompt_len + 51))
    prompt = prompt_ids(load_config(spec), args.prompt_len, 0)
    print(f"{args.model} prefill of {args.prompt_len}, ms wall/GPU span per call, {args.idle_s:g} s idle before each",
          flush=True)
    print(f"  fresh process      {calls(local, prompt, args.calls, args.idle_s)}", flush=True)
    poller = subprocess.Popen([sys.executable, "-c", POLL_NVML])
    try:
        time.sleep(0.5)
        print(f"  NVML polled 20 ms  {calls(local, prompt, args.calls, args.idle_s)}", flush=True)
    finally:
        poller.kill()
        poller.wait()
    print(f"  no NVML again      {calls(local, prompt, args.calls, args.idle_s)}", flush=True)
    print(f"  back to back       {calls(local, prompt, args.calls, 0.0)}", flush=True)
    torch.cuda.synchronize()


if __name__ == "__main__":
    main()
