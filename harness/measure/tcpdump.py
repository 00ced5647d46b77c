"""tcpdump around a measured region: starts it, waits until it is really listening, stops it with
SIGINT and reads its own packet/drop counters from stderr. The pcap it writes is read by
harness.measure.pcap."""
from __future__ import annotations

import atexit
import re
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class CaptureStats:
    packets_captured: int  # written to the file by tcpdump
    packets_received: int  # accepted by the kernel filter (meaning varies by OS)
    packets_dropped: int  # dropped by the kernel because the ring buffer was full
    pcap_path: Path


_COUNTER_RES = {
    "packets_captured": re.compile(r"(\d+) packets? captured"),
    "packets_received": re.compile(r"(\d+) packets? received by filter"),
    "packets_dropped": re.compile(r"(\d+) packets? dropped by kernel"),
}

# error text in tcpdump's stderr -> what to do about it
_FIX_HINTS = (
    ("not found", "tcpdump not found: apt-get install tcpdump"),
    ("permission", "run as root or grant CAP_NET_RAW (setcap cap_net_raw,cap_net_admin=eip $(which tcpdump))"),
    ("not permitted", "run as root or grant CAP_NET_RAW (setcap cap_net_raw,cap_net_admin=eip $(which tcpdump))"),
    ("no such device", "no such interface: check the name with `ip link` (and the netns prefix)"),
    ("doesn't exist", "no such interface: check the name with `ip link` (and the netns prefix)"),
    ("syntax error", "bad bpf_filter: check it with `tcpdump -d FILTER`"),
    ("network namespace", "bad netns prefix: check the name with `ip netns list`"),
    ("couldn't find user", "no such user for -Z: this harness passes -Z root, run as root"),
)

_LIVE: set[Capture] = set()  # started and not yet stopped, for the atexit safety net


def _fix_hint(text: str) -> str:
    low = text.lower()
    for needle, hint in _FIX_HINTS:
        if needle in low:
            return hint
    return "check the tcpdump command line above"


def header_snaplen(addr: str) -> int:
    """The bytes of a TCP packet's headers: Ethernet 14 + IPv4 20 (IPv6 40) + TCP 32 with the
    timestamps Linux sends by default. Cut there, nearly every record of a capture has this one
    length (a pure ACK is exactly this long, anything longer is cut to it), which lets the reader
    guess runs of records instead of chasing them one by one (harness.measure.pcap): an llama-1b
    naive decode round is millions of records. Byte counts come from the headers' lengths, so
    nothing is lost; TCP options past 32 bytes (SACK blocks) are."""
    return 14 + (40 if ":" in addr else 20) + 32


