"""The emulated link: a namespace + veth, optionally shaped to a line rate with tc and given an
added round trip with netem; the options that ask for them."""
from __future__ import annotations

import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.errors import UsageError
from harness.measure.iperf import _start_servers, _wait_listening, iperf3
from harness.options import SuiteOptions
from harness.testbed import netns
from harness.testbed.link import Link

REPO = Path(__file__).resolve().parent.parent

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


def _netem_link(slot: int, **kw):
    """A link with an added round trip, or a skip where the kernel has no sch_netem."""
    try:
        return netns.create(slot=slot, **kw)
    except netns.NoNetem as e:
        pytest.skip(str(e))


def connect_rtt_ms(link, n: int = 21) -> float:
    """Median of n TCP connects from the root namespace to a listener in the link's namespace
    (connect returns on the SYN-ACK: one round trip), on the link's own addresses."""
    code = ("import socket,sys\ns=socket.socket()\ns.bind((sys.argv[1],int(sys.argv[2])))\ns.listen(64)\n"
            "print('up',flush=True)\nwhile True:\n c,_=s.accept()\n c.close()")
    server = subprocess.Popen(["ip", "netns", "exec", link.netns, sys.executable, "-c", code, link.gpu_addr, "5399"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert server.stdout.readline().strip() == "up"
        times = []
        for _ in range(n):
            with socket.socket() as c:
                t0 = time.perf_counter()
                c.connect((link.gpu_addr, 5399))
                times.append((time.perf_counter() - t0) * 1e3)
            time.sleep(0.01)
        return statistics.median(times)
    finally:
        server.terminate()  # ip netns exec became the python it started: this pid is the listener
        server.wait(5)


@needs_root
@pytest.mark.parametrize("rate_gbps", [None, 1.0])
def test_added_round_trip_is_the_stated_one(rate_gbps):
    """5 ms stated gives 5 +- 1 ms more than the same veth without it, alone and composed with a
    rate (netem at the root, the token bucket its child, on both ends)."""
    plain = netns.create(slot=10)
    try:
        base = connect_rtt_ms(plain)
    finally:
        netns.destroy(plain)
    link = _netem_link(11, rtt_ms=5.0, rate_gbps=rate_gbps)
    try:
        assert link.rtt_ms == 5.0 and "RTT 5 ms added" in link.label
        for prefix, dev in (([], link.client_iface), (["-n", link.netns], link.gpu_iface)):
            shown = subprocess.run(["tc", *prefix, "qdisc", "show", "dev", dev], capture_output=True, text=True).stdout
            assert "netem" in shown and "delay 2.5ms" in shown, shown
            assert ("tbf" in shown and "parent 1:1" in shown) == bool(rate_gbps), shown
        added = connect_rtt_ms(link) - base
        assert 4.0 <= added <= 6.0, f"added {added:.2f} ms (veth alone {base:.3f} ms)"
    finally:
        netns.destroy(link)


@needs_root
def test_without_netem_an_added_round_trip_fails_saying_so_and_leaves_nothing():
    """This CPU box's kernel has no sch_netem: the error names it, and the namespace is gone."""
    try:
        link = netns.create(slot=12, rtt_ms=5.0)
    except netns.NoNetem as e:
        assert "sch_netem" in str(e)
    else:
        netns.destroy(link)
        pytest.skip("this kernel has sch_netem")
    listing = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert f"{netns.NETNS_PREFIX}{os.getpid()}-12" not in listing


@pytest.mark.parametrize("kw,needle", [
    ({"link_rtt_ms": 0.0}, "--gap-link-rtt-ms 0.0 must be > 0"),
    ({"link_rtt_ms": -5.0}, "--gap-link-rtt-ms -5.0 must be > 0"),
    ({"link_rtt_ms": 5.0, "gpu_addr": "10.213.255.254"}, "delays the embedded link only"),
    ({"link_profile": "nic40"}, "use one of nic25, nic100"),
    ({"link_profile": "nic25", "link_gbps": 10.0}, "nic25 is 25 Gbit/s and --gap-link-gbps 10 disagrees"),
    ({"link_profile": "nic100", "gpu_addr": "10.213.255.254"}, "shapes the embedded link only"),
])
def test_bad_link_options(kw, needle):
    with pytest.raises(UsageError, match=needle):
        SuiteOptions(**kw).validate()


def test_profile_sets_the_rate_and_no_round_trip():
    opts = SuiteOptions(link_profile="nic25").validate()
    assert (opts.link_gbps, opts.link_rtt_ms, opts.link_profile) == (25.0, None, "nic25")
    assert SuiteOptions(link_profile="nic100", link_gbps=100.0).validate().link_gbps == 100.0
    assert SuiteOptions(link_rtt_ms=0.5).validate().link_rtt_ms == 0.5


def test_label_names_rate_profile_and_round_trip():
    link = Link("veth", "a", "b", "sgc1", "sgg1", "sgap1", rate_gbps=25.0, rtt_ms=0.5, profile="nic25")
    assert link.label == ("veth sgc1<->sgg1 in netns sgap1, shaped to 25 Gbit/s (profile nic25), "
                          "RTT 0.5 ms added (netem, half each way)")
    assert Link("veth", "a", "b", "sgc1", "sgg1", "sgap1").label.endswith(", unshaped")


@needs_root
def test_suite_without_netem_ends_with_one_line():
    """An RTT on a kernel without sch_netem is the machine's limit, not a fault of the run: the
    suite ends as for a bad option (exit 4, one line), not with a traceback at every cell."""
    try:
        netns.destroy(netns.create(slot=13, rtt_ms=1.0))
        pytest.skip("this kernel has sch_netem: the suite would run")
    except netns.NoNetem:
        pass
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST")}
    proc = subprocess.run([sys.executable, "-m", "pytest", "benchmarks", "-p", "no:xdist", "-p", "no:cacheprovider",
                           "--gap-model", "tiny", "--gap-link-rtt-ms", "5"],
                          cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 4, out[-3000:]
    assert "no sch_netem" in out and "Traceback" not in out, out[-3000:]
