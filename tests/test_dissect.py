"""Tests for harness/measure/dissect.py: a real loopback capture dissected by tshark and checked
against what was sent and against the fast reader (pcap.read_pcap) and capinfos; sampling; crafted
pcaps with a planted retransmission (a slow one and a quick one), duplicate ACK and zero window.
tshark, capinfos and tcpdump come from ./setup.sh: a missing one fails, it is never skipped."""

import os
import re
import shutil
import socket
import struct
import subprocess
import threading
from pathlib import Path

import pytest

from harness.measure.dissect import (
    DEFAULT_MAX_PACKETS,
    Dissection,
    Flow,
    _Coverage,
    _rows_fields,
    _rows_pyshark,
    _tshark_path,
    count_packets,
    dissect,
    tshark_version,
)
from harness.measure.pcap import A_TO_B, B_TO_A, read_pcap
from harness.measure.tcpdump import Capture

LO = "127.0.0.1"
SIZES = (3_000_000, 2_000_000, 1_000_000)  # one per connection, unequal so the flows' order is known


def require(*tools: str) -> None:
    for tool in tools:
        if shutil.which(tool) is None:
            pytest.fail(f"{tool} not found: run ./setup.sh (it installs tcpdump and Debian's tshark, "
                        "which brings capinfos)")


def capinfos(path: Path) -> tuple[int, int]:
    """(packets, data bytes) by capinfos: -c counts packets, -d sums the original lengths."""
    require("capinfos")
    out = subprocess.run(["capinfos", "-c", "-d", "-M", str(path)], capture_output=True, text=True,
                         check=True).stdout
    return (int(re.search(r"Number of packets:\s+(\d+)", out).group(1)),
            int(re.search(r"Data size:\s+(\d+) bytes", out).group(1)))

# -----------------------------------------------------------------------------
# a real capture: SIZES over len(SIZES) concurrent loopback connections


def transfer(port: int, server: socket.socket) -> tuple[list[int], list[int]]:
    """Client i sends SIZES[i] to the listening server, which only reads; all at once. Returns
    (client ports, bytes the server received from each), both in SIZES' order."""
    received: dict[int, int] = {}

    def serve(conn: socket.socket, peer_port: int) -> None:
        n = 0
        with conn:
            while chunk := conn.recv(1 << 20):
                n += len(chunk)
        received[peer_port] = n

    def accept_all() -> None:
        handlers = []
        for _ in SIZES:
            conn, (_, peer_port) = server.accept()
            handlers.append(threading.Thread(target=serve, args=(conn, peer_port)))
            handlers[-1].start()
        for h in handlers:
            h.join(30)

    ports: list[int] = [0] * len(SIZES)

    def send(i: int) -> None:
        with socket.create_connection((LO, port)) as s:
            ports[i] = s.getsockname()[1]
            block = bytes(1 << 16)
            sent = 0
            while sent < SIZES[i]:
                n = min(len(block), SIZES[i] - sent)
                s.sendall(block[:n])
                sent += n
            s.shutdown(socket.SHUT_WR)
            s.recv(1)  # the server's FIN: the whole exchange is in the capture

    acceptor = threading.Thread(target=accept_all)
    acceptor.start()
    senders = [threading.Thread(target=send, args=(i,)) for i in range(len(SIZES))]
    for t in senders:
        t.start()
    for t in senders:
        t.join(30)
    acceptor.join(30)
    return ports, [received.get(p, -1) for p in ports]


@pytest.fixture(scope="module")
def lo_capture(tmp_path_factory):
    """(pcap path, server port, client ports) of a real tcpdump capture on lo."""
    require("tcpdump")
    if os.geteuid() != 0:
        pytest.fail("capturing on lo needs root (as ./setup.sh and the suite do)")
    path = tmp_path_factory.mktemp("dissect") / "lo.pcap"
    with socket.create_server((LO, 0), backlog=len(SIZES)) as server:
        port = server.getsockname()[1]
        with Capture("lo", path, bpf_filter=f"tcp port {port}") as cap:
            client_ports, received = transfer(port, server)
    assert received == list(SIZES)
    assert cap.stats.packets_dropped == 0
    return path, port, client_ports


