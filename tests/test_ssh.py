"""The suite driving a GPU host over real SSH: an OpenSSH server with a throwaway key runs
inside the emulated GPU host's namespace; the suite reaches it only through ssh and the link.
Then the faults: each must give a clear message within a bounded time, keep what finished, and
leave no stray process on either side."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from harness.errors import UsageError
from harness.testbed import netns
from harness.testbed.hosts import GpuHost, SshTarget
from harness.testbed.sshd import SshServer, keygen

REPO = Path(__file__).resolve().parent.parent
FAULT_BOUND_S = 30

pytestmark = pytest.mark.skipif(not netns.can_make_namespaces() or not Path("/usr/sbin/sshd").exists(),
                                reason="needs root, `ip netns` and openssh-server (./setup.sh)")


@pytest.fixture
def gpu_host():
    link = netns.create(slot=1)  # this process's second link: the session testbed may hold slot 0
    try:
        with SshServer(link) as sshd:
            yield link, sshd
    finally:
        netns.destroy(link)


def suite(sshd, *args, env=None, timeout=300, ssh_args=None):
    """ssh_args: how the suite reaches the GPU host [the test sshd's target, key and known_hosts]."""
    if ssh_args is None:
        ssh_args = ["--gap-gpu-host", sshd.target, "--gap-ssh-identity", str(sshd.client_key),
                    "--gap-ssh-known-hosts", str(sshd.known_hosts), "--gap-ssh-accept-new"]
    cmd = [sys.executable, "-m", "pytest", "benchmarks", "-p", "no:cacheprovider", "-p", "no:xdist",
           "--gap-model", "tiny", "--gap-steps", "3", "--gap-rounds", "1", "--gap-warmup", "0",
           "--gap-prompt-len", "16", *ssh_args,
           "--gap-remote-python", sys.executable, "--gap-remote-dir", str(REPO),
           *args]
    env = {k: v for k, v in (env or os.environ).items() if not k.startswith("PYTEST_XDIST")}
    return subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=env)  # without xdist's variables: pytest-benchmark would disable itself


def finish(proc, timeout=300):
    out, _ = proc.communicate(timeout=timeout)
    report_failures(out)
    return proc.returncode, out


def report_failures(out: str) -> None:
    """What the user saw: the child session's failure lines (shown with pytest -s)."""
    for line in out.splitlines():
        if line.startswith(("FAILED", "ERROR", "E   ")) and ("Error" in line or "error" in line):
            print("   child:", line[:240])


def gpu_side_processes(link) -> list[str]:
    """What runs in the GPU host's namespace besides sshd itself."""
    pids = subprocess.run(["ip", "netns", "pids", link.netns], capture_output=True, text=True).stdout.split()
    cmds = []
    for pid in pids:
        cmd = _cmdline(pid)
        if cmd and "sshd" not in cmd:
            cmds.append(cmd)
    return cmds


def _cmdline(pid) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_text(errors="ignore").replace("\0", " ").strip()
    except OSError:
        return ""  # gone meanwhile


def assert_nothing_left(link, deadline_s=10):
    end = time.monotonic() + deadline_s
    while gpu_side_processes(link) and time.monotonic() < end:
        time.sleep(0.2)
    assert not gpu_side_processes(link), gpu_side_processes(link)
    client = subprocess.run(["pgrep", "-af", f"tcpdump -i {link.client_iface}"], capture_output=True, text=True)
    assert not client.stdout.strip(), client.stdout


def test_whole_suite_through_ssh(gpu_host, tmp_path):
    link, sshd = gpu_host
    out_json = tmp_path / "ssh.json"
    rc, out = finish(suite(sshd, f"--benchmark-json={out_json}"))
    assert rc == 0, out[-4000:]
    data = json.loads(out_json.read_text())
    cells = [b for b in data["benchmarks"] if "summary" in b["extra_info"]]
    assert len(cells) == 6
    assert "ssh root@" in data["machine_info"]["semantic_gap"]["link"]
    naive = next(b for b in cells if b["name"] == "test_cell[decode-naive]")["extra_info"]["summary"]
    assert naive["link_bytes"]["mean"] > 1_000_000, "the worker's bytes crossed the veth"
    assert_nothing_left(link)


