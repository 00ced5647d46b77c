"""A finer GPU-utilization sampler than dmon's 1 s: NVML polled from a thread on the GPU host.

NVML's utilization.gpu is the share of its last sample period (~1/6 s on recent cards) in
which any kernel ran; polling every 20 ms sees each period several times, so the mean over a
round is still a time-weighted busy share, with a resolution of about one NVML period.

Beside it, the SM clock (MHz) at each poll, so a cell's speed can be read against its clock. On
the H200 it read the card's maximum in every round of every cell, the slow first local prefill
rounds included, which were not the clock's doing (harness.cell.SETTLE_ROUNDS); sustained
back-to-back matrix products did pull it down (docs/evidence.md).
"""
from __future__ import annotations

import threading
import time


class NvmlSampler:
    def __init__(self, gpu_index: int = 0, interval_s: float = 0.02):
        import pynvml
        pynvml.nvmlInit()  # raises pynvml.NVMLError without a driver: callers treat as n/a
        self._nvml = pynvml
        self._handle = pynvml.nvmlDeviceGetHandleByIndex(gpu_index)
        self.interval_s = interval_s
        self._samples: list[tuple[int, int]] = []  # (utilization %, SM clock MHz)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._samples, self._stop = [], threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def stop(self) -> tuple[float | None, int, float | None]:
        """(mean utilization %, number of samples, mean SM clock MHz) over the samples."""
        self._stop.set()
        if self._thread:
            self._thread.join()
        n = len(self._samples)
        clocks = [c for _, c in self._samples if c is not None]
        return ((sum(u for u, _ in self._samples) / n if n else None), n,
                (sum(clocks) / len(clocks) if clocks else None))

    def _run(self) -> None:
        while not self._stop.is_set():
            self._samples.append((self._nvml.nvmlDeviceGetUtilizationRates(self._handle).gpu, self._sm_clock()))
            time.sleep(self.interval_s)

    def _sm_clock(self) -> int | None:
        """MHz, or None where the driver will not say (some virtual GPUs): utilization goes on."""
        try:
            return self._nvml.nvmlDeviceGetClockInfo(self._handle, self._nvml.NVML_CLOCK_SM)
        except self._nvml.NVMLError:
            return None


NO_SAMPLES = (None, 0, None)  # stop()'s answer where no sampler runs (no GPU, no NVML)


def make_sampler(device) -> NvmlSampler | None:
    """A sampler for a CUDA device, or None (CPU, or no NVML)."""
    if getattr(device, "type", str(device)) != "cuda":
        return None
    try:
        import torch
        return NvmlSampler(torch.cuda.current_device())
    except Exception:  # no pynvml, no driver library: utilization is "not available"
        return None
