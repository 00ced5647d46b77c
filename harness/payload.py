"""Payload bytes computed from the tensors themselves, and the KV cache in a wire-friendly form.

Counting rule (stated once, used everywhere): a tensor costs the bytes of its *storage*, and a
storage shared by several tensors counts once per message. That is what torch RPC's pickler puts
on the wire: it ships storages, not views, and a storage referenced twice in one message crosses
once. So GPT-2's tied `lm_head.weight`/`transformer.wte.weight` is counted once (FIELD-NOTES: the
wire carried ~249.5 MB of a 326 MB fp16 state_dict), and a slice costs its whole base storage.
"""
from __future__ import annotations

import torch

KV = list  # list[tuple[Tensor, Tensor]]: per layer (keys, values), each [batch, kv_heads, seq, head_dim]


def _tensors(obj):
    if isinstance(obj, torch.Tensor):
        yield obj
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


def cache_to_kv(cache) -> KV:
    """A transformers Cache -> plain per-layer (keys, values) tensors, which pickle cleanly."""
    return [(layer.keys, layer.values) for layer in cache.layers]


def kv_to_cache(kv: KV):
    from transformers import DynamicCache
    return DynamicCache(ddp_cache_data=kv)


def kv_to(kv: KV, device) -> KV:
    return [(k.to(device, non_blocking=True), v.to(device, non_blocking=True)) for k, v in kv]
