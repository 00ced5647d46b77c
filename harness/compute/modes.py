"""The three modes as client-side backends with one interface: prefill(ids [batch, T]) and
step(tokens), each returning the next token of every sequence (greedy: batch ints); end() closes
the session. Where the argmax runs is part of each mode: local and sys_simulated take it beside the
GPU (the semantics-aware system knows the application samples greedily, so logits never cross the
link); naive gets the last position's logits back, as the plan's stateless worker does, and takes
it on the client.

- LocalBackend: the model runs in this process on its device; no network.
- HostLocalBackend: the local mode as the suite runs it, LocalBackend in the worker's process on
  the GPU host, a whole phase a call.
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
import uuid
from dataclasses import dataclass, field

from harness.compute.ahead import Ahead
from harness.compute.calls import call, call_each, explain
from harness.compute.engine import Engine, EngineSpec
from harness.compute.packing import Chunked, Packed, chunks, pack, tensor_bytes
from harness.compute.timers import Clock
from harness.compute.tokens import TOKEN_BYTES, greedy, on_device


@dataclass
class Tally:
    """Per-session accounting. server_s sums the worker's own split over all calls; stamps
    holds one (sent, entered, left, returned) per RPC call: the client's time.time() around the
    call and the server's around its method (harness.measure.timeline puts them on one timeline)."""
    payload_tx_bytes: int = 0
    payload_rx_bytes: int = 0
    calls: int = 0
    rpc_s: float = 0.0          # client wall time inside rpc_sync calls
    client_s: float = 0.0       # the client's own work inside the backend (next token, its tensor)
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

    def __init__(self, model, engine: EngineSpec = EngineSpec(), ahead: bool = True):
        self.engine = Engine(model, engine)
        self.device = self.engine.device
        self.tally = Tally()
        self.slot = None
        # on an asynchronous device the greedy loop queues each announced step before it reads the
        # last one's token (harness.compute.ahead); elsewhere, or with ahead=False, a step is the
        # worker's one-synchronisation step
        self.ahead = Ahead(self.engine) if ahead and self.device.type == "cuda" else None

    def prefill(self, ids, steps: int = 0):
        clock = Clock(self.device)  # the session's set-up is in the first part, as the worker's is in its call
        self.end()
        self.slot = self.engine.new_slot()
        if self.ahead:
            return self._tally(self.ahead.prefill(self.slot, ids, steps, clock), clock)
        return self._tally(self.engine.next_tokens(self.slot, ids, clock), clock)

    def step(self, tokens: list[int]):
        clock = Clock(self.device)
        if self.ahead:
            return self._tally(self.ahead.step(tokens, clock), clock)
        return self._tally(self.engine.next_tokens(self.slot, tokens, clock), clock)

    def capture_s(self) -> dict:
        """The loop's first captures, seconds by tokens a step (compilation included)."""
        return dict(self.engine.capture_s)

    def _tally(self, tokens: list[int], clock: Clock) -> list[int]:
        """Timed like the worker's greedy step (harness.compute.worker.RemoteWorker._step), so the
        parts compare across modes."""
        self.tally.add(0, 0, clock.split)
        return tokens

    def end(self):
        if self.slot is not None:
            self.engine.release(self.slot)
            self.slot = None


PREPARE_TIMEOUT_S = 900.0  # the local mode's set-up on the GPU host: a large model's weights made there


class HostLocalBackend:
    """The local mode as the suite runs it: the loop on the GPU host, in the worker's process
    (RemoteWorker.local_prepare_remote), a whole phase a call (run_phase hands it over whole), on
    the worker's model with weights made there. Nothing crosses the link during a phase, and the
    phase is timed there: its figures are the GPU host's own, whichever host the client is on.
    The remote modes' process and model: the same compiled kernels, so the same tokens in bf16."""
    mode = "local"
    load = None

    def __init__(self, worker, state_dict=None, timeout_s: float = PREPARE_TIMEOUT_S):
        """state_dict: unused (the weights are made on the GPU host); timeout_s: the preparing
        call's RPC timeout."""
        self.worker = worker  # harness.compute.calls.WorkerHandle
        self.tally = Tally()
        try:
            worker.rpc_sync(timeout_s).local_prepare_remote()
        except RuntimeError as e:
            raise explain(e) from e

    def run_phase_remote(self, prompt, phase: str, steps: int):
        """prompt [batch, T] on the CPU -> the phase's PhaseResult, measured on the GPU host."""
        return call(self.worker, "run_local_phase_remote", prompt, phase, steps)

    def capture_s(self) -> dict:
        return call(self.worker, "local_capture_s_remote")

    def prefill(self, ids, steps: int = 0):
        raise NotImplementedError("the local mode runs whole phases on the GPU host: use run_phase")

    step = prefill

    def end(self):
        pass  # the worker ends each phase's session itself


