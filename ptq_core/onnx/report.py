"""What an integer QDQ export wrote, and how onnxruntime is expected to run each unit: :class:`ExportReport`.

What lives here: :class:`ExportReport` (file, opset, types, integer kernels, float fallbacks
with their reasons, every activation and weight entry, the ONNX node of each unit) and the
functions that fill it from the plan and the rewritten graph (:func:`classify`,
:func:`tensor_types`, :func:`activation_entries`, :func:`unit_nodes`).

Not here: writing the graph (:mod:`ptq_core.onnx.qdq`, :mod:`ptq_core.onnx.rewrite`,
:mod:`ptq_core.onnx.export`) and checking the expectations against what onnxruntime actually
fused (:func:`ptq_core.onnx.runtime.verify_kernels`). Nothing here imports onnxruntime.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ..graph import PreparedModel, Unit
from ..quantize import LayerQuant, QuantPlan
from .rewrite import NBITS_BITS, OnnxGraph


@dataclass
class ExportReport:
    """What was written and how onnxruntime is expected to run each layer."""

    path: str
    onnx_bytes: int  # the file on disk
    opset: int
    mode: str  # static | dynamic | weight_only | fp32
    activation_type: str | None  # uint8 | int8 | mixed (uint8, int8) | None (no activation Q/DQ)
    weight_type: str | None  # int8 | uint8 | int4 | ... (joined when mixed) | None
    integer_kernels: list[dict[str, str]] = field(default_factory=list)  # {"layer", "kernel"}
    float_fallback: list[dict[str, str]] = field(default_factory=list)  # {"layer", "reason"}
    activations: dict[str, dict[str, Any]] = field(default_factory=dict)  # point -> scale, zero_point, dtype, qmin, qmax
    weights: dict[str, dict[str, Any]] = field(default_factory=dict)  # layer -> format, initializer, dtype, axis, block
    nodes: dict[str, str] = field(default_factory=dict)  # unit -> name of its ONNX node (to find it after fusion)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        """One line: integer kernels vs float fallbacks, types and file size."""
        kb = self.onnx_bytes / 1024
        types = f"activations {self.activation_type or 'float'}, weights {self.weight_type or 'float'}"
        return (
            f"{self.path}: {kb:.1f} KiB, opset {self.opset}, {self.mode}; {types}; "
            f"{len(self.integer_kernels)} integer kernel(s), {len(self.float_fallback)} float fallback(s)"
            + (f" ({', '.join(r['layer'] for r in self.float_fallback[:6])}{', ...' if len(self.float_fallback) > 6 else ''})"
               if self.float_fallback else "")
        )


# -- what runs on integers ---------------------------------------------------------------------------
_UNIT_KERNELS = {"add": "QLinearAdd", "mul": "QLinearMul", "cat": "QLinearConcat", "avgpool": "QLinearAveragePool",
                 "matmul": "QLinearMatMul"}


def classify(prepared: PreparedModel, plan: QuantPlan, formats: dict[str, str]) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """Per unit: the integer kernel onnxruntime is expected to use, or why it runs in float."""
    kernels: list[dict[str, str]] = []
    fallback: list[dict[str, str]] = []
    static = {n for n, pq in plan.points.items() if pq.quant.mode == "static"}
    for unit in prepared.units:
        name = unit.name
        ins_q = bool(unit.inputs) and all(i in static for i in unit.inputs)
        out_q = name in static
        if unit.has_weights:
            lq = plan.layers[name]
            if lq.quant is None:
                fallback.append({"layer": name, "reason": "kept in float by the config (keep_float): float weights, float compute"})
                continue
            fmt = formats.get(name, "float")
            bits = lq.quant.bits
            if fmt == "nbits":
                kernels.append({"layer": name, "kernel": f"MatMulNBits ({bits}-bit weights, fp32 activations)"})
            elif fmt == "int8" and plan.mode == "static" and ins_q and out_q:
                op = "QLinearConv" if unit.kind == "conv" else "QGemm"
                act = "u8" if plan.points[name].qmin >= 0 else "s8"
                kernels.append({"layer": name, "kernel": f"{op} ({act}{'s8' if lq.qparams is not None and lq.qparams.qmin < 0 else 'u8'})"})
            elif fmt == "dynamic":
                kernels.append({"layer": name, "kernel": "DynamicQuantizeMatMul (dynamic u8 activations, s8 weights)"})
            elif plan.mode == "dynamic" and any(i in plan.points and plan.points[i].granularity == "per_token" for i in unit.inputs):
                fallback.append({"layer": name, "reason": (
                    "dynamic per-token input: onnxruntime has no per-row DynamicQuantizeLinear, so the export computes the "
                    "per-token fake quantization in float ops and the Linear runs in FP32 on it: accuracy is the per-token "
                    "one, latency is not an integer kernel's")})
            else:
                fallback.append({"layer": name, "reason": _weight_fallback_reason(unit, lq, fmt, plan.mode, ins_q, out_q)})
        else:
            if ins_q and out_q:
                kernels.append({"layer": name, "kernel": _UNIT_KERNELS.get(unit.kind, unit.kind)})
            elif plan.mode == "static" and name not in static:
                fallback.append({"layer": name, "reason": "kept in float by the config (keep_float): runs in FP32"})
            elif plan.mode == "static":
                fallback.append({"layer": name, "reason": "an input is not quantized, so it runs in FP32 between DequantizeLinear and QuantizeLinear"})
    return kernels, fallback


def _weight_fallback_reason(unit: Unit, lq: LayerQuant, fmt: str, mode: str, ins_q: bool, out_q: bool) -> str:
    assert lq.quant is not None
    bits, kind = lq.quant.bits, "convolution" if unit.kind == "conv" else "Linear"
    tail = "weights are dequantized to float and the op runs in FP32: accuracy is the simulated one, latency is not an integer kernel's"
    if fmt == "int4":
        why = (f"{bits}-bit {kind} weights: onnxruntime CPU has no {bits}-bit {kind.lower()} kernel"
               + ("" if unit.kind == "conv" else f" (MatMulNBits takes {', '.join(map(str, NBITS_BITS))} bits)"))
        return f"{why}; stored as INT4, {tail}"
    if fmt == "blocked":
        return (f"per-group {bits}-bit {kind} weights (group_size {lq.quant.group_size}): "
                + ("QLinearConv takes per-tensor or per-channel scales only" if unit.kind == "conv"
                   else "MatMulNBits needs a power-of-two group size >= 16")
                + f"; stored block-wise (DequantizeLinear block_size), {tail}")
    if mode == "weight_only":
        return f"weight-only {kind}: onnxruntime has no weight-only {kind.lower()} kernel; {tail}"
    if mode == "dynamic":
        if unit.kind == "conv":
            return f"dynamic convolution: only Linear layers get onnxruntime's dynamic integer kernel (MatMulInteger); {tail}"
        return (f"dynamic {bits}-bit Linear whose input is not read straight from its DynamicQuantizeLinear "
                f"(or weights below 5 bits outside MatMulNBits); {tail}")
    if not unit.inputs:
        why = "its input comes from an op the plan does not quantize (e.g. a constant tensor of the model)"
    else:
        why = f"its {'input' if not ins_q else 'output'} is not quantized (a neighbour is kept in float)"
    return f"{why}, so onnxruntime cannot fuse an integer {kind.lower()}; {tail}"


def tensor_types(plan: QuantPlan, formats: dict[str, str], weights: dict[str, dict[str, Any]]) -> tuple[str | None, str | None]:
    """(activation type, weight type): one dtype, ``mixed (...)`` when layers differ, None when nothing is quantized."""
    acts = sorted({("uint8" if pq.qmin >= 0 else "int8") for pq in plan.points.values() if pq.quant.mode == "static"})
    if any(pq.quant.mode == "dynamic" for pq in plan.points.values()):
        acts.append("uint8 (dynamic)")
    wts = sorted({str(w["dtype"]) for w in weights.values()})
    a = None if not acts else (acts[0] if len(acts) == 1 else "mixed (" + ", ".join(acts) + ")")
    w = None if not wts else (wts[0] if len(wts) == 1 else "mixed (" + ", ".join(wts) + ")")
    return a, w


# -- entries of the report ---------------------------------------------------------------------------
def activation_entries(plan: QuantPlan, order: list[str], marked: dict[int, str], g: OnnxGraph) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for index, dq_output in sorted(marked.items()):
        point = order[index]
        pq = plan.points[point]
        dq = g.producer(dq_output)
        entry = out.setdefault(point, {
            "mode": pq.quant.mode, "scale": pq.scale, "zero_point": pq.zero_point, "qmin": pq.qmin, "qmax": pq.qmax,
            "dtype": "uint8" if pq.qmin >= 0 else "int8", "dequantize_outputs": [],
        })
        entry["dequantize_outputs"].append(dq.output[0] if dq is not None else dq_output)
    return out


def unit_nodes(
    prepared: PreparedModel, plan: QuantPlan, g: OnnxGraph, activations: dict[str, dict[str, Any]],
    weights: dict[str, dict[str, Any]],
) -> dict[str, str]:
    """The ONNX node of each unit: the weight's consumer, or the op feeding the output point's Q."""
    nodes: dict[str, str] = {}
    for unit in prepared.units:
        if unit.name in weights:
            nodes[unit.name] = str(weights[unit.name]["node"])
            continue
        if unit.has_weights:
            assert unit.module is not None
            users = g.consumers(f"{unit.module}.weight")
            if users:
                nodes[unit.name] = users[0].name
            continue
        entry = activations.get(unit.name)
        if entry is None or plan.points[unit.name].quant.mode != "static":
            continue
        dq = g.producer(entry["dequantize_outputs"][0])
        node = g.producer(dq.input[0]) if dq is not None else None
        while node is not None and node.op_type in ("Clip", "QuantizeLinear", "Relu"):
            node = g.producer(node.input[0])
        if node is not None:
            nodes[unit.name] = node.name
    return nodes