def test_real_capture_flows(lo_capture):
    path, port, client_ports = lo_capture
    d = dissect(path, LO, LO, gpu_ports=[port])
    assert isinstance(d, Dissection)
    assert not d.sampled and d.how == f"whole file ({d.packets_total} packets)"
    assert d.packets_dissected == d.packets_total > 0
    assert d.packets_other == 0  # the BPF filter kept only our port
    assert len(d.flows) == len(SIZES)
    assert all(isinstance(f, Flow) for f in d.flows)
    # sorted by bytes, largest first: the flows come out in SIZES' order
    assert [f.bytes_total for f in d.flows] == sorted((f.bytes_total for f in d.flows), reverse=True)
    assert [f.client_port for f in d.flows] == client_ports
    assert {f.server_port for f in d.flows} == {port}
    assert len({f.stream for f in d.flows}) == len(SIZES)
    for flow, size in zip(d.flows, SIZES):
        # each connection's payload is what it sent, plus what TCP sent twice (rare on lo)
        assert size <= flow.payload_to_gpu <= size + d.retransmitted_bytes, flow
        assert flow.payload_to_client == 0  # the server only ACKs
        assert flow.bytes_to_gpu > flow.payload_to_gpu and flow.bytes_to_client > 0
        assert flow.packets == flow.packets_to_gpu + flow.packets_to_client
    assert sum(f.payload_to_gpu for f in d.flows) == sum(SIZES) + d.retransmitted_bytes
    assert d.tcp_payload_bytes == sum(SIZES) + d.retransmitted_bytes
    assert d.retransmission_share == pytest.approx(d.retransmitted_bytes / d.tcp_payload_bytes)
    assert d.tshark == tshark_version()
    assert re.fullmatch(r"\d+\.\d+\.\d+", d.tshark)


def test_real_capture_fast_reader_agrees_with_tshark_and_capinfos(lo_capture):
    path, port, _ = lo_capture
    d = dissect(path, LO, LO, gpu_ports=[port])
    fast = read_pcap(path, LO, LO, port_b=port, per_packet=True)
    pp = fast.per_packet
    packets, data_bytes = capinfos(path)
    assert fast.packets == packets == d.packets_total == d.packets_dissected == count_packets(path)
    assert fast.bytes_total == data_bytes
    # per direction: packets, wire bytes and TCP payload, the fast reader against tshark's dissection
    assert int((pp.direction == A_TO_B).sum()) == sum(f.packets_to_gpu for f in d.flows)
    assert int((pp.direction == B_TO_A).sum()) == sum(f.packets_to_client for f in d.flows)
    assert fast.bytes_a_to_b == sum(f.bytes_to_gpu for f in d.flows)
    assert fast.bytes_b_to_a == sum(f.bytes_to_client for f in d.flows)
    assert fast.bytes_other == 0
    assert int(pp.payload_len[pp.direction == A_TO_B].sum()) == sum(f.payload_to_gpu for f in d.flows)
    assert int(pp.payload_len[pp.direction == B_TO_A].sum()) == 0


def test_real_capture_fields_reader_matches_pyshark_packets(lo_capture):
    """The fast path (tshark -T fields) reads every packet as pyshark's own packet objects do."""
    path, _, _ = lo_capture
    fields = list(_rows_fields(path))
    assert fields == list(_rows_pyshark(path))
    assert len(fields) == count_packets(path)


def test_sampling_above_max_packets(lo_capture):
    path, port, _ = lo_capture
    total = count_packets(path)
    n = total // 3
    d = dissect(path, LO, LO, max_packets=n, gpu_ports=[port])
    assert d.sampled
    assert d.how == f"first {n} of {total} packets"
    assert (d.packets_total, d.packets_dissected) == (total, n)
    # the sample is the file's first n packets: the fast reader's first n agree byte for byte
    pp = read_pcap(path, LO, LO, port_b=port, per_packet=True).per_packet
    orig_len, direction = pp.orig_len[:n], pp.direction[:n]
    assert sum(f.bytes_to_gpu for f in d.flows) == int(orig_len[direction == A_TO_B].sum())
    assert sum(f.bytes_to_client for f in d.flows) == int(orig_len[direction == B_TO_A].sum())
    assert sum(f.packets for f in d.flows) == n
    whole = dissect(path, LO, LO, max_packets=total, gpu_ports=[port])  # exactly at the limit: whole
    assert not whole.sampled and whole.packets_dissected == total
    assert sum(f.bytes_total for f in d.flows) < sum(f.bytes_total for f in whole.flows)
    assert DEFAULT_MAX_PACKETS > total  # the default reads a test-sized capture whole

# -----------------------------------------------------------------------------
# a crafted capture: one retransmitted segment, one duplicate ACK, one zero window

