"""How a model's forward steps are run, the same way on the client (local mode) and in the worker
(both remote modes), so that all three modes compute the same function.

- eager:  transformers' model with a DynamicCache, one Python-launched forward per step
  (transformers' default; the CPU's default).
- static: transformers' model with a StaticCache ([batch, kv_heads, max_len, head_dim] per layer,
  written in place at a position the cache keeps on the device), launched eagerly: the graph
  engines' cache and numerics without the graph, so the CPU can test everything but the capture.
- graphs: static, with each slot's decode step captured once as a CUDA graph and replayed.
- graphs-all: graphs, and each prompt length's prefill (from position 0) captured too, behind an
  explicit causal mask: transformers' own prefill into an empty static cache decides on is_causal
  by reading the cache's position on the host (a sync, which a capture cannot hold).
- compact: the compact decoder code (harness.compute.compact: Llama and GPT-2 families) over its
  own static cache. On CUDA the forward is compiled by inductor, which fuses everything between
  the matrix products, and each slot's step of n tokens is captured as a CUDA graph (at any
  position: the cache's position lives on the device). On a CPU the same code runs eagerly. The
  default on CUDA where the model's family is covered, else graphs-all.
Why the graph engines: an eager step is bound by the host's kernel launches, and an uncompiled
graph by the kernels between the matrix products (scripts/decode_floor.py measures each engine's
step against the memory floor; docs/modes.md).

A cache lives in a Slot. Slots are pooled: a released slot keeps its buffers and its captured
graphs for the next session, so capture (and compilation, the first time) is paid once per slot,
not per session. A graph reads the parameters and the cache at fixed addresses: weights must be
copied into the parameters in place (harness.compute.staging.FlatParams), never rebound.

The static caches attend over max_len positions behind a mask, so their fp16 numerics differ from
the dynamic cache's: compare an engine with itself, and with generate() using the same kind of cache.
"""
from __future__ import annotations

import time
import weakref
from dataclasses import dataclass, replace

import torch

from harness.compute import compact
from harness.compute import threads as host_threads
from harness.compute.models import forward_step
from harness.compute.staging import FlatParams, SmallPinned
from harness.errors import UsageError

ENGINES = ("eager", "static", "graphs", "graphs-all", "compact")
GRAPHS = ("graphs", "graphs-all")  # the engines that need CUDA (compact captures graphs where it has it)
AUTO = "auto"  # on a CUDA device compact (graphs-all where compact does not cover the model), else eager


@dataclass(frozen=True)
class EngineSpec:
    name: str = "eager"
    max_len: int = 0        # positions a static cache holds (prompt + generated tokens)
    batch: int = 1
    threads: int | None = None  # host intra-op threads (harness.compute.threads); None: the device's default

    def __post_init__(self):
        if self.name not in (*ENGINES, AUTO):
            raise UsageError(f"unknown engine {self.name!r}: use one of {', '.join(ENGINES)}")
        if self.name != "eager" and self.max_len < 1:
            raise UsageError(f"the {self.name} engine needs max_len >= 1 (prompt + generated tokens)")


def default_engine(model) -> str:
    if next(model.parameters()).device.type != "cuda":
        return "eager"
    return "compact" if compact.supported(model) is None else "graphs-all"


def resolved(spec: EngineSpec, model) -> EngineSpec:
    """spec with AUTO replaced by what runs `model` on its device."""
    return spec if spec.name != AUTO else replace(spec, name=default_engine(model))


class Slot:
    """One session's KV cache and its captured steps (n tokens -> Captured)."""

    def __init__(self, cache):
        self.cache = cache
        self.length = 0         # positions filled, kept here so that reading it never syncs the device
        self.graphs: dict[int, Captured] = {}


