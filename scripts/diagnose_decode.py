"""Why would the worker's decode step be slower than the local loop? Times one decode step
of the same model four ways in one process: the local loop; RemoteWorker's stateful path
called directly; the same from a second thread; and with the NVML sampler running.
    python scripts/diagnose_decode.py [--model gpt2] [--steps 50]"""
from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from harness.baseline import generate_tpot_s, loop_tpot_s  # noqa: E402
from harness.models import ModelSpec, build_model, default_device, prompt_ids  # noqa: E402
from harness.worker import RemoteWorker  # noqa: E402


def worker_tpot(w: RemoteWorker, prompt, steps: int) -> float:
    reply = w.run_prefill_remote(prompt)
    tok = torch.tensor([[int(reply.logits[0].argmax())]])
    t0 = time.perf_counter()
    for _ in range(steps):
        reply = w.run_decode_step_remote(tok, reply.kv_cache_id)
        tok = torch.tensor([[int(reply.logits[0].argmax())]])
    dt = (time.perf_counter() - t0) / steps
    w.release_cache_remote(reply.kv_cache_id)
    return dt


def in_thread(fn, *args):
    out = []
    t = threading.Thread(target=lambda: out.append(fn(*args)))
    t.start()
    t.join()
    return out[0]


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="gpt2")
    p.add_argument("--steps", type=int, default=50)
    a = p.parse_args()
    device = default_device()
    spec = ModelSpec(a.model, "fp16" if device == "cuda" else "fp32")
    model = build_model(spec, device)
    prompt = prompt_ids(model.config, 128, 0)
    w = RemoteWorker(spec, device)
    w.load_weights_remote(build_model(spec, "cpu").state_dict())
    runs = {"generate()": lambda: generate_tpot_s(model, prompt, a.steps),
            "local loop": lambda: loop_tpot_s(model, prompt, a.steps),
            "worker, main thread": lambda: worker_tpot(w, prompt, a.steps),
            "worker, other thread": lambda: in_thread(worker_tpot, w, prompt, a.steps)}
    for _ in range(2):
        for f in runs.values():
            f()  # warm-up
    for name, f in runs.items():
        print(f"{name:28s} {statistics.median(f() for _ in range(3)) * 1e3:8.2f} ms/token")
    if w.sampler:
        w.gpu_sampler_start_remote()
        print(f"{'worker + NVML sampler':28s} {statistics.median(worker_tpot(w, prompt, a.steps) for _ in range(3)) * 1e3:8.2f} ms/token")
        print("nvml", w.gpu_sampler_stop_remote())
    rpc_variants(a.model, a.steps)


def rpc_variants(model: str, steps: int) -> None:
    """sys_simulated decode through run_llm.py (real RPC), with the worker's forward on the
    default stream vs on TensorPipe's pooled streams."""
    import json
    import os
    import subprocess
    repo = Path(__file__).resolve().parent.parent
    for stream, threads in (("default", None), ("pool", None), ("default", "1")):
        env = dict(os.environ, SGAP_WORKER_STREAM=stream)
        if threads:
            env["OMP_NUM_THREADS"] = threads
            stream += f", OMP_NUM_THREADS={threads}"
        out = subprocess.run([sys.executable, "run_llm.py", "--mode", "sys_simulated", "--phase", "decode",
                              "--model", model, "--decode-steps", str(steps)], cwd=repo, env=env,
                             capture_output=True, text=True)
        lines = [l for l in out.stdout.splitlines() if l.startswith("{")]
        if not lines:
            print(f"rpc ({stream} stream): failed: {out.stderr.strip().splitlines()[-1:]}")
            continue
        r = json.loads(lines[-1])
        calls = steps + 1
        print(f"{'rpc, ' + stream + ' stream':28s} {r['tpot_s'] * 1e3:8.2f} ms/token "
              f"(server compute {r['server_s']['compute_s'] / calls * 1e3:.2f} ms/call)")


if __name__ == "__main__":
    main()
