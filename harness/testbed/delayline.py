"""A round trip added in userspace, for kernels without sch_netem: two TUN devices and a process
that copies every IP packet from one to the other a fixed delay after it read it.

    client --sgc<pid> (TUN, root ns)--> [this process] <--sgg<pid> (TUN, in sgap<pid>)-- GPU host

The process opens the client's TUN where it starts (the root namespace), then joins the GPU host's
namespace and opens the other TUN there. It stays in that namespace, so what stops the
namespace's processes (netns.destroy_names, and clean_stale for a killed run's) stops it too, and
its TUNs go with its fds. Each packet read from one TUN is written to the other one_way_ms later,
both directions, in order: the delay is the same for every packet, so a deque per direction is
already a time-ordered queue.

The TUNs carry virtio-net headers with checksum and TSO offloads, as a VM's tap does: the sending
kernel hands over 64 KB GSO segments without checksums (the MTU stays the veth's 1500), the line
passes each with its header, and the receiving kernel takes it as it came, as a veth passes its
GSO segments. Without the headers a TUN has no GSO: every 1500-byte packet would be a read and a
write here. The other way to large packets, plain IP with a 65000 MTU, carried less unshaped
(docs/evidence.md), and TCP counts its windows in segments: a 64 KB MSS starts a connection with
640 KB in flight, the veth's 14 KB.

Stdlib only: the GPU machines have no compiler. netns.create starts it (start()) and gives the
TUNs their addresses, MTU and queue length.

How it behaves, measured on the CPU box (docs/evidence.md has the figures, the setup and the date):
- Round trip: the line's own two hops and its wake-ups add a little over the stated delay: a
  packet that finds it asleep in select is read late each way, and the delay counts from the read.
  Most releases come within microseconds of their time, but the VM takes its vCPUs away for
  milliseconds now and then, which no userspace loop can hide.
- Throughput: unshaped, the line is bound by the box's CPUs (the line on most of a core, both
  cores busy); through the tbf it carried close to the set rate up to MAX_GBPS, and less above it.
- Retransmissions: next to none, and no drops at the tbf, the TUNs' queues or the CPUs' backlogs,
  so the few are most likely tail-loss probes after the VM's pauses (the plain unshaped veth
  retransmitted far more on the same box).
- CPU: the line's share of a core grows with the rate, a cost of Python and kernel per packet (a
  64 KB segment or an ACK); idle, none (it sleeps in select). Polling ahead of releases is capped
  at SPIN_SHARE of a core.
So MAX_GBPS is 5: the highest rate the line carried at 90% or more of in one stream. Not measured
on the GPU machines (16 cores, where the line's core is its own): there it may carry more.
"""
from __future__ import annotations

import argparse
import collections
import ctypes
import fcntl
import os
import select
import signal
import struct
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

TXQUEUELEN = 10000          # packets a TUN holds for the line: see netns._tun_pair
MAX_GBPS = 5.0              # the highest rate create() gives a link through the line: see above
READ_BYTES = 65536 + 64     # a 64 KB GSO segment and its virtio-net header
READ_BATCH = 64             # packets read from one TUN before the clock is looked at again
SPIN_S = 150e-6             # wake this early for a release, then poll: a sleeping select wakes
                            # late, by less than this in nearly all wake-ups (docs/evidence.md)
SPIN_SHARE = 0.1            # polling may take this share of a CPU, ...
SPIN_BUDGET_S = 0.002       # ... saved up to this much

TUNSETIFF, TUNSETOFFLOAD = 0x400454CA, 0x400454D0
IFF_TUN, IFF_NO_PI, IFF_VNET_HDR = 0x0001, 0x1000, 0x4000
TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6 = 0x01, 0x02, 0x04
PR_SET_TIMERSLACK = 29
CLONE_NEWNET = 0x40000000


def open_tun(name: str) -> int:
    """A TUN device named name in this process's network namespace (it lasts while the fd is
    open): IP packets behind a virtio-net header, with checksum and TSO offloads on."""
    fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    try:
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH22x", name.encode(), IFF_TUN | IFF_NO_PI | IFF_VNET_HDR))
        fcntl.ioctl(fd, TUNSETOFFLOAD, TUN_F_CSUM | TUN_F_TSO4 | TUN_F_TSO6)
    except OSError:
        os.close(fd)
        raise
    return fd


