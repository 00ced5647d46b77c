"""transformers' own fast path, timed in a process of its own: generate() with a static cache,
whose decode step it compiles (torch.compile, reduce-overhead: inductor's CUDA graph trees).

    python -m harness.compute.peer --model gpt2 --dtype bf16 --prompt-len 128 --steps 50

prints one JSON line: the compilation's seconds (the first call, apart), and the time per output
token after the first, (T(steps + 1) - T(1)) / steps, per repeat and their median. Apart from the
suite's process because inductor's graph trees and the engine's own captured graphs in one process
broke the engine's graphs (an illegal memory access at their next replay, H100, torch 2.11).
"""
from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time

import torch

from harness.compute.engine import EngineSpec
from harness.compute.models import ModelSpec, build_model, load_config, prompt_ids


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


def measure(spec: ModelSpec, prompt_len: int, steps: int, repeats: int, batch: int, device: str) -> dict:
    model = build_model(spec, device)
    prompt = prompt_ids(load_config(spec), prompt_len, spec.seed, batch)
    engine = EngineSpec("static", prompt_len + steps + 1, batch)
    t0 = time.perf_counter()
    generate_tpot_s(model, prompt, 2, engine, compiled=True)
    compile_s = time.perf_counter() - t0
    tpots = [generate_tpot_s(model, prompt, steps, engine, compiled=True) for _ in range(repeats)]
    return {"compile_s": compile_s, "tpot_s": statistics.median(tpots), "tpot_all_s": tpots}


def run(spec: ModelSpec, prompt_len: int, steps: int, repeats: int, batch: int, device: str,
        timeout_s: float = 1200.0) -> dict:
    """measure() in a child process (this module's command line); its error as one line."""
    argv = [sys.executable, "-m", "harness.compute.peer", "--model", spec.name, "--dtype", spec.dtype,
            "--seed", str(spec.seed), "--prompt-len", str(prompt_len), "--steps", str(steps),
            "--repeats", str(repeats), "--batch", str(batch), "--device", device]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s)
    if proc.returncode != 0:
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"compiled generate() failed in its own process: {last}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m harness.compute.peer", description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--dtype", default="bf16")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--device", default="cuda")
    args = p.parse_args(argv)
    spec = ModelSpec(args.model, args.dtype, args.seed)
    print(json.dumps(measure(spec, args.prompt_len, args.steps, args.repeats, args.batch, args.device)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
