"""Host-memory policy for the GPU worker and the client alike: keep freed memory in the process.

A naive-mode call brings the whole state_dict (gpt2 fp16: 250 MB in 149 tensors) into buffers
torch allocates as the bytes arrive, and frees them when the call ends. glibc serves blocks over
its mmap threshold with fresh mmaps, and returns trimmed heap tops and idle thread-arena heaps to
the kernel, so every call page-faults (and zeroes) its receive buffers again, inside the time the
RPC path spends moving bytes. With mmap off, trimming off and one arena, the pages of one call's
buffers are reused by the next, as a long-running RPC server's buffer pool would.

The client holds it too (the suite and run_llm.py), for the same reason on its side: the local
mode's activations. Under glibc's default a CPU prefill page-faults its activations afresh on
every call and its time scatters more; under this policy it takes next to no faults, and without
it on the client the local prefill ran slower than the same prefill in the worker, which holds
the policy (docs/evidence.md).
"""
from __future__ import annotations

import ctypes
import ctypes.util

# mallopt parameters, from glibc's malloc.h
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
M_ARENA_MAX = -8
# mallopt takes an int and glibc stores it as size_t: -1 is SIZE_MAX, so the heap top is never
# trimmed. Any finite threshold below a naive call's receive buffer gives that buffer back to the
# kernel after each call: its pages are faulted in again by the next call's receive, and given
# back under the address-space lock while the reply goes out (docs/evidence.md).
NEVER_TRIM = -1

POLICY = "system"  # what this process runs with; the worker reports it (stats_remote)


def keep_freed_memory() -> str:
    """Apply the policy; returns POLICY as it now stands ("system" where the C library has no
    mallopt, i.e. is not glibc: nothing changed)."""
    global POLICY
    try:
        mallopt = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6").mallopt
    except (OSError, AttributeError):
        return POLICY
    mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
    # arena max first: threads that start later (TensorPipe's) then share the main arena
    settings = ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, NEVER_TRIM))
    applied = [mallopt(param, value) == 1 for param, value in settings]  # every one, even after a refusal
    POLICY = "keep" if all(applied) else "partly kept" if any(applied) else "system"
    return POLICY