@pytest.mark.parametrize("fault", ["wrong key", "refused", "project missing"])
def test_session_faults_fail_fast_with_one_clear_line(gpu_host, fault, tmp_path):
    link, sshd = gpu_host
    args, needle = {
        "wrong key": (["--gap-ssh-identity", str(keygen(tmp_path / "stranger"))], "Permission denied"),
        "refused": (["--gap-gpu-host", f"root@{link.gpu_addr}:2299"], "Connection refused"),
        "project missing": (["--gap-remote-dir", "/nonexistent/project"], "the project is not at"),
    }[fault]
    t0 = time.monotonic()
    rc, out = finish(suite(sshd, "-k", "prefill-local", *args), timeout=120)
    elapsed = time.monotonic() - t0
    print(f"{fault}: session over in {elapsed:.1f} s")
    assert rc == 4 and needle in out, out[-3000:]  # the session ends as on a bad option
    assert len([line for line in out.splitlines() if needle in line]) == 1, out[-3000:]  # once, one line
    assert elapsed < FAULT_BOUND_S + 15, elapsed  # pytest and torch start-up on top of the fault
    assert_nothing_left(link)


def ssh_config(path: Path, alias: str, sshd, hostname: str, extra: str = "") -> Path:
    """An ssh configuration that names the test sshd by alias alone: the suite gets nothing else."""
    path.write_text(f"""Host {alias}
    HostName {hostname}
    Port {sshd.port}
    User root
    IdentityFile {sshd.client_key}
    IdentitiesOnly yes
    UserKnownHostsFile {sshd.known_hosts}
    StrictHostKeyChecking accept-new
{extra}""")
    return path


def test_alias_is_read_as_ssh_reads_it(gpu_host, tmp_path):
    """`ssh -G` with the suite's own options: the alias's HostName, Port and User, while the
    destination stays the alias (its other settings still apply); the options given win."""
    link, sshd = gpu_host
    config = ssh_config(tmp_path / "ssh_config", "gpu-alias", sshd, link.gpu_addr)
    t = SshTarget.parse("gpu-alias", config=str(config)).effective()
    assert (t.hostname, t.port, t.user, t.host) == (link.gpu_addr, sshd.port, "root", "gpu-alias")
    assert t.ssh_argv()[:3] == ["ssh", "-F", str(config)] and t.ssh_argv()[-1] == "root@gpu-alias"
    # the port the capture leaves out as ssh's (harness.measure.probe) is the alias's, not 22
    assert GpuHost(ssh=SshTarget.parse("gpu-alias", config=str(config))).effective().ssh.port == sshd.port
    t = SshTarget.parse("nobody@gpu-alias:2299", config=str(config)).effective()
    assert (t.hostname, t.port, t.user) == (link.gpu_addr, 2299, "nobody")
    with pytest.raises(UsageError, match=r"^ssh cannot read its configuration for gpu-alias: .*"
                                         r"no-such-config: No such file"):
        SshTarget.parse("gpu-alias", config=str(tmp_path / "no-such-config")).effective()


def test_suite_through_an_ssh_config_alias(gpu_host, tmp_path):
    """--gap-gpu-host names a Host alias of an ssh config file (--gap-ssh-config): the address,
    port, user, key and known_hosts all come from the alias, as they do for `ssh gpu-alias`."""
    link, sshd = gpu_host
    config = ssh_config(tmp_path / "ssh_config", "gpu-alias", sshd, link.gpu_addr)
    out_json = tmp_path / "alias.json"
    rc, out = finish(suite(sshd, "-k", "prefill", f"--benchmark-json={out_json}",
                           ssh_args=["--gap-gpu-host", "gpu-alias", "--gap-ssh-config", str(config)]))
    assert rc == 0, out[-4000:]
    data = json.loads(out_json.read_text())
    assert data["machine_info"]["semantic_gap"]["link"].endswith(f"-> {link.gpu_addr} (ssh root@gpu-alias)")
    cells = {b["name"]: b["extra_info"] for b in data["benchmarks"] if "summary" in b["extra_info"]}
    assert sorted(cells) == [f"test_cell[prefill-{m}]" for m in ("local", "naive", "sys_simulated")]
    naive = cells["test_cell[prefill-naive]"]
    assert naive["summary"]["link_bytes"]["mean"] > 1_000_000, "the worker's bytes crossed the veth"
    assert_nothing_left(link)


