"""Many sessions decoded together: one static KV cache of `slots` rows over the compact code
(harness.compute.compact), each row one session's, each at its own position, so that a worker can
batch whichever sessions have a step waiting (continuous batching) into one forward.

- prefill(row, ids) runs the batch-1 forward on views of that row's cache and position, which
  write in place; the row is cleared first (a masked NaN still poisons attention: Engine.clear).
- step({row: token}) is ONE forward over all the rows ([slots, 1] ids, a position per row). Rows
  not in the step are left out by position: for the forward they sit at a spare position past
  max_len (the cache holds max_len + 1), where their writes land and no row at work looks (each
  row's queries see keys 0..its position < max_len), and their positions are restored after it;
  their cache below the spare position is kept bit for bit.
On CUDA the step is compiled by inductor (tuned, as the engine's decode step) and captured as a
CUDA graph with its argmax (static inputs: the ids and which rows are in; output: the tokens), a
prompt compiled without capture; on a CPU everything runs eagerly. Single-threaded: the caller
serialises. Lengths are kept on the host, so reading one never syncs the device.
"""
from __future__ import annotations

import time
import weakref

import torch

from harness.compute import compact
from harness.compute.engine import compiled, lay_out
from harness.errors import UsageError

# Compiled code per model and (slots, max_len): the code holds no cache, so Rows of one shape
# share one compilation (as harness.compute.engine._COMPILED). Weak: the entry goes with the model.
_COMPILED: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _compiled(model, slots: int, max_len: int, cuda: bool):
    """(code over max_len + 1 positions, the batched step, the prompt's forward); compiled on CUDA."""
    per_model = _COMPILED.setdefault(model, {})
    if (slots, max_len) not in per_model:
        lay_out(model)
        code = compact.compact_code(model, max_len + 1, slots)

        def step(ids, active, keys, values, pos):
            """ids [slots, 1], active [slots] bool -> greedy tokens [slots]; rows left out run at
            the spare position max_len and get their positions back."""
            before = pos.clone()
            pos.copy_(torch.where(active, pos, max_len))
            tokens = torch.argmax(code.forward(ids, keys, values, pos), dim=-1)
            pos.copy_(torch.where(active, pos, before))
            return tokens
        prompt = code.forward
        if cuda:
            step, prompt = compiled(step, tuned=True), compiled(code.forward, tuned=False)
        per_model[(slots, max_len)] = (code, step, prompt)
    return per_model[(slots, max_len)]


