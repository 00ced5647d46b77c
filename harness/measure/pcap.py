"""
Packet capture for the network benchmarks: run tcpdump around a measured
region, then count the bytes on the wire per direction from its pcap file.

Two halves:
- Capture: starts tcpdump, waits until it is really listening, stops it with
  SIGINT and reads its own packet/drop counters from stderr.
- read_pcap: a fast reader of classic pcap (what `tcpdump -w` writes) that sums
  the packets' original lengths per direction, and optionally returns per-packet
  arrays (time, direction, wire length, TCP/UDP payload length).
"""

from __future__ import annotations

import functools
import ipaddress
import mmap
import os
import struct
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np

# -----------------------------------------------------------------------------
# pcap reading
#
# A round's capture holds hundreds of thousands of records, and a pure-Python walk of them
# (`_sum_by_direction`, kept as the reference) pays the interpreter for each one
# (scripts/diagnose/bench_pcap.py; docs/evidence.md). So read_pcap only chases the record offsets in
# Python and does the rest with numpy on the offsets; records it can't decide that way (VLAN
# tags, IPv6, IP options, short or non-IP records) go one by one through `_classify_record`,
# which follows the reference's rules.

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
class PcapPackets:
    """One entry per complete record, in file order."""
    ts_s: np.ndarray  # float64, capture time in s since the epoch (capturing host's clock; ~0.2 us steps)
    direction: np.ndarray  # int8: A_TO_B, B_TO_A or OTHER
    orig_len: np.ndarray  # int64, bytes on the wire
    # int64, TCP/UDP payload bytes from the IP and TCP headers (not snaplen-cut), 0 for a pure ACK;
    # -1 where unknown: not TCP/UDP, a non-first fragment, IPv6 extension headers, header cut off
    payload_len: np.ndarray


@dataclass(frozen=True)
class PcapTotals:
    packets: int
    bytes_total: int  # sum of original (on-the-wire) lengths, like `capinfos -d`
    bytes_a_to_b: int
    bytes_b_to_a: int
    bytes_other: int  # non-IP (ARP, ...), other hosts, unparseable
    read_s: float  # time spent reading + walking the file (and building per_packet)
    per_packet: PcapPackets | None = None  # only with read_pcap(..., per_packet=True)


def _check_header(buf: bytes, path: Path) -> tuple[str, bool, int]:
    """Validate the 24-byte global header; return (byte order, nanosecond timestamps, link type)."""
    if len(buf) >= 4 and struct.unpack_from("<I", buf)[0] == PCAPNG_MAGIC:
        raise ValueError(f"{path}: is pcapng, not classic pcap; capture with tcpdump -w, not pcapng "
                         f"(or convert: editcap -F pcap IN OUT)")
    if len(buf) < 24:
        raise ValueError(f"{path}: not a pcap file (only {len(buf)} bytes, need a 24-byte header)")
    magic = struct.unpack_from("<I", buf)[0]
    if magic not in PCAP_MAGICS:
        raise ValueError(f"{path}: not a pcap file (magic 0x{magic:08x}); capture with tcpdump -w")
    endian, nanosecond = PCAP_MAGICS[magic]
    # the upper bits of the link-type field may carry FCS info; the type is the low 16
    linktype = struct.unpack_from(endian + "I", buf, 20)[0] & 0xFFFF
    known = (LINKTYPE_NULL, LINKTYPE_EN10MB, LINKTYPE_RAW, LINKTYPE_LOOP,
             LINKTYPE_LINUX_SLL, LINKTYPE_LINUX_SLL2)
    if linktype not in known:
        raise ValueError(f"{path}: unsupported pcap link type {linktype} (know {known})")
    return endian, nanosecond, linktype


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
_PORTS = struct.Struct(">HH").unpack_from


