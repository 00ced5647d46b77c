"""How far the GPU host's wall clock is from ours, so its timestamps can be put on the client's
timeline beside the packets tcpdump stamped on the client."""
from __future__ import annotations

import time


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
