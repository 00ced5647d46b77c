"""Batched rows (harness/compute/rows.py): sessions decoded together in one static cache, each row
at its own position, get each the tokens it gets alone, from the compact code at batch 1 and from
transformers' own model (a DynamicCache); sessions join and leave between steps; a row left out of
a step keeps its cache and position bit for bit; a step past max_len is refused in one line; a
prefill clears what the row's previous session left. fp32 on the CPU (eager: the CUDA path
compiles and captures the same step)."""
from __future__ import annotations

import functools

import pytest
import torch

from harness.compute import compact
from harness.compute.engine import Engine, EngineSpec
from harness.compute.models import ModelSpec, build_model, prompt_ids
from harness.compute.rows import Rows
from harness.errors import UsageError

STEPS = 6
MAX_LEN = 32


@functools.cache
def model_of(name: str):
    return build_model(ModelSpec(name, "fp32"), "cpu")


def greedy(engine: Engine, prompt: torch.Tensor, steps: int) -> list[int]:
    """One session alone: the prompt's next token, then `steps` more, fed back."""
    slot = engine.new_slot()
    tokens = [int(engine.forward(slot, prompt).argmax())]
    for _ in range(steps):
        tokens.append(int(engine.forward(slot, torch.tensor([[tokens[-1]]], device=prompt.device)).argmax()))
    engine.release(slot)
    return tokens


def alone(name: str, prompt: torch.Tensor, steps: int = STEPS) -> list[int]:
    """The compact code at batch 1."""
    return greedy(Engine(model_of(name), EngineSpec("compact", MAX_LEN)), prompt, steps)


def run(rows: Rows, got: dict[int, list[int]], steps: int) -> None:
    """`steps` steps of every row in got, each fed its last token."""
    for _ in range(steps):
        for row, token in rows.step({r: t[-1] for r, t in got.items()}).items():
            got[row].append(token)


@pytest.mark.parametrize("name", ["tiny", "tiny-llama"])
def test_sessions_together_get_their_tokens_alone_and_transformers(name):
    model = model_of(name)
    rows = Rows(model, slots=4, max_len=MAX_LEN)
    prompts = {0: prompt_ids(model.config, 5, seed=1), 1: prompt_ids(model.config, 12, seed=2),
               3: prompt_ids(model.config, 8, seed=3)}  # row 2 stays empty
    got = {r: [rows.prefill(r, p if r else p[0].tolist())] for r, p in prompts.items()}  # a list, or [1, n]
    run(rows, got, STEPS)
    for r, p in prompts.items():
        assert got[r] == alone(name, p), f"row {r}: the batched rows part from the session alone"
        assert got[r] == greedy(Engine(model, EngineSpec("eager")), p, STEPS), f"row {r}: not transformers' tokens"
        assert rows.length(r) == p.shape[1] + STEPS and len(set(got[r])) > 1
    assert rows.length(2) == 0


@pytest.mark.parametrize("name", ["tiny", "tiny-llama"])
def test_sessions_join_and_leave_between_steps(name):
    """Row 0 starts, row 1 joins two steps later, row 0 is freed and reused by a new session,
    row 1 sits a step out: each session still gets its own tokens alone."""
    cfg = model_of(name).config
    a, b, c = (prompt_ids(cfg, n, seed=s) for n, s in ((6, 1), (9, 2), (4, 3)))
    rows = Rows(model_of(name), slots=2, max_len=MAX_LEN)
    first = {0: [rows.prefill(0, a)]}
    run(rows, first, 2)
    got = {**first, 1: [rows.prefill(1, b)]}
    run(rows, got, 2)
    rows.free(0)
    assert rows.length(0) == 0 and rows.length(1) == 9 + 2
    second = {0: [rows.prefill(0, c)], 1: got[1]}
    run(rows, second, 2)
    run(rows, {0: second[0]}, 1)  # row 1 left out
    run(rows, second, 1)
    assert first[0] == alone(name, a, 4)
    assert second[1] == alone(name, b, 5)
    assert second[0] == alone(name, c, 4)


def test_a_row_left_out_keeps_its_cache_and_position_bit_for_bit():
    """Row 1 full (at max_len: its write must land in bounds), row 2 part-filled, row 3 never
    used: a step of row 0 alone changes none of their positions or cached keys and values."""
    cfg = model_of("tiny-llama").config
    rows = Rows(model_of("tiny-llama"), slots=4, max_len=16)
    got = {0: [rows.prefill(0, prompt_ids(cfg, 5, seed=1))]}
    rows.prefill(1, prompt_ids(cfg, 16, seed=2))
    rows.prefill(2, prompt_ids(cfg, 7, seed=3))
    kept = [(k[1:, :, :16].clone(), v[1:, :, :16].clone()) for k, v in zip(rows.keys, rows.values)]
    pos = rows.pos[1:].clone()
    run(rows, got, 3)
    assert torch.equal(rows.pos[1:], pos) and [rows.length(r) for r in (1, 2, 3)] == [16, 7, 0]
    for (k, v), (k0, v0) in zip(zip(rows.keys, rows.values), kept):
        assert torch.equal(k[1:, :, :16], k0) and torch.equal(v[1:, :, :16], v0)
    assert int(rows.pos[0]) == rows.length(0) == 8


