"""torch.distributed.rpc set up so that its bytes cross the link we measure.

On one kernel TensorPipe silently moves tensors through shared memory and cross-memory-attach
(two processes on one kernel exchanged tensors with next to nothing on the wire:
docs/evidence.md). We force the
`uv` (TCP) transport and a TCP channel, and pin Gloo and TensorPipe to the link's interface: left
alone, they resolve the host name to 127.0.0.1 and time out across namespaces.

Ranks: the GPU worker is rank 0 and hosts the rendezvous store at host:port; the client is rank 1
(many clients, harness.serve: ranks 1..N, named by client_name).
"""
from __future__ import annotations

import errno
import os
import socket
import subprocess
from dataclasses import dataclass

from harness.compute import cpuidle
from harness.errors import UsageError

WORKER_NAME = "GPU_WORKER"
CLIENT_NAME = "CLIENT"
CHANNELS = ("basic", "mpt_uv")
# TCP connections a channel moves one tensor over: mpt_uv splits it across 16 lanes
# (kNumUvThreads in torch's tensorpipe_agent.cpp), basic uses the pipe's one connection
LANES = {"basic": 1, "mpt_uv": 16}
# mpt_uv spreads a message over several TCP lanes: on a GPU host a naive step's message moved
# several times faster with it than with basic (one connection), so with basic the RPC path, not
# the data, set naive's latency; on 2 cores the two were alike (docs/evidence.md).
DEFAULT_CHANNEL = "mpt_uv"


@dataclass(frozen=True)
class RpcConfig:
    host: str                      # the GPU host's address on the link
    port: int = 29500
    channel: str = DEFAULT_CHANNEL # basic: one TCP connection; mpt_uv: several lanes
    timeout_s: float = 30.0        # one call: bounds a hang on a dead link or worker, well above
                                   # a naive llama-1b step on a GPU host (docs/evidence.md)
    connect_timeout_s: float = 10.0

    def __post_init__(self):
        if self.channel not in CHANNELS:
            raise UsageError(f"unknown RPC channel {self.channel!r}: use one of {', '.join(CHANNELS)}")
        if not 0 < self.port < 65536:
            raise UsageError(f"port {self.port} out of range: use 1024-65535")


# The GPU host serves requests on one thread: the client makes one call at a time, and the
# worker's model work must stay on one thread anyway (harness.compute.worker), which with one
# serving thread it can do where the request arrives, saving two thread hand-overs a call
# (measured as server_dispatch_s: a visible share of a decode step; docs/evidence.md).
SERVER_THREADS = 1
CLIENT_THREADS = 8


def backend_options(cfg: RpcConfig, threads: int):
    from torch.distributed import rpc
    return rpc.TensorPipeRpcBackendOptions(
        init_method=f"tcp://{cfg.host}:{cfg.port}", num_worker_threads=threads, rpc_timeout=cfg.timeout_s,
        _transports=["uv"], _channels=[cfg.channel])


def pin_interface(iface: str) -> None:
    """Must run before init_rpc in each process."""
    os.environ["TP_SOCKET_IFNAME"] = iface
    os.environ["GLOO_SOCKET_IFNAME"] = iface


def iface_of_address(addr: str) -> str:
    """The local interface that holds addr (the server binds there)."""
    import psutil
    for name, addrs in psutil.net_if_addrs().items():
        if any(a.address == addr for a in addrs):
            return name
    raise UsageError(f"address {addr} is on no interface of this host: pass this host's own "
                     "address on the link to the client (--host)")


def route_to(addr: str) -> tuple[str, str]:
    """(interface, source address) the kernel uses toward addr: the client's side of the link."""
    out = subprocess.run(["ip", "-o", "route", "get", addr], capture_output=True, text=True)
    words = out.stdout.split()
    if out.returncode != 0 or "dev" not in words or "src" not in words:
        raise UsageError(f"no route to GPU host {addr}: check the GPU host's address ({out.stderr.strip()})")
    return words[words.index("dev") + 1], words[words.index("src") + 1]


def check_port_free(addr: str, port: int) -> None:
    """The port must be free on addr and on the wildcard address: torch's rendezvous store binds
    it on all interfaces, and if that bind fails after we said we were ready, the client waits
    for a store that never comes (seen once under load, as a long hang)."""
    for host in dict.fromkeys((addr, "0.0.0.0")):
        with socket.socket() as s:
            try:
                s.bind((host, port))
            except OSError as e:
                if e.errno == errno.EADDRINUSE:
                    raise UsageError(f"port {port} on {addr} is already in use: pass another --port "
                                     "or stop what holds it") from None
                raise UsageError(f"cannot bind {host}:{port} ({e.strerror}): pass this host's own "
                                 "link address") from None


def check_reachable(addr: str, port: int, timeout_s: float) -> None:
    try:
        socket.create_connection((addr, port), timeout=timeout_s).close()
    except OSError as e:
        raise UsageError(f"cannot reach the GPU worker at {addr}:{port} ({e.strerror or e}): start "
                         "rpc_server.py on the GPU host or check --gpu_host_ip/--port") from None


def client_name(rank: int, world_size: int) -> str:
    """The client of a two-host world is CLIENT; of a world of many clients (harness.serve), CLIENT_<rank>."""
    return CLIENT_NAME if world_size == 2 else f"{CLIENT_NAME}_{rank}"


def init(cfg: RpcConfig, name: str, rank: int, iface: str, world_size: int = 2) -> None:
    import warnings

    from torch.distributed import rpc

    # torch's own RPC start-up trips its deprecation notice about Gloo; nothing of ours to fix
    warnings.filterwarnings("ignore", message="You are using a Backend")
    cpuidle.hold_low_latency()  # both hosts: every call wakes threads on idle CPUs
    pin_interface(iface)
    threads = SERVER_THREADS if name == WORKER_NAME else CLIENT_THREADS
    rpc.init_rpc(name, rank=rank, world_size=world_size, rpc_backend_options=backend_options(cfg, threads))
