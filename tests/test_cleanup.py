"""A remote-mode run_llm.py stopped by SIGTERM or Ctrl-C removes its namespace, veth and server;
one killed by SIGKILL leaves them, and harness.testbed.netns.clean_stale() removes them at next start.

Needs root and `ip netns` (the embedded two-host testbed). Every test's teardown removes what its
run created, by pid and by name, whatever the assertions said.
"""
from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil
import pytest

from harness.testbed import netns
from tests.test_cli import REPO, TAG_VAR, free_port, netns_names, tagged_servers

needs_netns = pytest.mark.skipif(
    not netns.can_make_namespaces(),
    reason="needs root and a working `ip netns` (the embedded namespace + veth testbed)")

RUN_ARGS = ["--mode", "naive", "--phase", "decode", "--model", "tiny", "--decode-steps", "400",
            "--prompt-len", "64"]
# run_llm.py as a non-root user runs it: the GPU host emulated on loopback, no namespace
LOOPBACK = ["-c", "import sys; sys.argv[0] = 'run_llm.py'; import harness.testbed.netns as n; "
            "n.can_make_namespaces = lambda: False; import run_llm; sys.exit(run_llm.main())"]
START_TIMEOUT_S = 120
EXIT_TIMEOUT_S = 30


def tx_bytes(iface: str) -> int:
    """The kernel's tx byte counter of iface (0 while it does not exist)."""
    try:
        return int(Path(f"/sys/class/net/{iface}/statistics/tx_bytes").read_text())
    except (FileNotFoundError, ValueError):
        return 0


def link_exists(name: str) -> bool:
    return Path(f"/sys/class/net/{name}").exists()


def alive(p: psutil.Process) -> bool:
    try:
        return p.is_running() and p.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


class Run:
    """run_llm.py in a child process, with what it starts attributed to it by an env tag."""

    def __init__(self, loopback: bool = False):
        self.tag = uuid.uuid4().hex
        self.t0 = time.time()
        env = dict(os.environ, **{TAG_VAR: self.tag})
        env.pop("SGAP_DEVICE", None)
        argv = [*LOOPBACK, *RUN_ARGS, "--port", str(free_port())] if loopback else \
            ["run_llm.py", *RUN_ARGS]
        self.proc = subprocess.Popen([sys.executable, *argv], cwd=REPO, env=env,
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        self.pid = self.proc.pid
        self.loopback = loopback
        self.ns, self.veth = f"sgap{self.pid}", f"sgc{self.pid}"
        self.iface = "lo" if loopback else self.veth
        self.servers: list[psutil.Process] = []
        self.out = self.err = ""

    def servers_now(self) -> list[psutil.Process]:
        return tagged_servers(self.tag, self.t0)

    def wait_started(self, link_bytes: int = 0) -> None:
        """Until the namespace exists and the server runs (and, if asked, until at least
        link_bytes crossed the veth: the decode loop is under way)."""
        deadline = time.monotonic() + START_TIMEOUT_S
        tx0 = None
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.collect()
                pytest.fail(f"run_llm exited {self.proc.returncode} before we signalled it\n"
                            f"stderr:\n{self.err}")
            servers = self.servers_now()
            if servers and (self.loopback or self.ns in netns_names()):
                self.servers = servers
                if link_bytes == 0:
                    return
                tx = tx_bytes(self.iface)
                tx0 = tx if tx0 is None else tx0
                if tx - tx0 >= link_bytes:
                    return
            time.sleep(0.05)
        pytest.fail(f"run_llm did not bring up {self.ns} and its server in {START_TIMEOUT_S} s")

    def collect(self, timeout: float = EXIT_TIMEOUT_S) -> int | None:
        try:
            out, err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
        self.out, self.err = out or "", err or ""
        return self.proc.returncode

    def teardown(self) -> None:
        """Remove whatever is left, by pid and by name."""
        if self.proc.poll() is None:
            self.proc.kill()
        try:
            self.proc.communicate(timeout=10)
        except (subprocess.TimeoutExpired, ValueError):
            pass
        for p in self.servers + self.servers_now():
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        pids = subprocess.run(["ip", "netns", "pids", self.ns], capture_output=True,
                              text=True).stdout.split()
        for p in pids:
            try:
                os.kill(int(p), signal.SIGKILL)
            except ProcessLookupError:
                pass
        subprocess.run(["ip", "netns", "del", self.ns], capture_output=True)
        subprocess.run(["ip", "link", "del", self.veth], capture_output=True)


# Every embedded run starts with clean_stale(), which would remove test_clean_stale_after_sigkill's
# leftovers before it looks: the tests here take turns across pytest-xdist workers.
LOCK_PATH = Path("/tmp/sgap-test-cleanup.lock")


@pytest.fixture
def run_llm():
    lock = open(LOCK_PATH, "a")
    fcntl.flock(lock, fcntl.LOCK_EX)
    runs: list[Run] = []

    def start(loopback: bool = False) -> Run:
        r = Run(loopback)
        runs.append(r)
        return r
    try:
        yield start
    finally:
        for r in runs:
            r.teardown()
        fcntl.flock(lock, fcntl.LOCK_UN)
        lock.close()


def assert_all_gone(run: Run) -> None:
    deadline = time.monotonic() + 5  # the kernel may take a moment to drop the veth
    while time.monotonic() < deadline:
        if (run.ns not in netns_names() and not link_exists(run.veth)
                and not any(alive(p) for p in run.servers) and not run.servers_now()):
            break
        time.sleep(0.1)
    assert run.ns not in netns_names(), f"namespace {run.ns} left behind"
    assert not link_exists(run.veth), f"veth {run.veth} left behind"
    left = [p.pid for p in run.servers if alive(p)] + [p.pid for p in run.servers_now()]
    assert not left, f"rpc_server.py left running: {left}"


# a signal as soon as the server is up lands in the testbed's start (rpc init, worker creation);
# one a few MB in lands in the decode loop
WHEN = {"at-server-start": 0, "mid-decode": 20 * 2**20}


@needs_netns
@pytest.mark.parametrize("when", list(WHEN))
@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 128 + signal.SIGTERM), (signal.SIGINT, 130)],
                         ids=["SIGTERM", "SIGINT"])
