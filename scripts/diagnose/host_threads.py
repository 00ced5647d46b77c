"""How much a local prefill's time moves between fresh processes on a GPU host, and which host
setting steadies it (harness/compute/threads.py quotes its H200 figures): each variant in 3 fresh
processes, 25 prefills each (the first 3 left out), graphs engine, the prompt eager; one profile of
a prefill's host and GPU time.
    python scripts/diagnose/host_threads.py      # DIAG_MODEL=llama-1b by default"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time

MODEL = os.environ.get("DIAG_MODEL", "llama-1b")


def child(prompt_len: int):
    import torch
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    from harness.compute.engine import Engine, EngineSpec
    from harness.compute.models import ModelSpec, build_model, prompt_ids
    if os.environ.get("DIAG_QOS"):
        from harness.compute.cpuidle import hold_low_latency
        hold_low_latency()
    m = build_model(ModelSpec(MODEL, "fp16", 0), "cuda")
    # the pool as a variant asks (the engine would otherwise take 1 on CUDA: harness/compute/threads.py)
    threads = int(os.environ.get("DIAG_THREADS") or torch.get_num_threads())
    e = Engine(m, EngineSpec("graphs", prompt_len + 12, 1, threads))
    ids = prompt_ids(m.config, prompt_len, 0).cuda()
    pf, dec = [], []
    for i in range(25):
        s = e.new_slot()
        torch.cuda.synchronize()
        t = time.perf_counter()
        tok = e.forward(s, ids).argmax(-1, keepdim=True)
        int(tok[0, 0])
        pf.append(time.perf_counter() - t)
        t = time.perf_counter()
        for _ in range(10):
            tok = e.forward(s, tok.view(1, 1)).argmax(-1, keepdim=True)
            int(tok[0, 0])
        dec.append((time.perf_counter() - t) / 10)
        e.release(s)
    prof = None
    if os.environ.get("DIAG_PROFILE"):
        from torch.profiler import ProfilerActivity, profile
        s = e.new_slot()
        with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as p:
            int(e.forward(s, ids).argmax())
        prof = p.key_averages().table(sort_by="self_cpu_time_total", row_limit=18)
        e.release(s)
    print(json.dumps({"pf_ms": [round(x * 1e3, 2) for x in pf[3:]], "dec_ms": [round(x * 1e3, 3) for x in dec[3:]],
                      "cpu": os.sched_getaffinity(0).__len__(), "threads": torch.get_num_threads(), "prof": prof}))


def driver():
    variants = [("default", [], {}), ("taskset-1core", ["taskset", "-c", "3"], {}),
                ("threads1", [], {"DIAG_THREADS": "1"}), ("qos+poll", [], {"DIAG_QOS": "1", "SGAP_CPU_POLL": "1"})]
    out = {}
    for p in (128,):
        for name, pre, env in variants:
            meds = []
            for k in range(3):
                e = dict(os.environ, **env)
                if name == "default" and k == 0 and p == 128:
                    e["DIAG_PROFILE"] = "1"
                r = subprocess.run(pre + [sys.executable, __file__, "child", str(p)], env=e, capture_output=True, text=True)
                if r.returncode:
                    print(name, "failed", r.stderr[-2000:]); continue
                d = json.loads(r.stdout.strip().splitlines()[-1])
                if d["prof"]:
                    print(d["prof"])
                meds.append((statistics.median(d["pf_ms"]), min(d["pf_ms"]), max(d["pf_ms"]), statistics.median(d["dec_ms"])))
            print(f"P={p} {name:14s} per process (median, min, max prefill ms; median decode step ms):",
                  [tuple(round(x, 2) for x in m) for m in meds], flush=True)
            out[f"{p}-{name}"] = meds
    json.dump(out, open(os.path.join(os.environ.get("OUT", "/tmp"), "diagnose_host_threads.json"), "w"))


if __name__ == "__main__":
    child(int(sys.argv[2])) if sys.argv[1:2] == ["child"] else driver()