@functools.lru_cache(maxsize=16)
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
    """
    Walk the records one by one after the global header; return (packets, bytes per direction).
    The reference for read_pcap's vectorized path (tests and scripts/diagnose/bench_pcap.py check
    one against the other); it shares only _classify_record, the path read_pcap leaves odd records
    to.
    """
    record = struct.Struct(endian + "IIII").unpack_from  # ts_sec, ts_frac, incl_len, orig_len
    counts = [0, 0, 0]  # indexed by A_TO_B / B_TO_A / OTHER
    packets = 0
    n = len(buf)
    off = 24
    while off + 16 <= n:
        _, _, incl_len, orig_len = record(buf, off)
        pos, end = off + 16, off + 16 + incl_len
        if end > n:
            break  # truncated final record (tcpdump killed mid-write): count it in nothing
        off = end
        packets += 1
        counts[_classify_record(buf, pos, end, linktype, v4_dir, v6_dir, port_b)[0]] += orig_len
    return packets, counts


def _read_pcap_scalar(path: str | Path, addr_a: str, addr_b: str, port_b: int | None = None) -> PcapTotals:
    """read_pcap as it was before numpy, on _sum_by_direction: the reference for tests and benchmarks."""
    path = Path(path)
    v4_dir, v6_dir = _address_maps(addr_a, addr_b)
    t0 = time.perf_counter()
    buf = path.read_bytes()
    endian, _nanosecond, linktype = _check_header(buf, path)
    packets, counts = _sum_by_direction(buf, endian, linktype, v4_dir, v6_dir, port_b)
    return PcapTotals(packets=packets, bytes_total=sum(counts), bytes_a_to_b=counts[A_TO_B],
                      bytes_b_to_a=counts[B_TO_A], bytes_other=counts[OTHER],
                      read_s=time.perf_counter() - t0)

# --- per-record path: what the vectorized one leaves


def _classify_record(buf: bytes, pos: int, end: int, linktype: int, v4_dir: dict[bytes, int],
                     v6_dir: dict[bytes, int], port_b: int | None) -> tuple[int, int]:
    """(direction, payload length or -1) of the record data buf[pos:end], by _sum_by_direction's rules."""
    et_off, l3_off = _LINK_LAYOUT[linktype]
    l3 = pos + l3_off
    # every slice below stays inside this record once an IPv4-sized header fits
    if l3 + 20 > end:
        return OTHER, -1
    if et_off >= 0:
        ethertype = buf[pos + et_off:pos + et_off + 2]
        while ethertype in _VLAN_TAGS and l3 + 24 <= end:  # a VLAN tag inserts 4 bytes
            ethertype = buf[l3 + 2:l3 + 4]
            l3 += 4
        version = _ETHERTYPE_VERSION.get(ethertype, 0)
    else:
        version = buf[l3] >> 4
    if version == 4:
        return _classify_ipv4(buf, l3, end, v4_dir, port_b)
    if version == 6 and l3 + 40 <= end:
        return _classify_ipv6(buf, l3, end, v6_dir, port_b)
    return OTHER, -1


def _classify_ipv4(buf: bytes, l3: int, end: int, v4_dir: dict[bytes, int],
                   port_b: int | None) -> tuple[int, int]:
    l4 = l3 + (buf[l3] & 0x0F) * 4
    protocol = buf[l3 + 9]
    # only the first fragment carries the ports and the TCP/UDP header
    first_fragment = not (buf[l3 + 6] & 0x1F or buf[l3 + 7])
    direction = v4_dir.get(buf[l3 + 12:l3 + 20], OTHER)
    if direction == BY_PORT:
        direction = _direction_by_port(buf, l4, end, port_b) if first_fragment and \
            protocol in _L4_WITH_PORTS else OTHER
    if not first_fragment:
        return direction, -1
    total_len = (buf[l3 + 2] << 8) | buf[l3 + 3]
    return direction, _payload_len(buf, protocol, l4, end, total_len - (l4 - l3))


