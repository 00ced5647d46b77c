"""Tokens between steps: the greedy choice of the next token, and ids as a step takes them.
Shared by the client's backends (harness.compute.modes) and the worker (harness.compute.worker), so
the argmax is the same function wherever a mode takes it."""
from __future__ import annotations

import torch


def on_device(ids, device) -> torch.Tensor:
    """ids: a prompt [batch, T] tensor, or a step's tokens (batch ints) -> [batch, n] on device."""
    if isinstance(ids, torch.Tensor):
        return ids.to(device)
    return torch.tensor(ids, dtype=torch.long, device=device).unsqueeze(1)


TOKEN_BYTES = 8  # a token id counted as int64, as ids travel in tensors: the payload model's unit


def greedy(logits: torch.Tensor) -> list[int]:
    """The next token per sequence: argmax over the vocabulary, first index on ties (as
    generate()). logits [batch, vocab] on the host -> batch ints. The engine takes the same argmax
    on the device (harness.compute.engine.Engine.next_tokens)."""
    return torch.argmax(logits, dim=-1).tolist()