RELAY = """import os, socket, sys, threading
s = socket.create_connection((sys.argv[1], int(sys.argv[2])))
def up():
    while data := os.read(0, 65536):
        s.sendall(data)
    s.shutdown(socket.SHUT_WR)
threading.Thread(target=up, daemon=True).start()
while data := s.recv(65536):
    os.write(1, data)
"""


@pytest.mark.parametrize("case", ["unknown name", "reachable through a proxy only"])
def test_unresolvable_alias_is_one_line_once(gpu_host, tmp_path, case):
    """An alias whose HostName this host cannot resolve: one line, printed once, and the session
    ends (pytest's usage-error status), not a traceback repeated for every cell.
    - unknown name: ssh itself cannot resolve it, and says so;
    - reachable through a proxy only (a ProxyCommand: ssh works) but the RPC needs an address
      here: the suite says to pass --gap-gpu-addr."""
    link, sshd = gpu_host
    if case == "unknown name":
        config = ssh_config(tmp_path / "ssh_config", "gpu-bad", sshd, "gpu-nowhere.invalid")
        needle = "ssh to root@gpu-bad failed: ssh: Could not resolve hostname gpu-nowhere.invalid"
    else:
        relay = tmp_path / "relay.py"
        relay.write_text(RELAY)
        config = ssh_config(tmp_path / "ssh_config", "gpu-bad", sshd, "gpu-nowhere.invalid",
                            f"    ProxyCommand {sys.executable} {relay} {link.gpu_addr} %p\n")
        needle = ("cannot resolve GPU host 'gpu-bad' (HostName 'gpu-nowhere.invalid' in the ssh "
                  "configuration)")
    t0 = time.monotonic()
    rc, out = finish(suite(sshd, ssh_args=["--gap-gpu-host", "gpu-bad", "--gap-ssh-config", str(config)]),
                     timeout=120)
    elapsed = time.monotonic() - t0
    assert rc == 4, out[-3000:]  # pytest.ExitCode.USAGE_ERROR
    lines = [line for line in out.splitlines() if needle in line]
    assert len(lines) == 1, out[-3000:]
    if case != "unknown name":
        assert lines[0].rstrip(" !").endswith(": pass --gap-gpu-addr"), lines[0]
    assert "Traceback" not in out and "UsageError" not in out, out[-3000:]
    summary = [line for line in out.splitlines() if re.match(r"^=+ .* in [\d.]+s", line)]
    # no cell errored, one by one, on the same fault: the session ended at the first
    assert len(summary) == 1 and not re.search(r"error|failed", summary[0]), out[-3000:]
    assert elapsed < FAULT_BOUND_S + 15, elapsed
    assert_nothing_left(link)


def test_rpc_port_taken(gpu_host):
    link, sshd = gpu_host
    holder = subprocess.Popen(link.host.argv([sys.executable, "-c",
        f"import socket,time; s=socket.socket(); s.bind(('{link.gpu_addr}', 29611)); s.listen(); time.sleep(120)"]))
    try:
        time.sleep(1.0)
        rc, out = finish(suite(sshd, "-k", "prefill-naive", "--gap-port", "29611"), timeout=120)
        assert rc != 0 and "port 29611" in out and "in use" in out, out[-3000:]
    finally:
        holder.kill()
        holder.wait()
    assert_nothing_left(link)