CLIENT, GPU, OTHER_HOST = "10.0.0.1", "10.0.0.2", "10.0.0.3"
CPORT, GPORT = 51000, 52000  # no dissector registered: the payload stays plain TCP data
SYN, PSH, ACK = 0x02, 0x08, 0x10
SEGMENT = 100  # payload bytes of each data segment


def frame(src: str, dst: str, sport: int, dport: int, seq: int, ack: int, flags: int, payload: int = 0,
          window: int = 65535) -> bytes:
    """Ethernet + IPv4 + TCP (no options) + payload zero bytes."""
    tcp = struct.pack(">HHIIBBHHH", sport, dport, seq, ack, 5 << 4, flags, window, 0, 0)
    ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp) + payload, 0, 0x4000, 64, 6, 0,
                     socket.inet_aton(src), socket.inet_aton(dst))
    return b"\x02" * 6 + b"\x04" * 6 + struct.pack(">H", 0x0800) + ip + tcp + bytes(payload)


def to_gpu(seq: int, ack: int, flags: int, payload: int = 0) -> bytes:
    return frame(CLIENT, GPU, CPORT, GPORT, seq, ack, flags, payload)


def to_client(seq: int, ack: int, flags: int = ACK, window: int = 65535) -> bytes:
    return frame(GPU, CLIENT, GPORT, CPORT, seq, ack, flags, window=window)


# (seconds, frame): the client's ISN is 0 and the GPU host's 1000
PLANTED = [
    (0.00, to_gpu(0, 0, SYN)),
    (0.01, to_client(1000, 1, SYN | ACK)),
    (0.02, to_gpu(1, 1001, ACK)),
    (0.03, to_gpu(1, 1001, PSH | ACK, SEGMENT)),
    (0.04, to_client(1001, 101)),
    (0.05, to_gpu(101, 1001, PSH | ACK, SEGMENT)),
    # the same segment again, same seq, 0.45 s later (not within an RTT: a retransmission, not
    # reordering)
    (0.50, to_gpu(101, 1001, PSH | ACK, SEGMENT)),
    (0.51, to_client(1001, 201)),
    (0.52, to_client(1001, 201)),  # duplicate ACK
    (0.53, to_client(1001, 201, window=0)),  # zero window
    (0.54, frame(OTHER_HOST, CLIENT, 80, 40000, 0, 0, ACK)),  # another host: not counted
]


def write_pcap(path: Path, records: list[tuple[float, bytes]]) -> Path:
    """Classic pcap (microseconds, little-endian, Ethernet), each record whole."""
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, 65535, 1)]
    for t, data in records:
        out.append(struct.pack("<IIII", 1_700_000_000 + int(t), round(t % 1 * 1e6), len(data), len(data)))
        out.append(data)
    path.write_bytes(b"".join(out))
    return path


def test_planted_retransmission(tmp_path):
    path = write_pcap(tmp_path / "planted.pcap", PLANTED)
    d = dissect(path, CLIENT, GPU)
    assert (d.packets_total, d.packets_dissected, d.packets_other) == (len(PLANTED), len(PLANTED), 1)
    assert d.retransmissions == 1
    assert d.retransmitted_bytes == SEGMENT
    assert d.tcp_payload_bytes == 3 * SEGMENT
    assert d.retransmission_share == pytest.approx(1 / 3)
    assert d.duplicate_acks == 1
    assert d.zero_window == 1
    (flow,) = d.flows
    tcp_frames = [data for _, data in PLANTED[:-1]]
    assert flow == Flow(stream=0, client_port=CPORT, server_port=GPORT,
                        bytes_to_gpu=sum(len(f) for f in tcp_frames if f[26:30] == socket.inet_aton(CLIENT)),
                        bytes_to_client=sum(len(f) for f in tcp_frames if f[26:30] == socket.inet_aton(GPU)),
                        payload_to_gpu=3 * SEGMENT, payload_to_client=0, packets=10,
                        packets_to_gpu=5, packets_to_client=5)
    # the other way round, the same flow seen from the GPU host's side
    swapped = dissect(path, GPU, CLIENT)
    assert (swapped.flows[0].client_port, swapped.flows[0].bytes_to_client) == (GPORT, flow.bytes_to_gpu)
    assert list(_rows_fields(path)) == list(_rows_pyshark(path))


def test_two_flags_on_one_packet(tmp_path):
    """A retransmission that also advertises a zero window: two expert items on one packet, which
    pyshark's JSON holds as a list; both readers must see both."""
    records = list(PLANTED)
    records[6] = (0.50, frame(CLIENT, GPU, CPORT, GPORT, 101, 1001, PSH | ACK, SEGMENT, window=0))
    path = write_pcap(tmp_path / "two.pcap", records)
    d = dissect(path, CLIENT, GPU)
    assert (d.retransmissions, d.retransmitted_bytes, d.zero_window) == (1, SEGMENT, 2)
    rows = list(_rows_fields(path))
    assert rows[6].zero_window and rows[6].seq == rows[5].seq
    assert rows == list(_rows_pyshark(path))


