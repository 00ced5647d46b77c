"""What is measured around one round: the link's counters, a tcpdump capture on the client's
side of the link, `nvidia-smi dmon` and an NVML sampler on the GPU host, and the GPU host's clock
offset. Started before the timed region and stopped after it (pytest-benchmark's pedantic
setup/teardown), so their start-up costs nothing. The capture's packets of the last round stay
in `packets` (for harness.measure.timeline), not in the reading.
"""
from __future__ import annotations

import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from harness.compute.calls import call
from harness.compute.nvml import NO_SAMPLES
from harness.measure.clocks import clock_offset
from harness.measure.dmon import DmonMonitor, parse_dmon
from harness.measure.pcap import read_pcap
from harness.measure.tcpdump import Capture, header_snaplen
from harness.testbed.link import Link, stats


@dataclass(frozen=True)
class ProbeReading:
    link_tx_bytes: int           # client -> GPU host, kernel counters of the client's interface
    link_rx_bytes: int           # GPU host -> client
    link_packets: int            # both directions, kernel counters
    pcap_bytes: int | None       # sum of packets' original lengths (None: capture off)
    pcap_c2g_bytes: int | None
    pcap_g2c_bytes: int | None
    pcap_packets: int | None
    pcap_dropped: int | None     # tcpdump's own "dropped by kernel"
    pcap_read_s: float | None    # time spent analysing the capture
    gpu_sm_pct: float | None     # dmon's sm averaged over the round; None: no GPU or no sample
    dmon_samples: int
    nvml_util_pct: float | None  # NVML utilization.gpu polled every 20 ms on the GPU host
    nvml_samples: int
    nvml_sm_clock_mhz: float | None  # the SM clock at the same polls (harness.compute.nvml says why)
    control_bytes: int           # the sampler's start/stop calls: inside the capture, not the counters
    clock_offset_s: float        # GPU host's clock - client's; 0 on one kernel (the embedded default)
    clock_rtt_s: float | None    # round trip of the offset estimate (its error bound x 2); None: not estimated

    @property
    def link_bytes(self) -> int:
        return self.link_tx_bytes + self.link_rx_bytes


@dataclass(frozen=True)
class UtilWindow:
    """GPU utilization over a window of back-to-back runs of a phase: dmon's SM% (the plan's
    method) over at least a few of its 1 s samples, and NVML's utilization beside it."""
    seconds: float
    runs: int
    dmon_sm_pct: float | None
    dmon_samples: int
    nvml_util_pct: float | None
    nvml_samples: int
    nvml_sm_clock_mhz: float | None = None


class WorkerSampler:
    """The worker's NVML sampler, started and stopped over RPC outside the counted region, and
    its host's clock for the offset estimate."""

    def __init__(self, worker):
        self.worker = worker  # harness.compute.calls.WorkerHandle to a RemoteWorker

    def start(self) -> None:
        call(self.worker, "gpu_sampler_start_remote")

    def stop(self) -> tuple[float | None, int, float | None]:
        return tuple(call(self.worker, "gpu_sampler_stop_remote"))

    def clock(self) -> float:
        return call(self.worker, "clock_remote")


# Linux delays an ACK by up to 40 ms: let the sampler call's last ACK pass before counting.
CONTROL_SETTLE_S = 0.05


