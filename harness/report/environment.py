"""What a reader needs to know about where the numbers came from (pytest-benchmark machine_info)."""
from __future__ import annotations

import platform
import subprocess
import sys
from pathlib import Path

import torch

from harness.compute import cpuidle, hostmem
from harness.compute.calls import call


def versions() -> dict:
    import transformers
    return {"torch": torch.__version__, "transformers": transformers.__version__,
            "cuda": torch.version.cuda, "python": platform.python_version()}


def nvidia_smi(host) -> dict | None:
    """The GPU host's card, asked of nvidia-smi there (None: no GPU or no driver)."""
    try:
        out = subprocess.run(host.argv(["nvidia-smi", "--query-gpu=name,driver_version,memory.total",
                                        "--format=csv,noheader"]), capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0 or not out.stdout.strip():
        return None
    name, driver, mem = [f.strip() for f in out.stdout.splitlines()[0].split(",")]
    return {"name": name, "driver": driver, "memory": mem}


def link_facts(iface: str) -> dict:
    def read(attr):
        try:
            return open(f"/sys/class/net/{iface}/{attr}").read().strip()
        except OSError:
            return None
    # type: ARPHRD_* (1: Ethernet, whose 14-byte header the counters count; 65534: none, a TUN)
    return {"iface": iface, "mtu": read("mtu"), "speed_mbps": read("speed"), "type": read("type")}


def changed_files(repo: Path) -> list[str] | None:
    """Tracked files that differ from the commit (what pytest-benchmark's `dirty` means); None
    where repo is no git checkout."""
    out = subprocess.run(["git", "-C", str(repo), "status", "--porcelain", "--untracked-files=no"],
                         capture_output=True, text=True)
    return None if out.returncode != 0 else [line[3:] for line in out.stdout.splitlines()]


def link_emulation(link) -> dict:
    """What the emulated link was given, as numbers a sweep's reader groups by (flat keys, as
    predict.costmodel reads link_rtt_ms): the line rate (None: unshaped), the round trip added to
    the veth's own (0: none) and the profile named. None throughout on a real link: it has its own."""
    if link.kind != "veth":
        return {"link_rate_gbps": None, "link_rtt_ms": None, "link_profile": None}
    return {"link_rate_gbps": link.rate_gbps, "link_rtt_ms": link.rtt_ms or 0.0, "link_profile": link.profile}


def run_facts(opts, host) -> dict:
    """What every run records (the suite's cells, the clients run): software, command, model and
    workload, and the GPU host's card (host: a harness.testbed.hosts.GpuHost)."""
    return {"versions": versions(), "command": ["pytest", *sys.argv[1:]], "strict": opts.strict,
            "model": opts.spec.name, "dtype": opts.spec.dtype, "prompt_len": opts.prompt_len, "steps": opts.steps,
            "gpu": nvidia_smi(host)}


def describe_testbed(bed, opts) -> dict:
    worker = call(bed.worker(opts.spec, opts.engine_spec), "stats_remote")
    return {**run_facts(opts, bed.link.host), "batch": opts.batch, "rounds": opts.rounds,
            "rounds_stateful": opts.rounds_for("sys_simulated"),
            "warmup": opts.warmup, "link": bed.link.label,
            "link_kind": bed.link.kind, "client_link": link_facts(bed.link.client_iface),
            **link_emulation(bed.link),
            "rpc": {"transports": ["uv"], "channels": [bed.cfg.channel]},
            "device": worker["device"], "client_device": opts.resolved_device,
            # the malloc policy changes what naive's receive and local's activations cost (harness/compute/hostmem.py)
            "worker_malloc": worker["malloc"], "client_malloc": hostmem.POLICY, "engine": worker["engine"],
            # host intra-op threads each process gave the model (harness/compute/threads.py)
            "threads": {"client": torch.get_num_threads(), "gpu_host": worker["threads"]},
            # idle CPUs poll or halt: what a call after a wait pays to wake (harness/compute/cpuidle.py)
            "cpu_idle": {"client": cpuidle.state(), "gpu_host": worker["cpu_idle"]}}
