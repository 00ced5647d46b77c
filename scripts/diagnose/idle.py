"""What an RPC costs after the caller waited, as a decode step's call follows the GPU's work: the
empty call back to back and after 1, 5 and 10 ms idle, through the worker's handle (a plain
call) and through its RRef, with the PM QoS request of harness/compute/cpuidle.py held on both
hosts, without it (SGAP_NO_CPU_QOS=1), and with it and a busy loop on every CPU (SGAP_CPU_POLL=1),
on the embedded link:

    python scripts/diagnose/idle.py [--link-gbps 100] [--calls 200]
"""
from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

IDLE_S = (0.0, 0.001, 0.005, 0.010)


def median_ms(call, idle_s: float, n: int) -> float:
    call()
    times = []
    for _ in range(n):
        if idle_s:
            time.sleep(idle_s)
        t0 = time.perf_counter()
        call()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e3


def measure(link_gbps: float | None, calls: int) -> None:
    from harness.compute import cpuidle
    from harness.compute.models import ModelSpec
    from harness.testbed import bed as tb
    with tb.testbed(link_gbps=link_gbps) as bed:
        handle = bed.worker(ModelSpec("tiny", "fp32"))
        remote = handle.rpc_sync().stats_remote()["cpu_idle"]
        print(f"qos client {cpuidle.state()['cpu_latency_us']} gpu host {remote['cpu_latency_us']} "
              f"pollers {remote.get('pollers', 0)} "
              f"(cpuidle {remote['cpuidle_driver']}/{remote['cpuidle_governor']})", flush=True)
        for label, call in (("handle", handle.rpc_sync().noop_remote),
                            ("rref", lambda: handle.rref.rpc_sync().noop_remote())):
            cells = "  ".join(f"idle {i * 1e3:g} ms {median_ms(call, i, calls):.3f}" for i in IDLE_S)
            print(f"  {label:6s} {cells}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--link-gbps", type=float, default=None)
    p.add_argument("--calls", type=int, default=200)
    p.add_argument("--one", action="store_true", help=argparse.SUPPRESS)  # a child: one setting
    args = p.parse_args()
    if args.one:
        return measure(args.link_gbps, args.calls)
    for env in ({}, {"SGAP_NO_CPU_QOS": "1"}, {"SGAP_CPU_POLL": "1"}):
        argv = [sys.executable, __file__, "--one", "--calls", str(args.calls)]
        if args.link_gbps:
            argv += ["--link-gbps", f"{args.link_gbps:g}"]
        subprocess.run(argv, env={**os.environ, **env}, check=True)


if __name__ == "__main__":
    main()
