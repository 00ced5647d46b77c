"""Clocks for the measurements.

- Clock: a phase timer that synchronises the device at each boundary, so asynchronous CUDA work
  is charged to the phase that launched it (and not to whichever later call happens to wait).
- clock_offset: how far the GPU host's wall clock is from ours, so its timestamps can be put on
  the client's timeline beside the packets tcpdump stamped on the client.
"""
from __future__ import annotations

import time

import torch


class Clock:
    def __init__(self, device: torch.device):
        self.cuda = device.type == "cuda"
        self.t = time.perf_counter()
        self.split: dict[str, float] = {}

    def lap(self, name: str) -> None:
        if self.cuda:
            torch.cuda.synchronize()
        now = time.perf_counter()
        self.split[name] = self.split.get(name, 0.0) + now - self.t
        self.t = now


def clock_offset(remote_time, samples: int = 16) -> tuple[float, float]:
    """(remote clock - local clock, round trip of the sample used), both in seconds.

    Cristian's method: the remote read happened somewhere inside [t0, t1], so assuming the
    middle is off by at most half the round trip; the fastest of several samples bounds it best.
    remote_time() returns the remote host's time.time()."""
    best_offset, best_rtt = 0.0, float("inf")
    for _ in range(samples):
        t0 = time.time()
        remote = remote_time()
        t1 = time.time()
        if t1 - t0 < best_rtt:
            best_offset, best_rtt = remote - (t0 + t1) / 2, t1 - t0
    return best_offset, best_rtt
