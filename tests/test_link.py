"""The emulated link: a namespace + veth, optionally shaped to a line rate with tc and given an
added round trip with netem, or where the kernel has no sch_netem with the userspace delay line
(two TUNs, harness.testbed.delayline); the options that ask for them."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from harness.errors import UsageError
from harness.measure.iperf import _start_client, _start_servers, _wait_listening, iperf3
from harness.options import SuiteOptions
from harness.testbed import delayline, netns
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


def _links_left(tag: str) -> list[str]:
    """Namespaces and interfaces whose name holds tag (a link's pid-slot), and delay lines
    running for them (found by their command line: wherever they are)."""
    names = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    left = [line.split()[0] for line in names.splitlines() if tag in line]
    left += [line.split(": ")[1] for line in links.splitlines() if tag in line]
    for proc in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            cmd = proc.read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if "delayline" in cmd and tag in cmd:
            left.append(f"delay line pid {proc.parent.name}")
    return left


def line_pid(link) -> int:
    """The delay line of link: the process in its namespace that runs delayline.py."""
    found = [int(p) for p in _pids_in(link.netns) if "delayline" in Path(f"/proc/{p}/cmdline").read_text()]
    assert len(found) == 1, f"delay lines in {link.netns}: {found}"
    return found[0]


def connect_rtt_ms(link, n: int = 31) -> float:
    """The fastest of n TCP connects from the root namespace to a listener in the link's namespace
    (connect returns on the SYN-ACK: one round trip), on the link's own addresses. The fastest,
    not the median: a delay is a floor that a busy neighbour (another test, on 2 cores) can only
    lengthen, and it lengthens the userspace delay line's hops most."""
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
        return min(times)
    finally:
        server.terminate()  # ip netns exec became the python it started: this pid is the listener
        server.wait(5)


@needs_root
@pytest.mark.parametrize("rtt_ms,rate_gbps,delay_by", [(5.0, None, None), (5.0, 1.0, None), (0.5, None, None),
                                                       (5.0, 1.0, "delay line")])
def test_added_round_trip_is_the_stated_one(rtt_ms, rate_gbps, delay_by):
    """The round trip over a plain veth's grows by the stated one, within 20% (0.25 ms at least),
    alone and composed with a rate on both ends: with netem where the kernel has it (netem at
    the root, the token bucket its child), else through the delay line (the bucket at each
    TUN's root, ahead of the line). The line's own hops are in the figure: on the CPU box it
    added 5.10-5.16 ms for 5, 0.57-0.66 for 0.5 (see delayline)."""
    plain = netns.create(slot=10)
    try:
        base = connect_rtt_ms(plain)
    finally:
        netns.destroy(plain)
    link = netns.create(slot=11, rtt_ms=rtt_ms, rate_gbps=rate_gbps, delay_by=delay_by)
    try:
        by = "userspace delay line" if link.rtt_by == "delay line" else "netem"
        assert link.rtt_ms == rtt_ms and f"RTT {rtt_ms:g} ms added ({by}, half each way)" in link.label
        for prefix, dev in (([], link.client_iface), (["-n", link.netns], link.gpu_iface)):
            shown = subprocess.run(["tc", *prefix, "qdisc", "show", "dev", dev], capture_output=True, text=True).stdout
            if link.rtt_by == "netem":
                assert "netem" in shown and f"delay {rtt_ms / 2:g}ms" in shown, shown
                assert ("tbf" in shown and "parent 1:1" in shown) == bool(rate_gbps), shown
            else:
                assert "netem" not in shown and ("tbf" in shown and "root" in shown) == bool(rate_gbps), shown
        if link.rtt_by == "delay line":
            line_pid(link)
        added = connect_rtt_ms(link) - base
        tolerance = max(0.25, 0.2 * rtt_ms)
        assert abs(added - rtt_ms) <= tolerance, f"added {added:.3f} ms for {rtt_ms:g} (veth alone {base:.3f} ms)"
    finally:
        netns.destroy(link)


def iperf3_sent(link, seconds: float = 2.0, port: int = 5311) -> tuple[float, int, int]:
    """One stream client -> GPU host: (receiver's Gbit/s, segments the sender retransmitted,
    bytes it sent), from iperf3's own account of its connection (the root namespace's counters
    would hold every other test's traffic)."""
    server = _start_servers(link, [port])
    try:
        _wait_listening(server, [port])
        out, _ = _start_client(link.gpu_addr, port, seconds).communicate(timeout=seconds + 30)
    finally:
        try:
            server.wait(10)  # the one-off server ends with its test, then its shell
        except subprocess.TimeoutExpired:
            server.terminate()  # the shell's trap takes the server along
            server.wait(5)
    end = json.loads(out)["end"]
    return end["sum_received"]["bits_per_second"] / 1e9, end["sum_sent"]["retransmits"], end["sum_sent"]["bytes"]


@needs_root
@pytest.mark.parametrize("rtt_ms", [0.5, 5.0])
def test_delay_line_carries_a_shaped_rate_without_retransmissions(rtt_ms):
    """Through the delay line a 2 Gbit/s link carries 80-110% of its rate in one stream (on the
    CPU box 1.89-2.00 at 0.5 and 5 ms), with under 0.5% of the bytes retransmitted (there 0-3
    segments of ~340,000: tail-loss probes after the VM's pauses of a few ms) and no drop at the
    token bucket."""
    link = netns.create(slot=14, rtt_ms=rtt_ms, rate_gbps=2.0, delay_by="delay line")
    try:
        gbps, retransmits, sent = iperf3_sent(link)
        assert 0.8 * 2.0 <= gbps <= 1.1 * 2.0, f"{gbps:.2f} Gbit/s through a 2 Gbit/s line with {rtt_ms:g} ms"
        assert retransmits * 1500 <= 0.005 * sent, f"{retransmits} segments retransmitted of {sent} bytes"
        stats = subprocess.run(["tc", "-s", "qdisc", "show", "dev", link.client_iface], capture_output=True, text=True).stdout
        assert "dropped 0," in stats, stats
    finally:
        netns.destroy(link)


@needs_root
def test_delay_line_is_a_process_of_the_namespace_and_goes_with_it():
    """The line runs in the GPU host's namespace, owns both TUNs (the client's keeps the veth's
    name, so counters and tcpdump find it), and destroy leaves no process, namespace or link."""
    link = netns.create(slot=12, rtt_ms=5.0, delay_by="delay line")
    tag = link.netns.removeprefix(netns.NETNS_PREFIX)
    try:
        assert link.rtt_by == "delay line" and "TUN pair" in link.label and "userspace delay line" in link.label
        pid = line_pid(link)
        shown = subprocess.run(["ip", "-d", "link", "show", link.client_iface], capture_output=True, text=True).stdout
        assert "tun type tun" in shown and "mtu 1500" in shown and "vnet_hdr on" in shown, shown
        assert Path(f"/sys/class/net/{link.client_iface}/statistics/tx_bytes").exists()
    finally:
        netns.destroy(link)
    assert not Path(f"/proc/{pid}").exists(), "the delay line outlived its namespace"
    assert not _links_left(tag), _links_left(tag)


@needs_root
def test_delay_line_failures_leave_nothing():
    """A rate past the line's is refused before the line starts, naming the limit and the fix;
    a step failing after it started (tc can't parse the rate) takes the line down too."""
    tag = f"{os.getpid()}-15"
    with pytest.raises(netns.NoNetem, match=f"carries at most {delayline.MAX_GBPS:g} Gbit/s: ask for"):
        netns.create(slot=15, rtt_ms=5.0, rate_gbps=delayline.MAX_GBPS * 2, delay_by="delay line")
    assert not _links_left(tag), _links_left(tag)
    with pytest.raises(netns.NetnsError, match="shaping .* failed"):
        netns.create(slot=15, rtt_ms=5.0, rate_gbps=1e-9, delay_by="delay line")
    assert not _links_left(tag), _links_left(tag)


@needs_root
def test_clean_stale_stops_a_killed_runs_delay_line():
    """A run killed with SIGKILL leaves its namespace and the line in it; the next start's
    clean_stale removes both (the line is found through the namespace, by pid)."""
    dead = subprocess.Popen(["true"])
    dead.wait()  # a pid that no longer runs, as a killed run's
    link = netns.create(pid=dead.pid, rtt_ms=1.0, delay_by="delay line")
    pid = line_pid(link)
    try:
        assert link.netns in netns.clean_stale()
        assert not Path(f"/proc/{pid}").exists(), "clean_stale left the delay line running"
        assert not _links_left(str(dead.pid)), _links_left(str(dead.pid))
    finally:
        netns.destroy(link)


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
    line = Link("veth", "a", "b", "sgc1", "sgg1", "sgap1", rate_gbps=2.0, rtt_ms=5.0, rtt_by="delay line")
    assert line.label == ("TUN pair sgc1<->sgg1 in netns sgap1, shaped to 2 Gbit/s, "
                          "RTT 5 ms added (userspace delay line, half each way)")
    assert Link("veth", "a", "b", "sgc1", "sgg1", "sgap1").label.endswith(", unshaped")


@needs_root
def test_suite_past_the_delay_lines_rate_ends_with_one_line():
    """Without sch_netem an RTT runs through the delay line; a rate with it past what the line
    carries is the machine's limit, not a fault of the run: the suite ends as for a bad option
    (exit 4, one line), not with a traceback at every cell."""
    link = netns.create(slot=13, rtt_ms=1.0)
    netns.destroy(link)
    if link.rtt_by == "netem":
        pytest.skip("this kernel has sch_netem: the suite would run")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_XDIST")}
    proc = subprocess.run([sys.executable, "-m", "pytest", "benchmarks", "-p", "no:xdist", "-p", "no:cacheprovider",
                           "--gap-model", "tiny", "--gap-link-rtt-ms", "5", "--gap-link-gbps", "25"],
                          cwd=REPO, capture_output=True, text=True, timeout=300, env=env)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 4, out[-3000:]
    assert "no sch_netem" in out and "carries at most" in out and "Traceback" not in out, out[-3000:]
