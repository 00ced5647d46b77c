"""Two hosts on one machine: the GPU host in its own network namespace, joined to the client
(the root namespace) by a veth pair, so remote-mode bytes cross a real interface as TCP.
An added round trip is netem's on the veth; on a kernel without sch_netem (the CPU box's, the
GPU machines') the pair is two TUN devices joined by a userspace delay line instead
(harness.testbed.delayline), under the same names and addresses.

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
from pathlib import Path

from harness.testbed import delayline
from harness.testbed.hosts import GpuHost
from harness.testbed.link import Link

NETNS_PREFIX = "sgap"
SUBNET = ipaddress.ip_network("10.213.0.0/16")


class NetnsError(RuntimeError):
    pass


class NoNetem(NetnsError):
    """The kernel has no sch_netem, and what stands in for it can't give the link asked for."""


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    out = subprocess.run(["ip", *args], capture_output=True, text=True)
    if check and out.returncode != 0:
        raise NetnsError(f"`ip {' '.join(args)}` failed: {out.stderr.strip()}")
    return out


def can_make_namespaces() -> bool:
    return os.geteuid() == 0 and subprocess.run(["ip", "netns", "list"],
                                                capture_output=True).returncode == 0


def link_names(pid: int, slot: int) -> tuple[str, str, str]:
    tag = f"{pid}" if slot == 0 else f"{pid}-{slot}"
    return f"{NETNS_PREFIX}{tag}", f"sgc{tag}", f"sgg{tag}"


