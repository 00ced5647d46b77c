"""Why RemoteWorker runs all model work on one thread. On the H100 (2026-11-27, gpt2 fp16,
transformers 5.17) a decode step took 10.2 ms in the main thread and 72 ms in another thread;
85% of the slow thread's samples sat in SDPA: cuDNN attention keeps its per-shape execution plans
per thread, so a thread not warmed on these sequence lengths rebuilds them every step. Note: with
the worker's own compute thread in place, every variant here runs on that one thread and the
figures converge; to see the original effect, run it against the commit before that change.
    python scripts/diagnose/threads.py [--model gpt2]"""
from __future__ import annotations

import argparse
import collections
import queue
import statistics
import sys
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402

from harness.compute.models import ModelSpec, build_model, default_device, prompt_ids  # noqa: E402
from harness.compute.worker import RemoteWorker  # noqa: E402


def worker_tpot(w: RemoteWorker, prompt, steps: int) -> float:
    """Seconds per decode step through the worker's stateful API, called in this thread."""
    reply = w.run_prefill_remote(prompt)
    tok = torch.tensor([[int(reply.logits[0].argmax())]])
    t0 = time.perf_counter()
    for _ in range(steps):
        reply = w.run_decode_step_remote(tok, reply.kv_cache_id)
        tok = torch.tensor([[int(reply.logits[0].argmax())]])
    dt = (time.perf_counter() - t0) / steps
    w.release_cache_remote(reply.kv_cache_id)
    return dt


def in_thread(fn, sample=False):
    out = []
    t = threading.Thread(target=lambda: out.append(fn()))
    t.start()
    stacks = collections.Counter()
    while t.is_alive():
        if sample:
            frame = sys._current_frames().get(t.ident)
            parts = []
            while frame is not None and len(parts) < 4:
                parts.append(f"{Path(frame.f_code.co_filename).name}:{frame.f_lineno}:{frame.f_code.co_name}")
                frame = frame.f_back
            stacks[" <- ".join(parts)] += 1
        time.sleep(0.001)
    t.join()
    if sample:
        total = sum(stacks.values())
        for stack, n in stacks.most_common(8):
            print(f"    {n / total:5.1%} {stack}")
    return out[0]


class MainExecutor:
    """Run callables on the main thread for other threads (the fix under test)."""

    def __init__(self):
        self.q = queue.Queue()

    def submit(self, fn):
        done, box = threading.Event(), []
        self.q.put((fn, done, box))
        done.wait()
        return box[0]

    def serve_until(self, finished: threading.Event):
        while not finished.is_set():
            try:
                fn, done, box = self.q.get(timeout=0.01)
            except queue.Empty:
                continue
            box.append(fn())
            done.set()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--model", default="gpt2")
    p.add_argument("--steps", type=int, default=30)
    a = p.parse_args()
    device = default_device()
    spec = ModelSpec(a.model, "fp16" if device == "cuda" else "fp32")
    weights = build_model(spec, "cpu").state_dict()
    prompt = prompt_ids(build_model(spec, "cpu").config, 128, 0)
    w = RemoteWorker(spec, device)
    w.load_weights_remote(weights)
    tp = lambda: worker_tpot(w, prompt, a.steps)  # noqa: E731

    def built_here():
        w2 = RemoteWorker(spec, device)
        w2.load_weights_remote(weights)
        worker_tpot(w2, prompt, 3)
        return worker_tpot(w2, prompt, a.steps)

    def one_thread():
        torch.set_num_threads(1)
        return tp()

    def via_main():
        ex = MainExecutor()
        finished = threading.Event()
        out = []

        def client():
            out.append(worker_tpot(_Proxy(w, ex), prompt, a.steps))
            finished.set()
        t = threading.Thread(target=client)
        t.start()
        ex.serve_until(finished)
        t.join()
        return out[0]

    tp(), in_thread(tp)  # warm-up
    for name, f in (("main thread", tp), ("other thread", lambda: in_thread(tp)),
                    ("other thread, built there", lambda: in_thread(built_here)),
                    ("other thread, 1 intra-op thread", lambda: in_thread(one_thread)),
                    ("other thread -> main executor", via_main),
                    ("main thread again", tp)):
        print(f"{name:34s} {statistics.median(f() for _ in range(3)) * 1e3:8.2f} ms/token", flush=True)
    print("stack samples of the slow thread:")
    in_thread(tp, sample=True)


class _Proxy:
    """RemoteWorker's stateful calls, each executed on the main thread."""

    def __init__(self, w, ex):
        self.w, self.ex = w, ex

    def __getattr__(self, name):
        method = getattr(self.w, name)
        return lambda *args: self.ex.submit(lambda: method(*args))


if __name__ == "__main__":
    main()
