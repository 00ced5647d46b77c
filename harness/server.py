"""Start and stop the GPU host's `rpc_server.py` as a child process, behind a command prefix
(`ip netns exec NS` for the embedded default, an ssh command for a real host)."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from harness.errors import UsageError
from harness.rpc import RpcConfig

REPO = Path(__file__).resolve().parent.parent
READY = "rpc_server: listening"


@dataclass
class ServerProcess:
    cfg: RpcConfig
    prefix: list[str] = field(default_factory=list)
    device: str | None = None
    argv_tail: list[str] = field(default_factory=list)
    lines: list[str] = field(default_factory=list)
    proc: subprocess.Popen | None = None

    def argv(self) -> list[str]:
        argv = [sys.executable, "-u", str(REPO / "rpc_server.py"), "--host", self.cfg.host,
                "--port", str(self.cfg.port), "--channel", self.cfg.channel]
        if self.device:
            argv += ["--device", self.device]
        return self.prefix + argv + self.argv_tail

    def start(self, timeout_s: float = 120.0) -> "ServerProcess":
        """Launch and wait for its ready line; on early exit raise with its own error line."""
        ready = threading.Event()
        self.proc = subprocess.Popen(self.argv(), cwd=REPO, stdout=subprocess.PIPE,
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

    def _read(self, ready: threading.Event) -> None:
        for line in self.proc.stdout:
            self.lines.append(line.rstrip())
            if line.startswith(READY):
                ready.set()

    def _failure(self) -> str:
        errors = [l for l in self.lines if "error" in l.lower()]
        last = (errors or self.lines or ["no output"])[-1]
        return f"the GPU worker did not start: {last.removeprefix('rpc_server: error: ')}"

    def stop(self, timeout_s: float = 10.0) -> int | None:
        """Wait for a clean exit (after the client's rpc shutdown), else TERM, then KILL, by pid."""
        if self.proc is None:
            return None
        for sig in (None, signal.SIGTERM, signal.SIGKILL):
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