@dataclass
class Captured:
    """A forward captured as a CUDA graph: replay reads ids and writes logits and the greedy
    tokens at fixed addresses."""
    graph: "torch.cuda.CUDAGraph"
    ids: torch.Tensor       # [batch, n] input, on the device
    logits: torch.Tensor    # [batch, vocab] output
    tokens: torch.Tensor    # [batch] output: logits' argmax, first index on ties
    mask: torch.Tensor | None = None  # graphs-all: a prompt's [1, 1, n, max_len] causal mask, which the graph reads


class _NoEvent:
    def record(self):
        pass


# Compiled compact code per model and (max_len, batch): one compilation serves every Engine of a
# model (the suite makes a local backend per cell). Weak: the entry goes with the model.
_COMPILED: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def lay_out(model) -> None:
    """Lay the weights out as the worker's are (FlatParams, one buffer per dtype) where the
    projections the compact code fuses lie apart, so that a local model runs the worker's
    products: one for q, k, v and one for gate, up."""
    if compact.apart(model):
        FlatParams(model)


def compiled(fn, tuned: bool):
    """fn compiled by inductor as the compact code is on CUDA: whole graph, static shapes; tuned:
    inductor's coordinate descent too (for a decode step, the target; tuning is slow on a large
    model: docs/evidence.md). One compilation per step length, model, dtype and cache size: more
    than dynamo's default 8 in one process (the tests' several models), never a silent eager
    fallback. No cudagraphs of inductor's own: the callers capture each step (with its argmax)."""
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, 64)
    options = {"coordinate_descent_tuning": True} if tuned else None
    return torch.compile(fn, fullgraph=True, dynamic=False, options=options)


def _compact(model, spec: EngineSpec, cuda: bool):
    """(code, forward for a decode step, forward for a prompt); on CUDA both compiled, the
    decode step's kernels tuned."""
    per_model = _COMPILED.setdefault(model, {})
    key = (spec.max_len, spec.batch)
    if key not in per_model:
        lay_out(model)
        code = compact.compact_code(model, spec.max_len, spec.batch)
        step = prompt = code.forward
        if cuda:
            step, prompt = compiled(code.forward, tuned=True), compiled(code.forward, tuned=False)
        per_model[key] = (code, step, prompt)
    return per_model[key]