class Capture:
    """
    tcpdump around a measured region:
        with Capture("lo", path, bpf_filter=f"tcp port {port}") as cap:
            run_transfer()
        stats = cap.stats
    or start()/stop() explicitly. tcpdump is never left running.
    """

    def __init__(self, interface: str, pcap_path: Path, snaplen: int = 128, buffer_kib: int = 16384,
                 bpf_filter: str = "tcp", prefix: list[str] | None = None, immediate: bool = True):
        self.interface = interface
        self.pcap_path = Path(pcap_path)
        # small snaplen + big buffer: with the default snaplen tcpdump dropped packets on a veth
        # (docs/evidence.md)
        self.snaplen = snaplen
        self.buffer_kib = buffer_kib
        self.bpf_filter = bpf_filter
        self.prefix = list(prefix or [])  # e.g. ["ip", "netns", "exec", "ns"]
        # without immediate mode libpcap uses TPACKET_V3, which hands packets over in blocks up
        # to 1 s late, and tcpdump drops a partly filled block on SIGINT: on lo a small transfer
        # was lost whole and a large one lost its tail (docs/evidence.md)
        self.immediate = immediate
        self.stats: CaptureStats | None = None
        self._proc: subprocess.Popen | None = None
        self._stderr_lines: list[str] = []
        self._listening = threading.Event()
        self._reader: threading.Thread | None = None

    def command(self) -> list[str]:
        # -n: no DNS lookups; -U: flush each packet so the file is complete when we stop;
        # -Z root: stay root so the file stays writable (no `tcpdump` user on some machines)
        return [*self.prefix, "tcpdump", "-i", self.interface, "-s", str(self.snaplen),
                "-B", str(self.buffer_kib), "-n", "-U", "-Z", "root", "-w", str(self.pcap_path),
                *(["--immediate-mode"] if self.immediate else []),
                *([self.bpf_filter] if self.bpf_filter else [])]

    def start(self, timeout_s: float = 10) -> Capture:
        if self._proc is not None:
            raise RuntimeError("capture already started")
        if not self.prefix and shutil.which("tcpdump") is None:
            raise RuntimeError("tcpdump not found: apt-get install tcpdump")
        self.pcap_path.parent.mkdir(parents=True, exist_ok=True)
        cmd = self.command()
        try:
            self._proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.PIPE, text=True, errors="replace")
        except FileNotFoundError as e:
            raise RuntimeError(f"{e.filename} not found: apt-get install tcpdump") from None
        except PermissionError as e:
            raise RuntimeError(f"{e}: run as root or grant CAP_NET_RAW") from None
        _LIVE.add(self)
        self._reader = threading.Thread(target=self._read_stderr, daemon=True)
        self._reader.start()
        # "listening on" is printed after the socket is bound and the filter attached, so from
        # here on no packet of the measured region is missed
        deadline = time.monotonic() + timeout_s
        while not self._listening.wait(0.05):
            exited = self._proc.poll() is not None
            if exited or time.monotonic() > deadline:
                self._kill()
                self._reader.join(1)
                err = self._error_line()
                why = f"exited (rc={self._proc.returncode})" if exited else f"not listening after {timeout_s} s"
                raise RuntimeError(f"tcpdump {why}: {err} -> {_fix_hint(err)} (cmd: {' '.join(cmd)})")
        return self

    def stop(self, settle_s: float = 3.0) -> CaptureStats:
        """Stop tcpdump with SIGINT and return its counters. Idempotent."""
        if self.stats is not None:
            return self.stats
        if self._proc is None:
            raise RuntimeError("capture not started")
        try:
            # tcpdump stops reading on SIGINT even if packets are still queued in its ring buffer
            # (they'd be "received" but not "captured"), so wait until the file stops growing;
            # without immediate mode that must outlast libpcap's 1 s block timeout
            self._wait_file_settled(settle_s, quiet_s=0.1 if self.immediate else 1.2)
            if self._proc.poll() is None:
                self._proc.send_signal(signal.SIGINT)  # our own pid only
            self._proc.wait(5)
        except subprocess.TimeoutExpired:
            pass
        finally:
            self._kill()  # no-op if it exited on SIGINT
        self._reader.join(5)
        text = "".join(self._stderr_lines)
        counters = {}
        for name, pattern in _COUNTER_RES.items():
            m = pattern.search(text)
            if m is None:
                raise RuntimeError(f"tcpdump (rc={self._proc.returncode}) printed no '{name}' counter: "
                                   f"{self._error_line()}")
            counters[name] = int(m.group(1))
        self.stats = CaptureStats(**counters, pcap_path=self.pcap_path)
        return self.stats

    def __enter__(self) -> Capture:
        return self.start()

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is None:
            self.stop()
        else:
            self._kill()  # don't mask the original exception with a stats parsing error

    # internals

    def _read_stderr(self) -> None:
        # drained in a thread so tcpdump can never block on a full stderr pipe
        for line in self._proc.stderr:
            self._stderr_lines.append(line)
            if "listening on" in line:
                self._listening.set()

    def _error_line(self) -> str:
        lines = [ln.strip() for ln in self._stderr_lines if ln.strip()]
        errors = [ln for ln in lines if "listening on" not in ln and "warning" not in ln.lower()]
        # tcpdump's own "tcpdump: ..." line names the cause; libpcap may add a vaguer one after it
        own = [ln for ln in errors if ln.startswith("tcpdump:")]
        return (own or errors or lines or ["(no stderr)"])[-1]

    def _wait_file_settled(self, max_s: float, quiet_s: float) -> None:
        deadline = time.monotonic() + max_s
        size = -1
        while time.monotonic() < deadline and self._proc.poll() is None:
            new_size = self.pcap_path.stat().st_size if self.pcap_path.exists() else 0
            if new_size == size:
                return
            size = new_size
            time.sleep(quiet_s)

    def _kill(self) -> None:
        proc = self._proc
        if proc is not None and proc.poll() is None:
            proc.kill()
            proc.wait()
        _LIVE.discard(self)


@atexit.register
def _kill_live_captures() -> None:
    # last resort if a caller forgot stop(): a stray tcpdump would keep filling the disk
    for cap in list(_LIVE):
        cap._kill()
