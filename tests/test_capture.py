"""Tests for harness/measure/pcap.py (pcap parsing on synthetic files) and harness/measure/tcpdump.py
(a real tcpdump on lo, its file read back)."""

import os
import random
import re
import shutil
import socket
import struct
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from harness.measure import pcap
from harness.measure import pcap_records as records
from harness.measure.pcap import _record_offsets, read_pcap
from harness.measure.pcap_records import A_TO_B, B_TO_A, OTHER
from harness.measure.tcpdump import Capture, CaptureStats

# -----------------------------------------------------------------------------
# synthetic pcap files

MAGIC_US = 0xA1B2C3D4
MAGIC_NS = 0xA1B23C4D


def tcp_header(sport: int, dport: int, options_len: int = 0) -> bytes:
    return struct.pack(">HHIIBBHHH", sport, dport, 0, 0, (5 + options_len // 4) << 4, 0x10, 65535, 0,
                       0) + bytes(options_len)


def ipv4(src: str, dst: str, l4: bytes, payload_len: int = 0, protocol: int = 6,
         flags_fragment: int = 0x4000, options: bytes = b"") -> bytes:
    """IPv4 header + the given L4 header; the length field counts payload_len more bytes."""
    header_len = 20 + len(options)
    ip = struct.pack(">BBHHHBBH4s4s", 0x40 | header_len // 4, 0, header_len + len(l4) + payload_len, 0,
                     flags_fragment, 64, protocol, 0, socket.inet_aton(src), socket.inet_aton(dst))
    return ip + options + l4


def ipv6(src: str, dst: str, l4: bytes, payload_len: int = 0, next_header: int = 6) -> bytes:
    return struct.pack(">IHBB16s16s", 6 << 28, len(l4) + payload_len, next_header, 64,
                       socket.inet_pton(socket.AF_INET6, src), socket.inet_pton(socket.AF_INET6, dst)) + l4


def udp_header(sport: int, dport: int, payload_len: int = 0) -> bytes:
    return struct.pack(">HHHH", sport, dport, 8 + payload_len, 0)


def ether(l3: bytes, ethertype: int = 0x0800, vlans: tuple[int, ...] = ()) -> bytes:
    tags = b"".join(struct.pack(">HH", tpid, 7) for tpid in vlans)
    return b"\x02" * 6 + b"\x04" * 6 + tags + struct.pack(">H", ethertype) + l3


def ipv4_tcp(src: str, dst: str, sport: int, dport: int, payload_len: int = 0, options_len: int = 0) -> bytes:
    """Ethernet + IPv4 + TCP headers (the payload is not included: it's what snaplen cuts)."""
    return ether(ipv4(src, dst, tcp_header(sport, dport, options_len), payload_len))


def arp() -> bytes:
    return b"\xff" * 6 + b"\x04" * 6 + struct.pack(">H", 0x0806) + bytes(28)


def build_pcap(frames: list[tuple[bytes, int]], magic: int = MAGIC_US, endian: str = "<",
               linktype: int = 1, ts_frac: int = 0) -> bytes:
    """frames: (captured bytes, original length) pairs; record i is stamped 1700000000 + i s + ts_frac."""
    out = [struct.pack(endian + "IHHiIII", magic, 2, 4, 0, 0, 65535, linktype)]
    for i, (data, orig_len) in enumerate(frames):
        out.append(struct.pack(endian + "IIII", 1700000000 + i, ts_frac, len(data), orig_len))
        out.append(data)
    return b"".join(out)


A, B, C = "10.0.0.1", "10.0.0.2", "10.0.0.3"
X6, Y6 = "fd00::1", "fd00::2"
LO = "127.0.0.1"
ETHERTYPE_IPV6 = 0x86DD
FRAMES = [
    (ipv4_tcp(A, B, 40000, 5201, 1000), 1054),  # a -> b
    (ipv4_tcp(A, B, 40000, 5201, 1000), 1054),  # a -> b
    (ipv4_tcp(B, A, 5201, 40000), 54),  # b -> a
    (ipv4_tcp(A, C, 40000, 80), 60),  # other host
    (arp(), 42),  # not IP
]


def write(tmp_path: Path, data: bytes, name: str = "t.pcap") -> Path:
    path = tmp_path / name
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("magic", [MAGIC_US, MAGIC_NS])
@pytest.mark.parametrize("endian", ["<", ">"])
def test_magics_and_byte_orders(tmp_path, magic, endian):
    totals = read_pcap(write(tmp_path, build_pcap(FRAMES, magic, endian)), A, B)
    assert isinstance(totals, records.PcapTotals)
    assert totals.packets == 5
    assert totals.bytes_total == 1054 * 2 + 54 + 60 + 42


def test_direction_counting(tmp_path):
    totals = read_pcap(write(tmp_path, build_pcap(FRAMES)), A, B)
    assert totals.bytes_a_to_b == 2108
    assert totals.bytes_b_to_a == 54
    assert totals.bytes_other == 60 + 42
    swapped = read_pcap(write(tmp_path, build_pcap(FRAMES)), B, A)
    assert (swapped.bytes_a_to_b, swapped.bytes_b_to_a) == (54, 2108)


def test_direction_by_port_on_one_address(tmp_path):
    lo = "127.0.0.1"
    frames = [
        (ipv4_tcp(lo, lo, 40000, 5201, 1000), 1054),  # to the server port
        (ipv4_tcp(lo, lo, 5201, 40000), 54),  # from it
        (ipv4_tcp(lo, lo, 40001, 40002), 66),  # another connection
    ]
    totals = read_pcap(write(tmp_path, build_pcap(frames)), lo, lo, port_b=5201)
    assert (totals.bytes_a_to_b, totals.bytes_b_to_a, totals.bytes_other) == (1054, 54, 66)
    with pytest.raises(ValueError, match="port_b"):
        read_pcap(write(tmp_path, build_pcap(frames)), lo, lo)


def test_vlan_and_linux_sll2(tmp_path):
    frame = ipv4_tcp(A, B, 1, 2)
    vlan = frame[:12] + struct.pack(">HH", 0x8100, 7) + frame[12:]
    totals = read_pcap(write(tmp_path, build_pcap([(vlan, 100)])), A, B)
    assert totals.bytes_a_to_b == 100
    # SLL2: protocol(2) reserved(2) ifindex(4) hatype(2) pkttype(1) addrlen(1) addr(8)
    sll2 = struct.pack(">HHIHBB8s", 0x0800, 0, 1, 1, 0, 6, bytes(8)) + frame[14:]
    totals = read_pcap(write(tmp_path, build_pcap([(sll2, 200)], linktype=276)), A, B)
    assert totals.bytes_a_to_b == 200
    raw = frame[14:]
    totals = read_pcap(write(tmp_path, build_pcap([(raw, 300)], linktype=101)), A, B)
    assert totals.bytes_a_to_b == 300


def test_truncated_last_record(tmp_path):
    data = build_pcap(FRAMES)
    full = read_pcap(write(tmp_path, data), A, B)
    last_record = 16 + len(FRAMES[-1][0])
    for cut in (1, 10, last_record - 1):  # inside the data, inside the header, just the header left
        totals = read_pcap(write(tmp_path, data[:-cut]), A, B)
        assert totals.packets == 4
        assert totals.bytes_total == full.bytes_total - 42
    header_only = read_pcap(write(tmp_path, data[:24]), A, B)
    assert header_only.packets == 0 and header_only.bytes_total == 0


def test_not_pcap(tmp_path):
    pcapng = struct.pack("<IIIHHq", 0x0A0D0D0A, 28, 0x1A2B3C4D, 1, 0, -1) + struct.pack("<I", 28)
    with pytest.raises(ValueError, match="capture with tcpdump -w, not pcapng"):
        read_pcap(write(tmp_path, pcapng), A, B)
    with pytest.raises(ValueError, match="not a pcap file"):
        read_pcap(write(tmp_path, b"hello, this is a text file\n" * 3), A, B)
    with pytest.raises(ValueError, match="not a pcap file"):
        read_pcap(write(tmp_path, b"abc"), A, B)

# -----------------------------------------------------------------------------
# per-packet output, and the vectorized path against the scalar reference


@pytest.mark.parametrize("magic, ts_frac, frac_s", [(MAGIC_US, 123456, 0.123456),
                                                   (MAGIC_NS, 123456789, 0.123456789)])
def test_per_packet_arrays(tmp_path, magic, ts_frac, frac_s):
    frames = [
        (ipv4_tcp(A, B, 40000, 5201, 1448, options_len=12), 1514),  # data segment
        (ipv4_tcp(B, A, 5201, 40000, options_len=12), 66),  # pure ACK
        (ipv4_tcp(A, C, 40000, 80, 100), 154),  # other host: still has a payload length
        (arp(), 42),
        (ether(ipv4(A, B, udp_header(1, 2, 500) + bytes(5), 495, protocol=17)), 542),  # UDP
    ]
    totals = read_pcap(write(tmp_path, build_pcap(frames, magic, ts_frac=ts_frac)), A, B, per_packet=True)
    pp = totals.per_packet
    assert isinstance(pp, records.PcapPackets)
    assert pp.ts_s.dtype == np.float64 and pp.direction.dtype == np.int8
    assert pp.orig_len.dtype == np.int64 and pp.payload_len.dtype == np.int64
    # float64 seconds since the epoch resolve ~0.24 us
    np.testing.assert_allclose(pp.ts_s, 1700000000 + np.arange(5) + frac_s, rtol=0, atol=1e-6)
    assert pp.direction.tolist() == [A_TO_B, B_TO_A, OTHER, OTHER, A_TO_B]
    assert pp.orig_len.tolist() == [1514, 66, 154, 42, 542]
    assert pp.payload_len.tolist() == [1448, 0, 100, -1, 500]
    assert read_pcap(write(tmp_path, build_pcap(frames, magic)), A, B).per_packet is None


def test_per_packet_slow_path_records(tmp_path):
    """VLAN and IPv6 records go through the per-record path; their arrays must match too."""
    frames = [
        (ether(ipv4(A, B, tcp_header(1, 2), 1000), vlans=(0x8100,)), 1058),
        (ether(ipv4(B, A, tcp_header(2, 1, 12)), vlans=(0x88A8, 0x8100)), 74),
        (ether(ipv6(X6, Y6, tcp_header(3, 4, 12), 700), ETHERTYPE_IPV6), 806),
        (ether(ipv6(Y6, X6, tcp_header(4, 3)), ETHERTYPE_IPV6), 74),
    ]
    path = write(tmp_path, build_pcap(frames))
    v4 = read_pcap(path, A, B, per_packet=True).per_packet
    assert v4.direction.tolist() == [A_TO_B, B_TO_A, OTHER, OTHER]
    assert v4.payload_len.tolist() == [1000, 0, 700, 0]
    v6 = read_pcap(path, X6, Y6, per_packet=True).per_packet
    assert v6.direction.tolist() == [OTHER, OTHER, A_TO_B, B_TO_A]


def mixed_frames() -> list[tuple[bytes, int]]:
    """Every kind of record the two paths must agree on (ethernet link layer)."""
    return [
        (ipv4_tcp(A, B, 40000, 5201, 65000), 65054),
        (ipv4_tcp(B, A, 5201, 40000, options_len=12), 66),
        (ipv4_tcp(A, C, 40000, 80), 60),
        (ipv4_tcp(LO, LO, 40000, 5201, 10), 64),
        (ipv4_tcp(LO, LO, 5201, 40000), 54),
        (ipv4_tcp(LO, LO, 1, 2), 54),
        (ether(ipv4(LO, LO, udp_header(5201, 9, 5) + bytes(5), protocol=17)), 47),  # UDP from port_b
        (ether(ipv4(A, B, udp_header(9, 5201, 5) + bytes(5), protocol=17)), 48),
        (ether(ipv4(A, B, udp_header(9, 5201, 5), protocol=17)), 49),  # payload cut off by snaplen
        (ether(ipv4(LO, LO, bytes(8), 100, protocol=1)), 142),  # ICMP
        (ether(ipv4(A, B, bytes(8), 1000, flags_fragment=0x2000 | 185)), 1042),  # non-first fragment
        (ether(ipv4(LO, LO, struct.pack(">HH", 1, 5201), flags_fragment=185)), 38),  # ditto, ports cut
        (ether(ipv4(A, B, tcp_header(1, 2, 12), 300, options=bytes(8))), 400),  # IP options
        (ether(ipv4(LO, LO, tcp_header(1, 5201), options=bytes(4))), 401),
        (arp(), 42),
        (ether(ipv4(A, B, tcp_header(1, 2)), ethertype=0x0806), 402),  # not IP, however it looks
        (ether(ipv4(A, B, tcp_header(1, 2)), vlans=(0x8100,)), 100),
        (ether(ipv4(LO, LO, tcp_header(5201, 2)), vlans=(0x88A8, 0x8100)), 101),
        (ether(ipv4(A, B, tcp_header(1, 2)), vlans=(0x8100,))[:36], 102),  # VLAN, IPv4 header cut
        (ether(ipv6(X6, Y6, tcp_header(1, 5201), 500), ETHERTYPE_IPV6), 574),
        (ether(ipv6(Y6, X6, tcp_header(5201, 1)), ETHERTYPE_IPV6), 74),
        (ether(ipv6(X6, X6, tcp_header(5201, 1)), ETHERTYPE_IPV6), 75),
        (ether(ipv6(X6, X6, bytes(8), next_header=0), ETHERTYPE_IPV6), 76),  # hop-by-hop: not walked
        (ether(ipv4(LO, LO, tcp_header(1, 5201), 9, flags_fragment=0x1000)), 39),  # offset bit 12
        (ipv4_tcp(A, B, 1, 2)[:20], 60),  # too short for an IPv4 header
        (ether(ipv4(A, B, bytes(8), 10, protocol=17))[:33], 61),  # one byte short of it: OTHER, -1
        (ipv4_tcp(A, B, 1, 2)[:34], 62),  # just the IPv4 header
        (b"", 60),
        (ipv4_tcp(A, B, 40000, 5201, 500), 554),  # the truncated final record, in the tests below
    ]


def test_payload_len_needs_the_tcp_data_offset(tmp_path):
    frame = ipv4_tcp(A, B, 1, 2, 100)
    vlan = frame[:12] + struct.pack(">HH", 0x8100, 7) + frame[12:]
    # the data-offset byte is the 13th of the TCP header; the last record ends one byte short of
    # the vectorized path's window, so the window would end past the file
    frames = [(vlan[:50], 158), (vlan[:51], 158), (frame[:47], 154), (frame[:46], 154)]
    pp = read_pcap(write(tmp_path, build_pcap(frames)), A, B, per_packet=True).per_packet
    assert pp.payload_len.tolist() == [-1, 100, 100, -1]
    assert pp.direction.tolist() == [A_TO_B] * 4


ADDRESS_CASES = [(A, B, None), (B, A, None), (A, C, None), (LO, LO, 5201), (LO, LO, 40000),
                 (X6, Y6, None), (X6, X6, 5201), (A, Y6, None)]


def other_link(frame: bytes, linktype: int) -> bytes:
    """Re-frame an ethernet frame for another link type (VLAN tags become part of the payload)."""
    ethertype, l3 = frame[12:14], frame[14:]
    if linktype == 101:
        return l3
    if linktype == 0:
        return struct.pack("<I", 2) + l3
    if linktype == 113:  # SLL: pkttype(2) hatype(2) addrlen(2) addr(8) protocol(2)
        return struct.pack(">HHH8s", 0, 1, 6, bytes(8)) + ethertype + l3
    return ethertype + struct.pack(">HIHBB8s", 0, 1, 1, 0, 6, bytes(8)) + l3  # SLL2


def per_record_reference(path: Path, addr_a: str, addr_b: str, port_b: int | None) -> list[tuple[int, int]]:
    """(direction, payload length) of every record through the scalar per-record path."""
    buf = path.read_bytes()
    endian, _, linktype = records._check_header(buf, path)
    v4_dir, v6_dir = records._address_maps(addr_a, addr_b)
    incl_len = struct.Struct(endian + "8xI").unpack_from
    return [records._classify_record(buf, off + 16, off + 16 + incl_len(buf, off)[0], linktype, v4_dir, v6_dir,
                             port_b) for off in _record_offsets(buf, endian).tolist()]


def assert_same_as_reference(path: Path, per_packet: bool = False) -> None:
    for a, b, port_b in ADDRESS_CASES:
        fast = read_pcap(path, a, b, port_b, per_packet=per_packet)
        ref = records._read_pcap_scalar(path, a, b, port_b)
        key = (fast.packets, fast.bytes_total, fast.bytes_a_to_b, fast.bytes_b_to_a, fast.bytes_other)
        assert key == (ref.packets, ref.bytes_total, ref.bytes_a_to_b, ref.bytes_b_to_a, ref.bytes_other), \
            (a, b, port_b)
        if per_packet:
            pp = fast.per_packet
            assert list(zip(pp.direction.tolist(), pp.payload_len.tolist())) == \
                per_record_reference(path, a, b, port_b), (a, b, port_b)
            sums = [int(pp.orig_len[pp.direction == d].sum()) for d in (A_TO_B, B_TO_A, OTHER)]
            assert sums == [fast.bytes_a_to_b, fast.bytes_b_to_a, fast.bytes_other]


@pytest.mark.parametrize("linktype", [1, 0, 101, 113, 276])
@pytest.mark.parametrize("chunk", [pcap._CHUNK, 4])
def test_fast_path_matches_scalar_reference(tmp_path, monkeypatch, linktype, chunk):
    monkeypatch.setattr(pcap, "_CHUNK", chunk)  # records per numpy pass: many passes too
    frames = mixed_frames()
    if linktype != 1:
        frames = [(other_link(data, linktype), orig) for data, orig in frames if len(data) >= 14]
    data = build_pcap(frames, linktype=linktype)
    assert_same_as_reference(write(tmp_path, data), per_packet=True)
    truncated = read_pcap(write(tmp_path, data[:-7]), A, B)
    assert truncated.packets == len(frames) - 1
    assert_same_as_reference(write(tmp_path, data[:-7]))


def test_fast_path_matches_scalar_reference_on_garbled_headers(tmp_path):
    """Random byte flips and cuts in the headers: both paths must still agree on every record."""
    rng = random.Random(1)
    for linktype in (1, 101, 276):
        frames = []
        for _ in range(30):
            for data, orig_len in mixed_frames():
                data = bytearray(data if linktype == 1 else other_link(data, linktype))
                for _ in range(rng.randrange(3)):
                    if data:
                        data[rng.randrange(min(len(data), 70))] = rng.randrange(256)
                cut = rng.randrange(len(data) + 1) if rng.random() < 0.2 else len(data)
                frames.append((bytes(data[:cut]), orig_len))
        assert_same_as_reference(write(tmp_path, build_pcap(frames, linktype=linktype)), per_packet=True)


def test_fast_path_matches_scalar_reference_big_endian_ns(tmp_path):
    path = write(tmp_path, build_pcap(mixed_frames(), MAGIC_NS, ">"))
    assert_same_as_reference(path)

# -----------------------------------------------------------------------------
# real capture on loopback

needs_tcpdump = pytest.mark.skipif(os.geteuid() != 0 or shutil.which("tcpdump") is None,
                                   reason="needs root and tcpdump to capture on lo")

TRANSFER_BYTES = 20_000_000


def loopback_transfer(server: socket.socket, n_bytes: int) -> int:
    """Send n_bytes from a client to an already-listening server socket; return bytes received."""
    received = [0]

    def serve() -> None:
        conn, _ = server.accept()
        with conn:
            while chunk := conn.recv(1 << 20):
                received[0] += len(chunk)

    thread = threading.Thread(target=serve)
    thread.start()
    block = bytes(1 << 20)
    with socket.create_connection(server.getsockname()) as client:
        sent = 0
        while sent < n_bytes:
            n = min(len(block), n_bytes - sent)
            client.sendall(block[:n])
            sent += n
        client.shutdown(socket.SHUT_WR)
    thread.join(30)
    return received[0]


def capinfos_data_size(path: Path) -> int:
    """Wireshark's own count of the capture's packet bytes: the reference the reader must match."""
    if shutil.which("capinfos") is None:
        pytest.fail("capinfos not found (Wireshark's, in the tshark packages): run ./setup.sh", pytrace=False)
    out = subprocess.run(["capinfos", "-d", "-M", str(path)], capture_output=True, text=True,
                         check=True).stdout
    return int(re.search(r"Data size:\s+(\d+) bytes", out).group(1))


def tcpdump_pids() -> set[int]:
    out = subprocess.run(["pgrep", "tcpdump"], capture_output=True, text=True).stdout
    return {int(p) for p in out.split()}


@needs_tcpdump
def test_capture_loopback_transfer(tmp_path):
    before = tcpdump_pids()
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    path = tmp_path / "lo.pcap"
    started = time.time()
    with server, Capture("lo", path, bpf_filter=f"tcp port {port}") as cap:
        assert loopback_transfer(server, TRANSFER_BYTES) == TRANSFER_BYTES
    stats = cap.stats
    assert isinstance(stats, CaptureStats)
    assert stats.packets_dropped == 0
    # lo's kernel counter sees each packet twice (out + in) and libpcap keeps one copy, so this
    # catches packets left unread in tcpdump's ring buffer at stop as well as drops
    assert stats.packets_received == 2 * stats.packets_captured > 0
    totals = read_pcap(path, "127.0.0.1", "127.0.0.1", port_b=port, per_packet=True)
    assert totals.packets == stats.packets_captured
    pp = totals.per_packet
    data = pp.payload_len[pp.direction == A_TO_B]
    assert (data >= 0).all() and TRANSFER_BYTES <= data.sum() <= TRANSFER_BYTES * 1.05  # retransmits
    assert (pp.payload_len[pp.direction == B_TO_A] == 0).all()  # the server only ACKs
    assert abs(pp.ts_s[0] - started) < 60 and (pp.ts_s[-1] - pp.ts_s[0]) < 60
    ref = records._read_pcap_scalar(path, "127.0.0.1", "127.0.0.1", port_b=port)
    assert (totals.bytes_a_to_b, totals.bytes_b_to_a, totals.bytes_other) == \
        (ref.bytes_a_to_b, ref.bytes_b_to_a, ref.bytes_other)
    assert TRANSFER_BYTES <= totals.bytes_a_to_b <= TRANSFER_BYTES * 1.05
    assert totals.bytes_b_to_a > 0  # ACKs
    assert totals.bytes_other == 0
    assert totals.bytes_total == capinfos_data_size(path)
    assert tcpdump_pids() <= before  # ours is gone


@needs_tcpdump
def test_capture_bad_interface_raises_and_cleans_up(tmp_path):
    before = tcpdump_pids()
    with pytest.raises(RuntimeError, match="tcpdump"):
        Capture("no-such-if0", tmp_path / "x.pcap").start()
    assert tcpdump_pids() <= before


@needs_tcpdump
def test_capture_killed_on_exception(tmp_path):
    """Our own tcpdump is gone (other tests' captures may run beside this one under xdist)."""
    cap = Capture("lo", tmp_path / "x.pcap", bpf_filter="tcp port 9")
    with pytest.raises(KeyError):
        with cap:
            pid = cap._proc.pid
            raise KeyError("boom")
    assert pid not in tcpdump_pids()


def test_record_offsets_guess_runs_and_chase_the_rest(tmp_path):
    """The reader guesses runs of one record size and chases the rest: on a capture whose sizes
    change at arbitrary points (long runs, short runs, single odd records, a cut final record)
    it finds exactly the offsets a one-by-one walk finds."""
    import random
    import struct

    from harness.measure.pcap import _record_offsets
    rng = random.Random(7)
    sizes = []
    for _ in range(60):  # runs of one size, from 1 to 700 records
        sizes += [rng.choice((66, 66, 66, 78, 128, 54))] * rng.choice((1, 2, 63, 64, 65, 300, 700))
    buf = bytearray(struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 128, 1))
    expected = []
    for n in sizes:
        expected.append(len(buf))
        buf += struct.pack("<IIII", 1, 2, n, n) + bytes(n)
    whole = _record_offsets(bytes(buf), "<")
    assert whole.tolist() == expected
    cut = _record_offsets(bytes(buf[:-10]), "<")  # tcpdump killed mid-write: the last record is cut
    assert cut.tolist() == expected[:-1]
