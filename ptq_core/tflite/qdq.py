"""A plan in PT2E form: the quantize/dequantize ops litert-torch turns into integer TFLite kernels.

What lives here: :class:`PointQDQ` (one activation point as ``quantized_decomposed.quantize_per_tensor
-> dequantize_per_tensor`` in int8), :class:`QuantizedWeight` (a Conv/Linear whose weight goes
through ``quantize_per_channel -> dequantize_per_channel``, or per tensor), :func:`weight_forms`
(which layers carry ptq_core's weight scales, which take the converter's own and why) and
:func:`pt2e_module`, the module the converter is given. Not here: converting, reading the file back
(:mod:`ptq_core.tflite.export`), running it (:mod:`ptq_core.tflite.runtime`).

This is the graph ``torchao``'s ``convert_pt2e(fold_quantize=False)`` produces, with ptq_core's
numbers in it instead of an observer's: litert-torch lowers these ops to ``odml_torch.uniform_*``
custom calls and its converter (``qdq_conversion_mode="STATIC"``) folds each ``dequantize -> op ->
quantize`` into an integer kernel whose tensors keep the scales and zero points written here. The
weight stays a float constant that the converter quantizes itself at ptq_core's scale: a
``dequantize_per_channel`` of an int8 constant is rejected ("operand must be a quantized tensor").
Because the weight given is the plan's fake-quantized one (``set_weights``), ``round(w / s)`` is
exactly ptq_core's integer code, algorithms' (GPTQ, AdaRound) included.

The placement is :func:`ptq_core.onnx.qdq.export_module`'s (graph.py's rules, plus a requantize
after pass-through ops such as max pooling, which TFLite's int8 MAX_POOL_2D needs anyway), with
this module's Q/DQ in place of the ONNX one.

TFLite's int8 is ptq_core's grid: a uint8 activation (scale s, zero point z, [0, 255]) is the int8
one (s, z - 128, [-128, 127]); symmetric weights are int8 [-127, 127] with zero point 0 in both.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.ao.quantization.fx._decomposed  # noqa: F401  registers torch.ops.quantized_decomposed
import torch.nn.functional as F
from torch import nn

from ..graph import PreparedModel
from ..onnx.qdq import export_module
from ..quantize import LayerQuant, PointQuant, QuantPlan

_QD = torch.ops.quantized_decomposed
UINT8_SHIFT = -128  # uint8 code c is int8 code c - 128 (same grid, zero point moved with it)
# litert-torch's own PT2E weight observer, used where ptq_core's weight grid cannot be carried: per-channel
# symmetric min-max over [-127, 127] (get_symmetric_quantization_config(is_per_channel=True)).
CONVERTER_WEIGHT_RULE = "litert-torch's per-channel symmetric min-max on the FP32 weights"


class PointQDQ(nn.Module):
    """One static 8-bit activation point in TFLite's int8: ``quantize_per_tensor -> dequantize_per_tensor``."""

    def __init__(self, point: str, index: int, pq: PointQuant) -> None:
        super().__init__()
        assert pq.quant.mode == "static" and pq.scale is not None and pq.zero_point is not None  # checked by the export
        shift = UINT8_SHIFT if pq.qmin >= 0 else 0
        self.point, self.index = point, index
        self.scale, self.zero_point = float(pq.scale), int(pq.zero_point) + shift
        self.qmin, self.qmax = pq.qmin + shift, pq.qmax + shift

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        q = _QD.quantize_per_tensor(x, self.scale, self.zero_point, self.qmin, self.qmax, torch.int8)
        return _QD.dequantize_per_tensor(q, self.scale, self.zero_point, self.qmin, self.qmax, torch.int8)

    def extra_repr(self) -> str:
        return f"point={self.point}, scale={self.scale:.6g}, zero_point={self.zero_point} (int8)"


@dataclass
class WeightForm:
    """How one Conv/Linear's weight goes into the .tflite."""

    layer: str
    source: Literal["ptq_core", "converter", "float"]
    reason: str | None = None  # why not ptq_core's (source "converter" or "float")
    scale: torch.Tensor | None = None  # float32, [out] per channel or [] per tensor
    zero_point: torch.Tensor | None = None  # int64, same shape
    qmin: int = -127
    qmax: int = 127