def join_netns(name: str) -> None:
    """Move this process into the named namespace (`ip netns add` made /run/netns/<name>)."""
    fd = os.open(f"/run/netns/{name}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        if hasattr(os, "setns"):  # Python 3.12+
            os.setns(fd, CLONE_NEWNET)
        else:
            libc = ctypes.CDLL(None, use_errno=True)
            if libc.setns(fd, CLONE_NEWNET) != 0:
                e = ctypes.get_errno()
                raise OSError(e, f"setns into {name}: {os.strerror(e)}")
    finally:
        os.close(fd)


def prompt_wakeups() -> None:
    """Timer slack 1 ns, so that select wakes when asked, not up to 50 µs later (a normal
    process's default slack). And idle CPUs that wake at once (a PM QoS request held while the fd
    is open, this process's life), as harness.compute.cpuidle asks for the client and the worker:
    a packet that finds the line asleep waits for its wake-up, which the delay doesn't know of."""
    try:
        ctypes.CDLL(None).prctl(PR_SET_TIMERSLACK, 1, 0, 0, 0)
    except (OSError, AttributeError):
        pass
    try:
        fd = os.open("/dev/cpu_dma_latency", os.O_WRONLY)  # left open on purpose: the request lasts while it is
        os.write(fd, struct.pack("i", 0))
    except OSError:
        pass  # best effort, as cpuidle's


@dataclass
class Lane:
    """One direction: packets read from src wait in queue, as (release time, packet), for dst."""
    src: int
    dst: int
    queue: collections.deque


def forward(a: int, b: int, one_way_s: float) -> None:
    """Copy packets a -> b and b -> a, each one_way_s after it was read. Never returns.

    Sleeps in select until SPIN_S before the next release, then polls (select, no timeout) until
    it is due, while a budget lasts: SPIN_SHARE of the time gone by, SPIN_BUDGET_S at most saved.
    Sparse traffic (a decode step's call) is released within microseconds of its time; bulk
    traffic, for which the line would poll without pause, on wake-ups (tens of µs late)."""
    lanes = {a: Lane(a, b, collections.deque()), b: Lane(b, a, collections.deque())}
    fds = [a, b]
    clock, read, write = time.monotonic, os.read, os.write
    budget, polled, last = SPIN_BUDGET_S, False, clock()
    while True:
        now = clock()
        budget = min(SPIN_BUDGET_S, budget + (now - last) * SPIN_SHARE - (now - last if polled else 0.0))
        last = now
        wake = None
        for lane in lanes.values():
            q = lane.queue
            while q and q[0][0] <= now:
                try:
                    write(lane.dst, q.popleft()[1])
                except OSError:  # the device is down (a test cut the link): lost, as on a wire
                    pass
            if q and (wake is None or q[0][0] < wake):
                wake = q[0][0]
        if wake is None:
            timeout = None
        else:
            left = wake - clock()
            timeout = left - SPIN_S if left > SPIN_S else (0.0 if budget > 0 else max(0.0, left))
        polled = timeout == 0.0
        ready, _, _ = select.select(fds, [], [], timeout)
        if not ready:
            continue
        # packets read in one go share their release time: they waited in the TUN for the same
        # wake-up, and the reads take microseconds
        due = clock() + one_way_s
        for fd in ready:
            q = lanes[fd].queue
            for _ in range(READ_BATCH):
                try:
                    q.append((due, read(fd, READ_BYTES)))
                except (BlockingIOError, InterruptedError):
                    break
                # any other error (EBADFD: its TUN was deleted) ends the line: it has nothing to carry


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--client-iface", required=True, help="TUN to make here (the root namespace)")
    ap.add_argument("--gpu-iface", required=True, help="TUN to make in --netns")
    ap.add_argument("--netns", required=True, help="the GPU host's namespace (/run/netns/<name>)")
    ap.add_argument("--one-way-ms", type=float, required=True, help="delay each way, ms")
    args = ap.parse_args(argv)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # stopped by its creator, not by a terminal's Ctrl-C
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    try:
        a = open_tun(args.client_iface)
        join_netns(args.netns)
        b = open_tun(args.gpu_iface)
    except OSError as e:
        print(f"error: {e}", flush=True)
        return 1
    prompt_wakeups()
    print("ready", flush=True)
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)  # the creator stopped reading: no print may block
    forward(a, b, args.one_way_ms / 1000)
    return 0


START_TIMEOUT_S = 10.0
_started: dict[int, subprocess.Popen] = {}  # lines this process started, by pid, until reaped


def start(client_iface: str, gpu_iface: str, netns: str, one_way_ms: float) -> int:
    """Run the line as a process of its own, in a session of its own (a terminal's Ctrl-C must not
    cut the link under a run still tearing down); returns its pid once both TUNs exist. Raises
    OSError with the line's own error if it could not make them (it has exited then)."""
    proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--client-iface", client_iface,
                             "--gpu-iface", gpu_iface, "--netns", netns, "--one-way-ms", repr(one_way_ms)],
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, text=True,
                            start_new_session=True)
    ready, _, _ = select.select([proc.stdout], [], [], START_TIMEOUT_S)
    line = proc.stdout.readline().strip() if ready else ""
    proc.stdout.close()
    if line != "ready":
        proc.kill()
        proc.wait()
        raise OSError(line.removeprefix("error: ") or f"no answer in {START_TIMEOUT_S:g} s")
    _started[proc.pid] = proc
    return proc.pid


def reap(pid: int) -> None:
    """Collect the exit of a line this process started, once it has ended: until then it is a
    zombie, and /proc/<pid>, which netns.destroy_names waits to see go, stays. (A line whose
    creator died is init's to reap, which takes a while: docs/evidence.md.)"""
    proc = _started.get(pid)
    if proc is not None and proc.poll() is not None:
        del _started[pid]


if __name__ == "__main__":
    sys.exit(main())
