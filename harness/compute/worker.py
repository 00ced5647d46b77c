"""The GPU host's side: `RemoteWorker`, created on the server by the client through
`rpc.remote("GPU_WORKER", RemoteWorker, ...)` and driven in one of two ways.

- stateless (the naive, semantics-blind system): every call brings the whole state_dict, the new
  token(s) and the whole KV cache, and takes logits and the whole new KV cache back.
- stateful (the semantics-aware system): weights loaded once; the KV cache stays here under an
  id; a decode step brings one token and the id.

All model work runs on one thread. RPC serves each request on whichever thread of its pool is
free, and per-thread state in the CUDA libraries follows the thread: cuDNN's attention builds an
execution graph per (thread, sequence length), so a decode step spread over the pool's threads
pays that build again on each of them and ran several times slower than on one thread
(scripts/diagnose/threads.py; docs/evidence.md); one thread, warmed once like the local loop, runs
as fast as the local loop. Where the RPC agent serves on one thread
(rpc_server.py's, harness.testbed.rpc.SERVER_THREADS) that thread is the one: methods run where the
request arrives. Otherwise (more serving threads, or no RPC at all, as in the tests) they are
handed to a dedicated thread and back.

Every reply carries `server_s`, the server's own time split (load, host->device, compute,
device->host), synchronised on CUDA, and `stamps_s`, the server's wall clock when the method was
entered (its arguments already received and unpickled) and left (its reply not yet pickled), so
the client can place the server's time between the packets of the call (harness.measure.timeline).
"""
from __future__ import annotations

import time
import uuid
import weakref
from concurrent.futures import ThreadPoolExecutor

import torch
from torch.distributed.rpc import functions as rpc_functions

from harness.compute import cpuidle, floor, hostmem
from harness.compute.batcher import LEASE_S, Batcher
from harness.compute.engine import Engine, EngineSpec
from harness.compute.models import ModelSpec, build_model, default_device
from harness.compute.nvml import NO_SAMPLES, make_sampler
from harness.compute.modes import LocalBackend
from harness.compute.packing import Chunk, Chunked, Packed, pack, pack_kv, unpack_kv
from harness.compute.phase import PhaseResult, run_phase
from harness.compute.rows import Rows
from harness.compute.serving import Reply, compute_thread, serving_threads
from harness.compute.staging import FlatParams, HostStaging, copy_bandwidth
from harness.compute.timers import Clock, spin


# The workers of this process by key, for as long as their RRef (held by the client) keeps them:
# the client calls them through invoke, a plain function (harness.compute.calls.WorkerHandle says why)
_LIVE: weakref.WeakValueDictionary = weakref.WeakValueDictionary()


def invoke(key: str, method: str, *args):
    """worker.method(*args) for the worker registered under key: what the client's calls run here."""
    worker = _LIVE.get(key)
    if worker is None:
        raise RuntimeError(f"no GPU worker {key!r} in this process: it was released, or the server "
                           "restarted; make a new worker (harness.testbed.bed.Testbed.worker)")
    return getattr(worker, method)(*args)


# Workers that many clients share (open_batcher_remote): kept past the RRef of the client that made
# them, since every client calls them by key; they go with the process
_SHARED: dict = {}


@rpc_functions.async_execution
def invoke_async(key: str, method: str, *args):
    """As invoke, for a method that returns a torch Future: the serving thread returns at once
    and the reply goes when the future completes, so many clients' requests can be pending."""
    return invoke(key, method, *args)


