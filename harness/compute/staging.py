"""How the worker moves what it receives onto the device and back, the way a competent stateless
server would: through page-locked host memory, in bulk, straight into the parameters.

- HostStaging: a page-locked buffer kept across calls. A host->device copy from pageable memory
  runs at the driver's staging speed, from pinned memory at the bus's, several times faster
  (docs/evidence.md). TensorPipe hands us pageable tensors it allocated, so each is copied into
  the pinned buffer chunk by chunk while the DMA engine moves the chunk before: the CPU copy and
  the bus transfer overlap. The CPU copy runs on COPY_THREADS threads: one thread's memcpy moves
  less than a fast link delivers, and a stateless call's chunks are staged as they land, each
  one's copy inside the request's wire time (docs/evidence.md). Better still, the receive buffer
  itself becomes page-locked: under the worker's malloc policy (harness.compute.hostmem: no mmap,
  the heap never trimmed) the next call's tensors land at the addresses this call's did, so after
  a staged copy the received range is registered with CUDA (cudaHostRegister) and from then on
  TensorPipe receives into pinned memory and the copy is one DMA. Only under that policy: memory the C library could hand back to the
  kernel must not stay registered.
- FlatParams: the model's parameters and persistent buffers re-homed as views into one device
  buffer per dtype, laid out exactly as harness.compute.packing.pack lays out the client's
  state_dict. A received Packed then lands with one bulk copy per dtype, with no per-tensor
  load_state_dict (several times faster than load_state_dict from pageable tensors, and close to
  the pinned copy alone: docs/evidence.md), and the parameters keep their addresses, which
  captured CUDA graphs rely on.
"""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import torch

from harness.compute.packing import Packed, pack, unpack

PAGE = 4096
BULK_BYTES = 1 << 20  # transfers this large go through HostStaging's checked bulk path; smaller ones through SmallPinned
MAX_REGISTERED = 2  # receive buffers kept page-locked: one per place the weights have landed lately
CHUNK_BYTES = 64 << 20  # small enough for copy and DMA to overlap, large enough to run at full speed
COPY_THREADS = 4  # host threads that fill the staging buffer (torch releases the GIL in a copy)
# receive ranges page-locked with cudaHostRegister, start -> bytes. The process's, not one
# staging's: a page is locked for the whole process, and two workers in one process (the tests'
# models) receive into one heap, so one's next buffer can start inside the other's locked range.
REGISTERED: dict[int, int] = {}


def covered(lo: int, hi: int, ranges: dict[int, int]) -> bool | None:
    """[lo, hi) within one of ranges (start -> bytes): True; overlapping one only in part: False;
    touching none: None. In part matters: such a pointer reads as pinned (cudaPointerGetAttributes
    looks at its first byte), but a DMA from it fails with cudaErrorInvalidValue."""
    for start, n in ranges.items():
        if start <= lo and hi <= start + n:
            return True
        if lo < start + n and start < hi:
            return False
    return None


class SmallPinned:
    """Transfers under BULK_BYTES (a step's ids, its next tokens, a small reply's logits) through
    page-locked buffers kept for the process's life, one each way: no copy allocates or pins
    memory or checks locked ranges, and the host's side of a copy is a CPU memcpy between the heap
    and these buffers (the heap's memory never meets a DMA, so it may straddle a locked range,
    harness.compute.staging.covered). The caller synchronises once, then reads the result."""

    def __init__(self, device: torch.device):
        self.device = device
        self.cuda = device.type == "cuda"
        self._in = self._out = None

    def _grow(self, buf, nbytes: int) -> torch.Tensor:
        if buf is None or buf.numel() < nbytes:
            buf = torch.empty(max(nbytes, 4096), dtype=torch.uint8, pin_memory=self.cuda)
        return buf

    def host_ids(self, ids) -> torch.Tensor:
        """A step's tokens (batch ints) or a prompt [batch, n] (CPU) as [batch, n] int64 in the
        inbound buffer."""
        rows = ids.shape[0] if isinstance(ids, torch.Tensor) else len(ids)
        n = ids.shape[1] if isinstance(ids, torch.Tensor) else 1
        self._in = self._grow(self._in, rows * n * 8)
        host = self._in[:rows * n * 8].view(torch.long).view(rows, n)
        if isinstance(ids, torch.Tensor):
            host.copy_(ids)
        else:
            host.numpy()[:, 0] = ids
        return host

    def to_device(self, ids) -> torch.Tensor:
        """host_ids(ids) on the device (queued: the caller's one synchronisation covers it)."""
        return self.host_ids(ids).to(self.device, non_blocking=self.cuda)

    def start_download(self, t: torch.Tensor) -> torch.Tensor:
        """Queue t's copy into the outbound buffer and return that view: read it after the
        caller's synchronisation, and clone it if it must outlive the next transfer."""
        self._out = self._grow(self._out, t.nbytes)
        host = self._out[:t.nbytes].view(t.dtype).view(t.shape)
        host.copy_(t, non_blocking=self.cuda)
        return host

    def copy_in(self, src: torch.Tensor, dst: torch.Tensor) -> None:
        """Host src into device dst (same dtype and size) through the inbound buffer; synchronous,
        since the buffer serves the next copy (a naive call's small KV cache, not a step's ids)."""
        self._in = self._grow(self._in, src.nbytes)
        host = self._in[:src.nbytes].view(src.dtype).view(src.shape)
        host.copy_(src)
        dst.copy_(host, non_blocking=self.cuda)
        if self.cuda:
            torch.cuda.current_stream(self.device).synchronize()

    def download(self, t: torch.Tensor) -> torch.Tensor:
        """t on the host in memory of its own (a reply must own its storage: harness.compute.packing)."""
        host = self.start_download(t)
        if self.cuda:
            torch.cuda.current_stream(self.device).synchronize()
        return host.clone()


