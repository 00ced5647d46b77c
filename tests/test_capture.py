"""Tests for harness/capture.py: pcap parsing on synthetic files, and a real tcpdump on lo."""

import os
import re
import shutil
import socket
import struct
import subprocess
import threading
from pathlib import Path

import pytest

from harness.capture import Capture, CaptureStats, PcapTotals, read_pcap

# -----------------------------------------------------------------------------
# synthetic pcap files

MAGIC_US = 0xA1B2C3D4
MAGIC_NS = 0xA1B23C4D


def ipv4_tcp(src: str, dst: str, sport: int, dport: int, payload_len: int = 0) -> bytes:
    """Ethernet + IPv4 + TCP headers (the payload is not included: it's what snaplen cuts)."""
    total_len = 20 + 20 + payload_len
    ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, total_len, 0, 0x4000, 64, 6, 0,
                     socket.inet_aton(src), socket.inet_aton(dst))
    tcp = struct.pack(">HHIIBBHHH", sport, dport, 0, 0, 5 << 4, 0x10, 65535, 0, 0)
    eth = b"\x02" * 6 + b"\x04" * 6 + struct.pack(">H", 0x0800)
    return eth + ip + tcp


def arp() -> bytes:
    return b"\xff" * 6 + b"\x04" * 6 + struct.pack(">H", 0x0806) + bytes(28)


def build_pcap(frames: list[tuple[bytes, int]], magic: int = MAGIC_US, endian: str = "<",
               linktype: int = 1) -> bytes:
    """frames: (captured bytes, original length) pairs."""
    out = [struct.pack(endian + "IHHiIII", magic, 2, 4, 0, 0, 65535, linktype)]
    for i, (data, orig_len) in enumerate(frames):
        out.append(struct.pack(endian + "IIII", 1700000000 + i, 0, len(data), orig_len))
        out.append(data)
    return b"".join(out)


A, B, C = "10.0.0.1", "10.0.0.2", "10.0.0.3"
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
    assert isinstance(totals, PcapTotals)
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


def capinfos_data_size(path: Path) -> int | None:
    if shutil.which("capinfos") is None:
        return None
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
    with server, Capture("lo", path, bpf_filter=f"tcp port {port}") as cap:
        assert loopback_transfer(server, TRANSFER_BYTES) == TRANSFER_BYTES
    stats = cap.stats
    assert isinstance(stats, CaptureStats)
    assert stats.packets_dropped == 0
    # lo's kernel counter sees each packet twice (out + in) and libpcap keeps one copy, so this
    # catches packets left unread in tcpdump's ring buffer at stop as well as drops
    assert stats.packets_received == 2 * stats.packets_captured > 0
    totals = read_pcap(path, "127.0.0.1", "127.0.0.1", port_b=port)
    assert totals.packets == stats.packets_captured
    assert TRANSFER_BYTES <= totals.bytes_a_to_b <= TRANSFER_BYTES * 1.05
    assert totals.bytes_b_to_a > 0  # ACKs
    assert totals.bytes_other == 0
    expected = capinfos_data_size(path)
    if expected is not None:
        assert totals.bytes_total == expected
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
