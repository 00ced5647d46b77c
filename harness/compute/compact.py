"""Compact decoder code for the families the presets use (Llama, GPT-2), written as gpt-fast
writes it: one function computes the forward of n new tokens at the cache's position over a static
KV cache, so that torch.compile can fuse the norms, rotary, activation and residual adds around
the matrix products, and a CUDA graph can replay the whole step (harness.compute.engine).

It reads the transformers model's own parameters, never a copy: weights loaded into that model in
place (harness.compute.staging.FlatParams) are what the next forward computes with. Projections
that one matrix product can serve (Llama's q, k, v; gate and up) are used as one matrix where the
parameters lie back to back in memory, as FlatParams lays out a state_dict; elsewhere each is its
own product. Numerics follow transformers' modules op for op (RMSNorm in fp32, rotary tables cast
to the model's dtype, the same activation), so greedy tokens agree with transformers' in fp32 and
logits within rounding in bf16 (tests/test_compact.py).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from harness.errors import UsageError


@dataclass
class Cache:
    """Per layer keys and values [batch, kv_heads, max_len, head_dim], and the filled length `pos`
    [1] int64 on the device: a forward reads it and advances it, so a replayed graph needs nothing
    from the host. Positions at or past pos are masked. A forward also takes pos [batch], each row
    at its own position (harness.compute.rows: sessions that joined at different times)."""
    keys: list
    values: list
    pos: torch.Tensor

    def rewind(self, n: int) -> None:
        self.pos.fill_(n)


def supported(model) -> str | None:
    """Why the compact code cannot run `model` (None: it can)."""
    cls = type(model).__name__
    if cls not in CODE:
        return f"{cls} is not one of the compact code's families ({', '.join(CODE)})"
    return CODE[cls].unsupported(model.config)


def apart(model) -> bool:
    """Whether the projections the code serves with one product (Llama's q, k, v; gate, up) lie
    apart in memory in this model (then they need FlatParams' layout to be one product)."""
    code = CODE.get(type(model).__name__)
    return code is LlamaCode and any(_adjacent(*ws) is None for ws in LlamaCode.fused(model.model.layers[0]))


def compact_code(model, max_len: int, batch: int) -> "LlamaCode | GPT2Code":
    why = supported(model)
    if why:
        raise UsageError(f"the compact engine cannot run this model: {why}; use --gap-engine graphs-all")
    return CODE[type(model).__name__](model, max_len, batch)


def _adjacent(*ws: torch.Tensor) -> torch.Tensor | None:
    """[sum of rows, cols]: ws stacked by rows as a view, where they lie back to back in one
    storage (FlatParams' layout); None otherwise."""
    a = ws[0]
    if not all(w.is_contiguous() and w.dim() == 2 and w.shape[1] == a.shape[1] and w.dtype == a.dtype
               and w.untyped_storage().data_ptr() == a.untyped_storage().data_ptr() for w in ws):
        return None
    offset = a.storage_offset()
    for w in ws:
        if w.storage_offset() != offset:
            return None
        offset += w.numel()
    return a.as_strided((sum(w.shape[0] for w in ws), a.shape[1]), a.stride())


def _proj(x: torch.Tensor, fused: torch.Tensor | None, ws: tuple, sizes: list[int]) -> list[torch.Tensor]:
    """x @ each of ws.T, as one product where the weights are adjacent."""
    if fused is not None:
        return list(torch.split(F.linear(x, fused), sizes, dim=-1))
    return [F.linear(x, w) for w in ws]


def _at(pos: torch.Tensor, b: int, n: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Where n new tokens of b rows go. pos [1], every row at one position (the tuned decode
    step: these ops are its compiled kernels') -> (positions [n], None); pos [b], a position per
    row -> (positions [b, n], rows [b, n]: each position's row, to index the cache per row).
    pos.numel() is static under torch.compile: each kind traces a graph of its own."""
    steps = torch.arange(n, device=pos.device)
    if pos.numel() == 1:
        return pos + steps, None
    return pos[:, None] + steps, torch.arange(b, device=pos.device)[:, None].expand(b, n)


def _table(table: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """table [max_len, hd] at _at's positions: [n, hd] shared by the rows, or [b, 1, n, hd] per
    row (the 1 broadcasts over heads)."""
    return table[positions] if positions.dim() == 1 else table[positions][:, None]


def _store(cache: torch.Tensor, x: torch.Tensor, positions: torch.Tensor, rows: torch.Tensor | None) -> None:
    """x [b, heads, n, hd] into cache [b, heads, max_len, hd] at _at's positions, in place."""
    if rows is None:
        cache[:, :, positions] = x
    else:
        # two index tensors apart put their dims first: the slots written are [b, n, heads, hd]
        cache[rows, :, positions] = x.transpose(1, 2)


def _mask(positions: torch.Tensor, max_len: int, groups: int) -> torch.Tensor:
    """positions [n] -> [groups x n, max_len] bool: query i (at positions[i]) sees keys
    0..positions[i], repeated for each query head of a key/value head (_attend's rows).
    positions [b, n] -> [b, 1, groups x n, max_len]: each row's own (the 1 broadcasts over
    key/value heads)."""
    keys = torch.arange(max_len, device=positions.device)
    if positions.dim() == 1:
        mask = keys[None, :] <= positions[:, None]  # [n, max_len]
        return mask.repeat(groups, 1)
    mask = keys <= positions[:, :, None]  # [b, n, max_len]
    return mask.repeat(1, groups, 1)[:, None]


def _attend(q, keys, values, mask, scale: float) -> torch.Tensor:
    """q [B, H, n, hd]; keys/values [B, KVH, max_len, hd] (H = KVH x groups); mask from _mask.
    Grouped queries attend as extra rows of their key/value head ([B, KVH, groups x n, hd]),
    so no key or value is copied per query head; each row's softmax is its own, so this is
    repeat_kv's attention. Returns [B, n, H x hd].
    A decode step (n = 1) has a few rows per head: written out as two products and a softmax in
    fp32, which inductor fuses around, it is faster than SDPA's kernels, which are shaped for long
    queries (docs/evidence.md); a prompt goes through SDPA."""
    b, h, n, hd = q.shape
    kvh = keys.shape[1]
    rows = q.reshape(b, kvh, h // kvh * n, hd)
    if n == 1:
        scores = torch.matmul(rows, keys.transpose(-1, -2)).float() * scale  # [B, KVH, rows, max_len]
        probs = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1).to(q.dtype)
        out = torch.matmul(probs, values)
    else:
        out = F.scaled_dot_product_attention(rows, keys, values, attn_mask=mask, scale=scale)
    return out.reshape(b, h, n, hd).transpose(1, 2).reshape(b, n, h * hd)  # a kernel may return it strided


# rope types whose frequencies transformers fixes when it builds the model (inv_freq and
# attention_scaling), so that a table per position is its forward; dynamic ones re-derive them
# from the sequence's length at every forward
STATIC_ROPE = ("default", "linear", "llama3", "yarn")


class LlamaCode:
    """LlamaForCausalLM: RMSNorm, rotary (default rope only), grouped-query attention, SwiGLU."""

    @staticmethod
    def unsupported(cfg) -> str | None:
        rope = (getattr(cfg, "rope_parameters", None) or {}).get("rope_type", "default")
        if rope not in STATIC_ROPE:
            return f"rope_type {rope!r} (the compact code takes rotary frequencies fixed at load: {', '.join(STATIC_ROPE)})"
        if getattr(cfg, "attention_bias", False) or getattr(cfg, "mlp_bias", False):
            return "biased projections"
        if cfg.hidden_act != "silu":
            return f"hidden_act {cfg.hidden_act!r}"
        return None

    def __init__(self, model, max_len: int, batch: int):
        cfg = model.config
        self.heads, self.kv_heads = cfg.num_attention_heads, cfg.num_key_value_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // self.heads
        self.eps = cfg.rms_norm_eps
        self.max_len, self.batch = max_len, batch
        self.dtype, self.device = model.dtype, model.device
        self.embed = model.model.embed_tokens.weight
        self.norm = model.model.norm.weight
        self.lm_head = model.lm_head.weight
        self.layers = [self._layer(layer) for layer in model.model.layers]
        # transformers' rotary per position, as a table: its inv_freq (which its rope type's init
        # made), the same fp32 ops per element, then its scaling and its cast
        rotary = model.model.rotary_emb
        freqs = torch.arange(max_len, device=self.device).float()[:, None] * rotary.inv_freq.float()
        emb = torch.cat((freqs, freqs), dim=-1)
        self.cos = (emb.cos() * rotary.attention_scaling).to(self.dtype)  # [max_len, head_dim]
        self.sin = (emb.sin() * rotary.attention_scaling).to(self.dtype)

    @staticmethod
    def fused(layer) -> tuple[tuple, tuple]:
        """The weights one product serves: (q, k, v), (gate, up)."""
        a, m = layer.self_attn, layer.mlp
        return (a.q_proj.weight, a.k_proj.weight, a.v_proj.weight), (m.gate_proj.weight, m.up_proj.weight)

    def _layer(self, layer) -> dict:
        a, m = layer.self_attn, layer.mlp
        qkv, gate_up = self.fused(layer)
        return {"ln1": layer.input_layernorm.weight, "ln2": layer.post_attention_layernorm.weight,
                "qkv": qkv, "qkv_fused": _adjacent(*qkv), "o": a.o_proj.weight,
                "gate_up": gate_up, "gate_up_fused": _adjacent(*gate_up), "down": m.down_proj.weight}

    def new_cache(self) -> Cache:
        shape = (self.batch, self.kv_heads, self.max_len, self.head_dim)
        return Cache([torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in self.layers],
                     [torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in self.layers],
                     torch.zeros(1, dtype=torch.long, device=self.device))

    def _rms(self, x, w):
        # transformers' LlamaRMSNorm: in fp32, then back to the input's dtype before the scale
        h = x.float()
        return w * (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + self.eps)).to(x.dtype)

    @staticmethod
    def _rotate(x, cos, sin):
        half = x.shape[-1] // 2
        return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin

    def forward(self, ids: torch.Tensor, keys: list, values: list, pos: torch.Tensor) -> torch.Tensor:
        """ids [B, n] at positions pos..pos+n-1 -> the last position's logits [B, vocab]; writes the
        n positions' keys and values and advances pos by n, in place. pos [1] or [B] (_at)."""
        b, n = ids.shape
        positions, rows = _at(pos, b, n)                             # [n] or [B, n]
        cos, sin = _table(self.cos, positions), _table(self.sin, positions)  # [n, hd] or [B, 1, n, hd]
        x = F.embedding(ids, self.embed)                             # [B, n, D]
        mask = _mask(positions, self.max_len, self.heads // self.kv_heads)
        q_size, kv_size = self.heads * self.head_dim, self.kv_heads * self.head_dim
        for i, w in enumerate(self.layers):
            h = self._rms(x, w["ln1"])
            q, k, v = _proj(h, w["qkv_fused"], w["qkv"], [q_size, kv_size, kv_size])
            q = self._rotate(q.view(b, n, self.heads, self.head_dim).transpose(1, 2), cos, sin)
            k = self._rotate(k.view(b, n, self.kv_heads, self.head_dim).transpose(1, 2), cos, sin)
            _store(keys[i], k, positions, rows)
            _store(values[i], v.view(b, n, self.kv_heads, self.head_dim).transpose(1, 2), positions, rows)
            x = x + F.linear(_attend(q, keys[i], values[i], mask, self.head_dim ** -0.5), w["o"])
            h = self._rms(x, w["ln2"])
            gate, up = _proj(h, w["gate_up_fused"], w["gate_up"], [w["down"].shape[1]] * 2)
            x = x + F.linear(F.silu(gate) * up, w["down"])
        pos.add_(n)
        return F.linear(self._rms(x[:, -1], self.norm), self.lm_head)


class GPT2Code:
    """GPT2LMHeadModel: learned positions, LayerNorm, fused qkv (Conv1D: x @ W + b), GELU MLP,
    the head tied to the token embedding."""

    @staticmethod
    def unsupported(cfg) -> str | None:
        if cfg.scale_attn_by_inverse_layer_idx or cfg.reorder_and_upcast_attn or not cfg.scale_attn_weights:
            return "a non-default attention scaling"
        return None

    def __init__(self, model, max_len: int, batch: int):
        from transformers.activations import ACT2FN
        cfg = model.config
        self.heads, self.head_dim = cfg.n_head, cfg.n_embd // cfg.n_head
        self.eps = cfg.layer_norm_epsilon
        self.act = ACT2FN[cfg.activation_function]  # transformers' own, so the MLP rounds alike
        self.max_len, self.batch = max_len, batch
        self.dtype, self.device = model.dtype, model.device
        t = model.transformer
        self.wte, self.wpe = t.wte.weight, t.wpe.weight
        self.ln_f = (t.ln_f.weight, t.ln_f.bias)
        self.lm_head = model.lm_head.weight
        self.layers = [{"ln1": (blk.ln_1.weight, blk.ln_1.bias), "ln2": (blk.ln_2.weight, blk.ln_2.bias),
                        "attn": (blk.attn.c_attn.weight, blk.attn.c_attn.bias),
                        "proj": (blk.attn.c_proj.weight, blk.attn.c_proj.bias),
                        "fc": (blk.mlp.c_fc.weight, blk.mlp.c_fc.bias),
                        "out": (blk.mlp.c_proj.weight, blk.mlp.c_proj.bias)} for blk in t.h]

    def new_cache(self) -> Cache:
        shape = (self.batch, self.heads, self.max_len, self.head_dim)
        return Cache([torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in self.layers],
                     [torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in self.layers],
                     torch.zeros(1, dtype=torch.long, device=self.device))

    def _learned(self, positions: torch.Tensor, rows: torch.Tensor | None) -> torch.Tensor:
        """The positions to look the learned table up at. Per row, clamped to the table: a row that
        a batched step leaves out sits at the cache's spare last position (harness.compute.rows),
        which may be one past the table; its output is discarded."""
        return positions if rows is None else positions.clamp(max=self.wpe.shape[0] - 1)

    @staticmethod
    def _conv1d(x, wb):
        w, bias = wb  # transformers' Conv1D: weight [in, out]
        return torch.addmm(bias, x.reshape(-1, x.shape[-1]), w).view(*x.shape[:-1], w.shape[1])

    def forward(self, ids: torch.Tensor, keys: list, values: list, pos: torch.Tensor) -> torch.Tensor:
        """As LlamaCode.forward."""
        b, n = ids.shape
        d = self.heads * self.head_dim
        positions, rows = _at(pos, b, n)
        x = F.embedding(ids, self.wte) + F.embedding(self._learned(positions, rows), self.wpe)  # [B, n, D]
        mask = _mask(positions, self.max_len, 1)
        for i, w in enumerate(self.layers):
            h = F.layer_norm(x, (d,), *w["ln1"], self.eps)
            q, k, v = (t.view(b, n, self.heads, self.head_dim).transpose(1, 2)
                       for t in self._conv1d(h, w["attn"]).split(d, dim=-1))
            _store(keys[i], k, positions, rows)
            _store(values[i], v, positions, rows)
            x = x + self._conv1d(_attend(q, keys[i], values[i], mask, self.head_dim ** -0.5), w["proj"])
            h = F.layer_norm(x, (d,), *w["ln2"], self.eps)
            x = x + self._conv1d(self.act(self._conv1d(h, w["fc"])), w["out"])
        pos.add_(n)
        return F.linear(F.layer_norm(x[:, -1], (d,), *self.ln_f, self.eps), self.lm_head)


CODE = {"LlamaForCausalLM": LlamaCode, "GPT2LMHeadModel": GPT2Code}
