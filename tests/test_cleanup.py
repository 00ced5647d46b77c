"""Abrupt exits leave nothing behind.

- A remote-mode run_llm.py stopped by SIGTERM or Ctrl-C removes its namespace, veth and server,
  even while blocked in torch RPC's rendezvous with a host that never answers.
- One killed by SIGKILL cleans nothing itself: its worker ends by its lifeline within seconds,
  and harness.testbed.netns.clean_stale() removes the namespace and veth at the next start.
- The benchmark suite stopped by SIGTERM (what CI runners and timeout(1) send) tears down as on
  Ctrl-C: no worker, tcpdump, iperf3 or namespace of it remains; under pytest-xdist too.

Most need root and `ip netns` (the embedded two-host testbed). Every test's teardown removes what
its run created, by pid and by name, whatever the assertions said.
"""
from __future__ import annotations

import fcntl
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from pathlib import Path

import psutil
import pytest

from harness.testbed import netns
from tests.test_cli import REPO, TAG_VAR, free_port, netns_names, tagged_servers
from tests.test_suite import clean_env

needs_netns = pytest.mark.skipif(
    not netns.can_make_namespaces(),
    reason="needs root and a working `ip netns` (the embedded namespace + veth testbed)")

RUN_ARGS = ["--mode", "naive", "--phase", "decode", "--gap-model", "tiny", "--gap-steps", "400",
            "--gap-prompt-len", "64"]
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
        argv = [*LOOPBACK, *RUN_ARGS, "--gap-port", str(free_port())] if loopback else \
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


# Every embedded run starts with clean_stale(), which would remove a SIGKILLed run's leftovers
# before the test looks: the tests here take turns across pytest-xdist workers.
LOCK_PATH = Path("/tmp/sgap-test-cleanup.lock")


