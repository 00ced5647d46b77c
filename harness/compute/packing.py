"""Payload bytes computed from the tensors themselves, and many tensors packed into one buffer
for the wire.

Counting rule (stated once, used everywhere): a tensor costs the bytes of its *storage*, and a
storage shared by several tensors counts once per message. That is what torch RPC's pickler puts
on the wire: it ships storages, not views, and a storage referenced twice in one message crosses
once. So GPT-2's tied `lm_head.weight`/`transformer.wte.weight` is counted once (a capture agrees:
the wire carried the tied-once size of gpt2's state_dict, not its listing's, which counts the tied
pair twice; docs/evidence.md). The
remote modes send Packed buffers (below): their storages are the buffers, which hold each distinct
tensor's own elements once (a slice packs its elements, not its base storage; a tied pair packs once).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch

KV = list  # list[tuple[Tensor, Tensor]]: per layer (keys, values), each [batch, kv_heads, seq, head_dim]


def _tensors(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
    elif isinstance(obj, Packed):  # its buffers: walking its entries table costs time every call
        yield from obj.buffers.values()
    elif isinstance(obj, dict):
        for v in obj.values():
            yield from _tensors(v)
    elif isinstance(obj, (list, tuple)):
        for v in obj:
            yield from _tensors(v)


def tensor_bytes(obj) -> int:
    """Bytes of the distinct storages reachable from obj (tensors, dicts, lists, tuples)."""
    storages = {}
    for t in _tensors(obj):
        s = t.untyped_storage()
        storages[(s.device, s.data_ptr())] = s.nbytes()
    return sum(storages.values())


class Packed(NamedTuple):
    """Many tensors as one contiguous buffer per dtype, and where each lies in it.

    torch RPC's TensorPipe handles each tensor of a message on its own, at a fixed cost a tensor:
    an echo of the naive request and reply as the model's tensors took far longer than the same
    bytes as one tensor each way (scripts/diagnose/transport.py --echo; docs/evidence.md). Sent
    as a dict of tensors, the state_dict would measure TensorPipe's bookkeeping more than the link.
    Packing is the transport's business only: the same bytes cross (each distinct tensor once, no
    padding), and the receiver gets views into the one buffer, not copies."""
    buffers: dict       # dtype name -> 1-D tensor
    entries: tuple      # per tensor: (key, dtype name, element offset, shape)

    def to(self, device) -> "Packed":
        return self._replace(buffers={k: b.to(device) for k, b in self.buffers.items()})


def pack(tensors: dict | list) -> Packed:
    """dict name -> tensor, or list of tensors -> Packed, on the tensors' device. A tensor that
    appears twice (tied weights: the same storage, offset, shape and strides) is stored once."""
    items = tensors.items() if isinstance(tensors, dict) else enumerate(tensors)
    where, entries, sizes, first = {}, [], {}, {}
    for key, t in items:
        dt = _dtype_name(t)
        ident = (t.untyped_storage().data_ptr(), t.storage_offset(), t.dtype, tuple(t.shape), t.stride())
        if ident not in where:
            where[ident] = (t, sizes.get(dt, 0))
            sizes[dt] = sizes.get(dt, 0) + t.numel()
            first.setdefault(dt, t)  # dtype and device of that dtype's buffer
        entries.append((key, dt, where[ident][1], tuple(t.shape)))
    buffers = {dt: torch.empty(n, dtype=first[dt].dtype, device=first[dt].device) for dt, n in sizes.items()}
    for t, off in where.values():
        buffers[_dtype_name(t)][off:off + t.numel()].view(t.shape).copy_(t)  # one copy, even of a slice
    return Packed(buffers, tuple(entries))


def _dtype_name(t: torch.Tensor) -> str:
    return str(t.dtype).removeprefix("torch.")


def unpack(p: Packed) -> dict | list:
    """Views into p's buffers: a dict if packed from one, else a list."""
    views = [(key, p.buffers[dt][off:off + math.prod(shape)].view(shape)) for key, dt, off, shape in p.entries]
    return [v for _, v in views] if views and isinstance(views[0][0], int) else dict(views)


def pack_kv(kv: KV) -> Packed:
    return pack([t for pair in kv for t in pair])


def unpack_kv(p: Packed) -> KV:
    flat = unpack(p)
    return [(flat[i], flat[i + 1]) for i in range(0, len(flat), 2)]


SEND_CHUNK_BYTES = 256 << 20  # the stateless request's weights travel in messages of this size


class Chunk(NamedTuple):
    """One message's share of a Packed buffer: bytes [offset, offset + len(data)) of dtype's."""
    dtype: str
    offset: int          # in bytes
    data: torch.Tensor   # uint8, a storage of exactly these bytes, sharing the buffer's memory


class Chunked(NamedTuple):
    """In a stateless call, in place of its weights: they were sent ahead as chunks under this
    call's id (harness.compute.worker.RemoteWorker.load_chunk_remote), nbytes in all."""
    call: str
    nbytes: int


def chunks(p: Packed, nbytes: int = SEND_CHUNK_BYTES) -> list[Chunk]:
    """p's buffers cut into pieces of at most nbytes, each a tensor whose storage is just its own
    bytes (no copy): torch RPC sends a tensor's whole storage, and clones a view of one twice
    its size (torch/csrc/distributed/rpc/utils.cpp), so views of the whole buffer would be copied
    on every call. CPU buffers only (the client's)."""
    out = []
    for dt, buf in p.buffers.items():
        raw = buf.view(torch.uint8).numpy()  # memory the tensors below share, and keep alive
        for lo in range(0, raw.nbytes, nbytes):
            n = min(nbytes, raw.nbytes - lo)
            out.append(Chunk(dt, lo, torch.frombuffer(raw, dtype=torch.uint8, count=n, offset=lo)))
    return out
