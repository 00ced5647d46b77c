"""What the fast pcap reader (pcap.py) cannot say about a capture: TCP retransmissions, zero-window
events, duplicate ACKs and bytes per TCP flow (the RPC channel's lanes), read by Wireshark's
dissectors through pyshark.

Retransmitted bytes are counted from sequence numbers, not from Wireshark's retransmission flags:
payload whose sequence range was already seen in its direction was sent twice. Wireshark calls a
segment that goes back in sequence within one handshake RTT of the newest one "out-of-order", not a
retransmission; on a loaded host the loopback handshake takes milliseconds, and a capture there
held bytes sent twice that its flags did not count (docs/evidence.md).

    d = dissect("round.pcap", client_addr="10.0.0.1", gpu_addr="10.0.0.2")
    d.retransmission_share, d.flows[0].bytes_to_gpu, d.how

How it reads (docs/evidence.md has the rates measured on the CPU box):
- pyshark's packet objects (FileCapture, PDML, JSON or EK) are slow: nearly all of their time is
  pyshark parsing XML/JSON in Python, not tshark's dissection.
- tshark `-T fields` with only the fields asked for, streamed into this module, is an order of
  magnitude faster, tshark's own dissection being most of its cost. Same dissectors, same TCP
  analysis. So dissect() runs that, with tshark found and versioned through pyshark (its locator
  honours pyshark's config.ini); the packet-object path stays as the reference the tests compare it
  with (_rows_pyshark).
- A display filter per question (-Y tcp.analysis.retransmission, ...) costs a whole dissection each:
  one pass with every field is cheaper than four.
Captures larger than max_packets are sampled: the first max_packets packets (see DEFAULT_MAX_PACKETS).
"""
from __future__ import annotations

import bisect
import functools
import ipaddress
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

# Dissection costs CPU time in proportion to the packets read. Every cell of the CPU run's gpt2
# rounds (results/cpu/gpt2) but naive decode holds fewer packets than this and is read whole; naive
# decode, which moves the weights every step, holds several times more even in GSO super-segments,
# and its first packets, a few of its calls, are read in a fraction of the time the whole round
# would take (docs/evidence.md has the counts and times).
DEFAULT_MAX_PACKETS = 100_000

# tshark fields, in the order _Row takes them. tcp.analysis.* are flags: "1" when set, "" when not.
_FIELDS = (
    "frame.len", "ip.src", "ip.dst", "ipv6.src", "ipv6.dst",
    "tcp.stream", "tcp.srcport", "tcp.dstport", "tcp.seq", "tcp.len",
    "tcp.analysis.zero_window", "tcp.analysis.duplicate_ack",
)

TO_GPU, TO_CLIENT = 0, 1

_SETUP_HINT = "run ./setup.sh (it installs Debian's tshark, which brings capinfos)"


@dataclass(frozen=True)
class Flow:
    """One TCP connection between the client and the GPU host: one lane of the RPC channel."""
    stream: int  # tshark's tcp.stream index (order of first appearance in the dissected packets)
    client_port: int
    server_port: int  # the GPU host's side
    bytes_to_gpu: int  # on the wire (frame lengths, Ethernet headers included: like capinfos -d)
    bytes_to_client: int
    payload_to_gpu: int  # TCP payload (tcp.len), retransmitted bytes included
    payload_to_client: int
    packets: int  # both directions
    packets_to_gpu: int
    packets_to_client: int

    @property
    def bytes_total(self) -> int:
        return self.bytes_to_gpu + self.bytes_to_client


@dataclass(frozen=True)
class Dissection:
    packets_total: int  # records in the file
    packets_dissected: int  # all of them, or the first max_packets
    sampled: bool
    how: str  # "whole file (N packets)" or "first N of M packets"
    packets_other: int  # dissected but not TCP between the client and the GPU host: not counted below
    # below: TCP between the two hosts, both directions, in the dissected packets
    retransmissions: int  # segments carrying payload whose sequence numbers were seen before
    retransmitted_bytes: int  # that payload: bytes sent twice (or more) in their direction
    zero_window: int  # tcp.analysis.zero_window
    duplicate_acks: int  # tcp.analysis.duplicate_ack
    tcp_payload_bytes: int  # all TCP payload, retransmitted bytes included
    retransmission_share: float  # retransmitted_bytes / tcp_payload_bytes (0 when there is no payload)
    flows: tuple[Flow, ...]  # by bytes_total, largest first
    tshark: str  # tshark's version
    dissect_s: float  # wall time of dissect()


