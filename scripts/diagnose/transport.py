"""Where a naive-mode call's time goes, and what the probe costs it, on the embedded default:

    python scripts/diagnose/transport.py --model gpt2 --calls 10

Runs prefill-sized stateless calls (the whole state_dict each time) under several probe set-ups,
round-robin so drift hits all alike, and prints per set-up the median call latency, and with the
capture on the median of each part of harness.measure.timeline and the RPC path's throughput against
iperf3 on the same link. Set-ups: bare, capture (tcpdump), sampler (NVML on the GPU host), dmon,
all (what the suite runs).
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

from harness.compute.models import ModelSpec, build_model, load_config, prompt_ids  # noqa: E402
from harness.compute.modes import NaiveBackend  # noqa: E402
from harness.compute.phase import run_phase  # noqa: E402
from harness.measure.iperf import iperf3  # noqa: E402
from harness.measure.probe import RoundProbe, WorkerSampler  # noqa: E402
from harness.measure.timeline import call_timeline  # noqa: E402
from harness.report.analysis import breakdown  # noqa: E402
from harness.testbed import bed as tb  # noqa: E402

SETUPS = {  # name -> (capture, dmon, sampler)
    "bare": (False, False, False), "capture": (True, False, False), "sampler": (False, False, True),
    "dmon": (False, True, False), "all": (True, True, True)}


def one_call(bed, backend, prompt, probe, iperf):
    began = time.perf_counter()
    probe.start()
    probe_start_s = time.perf_counter() - began
    c0 = bed.counters()
    result = run_phase(backend, prompt, "prefill", 0)
    c1 = bed.counters()
    reading = probe.stop()
    r = result.to_dict() | {"probe_start_s": probe_start_s,
                            "timeline": call_timeline(result.call_stamps, probe.packets, reading.clock_offset_s)}
    return r, breakdown(r, c1[0] - c0[0] + c1[1] - c0[1], iperf)


def echo(worker, backend, iperf, calls):
    """The naive request and reply sizes through echo_remote (no server work), as many tensors
    as the model has and as one tensor each way: what per-tensor handling costs the RPC path."""
    from harness.compute.packing import tensor_bytes, unpack
    many_req = (unpack(backend.weights), unpack(backend.kv))
    one_req = torch.empty(tensor_bytes(many_req), dtype=torch.uint8)
    kv_sizes = [t.nbytes for t in unpack(backend.kv)]
    for label, req, reply in (("as the model has", many_req, kv_sizes), ("one tensor each way", one_req, [sum(kv_sizes)]),
                              ("request only", one_req, []), ("reply only (many)", None, kv_sizes)):
        times = []
        for _ in range(calls + 1):
            t0 = time.time()
            r = worker.rpc_sync().echo_remote(req, reply)
            t1 = time.time()
            times.append(t1 - t0 - (r.stamps_s[1] - r.stamps_s[0]))
        t = statistics.median(times[1:])
        n = tensor_bytes(req) + sum(reply)
        print(f"  echo {label:22s} {n / 1e6:8.2f} MB in {t * 1e3:7.2f} ms = {n * 8 / t / 1e9:6.1f} Gbit/s "
              f"({n * 8 / t / 1e9 / iperf:.2f} x iperf3)", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="gpt2")
    p.add_argument("--dtype", default="fp16" if torch.cuda.is_available() else "fp32")
    p.add_argument("--calls", type=int, default=10, help="per set-up")
    p.add_argument("--prompt-len", type=int, default=128)
    p.add_argument("--setups", default=",".join(SETUPS))
    p.add_argument("--client-keeps-memory", action="store_true", help="harness.compute.hostmem policy here too")
    p.add_argument("--link-gbps", type=float, default=None, help="shape the veth to this rate")
    p.add_argument("--echo", action="store_true", help="also the RPC path alone: payloads split differently")
    args = p.parse_args()
    if args.client_keeps_memory:
        from harness.compute.hostmem import keep_freed_memory
        print("client keeps freed memory:", keep_freed_memory())
    spec = ModelSpec(args.model, args.dtype)
    setups = args.setups.split(",")
    rows = {name: [] for name in setups}
    with tb.testbed(link_gbps=args.link_gbps) as bed:
        print("  iperf3 Gbit/s by streams:", {n: round(iperf3(bed.link, streams=n).gbps, 1) for n in (1, 4)})
        iperf = iperf3(bed.link, streams=16).gbps  # as many as mpt_uv's lanes
        worker = bed.worker(spec)
        backend = NaiveBackend(worker, build_model(spec, "cpu").state_dict())
        prompt = prompt_ids(load_config(spec), args.prompt_len, 0)
        probes = {n: RoundProbe(bed.link, capture=c, dmon=d, sampler=WorkerSampler(worker) if s else None)
                  for n, (c, d, s) in SETUPS.items() if n in setups}
        backend.prefill(prompt)  # warm-up: first allocations, cuDNN plans
        if args.echo:
            echo(worker, backend, iperf, args.calls)
        for _ in range(args.calls):
            for name in setups:
                rows[name].append(one_call(bed, backend, prompt, probes[name], iperf))
        lanes = subprocess.run([*bed.link.gpu_prefix, "ss", "-tnH", "state", "established"],
                               capture_output=True, text=True).stdout.splitlines()
        print(f"  established TCP connections on the GPU host: {len(lanes)}")
        bed_label = bed.link.label
    gpu = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    print(f"{spec.name} {spec.dtype} on {gpu}: {args.calls} naive prefill calls per set-up; "
          f"iperf3 16 streams {iperf:.1f} Gbit/s; link {bed_label}")
    med = statistics.median
    base = med([r["latency_s"] for r, _ in rows[setups[0]]])
    for name in setups:
        lat = med([r["latency_s"] for r, _ in rows[name]])
        line = (f"  {name:8s} call {lat * 1e3:7.2f} ms ({lat / base:.3f} x {setups[0]})  server method "
                f"{med([r['call_stamps'][0][2] - r['call_stamps'][0][1] for r, _ in rows[name]]) * 1e3:7.2f} ms  "
                f"RPC path {med([b['wire_gbps'] for _, b in rows[name]]):5.1f} Gbit/s "
                f"= {med([b['wire_vs_iperf'] for _, b in rows[name]]):.2f} x iperf3  "
                f"probe start {med([r['probe_start_s'] for r, _ in rows[name]]):.2f} s")
        tl = [r["timeline"] for r, _ in rows[name] if r["timeline"]]
        if tl:
            line += "\n           " + "  ".join(f"{k.removesuffix('_s')} {med([t[k] for t in tl]) * 1e3:.2f}"
                                               for k in tl[0] if k.endswith("_s")) + " (ms)"
        print(line)


if __name__ == "__main__":
    main()