class Engine:
    def __init__(self, model, spec: EngineSpec):
        self.model = model
        self.device = next(model.parameters()).device
        self.spec = spec = resolved(spec, model)
        self.threads = host_threads.apply(spec.threads, self.device)  # this process's: client or worker
        cuda = self.device.type == "cuda"
        if spec.name in GRAPHS and not cuda:
            raise UsageError(f"the {spec.name} engine captures CUDA graphs: it needs a CUDA device, not "
                             f"{self.device}; use --gap-engine eager, static or compact")
        self.code, self._step, self._prompt = (_compact(model, spec, cuda) if spec.name == "compact"
                                               else (None, None, None))
        self.captures = spec.name in GRAPHS or (spec.name == "compact" and cuda)
        self.io = SmallPinned(self.device)  # a step's ids in, its next tokens out
        self.capture_s: dict[int, float] = {}  # n tokens -> the first capture's seconds (compilation included)
        self._free: list[Slot] = []
        # one pair of events, reused: nothing made per forward
        self._span = ((torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) if cuda
                      else (_NoEvent(), _NoEvent()))

    # -- sessions ---------------------------------------------------------------------------
    def new_slot(self) -> Slot:
        if self.spec.name == "eager":
            from transformers import DynamicCache
            return Slot(DynamicCache())
        if self._free:
            slot = self._free.pop()
            self._rewind(slot, 0)
            return slot
        if self.code is not None:
            return Slot(self.code.new_cache())
        from transformers import StaticCache
        return Slot(StaticCache(config=self.model.config, max_cache_len=self.spec.max_len))

    def release(self, slot: Slot) -> None:
        if self.spec.name != "eager":
            self._free.append(slot)

    def clear(self, slot: Slot) -> None:
        """Zero the slot's cache and rewind it. Attention reads every position of a static cache
        behind its mask, and a masked NaN still poisons a row (NaN + -inf is NaN): what a warm-up
        on a skeleton's uninitialised weights wrote must not outlive it."""
        if self.spec.name == "eager":
            return  # a dynamic cache is never pooled
        with torch.inference_mode():
            for keys, values in self._layers(slot, []):
                if keys is not None:  # transformers' layers are made on first use
                    keys.zero_()
                    values.zero_()
        self._rewind(slot, 0)

    # -- steps --------------------------------------------------------------------------------
    def forward(self, slot: Slot, ids: torch.Tensor) -> torch.Tensor:
        """ids [batch, n] on the device; extends the slot's cache; last position's logits [batch, vocab]
        (for a replayed graph, its output buffer: read it before the next forward)."""
        return self.launch(slot, ids)[0]

    def next_tokens(self, slot: Slot, ids, clock) -> list[int]:
        """The greedy step as the local loop and the semantics-aware worker run it: ids (a step's
        tokens as batch ints, or a prompt [batch, n] on the CPU) -> the next token per sequence.
        One synchronisation: the ids go through a small pinned buffer into the graph's input, the
        argmax is part of the graph, and the tokens come back through another pinned buffer.
        clock: h2d_s the host's staging of the ids, compute_s from launch to the synchronisation
        (the copies in and out, the forward), d2h_s reading the tokens; gpu_span_s the forward's."""
        host = self.io.host_ids(ids)
        clock.lap("h2d_s", sync=False)
        _, tokens = self.launch(slot, host)
        out = self.io.start_download(tokens)
        if self.device.type == "cuda":
            torch.cuda.current_stream(self.device).synchronize()
        clock.lap("compute_s", sync=False)
        clock.add("gpu_span_s", self.gpu_span_s())
        tokens = out.tolist()
        clock.lap("d2h_s", sync=False)
        return tokens

    def launch(self, slot: Slot, ids: torch.Tensor, events=None) -> tuple[torch.Tensor, torch.Tensor]:
        """Queue a forward: ids [batch, n] on the device or the host -> (logits [batch, vocab],
        tokens [batch]) on the device, not yet computed on an asynchronous one; events (the
        engine's own pair by default) on the stream bracket the forward's device work (gpu_span_s)."""
        events = events or self._span
        with torch.inference_mode():
            if self._replayable(slot, ids):
                step = slot.graphs.get(ids.shape[1]) or self._capture(slot, ids)
                events[0].record()
                step.ids.copy_(ids, non_blocking=True)
                step.graph.replay()
                logits, tokens = step.logits, step.tokens
            else:
                events[0].record()
                logits = self._eager(slot.cache, ids.to(self.device, non_blocking=True))
                tokens = torch.argmax(logits, dim=-1)
        events[1].record()
        slot.length += ids.shape[1]
        return logits, tokens

    def _replayable(self, slot: Slot, ids: torch.Tensor) -> bool:
        """compact replays any step (its position is on the device); graphs a decode step;
        graphs-all also a prompt into an empty cache. graphs keeps prompts eager: transformers 5.24
        shapes a prefill into an empty static cache from host-side state and documents prefill as
        never compiled (graphs-all passes the mask itself: _prompt_mask)."""
        if not self.captures or self.spec.name == "compact":
            return self.captures
        if ids.shape[1] == 1:
            return True
        return self.spec.name == "graphs-all" and slot.length == 0

    def _prompt_mask(self, n: int) -> torch.Tensor:
        """[1, 1, n, max_len] bool, True where query i may attend key j (j <= i): a prompt from position
        0 into the static cache. Given to the model, it replaces the mask transformers would build,
        whose choice of SDPA's is_causal reads the cache's position on the host."""
        return torch.ones(n, self.spec.max_len, dtype=torch.bool, device=self.device).tril()[None, None]

    def gpu_span_s(self) -> float | None:
        """Device time from the last forward's first to its last kernel (CUDA events; None off
        CUDA). Call after the device was synchronised. Not a sum of kernel times: gaps in which
        the GPU waited for the host's next launch are inside it (eager engines have many)."""
        start, end = self._span
        return None if isinstance(start, _NoEvent) else start.elapsed_time(end) / 1e3

    def _eager(self, cache, ids, mask=None):
        if self.code is not None:
            forward = self._step if ids.shape[1] == 1 else self._prompt
            return forward(ids, cache.keys, cache.values, cache.pos)
        return forward_step(self.model, ids, cache, attention_mask=mask)

    def _capture(self, slot: Slot, ids: torch.Tensor) -> Captured:
        """Warm the forward up on a side stream (as torch.cuda.graph requires; compact compiles
        here the first time), from where the cache is each time (a prompt's second warm-up would
        otherwise write past max_len), rewind, and capture; the cache's own position counter
        advances at each replay."""
        t0 = time.perf_counter()
        n = slot.length
        buf = ids.to(self.device, copy=True)  # the graph's own input: replays copy each step's ids into it
        mask = self._prompt_mask(ids.shape[1]) if ids.shape[1] > 1 and self.code is None else None
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(2):
                self._rewind(slot, n)
                torch.argmax(self._eager(slot.cache, buf, mask), dim=-1)
        torch.cuda.current_stream(self.device).wait_stream(side)
        self._rewind(slot, n)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            logits = self._eager(slot.cache, buf, mask)
            tokens = torch.argmax(logits, dim=-1)
        captured = slot.graphs[ids.shape[1]] = Captured(graph, buf, logits, tokens, mask)
        torch.cuda.synchronize(self.device)
        self.capture_s.setdefault(ids.shape[1], time.perf_counter() - t0)
        return captured

    # -- the cache as tensors (the naive mode ships it) ------------------------------------
    def seq_len(self, slot: Slot) -> int:
        return slot.length

    def kv(self, slot: Slot) -> list:
        """Per layer (keys, values) of the filled positions, [batch, kv_heads, seq, head_dim]."""
        n = self.seq_len(slot)
        if self.code is not None:
            return [(k[:, :, :n], v[:, :, :n]) for k, v in zip(slot.cache.keys, slot.cache.values)]
        return [(layer.keys[:, :, :n], layer.values[:, :, :n]) for layer in slot.cache.layers]

    def load_kv(self, slot: Slot, kv: list) -> None:
        """Fill a fresh slot's cache with kv (per layer keys, values), in place."""
        if self.spec.name == "eager":
            for i, (k, v) in enumerate(kv):
                slot.cache.update(k, v, i)
            slot.length = kv[0][0].shape[-2] if kv else 0
            return
        with torch.inference_mode():
            for (keys, values), (k, v) in zip(self._layers(slot, kv), kv):
                keys[:, :, :k.shape[-2]].copy_(k)
                values[:, :, :v.shape[-2]].copy_(v)
        self._rewind(slot, kv[0][0].shape[-2] if kv else 0)

    def _layers(self, slot: Slot, kv: list) -> list:
        """Per layer (keys, values) buffers of a static cache (transformers' made on first use,
        sized from the first keys it sees)."""
        if self.code is not None:
            return list(zip(slot.cache.keys, slot.cache.values))
        for layer, (k, v) in zip(slot.cache.layers, kv):
            if not layer.is_initialized:
                layer.lazy_initialization(k, v)
        return [(layer.keys, layer.values) for layer in slot.cache.layers]

    def _rewind(self, slot: Slot, n: int) -> None:
        """Set the static cache's position to n: later writes go there, positions past it are
        masked. In place: a captured graph reads the counter at its address."""
        slot.length = n
        with torch.inference_mode():
            if self.code is not None:
                slot.cache.rewind(n)
                return
            for layer in slot.cache.layers:
                if layer.is_initialized:
                    layer.cumulative_length.fill_(n)
