"""The link's own throughput, measured with iperf3: the reference the RPC path is judged against."""
from __future__ import annotations

import json
import re
import shlex
import subprocess
import threading
from dataclasses import dataclass

from harness.testbed.link import Link
from harness.testbed.rpc import DEFAULT_CHANNEL, LANES


@dataclass(frozen=True)
class Iperf:
    streams: int
    gbps: float          # receiver-side goodput
    seconds: float


def iperf3(link: Link, streams: int = 1, seconds: float = 3.0, port: int = 5201) -> Iperf:
    """Client -> GPU host goodput over `streams` TCP connections, one iperf3 process pair per
    stream: iperf3 before 3.16 runs all of -P's streams on one thread, which caps them at one
    core's worth (several streams of one process read less than one stream: docs/evidence.md).
    Servers run on
    the GPU host for one test each (-1), bound to the link address only, all under one shell
    (one ssh session: sshd's MaxStartups refuses a burst of 16), stopped after."""
    ports = [port + i for i in range(streams)]
    server = _start_servers(link, ports)
    try:
        _wait_listening(server, ports)
        clients = [_start_client(link.gpu_addr, p, seconds) for p in ports]
        gbps = sum(_finish_client(c, link.gpu_addr, p, seconds) for c, p in zip(clients, ports))
    finally:
        try:
            server.wait(5)  # each one-off server exits after its test, then the shell
        except subprocess.TimeoutExpired:
            server.terminate()  # the shell's trap takes its servers along
            try:
                server.wait(5)
            except subprocess.TimeoutExpired:
                server.kill()
                server.wait()
    return Iperf(streams, gbps, seconds)


def _start_servers(link: Link, ports: list[int]) -> subprocess.Popen:
    one = f"iperf3 -s -1 --forceflush -B {shlex.quote(link.gpu_addr)} -p"
    script = (f"trap 'kill 0' TERM HUP; for p in {' '.join(map(str, ports))}; do {one} $p & done; wait")
    # a terminal over ssh: the servers get SIGHUP however the session ends. A session of its own
    # here: `ip netns exec` becomes the shell, and `kill 0` in our process group would kill us
    return subprocess.Popen(link.host.argv(["sh", "-c", script], tty=True), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)


def _wait_listening(server: subprocess.Popen, ports: list[int], timeout_s: float = 10.0) -> None:
    """Until every server says it listens (a probing connect would use up a one-off server)."""
    waiting = set(ports)
    done = threading.Event()
    tail: list[str] = []

    def read():
        for line in server.stdout:
            tail.append(line.strip())
            m = re.search(r"listening on (\d+)", line, re.I)
            if m:
                waiting.discard(int(m.group(1)))
                if not waiting:
                    done.set()
    threading.Thread(target=read, daemon=True).start()
    if not done.wait(timeout_s):
        last = next((t for t in reversed(tail) if t), "no output")
        raise RuntimeError(f"iperf3 servers on ports {sorted(waiting)} did not start ({last}): is iperf3 "
                           "installed on the GPU host?")


def _start_client(addr: str, port: int, seconds: float) -> subprocess.Popen:
    return subprocess.Popen(["iperf3", "-c", addr, "-p", str(port), "-t", str(seconds), "-J"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish_client(proc: subprocess.Popen, addr: str, port: int, seconds: float) -> float:
    out, err = proc.communicate(timeout=seconds + 30)
    data = json.loads(out or "{}")
    if proc.returncode != 0 or "sum_received" not in data.get("end", {}):
        raise RuntimeError(f"iperf3 to {addr}:{port} failed: {data.get('error') or err.strip()}")
    return data["end"]["sum_received"]["bits_per_second"] / 1e9


def lanes(channel: str) -> int:
    """The TCP connections a TensorPipe channel moves one tensor over."""
    return LANES.get(channel, 1)


def iperf_for_channel(check: dict, channel: str) -> float | None:
    """The link check's figure with as many TCP streams as the channel moves a tensor over."""
    return check.get(f"iperf3_gbps_{lanes(channel)}_stream")


def run_channel(env: dict) -> str:
    """The RPC channel a run used, from its machine_info.semantic_gap."""
    return (env.get("rpc") or {}).get("channels", [DEFAULT_CHANNEL])[0]
