"""The PM QoS request both hosts make (harness.compute.cpuidle): held while the process lives,
gone with it, and said in the environment either way."""
from __future__ import annotations

import os
import struct
import subprocess
import sys
import time

import pytest

from harness.compute import cpuidle


def _effective_us() -> int:
    """The kernel's current CPU latency limit: reading the device gives the aggregate of requests."""
    with open(cpuidle.DEVICE, "rb") as f:
        return struct.unpack("i", f.read(4))[0]


def test_request_lasts_as_long_as_the_process():
    """The child holds 0 µs while it lives; once it exits the kernel's limit is what it was before
    (other holders, this test process among them once a testbed ran, may keep it at 0 too)."""
    if not os.path.exists(cpuidle.DEVICE) or os.geteuid() != 0:
        pytest.skip(f"{cpuidle.DEVICE} needs root and the kernel's PM QoS")
    before = _effective_us()
    code = ("import struct, sys; from harness.compute import cpuidle; s = cpuidle.hold_low_latency(); "
            f"print(s['cpu_latency_us'], struct.unpack('i', open({cpuidle.DEVICE!r}, 'rb').read(4))[0])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={k: v for k, v in os.environ.items() if k != "SGAP_NO_CPU_QOS"})
    assert out.stdout.split() == ["0", "0"], out.stdout
    assert _effective_us() == before, "the request outlived its process"


def test_state_says_why_not_where_none_was_made():
    s = cpuidle.state()
    assert set(s) >= {"cpu_latency_us", "cpuidle_driver", "cpuidle_governor"}
    if s["cpu_latency_us"] is None:
        assert s["not_held"]


def test_pollers_go_with_their_process():
    """SGAP_CPU_POLL=1: a busy loop per CPU, at SCHED_IDLE, that dies with the process that made it."""
    code = ("from harness.compute import cpuidle; s = cpuidle.hold_low_latency(); "
            "print(s['pollers'], *[p.pid for p in cpuidle._pollers], flush=True)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "SGAP_CPU_POLL": "1"})
    n, *pids = map(int, out.stdout.split())
    assert n == len(pids) == len(os.sched_getaffinity(0))
    deadline = time.monotonic() + 5
    while any(os.path.exists(f"/proc/{p}") for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(os.path.exists(f"/proc/{p}") for p in pids), "a poller outlived its process"
