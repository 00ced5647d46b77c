"""The compact decoder code (harness/compute/compact.py) computes transformers' function: the same
greedy tokens in fp32 on the CPU, logits within rounding; fused projections where the weights lie
back to back, separate ones elsewhere, alike; a family it does not cover is refused with the fix.
On CUDA, compiled and captured in bf16 against transformers' own model: logits within bf16
rounding, with the largest difference and the first step where the greedy choice parts printed
(SGAP_COMPACT_MODELS=tiny,tiny-llama,llama-1b,... picks the models; -s shows the figures)."""
from __future__ import annotations

import os

import pytest
import torch

from harness.compute import compact
from harness.compute.engine import Engine, EngineSpec, default_engine
from harness.compute.models import ModelSpec, build_model, load_config, prompt_ids
from harness.compute.staging import FlatParams
from harness.compute.timers import Clock
from harness.errors import UsageError

STEPS = 10


def decode(engine: Engine, prompt, steps: int = STEPS, fed: list[int] | None = None):
    """Greedy tokens and each forward's logits (cloned: a replayed graph reuses its buffer).
    fed: the tokens to feed back instead of the engine's own (to compare logits on one history)."""
    slot = engine.new_slot()
    logits = [engine.forward(slot, prompt.to(engine.device)).clone()]
    for i in range(steps):
        token = logits[-1].argmax(-1, keepdim=True) if fed is None else torch.tensor([[fed[i]]], device=engine.device)
        logits.append(engine.forward(slot, token).clone())
    engine.release(slot)
    return [int(x.argmax()) for x in logits], logits


@pytest.mark.parametrize("name", ["tiny", "tiny-llama", "gpt2"])
def test_compact_code_gives_transformers_tokens(name):
    model = build_model(ModelSpec(name, "fp32"), "cpu")
    prompt = prompt_ids(model.config, 16, seed=0)
    ref_tokens, ref = decode(Engine(model, EngineSpec("static", 16 + STEPS + 1)), prompt)
    tokens, got = decode(Engine(model, EngineSpec("compact", 16 + STEPS + 1)), prompt)
    assert tokens == ref_tokens and len(set(tokens)) > 1
    for a, b in zip(got, ref):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)


def test_fused_and_separate_projections_agree():
    """FlatParams lays q, k, v (and gate, up) back to back: one product serves them, as views of
    the parameters; a model whose weights lie apart gets a product each, and the same logits."""
    spec = ModelSpec("tiny-llama", "fp32")
    apart, flat = build_model(spec, "cpu"), build_model(spec, "cpu")
    FlatParams(flat)
    a, b = compact.compact_code(apart, 24, 1), compact.compact_code(flat, 24, 1)
    assert a.layers[0]["qkv_fused"] is None and b.layers[0]["qkv_fused"] is not None
    fused = b.layers[0]["qkv_fused"]
    assert fused.data_ptr() == flat.model.layers[0].self_attn.q_proj.weight.data_ptr(), "a view, not a copy"
    prompt = prompt_ids(load_config(spec), 16, seed=0)
    outs = []
    for code in (a, b):
        cache = code.new_cache()
        with torch.inference_mode():
            outs.append(code.forward(prompt, cache.keys, cache.values, cache.pos))
        assert int(cache.pos) == 16, "the forward advances the cache's position"
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-5, atol=1e-5)


def test_weights_loaded_in_place_are_what_the_next_forward_reads():
    spec = ModelSpec("tiny", "fp32")
    model = build_model(spec, "cpu")
    FlatParams(model)
    engine = Engine(model, EngineSpec("compact", 24))
    prompt = prompt_ids(model.config, 8, seed=0)
    first = engine.forward(engine.new_slot(), prompt).clone()
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1.5)
    assert not torch.equal(engine.forward(engine.new_slot(), prompt), first)


def test_an_uncovered_family_is_refused_with_the_fix():
    from transformers import GPT2Config, GPT2LMHeadModel
    model = GPT2LMHeadModel(GPT2Config(n_layer=1, n_embd=32, n_head=2, vocab_size=64,
                                       scale_attn_by_inverse_layer_idx=True))
    assert "attention scaling" in compact.supported(model)
    with pytest.raises(UsageError, match="--gap-engine graphs-all"):
        Engine(model, EngineSpec("compact", 16))
    assert default_engine(model) == "eager", "off CUDA the default stays eager"


def test_the_step_takes_one_token_list_and_gives_one_back():
    """next_tokens, the lean step, on the CPU: ints in, ints out, the clock's three parts."""
    model = build_model(ModelSpec("tiny-llama", "fp32"), "cpu")
    engine = Engine(model, EngineSpec("compact", 24))
    slot, clock = engine.new_slot(), Clock(engine.device)
    first = engine.next_tokens(slot, prompt_ids(model.config, 8, seed=0), clock)
    second = engine.next_tokens(slot, first, clock)
    assert isinstance(second, list) and isinstance(second[0], int) and slot.length == 9
    assert set(clock.split) == {"h2d_s", "compute_s", "d2h_s"}


