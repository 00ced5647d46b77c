"""The worker's malloc policy (harness/compute/hostmem.py) keeps freed memory of any size: a
receive buffer larger than 2 GiB (llama-1b's 2.2 GB weights, the 8B's 16 GB) must stay in the
process for the next call, not be trimmed back to the kernel and faulted in again."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

PROBE = textwrap.dedent("""
    import ctypes, sys
    from harness.compute import hostmem
    policy = hostmem.keep_freed_memory()
    libc = ctypes.CDLL("libc.so.6")
    class Mallinfo2(ctypes.Structure):
        _fields_ = [(n, ctypes.c_size_t) for n in
                    ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks",
                     "fordblks", "keepcost")]
    libc.mallinfo2.restype = Mallinfo2
    libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, (ctypes.c_size_t,)
    libc.free.argtypes = (ctypes.c_void_p,)
    n = 3 * 2**30                      # over 2 GiB; never touched, so it costs no memory
    before = libc.mallinfo2()
    p = libc.malloc(n)
    assert p, "malloc failed"
    held = libc.mallinfo2()
    libc.free(p)
    kept = libc.mallinfo2()
    print(policy, held.hblkhd - before.hblkhd, kept.arena - before.arena >= n)
""")


def test_a_freed_buffer_over_2_gib_stays_in_the_heap():
    try:
        import ctypes
        ctypes.CDLL("libc.so.6").mallinfo2
    except (OSError, AttributeError):
        pytest.skip("not glibc >= 2.33 (no mallinfo2): the policy is glibc's")
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, check=True).stdout.split()
    assert out[0] == "keep", f"the policy did not apply: {out}"
    assert out[1] == "0", f"a 3 GiB block was mmapped ({out[1]} bytes more), not taken from the heap"
    assert out[2] == "True", "the freed 3 GiB heap top was trimmed back to the kernel"