def _addresses(pid: int, slot: int) -> tuple[str, str]:
    base = SUBNET.network_address + ((pid * 8 + slot) % (SUBNET.num_addresses // 4)) * 4
    return str(base + 1), str(base + 2)


def create(pid: int | None = None, slot: int = 0, mtu: int = 1500, rate_gbps: float | None = None,
           rtt_ms: float | None = None, delay_by: str | None = None) -> Link:
    """Create the namespace and the pair joining it; remove anything half-made if a step fails.
    slot > 0 gives the same process another link (a test's own GPU host, say).
    rate_gbps gives the link a line rate each way (see shape); rtt_ms adds that round trip to
    the pair's own, half of it each way: netem on a veth (see delay) where the kernel has
    sch_netem, else two TUNs and the userspace delay line (see delayline), which refuses a rate
    above what it carries (delayline.MAX_GBPS). delay_by 'netem' or 'delay line' picks one
    (tests)."""
    pid = pid or os.getpid()
    ns, vc, vg = link_names(pid, slot)
    ca, ga = _addresses(pid, slot)
    if delay_by not in (None, "netem", "delay line"):
        raise ValueError(f"delay_by {delay_by!r}: 'netem', 'delay line' or None (netem where the kernel has it)")
    try:
        _ip("netns", "add", ns)
        if rtt_ms:
            delay_by = delay_by or ("netem" if has_netem(ns) else "delay line")
        if delay_by == "delay line" and rtt_ms:
            _refuse_beyond_the_line(rate_gbps, rtt_ms)
            _tun_pair(ns, vc, vg, mtu, rtt_ms / 2)
        else:
            delay_by = "netem" if rtt_ms else None
            _ip("link", "add", vc, "mtu", str(mtu), "type", "veth", "peer", "name", vg, "mtu", str(mtu))
            _ip("link", "set", vg, "netns", ns)
        _ip("addr", "add", f"{ca}/30", "dev", vc)
        _ip("link", "set", vc, "up")
        _ip("-n", ns, "addr", "add", f"{ga}/30", "dev", vg)
        _ip("-n", ns, "link", "set", vg, "up")
        _ip("-n", ns, "link", "set", "lo", "up")
        if rate_gbps or rtt_ms:
            for side, dev in ((None, vc), (ns, vg)):
                if delay_by == "netem":
                    delay(side, dev, rtt_ms / 2, rate_gbps)
                elif rate_gbps:
                    # before the delay line: each TUN's egress is what the line reads, so the
                    # bucket shapes each direction once, as on the veth (where it is netem's
                    # child, after the delay: a fixed delay and a rate commute)
                    shape(side, dev, rate_gbps)
                # netem, like tbf, releases its packets from one CPU's timer. On a TUN the line's
                # writes are the receive, run in the line's process: steering lets the receiving
                # TCP's work leave the line's CPU (on the CPU box's 2 vCPUs, with and without
                # were within run-to-run noise, and no backlog dropped a packet)
                spread_receive(side, dev)
    except NetnsError:
        destroy_names(ns, vc)
        raise
    return Link("veth", ca, ga, vc, vg, ns, GpuHost(netns=ns), rate_gbps, rtt_ms, rtt_by=delay_by)


def has_netem(ns: str) -> bool:
    """Whether the kernel has sch_netem: a netem qdisc tried on the new namespace's own loopback
    (nothing else uses it yet, and it goes with the namespace)."""
    out = _tc(ns, "qdisc", "add", "dev", "lo", "root", "netem", "delay", "0")
    if out.returncode == 0:
        _tc(ns, "qdisc", "del", "dev", "lo", "root")
        return True
    if "kind is unknown" in out.stderr:
        return False
    raise NetnsError(f"probing for sch_netem in {ns} failed: {out.stderr.strip()}")


def _refuse_beyond_the_line(rate_gbps: float | None, rtt_ms: float) -> None:
    if rate_gbps and rate_gbps > delayline.MAX_GBPS:
        raise NoNetem(f"a {rate_gbps:g} Gbit/s link with {rtt_ms:g} ms added: this kernel has no sch_netem, "
                      f"and the userspace delay line that stands in carries at most {delayline.MAX_GBPS:g} "
                      f"Gbit/s: ask for {delayline.MAX_GBPS:g} Gbit/s or less, or run on a kernel with "
                      "sch_netem (CONFIG_NET_SCH_NETEM)")


def _tun_pair(ns: str, vc: str, vg: str, mtu: int, one_way_ms: float) -> None:
    """The client's TUN vc here and the GPU host's vg in ns, joined by the delay line (its
    process lives in ns: destroy_names stops it with the namespace's others, and the TUNs go
    with it). The veth's MTU: the TUNs take 64 KB GSO segments as the veth does (see
    delayline), so a larger one would buy little, and TCP would count its windows in other
    segments (a 64 KB MSS starts a connection with 640 KB in flight, not 14 KB). The queue
    length is packets a TUN holds for the line to read: a full one drops (a TUN does not push
    back on its qdisc), so it covers the line's pauses (the VM's vCPU pauses: see delayline) at
    its rate."""
    try:
        delayline.start(vc, vg, ns, one_way_ms)
    except OSError as e:  # the machine's limit as much as a missing sch_netem: one line, as that
        raise NoNetem(f"adding {2 * one_way_ms:g} ms: this kernel has no sch_netem, and the userspace "
                      f"delay line that stands in did not start ({e}): it needs /dev/net/tun "
                      "(modprobe tun), or run on a kernel with sch_netem") from None
    for side, dev in ((None, vc), (ns, vg)):
        _ip(*(["-n", side] if side else []), "link", "set", dev, "mtu", str(mtu),
            "txqueuelen", str(delayline.TXQUEUELEN))


def spread_receive(ns: str | None, dev: str) -> None:
    """Receive packet steering on dev over all CPUs. A token bucket releases every lane's
    packets from one CPU, and without RPS that CPU's backlog (netdev_max_backlog packets)
    overflowed on the H100 host: a shaped naive call's bytes were partly retransmissions
    (docs/evidence.md)."""
    cpus = os.cpu_count() or 1
    every = (1 << cpus) - 1
    words = [(every >> (32 * i)) & 0xFFFFFFFF for i in range((cpus + 31) // 32)]
    mask = ",".join(f"{w:x}" for w in reversed(words))  # sysfs wants 32-bit groups, high first
    path = f"/sys/class/net/{dev}/queues/rx-0/rps_cpus"
    # /sys shows the namespace's own devices only from inside it
    inside = ["ip", "netns", "exec", ns] if ns else []
    out = subprocess.run([*inside, "sh", "-c", f"echo {mask} > {path}"], capture_output=True, text=True)
    if out.returncode != 0:
        raise NetnsError(f"receive steering on {dev} failed: {out.stderr.strip()} (writing {path})")


def shape(ns: str | None, dev: str, rate_gbps: float, under_netem: bool = False) -> None:
    """A token bucket on dev's egress: the emulated link gets a line rate, as a NIC has.

    Unshaped, a veth is as fast as the CPUs copy, and iperf3's cache-resident buffers copy far
    faster than any application's data (docs/evidence.md): a figure no real link between two
    hosts shows. The bucket holds 1 ms of traffic (at least 256 KB, so 64 KB GSO segments pass
    whole). The queue holds 100 ms (at most 4 GB, tc's limit), so that the bucket queues rather
    than drops, as a NIC pushes back on its host. The retransmissions the H100 host showed (with
    a shorter queue and with this one alike) went only with spread_receive.

    under_netem: the bucket is netem's child (see delay), and its queue takes any TCP window."""
    bytes_per_s = rate_gbps * 1e9 / 8
    burst = max(256_000, int(bytes_per_s * 1e-3))
    limit = min(2**32 - 1, max(4 * burst, int(bytes_per_s * 0.1)))
    if under_netem:
        # netem has taken each packet from its socket, so TCP small queues no longer hold the
        # sender to ~1 ms of queue here: only the windows bound it, and a drop would be a
        # retransmission the closure check counts. tc's largest limit; memory is not reserved.
        limit = 2**32 - 1
    where = ["parent", "1:1", "handle", "10:"] if under_netem else ["root"]
    out = _tc(ns, "qdisc", "replace", "dev", dev, *where, "tbf",
              "rate", f"{rate_gbps:g}gbit", "burst", str(burst), "limit", str(limit))
    if out.returncode != 0:
        raise NetnsError(f"shaping {dev} to {rate_gbps:g} Gbit/s failed: {out.stderr.strip()} "
                         "(needs tc from iproute2 and the kernel's sch_tbf)")


NETEM_LIMIT = 1_000_000  # packets


def delay(ns: str | None, dev: str, one_way_ms: float, rate_gbps: float | None = None) -> None:
    """netem on dev's egress holds every packet one_way_ms (half the round trip: the peer's end
    holds the other half); with a rate, a token bucket as netem's child then gives the line rate.

    Why netem at the root with the tbf as its child, not netem's own `rate`: the child is the
    very bucket shape() gives a link with no added round trip (its 1 ms burst passes 64 KB GSO
    segments whole and releases a millisecond at a time), so the points of a sweep's RTT axis
    differ in the delay alone; netem's `rate` is another shaper, pacing packet by packet with
    no burst. (tbf at the root with netem its child delays and shapes alike: the tbf pulls
    each packet once netem lets it go.) Not measured against each other: the kernel this
    was written on (6.18 Firecracker, the CPU box) lacks sch_netem.

    netem takes each packet from its socket (skb_orphan_partial), so TCP small queues no longer
    bound what waits here: the TCP windows do. Its limit (packets; the default 1000 is under
    2 ms of MTU packets at 10 Gbit/s) is set past any window, so that it holds rather than
    drops: a drop is a retransmission, and the closure check counts it against the cell.

    The client's tcpdump sees its packets as they leave the qdiscs, after their half of the
    delay: in the timeline, a request's half lands before its first packet (client
    serialisation) and a reply's before its first packet too (server serialisation)."""
    root = ["root", "handle", "1:"] if rate_gbps else ["root"]
    out = _tc(ns, "qdisc", "replace", "dev", dev, *root, "netem",
              "delay", f"{one_way_ms * 1000:.0f}us", "limit", str(NETEM_LIMIT))
    if out.returncode != 0 and "kind is unknown" in out.stderr:
        raise NoNetem(f"delaying {dev} by {one_way_ms:g} ms: this kernel has no sch_netem "
                      "(CONFIG_NET_SCH_NETEM), which an added round trip needs: drop the RTT, "
                      "or run on a kernel that has it")
    if out.returncode != 0:
        raise NetnsError(f"delaying {dev} by {one_way_ms:g} ms failed: {out.stderr.strip()}")
    if rate_gbps:
        shape(ns, dev, rate_gbps, under_netem=True)


def _tc(ns: str | None, *args: str) -> subprocess.CompletedProcess:
    try:
        return subprocess.run(["tc", *(["-n", ns] if ns else []), *args], capture_output=True, text=True)
    except FileNotFoundError:
        raise NetnsError("tc not found: apt-get install iproute2") from None


def loopback() -> Link:
    return Link("loopback", "127.0.0.1", "127.0.0.1", "lo", "lo", None)


def destroy(link: Link) -> None:
    if link.netns:
        destroy_names(link.netns, link.client_iface)


def destroy_names(ns: str, client_iface: str) -> None:
    """Kill what runs in the namespace (by pid: the delay line too, whose TUNs go with it), then
    remove it and the veth (idempotent)."""
    pids = _ip("netns", "pids", ns, check=False).stdout.split()
    for p in pids:
        _kill(int(p), signal.SIGTERM)
    deadline = time.monotonic() + 5
    while pids and time.monotonic() < deadline:
        pids = [p for p in pids if not _gone(int(p))]
        time.sleep(0.05)
    for p in pids:
        _kill(int(p), signal.SIGKILL)
    _ip("netns", "del", ns, check=False)
    _ip("link", "del", client_iface, check=False)  # gone with the ns usually; harmless if so


def _gone(pid: int) -> bool:
    delayline.reap(pid)  # a delay line we started is our child: gone once we collect it
    return not Path(f"/proc/{pid}").exists()


def _kill(pid: int, sig: int) -> None:
    try:
        os.kill(pid, sig)
    except ProcessLookupError:
        pass


def clean_stale() -> list[str]:
    """Remove namespaces and veths left by killed runs (their creating pid no longer exists),
    and with a namespace the delay line in it."""
    removed = []
    listing = _ip("netns", "list", check=False).stdout
    for m in re.finditer(rf"^{NETNS_PREFIX}((\d+)(?:-\d+)?)\b", listing, re.M):
        if not Path(f"/proc/{m.group(2)}").exists():
            destroy_names(f"{NETNS_PREFIX}{m.group(1)}", f"sgc{m.group(1)}")
            removed.append(m.group(0))
    links = _ip("-o", "link", "show", check=False).stdout
    # a veth shows as sgc<pid>@<peer>; a TUN, which has no peer, as sgc<pid>: (its line was in a
    # namespace destroyed above, so it is gone unless the namespace was removed by hand)
    for m in re.finditer(r"^\d+: (sgc(\d+)(?:-\d+)?)[@:]", links, re.M):
        if not Path(f"/proc/{m.group(2)}").exists():
            _ip("link", "del", m.group(1), check=False)
            removed.append(m.group(1))
    return removed
