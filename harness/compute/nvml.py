"""A finer GPU-utilization sampler than dmon's 1 s: NVML polled from a thread on the GPU host.

NVML's utilization.gpu is the share of its last sample period (~1/6 s on recent cards) in
which any kernel ran; polling every 20 ms sees each period several times, so the mean over a
round is still a time-weighted busy share, with a resolution of about one NVML period.
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
        self._samples: list[int] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._samples, self._stop = [], threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def stop(self) -> tuple[float | None, int]:
        """(mean utilization % over the samples, number of samples)."""
        self._stop.set()
        if self._thread:
            self._thread.join()
        n = len(self._samples)
        return (sum(self._samples) / n if n else None), n

    def _run(self) -> None:
        while not self._stop.is_set():
            self._samples.append(self._nvml.nvmlDeviceGetUtilizationRates(self._handle).gpu)
            time.sleep(self.interval_s)


def make_sampler(device) -> NvmlSampler | None:
    """A sampler for a CUDA device, or None (CPU, or no NVML)."""
    if getattr(device, "type", str(device)) != "cuda":
        return None
    try:
        import torch
        return NvmlSampler(torch.cuda.current_device())
    except Exception:  # no pynvml, no driver library: utilization is "not available"
        return None