class RoundProbe:
    def __init__(self, link: Link, capture: bool = True, dmon: bool = True,
                 workdir: Path | None = None, sampler=None):
        """sampler: an object run on the GPU host with start(), stop() -> (mean %, samples, mean SM
        clock MHz) and clock() -> its time.time()."""
        self.link = link
        self.sampler = sampler
        self.capture_on = capture
        self.dmon_on = dmon and DmonMonitor.available(link.gpu_prefix)
        self.workdir = Path(workdir or tempfile.mkdtemp(prefix="sgap-probe-"))
        self._cap = self._dmon = self._c0 = self._pre = None
        self._clock = (0.0, None)
        self.packets = None  # harness.measure.pcap.PcapPackets of the last round, or None
        self.last_pcap = self.workdir / "last-round.pcap"  # the last stopped round's capture

    def start(self, capture: bool = True) -> None:
        """capture=False: this round without tcpdump (counters, dmon and NVML as always)."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.capture_on and capture:
            bpf = f"tcp and host {self.link.gpu_addr}"
            ssh = self.link.host.ssh
            if ssh:  # dmon's lines and the worker's ssh session are not the experiment's traffic
                bpf += f" and not port {ssh.port or 22}"
            self._cap = Capture(self.link.client_iface, self.workdir / "round.pcap", bpf_filter=bpf,
                                snaplen=header_snaplen(self.link.gpu_addr))
            self._cap.start()
        if self.dmon_on:
            self._dmon = DmonMonitor(self.workdir / "dmon.log", prefix=self.link.gpu_prefix).start()
        self._pre = stats(self.link.client_iface)
        if self.sampler:
            self.sampler.start()
            # one kernel, one clock: an estimate would only add its own error
            if self.link.kind == "remote":
                self._clock = clock_offset(self.sampler.clock)
            time.sleep(CONTROL_SETTLE_S)
        self._c0 = stats(self.link.client_iface)  # last: nothing above is counted

    def stop(self) -> ProbeReading:
        c1 = stats(self.link.client_iface)  # first: nothing below is counted
        d = {k: c1[k] - self._c0[k] for k in c1}
        nvml = self.sampler.stop() if self.sampler else NO_SAMPLES
        post = stats(self.link.client_iface)
        control = sum(self._c0[k] - self._pre[k] + post[k] - c1[k] for k in ("tx_bytes", "rx_bytes"))
        sm, samples = self._stop_dmon()
        pcap = self._stop_capture()
        return ProbeReading(d["tx_bytes"], d["rx_bytes"], d["tx_packets"] + d["rx_packets"],
                            *pcap, sm, samples, *nvml, control, *self._clock)

    def window(self, run, min_s: float) -> UtilWindow | None:
        """run() back to back for at least min_s under dmon and the NVML sampler, no capture and
        no counters (nothing here is timed or counted as a round). None where dmon cannot run."""
        if not self.dmon_on:
            return None
        self._dmon = DmonMonitor(self.workdir / "window.log", prefix=self.link.gpu_prefix).start()
        if self.sampler:
            self.sampler.start()
        t0, runs = time.perf_counter(), 0
        while time.perf_counter() - t0 < min_s:
            run()
            runs += 1
        seconds = time.perf_counter() - t0
        nvml = self.sampler.stop() if self.sampler else NO_SAMPLES
        return UtilWindow(seconds, runs, *self._stop_dmon(inner=True), *nvml)

    def abort(self) -> None:
        """Stop everything without reading it (an error in the round)."""
        for proc in (self._cap, self._dmon):
            if proc is not None:
                proc.__exit__(RuntimeError, None, None)
        self._cap = self._dmon = None
        self.packets = None

    def _stop_dmon(self, inner: bool = False) -> tuple[float | None, int]:
        """(mean sm %, samples). inner: leave out the first and last sample, which cover dmon's
        start-up and stop as much as the runs between (a window of runs: its samples all fall
        inside it; with the edges, dmon read well below NVML's samples inside the same window:
        docs/evidence.md)."""
        if self._dmon is None:
            return None, 0
        text, self._dmon = self._dmon.stop(), None
        if not any(line.strip() and not line.startswith("#") for line in text.splitlines()):
            return None, 0  # stopped before dmon's first sample: a round shorter than its period
        values = parse_dmon(text, gpu=0, column="sm").values
        if inner:
            values = values[1:-1]
        return (sum(values) / len(values) if values else None), len(values)

    def _stop_capture(self) -> tuple:
        self.packets = None
        if self._cap is None:
            return (None,) * 6
        stats, self._cap = self._cap.stop(), None
        totals = read_pcap(stats.pcap_path, self.link.client_addr, self.link.gpu_addr, per_packet=True)
        self.packets = totals.per_packet
        # tens of MB a round: the totals are what we keep, and the last round's file for dissection
        stats.pcap_path.replace(self.last_pcap)
        return (totals.bytes_total, totals.bytes_a_to_b, totals.bytes_b_to_a, totals.packets,
                stats.packets_dropped, totals.read_s)
