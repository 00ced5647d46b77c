"""
Packet capture for the network benchmarks: run tcpdump around a measured
region, then count the bytes on the wire per direction from its pcap file.

Two halves:
- Capture: starts tcpdump, waits until it is really listening, stops it with
  SIGINT and reads its own packet/drop counters from stderr.
- read_pcap: a small, fast reader of classic pcap (what `tcpdump -w` writes)
  that sums the packets' original lengths per direction.
"""

from __future__ import annotations

import atexit
import ipaddress
import re
import shutil
import signal
import struct
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path

# -----------------------------------------------------------------------------
# pcap reading

# link types we can find the IP header in (LINKTYPE_* numbers as stored in pcap)
LINKTYPE_NULL = 0  # BSD loopback: 4-byte address family in the writer's byte order
LINKTYPE_EN10MB = 1  # ethernet; note tcpdump on Linux `lo` writes this too
LINKTYPE_RAW = 101  # bare IPv4/IPv6
LINKTYPE_LOOP = 108  # OpenBSD loopback: like NULL but family in network order
LINKTYPE_LINUX_SLL = 113  # `tcpdump -i any` (libpcap < 1.10 default)
LINKTYPE_LINUX_SLL2 = 276  # `tcpdump -i any` (libpcap >= 1.10 default)

ETHERTYPE_IPV4 = 0x0800
ETHERTYPE_IPV6 = 0x86DD
ETHERTYPE_VLANS = (0x8100, 0x88A8, 0x9100)  # 802.1Q, 802.1ad (QinQ), old QinQ

IPPROTO_TCP = 6
IPPROTO_UDP = 17

# packet directions, used as indices into the byte counters
A_TO_B, B_TO_A, OTHER, BY_PORT = 0, 1, 2, 3

PCAPNG_MAGIC = 0x0A0D0D0A
PCAP_MAGICS = {  # magic as read little-endian -> (struct byte order, nanosecond timestamps)
    0xA1B2C3D4: ("<", False),
    0xD4C3B2A1: (">", False),
    0xA1B23C4D: ("<", True),
    0x4D3CB2A1: (">", True),
}


@dataclass(frozen=True)
class PcapTotals:
    packets: int
    bytes_total: int  # sum of original (on-the-wire) lengths, like `capinfos -d`
    bytes_a_to_b: int
    bytes_b_to_a: int
    bytes_other: int  # non-IP (ARP, ...), other hosts, unparseable
    read_s: float  # time spent reading + walking the file


def _check_header(buf: bytes, path: Path) -> tuple[str, int]:
    """Validate the 24-byte global header; return (byte order, link type)."""
    if len(buf) >= 4 and struct.unpack_from("<I", buf)[0] == PCAPNG_MAGIC:
        raise ValueError(f"{path}: is pcapng, not classic pcap; capture with tcpdump -w, not pcapng "
                         f"(or convert: editcap -F pcap IN OUT)")
    if len(buf) < 24:
        raise ValueError(f"{path}: not a pcap file (only {len(buf)} bytes, need a 24-byte header)")
    magic = struct.unpack_from("<I", buf)[0]
    if magic not in PCAP_MAGICS:
        raise ValueError(f"{path}: not a pcap file (magic 0x{magic:08x}); capture with tcpdump -w")
    endian, _nanosecond = PCAP_MAGICS[magic]  # timestamps are unused, only the format matters
    # the upper bits of the link-type field may carry FCS info; the type is the low 16
    linktype = struct.unpack_from(endian + "I", buf, 20)[0] & 0xFFFF
    known = (LINKTYPE_NULL, LINKTYPE_EN10MB, LINKTYPE_RAW, LINKTYPE_LOOP,
             LINKTYPE_LINUX_SLL, LINKTYPE_LINUX_SLL2)
    if linktype not in known:
        raise ValueError(f"{path}: unsupported pcap link type {linktype} (know {known})")
    return endian, linktype


# where the IP header starts per link type: (offset of a 2-byte ethertype or -1, offset of IP).
# RAW/NULL/LOOP have no ethertype we can trust (NULL's family is in the *writer's* byte order and
# AF_INET6 differs by OS), so the IP version nibble decides there.
_LINK_LAYOUT = {
    LINKTYPE_EN10MB: (12, 14),
    LINKTYPE_LINUX_SLL: (14, 16),
    LINKTYPE_LINUX_SLL2: (0, 20),
    LINKTYPE_RAW: (-1, 0),
    LINKTYPE_NULL: (-1, 4),
    LINKTYPE_LOOP: (-1, 4),
}
_ETHERTYPE_VERSION = {struct.pack(">H", ETHERTYPE_IPV4): 4, struct.pack(">H", ETHERTYPE_IPV6): 6}
_VLAN_TAGS = {struct.pack(">H", t) for t in ETHERTYPE_VLANS}
_L4_WITH_PORTS = (IPPROTO_TCP, IPPROTO_UDP)


