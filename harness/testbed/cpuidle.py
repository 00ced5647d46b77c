"""Idle CPUs that wake at once: the process asks the kernel's PM QoS for a CPU wake-up latency of
0 µs (/dev/cpu_dma_latency, as tuned's latency-performance and network-latency profiles do) for
as long as it lives, so the cpuidle governor polls instead of halting the CPU.

Why: a decode step's RPC follows a wait for the GPU, and after a wait every thread on its path
(the caller, TensorPipe's loop, the serving thread) is woken on a CPU that went idle. A halted
vCPU takes an interrupt through the hypervisor to wake; a polling one sees the wake-up at once.
On the CPU box (cpuidle driver haltpoll) an empty RPC went from 0.81 to 0.54 ms back to back and
from 1.37 to 1.09 ms after 5 ms idle. The client process holds it too, so the local loop runs
under the same setting. Best effort: without the right (no root on a user's host) the run goes
on and the environment says the request was not held. SGAP_NO_CPU_QOS=1 in the environment
(which a server started here inherits) leaves idle as the machine has it, to measure the difference
(scripts/diagnose_idle.py).
"""
from __future__ import annotations

import os
import struct
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
    return state()


def state() -> dict:
    """The request (cpu_latency_us: 0 held, None not made or refused) and the idle driver it acts on."""
    def read(name):
        try:
            return Path(f"/sys/devices/system/cpu/cpuidle/{name}").read_text().strip()
        except OSError:
            return None
    held = _state or {"cpu_latency_us": None, "not_held": "not requested in this process"}
    return {**held, "cpuidle_driver": read("current_driver"), "cpuidle_governor": read("current_governor")}