def _classify_ipv6(buf: bytes, l3: int, end: int, v6_dir: dict[bytes, int],
                   port_b: int | None) -> tuple[int, int]:
    # extension headers are not walked: a next header other than TCP/UDP counts other, length -1
    next_header = buf[l3 + 6]
    direction = v6_dir.get(buf[l3 + 8:l3 + 40], OTHER)
    if direction == BY_PORT:
        direction = _direction_by_port(buf, l3 + 40, end, port_b) if next_header in _L4_WITH_PORTS \
            else OTHER
    payload_field = (buf[l3 + 4] << 8) | buf[l3 + 5]  # bytes after the fixed 40-byte header
    return direction, _payload_len(buf, next_header, l3 + 40, end, payload_field)


def _direction_by_port(buf: bytes, l4: int, end: int, port_b: int | None) -> int:
    if l4 + 4 > end:
        return OTHER
    sport, dport = _PORTS(buf, l4)
    return A_TO_B if dport == port_b else B_TO_A if sport == port_b else OTHER


def _payload_len(buf: bytes, protocol: int, l4: int, end: int, l4_bytes: int) -> int:
    """TCP/UDP payload bytes given the bytes after the IP header (from its length field), or -1."""
    if protocol == IPPROTO_TCP and l4 + 13 <= end:
        payload = l4_bytes - (buf[l4 + 12] >> 4) * 4  # TCP data offset, in 32-bit words
    elif protocol == IPPROTO_UDP:
        payload = l4_bytes - 8
    else:
        return -1
    # negative: a garbled header, or a length field of 0 (IPv6 jumbogram, BIG TCP over IPv4)
    return payload if payload >= 0 else -1

# --- vectorized path

_CHUNK = 1 << 15  # records per numpy pass: their windows (2 MB) stay in cache through ~20 field ops


_MAP_MIN_BYTES = 1 << 20


def _map_file(path: Path) -> bytes | mmap.mmap:
    """
    The file's bytes, mapped rather than read: copying a round's file cost a sizeable share of
    the whole vectorized read (docs/evidence.md). Slicing an mmap gives bytes, so the scalar path
    works on it as is. Captures are complete when read (tcpdump stopped), so nothing truncates the
    file under the map.
    """
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size < _MAP_MIN_BYTES:  # mmap refuses empty files (_check_header reports them), and a
            return f.read()        # decode step's few KB read faster than they map
        return mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)  # closed when the last view goes


