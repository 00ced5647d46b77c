"""
Packet capture for the network benchmarks: run tcpdump around a measured
region, then count the bytes on the wire per direction from its pcap file.

read_pcap: a fast reader of classic pcap (what `tcpdump -w` writes) that sums the packets'
original lengths per direction, and optionally returns per-packet arrays (time, direction, wire
length, TCP/UDP payload length). The format and one record's rules: harness.measure.pcap_records;
the tcpdump process: harness.measure.tcpdump.
"""

from __future__ import annotations

import functools
import mmap
import os
import struct
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np

from harness.measure.pcap_records import (
    _LINK_LAYOUT,
    A_TO_B,
    B_TO_A,
    BY_PORT,
    ETHERTYPE_IPV4,
    IPPROTO_TCP,
    IPPROTO_UDP,
    OTHER,
    PcapPackets,
    PcapTotals,
    _address_maps,
    _check_header,
    _classify_record,
)

# -----------------------------------------------------------------------------
# pcap reading
#
# A round's capture holds hundreds of thousands of records, and a pure-Python walk of them
# (`_sum_by_direction`, kept as the reference) pays the interpreter for each one
# (scripts/diagnose/bench_pcap.py; docs/evidence.md). So read_pcap only chases the record offsets in
# Python and does the rest with numpy on the offsets; records it can't decide that way (VLAN
# tags, IPv6, IP options, short or non-IP records) go one by one through `_classify_record`,
# which follows the reference's rules.

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
