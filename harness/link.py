"""The link between the hosts: kernel counters and an iperf3 measurement (the plan's Step 1.4)."""
from __future__ import annotations

import json
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from harness.netns import Link


def stats(iface: str) -> dict[str, int]:
    """Kernel counters of a client-side interface: tx/rx bytes and packets."""
    base = Path(f"/sys/class/net/{iface}/statistics")
    return {k: int((base / k).read_text()) for k in ("tx_bytes", "rx_bytes", "tx_packets", "rx_packets")}


@dataclass(frozen=True)
class Iperf:
    streams: int
    gbps: float          # receiver-side goodput
    seconds: float


def iperf3(link: Link, streams: int = 1, seconds: float = 3.0, port: int = 5201,
           server_prefix: list[str] | None = None) -> Iperf:
    """Client -> GPU host goodput. The server runs on the GPU host for one test (-1), bound to
    the link address only, and is killed by pid if the client fails."""
    prefix = link.gpu_prefix if server_prefix is None else server_prefix
    server = subprocess.Popen([*prefix, "iperf3", "-s", "-1", "-B", link.gpu_addr, "-p", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        out = _client(link.gpu_addr, port, streams, seconds)
    finally:
        try:
            server.wait(5)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    bps = out["end"]["sum_received"]["bits_per_second"]
    return Iperf(streams, bps / 1e9, seconds)


def _client(addr: str, port: int, streams: int, seconds: float) -> dict:
    deadline = time.monotonic() + 10
    while True:  # the server needs a moment to listen
        proc = subprocess.run(["iperf3", "-c", addr, "-p", str(port), "-P", str(streams),
                               "-t", str(seconds), "-J"], capture_output=True, text=True,
                              timeout=seconds + 30)
        data = json.loads(proc.stdout or "{}")
        if proc.returncode == 0 and "sum_received" in data.get("end", {}):
            return data
        if time.monotonic() > deadline:
            raise RuntimeError(f"iperf3 to {addr}:{port} failed: {data.get('error') or proc.stderr.strip()}")
        time.sleep(0.2)
