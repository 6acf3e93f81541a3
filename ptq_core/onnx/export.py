"""ONNX export of a quantized model: a QDQ graph carrying ptq_core's own scales and zero points.

What lives here: :func:`export_onnx` (a :class:`~ptq_core.quantize.QuantPlan` on a prepared model
-> an ``.onnx`` file and an :class:`~ptq_core.onnx.report.ExportReport`),
:func:`export_float_onnx` (the FP32 reference), the opset rules and the checks a plan must pass.
The steps live next door: the torch-side Q/DQ modules and the TorchScript export
(:mod:`ptq_core.onnx.qdq`), the graph edits (:mod:`ptq_core.onnx.rewrite`), the report
(:mod:`ptq_core.onnx.report`). Running the file is :mod:`ptq_core.onnx.runtime`; nothing here
imports onnxruntime. Planning a config (calibrating if needed) is the facade's:
:meth:`ptq_core.pipeline.Explorer.export_onnx` plans and calls :func:`export_onnx`.

How the graph is built. The prepared (BN-folded) ``GraphModule`` is copied, quantized weights are
set to their fake-quantized values (so a layer that stays float is still the simulated one), and
a quantize/dequantize module is inserted on every activation point of the plan, exactly where
:func:`ptq_core.quantize.build_quantized_model` puts its fake quantizers. ``torch.onnx.export``
(TorchScript exporter, ``dynamo=False``: milliseconds per export where the dynamo exporter takes
seconds) writes every float op; the Q/DQ modules write themselves through ``symbolic``. The
``onnx`` package then replaces each quantized weight initializer by ptq_core's own integer codes
(:func:`ptq_core.ranges.quantize_weight`, never re-rounded) followed by ``DequantizeLinear``.

Placement (graph.py's rules, one for one):

* activation point -> ``QuantizeLinear -> DequantizeLinear`` with the plan's scale and zero
  point; a fused ReLU/ReLU6 stays before the Q, so onnxruntime folds it into the integer op
  (the Q's range already clips at 0, and at 6 when the calibrated range ends below 6);
* adds, concatenations, multiplications, average pools have their own output point, hence their
  own Q/DQ: onnxruntime runs them as QLinearAdd / QLinearConcat / QLinearMul / QLinearAveragePool;
* value-preserving ops (max pool, flatten, reshape, zero pad, the parts of a chunk/split, ...)
  get a Q/DQ with the SAME scale and zero point as their input after them. That is not a new quantizer: their output is
  on the input's grid, so the pair is exact, and it lets onnxruntime run them on integers too;
* weights: ``int8`` codes (``uint8`` for asymmetric weights) -> ``DequantizeLinear``, ``axis=0``
  per channel; Linear layers whose weights are 2, 4 or 8 bits use onnxruntime's block-wise
  ``MatMulNBits`` where the blocks fit (see :func:`ptq_core.onnx.rewrite.nbits_fit`).

Types: activations ``uint8`` when asymmetric (the default), ``int8`` when symmetric; weights
``int8`` (symmetric). Unsigned activations with signed weights (U8S8) is onnxruntime's fast path
on x86 (VNNI/AMX): measured on EfficientNet-Lite0, 5.4 ms vs 9.3 ms per image for S8S8.

Where the runtime and the simulation may differ (see tests/core/test_onnx_export.py for the size):

* ptq_core's narrow symmetric range [-127, 127] and sub-8-bit ranges are reproduced exactly by a
  ``Clip`` on the integer tensor between Q and DQ (the integer kernels still fuse);
* onnxruntime quantizes with ``x / scale``, ptq_core (like torch) with ``x * (1 / scale)``: a
  value within one float32 ulp of a rounding tie may land one step apart;
* an integer Conv/Gemm accumulates in int32 exactly and requantizes once with a float multiplier
  (bias rounded to int32 at ``x_scale * w_scale``), while the simulation adds float32 products:
  near a rounding tie the output code may differ by one step; QLinearAdd and QLinearAveragePool
  requantize with their own rounding likewise;
* on AVX2 CPUs without VNNI, onnxruntime's U8S8 kernels may saturate int16 pair sums; this
  machine (AVX512-VNNI/AMX) does not.

What onnxruntime cannot run on integers falls back to float, named in the report: convolutions
with weights below 5 bits (no 4-bit convolution kernel: weights stored as INT4, dequantized),
per-group convolution weights, weight-only convolutions, layers kept in float, and units whose
input or output is not quantized. Dynamic mode exports ``DynamicQuantizeLinear`` for 8-bit
asymmetric per-tensor activations (what onnxruntime implements); per-token dynamic activations
(any bits) are written as the simulation's fake quantization in float ops (ReduceMin/ReduceMax
per row, Round, Clip: onnxruntime has no per-row DynamicQuantizeLinear), their Linear layers
then run in float; other dynamic settings raise :class:`~ptq_core.errors.ExportError`.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any

import onnx

from ..errors import ExportError
from ..graph import PreparedModel
from ..quantize import QuantPlan
from .qdq import TORCH_MAX_OPSET, example_input, export_module, set_opset, strip_markers, torch_export
from .report import ExportReport, activation_entries, classify, tensor_types, unit_nodes
from .rewrite import (
    OnnxGraph,
    emit_dynamic,
    emit_nbits,
    fold_pads_into_convs,
    integer_pads,
    rewrite_dq,
    shapes_from_codes,
    weight_format,
)

log = logging.getLogger(__name__)

DEFAULT_OPSET = 17  # per-channel QDQ needs 13; 17 is what onnxruntime's own quantizer writes
BLOCK_OPSET = 21  # INT4 tensors and block-wise DequantizeLinear exist from opset 21
MIN_OPSET, MAX_OPSET = 13, 21


def _check_plan(prepared: PreparedModel, plan: QuantPlan) -> None:
    """Raise ExportError for settings no ONNX runtime operator can express, naming the point or layer."""
    for pq in plan.points.values():
        aq = pq.quant
        if aq.mode == "dynamic" and pq.granularity != "per_token" and (aq.bits != 8 or aq.scheme != "asymmetric"):
            raise ExportError(
                f"activation point {pq.name!r}: dynamic {aq.bits}-bit {aq.scheme} {pq.granularity} quantization cannot be "
                "exported; allowed for dynamic export: 8-bit asymmetric per_tensor (onnxruntime DynamicQuantizeLinear), "
                "or per_token at any bit width (written in float ops). Static and weight-only modes export with any bit width"
            )
        if aq.mode == "static" and (pq.scale is None or pq.zero_point is None or not math.isfinite(pq.scale)):
            raise ExportError(f"activation point {pq.name!r}: no finite scale in the plan; calibrate before exporting")
    placeholders = [n for n in prepared.graph_module.graph.nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        raise ExportError(f"the model takes {len(placeholders)} inputs; allowed: exactly one input tensor")


def _resolve_opset(opset: int | None, needed: int) -> int:
    if opset is None:
        return max(DEFAULT_OPSET, needed)
    if isinstance(opset, bool) or not isinstance(opset, int) or not MIN_OPSET <= opset <= MAX_OPSET:
        raise ExportError(f"opset: got {opset!r}; allowed: an integer from {MIN_OPSET} to {MAX_OPSET}")
    if opset < needed:
        raise ExportError(
            f"opset: got {opset}; this plan has INT4 or per-group weights, which need opset {needed} "
            f"(INT4 tensors and block-wise DequantizeLinear); allowed: "
            f"{needed if needed == MAX_OPSET else f'{needed} to {MAX_OPSET}'}, or leave it unset"
        )
    return opset


def export_onnx(
    prepared: PreparedModel, plan: QuantPlan, path: str | os.PathLike[str], *, opset: int | None = None
) -> ExportReport:
    """Write ``plan`` on ``prepared`` as an ONNX QDQ model at ``path``; return what was written.

    ``opset`` None picks 17, or 21 when INT4 or per-group weights need it. Raises ExportError
    (a :class:`~ptq_core.errors.PTQError`) naming the layer or point for plans no runtime can
    express; the file is only written when the export succeeded.
    """
    _check_plan(prepared, plan)
    formats = {name: weight_format(lq, plan.mode) for name, lq in plan.layers.items() if lq.quant is not None}
    needed = BLOCK_OPSET if any(f in ("int4", "blocked") for f in formats.values()) else MIN_OPSET
    opset = _resolve_opset(opset, needed)
    gm, order = export_module(prepared, plan)
    try:
        model = torch_export(gm, example_input(prepared), opset, markers=bool(plan.points))
    except ExportError:
        raise
    except Exception as exc:  # the exporter raises many types for an op it cannot write
        raise ExportError(f"torch.onnx could not export the model: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}") from None
    marked = strip_markers(model)
    model = set_opset(model, opset)
    g = OnnxGraph(model)
    shapes_from_codes(g)
    weights: dict[str, dict[str, Any]] = {}
    notes: list[str] = []
    for name, lq in plan.layers.items():
        if lq.quant is None:
            continue
        assert lq.unit.module is not None
        wname = f"{lq.unit.module}.weight"
        users = g.consumers(wname) if wname in g.inits else []
        if len(users) != 1 or users[0].op_type not in ("Conv", "Gemm"):
            formats[name] = "float"
            notes.append(f"{name}: its weight was rewritten by the exporter ({[u.op_type for u in users]}); stored as "
                         "float fake-quantized values")
            continue
        entry = None
        if formats[name] == "nbits":
            entry = emit_nbits(g, lq, wname, users[0])
            if entry is None:
                formats[name] = "int8" if lq.quant.bits > 4 else "int4"
        elif formats[name] == "dynamic":
            entry = emit_dynamic(g, lq, wname, users[0])
            if entry is None:
                formats[name] = "int8"
        if entry is None:
            entry = rewrite_dq(g, lq, wname, users[0], formats[name])
        weights[name] = entry
    if integer_pads(g):
        folded = fold_pads_into_convs(g)
        notes.append("zero padding runs on the integer codes (padded with the zero point): exact, no float round trip"
                     + (f"; {folded} folded into the following convolution's pads" if folded else ""))
    activations = activation_entries(plan, order, marked, g)
    nodes = unit_nodes(prepared, plan, g, activations, weights)
    kernels, fallback = classify(prepared, plan, formats)
    act_type, w_type = tensor_types(plan, formats, weights)
    try:
        onnx.checker.check_model(model)
    except onnx.checker.ValidationError as exc:
        raise ExportError(f"the exported graph is not valid ONNX: {str(exc).splitlines()[0][:300]}") from None
    out = Path(path)
    data = model.SerializeToString()
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_bytes(data)
    except OSError as exc:
        raise ExportError(f"output: cannot write {str(out)!r}: {exc.strerror}") from None
    for row in fallback:
        log.info("export: %s runs in float: %s", row["layer"], row["reason"])
    return ExportReport(
        path=str(out), onnx_bytes=out.stat().st_size, opset=opset, mode=plan.mode,
        activation_type=act_type, weight_type=w_type, integer_kernels=kernels, float_fallback=fallback,
        activations=activations, weights=weights, nodes=nodes, notes=notes,
    )


def export_float_onnx(prepared: PreparedModel, path: str | os.PathLike[str], *, opset: int = DEFAULT_OPSET) -> int:
    """Write the prepared (BN-folded) FP32 model to ``path`` as the runtime's float reference; returns bytes."""
    if not MIN_OPSET <= opset <= TORCH_MAX_OPSET:
        raise ExportError(f"opset: got {opset!r}; allowed for the FP32 export: {MIN_OPSET} to {TORCH_MAX_OPSET}")
    try:
        model = torch_export(prepared.graph_module, example_input(prepared), opset, markers=False)
    except Exception as exc:
        raise ExportError(f"torch.onnx could not export the model: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}") from None
    out = Path(path)
    out.write_bytes(model.SerializeToString())
    return out.stat().st_size
