"""The two hosts and the remote worker, brought up together and torn down together.

Embedded default: a namespace + veth (or, without root, loopback, labelled as such) and
rpc_server.py started inside it. With a GPU address alone: the worker must already run there.
With an ssh host: the worker is started there over ssh.
Teardown runs on every exit path, Ctrl-C and SIGTERM included (scripts turn SIGTERM into
SystemExit), and stops what it started by pid.
"""
from __future__ import annotations

import contextlib
import logging
import socket
from dataclasses import dataclass, field, replace

from harness.compute.calls import WorkerHandle, call
from harness.compute.engine import EngineSpec
from harness.compute.models import ModelSpec
from harness.compute.modes import MODES
from harness.compute.worker import RemoteWorker
from harness.errors import UsageError
from harness.testbed import netns, rpc
from harness.testbed.hosts import GpuHost, SshTarget
from harness.testbed.launcher import ServerProcess
from harness.testbed.link import Link
from harness.testbed.link import stats as link_stats

log = logging.getLogger(__name__)


@dataclass
class Testbed:
    link: Link
    cfg: rpc.RpcConfig
    server: ServerProcess | None   # None when the worker was started by someone else
    device: str | None = None      # the worker's device; None: the GPU host's default
    workers: dict = field(default_factory=dict)

    def worker(self, spec: ModelSpec, engine: EngineSpec = EngineSpec()):
        """A handle (harness.compute.calls.WorkerHandle) to a RemoteWorker for spec, running
        engine, on the GPU host (one per pair, made on first use)."""
        from torch.distributed import rpc as torch_rpc  # torch's RPC package, loaded with the first worker
        if (spec, engine) not in self.workers:
            rref = torch_rpc.remote(rpc.WORKER_NAME, RemoteWorker, args=(spec, self.device, engine))
            self.workers[spec, engine] = WorkerHandle(rref)  # waits until the skeleton is built
        return self.workers[spec, engine]

    def backend(self, mode: str, spec: ModelSpec, weights, engine: EngineSpec = EngineSpec()):
        """A fresh client backend of a mode (harness.compute.modes.MODES) on spec's worker, which
        forgets every earlier session's caches and weights first (local: the loop runs there, on
        weights made there). sys_simulated's one-time weight load happens here, its link bytes
        counted into backend.load."""
        worker = self.worker(spec, engine)
        call(worker, "reset_remote")
        c0 = self.counters()
        backend = MODES[mode].backend(worker, weights)
        c1 = self.counters()
        if backend.load is not None:
            backend.load = replace(backend.load, link_tx_bytes=c1[0] - c0[0], link_rx_bytes=c1[1] - c0[1])
        return backend

    def counters(self) -> tuple[int, int]:
        return counters(self.link)


def counters(link: Link) -> tuple[int, int]:
    """(tx, rx) bytes of the client's side of the link."""
    s = link_stats(link.client_iface)
    return s["tx_bytes"], s["rx_bytes"]


def remote_link(gpu_addr: str, host: GpuHost = GpuHost()) -> Link:
    """A real link: tcpdump and counters on the client's interface toward the GPU host."""
    iface, src = rpc.route_to(gpu_addr)
    return Link("remote", src, gpu_addr, iface, "", None, host)


def resolve(target: SshTarget) -> str:
    """The GPU host's address for RPC: the name ssh connects to (target.hostname, which
    SshTarget.effective asked of `ssh -G`: an ssh config alias's HostName), resolved here."""
    name = target.hostname or target.host
    try:
        return socket.gethostbyname(name)
    except OSError as e:
        via = f" (HostName {name!r} in the ssh configuration)" if name != target.host else ""
        raise UsageError(f"cannot resolve GPU host {target.host!r}{via} ({e}): pass --gap-gpu-addr") from None


def embedded_link(rate_gbps: float | None = None, rtt_ms: float | None = None,
                  profile: str | None = None) -> Link:
    """The namespace link, shaped to rate_gbps and rtt_ms added if given; profile: the name the
    rate came from (link.PROFILES), for the label."""
    netns.clean_stale()
    if netns.can_make_namespaces():
        try:
            return replace(netns.create(rate_gbps=rate_gbps, rtt_ms=rtt_ms), profile=profile)
        except netns.NoNetem as e:  # the machine's, not a fault of the run: one line, as bad options
            raise UsageError(str(e)) from None
    if rate_gbps or rtt_ms:
        raise UsageError("a link rate or round trip needs the namespace link, which needs root: "
                         "run as root or drop them")
    log.warning("no root: GPU host emulated on loopback; byte counts include all loopback traffic")
    return netns.loopback()


