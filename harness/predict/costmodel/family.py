"""Compute carried to another model of the same family: the rule behind the projected pages
(harness/predict/project.py). A forward = its roofline on the target GPU + the overhead that a
calibrated model of the same family measured beyond its own roofline on the GPU it ran on:

  decode step = roofline step + layers x (reference's step - its roofline step) / its layers
  prefill     = roofline prefill + (reference's prefill - its roofline prefill)      (per forward)

The reference is the family's calibrated model nearest in layers (then the larger). Why per layer
for the step: a captured step replays the same kernels per layer between the weight streams. Why
per forward for the prefill: the engines that keep the prefill eager launch it from the host, and
between the family's calibrations its overhead did not grow with layers (calibration.md shows this
rule beside predict.scale_compute, the per-layer rule for both phases, across models).
A model of another family has no reference: its kernels per layer differ (ValueError)."""
from __future__ import annotations

from dataclasses import dataclass, replace
from functools import cache

from harness.measure.payload import Shape
from harness.predict.costmodel.predict import GPUS, Gpu, Overhead, overhead_of, roofline
from harness.predict.costmodel.terms import Components, Compute


@dataclass(frozen=True)
class Reference:
    """One calibrated model's compute beside its roofline on the GPU it ran on."""
    key: str                # Point.key: model/dtype
    family: str             # transformers' model_type (llama, gpt2)
    layers: int
    weights_bytes: int
    overhead: Overhead
    source: str             # the calibration JSON it was fitted on

    @property
    def prefill_forward_s(self) -> float:
        """The prefill's time beyond its roofline, per forward (at the reference's prompt)."""
        return max(0.0, self.overhead.measured_prefill_s - self.overhead.roofline_prefill_s)


@cache
def family_of(model: str) -> str:
    """A preset's (or local model directory's) transformers model_type."""
    from harness.compute.models import ModelSpec, load_config
    return load_config(ModelSpec(model, "fp16")).model_type


def references(c: Components, source: str = "") -> list[Reference]:
    """Every model whose compute c fitted, as a reference (c.gpu must be in costmodel.GPUS)."""
    return [Reference(key, family_of(key.split("/")[0]), c.shapes[key].layers, c.shapes[key].weights_bytes,
                      overhead_of(c, key), source or ", ".join(c.sources)) for key in c.compute]


def nearest(refs: list[Reference], family: str, shape: Shape) -> Reference:
    """The family's reference nearest in layers to shape, the larger of two as near."""
    mine = [r for r in refs if r.family == family]
    if not mine:
        raise ValueError(f"no calibration of the {family} family among {', '.join(r.key for r in refs) or 'none'}: "
                          "the family rule carries overhead within a family only")
    return min(mine, key=lambda r: (abs(r.layers - shape.layers), -r.weights_bytes))


def family_compute(refs: list[Reference], family: str, shape: Shape, gpu: Gpu,
                   with_overhead: bool = True) -> Compute:
    """Compute of shape on gpu by the family rule (the module's docstring); with_overhead=False:
    the roofline alone, the least it could take."""
    roof = roofline(shape, gpu)
    if not with_overhead:
        return roof
    ref = nearest(refs, family, shape)
    return replace(roof, prefill_s=roof.prefill_s + ref.prefill_forward_s,
                   step_s=roof.step_s + shape.layers * ref.overhead.step_layer_s,
                   source=f"roofline on {gpu.name} + overhead of {ref.overhead.source} "
                          f"(decode step: per layer x {shape.layers}; prefill: per forward)")


def gpu_of(c: Components) -> Gpu:
    """The public specification of the GPU c was calibrated on."""
    if c.gpu not in GPUS:
        raise KeyError(f"calibrated on {c.gpu!r}, which costmodel.GPUS does not describe: compute cannot be scaled")
    return GPUS[c.gpu]
