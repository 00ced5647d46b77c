"""Every session's tokens against its prompt's from the suite's one-session local loop
(harness.compute.modes.LocalBackend, the engine the cells run): batching sessions, sharing a
worker or crossing the link must change no token. In fp32 they are equal; in bf16 a batched
product may round apart, so the share that agree, and where each first parts, is the report."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from harness.compute.engine import AUTO, EngineSpec
from harness.compute.models import ModelSpec, build_model, default_device, load_config
from harness.compute.modes import LocalBackend
from harness.serve.load import prompt_ids, prompt_seed
from harness.serve.metrics import RequestRecord


@dataclass(frozen=True)
class Agreement:
    sessions: int
    agree: int
    parted: list[str]       # one line per session that parted: where, and the two tokens

    @property
    def share(self) -> float:
        return self.agree / self.sessions if self.sessions else 1.0


def agreement(spec: ModelSpec, device: str | None, seed: int, prompt_len: int,
              records: list[RequestRecord]) -> Agreement:
    model = build_model(spec, device or default_device())
    vocab = load_config(spec).vocab_size
    steps = max((len(r.tokens) for r in records), default=1)
    backend = LocalBackend(model, EngineSpec(AUTO, prompt_len + steps + 1))
    parted = []
    for r in records:
        if not r.tokens:
            continue
        ids = prompt_ids(prompt_seed(seed, r.client, r.session), prompt_len, vocab)
        want = [backend.prefill(torch.tensor([ids]))[0]]
        while len(want) < len(r.tokens):
            want.append(backend.step([want[-1]])[0])
        first = next((i for i, (a, b) in enumerate(zip(r.tokens, want)) if a != b), None)
        if first is not None:
            parted.append(f"client {r.client} session {r.session}: token {first} is {r.tokens[first]}, "
                          f"the one-session loop's {want[first]}")
    backend.end()
    sessions = sum(1 for r in records if r.tokens)
    return Agreement(sessions, sessions - len(parted), parted)
