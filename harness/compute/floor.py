"""The GPU's memory floor under a decode step, measured on the device that runs the model.

A batch-1 decode step reads every weight matrix once and does two flops per weight: on any GPU it
is bound by memory bandwidth, so its floor is the bytes it must stream over the card's read rate.
Three figures, each measured here and now (a datasheet rate is a lead, not a floor):
- read_gbps: a plain read (a sum) of a buffer of the streamed bytes' size;
- streamed_bytes: every matrix the step reads (input embedding tables read one row and are left
  out; a head tied to one is counted, once) plus the KV cache it attends over: the filled
  positions, the least any engine must read (a static cache's masked positions, which an engine
  reads too, are time beyond the floor, not part of it);
- gemv_chain_s: batch-1 products over the model's own linear weights, one after another, replayed
  as one CUDA graph: what the matrix library alone reaches, with nothing between the products.
"""
from __future__ import annotations

import functools
import statistics
import time
from dataclasses import asdict, dataclass

import torch

from harness.compute.models import kv_geometry


@dataclass(frozen=True)
class MemoryFloor:
    device: str
    read_gbps: float          # bytes read per second by a plain sum, GB/s
    weights_bytes: int        # the matrices a decode step streams
    kv_bytes: int             # the KV cache it attends over (filled positions)
    gemv_chain_s: float       # one pass of batch-1 products over the linear weights, as one graph
    gemv_kernels: int         # products in that chain

    @property
    def streamed_bytes(self) -> int:
        return self.weights_bytes + self.kv_bytes

    @property
    def floor_s(self) -> float:
        return self.streamed_bytes / (self.read_gbps * 1e9)

    def to_dict(self) -> dict:
        return asdict(self) | {"streamed_bytes": self.streamed_bytes, "floor_s": self.floor_s}


def matrices(model) -> list[tuple[torch.Tensor, bool]]:
    """The 2-D weights a decode step reads, each storage once, in module order, and whether each
    is applied as x @ W (transformers' Conv1D keeps [in, out]) rather than x @ W.T: every linear
    and the output head, not the input embedding tables (a head tied to one is read in full)."""
    head = model.get_output_embeddings()
    head_w = None if head is None else head.weight
    seen, out = set(), []
    for m in model.modules():
        w = getattr(m, "weight", None)
        is_head = w is not None and w is head_w
        if not (isinstance(m, torch.nn.Linear) or type(m).__name__ == "Conv1D" or is_head):
            continue
        key = (w.untyped_storage().data_ptr(), w.storage_offset())
        if w.dim() == 2 and key not in seen:
            seen.add(key)
            out.append((w, type(m).__name__ == "Conv1D"))
    if head_w is not None and (head_w.untyped_storage().data_ptr(), head_w.storage_offset()) not in seen:
        out.append((head_w, False))  # tied to an embedding table, which modules() met first
    return out


def kv_bytes(config, positions: int, batch: int, dtype: torch.dtype) -> int:
    """Keys and values of `positions` filled positions, every layer."""
    layers, kv_heads, head_dim = kv_geometry(config)
    return 2 * layers * batch * kv_heads * positions * head_dim * torch.empty(0, dtype=dtype).element_size()


def _timed(fn, device, repeats: int) -> float:
    """Median seconds of fn() over repeats (CUDA events on a GPU, after a warm-up)."""
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def gemv_chain_s(weights: list[tuple[torch.Tensor, bool]], repeats: int = 10) -> float:
    """Batch-1 products over each weight as the model applies it (matrices()), one after
    another; on CUDA captured and replayed as one graph."""
    device = weights[0][0].device
    xs = [torch.randn(1, w.shape[0] if conv else w.shape[1], dtype=w.dtype, device=device) for w, conv in weights]

    def chain():
        for x, (w, conv) in zip(xs, weights):
            torch.mm(x, w) if conv else torch.nn.functional.linear(x, w)
    if device.type != "cuda":
        return _timed(chain, device, repeats)
    with torch.inference_mode():
        chain()  # cuBLAS picks and caches its kernels outside the capture
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            chain()
        return _timed(graph.replay, device, repeats)


def measure(model, positions: int, batch: int = 1) -> MemoryFloor:
    """The memory floor of a decode step of `model` at `positions` filled positions. The figures
    are taken on one buffer of random values the size of what the step streams, carved into the
    model's matrices' shapes for the chain: the weights' own bytes may not have arrived yet (a
    worker's skeleton), and timing zeros flatters some kernels."""
    mats = matrices(model)
    device, dtype = mats[0][0].device, mats[0][0].dtype
    w_bytes = sum(w.nbytes for w, _ in mats)
    kv = kv_bytes(model.config, positions, batch, dtype)
    element = torch.empty(0, dtype=dtype).element_size()
    buf = torch.empty((w_bytes + kv) // element, dtype=dtype, device=device).uniform_(-1, 1)
    read = buf.nbytes / _timed(functools.partial(torch.sum, buf, dtype=torch.float32), device, 10) / 1e9
    views, at = [], 0
    for w, conv in mats:
        views.append((buf[at:at + w.numel()].view(w.shape), conv))
        at += w.numel()
    chain = gemv_chain_s(views)
    del views, buf
    if device.type == "cuda":
        torch.cuda.empty_cache()  # 15 GB for the 8B: not the worker's to keep
    return MemoryFloor(str(device), read, w_bytes, kv, chain, len(mats))