class Rows:
    """`slots` sessions' rows of one static cache over the compact code (the module's docstring);
    keys/values per layer [slots, kv_heads, max_len + 1, head_dim], pos [slots] on the device."""

    def __init__(self, model, slots: int, max_len: int):
        why = compact.supported(model)
        if why:
            raise UsageError(f"batched rows run the compact code, which cannot run this model: {why}; "
                             "serve it one session per slot (harness.compute.engine, --gap-engine graphs-all)")
        if slots < 1 or max_len < 1:
            raise UsageError(f"Rows needs slots >= 1 and max_len >= 1, not {slots} and {max_len}")
        self.slots, self.max_len = slots, max_len
        self.device = next(model.parameters()).device
        self.cuda = self.device.type == "cuda"
        self.code, self._step, self._prompt = _compiled(model, slots, max_len, self.cuda)
        table = getattr(self.code, "wpe", None)  # GPT-2's learned positions end where its table does
        if table is not None and max_len > table.shape[0]:
            raise UsageError(f"max_len {max_len} is past the model's {table.shape[0]} learned positions: "
                             f"use max_len <= {table.shape[0]}")
        cache = self.code.new_cache()  # [slots, kv_heads, max_len + 1, head_dim] per layer
        self.keys, self.values = cache.keys, cache.values
        self.pos = torch.zeros(slots, dtype=torch.long, device=self.device)  # a position per row
        self._length = [0] * slots
        # the step's static input (ids, rows in) and its host side: pinned on CUDA, one copy each way
        self._host_ids = torch.zeros(slots, 1, dtype=torch.long, pin_memory=self.cuda)
        self._host_active = torch.zeros(slots, dtype=torch.bool, pin_memory=self.cuda)
        self._host_tokens = torch.zeros(slots, dtype=torch.long, pin_memory=self.cuda)
        self._ids = self._host_ids.to(self.device, copy=True)
        self._active = self._host_active.to(self.device, copy=True)
        self._graph = None  # (CUDAGraph, its tokens [slots]) once captured
        self.capture_s: dict = {}  # "step" | "prompt <n>" -> the first compile (and capture)'s seconds

    # -- rows -----------------------------------------------------------------------------------
    def prefill(self, row: int, ids) -> int:
        """Clear the row, fill positions 0..n-1 with ids (list[int] or LongTensor [1, n] on the
        CPU), return the greedy next token (argmax, first index on ties)."""
        ids = torch.as_tensor(ids, dtype=torch.long).reshape(1, -1)
        self._check_row(row)
        if not 1 <= ids.shape[1] <= self.max_len:
            raise UsageError(f"a prompt of {ids.shape[1]} tokens does not fit a row: use 1 to max_len {self.max_len}")
        self.free(row)
        t0 = time.perf_counter()
        with torch.inference_mode():
            r = slice(row, row + 1)  # views: the batch-1 forward writes the row in place
            logits = self._prompt(ids.to(self.device), [k[r] for k in self.keys], [v[r] for v in self.values],
                                  self.pos[r])
            token = int(torch.argmax(logits[0]))
        if self.cuda:
            self.capture_s.setdefault(f"prompt {ids.shape[1]}", time.perf_counter() - t0)
        self._length[row] = ids.shape[1]
        return token

    def step(self, tokens: dict[int, int]) -> dict[int, int]:
        """One forward over every row: each row in tokens takes its token at its position;
        returns row -> its greedy next token. Rows not in tokens keep their cache and position."""
        if not tokens:
            return {}
        for row in tokens:
            self._check_row(row)
            if self._length[row] >= self.max_len:
                raise UsageError(f"row {row} is full: a step would pass max_len {self.max_len} "
                                 "(free the row, or make Rows with a larger max_len)")
        ids, active = self._host_ids.numpy(), self._host_active.numpy()  # host memory: no tensor op per row
        ids[:], active[:] = 0, False
        for row, token in tokens.items():
            ids[row, 0], active[row] = token, True
        with torch.inference_mode():
            self._ids.copy_(self._host_ids, non_blocking=self.cuda)
            self._active.copy_(self._host_active, non_blocking=self.cuda)
            out = (self._replay() if self.cuda
                   else self._step(self._ids, self._active, self.keys, self.values, self.pos))
            self._host_tokens.copy_(out, non_blocking=self.cuda)
        if self.cuda:
            torch.cuda.current_stream(self.device).synchronize()
        host = self._host_tokens.tolist()
        for row in tokens:
            self._length[row] += 1
        return {row: host[row] for row in tokens}

    def free(self, row: int) -> None:
        """Zero the row's cache (the spare position too) and set its position to 0."""
        self._check_row(row)
        with torch.inference_mode():
            for k, v in zip(self.keys, self.values):
                k[row].zero_()
                v[row].zero_()
            self.pos[row:row + 1].zero_()  # a slice: no host scalar to sync on
        self._length[row] = 0

    def length(self, row: int) -> int:
        """Positions filled in the row (kept on the host)."""
        self._check_row(row)
        return self._length[row]

    def _check_row(self, row: int) -> None:
        if not 0 <= row < self.slots:
            raise UsageError(f"row {row} is not one of the {self.slots} slots (0 to {self.slots - 1})")

    # -- the CUDA graph -----------------------------------------------------------------------
    def _replay(self) -> torch.Tensor:
        """Replay the captured step (capturing it the first time) on the static inputs."""
        if self._graph is None:
            self._graph = self._capture()
        graph, tokens = self._graph
        graph.replay()
        return tokens

    def _capture(self) -> tuple:
        """Warm the step up on a side stream (as torch.cuda.graph requires; it compiles here) and
        capture it. Every row is left out meanwhile: the warm-ups write only spare positions and
        restore every position, so the rows at work are untouched; the caller's rows are copied
        in again before the replay."""
        t0 = time.perf_counter()
        active = self._active.clone()
        self._active.zero_()
        current = torch.cuda.current_stream(self.device)
        side = torch.cuda.Stream(self.device)
        side.wait_stream(current)
        with torch.cuda.stream(side):
            for _ in range(2):
                self._step(self._ids, self._active, self.keys, self.values, self.pos)
        current.wait_stream(side)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            tokens = self._step(self._ids, self._active, self.keys, self.values, self.pos)
        self._active.copy_(active)
        torch.cuda.synchronize(self.device)
        self.capture_s.setdefault("step", time.perf_counter() - t0)
        return graph, tokens
