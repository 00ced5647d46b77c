"""Two hosts on one machine: the GPU host in its own network namespace, joined to the client
(the root namespace) by a veth pair, so remote-mode bytes cross a real interface as TCP.

Names carry the creating process id (`sgap<pid>`, veths `sgc<pid>`/`sgg<pid>`, with `-<slot>`
for a process's further links) so that concurrent sessions don't collide and a later start can
tell leftovers of a killed run (their pid is gone) from a live session's. Each pair gets its own
/30 inside 10.213.0.0/16, derived from pid and slot; traffic goes only there.
"""
from __future__ import annotations

import ipaddress
import os
import re
import signal
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from harness.remote import GpuHost

NETNS_PREFIX = "sgap"
SUBNET = ipaddress.ip_network("10.213.0.0/16")


class NetnsError(RuntimeError):
    pass


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    out = subprocess.run(["ip", *args], capture_output=True, text=True)
    if check and out.returncode != 0:
        raise NetnsError(f"`ip {' '.join(args)}` failed: {out.stderr.strip()}")
    return out


@dataclass(frozen=True)
class Link:
    """The emulated link. kind is 'veth' (real interface between namespaces) or 'loopback'."""
    kind: str
    client_addr: str
    gpu_addr: str
    client_iface: str           # counters and tcpdump on the client side
    gpu_iface: str
    netns: str | None           # the GPU host's namespace, None on loopback
    host: GpuHost = GpuHost()   # how to run programs on the GPU host

    @property
    def gpu_prefix(self) -> list[str]:
        """Command prefix that runs a long-lived simple command (plain words) on the GPU host."""
        return self.host.argv([], tty=True)

    @property
    def label(self) -> str:
        if self.kind == "veth":
            return f"veth {self.client_iface}<->{self.gpu_iface} in netns {self.netns}"
        if self.kind == "remote":
            via = f"ssh {self.host.ssh.destination}" if self.host.ssh else "worker started by hand"
            return f"{self.client_iface} -> {self.gpu_addr} ({via})"
        return "loopback (no root: NOT a real link; bytes include all loopback traffic)"


def can_make_namespaces() -> bool:
    return os.geteuid() == 0 and subprocess.run(["ip", "netns", "list"],
                                                capture_output=True).returncode == 0


def _names(pid: int, slot: int) -> tuple[str, str, str]:
    tag = f"{pid}" if slot == 0 else f"{pid}-{slot}"
    return f"{NETNS_PREFIX}{tag}", f"sgc{tag}", f"sgg{tag}"


def _addresses(pid: int, slot: int) -> tuple[str, str]:
    base = SUBNET.network_address + ((pid * 8 + slot) % (SUBNET.num_addresses // 4)) * 4
    return str(base + 1), str(base + 2)


def create(pid: int | None = None, slot: int = 0, mtu: int = 1500) -> Link:
    """Create the namespace and veth pair; remove anything half-made if a step fails.
    slot > 0 gives the same process another link (a test's own GPU host, say)."""
    pid = pid or os.getpid()
    ns, vc, vg = _names(pid, slot)
    ca, ga = _addresses(pid, slot)
    try:
        _ip("netns", "add", ns)
        _ip("link", "add", vc, "mtu", str(mtu), "type", "veth", "peer", "name", vg, "mtu", str(mtu))
        _ip("link", "set", vg, "netns", ns)
        _ip("addr", "add", f"{ca}/30", "dev", vc)
        _ip("link", "set", vc, "up")
        _ip("-n", ns, "addr", "add", f"{ga}/30", "dev", vg)
        _ip("-n", ns, "link", "set", vg, "up")
        _ip("-n", ns, "link", "set", "lo", "up")
    except NetnsError:
        destroy_names(ns, vc)
        raise
    return Link("veth", ca, ga, vc, vg, ns, GpuHost(netns=ns))


def loopback() -> Link:
    return Link("loopback", "127.0.0.1", "127.0.0.1", "lo", "lo", None)


def destroy(link: Link) -> None:
    if link.netns:
        destroy_names(link.netns, link.client_iface)


def destroy_names(ns: str, client_iface: str) -> None:
    """Kill what runs in the namespace (by pid), then remove it and the veth (idempotent)."""
    pids = _ip("netns", "pids", ns, check=False).stdout.split()
    for p in pids:
        _kill(int(p), signal.SIGTERM)
    deadline = time.monotonic() + 5
    while pids and time.monotonic() < deadline:
        pids = [p for p in pids if Path(f"/proc/{p}").exists()]
        time.sleep(0.05)
    for p in pids:
        _kill(int(p), signal.SIGKILL)
    _ip("netns", "del", ns, check=False)
    _ip("link", "del", client_iface, check=False)  # gone with the ns usually; harmless if so


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def clean_stale() -> list[str]:
    """Remove namespaces and veths left by killed runs (their creating pid no longer exists)."""
    removed = []
    listing = _ip("netns", "list", check=False).stdout
    for m in re.finditer(rf"^{NETNS_PREFIX}((\d+)(?:-\d+)?)\b", listing, re.M):
        if not Path(f"/proc/{m.group(2)}").exists():
            destroy_names(f"{NETNS_PREFIX}{m.group(1)}", f"sgc{m.group(1)}")
            removed.append(m.group(0))
    links = _ip("-o", "link", "show", check=False).stdout
    for m in re.finditer(r"^\d+: (sgc(\d+)(?:-\d+)?)@", links, re.M):
        if not Path(f"/proc/{m.group(2)}").exists():
            _ip("link", "del", m.group(1), check=False)
            removed.append(m.group(1))
    return removed
