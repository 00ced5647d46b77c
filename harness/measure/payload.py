"""The analytic payload model: what each cell must move, per direction, from the model's shape
alone, and the closure check of the wire against it.

Payload (tensor bytes, per call):
  naive   client->GPU: W + ids + KV(s_prev)        GPU->client: logits + KV(s_prev + new)
  sys     client->GPU: ids (weights W once, apart)  GPU->client: the next token ids (greedy on the GPU host)
  local   nothing
W counts GPT-2's tied lm_head/wte once: torch RPC ships storages, and the wire agrees (a capture
carried the tied-once size, not the listed one: docs/evidence.md).
KV(s) = layers x 2 x kv_heads x s x head_dim x dtype bytes.
logits = vocab x dtype bytes (last position only). ids = tokens x 8 (int64; sys's decode steps
send and receive them as plain ints, counted so too).

Wire = payload + protocol overhead, predicted as packets x 66 B (Ethernet 14 + IPv4 20 + TCP 32
with timestamps) + messages x per-message RPC framing (pickled call, tensor descriptors,
TensorPipe headers), the latter measured once per session on no-op round trips.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from harness.compute.models import kv_geometry
from harness.compute.tokens import TOKEN_BYTES

HEADER_BYTES = 66     # a packet's headers as an Ethernet interface's counters count them: 14 + IPv4 20 + TCP 32
ETHERNET_BYTES = 14   # ... of which the link layer's: a TUN (the delay line's) has none, so counts 52
ARPHRD_NONE = "65534"  # /sys/class/net/<iface>/type of an interface without a link layer (a TUN)
CLOSURE_TOLERANCE = 0.02
CLOSURE_MIN_PAYLOAD = 1_000_000


@dataclass(frozen=True)
class Shape:
    weights_bytes: int          # distinct storages (tied tensors once)
    weights_listed_bytes: int   # every state_dict entry, tied ones again
    layers: int
    kv_heads: int
    head_dim: int
    vocab: int
    elem_bytes: int

    def kv(self, seq: int) -> int:
        return self.layers * 2 * self.kv_heads * seq * self.head_dim * self.elem_bytes

    @property
    def logits(self) -> int:
        return self.vocab * self.elem_bytes


def shape_of(config, dtype: torch.dtype) -> Shape:
    from transformers import AutoModelForCausalLM
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    tensors = model.state_dict(keep_vars=True)
    distinct = {id(t): t for t in tensors.values()}  # tied entries are one Parameter object
    layers, kv_heads, head_dim = kv_geometry(config)
    text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    elem = torch.empty(0, dtype=dtype).element_size()
    return Shape(sum(t.nbytes for t in distinct.values()), sum(t.nbytes for t in tensors.values()),
                 layers, kv_heads, head_dim, text.vocab_size, elem)


@dataclass(frozen=True)
class Payload:
    tx_bytes: int       # client -> GPU host
    rx_bytes: int       # GPU host -> client
    calls: int          # RPC round trips

    @property
    def total(self) -> int:
        return self.tx_bytes + self.rx_bytes


def cell_payload(shape: Shape, mode, phase: str, prompt_len: int, steps: int, batch: int = 1) -> Payload:
    """One round of a cell (prefill alone, or prefill + steps), excluding sys's one-time load.
    mode: a harness.compute.modes.Mode; batch: sequences decoded together (ids, logits and the KV
    cache scale with it, the weights do not)."""
    if not mode.remote:
        return Payload(0, 0, 0)
    calls = [(0, prompt_len)] + ([(prompt_len + j, 1) for j in range(steps)] if phase == "decode" else [])
    tx = rx = 0
    for s_prev, new in calls:
        tx += batch * new * TOKEN_BYTES
        rx += batch * (shape.logits if mode.stateless else TOKEN_BYTES)
        if mode.stateless:
            tx += shape.weights_bytes + batch * shape.kv(s_prev)
            rx += batch * shape.kv(s_prev + new)
    return Payload(tx, rx, len(calls))


@dataclass(frozen=True)
class Closure:
    predicted_bytes: int
    wire_bytes: int
    error: float            # (wire - predicted) / wire
    verdict: str            # "ok" | "INVALID" | "n/a (<1 MB)"


def header_bytes(arphrd: str | None) -> int:
    """A packet's headers as an interface of this type (its sysfs `type`) counts them."""
    return HEADER_BYTES - ETHERNET_BYTES if arphrd == ARPHRD_NONE else HEADER_BYTES


def closure(payload: Payload, wire_bytes: int, packets: int | None, per_message_bytes: float,
            header_B: int = HEADER_BYTES) -> Closure:
    """packets: pcap packet count of the round (both directions); None without a capture. header_B:
    a packet's headers as the link counts them (header_bytes: a TUN's 52, else 66)."""
    overhead = (packets or 0) * header_B + payload.calls * per_message_bytes
    predicted = int(payload.total + overhead)
    # nothing on the wire is all of the payload missing, not a perfect match
    err = (wire_bytes - predicted) / wire_bytes if wire_bytes else (-1.0 if predicted else 0.0)
    if payload.total < CLOSURE_MIN_PAYLOAD or packets is None:
        verdict = "n/a (<1 MB)" if payload.total < CLOSURE_MIN_PAYLOAD else "n/a (no capture)"
    else:
        verdict = "ok" if abs(err) <= CLOSURE_TOLERANCE else "INVALID"
    return Closure(predicted, wire_bytes, err, verdict)