def step_io_s(device: torch.device, n: int = 1000) -> dict:
    """A decode step's transfers with no model between them: a [1, 1] id up into a device
    tensor and the [1] token back, through SmallPinned (one synchronisation) and through
    torch.tensor(...).to(device) and .tolist(); medians of n round trips each, alternating."""
    import statistics
    import time
    io, static = SmallPinned(device), torch.zeros(1, 1, dtype=torch.long, device=device)

    def pinned(token):
        static.copy_(io.host_ids([token]), non_blocking=True)
        out = io.start_download(static[:, 0])
        torch.cuda.current_stream(device).synchronize()
        return out.tolist()

    def plain(token):
        static.copy_(torch.tensor([[token]]).to(device))
        return static[:, 0].tolist()
    times = {pinned: [], plain: []}
    for i in range(n):
        for fn in times:
            t0 = time.perf_counter()
            assert fn(i) == [i]
            times[fn].append(time.perf_counter() - t0)
    return {"pinned_round_trip_s": statistics.median(times[pinned]),
            "plain_round_trip_s": statistics.median(times[plain]), "round_trips": n}


def parallel_copy(dst: torch.Tensor, src: torch.Tensor, pool: ThreadPoolExecutor, parts: int = COPY_THREADS) -> None:
    """dst.copy_(src) for 1-D host tensors, in `parts` slices run on pool's threads."""
    step = max(1, -(-src.numel() // parts))
    list(pool.map(lambda lo: dst[lo:lo + step].copy_(src[lo:lo + step]), range(0, src.numel(), step)))


class HostStaging:
    """A pinned buffer, grown to the largest transfer seen and then reused (pinning is slow: it is
    paid once). Only host->device: a reply must own its storage, since torch RPC sends a view's
    whole storage or clones it into pageable memory, and the replies (logits, a KV cache) are small
    beside the weights."""

    def __init__(self, device: torch.device, pin_received: bool = False):
        self.device = device
        self.cuda = device.type == "cuda"
        self._pinned: torch.Tensor | None = None
        self.pin_received = pin_received and self.cuda   # see the module's docstring
        self.registered = REGISTERED                     # page-aligned start -> bytes, the process's
        self.small = SmallPinned(device)                 # transfers under BULK_BYTES
        self._copiers: ThreadPoolExecutor | None = None  # made at the first staged copy

    def _buffer(self, nbytes: int) -> torch.Tensor:
        if self._pinned is None or self._pinned.numel() < nbytes:
            self._pinned = torch.empty(nbytes, dtype=torch.uint8, pin_memory=True)
        return self._pinned

    def to_device(self, src: torch.Tensor, dst: torch.Tensor, pin: bool = False) -> None:
        """Copy 1-D host tensor src into 1-D device tensor dst (same dtype and size); asynchronous
        on CUDA: the caller's clock synchronises. pin: src is a receive buffer worth page-locking
        for the next call (the weights; a KV cache is small, and its buffer moves as it grows)."""
        assert src.shape == dst.shape and src.dtype == dst.dtype, (src.shape, dst.shape, src.dtype, dst.dtype)
        if self.cuda and src.nbytes < BULK_BYTES:
            self.small.copy_in(src, dst)
            return
        if not self.cuda or self._pinned_whole(src):
            dst.copy_(src, non_blocking=self.cuda)
            return
        self._staged(src, dst)
        if pin and self.pin_received:
            self._register(src.data_ptr(), src.nbytes)

    def download(self, t: torch.Tensor) -> torch.Tensor:
        """t's copy on the host, owning its storage (a reply). Under BULK_BYTES through the small
        pinned buffer; a bulk one lands in memory that torch's pinned allocator owns, never in the
        heap, where an allocation may straddle a locked range (covered) and a copy into it fail."""
        if not self.cuda:
            return t.cpu()
        if t.nbytes < BULK_BYTES:
            return self.small.download(t)
        return torch.empty(t.shape, dtype=t.dtype, pin_memory=True).copy_(t)

    def download_packed(self, p: Packed) -> Packed:
        return p._replace(buffers={dt: self.download(b) for dt, b in p.buffers.items()})

    def _pinned_whole(self, src: torch.Tensor) -> bool:
        """Every byte of src page-locked: in a range registered here, or torch's own pinned memory."""
        whole = covered(src.data_ptr(), src.data_ptr() + src.nbytes, self.registered)
        return src.is_pinned() if whole is None else whole

    def _staged(self, src: torch.Tensor, dst: torch.Tensor) -> None:
        stage = self._buffer(src.nbytes)[:src.nbytes].view(src.dtype)
        step = max(1, CHUNK_BYTES // src.element_size())
        self._copiers = self._copiers or ThreadPoolExecutor(COPY_THREADS, thread_name_prefix="staging")
        for lo in range(0, src.numel(), step):
            hi = min(lo + step, src.numel())
            parallel_copy(stage[lo:hi], src[lo:hi], self._copiers)  # CPU: pageable -> pinned
            dst[lo:hi].copy_(stage[lo:hi], non_blocking=True)   # DMA, while the CPU takes the next chunk
        # the next copy (another dtype's buffer, the next call) reuses the staging buffer from byte 0
        torch.cuda.current_stream(self.device).synchronize()

    def _register(self, ptr: int, nbytes: int) -> None:
        """Page-lock [ptr, ptr + nbytes) (whole pages), first unregistering ranges it overlaps (the
        receive buffer moved) and the oldest beyond MAX_REGISTERED, once no copy from them can be
        in flight (the 8B's weights pin 16 GB a range). A failed registration
        (no lockable memory left) turns pinning off; CUDA keeps its error for the next launch
        check, so it is consumed here rather than surfacing in an unrelated copy."""
        cudart = torch.cuda.cudart()
        start, end = ptr & ~(PAGE - 1), -(-(ptr + nbytes) // PAGE) * PAGE
        torch.cuda.synchronize(self.device)
        for lo, n in list(self.registered.items()):
            overlaps = lo < end and start < lo + n
            if overlaps or len(self.registered) >= MAX_REGISTERED:  # oldest first: dicts keep order
                self._ok(cudart.cudaHostUnregister(lo))
                del self.registered[lo]
        if self._ok(cudart.cudaHostRegister(start, end - start, 0)):
            self.registered[start] = end - start
        else:
            self.pin_received = False

    def _ok(self, err) -> bool:
        if int(err) == 0:
            return True
        try:
            torch.empty(1, device=self.device).zero_()  # a launch check: it reads and clears the error
            torch.cuda.synchronize(self.device)
        except RuntimeError:
            pass
        return False

    def reserve(self, nbytes: int) -> None:
        """Pin the buffer now (pinning gigabytes takes a while): not inside a timed load."""
        if self.cuda:
            self._buffer(nbytes)

    def packed_to_device(self, p: Packed) -> Packed:
        dev = {dt: torch.empty(b.numel(), dtype=b.dtype, device=self.device) for dt, b in p.buffers.items()}
        for dt, b in p.buffers.items():
            self.to_device(b, dev[dt])
        return p._replace(buffers=dev)


def copy_bandwidth(device: torch.device, nbytes: int = 256 << 20, repeats: int = 3) -> dict:
    """The bus's floor for what the worker moves: host<->device GB/s from and to page-locked
    memory, best of repeats (on a CPU device: a memcpy's rate, both ways alike)."""
    import time
    cuda = device.type == "cuda"
    host = torch.empty(nbytes, dtype=torch.uint8, pin_memory=cuda)
    dev = torch.empty(nbytes, dtype=torch.uint8, device=device)
    out = {}
    for name, dst, src in (("h2d_gbps", dev, host), ("d2h_gbps", host, dev)):
        best = float("inf")
        for _ in range(repeats):
            if cuda:
                torch.cuda.synchronize(device)
            t0 = time.perf_counter()
            dst.copy_(src, non_blocking=cuda)
            if cuda:
                torch.cuda.synchronize(device)
            best = min(best, time.perf_counter() - t0)
        out[name] = nbytes / best / 1e9
    return out


class FlatParams:
    """model's state_dict tensors as views into one buffer per dtype (on the model's device)."""

    def __init__(self, model):
        tensors = model.state_dict(keep_vars=True)  # the Parameters and buffers themselves
        self.store = pack({k: t.detach() for k, t in tensors.items()})
        with torch.no_grad():
            for key, view in unpack(self.store).items():
                tensors[key].data = view

    def matches(self, p: Packed) -> bool:
        """p packs the same tensors in the same places (the client's pack of the same model)."""
        return p.entries == self.store.entries

    def load(self, p: Packed, staging: HostStaging) -> None:
        for dt, buf in p.buffers.items():
            staging.to_device(buf, self.store.buffers[dt], pin=True)
