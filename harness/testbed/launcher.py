"""Start and stop the GPU host's `rpc_server.py` through a GpuHost (`ip netns exec NS` for the
embedded default, ssh for a real host). Over ssh the remote server's pid (from its ready line)
is what teardown signals: ending the local ssh client alone would leave it running."""
from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from harness.errors import UsageError
from harness.testbed.hosts import GpuHost
from harness.testbed.rpc import RpcConfig

REPO = Path(__file__).resolve().parents[2]  # harness/testbed/launcher.py -> the checkout
READY = "rpc_server: listening"


@dataclass
class ServerProcess:
    cfg: RpcConfig
    host: GpuHost = field(default_factory=GpuHost)
    device: str | None = None
    lines: list[str] = field(default_factory=list)
    proc: subprocess.Popen | None = None
    remote_pid: int | None = None
    clients: int | None = None     # None: the one client of testbed(); N: N client processes share it (harness.serve)

    def argv(self) -> list[str]:
        repo = self.host.repo_dir or str(REPO)
        argv = [self.host.python or sys.executable, "-u", "rpc_server.py", "--host", self.cfg.host,
                "--port", str(self.cfg.port), "--channel", self.cfg.channel, "--lifeline"]
        if self.device:
            argv += ["--device", self.device]
        if self.clients is not None:
            argv += ["--clients", str(self.clients)]
        return self.host.argv(argv, cwd=repo if self.host.ssh else None, tty=True)

    def start(self, timeout_s: float = 120.0) -> "ServerProcess":
        """Launch and wait for its ready line; on early exit raise with its own error line."""
        ready = threading.Event()
        # stdin is the server's lifeline (--lifeline): open while we live, closed by stop()
        self.proc = subprocess.Popen(self.argv(), cwd=REPO, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, start_new_session=True)
        threading.Thread(target=self._read, args=(ready,), daemon=True).start()
        deadline = time.monotonic() + timeout_s
        try:
            while not ready.wait(0.05):
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    self.stop()
                    raise UsageError(self._failure())
        except (KeyboardInterrupt, SystemExit):  # Ctrl-C/SIGTERM while it starts: the caller
            self.stop(timeout_s=1.0)             # has no handle on it yet, so stop it here
            raise
        return self

    def wait_for_store(self, timeout_s: float = 60.0) -> None:
        """Until the worker's rendezvous store accepts connections. torch's client side waits up
        to 30 minutes for a store that may never come (a worker that died after its ready line):
        fail here instead, in bounded time, with the worker's own last words."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise UsageError(self._failure())
            try:
                socket.create_connection((self.cfg.host, self.cfg.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        self.stop(timeout_s=2.0)
        raise UsageError(f"the GPU worker's rendezvous port {self.cfg.host}:{self.cfg.port} did not "
                         f"open in {timeout_s:.0f} s: {self._failure()}")

    def _read(self, ready: threading.Event) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip())
            if line.startswith(READY):
                self.remote_pid = int(line.split("pid")[-1])
                ready.set()

    def _failure(self) -> str:
        errors = [l for l in self.lines if "error" in l.lower()]
        last = (errors or self.lines or ["no output"])[-1]
        return f"the GPU worker did not start: {last.removeprefix('rpc_server: error: ')}"

    def stop(self, timeout_s: float = 10.0) -> int | None:
        """Wait for a clean exit (after the client's rpc shutdown), else TERM, then KILL, by pid."""
        if self.proc is None:
            return None
        if self.clients is not None and self.proc.stdin and not self.proc.stdin.closed:
            self.proc.stdin.close()  # a shared worker serves until its lifeline is cut
        for sig in (None, signal.SIGTERM, signal.SIGKILL):
            if sig is signal.SIGTERM and self.proc.stdin and not self.proc.stdin.closed:
                self.proc.stdin.close()  # cut the lifeline first: the server exits by itself
            if sig is not None and self.host.ssh and self.remote_pid:
                self.host.kill(self.remote_pid, sig.name.removeprefix("SIG"))
            if sig is not None and self.proc.poll() is None:
                os.killpg(self.proc.pid, sig)
            try:
                return self.proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                continue
        return self.proc.poll()

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop(timeout_s=2.0 if exc[0] else 10.0)
