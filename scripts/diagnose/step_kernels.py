"""Where a compact decode step's time goes, on one card, per attention variant:

    python scripts/diagnose/step_kernels.py --model llama-1b [--variants sdpa,manual] [--steps 50]

prints, as JSON lines: the memory floor; then per variant the local loop's time per output token
(run_phase: running ahead, and with the worker's one synchronisation a step), the captured step replayed back to back with nothing
from the host between steps (the device's own time per step), and the kernels of one step from the
profiler (the compiled forward run outside a graph): count and microseconds per step by class
(matrix products, attention, inductor's fused kernels, other), with the ten costliest.
The loop's time minus the back-to-back replay is the host's share of a step.
"""
from __future__ import annotations

import argparse
import json
import re
import statistics
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from harness.compute import compact, engine, floor
from harness.compute.engine import EngineSpec
from harness.compute.models import ModelSpec, build_model, default_device, prompt_ids
from harness.compute.modes import LocalBackend
from harness.compute.phase import run_phase

SDPA = compact._attend


def manual(q, keys, values, mask, scale: float) -> torch.Tensor:
    """_attend's contract with the products written out: scores, masked softmax in fp32, values."""
    b, h, n, hd = q.shape
    kvh = keys.shape[1]
    qg = q.reshape(b, kvh, h // kvh * n, hd)
    scores = torch.matmul(qg, keys.transpose(-1, -2)).float() * scale
    probs = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1).to(q.dtype)
    return torch.matmul(probs, values).reshape(b, h, n, hd).transpose(1, 2).reshape(b, n, h * hd)


VARIANTS = {"sdpa": SDPA, "manual": manual}
CLASSES = (("matmul", re.compile(r"gemv|gemm|cutlass|sm90|xmma|nvjet|cublas", re.I)),
           ("attention", re.compile(r"attention|fmha|flash|cudnn|softmax", re.I)),
           ("fused", re.compile(r"triton", re.I)))


def kind(name: str) -> str:
    return next((k for k, rx in CLASSES if rx.search(name)), "other")


def back_to_back_ms(backend, prompt_len: int, steps: int) -> float:
    """The captured decode step replayed `steps` times with no host work between: ms per step."""
    slot, eng = backend.slot, backend.engine
    graph = slot.graphs[1].graph
    eng._rewind(slot, prompt_len)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(steps):
        graph.replay()
    end.record()
    end.synchronize()
    return start.elapsed_time(end) / steps


def kernels(backend, prompt_len: int, steps: int = 10) -> dict:
    """The compiled decode forward outside a graph under the profiler: kernels per step by class."""
    slot, eng = backend.slot, backend.engine
    ids = torch.zeros(1, 1, dtype=torch.long, device=eng.device)
    eng._rewind(slot, prompt_len)
    with torch.inference_mode():
        eng._eager(slot.cache, ids)
        torch.cuda.synchronize()
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CUDA]) as prof:
            for _ in range(steps):
                eng._eager(slot.cache, ids)
            torch.cuda.synchronize()
    by_name: dict[str, list] = {}
    for e in prof.events():
        if e.device_type == torch.autograd.DeviceType.CUDA and e.device_time > 0:
            c = by_name.setdefault(e.name, [0, 0.0])
            c[0] += 1
            c[1] += e.device_time  # us
    classes: dict[str, list] = {}
    for name, (count, us) in by_name.items():
        c = classes.setdefault(kind(name), [0, 0.0])
        c[0] += count / steps
        c[1] += us / steps
    top = sorted(by_name.items(), key=lambda kv: -kv[1][1])[:10]
    return {"kernels_per_step": sum(c for c, _ in classes.values()),
            "kernel_us_per_step": sum(u for _, u in classes.values()),
            "by_class": {k: {"count": round(c, 1), "us": round(u, 1)} for k, (c, u) in classes.items()},
            "top": [{"name": n[:90], "per_step": c / steps, "us": round(u / steps, 1)} for n, (c, u) in top]}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="llama-1b")
    p.add_argument("--dtype", default="bf16")
    p.add_argument("--variants", default="sdpa,manual")
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--steps", type=int, default=50)
    args = p.parse_args(argv)
    from harness.compute import cpuidle
    cpuidle.hold_low_latency()
    model = build_model(ModelSpec(args.model, args.dtype), default_device())
    prompt = prompt_ids(model.config, args.prompt_len, seed=0)
    mem = floor.measure(model, args.prompt_len + args.steps // 2)
    print(json.dumps({"model": args.model, "device": torch.cuda.get_device_name(), "torch": torch.__version__,
                      **mem.to_dict()}), flush=True)
    for name in args.variants.split(","):
        compact._attend = VARIANTS[name]
        engine._COMPILED.pop(model, None)
        torch._dynamo.reset()
        backend = LocalBackend(model, EngineSpec("compact", args.prompt_len + args.steps + 1))
        t0 = time.perf_counter()
        run_phase(backend, prompt, "decode", 2)
        warm_s = time.perf_counter() - t0
        runs = [run_phase(backend, prompt, "decode", args.steps, end_session=False) for _ in range(3)]
        tpot = statistics.median(r.tpot_s for r in runs) * 1e3
        ahead, backend.ahead = backend.ahead, None  # the worker's one-synchronisation step, for comparison
        sync = statistics.median(run_phase(backend, prompt, "decode", args.steps, end_session=False).tpot_s
                                 for _ in range(3)) * 1e3
        backend.ahead = ahead
        replay = back_to_back_ms(backend, args.prompt_len, args.steps)
        print(json.dumps({"variant": name, "warm_up_s": round(warm_s, 1), "tpot_ms": tpot, "sync_tpot_ms": sync,
                          "replay_ms": replay, "host_ms": tpot - replay,
                          "tpot_over_floor": tpot / 1e3 / mem.floor_s, "replay_over_floor": replay / 1e3 / mem.floor_s,
                          "tokens": runs[0].tokens[:6], **kernels(backend, args.prompt_len)}), flush=True)
        backend.end()


if __name__ == "__main__":
    main()