def _record_offsets(buf: bytes, endian: str) -> np.ndarray:
    """Byte offsets of the complete records' 16-byte headers, in file order.

    Records are chased one by one (each header gives the next record's place), but where a run of
    records has one size, as a capture cut at the headers' length has nearly throughout
    (harness.measure.tcpdump.header_snaplen), the run's offsets are guessed at that stride and
    checked at once with numpy; only a record that breaks the run is chased in Python."""
    incl_len = struct.Struct(endian + "8xI").unpack_from
    runs, off, n, guess = [], 24, len(buf), _MIN_RUN * 16
    while off + 16 <= n:
        stride = incl_len(buf, off)[0] + 16
        count = min(guess, (n - off) // stride)  # whole records of this size that would fit
        k = 0
        if count >= _MIN_RUN:
            lens = np.ndarray((count,), endian + "u4", buffer=buf, offset=off + 8, strides=(stride,))
            broken = np.flatnonzero(lens != stride - 16)
            k = int(broken[0]) if len(broken) else count
        if k >= _MIN_RUN:
            runs.append(off + stride * np.arange(k, dtype=np.int64))
            off += stride * k
            guess = min(guess * 4, 1 << 22) if k == count else guess  # a long run: guess further
        else:  # sizes vary here: chase a stretch one by one before guessing again
            off = _chase(buf, off, incl_len, _MIN_RUN * 4, runs)
            guess = _MIN_RUN * 16
    return np.concatenate(runs) if runs else np.empty(0, np.int64)


_MIN_RUN = 64  # a guessed run shorter than this costs more in numpy than chasing it


def _chase(buf: bytes, off: int, incl_len, records: int, runs: list) -> int:
    """Append the offsets of up to `records` complete records from off; returns the next offset
    (past the end of buf once a record is cut: tcpdump killed mid-write)."""
    n, found = len(buf), []
    for _ in range(records):
        if off + 16 > n:
            break
        end = off + 16 + incl_len(buf, off)[0]
        if end > n:
            off = n + 1  # the cut final record counts in nothing, and ends the walk
            break
        found.append(off)
        off = end
    runs.append(np.array(found, np.int64))
    return off


@functools.lru_cache(maxsize=16)
def _window_dtype(endian: str, linktype: int) -> np.dtype:
    """
    The bytes of a record the vectorized path reads, from its 16-byte pcap header to the TCP
    data offset, for an IPv4 header without options (anything else goes through _classify_record).
    """
    et_off, l3_off = _LINK_LAYOUT[linktype]
    l3 = 16 + l3_off
    rec = endian + "u4"  # the pcap record header is in the writer's byte order, packets in network order
    fields = [("ts_sec", rec, 0), ("ts_frac", rec, 4), ("incl_len", rec, 8), ("orig_len", rec, 12),
              ("version_ihl", "u1", l3), ("total_len", ">u2", l3 + 2), ("fragment", ">u2", l3 + 6),
              ("protocol", "u1", l3 + 9),
              ("addresses", ">u8", l3 + 12),  # src + dst as one number, like the packed keys
              ("sport", ">u2", l3 + 20), ("dport", ">u2", l3 + 22), ("tcp_offset", "u1", l3 + 32)]
    if et_off >= 0:
        fields.append(("ethertype", ">u2", 16 + et_off))
    names, formats, offsets = zip(*fields)
    return np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": l3 + 33})


class _Format(NamedTuple):
    """What the file's global header says about every record."""
    endian: str         # struct byte order of the record headers
    nanosecond: bool    # timestamps' fraction in ns (else us)
    linktype: int


class _Directions(NamedTuple):
    """How a packet's addresses (or, between equal addresses, its ports) give its direction."""
    v4: dict[bytes, int]
    v6: dict[bytes, int]
    port_b: int | None


def _scan(buf: bytes, offsets: np.ndarray, fmt: _Format, dirs: _Directions) -> PcapPackets:
    """Per-packet arrays for the records at offsets."""
    n = len(offsets)
    out = PcapPackets(ts_s=np.empty(n), direction=np.empty(n, np.int8), orig_len=np.empty(n, np.int64),
                      payload_len=np.empty(n, np.int64))
    dtype = _window_dtype(fmt.endian, fmt.linktype)
    # window i = the dtype.itemsize bytes from byte i: fancy indexing by offset copies one per record
    windows = np.ndarray((max(0, len(buf) - dtype.itemsize + 1),), f"V{dtype.itemsize}", buffer=buf,
                         strides=(1,))
    in_file = int(np.searchsorted(offsets, len(windows), side="left"))  # the last few may not fit
    slow = [np.arange(in_file, n)]
    for lo in range(0, in_file, _CHUNK):
        chunk = slice(lo, min(lo + _CHUNK, in_file))
        w = windows[offsets[chunk]].view(dtype)
        out.ts_s[chunk] = w["ts_sec"] + w["ts_frac"] * _tick(fmt)
        out.orig_len[chunk] = w["orig_len"]
        out.direction[chunk], out.payload_len[chunk], fast = _classify_windows(w, fmt.linktype, dirs.v4,
                                                                               dirs.port_b)
        slow.append(lo + np.flatnonzero(~fast))
    _scan_slow(buf, offsets, np.concatenate(slow), fmt, dirs, out)
    return out


def _tick(fmt: _Format) -> float:
    return 1e-9 if fmt.nanosecond else 1e-6


def _scan_slow(buf: bytes, offsets: np.ndarray, indices: np.ndarray, fmt: _Format, dirs: _Directions,
               out: PcapPackets) -> None:
    """Fill out's entries at indices through _classify_record: few, as the capture filter is tcp."""
    record = struct.Struct(fmt.endian + "IIII").unpack_from
    for i in indices.tolist():
        off = int(offsets[i])
        ts_sec, ts_frac, incl_len, orig_len = record(buf, off)
        out.ts_s[i] = ts_sec + ts_frac * _tick(fmt)  # the same float64 operations as the numpy path
        out.orig_len[i] = orig_len
        out.direction[i], out.payload_len[i] = _classify_record(buf, off + 16, off + 16 + incl_len, fmt.linktype,
                                                                *dirs)


def _classify_windows(w: np.ndarray, linktype: int, v4_dir: dict[bytes, int],
                      port_b: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """_classify_record on windows: (direction, payload length, fast); junk where not fast."""
    et_off, l3_off = _LINK_LAYOUT[linktype]
    # IPv4 without options, and the whole window inside the record (shorter ones: the scalar path)
    fast = (w["version_ihl"] == 0x45) & (w["incl_len"] >= l3_off + 33)
    if et_off >= 0:
        fast &= w["ethertype"] == ETHERTYPE_IPV4
    direction = np.full(len(w), OTHER, np.int8)
    for key, d in v4_dir.items():
        direction[w["addresses"] == np.uint64(int.from_bytes(key, "big"))] = d
    first_fragment = (w["fragment"] & 0x1FFF) == 0  # only the first carries the ports and L4 header
    tcp = first_fragment & (w["protocol"] == IPPROTO_TCP)
    udp = first_fragment & (w["protocol"] == IPPROTO_UDP)
    by_port = direction == BY_PORT
    if by_port.any():
        direction[by_port] = OTHER
        by_port &= tcp | udp
        direction[by_port & (w["sport"] == port_b)] = B_TO_A
        direction[by_port & (w["dport"] == port_b)] = A_TO_B  # second: the destination port wins
    l4_bytes = w["total_len"].astype(np.int64) - 20
    tcp_header = (w["tcp_offset"] >> 4).astype(np.int64) * 4
    payload_len = np.where(tcp, l4_bytes - tcp_header, np.where(udp, l4_bytes - 8, -1))
    payload_len[payload_len < 0] = -1  # see _payload_len
    return direction, payload_len, fast


def read_pcap(path: str | Path, addr_a: str, addr_b: str, port_b: int | None = None,
              per_packet: bool = False) -> PcapTotals:
    """
    Sum original packet lengths of a classic pcap file per direction between addr_a and addr_b.
    When addr_a == addr_b (e.g. both 127.0.0.1), direction is decided by port instead: a TCP/UDP
    packet to port_b counts a_to_b, one from port_b counts b_to_a. port_b is ignored otherwise.
    A truncated final record (tcpdump killed mid-write) is ignored.
    per_packet=True also returns per-packet arrays in .per_packet (see PcapPackets).
    """
    path = Path(path)
    if addr_a == addr_b and port_b is None:
        raise ValueError(f"addr_a == addr_b ({addr_a}): pass port_b to tell the directions apart")
    v4_dir, v6_dir = _address_maps(addr_a, addr_b)
    t0 = time.perf_counter()
    buf = _map_file(path)
    fmt = _Format(*_check_header(buf, path))
    offsets = _record_offsets(buf, fmt.endian)
    packets = _scan(buf, offsets, fmt, _Directions(v4_dir, v6_dir, port_b))
    counts = [int(packets.orig_len[packets.direction == d].sum()) for d in (A_TO_B, B_TO_A, OTHER)]
    read_s = time.perf_counter() - t0
    return PcapTotals(packets=len(offsets), bytes_total=sum(counts), bytes_a_to_b=counts[A_TO_B],
                      bytes_b_to_a=counts[B_TO_A], bytes_other=counts[OTHER], read_s=read_s,
                      per_packet=packets if per_packet else None)
