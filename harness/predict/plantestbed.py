"""The plan's testbed and workload (an A100 80GB SXM host with a 25 GbE NIC; Llama-2-7B,
Llama-3-8B and Llama-3-70B shapes in fp16), and the procedure that moves a calibration's cost
model onto a GPU host: harness/predict/project.py writes the pages, projcheck.py checks the
procedure. Every constant is a public specification, each with its source."""
from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from harness.compute.modes import MODES
from harness.compute.phase import PHASES
from harness.measure.payload import Shape, shape_of
from harness.predict import costmodel as cm

# --- the plan's testbed and workload: public figures, each with its source -------------------------------

GPU = cm.GPUS["NVIDIA A100-SXM4-80GB"]
NIC_GBPS = 25.0                 # 25 GbE line rate (IEEE 802.3by)
MTU = 1500                      # Ethernet's default
TCP_IP_HEADERS = 20 + 32        # IPv4 + TCP with timestamps (payload_model.HEADER_BYTES adds Ethernet's 14)
MSS = MTU - TCP_IP_HEADERS      # TCP payload per segment: 1448 B
FRAME_ON_WIRE = MTU + 14 + 4 + 8 + 12   # + Ethernet header, FCS, preamble, inter-frame gap: 1538 B
GOODPUT_SHARE = MSS / FRAME_ON_WIRE     # TCP goodput at line rate
ADDED_RTT_S = 0.0               # propagation within a rack is microseconds; the RPC's own software
                                # round trip is in call_s, measured on the calibration host
PROMPT_LEN, STEPS, DTYPE = 128, 50, "fp16"   # the plan's workload (the suite's defaults)


@dataclass(frozen=True)
class Target:
    slug: str
    name: str
    config: dict            # transformers LlamaConfig keyword arguments (the model's published config.json)
    params_stated: float    # the published parameter count, checked against the shape built here
    source: str

    @property
    def family(self) -> str:
        """The transformers model_type of the config (every target is a LlamaConfig)."""
        from transformers import LlamaConfig
        return LlamaConfig.model_type


TARGETS = (
    Target("llama-2-7b", "Llama-2-7B",
           dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008, num_hidden_layers=32,
                num_attention_heads=32, num_key_value_heads=32, max_position_embeddings=4096,
                tie_word_embeddings=False),
           6.74e9, "meta-llama/Llama-2-7b-hf config.json (Touvron et al. 2023: 6.74 B parameters)"),
    Target("llama-3-8b", "Llama-3-8B",
           dict(vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
                num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=8192,
                rope_theta=500000.0, tie_word_embeddings=False),
           8.03e9, "meta-llama/Meta-Llama-3-8B config.json (8.03 B parameters)"),
    Target("llama-3-70b", "Llama-3-70B",
           dict(vocab_size=128256, hidden_size=8192, intermediate_size=28672, num_hidden_layers=80,
                num_attention_heads=64, num_key_value_heads=8, max_position_embeddings=8192,
                rope_theta=500000.0, tie_word_embeddings=False),
           70.6e9, "meta-llama/Meta-Llama-3-70B config.json (70.6 B parameters)"),
)


def target_shape(t: Target) -> Shape:
    """payload_model.shape_of on the meta device: the shape only, no weights, no download."""
    from transformers import LlamaConfig
    return shape_of(LlamaConfig(**t.config), torch.float16)


def nic_link(gbps: float = NIC_GBPS, segment_B: float | None = MSS, label: str = "") -> cm.Link:
    """A link at a line rate by the NIC rule: TCP goodput = line rate x MSS / frame on the wire.
    segment_B: the TCP payload a counted packet holds (a NIC at MTU 1500: MSS; None: as calibrated,
    where the link is the calibration's kind, a veth counting GSO super-packets)."""
    return cm.Link(goodput_Bps=gbps * 1e9 / 8 * GOODPUT_SHARE, rtt_s=ADDED_RTT_S, segment_B=segment_B,
                   nominal_gbps=gbps, label=label or f"{gbps:g} GbE NIC, MTU {MTU}")


def fits(shape: Shape) -> bool:
    """Weights and the whole cache of a decode (prompt + steps + 1 tokens) in one GPU's memory
    (activations and the CUDA context are left out: a generous test)."""
    return shape.weights_bytes + shape.kv(PROMPT_LEN + STEPS + 1) <= GPU.memory_B


def moved(c: cm.Components, key: str, shape: Shape, compute: cm.Compute, gpu: cm.Gpu = GPU) -> cm.Components:
    """The calibration's components on another GPU host: compute given (the family rule's or
    another's), host<->device rates scaled by the PCIe links' ratio (the calibration host's
    efficiency over its nominal PCIe kept); per-call costs, the RPC path and the protocol bytes as
    calibrated."""
    bus = gpu.pcie_Bps / cm.gpu_of(c).pcie_Bps
    return replace(c, load_Bps=c.load_Bps * bus, d2h_Bps=c.d2h_Bps * bus, compute={key: compute},
                   shapes={key: shape}, gpu=gpu.name)


def on_testbed(c: cm.Components, refs: list[cm.Reference], key: str, shape: Shape, family: str,
               gpu: cm.Gpu = GPU, with_overhead: bool = True) -> cm.Components:
    """The procedure: c moved to gpu, compute by the family rule from refs (costmodel.family)."""
    return moved(c, key, shape, cm.family_compute(refs, family, shape, gpu, with_overhead), gpu)


def per_layer_on(c: cm.Components, key: str, shape: Shape, gpu: cm.Gpu = GPU) -> cm.Components:
    """The procedure before the family rule: compute = roofline + layers x the per-layer overhead of
    c's largest model, in both phases (costmodel.scale_compute)."""
    ref = max(c.compute, key=lambda k: c.shapes[k].weights_bytes)
    return moved(c, key, shape, cm.scale_compute(c, ref, shape, gpu), gpu)


def points_for(t: Target, shape: Shape) -> list[cm.Point]:
    link = nic_link()
    return [cm.Point(t.slug, DTYPE, shape, mode, phase, PROMPT_LEN, STEPS, link)
            for phase in PHASES for mode in MODES]
