"""Running programs on the GPU host: inside the emulated host's namespace, or on a real host
over SSH (the OpenSSH client, so ~/.ssh/config, keys and agents work as users expect).

Every argument that reaches a remote shell goes through shlex.quote. Host keys are checked as
ssh's own configuration says; `accept_new` loosens that to StrictHostKeyChecking=accept-new,
never further. A target may be a Host alias of the ssh configuration: `SshTarget.effective()`
asks ssh itself (`ssh -G`) which host name, port and user it stands for.
"""
from __future__ import annotations

import re
import shlex
import subprocess
from dataclasses import dataclass, field, replace

from harness.errors import UsageError

TARGET_RE = re.compile(r"^(?:(?P<user>[A-Za-z0-9._-]+)@)?(?P<host>[A-Za-z0-9._-]+|\[[0-9a-fA-F:]+\])(?::(?P<port>\d+))?$")


@dataclass(frozen=True)
class SshTarget:
    host: str
    user: str | None = None
    port: int | None = None
    identity: str | None = None
    known_hosts: str | None = None
    accept_new: bool = False
    connect_timeout_s: int = 10
    extra: tuple = field(default=())
    config: str | None = None       # an ssh_config file (ssh -F); None: ssh's own (~/.ssh/config)
    hostname: str | None = None     # the name ssh connects to (a Host alias's HostName), once
                                    # effective() asked ssh; None: not asked

    @classmethod
    def parse(cls, text: str, **kw) -> "SshTarget":
        m = TARGET_RE.match(text or "")
        if not m:
            raise UsageError(f"--gap-gpu-host {text!r}: expected [user@]host[:port], e.g. root@gpu1:22")
        port = int(m.group("port")) if m.group("port") else None
        return cls(m.group("host").strip("[]"), m.group("user"), port, **kw)

    @property
    def destination(self) -> str:
        return f"{self.user}@{self.host}" if self.user else self.host

    def ssh_argv(self, tty: bool = False) -> list[str]:
        """The ssh client's argv up to and including the destination. tty: a remote terminal,
        so that the remote program gets SIGHUP when the session ends however it ends (a killed
        client, a cut link): no stray worker or dmon on the GPU host."""
        argv = ["ssh", *(["-F", self.config] if self.config else []), *(["-tt"] if tty else []),
                "-o", "BatchMode=yes", "-o", f"ConnectTimeout={self.connect_timeout_s}",
                "-o", "ServerAliveInterval=5", "-o", "ServerAliveCountMax=3"]
        if self.accept_new:
            argv += ["-o", "StrictHostKeyChecking=accept-new"]
        if self.known_hosts:
            argv += ["-o", f"UserKnownHostsFile={self.known_hosts}"]
        if self.identity:
            argv += ["-i", self.identity, "-o", "IdentitiesOnly=yes"]
        if self.port:
            argv += ["-p", str(self.port)]
        return argv + list(self.extra) + [self.destination]

    def effective(self, timeout_s: float = 10) -> "SshTarget":
        """This target as ssh itself reads it: `ssh -G` with the very options the suite connects
        with, so a Host alias's HostName, Port and User (and Match blocks) apply as they do for
        `ssh`. Returns a copy with hostname, port and user filled in; the destination stays the
        name given, so every other setting of the alias (keys, ProxyJump) still applies."""
        argv = self.ssh_argv()
        argv.insert(1, "-G")  # print the configuration for this destination; connect nowhere
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=timeout_s)
        except FileNotFoundError:
            raise UsageError("ssh not found: install the OpenSSH client (./setup.sh)") from None
        except subprocess.TimeoutExpired:
            raise UsageError(f"`ssh -G {self.destination}` took over {timeout_s:g} s: check the ssh "
                             "configuration (a slow Match exec?)") from None
        if out.returncode != 0:
            err = (out.stderr.strip().splitlines() or ["no message"])[-1]
            raise UsageError(f"ssh cannot read its configuration for {self.destination}: {err}")
        conf: dict[str, str] = {}
        for line in out.stdout.splitlines():
            key, _, value = line.strip().partition(" ")
            conf.setdefault(key.lower(), value.strip())
        try:
            port = int(conf["port"]) if conf.get("port") else self.port
        except ValueError:
            raise UsageError(f"ssh gives port {conf['port']!r} for {self.destination}: check the "
                             "ssh configuration") from None
        return replace(self, hostname=conf.get("hostname") or self.host, port=port,
                       user=conf.get("user") or self.user)


@dataclass(frozen=True)
class GpuHost:
    """Where GPU-host programs run, and with which python and project folder."""
    netns: str | None = None
    ssh: SshTarget | None = None
    python: str | None = None       # None: this process's interpreter (same machine)
    repo_dir: str | None = None     # None: this checkout (same machine)

    def argv(self, argv: list[str], cwd: str | None = None, tty: bool = False) -> list[str]:
        """Local argv that runs argv on the GPU host (in cwd, if given); tty for long-lived ones."""
        if self.ssh:
            remote = shlex.join(argv)
            if cwd:
                remote = f"cd {shlex.quote(cwd)} && exec {remote}"
            return self.ssh.ssh_argv(tty) + [remote]
        if self.netns:
            return ["ip", "netns", "exec", self.netns, *argv]
        return list(argv)

    def effective(self) -> "GpuHost":
        """With the ssh target as ssh reads it (SshTarget.effective); unchanged without ssh."""
        return replace(self, ssh=self.ssh.effective()) if self.ssh else self

    def kill(self, pid: int, sig: str = "TERM") -> None:
        """Signal a process on the GPU host by its (remote) pid; best effort (the host may be
        unreachable: then the process's lifeline, its ssh session, ends it)."""
        try:
            subprocess.run(self.argv(["kill", f"-{sig}", str(pid)]), capture_output=True, timeout=15)
        except (OSError, subprocess.TimeoutExpired):
            pass

    def check(self, timeout_s: float = 20) -> None:
        """Reach the host and find the project there; a one-line error names what failed."""
        if not self.ssh:
            return
        probe = self.argv(["test", "-f", "rpc_server.py"], cwd=self.repo_dir)
        out = subprocess.run(probe, capture_output=True, text=True, timeout=timeout_s)
        if out.returncode == 0:
            return
        err = (out.stderr.strip().splitlines() or ["no message"])[-1]
        if out.returncode == 255:
            raise UsageError(f"ssh to {self.ssh.destination} failed: {err} (check the host, "
                             "--gap-ssh-identity and known_hosts)")
        raise UsageError(f"the project is not at {self.repo_dir!r} on {self.ssh.destination} "
                         f"({err or 'rpc_server.py missing'}): copy it there or pass --gap-remote-dir")
