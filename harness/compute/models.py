"""Models without downloads: presets built from transformers configs with deterministic random
weights, or a local Hugging Face model directory.

Both hosts build the same skeleton from a `ModelSpec`; only the client materialises the weights
(they are what the naive mode ships). Random init is seeded and done on the CPU in fp32 before the
cast, so every machine gets bit-identical weights for the same (preset, seed, dtype); presets too
large for that (DEVICE_INIT) are made on a CUDA device instead.
"""
from __future__ import annotations

import functools
import inspect
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from harness.errors import UsageError

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def _gpt2(**kw):
    from transformers import GPT2Config
    return GPT2Config(**kw)


def _llama(**kw):
    from transformers import LlamaConfig
    return LlamaConfig(**kw)


# Random weights at transformers' default scale (std 0.02) make every preset repeat one token
# forever, which would let a broken cache or mode pass the same-tokens test; std 0.1 gives varied
# greedy tokens (checked for tiny and gpt2), so the equivalence tests have teeth.
INIT_STD = 0.1

# name -> (factory, kwargs). Sizes: tiny ~4 MB fp32; gpt2 124M; gpt2-medium 355M;
# llama-1b ~1.1B with grouped-query attention (32 query heads share 4 KV heads), the shape of
# TinyLlama-1.1B, whose KV cache per token is 8x smaller than its attention width suggests.
PRESETS = {
    "tiny": (_gpt2, dict(vocab_size=4096, n_positions=512, n_embd=128, n_layer=2, n_head=4,
                         bos_token_id=0, eos_token_id=0)),
    "tiny-llama": (_llama, dict(vocab_size=4096, hidden_size=128, intermediate_size=344,
                                num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
                                max_position_embeddings=512, bos_token_id=0, eos_token_id=0)),
    "gpt2": (_gpt2, dict()),
    "gpt2-medium": (_gpt2, dict(n_embd=1024, n_layer=24, n_head=16)),
    "llama-1b": (_llama, dict(vocab_size=32000, hidden_size=2048, intermediate_size=5632,
                              num_hidden_layers=22, num_attention_heads=32, num_key_value_heads=4,
                              max_position_embeddings=2048, tie_word_embeddings=False)),
    # Llama-3-8B's shape: 8.03 B parameters, 16 GB in bf16; its naive decode moves that every step
    "llama-8b": (_llama, dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336,
                              num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8,
                              max_position_embeddings=8192, rope_theta=500000.0, tie_word_embeddings=False)),
}
# Presets whose weights are made on a CUDA device, in the target dtype, one parameter at a time from
# one seeded generator (fast on the GPU, where fp32 init on a CPU would take minutes and 32 GB for
# the 8B: docs/evidence.md): preset -> init std. 0.02 still gave varied greedy tokens for the 8B.
# The same bits on every machine with the same torch and GPU kind (CUDA's Philox generator).
DEVICE_INIT = {"llama-8b": 0.02}


@dataclass(frozen=True)
class ModelSpec:
    """What both hosts need to build the same model: picklable, so it travels over RPC."""
    name: str = "tiny"      # a preset name or a local model directory
    dtype: str = "fp32"     # fp32 | fp16 | bf16
    seed: int = 0

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise UsageError(f"unknown dtype {self.dtype!r}: use one of {', '.join(DTYPES)}")
        if self.name not in PRESETS and not Path(self.name).is_dir():
            raise UsageError(f"unknown model {self.name!r}: use a preset ({', '.join(PRESETS)}) "
                             "or a local Hugging Face model directory")

    @property
    def torch_dtype(self) -> torch.dtype:
        return DTYPES[self.dtype]

    @property
    def is_local_dir(self) -> bool:
        return self.name not in PRESETS


def load_config(spec: ModelSpec):
    if spec.is_local_dir:
        from transformers import AutoConfig
        return AutoConfig.from_pretrained(spec.name, local_files_only=True)
    factory, kwargs = PRESETS[spec.name]
    return factory(initializer_range=INIT_STD, **kwargs)


def kv_geometry(config) -> tuple[int, int, int]:
    """(layers, key/value heads, head_dim) of a decoder's KV cache, from its (text) config."""
    text = config.get_text_config(decoder=True) if hasattr(config, "get_text_config") else config
    heads = text.num_attention_heads
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    return text.num_hidden_layers, kv_heads, getattr(text, "head_dim", None) or text.hidden_size // heads


def max_positions(config) -> int:
    for key in ("n_positions", "max_position_embeddings"):
        if getattr(config, key, None):
            return int(getattr(config, key))
    raise UsageError(f"config of {type(config).__name__} names no context length")