def dissect(pcap_path: str | Path, client_addr: str, gpu_addr: str,
            max_packets: int = DEFAULT_MAX_PACKETS, gpu_ports: Iterable[int] = ()) -> Dissection:
    """
    Dissect a capture of the client <-> GPU host link with tshark. Direction is by address (IPv4
    or IPv6); when both are one address (loopback), by port: a packet to one of gpu_ports goes to
    the GPU (gpu_ports is not used otherwise). Captures over max_packets records are sampled: only
    the first max_packets are dissected, and every figure, flows included, is the sample's.
    A truncated final record (tcpdump killed mid-write) is ignored, as pcap.read_pcap does.
    """
    t0 = time.perf_counter()
    path = Path(pcap_path)
    if max_packets < 1:
        raise ValueError(f"max_packets must be >= 1, not {max_packets}")
    sides = _Sides(client_addr, gpu_addr, frozenset(gpu_ports))
    total = count_packets(path)
    # a prefix, not every k-th packet: tshark's TCP analysis needs consecutive segments, and a
    # strided sample would look like loss (retransmissions, dup ACKs) to it. The price: the sample
    # is the round's start (in naive decode, its first calls).
    sampled = total > max_packets
    n = max_packets if sampled else total
    tally = _Tally()
    for row in _rows_fields(path, limit=n if sampled else None):
        tally.add(row, sides)
    how = f"first {n} of {total} packets" if sampled else f"whole file ({total} packets)"
    return tally.result(total, sampled, how, tshark_version(), time.perf_counter() - t0)


def tshark_version() -> str:
    """tshark's version, e.g. '4.0.17' (for machine_info)."""
    return _version_of(_tshark_path())  # _tshark_path: a clear error when it's missing


@functools.lru_cache(maxsize=None)
def _version_of(tshark_path: str) -> str:
    # `tshark -v` is slow (it loads every dissector): once per binary, not once per dissect()
    from pyshark.tshark.tshark import get_tshark_version
    return str(get_tshark_version(tshark_path))


def count_packets(path: str | Path) -> int:
    """Records in a capture file (capinfos: it walks record headers only, ~instant)."""
    exe = _tool("capinfos")
    # -T -r -c -M: one tab-separated line "path<TAB>count", exact; rc 1 with the count still
    # printed for a file cut short in the middle of a record
    out = subprocess.run([exe, "-T", "-r", "-c", "-M", str(path)], capture_output=True, text=True)
    fields = out.stdout.strip().rsplit("\t", 1)
    if out.returncode not in (0, 1) or len(fields) != 2 or not fields[1].isdigit():
        raise RuntimeError(f"capinfos could not read {path}: {_last_error(out.stderr)}")
    return int(fields[1])

# -----------------------------------------------------------------------------
# packets as rows, by two readers that must agree


@dataclass(frozen=True, slots=True)
class _Row:
    frame_len: int
    src: str  # IPv4 or IPv6 address as tshark prints it, "" when not IP
    dst: str
    stream: int  # -1 when not TCP
    sport: int
    dport: int
    seq: int  # tcp.seq, relative to the flow's first in that direction (tshark's default), mod 2**32
    tcp_len: int
    zero_window: bool
    duplicate_ack: bool


def _rows_fields(path: Path, limit: int | None = None) -> Iterator[_Row]:
    """The fast reader: tshark -T fields, streamed line by line (tshark and this parse overlap)."""
    cmd = [_tshark_path(), "-n", "-r", str(path), "-T", "fields", "-E", "occurrence=f",
           *(arg for f in _FIELDS for arg in ("-e", f))]
    if limit is not None:
        cmd += ["-c", str(limit)]  # tshark stops reading after `limit` records: no copy of the file
    # stderr to a file, not a pipe: one left unread while stdout streams could fill and stall tshark
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=err, text=True)
        try:
            for line in proc.stdout:
                yield _parse_line(line)
            proc.wait()
        finally:
            if proc.poll() is None:  # the caller stopped early or raised: don't leave tshark running
                proc.kill()
                proc.wait()
            proc.stdout.close()
        err.seek(0)
        stderr = err.read()
    # tshark exits 2 after printing every complete record of a file cut short mid-record
    if proc.returncode != 0 and not (proc.returncode == 2 and "cut short" in stderr):
        raise RuntimeError(f"tshark failed on {path} (rc={proc.returncode}): {_last_error(stderr)}")