@contextlib.contextmanager
def testbed(gpu_addr: str | None = None, port: int = 29500, channel: str = rpc.DEFAULT_CHANNEL,
            device: str | None = None, host: GpuHost | None = None, rpc_timeout_s: float = 30.0,
            link_gbps: float | None = None, link_rtt_ms: float | None = None, link_profile: str | None = None):
    """Yields a Testbed.
    - nothing given: the embedded default (namespace + veth, worker started inside), its veth
      shaped to link_gbps each way and link_rtt_ms added to its round trip if given
      (link_profile: the name the rate came from);
    - gpu_addr alone: a worker someone started there (rpc_server.py), reached directly;
    - host with ssh: the worker started over ssh, RPC to gpu_addr (default: the ssh host)."""
    from torch.distributed import rpc as torch_rpc

    link = server = None
    rpc_up = False
    try:
        link = choose_link(gpu_addr, host, link_gbps, link_rtt_ms, link_profile)
        cfg = rpc.RpcConfig(link.gpu_addr, port, channel, rpc_timeout_s)
        if link.kind != "remote" or link.host.ssh:
            server = ServerProcess(cfg, host=link.host, device=device).start()
            server.wait_for_store()
        else:
            rpc.check_reachable(cfg.host, cfg.port, cfg.connect_timeout_s)
        rpc.init(cfg, rpc.CLIENT_NAME, rank=1, iface=link.client_iface)
        rpc_up = True
        yield Testbed(link, cfg, server, device)
    finally:
        if rpc_up:
            _shutdown_rpc(torch_rpc, server)
        if server:
            server.stop(timeout_s=10.0)
        if link:
            netns.destroy(link)


def choose_link(gpu_addr: str | None, host: GpuHost | None, link_gbps: float | None = None,
                link_rtt_ms: float | None = None, link_profile: str | None = None) -> Link:
    """The link testbed() describes: over ssh, to a given address, or the embedded one."""
    if host and host.ssh:
        host = host.effective()  # an ssh config alias: its HostName, Port and User, as ssh reads them
        host.check()
        return remote_link(gpu_addr or resolve(host.ssh), host)
    return remote_link(gpu_addr) if gpu_addr else embedded_link(link_gbps, link_rtt_ms, link_profile)


@dataclass
class SharedBed:
    """A worker that many client processes join (harness.serve); this process is not one of them."""
    link: Link
    cfg: rpc.RpcConfig
    server: ServerProcess | None
    clients: int

    def counters(self) -> tuple[int, int]:
        return counters(self.link)


@contextlib.contextmanager
def shared_testbed(clients: int, port: int = 29500, channel: str = rpc.DEFAULT_CHANNEL, device: str | None = None,
                   host: GpuHost | None = None, rpc_timeout_s: float = 30.0, link_gbps: float | None = None,
                   link_rtt_ms: float | None = None, link_profile: str | None = None):
    """Yields a SharedBed: the link as testbed() makes it, and a worker started for `clients`
    client processes, which the caller starts (ranks 1..clients). Stopped, and the link removed,
    on every exit path."""
    link = server = None
    try:
        link = choose_link(None, host, link_gbps, link_rtt_ms, link_profile)
        cfg = rpc.RpcConfig(link.gpu_addr, port, channel, rpc_timeout_s)
        server = ServerProcess(cfg, host=link.host, device=device, clients=clients).start()
        server.wait_for_store()
        yield SharedBed(link, cfg, server, clients)
    finally:
        if server:
            server.stop(timeout_s=10.0)
        if link:
            netns.destroy(link)


def _shutdown_rpc(torch_rpc, server) -> None:
    """Graceful when the worker is alive (it then exits on its own); else don't wait for it."""
    alive = server is None or server.proc.poll() is None
    try:
        torch_rpc.shutdown(graceful=alive, timeout=10.0)
    except Exception as e:  # a dead peer makes the graceful path raise; we are leaving anyway
        log.warning("rpc shutdown: %s", e)
        torch_rpc.shutdown(graceful=False)