class RemoteWorker:
    MAX_SESSIONS = 64  # live KV caches; more means a client forgot release_cache_remote

    def __init__(self, spec: ModelSpec, device: str | None = None, engine: EngineSpec = EngineSpec()):
        self.key = uuid.uuid4().hex
        _LIVE[self.key] = self
        self.device = torch.device(device or default_device())
        self.spec = spec
        # one thread for all model work: it also serialises requests, so no lock is needed
        self._compute = (None if serving_threads() == 1
                         else ThreadPoolExecutor(max_workers=1, thread_name_prefix="gpu-worker"))
        self.model = self._on_compute_thread(build_model, spec, self.device, with_weights=False)
        self.params = self._on_compute_thread(FlatParams, self.model)  # weights land here in bulk
        self.engine = self._on_compute_thread(Engine, self.model, engine)
        self.staging = HostStaging(self.device, pin_received=hostmem.POLICY == "keep")
        self.staging.reserve(max(b.nbytes for b in self.params.store.buffers.values()))
        self.weights_loaded = False
        self._landing: tuple[str | None, dict] = (None, {})  # a stateless call's id, its chunks landed: (dtype, offset) -> bytes
        self.caches: dict[str, object] = {}
        self.batcher: Batcher | None = None  # many clients' sessions (open_batcher_remote)
        self.local: LocalBackend | None = None  # the local mode's loop on this host (local_prepare_remote)
        self._own: Packed | None = None  # the local mode's weights, made here from the spec
        self.sampler = make_sampler(self.device)  # NVML, on the GPU host itself

    def _on_compute_thread(self, fn, *args, **kwargs):
        if self._compute is None:  # the RPC agent's one serving thread is the compute thread
            return fn(*args, **kwargs)
        return self._compute.submit(fn, *args, **kwargs).result()

    # -- stateless: the naive system ------------------------------------------------------
    @compute_thread
    def load_chunk_remote(self, call: int, chunk: Chunk) -> float:
        """One message's share of a stateless call's weights (harness.compute.packing.chunks),
        straight into the parameters as it lands, while the next chunks are still on the wire (an
        API-remoting layer forwarding a copy per piece). Synchronised before returning: the
        receive buffer is torch RPC's, freed once this returns. Returns its seconds here."""
        clock = Clock(self.device)
        if call != self._landing[0]:
            self._landing = (call, {})
        dst = self.params.store.buffers[chunk.dtype].view(torch.uint8)
        # staged, not page-locked in place: chunk buffers land at changing heap addresses, and a
        # locked range that a later pageable copy straddles fails it (harness.compute.staging.covered)
        self.staging.to_device(chunk.data, dst[chunk.offset:chunk.offset + chunk.data.numel()])
        self._landing[1][chunk.dtype, chunk.offset] = chunk.data.numel()
        self.weights_loaded = False  # what a stateless call loads is not ours to keep
        clock.lap("load_s")
        return clock.split["load_s"]

    @compute_thread
    def run_stateless_forward_remote(self, state_dict, input_ids, kv_cache: Packed | None = None) -> Reply:
        """state_dict: the client's Packed weights (harness.compute.packing.pack), a plain dict, or
        Chunked: this call's weights already landed through load_chunk_remote."""
        clock = Clock(self.device)
        if isinstance(state_dict, Chunked):
            self._require_chunks(state_dict)
        else:
            self._load(state_dict)
        self.weights_loaded = False  # what a stateless call loads is not ours to keep
        clock.lap("load_s")
        slot = self.engine.new_slot()
        try:
            if kv_cache:
                self.engine.load_kv(slot, unpack_kv(self.staging.packed_to_device(kv_cache)))
            clock.lap("h2d_s")
            logits = self._step(input_ids, slot, clock)
            reply_kv = self.staging.download_packed(pack_kv(self.engine.kv(slot)))  # packed on the device: one copy
        finally:
            self.engine.release(slot)  # its buffers (and captured step) serve the next call; its contents do not
        clock.lap("d2h_s")
        return Reply(logits, kv_cache=reply_kv, server_s=clock.split)

    # -- stateful: the semantics-aware system -----------------------------------------------
    @compute_thread
    def load_weights_remote(self, state_dict) -> Reply:
        clock = Clock(self.device)
        self._load(state_dict)
        self.weights_loaded = True
        clock.lap("load_s")
        return Reply(torch.empty(0), server_s=clock.split)

    @compute_thread
    def run_prefill_remote(self, token_ids, greedy: bool = False) -> Reply:
        """token_ids [batch, T]. greedy: reply with the next token ids, not the logits."""
        self._require_weights()
        if len(self.caches) >= self.MAX_SESSIONS:
            raise RuntimeError(f"KV cache store full ({self.MAX_SESSIONS} sessions): call "
                               "release_cache_remote(kv_cache_id) when a session ends")
        kv_cache_id = uuid.uuid4().hex
        slot = self.engine.new_slot()
        clock = Clock(self.device)
        out = self._step(token_ids, slot, clock, greedy)
        self.caches[kv_cache_id] = slot
        return self._reply(out, greedy, kv_cache_id=kv_cache_id, server_s=clock.split)

    @compute_thread
    def run_decode_step_remote(self, token_id, kv_cache_id: str, greedy: bool = False) -> Reply:
        """token_id: [batch, 1], or the batch's tokens as plain ints (no tensor to ship)."""
        self._require_weights()
        clock = Clock(self.device)
        out = self._step(token_id, self._cache(kv_cache_id), clock, greedy)
        return self._reply(out, greedy, kv_cache_id=kv_cache_id, server_s=clock.split)

    @staticmethod
    def _reply(out, greedy: bool, **fields) -> Reply:
        return Reply(None, tokens=out, **fields) if greedy else Reply(out, **fields)

    @compute_thread
    def release_cache_remote(self, kv_cache_id: str) -> None:
        self.engine.release(self._cache(kv_cache_id))
        del self.caches[kv_cache_id]

    # -- the local mode, on this host ---------------------------------------------------------
    @compute_thread
    def local_prepare_remote(self) -> None:
        """The local mode's model: this worker's own, its weights made here from the spec as the
        client makes its copy (build_model), nothing over the link, and the local loop over it.
        The remote modes' model and process: the same compiled kernels, so the same tokens."""
        if self._own is None:  # made once, kept packed on the host: each local cell loads it in bulk
            own = build_model(self.spec, self.device)
            self._own = pack({k: v.detach().cpu() for k, v in own.state_dict().items()})
            del own
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
        self._load(self._own)
        self.weights_loaded = True
        self.local = LocalBackend(self.model, self.engine.spec)

    @compute_thread
    def run_local_phase_remote(self, prompt, phase: str, steps: int) -> PhaseResult:
        """One phase of the local mode, run and timed here (run_phase): the call and its result
        are all that cross the link, outside the phase's time."""
        if self.local is None or not self.weights_loaded:
            raise RuntimeError("the local mode is not prepared on this worker: call local_prepare_remote first")
        return run_phase(self.local, prompt, phase, steps)

    def local_capture_s_remote(self) -> dict:
        """The local loop's first captures, seconds by tokens a step (compilation included)."""
        return dict(self.local.engine.capture_s) if self.local else {}

    # -- shared by many clients: sessions batched (harness.compute.batcher) ------------------
    @compute_thread
    def open_batcher_remote(self, slots: int, max_len: int, lease_s: float = LEASE_S) -> None:
        """Serve sessions of many clients from `slots` rows of max_len positions, their decode steps
        batched, on the loaded weights; the clients reach this worker by its key."""
        self._require_weights()
        self._stop_batcher()
        self.batcher = Batcher(lambda: Rows(self.model, slots, max_len), lease_s)  # made on the batcher's thread

    def share_remote(self) -> None:
        """Keep this worker past its maker's RRef: the other clients call it by key."""
        _SHARED[self.key] = self

    def session_open_remote(self, owner: str) -> str:
        return self._batcher().open(owner)

    def session_prefill_remote(self, sid: str, owner: str, ids: list[int]):
        """A Future of the session's first token (called through invoke_async)."""
        return self._batcher().prefill(sid, owner, ids)

    def session_step_remote(self, sid: str, owner: str, token: int):
        """A Future of the session's next token (called through invoke_async)."""
        return self._batcher().step(sid, owner, token)

    def session_close_remote(self, sid: str, owner: str) -> None:
        self._batcher().close(sid, owner)

    def _batcher(self) -> Batcher:
        if self.batcher is None:
            raise RuntimeError("this worker serves no shared sessions: call open_batcher_remote first")
        return self.batcher

    def _stop_batcher(self) -> None:
        if self.batcher is not None:
            self.batcher.stop()
            self.batcher = None

    # -- housekeeping -------------------------------------------------------------------------
    @compute_thread
    def reset_remote(self) -> None:
        """Drop every cache and forget the weights: a new cell starts from nothing."""
        self._stop_batcher()
        if self.local is not None:
            self.local.end()
            self.local = None
        for slot in self.caches.values():
            self.engine.release(slot)
        self.caches.clear()
        self.weights_loaded = False
        self._landing = (None, {})

    @compute_thread
    def copy_bandwidth_remote(self) -> dict:
        """Pinned host<->device GB/s on this host (harness.compute.staging.copy_bandwidth)."""
        return copy_bandwidth(self.device)

    @compute_thread
    def warm_remote(self, prompt_len: int, batch: int = 1) -> dict:
        """Capture the engine's steps (the compact engine compiles them the first time) for a
        prompt of prompt_len and a decode step, on a slot the pool keeps: what the first timed
        call would otherwise pay, inside its RPC timeout. Returns seconds by step length."""
        slot, clock = self.engine.new_slot(), Clock(self.device)
        tokens = self.engine.next_tokens(slot, torch.zeros(batch, prompt_len, dtype=torch.long), clock)
        self.engine.next_tokens(slot, tokens, clock)
        self.engine.clear(slot)  # it ran on the skeleton's uninitialised weights
        self.engine.release(slot)
        return dict(self.engine.capture_s)

    @compute_thread
    def memory_floor_remote(self, positions: int, batch: int = 1) -> dict:
        """This GPU's memory floor under a decode step of this model at `positions` filled
        positions (harness.compute.floor)."""
        return floor.measure(self.model, positions, batch).to_dict()

    def device_remote(self) -> str:
        return str(self.device)

    def key_remote(self) -> str:
        return self.key

    def noop_remote(self) -> None:
        """The control benchmark's round trip: RPC cost with no work behind it."""

    def hold_remote(self, hold_s: float) -> float:
        """An empty call that keeps this host's serving thread busy for hold_s, as a decode step
        keeps it launching and waiting on the GPU (a CUDA sync spins by default): the client waits
        as it waits for a step, so its round trip less the time held is what the RPC costs a step.
        Returns the time held, timed here."""
        return spin(hold_s)

    @compute_thread
    def echo_remote(self, payload, reply_sizes: list[int]) -> Reply:
        """The RPC path alone: take any payload, send back CPU byte tensors of reply_sizes."""
        return Reply(torch.empty(0), kv_cache=[torch.empty(n, dtype=torch.uint8) for n in reply_sizes], server_s={})

    def clock_remote(self) -> float:
        """This host's wall clock, for the client's offset estimate (harness.measure.clocks.clock_offset)."""
        return time.time()

    def gpu_sampler_start_remote(self) -> bool:
        if self.sampler:
            self.sampler.start()
        return self.sampler is not None

    def gpu_sampler_stop_remote(self) -> tuple[float | None, int, float | None]:
        """(mean NVML utilization %, samples, mean SM clock MHz) since start; (None, 0, None) without a GPU."""
        return self.sampler.stop() if self.sampler else NO_SAMPLES

    def stats_remote(self) -> dict:
        import psutil
        cuda = self.device.type == "cuda"
        return {"sessions": len(self.caches), "batcher": self.batcher.stats() if self.batcher else None,
                "malloc": hostmem.POLICY, "engine": self.engine.spec.name,
                "threads": self.engine.threads, "engine_capture_s": dict(self.engine.capture_s),
                "cpu_idle": cpuidle.state(),
                "receive_pinned_bytes": sum(self.staging.registered.values()),
                "rss_bytes": psutil.Process().memory_info().rss,
                "gpu_allocated_bytes": torch.cuda.memory_allocated(self.device) if cuda else None,
                "gpu_reserved_bytes": torch.cuda.memory_reserved(self.device) if cuda else None,
                "device": str(self.device),
                "gpu_name": torch.cuda.get_device_name(self.device) if cuda else None}

    def _step(self, ids, slot, clock: Clock, greedy: bool = False) -> torch.Tensor | list[int]:
        """One forward extending the slot's cache; charges h2d/compute/d2h to clock. Returns the
        logits on the CPU, or with greedy the next token per sequence (the argmax taken here, as
        the local loop takes it beside its GPU, in the engine's one-synchronisation step)."""
        if greedy:
            return self.engine.next_tokens(slot, ids, clock)
        ids = self.engine.io.to_device(ids)
        clock.lap("h2d_s")
        logits = self.engine.forward(slot, ids)
        clock.lap("compute_s")
        clock.add("gpu_span_s", self.engine.gpu_span_s())
        out = self.staging.download(logits)
        clock.lap("d2h_s")
        return out

    def _load(self, state_dict: dict | Packed) -> None:
        """The client's pack of the same model lands in bulk (FlatParams); anything else, such as
        a plain dict of tensors, through load_state_dict."""
        if not isinstance(state_dict, Packed):
            self.model.load_state_dict(state_dict)
        elif self.params.matches(state_dict):
            self.params.load(state_dict, self.staging)
        else:  # a Packed is the client's pack of this model: anything else is a bug, not a slow path
            raise ValueError("the packed weights do not match this worker's model (another model, dtype "
                             "or transformers version on the client?)")

    def _require_chunks(self, chunked: Chunked) -> None:
        """Every byte of this call's weights landed, each once (chunks partition the buffers, so
        distinct chunks adding up to the whole cover it); whatever the outcome, the call is over."""
        call, landed = self._landing
        self._landing = (None, {})
        got = sum(landed.values()) if call == chunked.call else 0
        if got != chunked.nbytes:
            raise RuntimeError(f"stateless call {chunked.call}: {got} of {chunked.nbytes} weight bytes landed: "
                               "send every chunk, and wait for them, before the forward")

    def _require_weights(self):
        if not self.weights_loaded:
            raise RuntimeError("weights not loaded on the GPU worker: call "
                               "load_weights_remote(state_dict) before prefill or decode")

    def _cache(self, kv_cache_id: str):
        try:
            return self.caches[kv_cache_id]
        except KeyError:
            raise KeyError(f"unknown kv_cache_id {kv_cache_id!r}: it was released or never "
                           "created; start a session with run_prefill_remote") from None
