"""The link between the client and the GPU host: where it runs, and its kernel counters."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from harness.testbed.hosts import GpuHost

# Named links: line rates only. The plan names a 25 GbE NIC and no round trip, and a rack's
# (tens of microseconds) is below what the veth itself shows (docs/evidence.md), so a profile
# adds none: the RTT is its own option and axis.
PROFILES = {"nic25": 25.0,    # the plan's testbed: a 25 GbE NIC
            "nic100": 100.0}  # 100 GbE, as the H100 results ran


@dataclass(frozen=True)
class Link:
    """The emulated link. kind is 'veth' (real interfaces between namespaces: a veth pair, or
    with the delay line two TUNs; either way counters of this link alone), 'remote' or 'loopback'."""
    kind: str
    client_addr: str
    gpu_addr: str
    client_iface: str           # counters and tcpdump on the client side
    gpu_iface: str
    netns: str | None           # the GPU host's namespace, None on loopback
    host: GpuHost = GpuHost()   # how to run programs on the GPU host
    rate_gbps: float | None = None  # a line rate given to the veth (tc tbf), None: unshaped
    rtt_ms: float | None = None     # a round trip added to the pair's own, half each way
    profile: str | None = None      # the PROFILES name the rate came from, if any
    rtt_by: str | None = "netem"    # what adds rtt_ms: 'netem' (tc, on a veth) or 'delay line'
                                    # (harness.testbed.delayline, two TUNs: no sch_netem)

    @property
    def gpu_prefix(self) -> list[str]:
        """Command prefix that runs a long-lived simple command (plain words) on the GPU host."""
        return self.host.argv([], tty=True)

    @property
    def label(self) -> str:
        if self.kind == "veth":
            rate = f", shaped to {self.rate_gbps:g} Gbit/s" if self.rate_gbps else ", unshaped"
            named = f" (profile {self.profile})" if self.profile else ""
            line = self.rtt_ms and self.rtt_by == "delay line"
            by = "userspace delay line" if line else "netem"
            rtt = f", RTT {self.rtt_ms:g} ms added ({by}, half each way)" if self.rtt_ms else ""
            pair = "TUN pair" if line else "veth"
            return f"{pair} {self.client_iface}<->{self.gpu_iface} in netns {self.netns}{rate}{named}{rtt}"
        if self.kind == "remote":
            via = f"ssh {self.host.ssh.destination}" if self.host.ssh else "worker started by hand"
            return f"{self.client_iface} -> {self.gpu_addr} ({via})"
        return "loopback (no root: NOT a real link; bytes include all loopback traffic)"


def stats(iface: str) -> dict[str, int]:
    """Kernel counters of a client-side interface: tx/rx bytes and packets."""
    base = Path(f"/sys/class/net/{iface}/statistics")
    return {k: int((base / k).read_text()) for k in ("tx_bytes", "rx_bytes", "tx_packets", "rx_packets")}
