"""The local greedy loop one step ahead on an asynchronous device (gpt-fast's and vLLM's loop).

A greedy step's input is the previous step's argmax, which is already on the device: the local
loop queues step k+1, fed from step k's token by a device copy, before it waits for step k's
token to reach the host. The GPU then never idles while the host wakes, reads a token and
launches the next graph; the host still reads every token, as soon as its copy lands. Only the
steps the request announced are queued ahead (its max_new_tokens: run_phase's steps), so no work
is run and thrown away. The semantics-aware worker cannot do this: its client decides each token.

Ring of two: step k's token lands in pinned buffer k % 2 and its events are pair k % 2; step k+2,
the next to reuse them, is queued only after the host has read step k.
"""
from __future__ import annotations

import torch


class Ahead:
    def __init__(self, engine):
        assert engine.device.type == "cuda", "running ahead needs an asynchronous device"
        self.engine = engine
        self.out = [torch.empty(0, dtype=torch.long) for _ in range(2)]
        self.landed = [torch.cuda.Event() for _ in range(2)]
        self.spans = [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(2)]
        self.slot, self.tokens, self.last = None, None, None
        self.queued = self.read = self.left = 0

    def prefill(self, slot, prompt: torch.Tensor, steps: int, clock) -> list[int]:
        """prompt [batch, n] on the CPU; steps: the decode steps that will follow."""
        self.slot, self.queued, self.read, self.left = slot, 0, 0, steps
        host = self.engine.io.host_ids(prompt)
        clock.lap("h2d_s", sync=False)
        self._queue(host)
        return self._next(clock)

    def step(self, tokens: list[int], clock) -> list[int]:
        """tokens: the last ones returned (greedy), which the device already fed to the next step."""
        assert tokens == self.last, f"the local loop runs greedily ahead: step() got {tokens}, not its last tokens {self.last}"
        return self._next(clock)

    def _queue(self, ids: torch.Tensor) -> None:
        """Queue a forward of ids ([batch, n], host or device) and its token's copy to the host."""
        i = self.queued % 2
        _, self.tokens = self.engine.launch(self.slot, ids, self.spans[i])  # [batch] on the device
        if self.out[i].numel() != self.tokens.numel():
            self.out[i] = torch.empty(self.tokens.numel(), dtype=torch.long, pin_memory=True)
        self.out[i].copy_(self.tokens, non_blocking=True)
        self.landed[i].record()
        self.queued += 1

    def _next(self, clock) -> list[int]:
        """The next token to read, with the step after it queued first where one is announced."""
        if self.queued == self.read:  # nothing queued for it: steps beyond the announced ones
            self._queue(self.tokens[:, None])
        if self.left > 0 and self.queued == self.read + 1:
            self.left -= 1
            self._queue(self.tokens[:, None])
        i = self.read % 2
        self.landed[i].synchronize()
        clock.lap("compute_s", sync=False)
        start, end = self.spans[i]
        clock.add("gpu_span_s", start.elapsed_time(end) / 1e3)
        self.last = self.out[i].tolist()
        self.read += 1
        clock.lap("d2h_s", sync=False)
        return self.last
