"""How busy the host was while a cell ran, beyond the suite itself: a busy neighbour makes the
figures wrong, not just noisy (the client's threads suffer most), so a run records it, and the
cells' checks name it (harness.report.invariants.busy_host_misses).

From the kernel's counters (/proc/stat, /proc/loadavg), over a window: the share of all CPUs
busy, the share stolen by the hypervisor, and the share busy in processes other than this one and
its children (the worker, tcpdump, iperf3, dmon: the suite's own).
"""
from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass

import psutil

CLK_TCK = os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class HostLoad:
    seconds: float
    cpus: int
    loadavg_1m: float
    busy_share: float      # of all CPUs' time in the window
    steal_share: float
    others_share: float    # busy in processes other than the suite's own process tree

    def to_dict(self) -> dict:
        return asdict(self)


def _cpu_ticks() -> tuple[int, int, int]:
    """(total, busy, steal) jiffies over all CPUs since boot (/proc/stat's first line)."""
    with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:]]
    user, nice, system, idle, iowait, irq, softirq, steal = (fields + [0] * 8)[:8]
    total = sum(fields[:8])
    return total, total - idle - iowait, steal


def _cpu_s(p: psutil.Process) -> float:
    """A process's CPU seconds, with those of the children it has waited for (tools that ran and
    exited: tcpdump, tshark, iperf3)."""
    t = p.cpu_times()
    return t.user + t.system + t.children_user + t.children_system


def _own_cpu_s() -> float:
    """CPU seconds of this process tree: this process, its children alive now (the worker, the
    probe's tools), and every child any of them waited for."""
    me = psutil.Process()
    total = _cpu_s(me)
    for child in me.children(recursive=True):
        try:
            total += _cpu_s(child)
        except psutil.Error:
            pass
    return total


class LoadWindow:
    """start(), then stop() -> HostLoad over the time between."""

    def start(self) -> "LoadWindow":
        self._t, self._ticks, self._own = time.monotonic(), _cpu_ticks(), _own_cpu_s()
        return self

    def stop(self) -> HostLoad:
        total, busy, steal = (b - a for a, b in zip(self._ticks, _cpu_ticks()))
        own = _own_cpu_s() - self._own
        cpus = psutil.cpu_count() or 1
        seconds = time.monotonic() - self._t
        total_s = total / CLK_TCK or 1e-9
        return HostLoad(seconds, cpus, os.getloadavg()[0], busy / (total or 1), steal / (total or 1),
                        max(0.0, busy / CLK_TCK - own) / total_s)