def _converter_weight_qparams(w: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """litert-torch's own weight qparams for ``w`` (its PT2E quantizer's per-channel observer)."""
    from litert_torch.quantize.pt2e_quantizer import get_symmetric_quantization_config
    from torchao.quantization.pt2e.prepare import _create_obs_or_fq_from_qspec

    spec = get_symmetric_quantization_config(is_per_channel=True).weight
    assert spec is not None
    # The observer exactly as prepare_pt2e builds it from the spec (dtype int8, per_channel_symmetric, [-127, 127]).
    observer = _create_obs_or_fq_from_qspec(spec, {}, False)
    observer(w.detach().float())
    scale, zp = observer.calculate_qparams()
    return scale.float(), zp.to(torch.int64)


def weight_form(lq: LayerQuant, fp32_weight: torch.Tensor) -> WeightForm:
    """Carry ``lq``'s weight grid when TFLite's integer kernels can run it, else say why and use the converter's."""
    name = lq.unit.name
    if lq.quant is None or lq.qparams is None:
        return WeightForm(name, "float", "kept in float by the config (keep_float): TFLite runs it in float between "
                                         "a DEQUANTIZE and a QUANTIZE")
    qp = lq.qparams
    scale, zp = qp.scale, qp.zero_point
    reason = None
    if qp.granularity == "per_group":
        if scale.dim() == 2 and scale.shape[1] == 1:  # one group per row: per-channel
            scale, zp = scale[:, 0], zp[:, 0]
        else:
            reason = (f"per-group weights (group_size {qp.group_size}): TFLite's integer Conv/FullyConnected "
                      "kernels take one scale per output channel, not per group")
    if reason is None and bool((zp != 0).any()):
        reason = ("asymmetric weights (zero point != 0): TFLite's int8 Conv/FullyConnected kernels require weight "
                  "zero point 0")
    if reason is not None:
        s, z = _converter_weight_qparams(fp32_weight)
        return WeightForm(name, "converter", f"{reason}; used {CONVERTER_WEIGHT_RULE}", s, z, -127, 127)
    return WeightForm(name, "ptq_core", None, scale.float().clone(), zp.to(torch.int64).clone(), qp.qmin, qp.qmax)


class QuantizedWeight(nn.Module):
    """A Conv1d/Conv2d/Linear whose weight passes through quantize -> dequantize at ``form``'s scales."""

    scale: torch.Tensor
    zero_point: torch.Tensor

    def __init__(self, layer: nn.Module, form: WeightForm) -> None:
        super().__init__()
        assert form.scale is not None and form.zero_point is not None
        self.layer = layer  # keeps the weight (the plan's fake-quantized one, or FP32 for the converter's) and bias
        self.register_buffer("scale", form.scale)
        self.register_buffer("zero_point", form.zero_point)
        self.qmin, self.qmax = form.qmin, form.qmax
        # Per tensor: Python numbers, so torch.export sees constants (a tensor's .item() is data-dependent to it).
        self.per_tensor = (float(form.scale), int(form.zero_point)) if form.scale.dim() == 0 else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.layer.weight
        if self.per_tensor is not None:
            s, z = self.per_tensor
            q = _QD.quantize_per_tensor(w, s, z, self.qmin, self.qmax, torch.int8)
            w = _QD.dequantize_per_tensor(q, s, z, self.qmin, self.qmax, torch.int8)
        else:
            q = _QD.quantize_per_channel(w, self.scale, self.zero_point, 0, self.qmin, self.qmax, torch.int8)
            w = _QD.dequantize_per_channel(q, self.scale, self.zero_point, 0, self.qmin, self.qmax, torch.int8)
        if isinstance(self.layer, nn.Linear):
            return F.linear(x, w, self.layer.bias)
        assert isinstance(self.layer, nn.Conv1d | nn.Conv2d)
        return self.layer._conv_forward(x, w, self.layer.bias)  # honours padding_mode (reflect, circular)


def weight_forms(prepared: PreparedModel, plan: QuantPlan) -> list[WeightForm]:
    """One :class:`WeightForm` per Conv/Linear layer, in network order."""
    return [weight_form(lq, prepared.weight(lq.unit)) for lq in plan.layers.values()]


def pt2e_module(prepared: PreparedModel, plan: QuantPlan, forms: list[WeightForm]) -> torch.fx.GraphModule:
    """A copy of the prepared model in PT2E Q/DQ form, ready for ``litert_torch.convert``."""
    gm, _order = export_module(prepared, plan, qdq=PointQDQ, onnx_forms=False)
    for form in forms:
        if form.source == "float":
            continue
        module = plan.layers[form.layer].unit.module
        assert module is not None
        parent, _, attr = module.rpartition(".")
        owner = gm.get_submodule(parent) if parent else gm
        layer = getattr(owner, attr)
        if form.source == "converter":  # the converter's grid is made for the FP32 weights, not ptq_core's rounded ones
            layer.weight = nn.Parameter(prepared.weight(plan.layers[form.layer].unit).clone(), requires_grad=False)
        setattr(owner, attr, QuantizedWeight(layer, form))
    gm.recompile()
    return gm.eval()
