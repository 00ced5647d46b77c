"""Packing many tensors into one buffer per dtype for the wire: the same bytes, views back."""
from __future__ import annotations

import torch

from harness.compute.models import ModelSpec, build_model
from harness.compute.packing import pack, pack_kv, tensor_bytes, unpack, unpack_kv


def test_state_dict_round_trip_counts_tied_weights_once():
    model = build_model(ModelSpec("tiny"), "cpu")
    sd = model.state_dict()
    assert sd["lm_head.weight"].data_ptr() == sd["transformer.wte.weight"].data_ptr(), "tiny ties its weights"
    packed = pack(sd)
    # tiny by hand (GPT-2, vocab V 4096, positions P 512, width E 128, 2 layers), numel:
    # wte V*E 524,288; wpe P*E 65,536; per layer ln_1 2E 256, c_attn E*3E+3E 49,536, c_proj
    # E*E+E 16,512, ln_2 256, c_fc E*4E+4E 66,048, mlp c_proj 4E*E+E 65,664 = 198,272, x 2 =
    # 396,544; ln_f 256; lm_head is wte (tied): 986,624 numel x 4 bytes (fp32) = 3,946,496
    assert tensor_bytes(sd) == 3_946_496, "tied lm_head counted twice, or a tensor missed"
    assert sum(t.nbytes for t in sd.values()) == 3_946_496 + 524_288 * 4  # listed: lm_head again
    assert len(packed.buffers) == 1
    assert packed.buffers["float32"].numel() * 4 == 3_946_496, "packing adds or drops bytes"
    assert tensor_bytes(packed) == 3_946_496
    back = unpack(packed)
    assert list(back) == list(sd)
    for name, t in sd.items():
        assert torch.equal(back[name], t), name
    # the tied pair stays one storage after the trip, so a receiver loads it once
    assert back["lm_head.weight"].data_ptr() == back["transformer.wte.weight"].data_ptr()
    model.load_state_dict(back)


def test_views_not_copies_and_mixed_dtypes():
    tensors = {"a": torch.arange(6, dtype=torch.float16).reshape(2, 3), "b": torch.ones(4, dtype=torch.int64),
               "c": torch.arange(3, dtype=torch.float16), "t": torch.zeros(2, 2).t()}  # non-contiguous
    packed = pack(tensors)
    assert sorted(packed.buffers) == ["float16", "float32", "int64"]
    back = unpack(packed)
    for k, t in tensors.items():
        assert torch.equal(back[k], t) and back[k].dtype == t.dtype, k
    back["a"][0, 0] = 7
    assert packed.buffers["float16"][0] == 7, "unpack must give views into the buffer"


def test_kv_round_trip():
    kv = [(torch.randn(1, 2, 5, 4), torch.randn(1, 2, 5, 4)) for _ in range(3)]
    back = unpack_kv(pack_kv(kv))
    assert len(back) == 3
    for (k, v), (k2, v2) in zip(kv, back):
        assert torch.equal(k, k2) and torch.equal(v, v2)
