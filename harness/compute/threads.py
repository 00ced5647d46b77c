"""Host threads for the model's CPU-side work (torch's intra-op pool): one setting per process,
the same in the client and the worker, so that every mode runs the model alike.

Why not torch's default (one thread per core): on a CUDA device the model runs on the GPU and the
host only launches kernels. On the H200 host (16 cores, 2026-11-28) a llama-1b prefill of 128
tokens took 25 ms of host time against 3 ms of GPU time, and per fresh process its median was
20.5-22.5 ms with the default pool (single prefills 14.9-33.0 ms), 14.7-16.1 ms with one thread,
and 14.5-16.4 ms pinned to one core (scripts/diagnose_host_threads.py: 3 processes x 22 prefills).
On a CPU device the model computes on the host and the default stays: two threads were 1.6x
faster than one on the 2-core CPU box, though their per-process medians spread 198-247 ms
against 324-340 ms (gpt2, 128 tokens): pass --gap-threads 1 where repeatability matters more
than speed (the CPU sweeps).
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
