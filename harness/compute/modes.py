"""The three modes as client-side backends with one interface: prefill(ids) and step(token),
each returning the last position's logits [1, vocab]; end() closes the session.

- LocalBackend: the model runs in this process on its device; no network.
- NaiveBackend: the stateless worker; each call ships state_dict + new ids + whole KV cache.
- SysBackend: the stateful worker; weights shipped once (at construction, timed apart),
  then only ids and a cache id.
Both ship the weights packed (harness.compute.packing.Packed: the same bytes, one tensor per dtype), so
neither pays TensorPipe's per-tensor cost; packing happens once, before anything is timed.

Remote backends count the payload they send and receive from the tensors themselves
(harness.compute.packing.tensor_bytes) and sum the server's own time split.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from harness.compute.calls import call
from harness.compute.engine import Engine, EngineSpec
from harness.compute.packing import Packed, pack, tensor_bytes
from harness.compute.timers import Clock

@dataclass
class Tally:
    """Per-session accounting. server_s sums the worker's own split over all calls; stamps
    holds one (sent, entered, left, returned) per RPC call: the client's time.time() around the
    call and the server's around its method (harness.measure.timeline puts them on one timeline)."""
    payload_tx_bytes: int = 0
    payload_rx_bytes: int = 0
    calls: int = 0
    rpc_s: float = 0.0          # client wall time inside rpc_sync calls
    server_s: dict = field(default_factory=dict)
    stamps: list = field(default_factory=list)

    def add(self, tx, rx, server_s=None, rpc_s=0.0):
        self.payload_tx_bytes += tx
        self.payload_rx_bytes += rx
        self.calls += 1
        self.rpc_s += rpc_s
        for k, v in (server_s or {}).items():
            self.server_s[k] = self.server_s.get(k, 0.0) + v

    def add_call(self, tx, rx, reply, sent: float, returned: float):
        """One RPC call that returned a worker Reply; sent/returned: the client's time.time()."""
        self.add(tx, rx, reply.server_s, returned - sent)
        if reply.stamps_s:
            self.stamps.append((sent, *reply.stamps_s, returned))


class LocalBackend:
    mode = "local"
    load = None  # nothing to load: the model lives here

    def __init__(self, model, engine: EngineSpec = EngineSpec()):
        self.engine = Engine(model, engine)
        self.device = self.engine.device
        self.tally = Tally()
        self.slot = None

    def prefill(self, ids):
        self.end()
        self.slot = self.engine.new_slot()
        return self._forward(ids)

    def step(self, tok):
        return self._forward(tok)

    def _forward(self, ids):
        """Timed like the worker's compute (and its CUDA-event span), so they compare across modes."""
        clock = Clock(self.device)
        logits = self.engine.forward(self.slot, ids.to(self.device))
        clock.lap("compute_s")
        clock.add("gpu_span_s", self.engine.gpu_span_s())
        self.tally.add(0, 0, clock.split)
        return logits

    def end(self):
        if self.slot is not None:
            self.engine.release(self.slot)
            self.slot = None


class NaiveBackend:
    mode = "naive"
    load = None  # it ships the weights in every call instead

    def __init__(self, worker_rref, state_dict: dict | Packed):
        self.worker = worker_rref
        self.weights = as_packed(state_dict)  # one buffer per dtype; see harness.compute.packing.Packed
        self.tally = Tally()
        self.kv = None                        # Packed, as the worker sent it back

    def _call(self, ids):
        sent = (self.weights, ids, self.kv)
        t0 = time.time()
        reply = call(self.worker, "run_stateless_forward_remote", *sent)
        t1 = time.time()
        self.kv = reply.kv_cache
        self.tally.add_call(tensor_bytes(sent), tensor_bytes((reply.logits, reply.kv_cache)), reply, t0, t1)
        return reply.logits

    def prefill(self, ids):
        self.kv = None
        return self._call(ids)

    def step(self, tok):
        return self._call(tok)

    def end(self):
        self.kv = None


@dataclass(frozen=True)
class WeightLoad:
    """The one-time cost the semantics-aware system pays, reported apart from steady state.
    link_*_bytes: the link's counters around it, where the caller measured them."""
    latency_s: float
    payload_tx_bytes: int
    server_s: dict
    link_tx_bytes: int | None = None
    link_rx_bytes: int | None = None


class SysBackend:
    mode = "sys_simulated"

    def __init__(self, worker_rref, state_dict: dict | Packed):
        self.worker = worker_rref
        self.tally = Tally()
        self.cache_id = None
        weights = as_packed(state_dict)  # as the naive mode sends them
        t0 = time.perf_counter()
        reply = call(self.worker, "load_weights_remote", weights)
        self.load = WeightLoad(time.perf_counter() - t0, tensor_bytes(weights), reply.server_s)

    def prefill(self, ids):
        reply = self._call("run_prefill_remote", ids)
        self.cache_id = reply.kv_cache_id
        return reply.logits

    def step(self, tok):
        return self._call("run_decode_step_remote", tok, self.cache_id).logits

    def _call(self, method, ids, *rest):
        t0 = time.time()
        reply = call(self.worker, method, ids, *rest)
        self.tally.add_call(tensor_bytes(ids), tensor_bytes(reply.logits), reply, t0, time.time())
        return reply

    def end(self):
        if self.cache_id is not None:
            self.worker.rpc_sync().release_cache_remote(self.cache_id)
            self.cache_id = None


def as_packed(state_dict: dict | Packed) -> Packed:
    return state_dict if isinstance(state_dict, Packed) else pack(state_dict)


def greedy(logits: torch.Tensor) -> list[int]:
    """The client's next token per sequence: argmax over the vocabulary, first index on ties (as
    generate()). logits [batch, vocab] -> batch ints (one device sync)."""
    return torch.argmax(logits, dim=-1).tolist()


@dataclass(frozen=True)
class Mode:
    """One mode of the plan: what crosses the link, and the client backend that does it."""
    name: str
    remote: bool        # the model runs on the GPU host, reached over the link
    stateless: bool     # every call ships the weights and the whole KV cache (the semantics-blind system)
    ships: str          # per forward pass, for tables
    backend: type


# In the plan's order: the baseline, the semantics-blind system, the semantics-aware one.
MODES = {m.name: m for m in (
    Mode("local", False, False, "nothing: the model runs on the GPU host", LocalBackend),
    Mode("naive", True, True, "state_dict + new ids + whole KV cache; back: logits + whole KV cache",
         NaiveBackend),
    Mode("sys_simulated", True, False, "new ids + a cache id (weights once, apart); back: logits", SysBackend),
)}