def build_model(spec: ModelSpec, device: str | torch.device, with_weights: bool = True):
    """The model in eval mode on `device`. with_weights=False gives the skeleton only (the
    server's, whose weights arrive over RPC).

    Both kinds are built the same way, a skeleton in the target dtype and then, for the client,
    load_state_dict: buffers that no state_dict carries (RoPE's inv_freq) must be computed
    alike on both hosts. Casting a whole fp32 model instead rounds inv_freq to fp16 on one side
    only, and llama-1b's greedy tokens then parted within the first few tokens on the H100.
    """
    from transformers import AutoModelForCausalLM
    from transformers.initialization import no_init_weights

    if spec.name in DEVICE_INIT:
        return _build_on_cuda(spec, torch.device(device), with_weights)
    # Skip random init in the skeleton (slow for llama-1b on a small CPU) but still run the
    # constructors: a meta-device skeleton would leave non-persistent buffers as garbage.
    with no_init_weights():
        model = AutoModelForCausalLM.from_config(load_config(spec), dtype=spec.torch_dtype)
    model.tie_weights()  # no_init_weights also skips init_weights(), which ties lm_head to wte
    if with_weights:
        model.load_state_dict(_weights(spec))
    model.generation_config.pad_token_id = model.generation_config.eos_token_id
    return model.to(device).eval()


def _build_on_cuda(spec: ModelSpec, device: torch.device, with_weights: bool):
    """A DEVICE_INIT preset: skeleton and weights made on a CUDA device (the target, or the first
    GPU for a CPU copy such as the client's weights), then moved to device."""
    from transformers import AutoModelForCausalLM
    from transformers.initialization import no_init_weights
    if not torch.cuda.is_available():
        raise UsageError(f"the {spec.name} preset makes its weights on a CUDA device (fp32 init of "
                         "billions of parameters on a CPU takes minutes): run it where torch sees a GPU")
    where = device if device.type == "cuda" else torch.device("cuda")
    with no_init_weights(), where:
        model = AutoModelForCausalLM.from_config(load_config(spec), dtype=spec.torch_dtype)
    if with_weights:
        gen = torch.Generator(device=where).manual_seed(spec.seed)
        with torch.no_grad():
            for _, p in model.named_parameters():
                if p.dim() >= 2:
                    p.normal_(0.0, DEVICE_INIT[spec.name], generator=gen)
                else:
                    p.fill_(1.0)  # norm weights: the identity scale
    model.generation_config.pad_token_id = model.generation_config.eos_token_id
    return model.to(device).eval()


def _weights(spec: ModelSpec) -> dict:
    """The client's weights: a local directory's, or seeded random ones initialised in fp32 on
    the CPU and then cast, so every machine gets the same bits for (preset, seed, dtype)."""
    from transformers import AutoModelForCausalLM
    if spec.is_local_dir:
        model = AutoModelForCausalLM.from_pretrained(spec.name, local_files_only=True,
                                                     dtype=spec.torch_dtype)
    else:
        torch.manual_seed(spec.seed)
        model = AutoModelForCausalLM.from_config(load_config(spec), dtype=torch.float32)
    return {k: v.to(spec.torch_dtype) for k, v in model.state_dict().items()}


def default_device() -> str:
    return os.environ.get("SGAP_DEVICE") or ("cuda" if torch.cuda.is_available() else "cpu")


def prompt_ids(config, prompt_len: int, seed: int, batch: int = 1) -> torch.Tensor:
    """Deterministic prompt token ids, shape [batch, prompt_len] (int64, CPU); row 0 is the same
    for every batch size."""
    g = torch.Generator().manual_seed(seed + 1)
    return torch.randint(0, config.vocab_size, (batch, prompt_len), generator=g)


@functools.cache
def cache_kwarg(model_cls) -> str:
    """The forward() keyword for the KV cache: `cache` in transformers >= 5.2x, where
    `past_key_values` is a deprecated alias; `past_key_values` in earlier 5.x (the GPU machine's
    5.17), where `cache=` would land in **kwargs and be silently ignored: no cache, wrong tokens."""
    return "cache" if "cache" in inspect.signature(model_cls.forward).parameters else "past_key_values"


def forward_step(model, input_ids: torch.Tensor, cache, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
    """One forward pass that extends `cache` in place; returns the last position's logits [1, vocab].

    `logits_to_keep=1` computes the lm_head for the last position only, as generate() does.
    attention_mask: a 4D mask to use as given (harness.compute.engine's prompt graphs); None: the
    model builds its own.
    """
    kw = {cache_kwarg(type(model)): cache}
    if attention_mask is not None:
        kw["attention_mask"] = attention_mask
    with torch.inference_mode():
        out = model(input_ids=input_ids, use_cache=True, logits_to_keep=1, **kw)
    return out.logits[:, -1, :]
