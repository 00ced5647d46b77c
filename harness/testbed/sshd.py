"""A throwaway OpenSSH server inside the emulated GPU host's namespace, so that the suite's
SSH path runs for real on one machine (CI included): its own host key, one client key,
key-only root login, listening on the namespace's link address only."""
from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from harness.testbed.link import Link

SSHD = shutil.which("sshd") or "/usr/sbin/sshd"


def keygen(path: Path) -> Path:
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], check=True)
    return path


@dataclass
class SshServer:
    link: Link
    port: int = 2222
    workdir: Path | None = None
    proc: subprocess.Popen | None = None

    def start(self, timeout_s: float = 10.0) -> "SshServer":
        self.workdir = Path(self.workdir or tempfile.mkdtemp(prefix="sgap-sshd-"))
        host_key = keygen(self.workdir / "host_key")
        self.client_key = keygen(self.workdir / "client_key")
        (self.workdir / "authorized_keys").write_text(Path(f"{self.client_key}.pub").read_text())
        self.known_hosts = self.workdir / "known_hosts"  # empty: the test accepts the key once
        config = self.workdir / "sshd_config"
        config.write_text("\n".join([
            f"ListenAddress {self.link.gpu_addr}:{self.port}", f"HostKey {host_key}",
            f"AuthorizedKeysFile {self.workdir}/authorized_keys", f"PidFile {self.workdir}/sshd.pid",
            "PermitRootLogin prohibit-password", "PasswordAuthentication no",
            "KbdInteractiveAuthentication no", "UsePAM no", "StrictModes no",
            # notice a vanished client within seconds, so its session (and our worker's
            # lifeline) ends; on real hosts this is the GPU host's sshd_config to set
            "ClientAliveInterval 2", "ClientAliveCountMax 3", ""]))
        Path("/run/sshd").mkdir(exist_ok=True)  # privilege separation directory sshd insists on
        self.proc = subprocess.Popen(self.link.host.argv([SSHD, "-D", "-e", "-f", str(config)]),
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self._wait_listening(timeout_s)
        return self

    def _wait_listening(self, timeout_s: float) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"sshd exited: {self.proc.stderr.read().strip()}")
            try:
                socket.create_connection((self.link.gpu_addr, self.port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"sshd not listening on {self.link.gpu_addr}:{self.port} after {timeout_s} s")

    @property
    def target(self) -> str:
        return f"root@{self.link.gpu_addr}:{self.port}"

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc):
        self.stop()