class NaiveBackend:
    mode = "naive"
    load = None  # it ships the weights in every call instead

    def __init__(self, worker, state_dict: dict | Packed):
        self.worker = worker  # harness.compute.calls.WorkerHandle
        # one buffer per dtype (harness.compute.packing.Packed). To a GPU worker it goes in chunks,
        # whose copies to the device overlap the later chunks' arrival (the bus has its own copy
        # engine); a CPU worker's load is a memcpy on the cores that receive, so there it goes
        # whole, one message. The whole state on every call either way.
        self.weights = as_packed(state_dict)
        cuda = str(call(worker, "device_remote")).startswith("cuda")
        self.chunks = chunks(self.weights) if cuda else None
        self.nbytes = sum(b.nbytes for b in self.weights.buffers.values())
        self.session, self.calls = uuid.uuid4().hex, 0  # a call's id: unique across backends and workers
        self.tally = Tally()
        self.kv = None                        # Packed, as the worker sent it back

    def _call(self, ids):
        """One stateless forward. To a GPU worker every chunk of the weights goes at once, then,
        once all have landed, the ids and the KV cache with the call: the client's stamps span the
        whole exchange, the server's the forward alone, so the chunks' loads, which overlap their
        arrival, are inside the call's transport time (and, summed, in server_s chunk_load_s)."""
        self.calls += 1
        t0 = time.time()
        if self.chunks:
            call_id = f"{self.session}-{self.calls}"
            loads = call_each(self.worker, "load_chunk_remote", [(call_id, c) for c in self.chunks])
            reply = call(self.worker, "run_stateless_forward_remote", Chunked(call_id, self.nbytes), ids, self.kv)
            reply = reply._replace(server_s={**reply.server_s, "chunk_load_s": sum(loads)})
        else:
            reply = call(self.worker, "run_stateless_forward_remote", self.weights, ids, self.kv)
        t1 = time.time()
        sent_bytes = self.nbytes + tensor_bytes((ids, self.kv))  # the weights' bytes never change
        self.kv = reply.kv_cache
        self.tally.add_call(sent_bytes, tensor_bytes((reply.logits, reply.kv_cache)), reply, t0, t1)
        tokens = greedy(reply.logits)
        self.tally.client_s += time.time() - t1
        return tokens

    def prefill(self, ids, steps: int = 0):
        self.kv = None
        return self._call(ids)

    def step(self, tokens: list[int]):
        t0 = time.perf_counter()
        ids = on_device(tokens, "cpu")
        self.tally.client_s += time.perf_counter() - t0
        return self._call(ids)

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

    def __init__(self, worker, state_dict: dict | Packed):
        self.worker = worker  # harness.compute.calls.WorkerHandle
        self.tally = Tally()
        self.cache_id = None
        weights = as_packed(state_dict)  # as the naive mode sends them
        t0 = time.perf_counter()
        reply = call(self.worker, "load_weights_remote", weights)
        self.load = WeightLoad(time.perf_counter() - t0, tensor_bytes(weights), reply.server_s)

    def prefill(self, ids, steps: int = 0):
        reply = self._call("run_prefill_remote", ids, tensor_bytes(ids))
        self.cache_id = reply.kv_cache_id
        return reply.tokens

    def step(self, tokens: list[int]):
        """tokens go as plain ints: a message without tensors skips TensorPipe's per-tensor work."""
        return self._call("run_decode_step_remote", tokens, len(tokens) * TOKEN_BYTES, self.cache_id).tokens

    def _call(self, method, ids, ids_bytes: int, *rest):
        t0 = time.time()
        reply = call(self.worker, method, ids, *rest, True)  # greedy: the next tokens come back
        self.tally.add_call(ids_bytes, len(reply.tokens) * TOKEN_BYTES, reply, t0, time.time())
        return reply

    def end(self):
        if self.cache_id is not None:
            self.worker.rpc_sync().release_cache_remote(self.cache_id)
            self.cache_id = None


def as_packed(state_dict: dict | Packed) -> Packed:
    return state_dict if isinstance(state_dict, Packed) else pack(state_dict)


@dataclass(frozen=True)
class Mode:
    """One mode of the plan: what crosses the link, and the client backend that does it."""
    name: str
    remote: bool        # the model runs on the GPU host, reached over the link
    stateless: bool     # every call ships the weights and the whole KV cache (the semantics-blind system)
    ships: str          # per forward pass, for tables
    backend: type
    # tcpdump runs during the timed rounds. Not for sys_simulated: in immediate mode it wakes for
    # every packet, and a decode step is a few small packets, so the capture slows each step
    # measurably, on the CPU box and on the H200 alike (test_capture_cost_per_step;
    # docs/evidence.md). Its capture comes from a round of its own after
    # the timed ones (harness.cell.Cell.capture_round). Naive's one large message a call pays
    # ~nothing for it (test_capture_overhead: <= 1.02), and local sends nothing.
    captured_while_timed: bool = True


# In the plan's order: the baseline, the semantics-blind system, the semantics-aware one.
MODES = {m.name: m for m in (
    Mode("local", False, False, "nothing: the model runs on the GPU host", HostLocalBackend),
    Mode("naive", True, True, "state_dict + new ids + whole KV cache; back: logits + whole KV cache",
         NaiveBackend),
    Mode("sys_simulated", True, False, "new ids + a cache id (weights once, apart); back: the next token ids "
         "(greedy beside the GPU)", SysBackend, captured_while_timed=False),
)}