def _parse_line(line: str) -> _Row:
    (frame_len, ip_src, ip_dst, ip6_src, ip6_dst, stream, sport, dport, seq, tcp_len,
     zero_window, dup_ack) = line.rstrip("\n").split("\t")
    is_tcp = stream != ""
    return _Row(int(frame_len), ip_src or ip6_src, ip_dst or ip6_dst,
                int(stream) if is_tcp else -1, int(sport or 0), int(dport or 0), int(seq or 0),
                int(tcp_len or 0), bool(zero_window), bool(dup_ack))


def _rows_pyshark(path: Path, limit: int | None = None) -> Iterator[_Row]:
    """The reference reader: pyshark's own packet objects (use_json, far slower than fields)."""
    import pyshark
    cap = pyshark.FileCapture(str(path), keep_packets=False, use_json=True)
    try:
        for i, pkt in enumerate(cap):
            if limit is not None and i >= limit:
                break
            yield _row_from_packet(pkt)
    finally:
        cap.close()


def _row_from_packet(pkt) -> _Row:
    ip = pkt.ip if hasattr(pkt, "ip") else pkt.ipv6 if hasattr(pkt, "ipv6") else None
    src, dst = (str(ip.src), str(ip.dst)) if ip is not None else ("", "")
    if not hasattr(pkt, "tcp"):
        return _Row(int(pkt.length), src, dst, -1, 0, 0, 0, 0, False, False)
    tcp = pkt.tcp
    # the analysis flags sit at different depths of the JSON tree (under an expert item or not)
    flags = _keys(tcp._all_fields.get("tcp.analysis", {}))
    return _Row(int(pkt.length), src, dst, int(tcp.stream), int(tcp.srcport), int(tcp.dstport),
                int(tcp.seq), int(tcp.len), "tcp.analysis.zero_window" in flags,
                "tcp.analysis.duplicate_ack" in flags)


def _keys(tree) -> set[str]:
    # every key at any depth; two expert items on one packet (a retransmission that also fills the
    # window) come as a list, pyshark's --no-duplicate-keys merging tshark's repeated "_ws.expert"
    if isinstance(tree, list):
        return set().union(*map(_keys, tree))
    if not isinstance(tree, dict):
        return set()
    return set(tree).union(*map(_keys, tree.values()))

# -----------------------------------------------------------------------------
# from rows to the figures


class _Sides:
    """Which way a packet goes between the client and the GPU host, or None for other traffic."""

    def __init__(self, client_addr: str, gpu_addr: str, gpu_ports: frozenset[int]):
        # tshark prints addresses in their canonical form; make ours match (e.g. IPv6 compression)
        self.client = str(ipaddress.ip_address(client_addr))
        self.gpu = str(ipaddress.ip_address(gpu_addr))
        self.by_port = self.client == self.gpu
        if self.by_port and not gpu_ports:
            raise ValueError(f"client_addr == gpu_addr ({client_addr}): pass gpu_ports to tell the "
                             "directions apart")
        self.gpu_ports = gpu_ports

    def direction(self, row: _Row) -> int | None:
        if row.stream < 0:
            return None
        if not self.by_port:
            if row.src == self.client and row.dst == self.gpu:
                return TO_GPU
            if row.src == self.gpu and row.dst == self.client:
                return TO_CLIENT
            return None
        if row.src != self.client or row.dst != self.client:
            return None
        if row.dport in self.gpu_ports:
            return TO_GPU
        if row.sport in self.gpu_ports:
            return TO_CLIENT
        return None


