"""Where local and worker tokens part on a GPU, and why:

    python scripts/diagnose/agreement.py --model llama-1b [--steps 50]

A compiled bf16 step gives bitwise the same logits only where the same kernels run. On the H100 at
0b86671 the suite's local decode of llama-1b parted from the worker's at step 30 (the worker's
naive and sys_simulated agreed). This decodes the same prompt greedily, compact engine, and prints
the first step where each run parts from the first, as JSON lines:
- this process: the local loop running ahead, and with one synchronisation a step;
- this process: a RemoteWorker called directly (the worker's code, no RPC), its weights the local
  model's state_dict, and its own local loop on that model (the suite's local cells), against its
  steps;
- new processes: one sharing this process's inductor cache, one with a cache of its own, and two
  in inductor's deterministic mode (TORCHINDUCTOR_DETERMINISTIC=1: no timing decides a kernel
  choice that changes numerics), with their time per output token.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from harness.compute.engine import EngineSpec
from harness.compute.models import ModelSpec, build_model, default_device, prompt_ids
from harness.compute.modes import LocalBackend
from harness.compute.phase import run_phase


def parted(a: list, b: list) -> int | None:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None)


def local_tokens(model, prompt, steps: int) -> dict:
    backend = LocalBackend(model, EngineSpec("compact", prompt.shape[1] + steps + 1))
    t0 = time.perf_counter()
    run_phase(backend, prompt, "decode", 2)
    warm_s = time.perf_counter() - t0
    ahead = run_phase(backend, prompt, "decode", steps)
    backend.ahead = None
    sync = run_phase(backend, prompt, "decode", steps)
    return {"ahead": ahead.tokens, "sync": sync.tokens, "tpot_ms": ahead.tpot_s * 1e3, "warm_s": warm_s}


def worker_tokens(model, spec: ModelSpec, prompt, steps: int) -> tuple[list[int], list[int]]:
    """The worker's sys_simulated steps, and its local loop (the suite's local cells:
    local_prepare_remote, run_local_phase_remote) on the same model."""
    from harness.compute.packing import pack
    from harness.compute.worker import RemoteWorker
    worker = RemoteWorker(spec, str(model.device), EngineSpec("compact", prompt.shape[1] + steps + 1))
    worker.warm_remote(prompt.shape[1])
    worker.load_weights_remote(pack({k: v.cpu() for k, v in model.state_dict().items()}))
    reply = worker.run_prefill_remote(prompt, True)
    tokens = [reply.tokens[0]]
    for _ in range(steps):
        tokens.append(worker.run_decode_step_remote([tokens[-1]], reply.kv_cache_id, True).tokens[0])
    worker.reset_remote()
    worker.local_prepare_remote()
    return tokens, worker.run_local_phase_remote(prompt, "decode", steps).tokens


def child(args, env: dict) -> dict:
    out = subprocess.run([sys.executable, __file__, "--model", args.model, "--steps", str(args.steps), "--child"],
                         env={**os.environ, **env}, capture_output=True, text=True, timeout=args.child_timeout)
    lines = [ln for ln in out.stdout.splitlines() if ln.startswith("{")]
    return json.loads(lines[-1]) if lines else {"error": (out.stderr.strip().splitlines() or ["?"])[-1]}


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="llama-1b")
    p.add_argument("--steps", type=int, default=50)
    p.add_argument("--child-timeout", type=float, default=240)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    from harness.compute import cpuidle
    cpuidle.hold_low_latency()
    spec = ModelSpec(args.model, "bf16")
    model = build_model(spec, default_device())
    prompt = prompt_ids(model.config, 128, seed=0)
    mine = local_tokens(model, prompt, args.steps)
    if args.child:
        print(json.dumps({"tokens": mine["ahead"], "tpot_ms": mine["tpot_ms"], "warm_s": mine["warm_s"]}))
        return
    ref = mine["ahead"]
    print(json.dumps({"model": args.model, "device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu", "torch": torch.__version__,
                      "cache": os.environ.get("TORCHINDUCTOR_CACHE_DIR"), "tpot_ms": mine["tpot_ms"],
                      "warm_s": mine["warm_s"], "sync_parts_at": parted(ref, mine["sync"])}), flush=True)
    sys_tokens, host_local = worker_tokens(model, spec, prompt, args.steps)
    print(json.dumps({"run": "worker, this process", "parts_at": parted(ref, sys_tokens)}), flush=True)
    print(json.dumps({"run": "the worker's local loop (the suite's local cells)", "parts_at": parted(ref, host_local),
                      "parts_from_the_workers_steps_at": parted(sys_tokens, host_local)}), flush=True)
    runs = {"new process, shared cache": {},
            "new process, own cache": {"TORCHINDUCTOR_CACHE_DIR": tempfile.mkdtemp()},
            "deterministic, own cache": {"TORCHINDUCTOR_CACHE_DIR": tempfile.mkdtemp(), "TORCHINDUCTOR_DETERMINISTIC": "1"},
            "deterministic, another cache": {"TORCHINDUCTOR_CACHE_DIR": tempfile.mkdtemp(), "TORCHINDUCTOR_DETERMINISTIC": "1"}}
    det = None
    for name, env in runs.items():
        got = child(args, env)
        row = {"run": name, **{k: v for k, v in got.items() if k != "tokens"}}
        if "tokens" in got:
            row["parts_at"] = parted(ref, got["tokens"])
            if "deterministic" in name:
                row["parts_from_first_deterministic_at"] = parted(det, got["tokens"]) if det else None
                det = det or got["tokens"]
        print(json.dumps(row), flush=True)


if __name__ == "__main__":
    main()
