"""The RPC path alone by message size: one CPU tensor echoed to the worker (no reply payload) on
the embedded link, against iperf3 with as many streams as the channel has lanes:

    python scripts/diagnose/rpc_sizes.py --link-gbps 100 --mb 64,256,1024,2200,8000 --calls 3

Prints per size the median request time and Gbit/s (÷ iperf3), and the netem and congestion
control this kernel offers (what the RTT axis of a sweep needs).
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import torch  # noqa: E402

from harness.compute.models import ModelSpec  # noqa: E402
from harness.measure.iperf import iperf3  # noqa: E402
from harness.testbed import bed as tb  # noqa: E402


def kernel_facts(link) -> str:
    """Probed on the GPU namespace's loopback, which carries nothing measured."""
    cc = Path("/proc/sys/net/ipv4/tcp_congestion_control").read_text().strip()
    tc = ["tc", *(["-n", link.netns] if link.netns else [])]
    probe = subprocess.run([*tc, "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms"],
                           capture_output=True, text=True)
    if probe.returncode == 0:
        subprocess.run([*tc, "qdisc", "del", "dev", "lo", "root"], capture_output=True)
    netem = "yes" if probe.returncode == 0 else "no (" + probe.stderr.strip().splitlines()[0] + ")"
    return f"kernel {Path('/proc/sys/kernel/osrelease').read_text().strip()}, congestion control {cc}, netem {netem}"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--link-gbps", type=float, default=None)
    p.add_argument("--mb", default="64,256,1024,2200")
    p.add_argument("--calls", type=int, default=3)
    args = p.parse_args()
    with tb.testbed(link_gbps=args.link_gbps) as bed:
        print(kernel_facts(bed.link), flush=True)
        iperf = iperf3(bed.link, streams=16).gbps
        print(f"link {bed.link.label}; iperf3 16 streams {iperf:.1f} Gbit/s", flush=True)
        worker = bed.worker(ModelSpec("tiny", "fp32"))
        for mb in (int(x) for x in args.mb.split(",")):
            req = torch.ones(mb * 10**6, dtype=torch.uint8)
            times = []
            for _ in range(args.calls + 1):  # the first call allocates (and faults) the receive buffer
                t0 = time.time()
                r = worker.rpc_sync().echo_remote(req, [])
                times.append(time.time() - t0 - (r.stamps_s[1] - r.stamps_s[0]))
            t = statistics.median(times[1:])
            print(f"  {mb:6d} MB: first {times[0] * 1e3:8.1f} ms, then {t * 1e3:8.1f} ms = "
                  f"{mb * 8e6 / t / 1e9:6.1f} Gbit/s ({mb * 8e6 / t / 1e9 / iperf:.2f} x iperf3)", flush=True)
            del req


if __name__ == "__main__":
    main()