class _Coverage:
    """The sequence numbers one direction of one TCP flow has carried, as disjoint sorted ranges;
    add() says how many of a segment's bytes were carried before. Segments nearly always extend the
    last range, so the list stays as long as the holes that capture loss or reordering left."""

    def __init__(self):
        self.ranges: list[list[int]] = []  # [start, end) on an unwrapped sequence axis
        self.last_seq = 0  # the last segment's seq as tshark gave it (mod 2**32), and unwrapped
        self.last_abs = 0

    def add(self, seq: int, length: int) -> int:
        # unwrap: a 32-bit sequence number wraps after 4 GiB, which a lane of a naive decode can pass
        step = (seq - self.last_seq) % (1 << 32)
        start = self.last_abs + (step - (1 << 32) if step >= 1 << 31 else step)
        self.last_seq, self.last_abs = seq, start
        end = start + length
        ranges = self.ranges
        if not ranges or start >= ranges[-1][1]:  # new data past all of it: the common case
            if ranges and start == ranges[-1][1]:
                ranges[-1][1] = end
            else:
                ranges.append([start, end])
            return 0
        i = bisect.bisect_left(ranges, start, key=lambda r: r[1])  # first range reaching start
        j = i
        seen = 0
        while j < len(ranges) and ranges[j][0] <= end:  # the ranges this segment touches, merged
            seen += max(0, min(end, ranges[j][1]) - max(start, ranges[j][0]))
            j += 1
        if i < j:
            start, end = min(start, ranges[i][0]), max(end, ranges[j - 1][1])
        ranges[i:j] = [[start, end]]
        return seen


class _Tally:
    def __init__(self):
        self.packets = 0
        self.other = 0
        self.retransmissions = 0
        self.retransmitted_bytes = 0
        self.zero_window = 0
        self.duplicate_acks = 0
        self.payload = 0
        # stream -> [client_port, server_port, bytes to gpu, to client, payload to gpu, to client,
        #            packets, packets to gpu, to client]: Flow's fields after its stream
        self.flows: dict[int, list[int]] = {}
        self.coverage: dict[tuple[int, int], _Coverage] = {}  # (stream, direction) ->

    def add(self, row: _Row, sides: _Sides) -> None:
        self.packets += 1
        direction = sides.direction(row)
        if direction is None:
            self.other += 1
            return
        self.payload += row.tcp_len
        if row.tcp_len:
            seen = self.coverage.setdefault((row.stream, direction), _Coverage()).add(row.seq, row.tcp_len)
            self.retransmissions += seen > 0
            self.retransmitted_bytes += seen
        self.zero_window += row.zero_window
        self.duplicate_acks += row.duplicate_ack
        flow = self.flows.get(row.stream)
        if flow is None:
            ports = (row.sport, row.dport) if direction == TO_GPU else (row.dport, row.sport)
            flow = self.flows[row.stream] = [*ports, 0, 0, 0, 0, 0, 0, 0]
        flow[2 + direction] += row.frame_len
        flow[4 + direction] += row.tcp_len
        flow[6] += 1
        flow[7 + direction] += 1

    def result(self, total: int, sampled: bool, how: str, tshark: str, dissect_s: float) -> Dissection:
        flows = sorted((Flow(stream, *values) for stream, values in self.flows.items()),
                       key=lambda f: (-f.bytes_total, f.stream))
        return Dissection(
            packets_total=total, packets_dissected=self.packets, sampled=sampled, how=how,
            packets_other=self.other, retransmissions=self.retransmissions,
            retransmitted_bytes=self.retransmitted_bytes, zero_window=self.zero_window,
            duplicate_acks=self.duplicate_acks, tcp_payload_bytes=self.payload,
            retransmission_share=self.retransmitted_bytes / self.payload if self.payload else 0.0,
            flows=tuple(flows), tshark=tshark, dissect_s=dissect_s)

# -----------------------------------------------------------------------------
# the tools


def _tshark_path() -> str:
    # pyshark is imported here, not at the top: the GPU host imports harness.measure and has no
    # pyshark (it needs none: dissection runs on the client's capture)
    try:
        from pyshark.tshark.tshark import TSharkNotFoundException, get_process_path
    except ImportError:
        raise RuntimeError(f"pyshark not installed: {_SETUP_HINT}") from None
    try:
        return get_process_path()
    except TSharkNotFoundException:
        raise RuntimeError(f"tshark not found: {_SETUP_HINT}") from None


def _tool(name: str) -> str:
    exe = shutil.which(name)
    if exe is None:
        raise RuntimeError(f"{name} not found: {_SETUP_HINT}")
    return exe


def _last_error(stderr: str) -> str:
    # tshark run as root always warns first; the cause is on a later line
    lines = [ln.strip() for ln in stderr.splitlines() if ln.strip() and "could be dangerous" not in ln]
    return lines[-1] if lines else "(no stderr)"