def test_tcpdump_missing(gpu_host, tmp_path):
    """PATH without tcpdump: the measured cells fail saying so; the local cells still pass."""
    link, sshd = gpu_host
    bindir = tmp_path / "bin"
    bindir.mkdir()
    for d in ("/usr/local/bin", "/usr/bin", "/usr/sbin", "/bin", "/sbin"):
        for f in Path(d).glob("*"):
            if f.name != "tcpdump" and not (bindir / f.name).exists():
                (bindir / f.name).symlink_to(f)
    env = dict(os.environ, PATH=str(bindir))
    rc, out = finish(suite(sshd, "-k", "prefill", env=env), timeout=180)
    assert rc == 1, out[-3000:]
    assert "tcpdump not found" in out and "3 failed" in out, out[-3000:]
    assert_nothing_left(link)


@pytest.mark.parametrize("fault", ["worker killed", "link cut"])
def test_mid_decode_faults(gpu_host, fault, tmp_path):
    """A fault in the middle of decode-naive: that cell fails within the bound, the session
    goes on to the next cells, and the finished cells' results are in the JSON."""
    link, sshd = gpu_host
    out_json = tmp_path / "faults.json"
    proc = suite(sshd, "-v", "-k", "prefill-local or decode-naive or decode-sys", "--gap-steps", "400",
                 "--gap-prompt-len", "32", "--gap-rpc-timeout", "10", f"--benchmark-json={out_json}")
    chunks, started = [], threading.Event()

    def read():  # raw reads: pytest -v names a test before it runs, with no newline yet
        while chunk := os.read(proc.stdout.fileno(), 4096):
            chunks.append(chunk.decode(errors="replace"))
            if "test_cell[decode-naive]" in "".join(chunks[-2:]):
                started.set()
    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    assert started.wait(120), "decode-naive never started: " + "".join(chunks)[-2000:]
    time.sleep(1.5)  # some steps in
    t_fault = _inject(link, fault)
    try:
        proc.wait(timeout=240)
        elapsed = time.monotonic() - t_fault
    finally:
        if fault == "link cut":
            subprocess.run(["ip", "link", "set", link.client_iface, "up"])
    reader.join(5)
    out = "".join(chunks)
    report_failures(out)
    assert proc.returncode == 1, out[-3000:]
    # the short summary, not -v's line: torch's own C++ warning can land in the middle of that
    assert "FAILED benchmarks/test_cells.py::test_cell[decode-naive]" in out, out[-3000:]
    cells = {b["name"] for b in json.loads(out_json.read_text())["benchmarks"]}
    assert "test_cell[prefill-local]" in cells, "a finished cell's result was lost"
    print(f"{fault}: session ended {elapsed:.1f} s after the fault")
    assert elapsed < 3 * FAULT_BOUND_S, "the three cells after the fault must each fail in the bound"
    assert_nothing_left(link, deadline_s=20)


def _inject(link, fault) -> float:
    if fault == "worker killed":
        servers = [p for p in subprocess.run(["ip", "netns", "pids", link.netns], capture_output=True,
                                             text=True).stdout.split() if "rpc_server" in _cmdline(p)]
        assert servers, "no worker to kill"
        os.kill(int(servers[0]), signal.SIGKILL)
    else:
        subprocess.run(["ip", "link", "set", link.client_iface, "down"], check=True)
    return time.monotonic()


def test_the_local_loops_controls_run_only_on_the_gpu_hosts_kind_of_device():
    """Over ssh to a real GPU host from a CPU client, the local loop's controls would run on the
    client's CPU beside a worker on CUDA: they skip, saying why, instead (the local cells run on
    the GPU host: harness.compute.modes.HostLocalBackend)."""
    from fixtures.cells import local_elsewhere
    assert local_elsewhere("cuda", "cuda:0") is None and local_elsewhere("cpu", "cpu") is None
    why = local_elsewhere("cpu", "cuda:0")
    assert "on cpu" in why and "on cuda:0" in why and "not measured" in why