GPU_MODELS = os.environ.get("SGAP_COMPACT_MODELS", "tiny,tiny-llama").split(",")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="compiles and captures on CUDA: run it on a GPU host "
                    "(pytest tests/test_compact.py -s)")
@pytest.mark.parametrize("name", GPU_MODELS)
def test_compiled_compact_against_transformers_in_bf16(name):
    """Compiled and captured in bf16, against transformers' own model in bf16, each against an
    fp32 reference (transformers', static cache), all fed the reference's tokens: the compact
    code's error is no more than bf16 rounding makes transformers' own (twice it, and a margin
    for a model whose own error is tiny). Prints both errors and the first step whose greedy choice
    parts from transformers' bf16 one."""
    spec = ModelSpec(name, "bf16")
    prompt = prompt_ids(load_config(spec), 32, seed=0)
    ref_tokens, ref = decode(Engine(build_model(ModelSpec(name, "fp32"), "cuda"), EngineSpec("static", 32 + STEPS + 1)),
                             prompt)
    model = build_model(spec, "cuda")
    hf_tokens, hf = decode(Engine(model, EngineSpec("static", 32 + STEPS + 1)), prompt, fed=ref_tokens)
    tokens, got = decode(Engine(model, EngineSpec("compact", 32 + STEPS + 1)), prompt, fed=ref_tokens)

    def error(xs):  # the largest difference from the reference, over its largest logit
        return max(float((a.float() - b).abs().max() / b.abs().max()) for a, b in zip(xs, ref))
    parted = next((i for i, (a, b) in enumerate(zip(tokens, hf_tokens)) if a != b), None)
    print(f"\n{name} bf16 against fp32: transformers {error(hf):.2e}, compact {error(got):.2e} of the largest "
          f"logit; compact's greedy choice parts from transformers' bf16 one at step {parted}")
    assert error(got) <= 2 * error(hf) + 2 ** -8, "the compact code rounds worse than bf16 makes transformers"


def test_the_compiled_peer_runs_in_a_process_of_its_own():
    """harness.compute.peer: generate()'s time per token from a child process, compilation apart
    (on the CPU generate() does not compile: this checks the process and its one JSON line)."""
    from harness.compute import peer
    out = peer.run(ModelSpec("tiny", "fp32"), prompt_len=8, steps=3, repeats=2, batch=1, device="cpu")
    assert set(out) == {"compile_s", "tpot_s", "tpot_all_s"} and len(out["tpot_all_s"]) == 2 and out["tpot_s"] > 0
    with pytest.raises(RuntimeError, match="its own process"):
        peer.run(ModelSpec("tiny", "fp32"), prompt_len=8, steps=3, repeats=1, batch=1, device="nodevice")


def test_the_engine_gives_the_local_model_the_workers_layout():
    """The worker's parameters are one buffer per dtype (FlatParams), which makes q, k, v one
    product; a local model's lie apart until the compact engine lays them out the same way, so
    that the local loop runs the worker's products, with the same tokens."""
    spec = ModelSpec("tiny-llama", "fp32")
    model = build_model(spec, "cpu")
    assert compact.apart(model)
    prompt = prompt_ids(load_config(spec), 16, seed=0)
    before = decode(Engine(model, EngineSpec("static", 16 + STEPS + 1)), prompt)[0]
    engine = Engine(model, EngineSpec("compact", 16 + STEPS + 1))
    assert not compact.apart(model) and engine.code.layers[0]["qkv_fused"] is not None
    assert decode(engine, prompt)[0] == before


@pytest.mark.parametrize("rope", [{"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                   "original_max_position_embeddings": 64},
                                  {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64}])
def test_a_rope_type_fixed_at_load_computes_transformers_rotary(rope):
    """Llama-3's and YaRN's rotary: frequencies (and YaRN's attention scaling) fixed when the model
    is built, so the compact code's table per position gives transformers' logits."""
    from transformers import LlamaConfig, LlamaForCausalLM
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=512, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                      rope_parameters={"rope_theta": 10000.0, **rope}, initializer_range=0.1)
    model = LlamaForCausalLM(cfg).eval()
    assert compact.supported(model) is None
    prompt = torch.randint(0, 512, (1, 24))
    ref = decode(Engine(model, EngineSpec("static", 24 + STEPS + 1)), prompt)
    got = decode(Engine(model, EngineSpec("compact", 24 + STEPS + 1)), prompt)
    assert got[0] == ref[0]
    for a, b in zip(got[1], ref[1]):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
