"""Clock: a phase timer that synchronises the device at each boundary, so asynchronous CUDA work
is charged to the phase that launched it (and not to whichever later call happens to wait)."""
from __future__ import annotations

import time

import torch


def spin(seconds: float) -> float:
    """Wait on the CPU, awake (no sleep, so no wake-up to pay); returns the time it took."""
    t0 = time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        pass
    return time.perf_counter() - t0


class Clock:
    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.t = time.perf_counter()
        self.split: dict[str, float] = {}

    def lap(self, name: str, sync: bool = True) -> None:
        """Charge the time since the last lap to name; sync: wait for the device first (False
        where the caller synchronised, or the part is the host's own work)."""
        if self.cuda and sync:
            torch.cuda.synchronize()
        now = time.perf_counter()
        self.add(name, now - self.t)
        self.t = now

    def add(self, name: str, seconds: float | None) -> None:
        if seconds is not None:
            self.split[name] = self.split.get(name, 0.0) + seconds