def test_a_full_row_at_the_end_of_learned_positions_is_left_out_in_bounds():
    """GPT-2's position table ends at n_positions: a full row there sits a step out at the
    spare position one past it (looked up clamped) and keeps its cache."""
    model = model_of("tiny")
    n = model.config.n_positions
    with pytest.raises(UsageError, match=f"max_len <= {n}"):
        Rows(model, slots=2, max_len=n + 1)
    rows = Rows(model, slots=2, max_len=n)
    rows.prefill(1, prompt_ids(model.config, n, seed=2))
    kept = [k[1, :, :n].clone() for k in rows.keys]
    prompt = prompt_ids(model.config, 5, seed=1)
    got = {0: [rows.prefill(0, prompt)]}
    run(rows, got, 2)
    assert got[0] == alone("tiny", prompt, 2)
    assert all(torch.equal(k[1, :, :n], k0) for k, k0 in zip(rows.keys, kept)) and int(rows.pos[1]) == n


def test_a_step_past_max_len_is_refused_in_one_line():
    cfg = model_of("tiny").config
    rows = Rows(model_of("tiny"), slots=2, max_len=8)
    token = rows.prefill(0, prompt_ids(cfg, 7, seed=1))
    rows.step({0: token})  # the 8th position: the last
    with pytest.raises(UsageError, match="max_len 8") as err:
        rows.step({0: token})
    assert "\n" not in str(err.value) and rows.length(0) == 8
    with pytest.raises(UsageError, match="max_len 8"):
        rows.prefill(1, prompt_ids(cfg, 9, seed=1))
    with pytest.raises(UsageError, match="slots"):
        rows.step({2: token})


def test_a_prefill_clears_what_the_rows_last_session_left():
    """NaN planted in row 1 (every position, the spare one too) and its position moved: a masked
    NaN still poisons attention, so the prefill must zero the row."""
    cfg = model_of("tiny-llama").config
    rows = Rows(model_of("tiny-llama"), slots=2, max_len=MAX_LEN)
    a, b = prompt_ids(cfg, 6, seed=1), prompt_ids(cfg, 10, seed=2)
    got = {0: [rows.prefill(0, a)]}
    with torch.inference_mode():
        for k, v in zip(rows.keys, rows.values):
            k[1].fill_(float("nan"))
            v[1].fill_(float("nan"))
        rows.pos[1] = 20
    got[1] = [rows.prefill(1, b)]
    run(rows, got, STEPS)
    assert got[0] == alone("tiny-llama", a) and got[1] == alone("tiny-llama", b)


def test_a_position_per_row_computes_what_one_position_does():
    """compact's pos [B] (each row its own) against pos [1] with every row at one position:
    the same logits and cache."""
    model = model_of("tiny-llama")
    code = compact.compact_code(model, 24, 3)
    prompt = prompt_ids(model.config, 10, seed=0, batch=3)
    shared, per_row = code.new_cache(), code.new_cache()
    per_row.pos = torch.zeros(3, dtype=torch.long)
    with torch.inference_mode():
        outs = [[code.forward(ids, c.keys, c.values, c.pos) for ids in (prompt[:, :7], prompt[:, 7:])]
                for c in (shared, per_row)]
    for a, b in zip(*outs):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(shared.keys[1], per_row.keys[1], rtol=1e-5, atol=1e-5)
    assert per_row.pos.tolist() == [10, 10, 10]


def test_an_uncovered_family_is_refused_with_the_fix():
    from transformers import GPT2Config, GPT2LMHeadModel
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64,
                                       scale_attn_by_inverse_layer_idx=True))
    with pytest.raises(UsageError, match="graphs-all"):
        Rows(model, slots=2, max_len=16)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="compiles and captures on CUDA: run it on a GPU host")
@pytest.mark.parametrize("name", ["tiny", "tiny-llama"])
def test_the_captured_step_gives_each_session_its_tokens_alone_on_cuda(name):
    """The compiled, captured step (fp32: the same function as the CPU's) with sessions joining
    and sitting out, against the compact engine at batch 1 on the same GPU."""
    model = build_model(ModelSpec(name, "fp32"), "cuda")
    a, b = prompt_ids(model.config, 6, seed=1), prompt_ids(model.config, 9, seed=2)
    rows = Rows(model, slots=3, max_len=MAX_LEN)
    got = {0: [rows.prefill(0, a)]}
    run(rows, got, 2)
    got[2] = [rows.prefill(2, b)]
    run(rows, got, 2)
    run(rows, {2: got[2]}, 1)  # row 0 left out
    engine = Engine(model, EngineSpec("compact", MAX_LEN))
    assert got[0] == greedy(engine, a.cuda(), 4) and got[2] == greedy(engine, b.cuda(), 3)
    assert set(rows.capture_s) == {"step", "prompt 6", "prompt 9"} and rows.pos.tolist() == [10, 0, 12]