def test_signal_cleans_up(run_llm, sig, code, when):
    run = run_llm()
    run.wait_started(link_bytes=WHEN[when])
    assert run.servers, "no rpc_server.py found for the run"
    t = time.monotonic()
    os.kill(run.pid, sig)
    rc = run.collect(EXIT_TIMEOUT_S)
    took = time.monotonic() - t
    assert rc is not None, f"run_llm still running {EXIT_TIMEOUT_S} s after {sig.name}"
    assert_all_gone(run)
    assert rc == code, f"exit {rc} after {sig.name} ({took:.1f} s)\nstderr:\n{run.err}"
    assert run.out.strip() == "", "an interrupted run printed a result"
    if sig == signal.SIGINT:
        assert "interrupted; cleaned up" in run.err


@needs_netns
def test_clean_stale_after_sigkill(run_llm):
    run = run_llm()
    run.wait_started()
    orphans = run.servers
    assert orphans, "no rpc_server.py found for the run"
    os.kill(run.pid, signal.SIGKILL)
    assert run.collect(EXIT_TIMEOUT_S) == -signal.SIGKILL  # reaped: /proc/<pid> is gone
    # a killed run cleans nothing: its namespace, veth and server stay behind
    assert run.ns in netns_names()
    assert link_exists(run.veth)
    assert all(alive(p) for p in orphans)

    removed = netns.clean_stale()
    assert run.ns in removed
    assert run.ns not in netns_names()
    assert not link_exists(run.veth)
    deadline = time.monotonic() + 10
    while any(alive(p) for p in orphans) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(alive(p) for p in orphans), \
        f"orphan rpc_server.py still running: {[p.pid for p in orphans if alive(p)]}"


@pytest.mark.parametrize("when", list(WHEN))
def test_sigterm_cleans_up_on_loopback(run_llm, when):
    """Without root the GPU host runs on loopback: no namespace whose teardown would kill the
    server as a side effect, so the server must be stopped by pid on every path."""
    run = run_llm(loopback=True)
    run.wait_started(link_bytes=WHEN[when])
    assert run.servers, "no rpc_server.py found for the run"
    os.kill(run.pid, signal.SIGTERM)
    rc = run.collect(EXIT_TIMEOUT_S)
    assert rc is not None, f"run_llm still running {EXIT_TIMEOUT_S} s after SIGTERM"
    deadline = time.monotonic() + 5
    while any(alive(p) for p in run.servers) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = [p.pid for p in run.servers if alive(p)] + [p.pid for p in run.servers_now()]
    assert not left, f"rpc_server.py left running: {left}"
    assert run.ns not in netns_names()
    assert rc == 128 + signal.SIGTERM, f"exit {rc}\nstderr:\n{run.err}"
