"""Host threads for the model's CPU-side work (torch's intra-op pool): one setting per process,
the same in the client and the worker, so that every mode runs the model alike.

Why not torch's default (one thread per core): on a CUDA device the model runs on the GPU and the
host only launches kernels. A prefill's host time there is many times its GPU time, and with the
default pool its median moved from one fresh process to the next and single prefills scattered
widely; one thread (or one pinned core) was both faster and steadier
(scripts/diagnose/host_threads.py; docs/evidence.md has the figures).
On a CPU device the model computes on the host and the default stays: more threads are faster
there, though their per-process medians spread more than one thread's: pass --gap-threads 1 where
repeatability matters more than speed (the CPU sweeps).
"""
from __future__ import annotations

import torch

from harness.errors import UsageError


def resolved(threads: int | None, device) -> int:
    """The intra-op threads to use: `threads`, or 1 on a CUDA device, else torch's default."""
    if threads is not None:
        if threads < 1:
            raise UsageError(f"threads {threads} must be >= 1 (or left out: 1 on CUDA, else one per core)")
        return threads
    return 1 if str(device).startswith("cuda") else torch.get_num_threads()


def apply(threads: int | None, device) -> int:
    """Set this process's intra-op threads (resolved()); returns the count now in effect."""
    n = resolved(threads, device)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return torch.get_num_threads()
