"""The classic pcap format (what `tcpdump -w` writes) and one record's rules: its header, the link
layouts the suite meets, which direction a packet goes between two addresses, and its TCP/UDP
payload. A record at a time, in Python: the reference the fast reader (harness.measure.pcap) is
checked against, and the path it sends the records numpy cannot decide down.
"""
from __future__ import annotations

import functools
import ipaddress
import struct
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

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
