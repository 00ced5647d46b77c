"""The emulated link: a namespace + veth, optionally shaped to a line rate with tc."""
from __future__ import annotations

import os
import subprocess
import time

import pytest

from harness.measure.iperf import _start_servers, _wait_listening, iperf3
from harness.testbed import netns

needs_root = pytest.mark.skipif(not netns.can_make_namespaces(), reason="needs root to make a namespace")


@needs_root
def test_shaped_link_carries_no_more_than_its_rate():
    """Shaping is on both ends, and iperf3 can't beat the rate. An upper bound only: a slow
    shared machine may carry less, never more (not a timing assert on our own speed)."""
    link = netns.create(slot=7, rate_gbps=0.5)
    try:
        assert link.rate_gbps == 0.5 and "shaped to 0.5 Gbit/s" in link.label
        for prefix, dev in (([], link.client_iface), (["-n", link.netns], link.gpu_iface)):
            shown = subprocess.run(["tc", *prefix, "qdisc", "show", "dev", dev], capture_output=True, text=True).stdout
            assert "tbf" in shown and "500Mbit" in shown, shown
        rps = subprocess.run(["ip", "netns", "exec", link.netns, "cat", f"/sys/class/net/{link.gpu_iface}/queues/rx-0/rps_cpus"],
                             capture_output=True, text=True).stdout
        assert int(rps.replace(",", ""), 16) == (1 << os.cpu_count()) - 1, rps
        for streams in (1, 4):
            gbps = iperf3(link, streams=streams, seconds=2).gbps
            assert 0 < gbps <= 0.5 * 1.1, (streams, gbps)
    finally:
        netns.destroy(link)
    assert link.netns not in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout


@needs_root
def test_shaping_failure_leaves_nothing():
    with pytest.raises(netns.NetnsError, match="shaping .* failed"):
        netns.create(slot=8, rate_gbps=1e-9)  # tc cannot parse "1e-09gbit"
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert f"{netns.NETNS_PREFIX}{os.getpid()}-8" not in listing


@needs_root
def test_stopping_iperf3_servers_spares_the_caller():
    """The servers' shell stops them with `kill 0`: that must reach its own group only (without a
    session of its own, `ip netns exec` left it in ours and the signal killed pytest too)."""
    link = netns.create(slot=9)
    try:
        ports = [5301, 5302]
        shell = _start_servers(link, ports)
        _wait_listening(shell, ports)
        shell.terminate()
        shell.wait(5)
        deadline = time.monotonic() + 5
        while (left := _pids_in(link.netns)) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not left, f"iperf3 servers left in the namespace: {left}"
    finally:
        netns.destroy(link)  # reached at all: the caller survived


def _pids_in(ns: str) -> list[str]:
    return subprocess.run(["ip", "netns", "pids", ns], capture_output=True, text=True).stdout.split()
