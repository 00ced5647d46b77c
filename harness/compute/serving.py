"""How the worker's methods are served: on one compute thread, whichever RPC thread received
the call, each reply stamped with the server's clock (harness.compute.worker's docstring says why
one thread)."""
from __future__ import annotations

import functools
import time
from typing import NamedTuple

import torch

from harness.compute.packing import Packed


class Reply(NamedTuple):
    logits: torch.Tensor | None          # [batch, vocab] on the CPU, model dtype; None when tokens are sent
    kv_cache: Packed | list | None = None  # stateless: the whole new cache on the CPU (pack_kv); echo: a list
    kv_cache_id: str | None = None       # stateful only
    server_s: dict | None = None         # {"load_s","h2d_s","compute_s","gpu_span_s","d2h_s","dispatch_s"}, and
                                         # the client adds "chunk_load_s" for chunks loaded ahead of the call
    stamps_s: tuple | None = None        # (entered, left): the server's time.time() around the method
    tokens: list | None = None           # greedy=True: the next token per sequence (batch ints), taken here


def compute_thread(method):
    """Run the method on the worker's compute thread, whatever RPC thread called it. A Reply
    gets the wall clock on the RPC thread, where torch hands the call over and takes it back
    (stamps_s), and the hand-over's own time both ways (server_s["dispatch_s"])."""
    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        entered = time.time()
        out, (began, ended) = self._on_compute_thread(_stamped, method, self, *args, **kwargs)
        left = time.time()
        if not isinstance(out, Reply):
            return out
        dispatch = (began - entered) + (left - ended)
        return out._replace(stamps_s=(entered, left), server_s={**out.server_s, "dispatch_s": dispatch})
    return wrapper


def serving_threads() -> int | None:
    """How many threads serve RPC requests in this process (None: no RPC agent runs here)."""
    from torch.distributed.rpc.api import _get_current_rpc_agent
    try:
        return int(_get_current_rpc_agent().get_debug_info()["agent.thread_pool_size"])
    except (RuntimeError, AssertionError, KeyError, ValueError):
        return None


def _stamped(fn, *args, **kwargs):
    began = time.time()
    out = fn(*args, **kwargs)
    return out, (began, time.time())