def _address_maps(addr_a: str, addr_b: str) -> tuple[dict[bytes, int], dict[bytes, int]]:
    """Map (src+dst packed address bytes, as laid out in the IP header) -> direction, v4 and v6."""
    a = ipaddress.ip_address(addr_a).packed
    b = ipaddress.ip_address(addr_b).packed
    table = {a + b: A_TO_B, b + a: B_TO_A} if a != b else {a + a: BY_PORT}
    v4 = {k: d for k, d in table.items() if len(k) == 8}
    v6 = {k: d for k, d in table.items() if len(k) == 32}
    return v4, v6


def _sum_by_direction(buf: bytes, endian: str, linktype: int, v4_dir: dict[bytes, int],
                      v6_dir: dict[bytes, int], port_b: int | None) -> tuple[int, list[int]]:
    """Walk the records after the global header; return (packets, bytes per direction)."""
    # one flat loop with locals only: function calls per packet would halve the speed
    record = struct.Struct(endian + "IIII").unpack_from  # ts_sec, ts_frac, incl_len, orig_len
    ports = struct.Struct(">HH").unpack_from
    et_off, l3_off = _LINK_LAYOUT[linktype]
    et_version, vlan_tags, l4_with_ports = _ETHERTYPE_VERSION, _VLAN_TAGS, _L4_WITH_PORTS
    counts = [0, 0, 0]  # indexed by A_TO_B / B_TO_A / OTHER
    packets = 0
    n = len(buf)
    off = 24
    while off + 16 <= n:
        _, _, incl_len, orig_len = record(buf, off)
        pos = off + 16
        end = pos + incl_len
        if end > n:
            break  # truncated final record (tcpdump killed mid-write): count it in nothing
        off = end
        packets += 1
        l3 = pos + l3_off
        # every slice below stays inside this record once an IPv4-sized header fits
        if l3 + 20 > end:
            counts[OTHER] += orig_len
            continue
        if et_off >= 0:
            ethertype = buf[pos + et_off:pos + et_off + 2]
            while ethertype in vlan_tags and l3 + 24 <= end:  # a VLAN tag inserts 4 bytes
                ethertype = buf[l3 + 2:l3 + 4]
                l3 += 4
            version = et_version.get(ethertype, 0)
        else:
            version = buf[l3] >> 4
        direction = OTHER
        if version == 4:
            direction = v4_dir.get(buf[l3 + 12:l3 + 20], OTHER)
            if direction == BY_PORT:
                direction = OTHER
                l4 = l3 + (buf[l3] & 0x0F) * 4
                # only the first fragment carries the ports
                first_fragment = not (buf[l3 + 6] & 0x1F or buf[l3 + 7])
                if buf[l3 + 9] in l4_with_ports and first_fragment and l4 + 4 <= end:
                    sport, dport = ports(buf, l4)
                    direction = A_TO_B if dport == port_b else B_TO_A if sport == port_b else OTHER
        elif version == 6 and l3 + 40 <= end:
            direction = v6_dir.get(buf[l3 + 8:l3 + 40], OTHER)
            if direction == BY_PORT:
                direction = OTHER
                # extension headers are not walked: a next header other than TCP/UDP counts other
                if buf[l3 + 6] in l4_with_ports and l3 + 44 <= end:
                    sport, dport = ports(buf, l3 + 40)
                    direction = A_TO_B if dport == port_b else B_TO_A if sport == port_b else OTHER
        counts[direction] += orig_len
    return packets, counts


def read_pcap(path: str | Path, addr_a: str, addr_b: str, port_b: int | None = None) -> PcapTotals:
    """
    Sum original packet lengths of a classic pcap file per direction between addr_a and addr_b.
    When addr_a == addr_b (e.g. both 127.0.0.1), direction is decided by port instead: a TCP/UDP
    packet to port_b counts a_to_b, one from port_b counts b_to_a. port_b is ignored otherwise.
    A truncated final record (tcpdump killed mid-write) is ignored.
    """
    path = Path(path)
    if addr_a == addr_b and port_b is None:
        raise ValueError(f"addr_a == addr_b ({addr_a}): pass port_b to tell the directions apart")
    v4_dir, v6_dir = _address_maps(addr_a, addr_b)
    t0 = time.perf_counter()
    with open(path, "rb") as f:
        buf = f.read()  # one read: captures are snaplen-truncated, so even 1M packets is ~150 MB
    endian, linktype = _check_header(buf, path)
    packets, counts = _sum_by_direction(buf, endian, linktype, v4_dir, v6_dir, port_b)
    read_s = time.perf_counter() - t0
    return PcapTotals(packets=packets, bytes_total=sum(counts), bytes_a_to_b=counts[A_TO_B],
                      bytes_b_to_a=counts[B_TO_A], bytes_other=counts[OTHER], read_s=read_s)

# -----------------------------------------------------------------------------
# tcpdump process


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
        # small snaplen + big buffer: with the default snaplen tcpdump dropped ~20% on a veth
        self.snaplen = snaplen
        self.buffer_kib = buffer_kib
        self.bpf_filter = bpf_filter
        self.prefix = list(prefix or [])  # e.g. ["ip", "netns", "exec", "ns"]
        # without immediate mode libpcap uses TPACKET_V3, which hands packets over in blocks up
        # to 1 s late, and tcpdump drops a partly filled block on SIGINT: measured on lo, a 20 MB
        # transfer captured 0 of 370 packets, 1 GB lost the last 262 of 16298
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
