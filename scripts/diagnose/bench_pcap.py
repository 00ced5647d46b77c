"""How fast harness/measure/pcap.py reads a round's capture: the old pure-Python walk
(_read_pcap_scalar, the reference) against read_pcap, on a synthetic pcap shaped like
`tcpdump -s 66` (the headers, as the probe captures) on the testbed's veth: 64 KB GSO TCP segments one way, ACKs the other.
    python scripts/diagnose/bench_pcap.py [--packets 360000] [--repeat 9]"""
from __future__ import annotations

import argparse
import socket
import statistics
import struct
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from harness.measure.pcap import read_pcap  # noqa: E402
from harness.measure.pcap_records import _read_pcap_scalar  # noqa: E402

CLIENT, GPU = "10.0.0.1", "10.0.0.2"
SNAPLEN = 66  # harness.measure.tcpdump.header_snaplen for IPv4: every record this long
SEGMENT_PAYLOAD = 45 * 1448  # a full 64 KB GSO segment: 45 MSS of 1448 bytes


def frame(src: str, dst: str, sport: int, dport: int, payload_len: int) -> tuple[bytes, int]:
    """(captured bytes, original length) of ethernet + IPv4 + TCP with timestamps (32-byte header)."""
    tcp = struct.pack(">HHIIBBHHH", sport, dport, 0, 0, 8 << 4, 0x10, 65535, 0, 0) + bytes(12)
    ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 20 + len(tcp) + payload_len, 0, 0x4000, 64, 6, 0,
                     socket.inet_aton(src), socket.inet_aton(dst))
    wire = b"\x02" * 6 + b"\x04" * 6 + struct.pack(">H", 0x0800) + ip + tcp + bytes(payload_len)
    return wire[:SNAPLEN], len(wire)


def build_pcap(packets: int) -> bytes:
    data = frame(CLIENT, GPU, 40000, 5201, SEGMENT_PAYLOAD)
    ack = frame(GPU, CLIENT, 5201, 40000, 0)
    out = [struct.pack("<IHHiIII", 0xA1B2C3D4, 2, 4, 0, 0, SNAPLEN, 1)]
    for i in range(packets):
        captured, orig_len = data if i % 2 == 0 else ack
        out.append(struct.pack("<IIII", 1700000000 + i // 100000, i % 100000 * 10, len(captured), orig_len))
        out.append(captured)
    return b"".join(out)


def time_readers(path: Path, repeat: int) -> tuple[dict[str, list[float]], dict[str, object]]:
    """read_s of each reader (its own timing: file read + walk), interleaved so drift hits all alike."""
    readers = {
        "scalar (_read_pcap_scalar)": lambda: _read_pcap_scalar(path, CLIENT, GPU),
        "read_pcap": lambda: read_pcap(path, CLIENT, GPU),
        "read_pcap(per_packet=True)": lambda: read_pcap(path, CLIENT, GPU, per_packet=True),
    }
    times = {name: [] for name in readers}
    last = {}
    for _ in range(repeat):
        for name, read in readers.items():
            last[name] = read()
            times[name].append(last[name].read_s)
    return times, last


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--packets", type=int, default=360_000)
    ap.add_argument("--repeat", type=int, default=9)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "bench.pcap"
        path.write_bytes(build_pcap(args.packets))
        print(f"pcap: {args.packets} packets, {path.stat().st_size / 1e6:.1f} MB, {args.repeat} reads each")
        times, last = time_readers(path, args.repeat)
    old, new, pp = last.values()
    totals = [(r.packets, r.bytes_a_to_b, r.bytes_b_to_a, r.bytes_other) for r in (old, new, pp)]
    assert totals[0] == totals[1] == totals[2], totals
    payload = int(pp.per_packet.payload_len.sum())
    assert payload == (args.packets + 1) // 2 * SEGMENT_PAYLOAD, payload
    base = times["scalar (_read_pcap_scalar)"]
    print(f"{'reader':<28}{'packets':>9}{'min s':>8}{'median s':>10}{'us/pkt':>8}{'speed-up min/median':>21}")
    for name, t in times.items():
        lo, mid = min(t), statistics.median(t)
        print(f"{name:<28}{old.packets:>9}{lo:>8.3f}{mid:>10.3f}{mid / old.packets * 1e6:>8.3f}"
              f"{min(base) / lo:>13.1f}x /{statistics.median(base) / mid:>5.1f}x")
    print(f"totals identical; per-packet payload {payload / 1e9:.2f} GB")


if __name__ == "__main__":
    main()
