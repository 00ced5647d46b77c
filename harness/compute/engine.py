"""How a model's forward steps are run, the same way on the client (local mode) and in the worker
(both remote modes), so that all three modes compute the same function.

- eager:  a DynamicCache and one Python-launched forward per step (transformers' default). On the
  H100 host it is bound by kernel launches: gpt2 decode took 59 ms a token, llama-1b 61 ms, an
  8B Llama-3 shape 79 ms, with the GPU mostly idle.
- static: a StaticCache ([batch, kv_heads, max_len, head_dim] per layer, written in place at a
  position the cache keeps on the device), still launched eagerly: the graphs engine's cache and
  numerics without the graph, so the CPU can test everything but the capture.
- graphs: static, with each slot's decode step captured once as a CUDA graph and replayed: one
  launch a token (H100: gpt2 0.90 ms, llama-1b 3.1 ms, the 8B shape 8.9 ms a token).
- graphs-all: graphs, and each prompt length's prefill (from position 0) captured too. Why: an
  eager prefill is bound by the host as well: on the H200 llama-1b's 128-token prefill took 25 ms
  of host time (792 kernel launches) against 3 ms of GPU time, and moved 1.25-1.9x from process
  to process. The prompt runs behind an explicit causal mask: transformers' own prefill into an
  empty static cache decides on is_causal by reading the cache's position on the host (a sync,
  which a capture cannot hold). The default on CUDA: on the H200 llama-1b's local prefill took
  4.6-4.9 ms (128 tokens) and 6.2-6.5 ms (512) across 8 sweep points, where graphs' took 18-30 ms
  and moved 1.3x between them (results/h200/sweep-llama-1b-v4 against -v3).

A cache lives in a Slot. Slots are pooled: a released slot keeps its buffers and its captured
graph for the next session, so capture (15 ms for gpt2, 1 s for the 8B shape) is paid once per
slot, not per session. The graph reads the parameters and the cache at fixed addresses: weights
must be copied into the parameters in place (harness.compute.staging.FlatParams), never rebound.

The static cache attends over max_len positions behind a mask, so its fp16 numerics differ from
the dynamic cache's (llama-1b's greedy tokens parted at the 34th token on the H100): compare an
engine with itself, and with generate() using the same kind of cache.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from harness.compute import threads as host_threads
from harness.compute.models import forward_step
from harness.errors import UsageError

ENGINES = ("eager", "static", "graphs", "graphs-all")
GRAPHS = ("graphs", "graphs-all")  # the engines that capture CUDA graphs
AUTO = "auto"  # graphs-all on a CUDA device, else eager: each host picks for the device it runs on


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


def default_engine(device: str) -> str:
    return "graphs-all" if str(device).startswith("cuda") else "eager"


def resolved(spec: EngineSpec, device) -> EngineSpec:
    """spec with AUTO replaced by what runs on device."""
    return spec if spec.name != AUTO else replace(spec, name=default_engine(device))


class Slot:
    """One session's KV cache and, for graphs, its captured decode step (and, for graphs-all, its
    captured prefill per prompt length)."""

    def __init__(self, cache):
        self.cache = cache
        self.length = 0         # positions filled, kept here so that reading it never syncs the device
        self.step: Captured | None = None  # graphs: the decode step, once captured
        self.prompts: dict[int, Captured] = {}  # graphs-all: prompt length -> its prefill from position 0


@dataclass
class Captured:
    """A forward captured as a CUDA graph: replay reads ids and writes logits at fixed addresses."""
    graph: "torch.cuda.CUDAGraph"
    ids: torch.Tensor       # [batch, n] input, on the device (n = 1: a decode step)
    logits: torch.Tensor    # [batch, vocab] output
    mask: torch.Tensor | None = None  # a prompt's [1, 1, n, max_len] causal mask, which the graph reads


class _NoEvent:
    def record(self):
        pass


class Engine:
    def __init__(self, model, spec: EngineSpec):
        self.model = model
        self.device = next(model.parameters()).device
        self.spec = spec = resolved(spec, self.device)
        self.threads = host_threads.apply(spec.threads, self.device)  # this process's: client or worker
        if spec.name in GRAPHS and self.device.type != "cuda":
            raise UsageError(f"the {spec.name} engine captures CUDA graphs: it needs a CUDA device, not "
                             f"{self.device}; use --gap-engine eager (or static)")
        self._free: list[Slot] = []
        cuda = self.device.type == "cuda"  # one pair of events, reused: nothing made per forward
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
        from transformers import StaticCache
        return Slot(StaticCache(config=self.model.config, max_cache_len=self.spec.max_len))

    def release(self, slot: Slot) -> None:
        if self.spec.name != "eager":
            self._free.append(slot)

    # -- steps --------------------------------------------------------------------------------
    def forward(self, slot: Slot, ids: torch.Tensor) -> torch.Tensor:
        """ids [batch, n] on the device; extends the slot's cache; last position's logits [batch, vocab]
        (for a replayed graph, its output buffer: read it before the next forward). On CUDA, events
        on the stream bracket the forward's device work (gpu_span_s)."""
        events = self._span
        events[0].record()
        with torch.inference_mode():
            if not self._replayable(slot, ids):
                logits = self._eager(slot.cache, ids)
            else:
                step = self._graph(slot, ids)
                events[0].record()  # after a capture: the span is the step, not the capture
                step.ids.copy_(ids)
                step.graph.replay()
                logits = step.logits
        events[1].record()
        slot.length += ids.shape[1]
        return logits

    def _replayable(self, slot: Slot, ids: torch.Tensor) -> bool:
        """graphs replays decode steps (the cache keeps its position on the device); graphs-all
        also a prompt into an empty cache. graphs keeps prompts eager: transformers 5.24 shapes a
        prefill into an empty static cache from host-side state and documents prefill as never
        compiled (graphs-all passes the mask itself: _prompt_mask)."""
        if ids.shape[1] == 1:
            return self.spec.name in GRAPHS
        return self.spec.name == "graphs-all" and slot.length == 0

    def _graph(self, slot: Slot, ids: torch.Tensor) -> Captured:
        if ids.shape[1] == 1:
            return slot.step or self._capture(slot, ids)
        return slot.prompts.get(ids.shape[1]) or self._capture(slot, ids, self._prompt_mask(ids.shape[1]))

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
        return forward_step(self.model, ids, cache, attention_mask=mask)

    def _capture(self, slot: Slot, ids: torch.Tensor, mask: torch.Tensor | None = None) -> Captured:
        """Warm the forward up on a side stream (as torch.cuda.graph requires), from where the cache
        is each time (a prompt's second warm-up would otherwise write past max_len), rewind, and
        capture; the cache's own position counter advances at each replay. mask: a prompt's."""
        n = slot.length
        buf = ids.clone()
        side = torch.cuda.Stream(self.device)
        side.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(side):
            for _ in range(2):
                self._rewind(slot, n)
                self._eager(slot.cache, buf, mask)
        torch.cuda.current_stream(self.device).wait_stream(side)
        self._rewind(slot, n)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            logits = self._eager(slot.cache, buf, mask)
        captured = Captured(graph, buf, logits, mask)  # only a whole capture goes back to the pool
        if ids.shape[1] == 1:
            slot.step = captured
        else:
            slot.prompts[ids.shape[1]] = captured
        return captured

    # -- the cache as tensors (the naive mode ships it) ------------------------------------
    def seq_len(self, slot: Slot) -> int:
        return slot.length

    def kv(self, slot: Slot) -> list:
        """Per layer (keys, values) of the filled positions, [batch, kv_heads, seq, head_dim]."""
        n = self.seq_len(slot)
        return [(layer.keys[:, :, :n], layer.values[:, :, :n]) for layer in slot.cache.layers]

    def load_kv(self, slot: Slot, kv: list) -> None:
        """Fill a fresh slot's cache with kv (per layer keys, values), in place."""
        if self.spec.name == "eager":
            for i, (k, v) in enumerate(kv):
                slot.cache.update(k, v, i)
            slot.length = kv[0][0].shape[-2] if kv else 0
            return
        with torch.inference_mode():
            for layer, (k, v) in zip(slot.cache.layers, kv):
                if not layer.is_initialized:
                    layer.lazy_initialization(k, v)
                layer.keys[:, :, :k.shape[-2]].copy_(k)
                layer.values[:, :, :v.shape[-2]].copy_(v)
        self._rewind(slot, kv[0][0].shape[-2] if kv else 0)

    @staticmethod
    def _rewind(slot: Slot, n: int) -> None:
        """Set the static cache's position to n: later writes go there, positions past it are
        masked. In place: the captured graph reads the counter at its address."""
        slot.length = n
        with torch.inference_mode():
            for layer in slot.cache.layers:
                if layer.is_initialized:
                    layer.cumulative_length.fill_(n)