def test_a_quick_retransmission_counts_though_wireshark_calls_it_out_of_order(tmp_path):
    """The first segment sent again 5 ms after the second, within the handshake's RTT (20 ms):
    Wireshark flags it out-of-order, not a retransmission (CI's loaded loopback did this); its
    bytes went on the wire twice all the same."""
    records = PLANTED[:4] + [PLANTED[5], (0.055, to_gpu(1, 1001, PSH | ACK, SEGMENT))] + PLANTED[7:]
    path = write_pcap(tmp_path / "quick.pcap", records)
    d = dissect(path, CLIENT, GPU)
    assert (d.retransmissions, d.retransmitted_bytes, d.tcp_payload_bytes) == (1, SEGMENT, 3 * SEGMENT)
    flags = subprocess.run([_tshark_path(), "-n", "-r", str(path), "-Y", "tcp.analysis.out_of_order"],
                           capture_output=True, text=True, check=True).stdout
    assert len(flags.splitlines()) == 1  # what the count used to miss
    assert list(_rows_fields(path)) == list(_rows_pyshark(path))


@pytest.mark.parametrize("segments, retransmitted", [
    ([(1, 100), (101, 100), (201, 100)], [0, 0, 0]),  # in order
    ([(1, 100), (101, 100), (1, 100)], [0, 0, 100]),  # sent again
    ([(1, 100), (201, 100), (101, 100)], [0, 0, 0]),  # a hole filled: reordered, not repeated
    ([(1, 100), (201, 100), (51, 200)], [0, 0, 100]),  # across the hole: 50 + 50 seen before
    ([(1, 100), (201, 100), (401, 50), (1, 500)], [0, 0, 0, 250]),  # over two holes
    ([((1 << 32) - 100, 100), (0, 100), ((1 << 32) - 100, 200)], [0, 0, 200]),  # across the wrap
])
def test_coverage_counts_bytes_seen_before(segments, retransmitted):
    cov = _Coverage()
    assert [cov.add(seq, n) for seq, n in segments] == retransmitted
    assert all(a[1] < b[0] for a, b in zip(cov.ranges, cov.ranges[1:]))  # disjoint, sorted, merged


def test_planted_without_retransmission(tmp_path):
    records = PLANTED[:6] + PLANTED[7:8]  # the retransmission, dup ACK, zero window left out
    d = dissect(write_pcap(tmp_path / "clean.pcap", records), CLIENT, GPU)
    assert (d.retransmissions, d.retransmitted_bytes, d.duplicate_acks, d.zero_window) == (0, 0, 0, 0)
    assert d.retransmission_share == 0.0 and d.tcp_payload_bytes == 2 * SEGMENT


def test_truncated_last_record_is_ignored(tmp_path):
    data = write_pcap(tmp_path / "full.pcap", PLANTED).read_bytes()
    path = tmp_path / "cut.pcap"
    path.write_bytes(data[:-7])  # tcpdump killed in the middle of the last record
    d = dissect(path, CLIENT, GPU)
    assert d.packets_total == d.packets_dissected == len(PLANTED) - 1
    assert d.retransmissions == 1 and d.packets_other == 0


def test_usage_errors(tmp_path):
    path = write_pcap(tmp_path / "p.pcap", PLANTED)
    with pytest.raises(ValueError, match="pass gpu_ports"):
        dissect(path, LO, LO)
    with pytest.raises(ValueError, match="max_packets"):
        dissect(path, CLIENT, GPU, max_packets=0)
    (tmp_path / "text.pcap").write_text("not a capture\n")
    with pytest.raises(RuntimeError, match="capinfos could not read"):
        dissect(tmp_path / "text.pcap", CLIENT, GPU)


def test_missing_tools_say_run_setup(tmp_path, monkeypatch):
    path = write_pcap(tmp_path / "p.pcap", PLANTED)
    monkeypatch.setenv("PATH", str(tmp_path))  # neither tshark nor capinfos on it
    with pytest.raises(RuntimeError, match=r"capinfos not found: run \./setup\.sh"):
        dissect(path, CLIENT, GPU)
    with pytest.raises(RuntimeError, match=r"tshark not found: run \./setup\.sh"):
        tshark_version()