@pytest.fixture
def taking_turns():
    with open(LOCK_PATH, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@pytest.fixture
def run_llm(taking_turns):
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


WORKER_EXIT_S = 10  # the bound: a worker outlives whatever ended its launcher by this much


def wait_gone(procs: list[psutil.Process], until: float) -> list[int]:
    """Pids of procs still alive at `until` (time.monotonic()), or as soon as all are gone."""
    while any(alive(p) for p in procs) and time.monotonic() < until:
        time.sleep(0.1)
    return [p.pid for p in procs if alive(p)]


@needs_netns
@pytest.mark.parametrize("when", list(WHEN))
def test_sigkill_client_worker_ends_by_itself(run_llm, when):
    """SIGKILL runs no cleanup in the client. Its worker ends by its lifeline (its stdin closes
    with the client). The namespace and veth stay: kernel objects kept by their /run/netns
    mount, with no process of the run left to remove them; the next start's clean_stale() does."""
    run = run_llm()
    run.wait_started(link_bytes=WHEN[when])
    workers = run.servers
    assert workers, "no rpc_server.py found for the run"
    t_kill = time.monotonic()
    os.kill(run.pid, signal.SIGKILL)
    assert run.collect(EXIT_TIMEOUT_S) == -signal.SIGKILL  # reaped: /proc/<pid> is gone
    # looked at first: any embedded start elsewhere (another test's) runs clean_stale() too
    assert run.ns in netns_names() and link_exists(run.veth), "nothing removed the namespace yet"
    left = wait_gone(workers, t_kill + WORKER_EXIT_S)
    assert not left, f"rpc_server.py still running {WORKER_EXIT_S} s after its client's SIGKILL: {left}"
    print(f"worker gone {time.monotonic() - t_kill:.1f} s after its client's SIGKILL")

    netns.clean_stale()
    assert run.ns not in netns_names()
    assert not link_exists(run.veth)


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


# -- the worker and its launcher --------------------------------------------------------------

# A launcher that starts the worker as the testbed does (harness.testbed.launcher), on loopback,
# prints its pid and waits to be ended from outside.
LAUNCHER = ("import sys, time; from harness.testbed.launcher import ServerProcess; "
            "from harness.testbed.rpc import RpcConfig; "
            "s = ServerProcess(RpcConfig('127.0.0.1', int(sys.argv[1]))).start(); "
            "print(s.proc.pid, flush=True); time.sleep(600)")


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_worker_ends_with_its_launcher(sig):
    """However its launcher ends without stopping it, the worker follows within the bound: it must
    not need to write to the launcher's dead pipes to go (a print there raised BrokenPipeError)."""
    launcher = subprocess.Popen([sys.executable, "-c", LAUNCHER, str(free_port())], cwd=REPO,
                                env=clean_env(), stdout=subprocess.PIPE, text=True)
    worker = None
    try:
        line = launcher.stdout.readline()
        assert line.strip().isdigit(), f"the launcher did not start a worker: {line!r}"
        worker = psutil.Process(int(line))
        t = time.monotonic()
        launcher.send_signal(sig)  # a bare python: SIGTERM ends it as abruptly as SIGKILL
        launcher.wait(EXIT_TIMEOUT_S)
        left = wait_gone([worker], t + WORKER_EXIT_S)
        assert not left, f"worker {left} still running {WORKER_EXIT_S} s after its launcher's {sig.name}"
        print(f"worker gone {time.monotonic() - t:.1f} s after its launcher's {sig.name}")
    finally:
        launcher.kill()
        launcher.wait()
        if worker is not None and alive(worker):
            worker.kill()


# -- run_llm.py waiting for a host that never answers -------------------------------------------

STOP_BOUND_S = 10  # "within a few seconds": run_llm.py gives its main thread 3 s (GRACE_S) to unwind

def accept_until_rendezvous(listener, timeout_s: float) -> list:
    """Accept on listener until run_llm.py is inside torch's rendezvous: its reachability probe
    connects and closes at once, the rendezvous store's client connects and stays. Returns the
    open connections (to close later, never answered)."""
    conns = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        listener.settimeout(max(0.1, deadline - time.monotonic()))
        conn, _ = listener.accept()
        conns.append(conn)
        conn.settimeout(0.5)
        try:
            if conn.recv(1, socket.MSG_PEEK):  # data, not EOF: the store's handshake
                return conns
        except socket.timeout:
            return conns  # open and quiet: also not the probe
    pytest.fail(f"run_llm.py did not reach the rendezvous in {timeout_s} s")


@pytest.mark.parametrize("sig,code", [(signal.SIGTERM, 128 + signal.SIGTERM), (signal.SIGINT, 128 + signal.SIGINT)],
                         ids=["SIGTERM", "SIGINT"])
def test_stop_signal_while_waiting_for_a_silent_host(sig, code):
    """A GPU host on this machine's loopback that accepts TCP and never answers: run_llm.py blocks
    in torch RPC's rendezvous (C++, where a Python signal handler does not run) and must still end
    within a few seconds of the signal."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(8)
        port = listener.getsockname()[1]
        proc = subprocess.Popen([sys.executable, "run_llm.py", "--mode", "naive", "--phase", "prefill",
                                 "--gap-model", "tiny", "--gpu_host_ip", "127.0.0.1", "--gap-port", str(port)],
                                cwd=REPO, env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        conns = []
        try:
            conns = accept_until_rendezvous(listener, START_TIMEOUT_S)
            time.sleep(1.0)  # well inside the wait
            t = time.monotonic()
            proc.send_signal(sig)
            try:
                out, err = proc.communicate(timeout=STOP_BOUND_S)
            except subprocess.TimeoutExpired:
                pytest.fail(f"run_llm.py still waiting for the host {STOP_BOUND_S} s after {sig.name}")
            took = time.monotonic() - t
        finally:
            for c in conns:
                c.close()
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
    assert proc.returncode == code, f"exit {proc.returncode} after {sig.name} ({took:.1f} s)\nstderr:\n{err}"
    assert out.strip() == "", "an interrupted run printed a result"
    assert f"{sig.name} while blocked in torch RPC" in err, err



# -- the benchmark suite under SIGTERM ------------------------------------------------------------

SUITE = ["-m", "pytest", "benchmarks", "-p", "no:xdist", "-p", "no:cacheprovider", "--gap-model", "tiny",
         "--gap-steps", "200", "--gap-prompt-len", "32", "--gap-rounds", "2", "--gap-warmup", "0"]
TEARDOWN_BOUND_S = 10  # the bound: nothing of the suite remains this long after SIGTERM


def tagged(tag: str) -> list[psutil.Process]:
    """Live processes that carry the run's tag: everything the run started, wherever it runs."""
    found = []
    for p in psutil.process_iter(["pid"]):
        try:
            if p.environ().get(TAG_VAR) == tag and p.status() != psutil.STATUS_ZOMBIE:
                found.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


def describe(procs: list[psutil.Process]) -> list[str]:
    out = []
    for p in procs:
        try:
            out.append(f"{p.pid}: {' '.join(p.cmdline())[:120]}")
        except psutil.NoSuchProcess:
            pass
    return out


class Suite:
    """A pytest session (the benchmark suite, or any other) in its own session and process group,
    so that signalling its group does not reach us; what it starts carries an env tag."""

    def __init__(self, args: list[str]):
        self.tag = uuid.uuid4().hex
        env = dict(clean_env(), **{TAG_VAR: self.tag})
        env.pop("SGAP_DEVICE", None)
        self.proc = subprocess.Popen([sys.executable, *args], cwd=REPO, env=env, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, start_new_session=True)
        self.out = self.err = ""

    def namespaces(self, pids: list[int]) -> list[str]:
        """Namespaces named after pids (netns: sgap<pid>, sgap<pid>-<slot>)."""
        return [n for n in netns_names() if any(n == f"sgap{p}" or n.startswith(f"sgap{p}-") for p in pids)]

    def wait_for(self, exe: str, timeout_s: float = START_TIMEOUT_S) -> None:
        """Until a process of the run named exe runs (tcpdump, iperf3, ...)."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.collect(1)
                pytest.fail(f"the suite exited {self.proc.returncode} before we signalled it\n"
                            f"{self.out[-2000:]}\n{self.err[-2000:]}")
            for p in tagged(self.tag):
                try:
                    if Path(p.cmdline()[0]).name == exe:
                        return
                except (psutil.NoSuchProcess, IndexError):
                    continue
            time.sleep(0.05)
        pytest.fail(f"no {exe} of the suite's in {timeout_s} s")

    def leftovers(self, pids: list[int], until: float) -> tuple[list[str], list[str]]:
        """(processes, namespaces) of the run still there at `until`, or as soon as none is."""
        while True:
            procs, spaces = describe(tagged(self.tag)), self.namespaces(pids)
            if not (procs or spaces) or time.monotonic() >= until:
                return procs, spaces
            time.sleep(0.1)

    def collect(self, timeout: float) -> int | None:
        try:
            self.out, self.err = self.proc.communicate(timeout=timeout)
        except subprocess.TimeoutExpired:
            return None
        except ValueError:  # collected before: its pipes are closed
            pass
        return self.proc.returncode

    def teardown(self, pids: list[int]) -> None:
        """Remove whatever is left, by pid and by the names derived from pids. SIGTERM first (a
        failed test's suite may still run): SIGKILL would leave its namespace."""
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGTERM)
            if self.collect(EXIT_TIMEOUT_S) is None:
                os.killpg(self.proc.pid, signal.SIGKILL)
        self.collect(10)
        for p in tagged(self.tag):
            try:
                p.kill()
            except psutil.NoSuchProcess:
                pass
        for ns in self.namespaces(pids):
            netns.destroy_names(ns, "sgc" + ns.removeprefix("sgap"))


def assert_stopped_as_on_ctrl_c(suite: Suite, pids: list[int], t_signal: float) -> None:
    procs, spaces = suite.leftovers(pids, t_signal + TEARDOWN_BOUND_S)
    rc = suite.collect(EXIT_TIMEOUT_S)
    assert not procs and not spaces, (f"{TEARDOWN_BOUND_S} s after SIGTERM the suite left processes "
                                      f"{procs} and namespaces {spaces}\n{suite.err[-2000:]}")
    assert rc == 2, f"exit {rc} (pytest's interrupted is 2)\n{suite.out[-3000:]}\n{suite.err[-2000:]}"
    notes = [l for l in suite.err.splitlines() if "SIGTERM" in l]
    assert len(notes) == 1 and "as on Ctrl-C" in notes[0], suite.err[-2000:]


@needs_netns
@pytest.mark.parametrize("during,sender", [("iperf3", "pid"), ("tcpdump", "timeout(1)")])
def test_sigterm_to_suite_leaves_nothing(during, sender, tmp_path, taking_turns):
    """SIGTERM while the link check's iperf3 runs, or while a cell's tcpdump captures. Sent to
    pytest's pid, or as timeout(1) sends it: to the pid and then to its process group, which also
    reaches tcpdump and the iperf3 clients directly (the worker and the iperf3 servers run in
    sessions of their own)."""
    out = tmp_path / "out.json"  # an interrupted run writes no result, and says so in one line
    suite = Suite([*SUITE, "--basetemp", str(tmp_path / "base"), f"--benchmark-json={out}"])  # pcaps: ours
    pids = [suite.proc.pid]
    try:
        suite.wait_for(during)
        t = time.monotonic()
        os.kill(suite.proc.pid, signal.SIGTERM)
        if sender == "timeout(1)":
            os.killpg(suite.proc.pid, signal.SIGTERM)
        assert_stopped_as_on_ctrl_c(suite, pids, t)
        assert not out.exists(), "an interrupted run wrote its benchmark JSON"
        assert "Traceback" not in suite.err and "no benchmark JSON written" in suite.err, suite.err[-2000:]
    finally:
        suite.teardown(pids)


# a testbed held by a test in an xdist worker; the test says its worker's pid, then waits
HOLD_TESTBED = """
import os, time
from pathlib import Path
import pytest
from harness.testbed.bed import testbed

@pytest.fixture
def bed():
    with testbed() as b:
        yield b

def test_hold(bed):
    (Path({where!r}) / f"holding-{{os.getpid()}}").touch()
    time.sleep(300)
"""


@needs_netns
def test_sigterm_to_xdist_controller_reaches_workers(tmp_path, taking_turns):
    """Under pytest-xdist the testbed lives in a worker process. SIGTERM to the controller's pid
    alone must still tear it down (the worker's server and namespace) within the bound."""
    test_file = tmp_path / "test_hold.py"
    test_file.write_text(HOLD_TESTBED.format(where=str(tmp_path)))
    suite = Suite(["-m", "pytest", str(test_file), "-n", "1", "-p", "fixtures.signals", "-p", "no:cacheprovider",
                   "--rootdir", str(tmp_path), "--basetemp", str(tmp_path / "base")])
    pids = [suite.proc.pid]
    try:
        deadline = time.monotonic() + START_TIMEOUT_S
        while not (held := list(tmp_path.glob("holding-*"))) and time.monotonic() < deadline:
            if suite.proc.poll() is not None:
                break
            time.sleep(0.1)
        if not held:
            suite.collect(1)
            pytest.fail(f"no xdist worker held a testbed\n{suite.out[-2000:]}\n{suite.err[-2000:]}")
        pids.append(int(held[0].name.removeprefix("holding-")))
        assert suite.namespaces(pids[1:]), "the worker's namespace is not there"
        t = time.monotonic()
        os.kill(suite.proc.pid, signal.SIGTERM)
        assert_stopped_as_on_ctrl_c(suite, pids, t)
    finally:
        suite.teardown(pids)
