"""Idle CPUs that wake at once: the process asks the kernel's PM QoS for a CPU wake-up latency of
0 µs (/dev/cpu_dma_latency, as tuned's latency-performance and network-latency profiles do) for
as long as it lives, so the cpuidle governor polls instead of halting the CPU.

Why: a decode step's RPC follows a wait for the GPU, and after a wait every thread on its path
(the caller, TensorPipe's loop, the serving thread) is woken on a CPU that went idle. A halted
vCPU takes an interrupt through the hypervisor to wake; a polling one sees the wake-up at once.
On the CPU box (cpuidle driver haltpoll) the request made an empty RPC faster, back to back and
after an idle wait alike (docs/evidence.md). The client process holds it too, so the local loop
runs under the same setting. Best effort: without the right (no root on a user's host) the run goes
on and the environment says the request was not held. SGAP_NO_CPU_QOS=1 in the environment
(which a server started here inherits) leaves idle as the machine has it, to measure the difference
(scripts/diagnose/idle.py).

The request acts through the cpuidle driver, and the H200 host has none (driver "none", governor
menu: idle is the plain halt): there an empty RPC after an idle wait still took far longer than
one back to back (docs/evidence.md). SGAP_CPU_POLL=1 tries what idle=poll would do there, as an
experiment measured by scripts/diagnose/idle.py, not a default: a busy loop at SCHED_IDLE on every
CPU this process may use, so no CPU halts and a woken thread preempts the loop at once. The loops
die with this process (PR_SET_PDEATHSIG) and cost the machine's idle time; on a CPU with SMT they
also share a core with real work.
"""
from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path

DEVICE = "/dev/cpu_dma_latency"
_state: dict | None = None
_fd: int | None = None  # the request lasts while this stays open: the process's life


def hold_low_latency() -> dict:
    """Make the request (once per process) and return what holds (state())."""
    global _state, _fd
    if _state is None and os.environ.get("SGAP_NO_CPU_QOS") == "1":
        _state = {"cpu_latency_us": None, "not_held": "SGAP_NO_CPU_QOS=1"}
    if _state is None:
        try:
            _fd = os.open(DEVICE, os.O_WRONLY)
            os.write(_fd, struct.pack("i", 0))
            _state = {"cpu_latency_us": 0}
        except OSError as e:
            _state = {"cpu_latency_us": None, "not_held": f"{DEVICE}: {e.strerror} (needs root)"}
        if os.environ.get("SGAP_CPU_POLL") == "1":
            _state["pollers"] = len(_start_pollers())
    return state()


# a CPU's busy loop: lowest priority, this CPU only, gone when its parent goes (prctl 1 =
# PR_SET_PDEATHSIG, 9 = SIGKILL; the getppid check covers a parent that died before the prctl)
_POLLER = """import ctypes, os, sys
parent = int(sys.argv[2])
ctypes.CDLL(None).prctl(1, 9)
os.sched_setscheduler(0, os.SCHED_IDLE, os.sched_param(0))
os.sched_setaffinity(0, {int(sys.argv[1])})
while os.getppid() == parent:
    for _ in range(200000):
        pass
"""
_pollers: list[subprocess.Popen] = []


def _start_pollers() -> list[subprocess.Popen]:
    for cpu in sorted(os.sched_getaffinity(0)):
        _pollers.append(subprocess.Popen([sys.executable, "-c", _POLLER, str(cpu), str(os.getpid())],
                                         stdin=subprocess.DEVNULL))
    return _pollers


def state() -> dict:
    """The request (cpu_latency_us: 0 held, None not made or refused) and the idle driver it acts on."""
    def read(name):
        try:
            return Path(f"/sys/devices/system/cpu/cpuidle/{name}").read_text().strip()
        except OSError:
            return None
    held = _state or {"cpu_latency_us": None, "not_held": "not requested in this process"}
    return {**held, "cpuidle_driver": read("current_driver"), "cpuidle_governor": read("current_governor")}
