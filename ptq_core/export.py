"""ONNX export of a quantized model: a QDQ graph carrying ptq_core's own scales and zero points.

What lives here: :func:`export_onnx` (a :class:`~ptq_core.quantize.QuantPlan` on a prepared model
-> an ``.onnx`` file and an :class:`ExportReport`) and :func:`export_float_onnx` (the FP32
reference). Running the file is :mod:`ptq_core.runtime`; nothing here imports onnxruntime.

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
  ``MatMulNBits`` where the blocks fit (see :func:`_nbits_fit`).

Types: activations ``uint8`` when asymmetric (the default), ``int8`` when symmetric; weights
``int8`` (symmetric). Unsigned activations with signed weights (U8S8) is onnxruntime's fast path
on x86 (VNNI/AMX): measured on EfficientNet-Lite0, 5.4 ms vs 9.3 ms per image for S8S8.

Where the runtime and the simulation may differ (see tests/core/test_export.py for the size):

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
asymmetric per-tensor activations (what onnxruntime implements); other dynamic settings raise
:class:`~ptq_core.errors.ExportError`.
"""

from __future__ import annotations

import copy
import io
import logging
import math
import os
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx
import torch
import torch.fx
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from .errors import ExportError
from .graph import (
    PreparedModel,
    Unit,
    insert_after,
    is_pass_through,
    is_split,
    is_stochastic_depth_identity,
    pass_through_source,
)
from .primitives import fake_quantize
from .quantize import LayerQuant, PointQuant, QuantPlan
from .ranges import quantize_weight

if TYPE_CHECKING:
    from .config import QuantConfig
    from .pipeline import Explorer
    from .progress import ProgressFn

log = logging.getLogger(__name__)

DEFAULT_OPSET = 17  # per-channel QDQ needs 13; 17 is what onnxruntime's own quantizer writes
BLOCK_OPSET = 21  # INT4 tensors and block-wise DequantizeLinear exist from opset 21
MIN_OPSET, MAX_OPSET = 13, 21
_TORCH_MAX_OPSET = 20  # the TorchScript exporter stops at 20; 21 is reached with onnx's converter
INPUT_NAME, OUTPUT_NAME = "input", "logits"
MARKER_DOMAIN = "ptq"  # a temporary identity op marking each activation point; removed before saving
NBITS_BITS = (2, 4, 8)  # MatMulNBits weight widths (onnxruntime contrib op)
NBITS_MAX_BLOCK = 128  # per-channel scales are repeated over blocks of at most this many inputs

# Modules and calls that vanish from an eval-mode export: no Q/DQ is needed after them.
_IDENTITY_MODULES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.AlphaDropout, nn.Identity)
_IDENTITY_TARGETS = {"contiguous", torch.nn.functional.dropout}


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


# -- torch side: modules whose forward is the simulation and whose symbolic is the ONNX ------------
def _onnx_int_type(signed: bool) -> torch.dtype:
    return torch.int8 if signed else torch.uint8


class _StaticQDQ(torch.autograd.Function):
    """fake_quantize in PyTorch; QuantizeLinear -> [Clip] -> DequantizeLinear -> marker in ONNX."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, scale: float, zero_point: int, qmin: int, qmax: int,
                signed: bool, index: int) -> torch.Tensor:
        return fake_quantize(x, torch.tensor(scale, dtype=torch.float32), torch.tensor(zero_point), qmin, qmax)

    @staticmethod
    def symbolic(g: Any, x: Any, scale: float, zero_point: int, qmin: int, qmax: int, signed: bool, index: int) -> Any:
        dtype = _onnx_int_type(signed)
        s = g.op("Constant", value_t=torch.tensor(scale, dtype=torch.float32))
        z = g.op("Constant", value_t=torch.tensor(zero_point, dtype=dtype))
        q = g.op("QuantizeLinear", x, s, z)
        full = (-128, 127) if signed else (0, 255)
        if (qmin, qmax) != full:  # narrow or sub-8-bit range: clamp the codes exactly as the simulation does
            lo = g.op("Constant", value_t=torch.tensor(qmin, dtype=dtype))
            hi = g.op("Constant", value_t=torch.tensor(qmax, dtype=dtype))
            q = g.op("Clip", q, lo, hi)
        dq = g.op("DequantizeLinear", q, s, z)
        marked = g.op(f"{MARKER_DOMAIN}::Point", dq, index_i=index)
        marked.setType(dq.type())
        return marked


class _DynamicQDQ(torch.autograd.Function):
    """Dynamic 8-bit asymmetric per-tensor quantization: DynamicQuantizeLinear -> DequantizeLinear."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, index: int) -> torch.Tensor:
        lo, hi = torch.aminmax(x)
        lo, hi = torch.clamp(lo, max=0.0), torch.clamp(hi, min=0.0)
        scale = torch.clamp((hi - lo) / 255.0, min=float(torch.finfo(torch.float32).eps))
        zp = torch.clamp(0 - torch.round(lo / scale), 0, 255).to(torch.int32)
        return fake_quantize(x, scale, zp, 0, 255)

    @staticmethod
    def symbolic(g: Any, x: Any, index: int) -> Any:
        q, s, z = g.op("DynamicQuantizeLinear", x, outputs=3)
        dq = g.op("DequantizeLinear", q, s, z)
        marked = g.op(f"{MARKER_DOMAIN}::Point", dq, index_i=index)
        marked.setType(x.type())
        return marked


class _ConstantPad(torch.autograd.Function):
    """Zero padding written as ``Pad`` with a constant ``pads`` tensor (the exporter computes it with a subgraph)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, padding: tuple[int, ...]) -> torch.Tensor:
        return torch.nn.functional.pad(x, list(padding))

    @staticmethod
    def symbolic(g: Any, x: Any, padding: tuple[int, ...]) -> Any:
        rank = len(padding) // 2 + 2  # padding pairs run from the last dim backwards; batch/channels get none
        begin, end = [0] * rank, [0] * rank
        for i in range(len(padding) // 2):
            begin[rank - 1 - i], end[rank - 1 - i] = padding[2 * i], padding[2 * i + 1]
        pads = g.op("Constant", value_t=torch.tensor(begin + end, dtype=torch.int64))
        return g.op("Pad", x, pads, mode_s="constant")


class ExportPad(nn.Module):
    """Export-mode ZeroPad: same numbers, a ``Pad`` whose pads the post-processing can read and fold."""

    def __init__(self, padding: tuple[int, ...]) -> None:
        super().__init__()
        self.padding = padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return _ConstantPad.apply(x, self.padding)


class ExportQDQ(nn.Module):
    """The export-mode twin of :class:`ptq_core.quantize.FakeQuantize` (same numbers in PyTorch)."""

    def __init__(self, point: str, index: int, pq: PointQuant) -> None:
        super().__init__()
        self.point, self.index, self.pq = point, index, pq

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pq = self.pq
        if pq.quant.mode == "dynamic":
            return _DynamicQDQ.apply(x, self.index)
        assert pq.scale is not None and pq.zero_point is not None
        return _StaticQDQ.apply(x, pq.scale, pq.zero_point, pq.qmin, pq.qmax, pq.qmin < 0, self.index)


# -- plan checks --------------------------------------------------------------------------------------
def _check_plan(prepared: PreparedModel, plan: QuantPlan) -> None:
    """Raise ExportError for settings no ONNX runtime operator can express, naming the point or layer."""
    for pq in plan.points.values():
        aq = pq.quant
        if aq.mode == "dynamic" and (aq.bits != 8 or aq.scheme != "asymmetric" or pq.granularity != "per_tensor"):
            raise ExportError(
                f"activation point {pq.name!r}: dynamic {aq.bits}-bit {aq.scheme} {pq.granularity} quantization cannot be "
                "exported; allowed for dynamic export: 8-bit asymmetric per_tensor (onnxruntime DynamicQuantizeLinear). "
                "Static and weight-only modes export with any bit width"
            )
        if aq.mode == "static" and (pq.scale is None or pq.zero_point is None or not math.isfinite(pq.scale)):
            raise ExportError(f"activation point {pq.name!r}: no finite scale in the plan; calibrate before exporting")
    placeholders = [n for n in prepared.graph_module.graph.nodes if n.op == "placeholder"]
    if len(placeholders) != 1:
        raise ExportError(f"the model takes {len(placeholders)} inputs; allowed: exactly one input tensor")


def _nbits_fit(lq: LayerQuant) -> bool:
    """Whether a Linear layer's weights fit onnxruntime's MatMulNBits.

    MatMulNBits takes 2, 4 or 8-bit codes in blocks along K of a power-of-two size >= 16, one
    scale (and zero point) per block. Per-group weights fit when the group size is such a
    power of two; per-channel and per-tensor weights always fit, their one scale repeated over
    blocks of min(next power of two >= K, NBITS_MAX_BLOCK) inputs.
    """
    if lq.unit.kind != "linear" or lq.quant is None or lq.quant.bits not in NBITS_BITS:
        return False
    if lq.quant.granularity == "per_group":
        gs = lq.quant.group_size
        return gs is not None and gs >= 16 and gs & (gs - 1) == 0
    return True


def _one_group(lq: LayerQuant) -> bool:
    """Per-group weights whose group covers a whole row (group_size >= K) are per-channel weights."""
    return lq.qparams is not None and lq.qparams.scale.dim() == 2 and lq.qparams.scale.shape[1] == 1


def _weight_format(lq: LayerQuant, mode: str = "static") -> str:
    """How a quantized layer's weights are written: int8 | int4 | blocked | nbits | dynamic.

    int8: 5..8-bit codes in an (u)int8 tensor, DequantizeLinear per tensor/channel (integer kernels
    use them); nbits: MatMulNBits (Linear, 2/4/8 bits, blocks fit); int4: 2..4-bit codes in an
    (u)int4 tensor (opset 21), dequantized to float; blocked: per-group weights, block-wise
    DequantizeLinear (opset 21), float compute; dynamic: int8 codes for MatMulInteger after the
    input's DynamicQuantizeLinear (dynamic mode, Linear, 5..8 bits).
    """
    assert lq.quant is not None
    q = lq.quant
    nbits = _nbits_fit(lq)
    if q.granularity == "per_group" and not _one_group(lq):
        return "nbits" if nbits else "blocked"
    if mode == "dynamic" and lq.unit.kind == "linear" and q.bits > 4:
        return "dynamic"  # DynamicQuantizeLinear + MatMulInteger: onnxruntime's dynamic integer Linear
    if q.bits == 8 and mode == "static":
        return "int8"  # QLinearConv / QGemm: integer in, integer out
    if nbits and (q.bits < 8 or mode != "static"):
        return "nbits"
    return "int8" if q.bits > 4 else "int4"


# -- export ---------------------------------------------------------------------------------------------
def _export_module(prepared: PreparedModel, plan: QuantPlan) -> tuple[torch.fx.GraphModule, list[str]]:
    """A copy of the prepared model with fake-quantized weights and an ExportQDQ on every point.

    Returns the module and the point name of each marker index.
    """
    gm = copy.deepcopy(prepared.graph_module)
    for lq in plan.layers.values():
        if lq.fq_weight is not None:
            assert lq.unit.module is not None
            gm.get_submodule(lq.unit.module).weight = nn.Parameter(lq.fq_weight.clone(), requires_grad=False)
    modules = dict(gm.named_modules())
    point_of_node = {prepared.point(name).node: name for name in plan.points}
    nodes = list(gm.graph.nodes)
    order: list[str] = []
    # Pass-through ops (max pool, flatten, pad, ...) reading a statically quantized point: requantize
    # their output with the same qparams (exact; lets the runtime keep the tensor in integers).
    source: dict[str, str] = {}
    requant_after: list[tuple[str, str]] = []
    for node in nodes:
        if node.name in point_of_node:
            source[node.name] = point_of_node[node.name]
            continue
        if node.op in ("placeholder", "output", "get_attr") or not is_pass_through(node, modules):
            continue
        arg = pass_through_source(node)
        if arg is None or arg.name not in source:
            continue
        src = source[arg.name]
        source[node.name] = src
        identity = (node.op == "call_module" and isinstance(modules.get(str(node.target)), _IDENTITY_MODULES)) or (
            node.op in ("call_method", "call_function") and node.target in _IDENTITY_TARGETS
        ) or is_stochastic_depth_identity(node)
        # A split's output is a tuple: its parts (getitem) get the Q/DQ, each after ONNX's Split.
        if not identity and not is_split(node) and plan.points[src].quant.mode == "static":
            requant_after.append((node.name, src))
    for node in nodes:  # zero padding modules -> ExportPad (padding on all four sides is a 4-tuple)
        mod = modules.get(str(node.target)) if node.op == "call_module" else None
        if isinstance(mod, nn.ZeroPad1d | nn.ZeroPad2d | nn.ConstantPad1d | nn.ConstantPad2d) and float(mod.value) == 0.0:
            parent, _, attr = str(node.target).rpartition(".")
            setattr(gm.get_submodule(parent) if parent else gm, attr, ExportPad(tuple(int(p) for p in mod.padding)))
    for i, (name, _pq) in enumerate(plan.points.items()):
        order.append(name)
        insert_after(gm, prepared.point(name).node, f"ptq_export_{i}", ExportQDQ(name, i, plan.points[name]))
    for j, (node_name, src) in enumerate(requant_after):
        idx = len(order)
        order.append(src)
        insert_after(gm, node_name, f"ptq_export_pt_{j}", ExportQDQ(src, idx, plan.points[src]))
    gm.graph.lint()
    gm.recompile()
    return gm, order


def _example(prepared: PreparedModel) -> torch.Tensor:
    node = next(n for n in prepared.graph_module.graph.nodes if n.op == "placeholder")
    meta = node.meta.get("tensor_meta")
    if meta is None:
        raise ExportError("the prepared model has no recorded input shape; prepare it with an example input")
    shape = (1, *tuple(meta.shape)[1:])
    return torch.zeros(shape, dtype=meta.dtype)


def _torch_export(module: nn.Module, example: torch.Tensor, opset: int, *, markers: bool = True) -> onnx.ModelProto:
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        # The TorchScript exporter warns that it is deprecated in favour of dynamo=True, which needs
        # seconds per export (torch.export tracing) against milliseconds here.
        warnings.simplefilter("ignore")
        torch.onnx.export(  # a BytesIO works; the stub asks for a path
            module, (example,), buf, dynamo=False, opset_version=min(opset, _TORCH_MAX_OPSET),  # type: ignore[arg-type]
            input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
            dynamic_axes={INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}},
            do_constant_folding=True, custom_opsets={MARKER_DOMAIN: 1} if markers else None,
        )
    return onnx.load_from_string(buf.getvalue())


def _strip_markers(model: onnx.ModelProto) -> dict[int, str]:
    """Remove the marker nodes; return marker index -> the DequantizeLinear output it marked."""
    marked: dict[int, str] = {}
    renames: dict[str, str] = {}
    keep = []
    for node in model.graph.node:
        if node.domain == MARKER_DOMAIN:
            index = next(a.i for a in node.attribute if a.name == "index")
            marked[index] = node.input[0]
            renames[node.output[0]] = node.input[0]
        else:
            keep.append(node)
    for node in keep:
        for i, name in enumerate(node.input):
            if name in renames:
                node.input[i] = renames[name]
    for out in model.graph.output:
        if out.name in renames:  # the model output is a marked tensor: keep the public name
            producer = next(n for n in keep if renames[out.name] in n.output)
            producer.output[list(producer.output).index(renames[out.name])] = out.name
            for node in keep:
                for i, name in enumerate(node.input):
                    if name == renames[out.name]:
                        node.input[i] = out.name
            marked = {k: (out.name if v == renames[out.name] else v) for k, v in marked.items()}
    del model.graph.node[:]
    model.graph.node.extend(keep)
    kept = [o for o in model.opset_import if o.domain != MARKER_DOMAIN]
    del model.opset_import[:]
    model.opset_import.extend(kept)
    return marked


def _set_opset(model: onnx.ModelProto, opset: int) -> onnx.ModelProto:
    current = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    if current == opset:
        return model
    try:
        return onnx.version_converter.convert_version(model, opset)
    except Exception as exc:  # the converter raises plain RuntimeErrors
        raise ExportError(f"cannot convert the exported graph from opset {current} to {opset}: {exc}") from None


# -- weights: integer codes + DequantizeLinear, or MatMulNBits ----------------------------------------------
@dataclass
class _Graph:
    """Mutable index over a ModelProto's graph used by the weight rewrites."""

    model: onnx.ModelProto
    inits: dict[str, onnx.TensorProto] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.inits = {t.name: t for t in self.model.graph.initializer}

    def consumers(self, name: str) -> list[onnx.NodeProto]:
        return [n for n in self.model.graph.node if name in n.input]

    def producer(self, name: str) -> onnx.NodeProto | None:
        return next((n for n in self.model.graph.node if name in n.output), None)

    def add_init(self, tensor: onnx.TensorProto) -> str:
        self.model.graph.initializer.append(tensor)
        self.inits[tensor.name] = tensor
        return tensor.name

    def drop_init(self, name: str) -> None:
        if any(name in n.input for n in self.model.graph.node):
            return
        for i, t in enumerate(self.model.graph.initializer):
            if t.name == name:
                del self.model.graph.initializer[i]
                break
        self.inits.pop(name, None)

    def insert_before(self, anchor: onnx.NodeProto, nodes: list[onnx.NodeProto]) -> None:
        """Insert ``nodes`` before ``anchor``. The graph's nodes are copied: earlier references go stale."""
        graph_nodes = list(self.model.graph.node)
        i = next(i for i, n in enumerate(graph_nodes) if n is anchor)
        new = graph_nodes[:i] + nodes + graph_nodes[i:]
        del self.model.graph.node[:]
        self.model.graph.node.extend(new)


def _int_tensor(name: str, values: np.ndarray, signed: bool, bits: int) -> onnx.TensorProto:
    """An initializer of integer codes: (u)int8, or (u)int4 (packed two per byte) when ``bits`` <= 4."""
    if bits <= 4:
        dtype = TensorProto.INT4 if signed else TensorProto.UINT4
        return helper.make_tensor(name, dtype, list(values.shape), values.astype(np.int32).flatten().tolist())
    return numpy_helper.from_array(values.astype(np.int8 if signed else np.uint8), name)


def _attr(node: onnx.NodeProto, name: str, default: Any) -> Any:
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _rewrite_dq(g: _Graph, lq: LayerQuant, wname: str, consumer: onnx.NodeProto, fmt: str) -> dict[str, Any]:
    """Replace float weight ``wname`` by integer codes -> DequantizeLinear (per tensor/channel/block)."""
    assert lq.quant is not None and lq.qparams is not None
    qp = lq.qparams
    w = numpy_helper.to_array(g.inits[wname])
    codes = quantize_weight(torch.from_numpy(w.copy()), qp).numpy()
    signed = qp.qmin < 0
    bits = 4 if fmt in ("int4",) or (fmt == "blocked" and lq.quant.bits <= 4) else 8
    base = lq.unit.name
    scale = qp.scale.numpy().astype(np.float32)
    zp = qp.zero_point.numpy()
    attrs: dict[str, Any] = {}
    nodes: list[onnx.NodeProto] = []
    if fmt == "blocked":
        assert qp.group_size is not None
        rows = codes.reshape(codes.shape[0], -1)
        K = rows.shape[1]
        pad = scale.shape[1] * qp.group_size - K
        if pad:  # ONNX blocks must tile the axis: pad with the zero point (dequantizes to 0), slice after
            rows = np.concatenate([rows, np.broadcast_to(zp[:, -1:], (rows.shape[0], pad))], axis=1)
        q_name = g.add_init(_int_tensor(f"{base}.weight_quantized", rows, signed, bits))
        attrs = {"axis": 1, "block_size": int(qp.group_size)}
        dq_out = f"{base}.weight_dequantized_rows"
        zp_t = _int_tensor(f"{base}.weight_zero_point", zp, signed, bits)
        s_name = g.add_init(numpy_helper.from_array(scale, f"{base}.weight_scale"))
        z_name = g.add_init(zp_t)
        nodes.append(helper.make_node("DequantizeLinear", [q_name, s_name, z_name], [dq_out], name=f"{base}/weight/DequantizeLinear", **attrs))
        cur = dq_out
        if pad:
            starts = g.add_init(numpy_helper.from_array(np.array([0], np.int64), f"{base}.weight_slice_starts"))
            ends = g.add_init(numpy_helper.from_array(np.array([K], np.int64), f"{base}.weight_slice_ends"))
            axes = g.add_init(numpy_helper.from_array(np.array([1], np.int64), f"{base}.weight_slice_axes"))
            nodes.append(helper.make_node("Slice", [cur, starts, ends, axes], [f"{base}.weight_dequantized_k"], name=f"{base}/weight/Slice"))
            cur = f"{base}.weight_dequantized_k"
        shape = g.add_init(numpy_helper.from_array(np.array(w.shape, np.int64), f"{base}.weight_shape"))
        nodes.append(helper.make_node("Reshape", [cur, shape], [f"{base}.weight_dequantized"], name=f"{base}/weight/Reshape"))
        out = f"{base}.weight_dequantized"
        desc = {"format": "blocked", "axis": 1, "block_size": int(qp.group_size)}
    else:
        if qp.granularity == "per_group":  # one group per row: per-channel
            scale, zp = scale[:, 0], zp[:, 0]
        q_name = g.add_init(_int_tensor(f"{base}.weight_quantized", codes, signed, bits))
        s_name = g.add_init(numpy_helper.from_array(scale, f"{base}.weight_scale"))
        z_name = g.add_init(_int_tensor(f"{base}.weight_zero_point", zp, signed, bits))
        if qp.granularity != "per_tensor":
            attrs = {"axis": 0}
        out = f"{base}.weight_dequantized"
        nodes.append(helper.make_node("DequantizeLinear", [q_name, s_name, z_name], [out], name=f"{base}/weight/DequantizeLinear", **attrs))
        desc = {"format": fmt, "axis": attrs.get("axis")}
    for i, name in enumerate(consumer.input):  # before insert_before: rebuilding the node list copies the nodes
        if name == wname:
            consumer.input[i] = out
    consumer_name = consumer.name
    g.insert_before(consumer, nodes)
    g.drop_init(wname)
    dtype = ("int" if signed else "uint") + str(bits)
    return {**desc, "initializer": q_name, "scale": s_name, "zero_point": z_name, "dtype": dtype, "node": consumer_name}


def _emit_nbits(g: _Graph, lq: LayerQuant, wname: str, gemm: onnx.NodeProto) -> dict[str, Any] | None:
    """Replace ``Gemm(A, W, b, transB=1)`` by ``MatMulNBits(A, packed W, scales, zero points, bias)``.

    Codes are stored unsigned, as MatMulNBits wants: signed codes q in [-(2^(b-1)-1), 2^(b-1)-1]
    become q + 2^(b-1) with zero point 2^(b-1) (the op's default, so none is stored); asymmetric
    codes keep their own zero points, packed like the weights. Returns None when the Gemm is not
    the plain ``A @ W.T + b`` form.
    """
    assert lq.quant is not None and lq.qparams is not None
    if gemm.op_type != "Gemm" or _attr(gemm, "transA", 0) or not _attr(gemm, "transB", 0):
        return None
    if _attr(gemm, "alpha", 1.0) != 1.0 or _attr(gemm, "beta", 1.0) != 1.0 or list(gemm.input).index(wname) != 1:
        return None
    qp, bits = lq.qparams, lq.quant.bits
    w = numpy_helper.to_array(g.inits[wname])
    N, K = w.shape
    codes = quantize_weight(torch.from_numpy(w.copy()), qp).numpy().astype(np.int32)
    if qp.granularity == "per_group":
        assert qp.group_size is not None
        block = qp.group_size
        scale = qp.scale.numpy().astype(np.float32)
        zp = qp.zero_point.numpy().astype(np.int32)
    else:
        block = max(16, min(NBITS_MAX_BLOCK, 1 << max(0, (K - 1).bit_length())))
        n_blocks = -(-K // block)
        scale = np.broadcast_to(qp.scale.numpy().astype(np.float32).reshape(-1, 1), (N, n_blocks)).copy()
        zp = np.broadcast_to(qp.zero_point.numpy().astype(np.int32).reshape(-1, 1), (N, n_blocks)).copy()
    n_blocks = scale.shape[1]
    offset = (1 << (bits - 1)) if qp.qmin < 0 else 0
    u = codes + offset
    zp_u = zp + offset
    pad = n_blocks * block - K
    if pad:
        u = np.concatenate([u, np.repeat(zp_u[:, -1:], pad, axis=1)], axis=1)
    per_byte = 8 // bits
    u = u.reshape(N, n_blocks, block // per_byte, per_byte).astype(np.uint8)
    packed = np.zeros(u.shape[:3], dtype=np.uint8)
    for j in range(per_byte):  # low bits first
        packed |= (u[..., j] << (bits * j)).astype(np.uint8)
    base = lq.unit.name
    b_name = g.add_init(numpy_helper.from_array(packed, f"{base}.weight_nbits"))
    s_name = g.add_init(numpy_helper.from_array(scale, f"{base}.weight_scale"))
    inputs = [gemm.input[0], b_name, s_name]
    z_name = ""
    if not np.all(zp_u == (1 << (bits - 1))):
        zpb = -(-n_blocks * bits // 8)
        zu = np.zeros((N, zpb * per_byte), dtype=np.uint8)
        zu[:, :n_blocks] = zp_u
        zu = zu.reshape(N, zpb, per_byte)
        zpacked = np.zeros((N, zpb), dtype=np.uint8)
        for j in range(per_byte):
            zpacked |= (zu[..., j] << (bits * j)).astype(np.uint8)
        z_name = g.add_init(numpy_helper.from_array(zpacked, f"{base}.weight_zero_point"))
    inputs.append(z_name)
    bias = gemm.input[2] if len(gemm.input) > 2 else ""
    if bias:
        inputs += ["", bias]  # g_idx (deprecated) left empty
    node = helper.make_node(
        "MatMulNBits", inputs, list(gemm.output), name=f"{base}/MatMulNBits", domain="com.microsoft",
        K=int(K), N=int(N), bits=int(bits), block_size=int(block), accuracy_level=0,
    )
    nodes = list(g.model.graph.node)
    i = next(i for i, n in enumerate(nodes) if n is gemm)
    nodes[i] = node
    del g.model.graph.node[:]
    g.model.graph.node.extend(nodes)
    g.drop_init(wname)
    if not any(o.domain == "com.microsoft" for o in g.model.opset_import):
        g.model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return {"format": "nbits", "node": node.name, "initializer": b_name, "scale": s_name, "zero_point": z_name or None,
            "dtype": f"uint{bits} (MatMulNBits)", "block_size": int(block), "bits": int(bits)}


_SHAPE_OPS = ("Flatten", "Reshape", "Squeeze", "Unsqueeze")


def _emit_dynamic(g: _Graph, lq: LayerQuant, wname: str, gemm: onnx.NodeProto) -> dict[str, Any] | None:
    """Rewrite ``DynamicQuantizeLinear -> DequantizeLinear [-> shape ops] -> Gemm(A, W, b, transB=1)``
    into onnxruntime's dynamic integer Linear, the pattern ``quantize_dynamic`` writes::

        MatMulInteger(a_u8, W_s8^T, a_zero_point, w_zero_point) -> Cast(float) -> Mul(a_scale * w_scale) -> Add(b)

    which onnxruntime fuses into DynamicQuantizeMatMul. Returns None when the pattern is not there.
    """
    assert lq.quant is not None and lq.qparams is not None
    if gemm.op_type != "Gemm" or _attr(gemm, "transA", 0) or not _attr(gemm, "transB", 0):
        return None
    if _attr(gemm, "alpha", 1.0) != 1.0 or _attr(gemm, "beta", 1.0) != 1.0 or list(gemm.input).index(wname) != 1:
        return None
    chain: list[onnx.NodeProto] = []
    cur = g.producer(gemm.input[0])
    while cur is not None and cur.op_type in _SHAPE_OPS:
        chain.insert(0, cur)
        cur = g.producer(cur.input[0])
    if cur is None or cur.op_type != "DequantizeLinear":
        return None
    dql = g.producer(cur.input[0])
    if dql is None or dql.op_type != "DynamicQuantizeLinear":
        return None
    if len(g.consumers(cur.output[0])) != 1 or any(len(g.consumers(n.output[0])) != 1 for n in chain):
        return None
    qp = lq.qparams
    w = numpy_helper.to_array(g.inits[wname])
    codes = quantize_weight(torch.from_numpy(w.copy()), qp).numpy()
    base = lq.unit.name
    q_name = g.add_init(numpy_helper.from_array(np.ascontiguousarray(codes.T).astype(np.int8), f"{base}.weight_quantized_t"))
    zp = qp.zero_point.numpy().astype(np.int8)
    z_name = g.add_init(numpy_helper.from_array(zp if zp.ndim else zp.reshape(()), f"{base}.weight_zero_point"))
    s_name = g.add_init(numpy_helper.from_array(qp.scale.numpy().astype(np.float32), f"{base}.weight_scale"))
    a_q, a_s, a_z = dql.output
    # the shape ops now carry the uint8 codes (value-preserving, so exact)
    src = a_q
    for node in chain:
        node.input[0] = src
        node.output[0] = node.output[0] + "_u8"
        src = node.output[0]
    out = gemm.output[0]
    nodes = [
        helper.make_node("MatMulInteger", [src, q_name, a_z, z_name], [f"{base}/mm_i32"], name=f"{base}/MatMulInteger"),
        helper.make_node("Cast", [f"{base}/mm_i32"], [f"{base}/mm_f32"], name=f"{base}/Cast", to=TensorProto.FLOAT),
        helper.make_node("Mul", [a_s, s_name], [f"{base}/scale"], name=f"{base}/ScaleMul"),
    ]
    bias = gemm.input[2] if len(gemm.input) > 2 and gemm.input[2] else ""
    nodes.append(helper.make_node("Mul", [f"{base}/mm_f32", f"{base}/scale"], [out if not bias else f"{base}/mm_scaled"], name=f"{base}/Mul"))
    if bias:
        nodes.append(helper.make_node("Add", [f"{base}/mm_scaled", bias], [out], name=f"{base}/Add"))
    graph_nodes = [n for n in g.model.graph.node if n is not gemm and n is not cur]
    i = next(i for i, n in enumerate(graph_nodes) if n is (chain[-1] if chain else dql))
    graph_nodes[i + 1 : i + 1] = nodes
    del g.model.graph.node[:]
    g.model.graph.node.extend(graph_nodes)
    g.drop_init(wname)
    return {"format": "dynamic", "initializer": q_name, "scale": s_name, "zero_point": z_name, "dtype": "int8",
            "axis": 1 if qp.granularity == "per_channel" else None, "node": f"{base}/MatMulInteger"}


def _const_value(g: _Graph, name: str) -> np.ndarray | None:
    if name in g.inits:
        return numpy_helper.to_array(g.inits[name])
    node = g.producer(name)
    if node is not None and node.op_type == "Constant":
        return numpy_helper.to_array(helper.get_attribute_value(node.attribute[0]))
    return None


def _fold_pads_into_convs(g: _Graph) -> int:
    """``Pad(codes, zero point) -> DequantizeLinear -> Conv`` -> ``DequantizeLinear -> Conv(pads += ...)``.

    A convolution's own zero padding is padding with 0, which is the zero point's code: exact.
    It spares onnxruntime a separate pass over the tensor (TF-SAME stride-2 layers of EfficientNet
    pad asymmetrically, which a torch Conv2d cannot express but an ONNX Conv can).
    """
    count = 0
    done: set[str] = set()
    while True:  # one rewrite per pass: node references go stale when the node list is rebuilt
        pad = next((n for n in g.model.graph.node if n.op_type == "Pad" and n.output[0] not in done), None)
        if pad is None:
            return count
        done.add(pad.output[0])
        pads = _const_value(g, pad.input[1])
        dqs = g.consumers(pad.output[0])
        if pads is None or pads.ndim != 1 or (pads < 0).any() or len(dqs) != 1 or dqs[0].op_type != "DequantizeLinear":
            continue
        convs = g.consumers(dqs[0].output[0])
        rank = len(pads) // 2
        if not convs or any(c.op_type != "Conv" or _attr(c, "auto_pad", b"NOTSET") not in (b"NOTSET", "NOTSET") for c in convs):
            continue
        if pads[:2].any() or pads[rank : rank + 2].any():  # batch or channel padding: not a convolution's
            continue
        for conv in convs:
            own = list(_attr(conv, "pads", [0] * (2 * (rank - 2))))
            spatial = rank - 2
            merged = [int(pads[2 + i]) + own[i] for i in range(spatial)] + [int(pads[rank + 2 + i]) + own[spatial + i] for i in range(spatial)]
            for a in list(conv.attribute):
                if a.name == "pads":
                    conv.attribute.remove(a)
            conv.attribute.append(helper.make_attribute("pads", merged))
        dqs[0].input[0] = pad.input[0]
        g.model.graph.node.remove(pad)
        count += 1


def _integer_pads(g: _Graph) -> int:
    """``DequantizeLinear -> Pad(0) -> QuantizeLinear`` with one scale and zero point -> ``Pad(codes, zero_point)``.

    Padding the integer codes with the zero point is exactly padding the values with 0 (zero is
    on every grid); onnxruntime then keeps the tensor in uint8 between two integer convolutions
    instead of dequantizing, padding in float and quantizing again. Returns how many were rewritten.
    """
    count = 0
    done: set[str] = set()
    while True:  # one rewrite per pass: rebuilding the node list makes earlier references stale
        pad = next((n for n in g.model.graph.node if n.op_type == "Pad" and n.output[0] not in done), None)
        if pad is None:
            return count
        done.add(pad.output[0])
        if _attr(pad, "mode", b"constant") not in (b"constant", "constant"):
            continue
        value = _const_value(g, pad.input[2]) if len(pad.input) > 2 and pad.input[2] else np.zeros(())
        dq = g.producer(pad.input[0])
        users = g.consumers(pad.output[0])
        if value is None or float(value) != 0.0 or dq is None or dq.op_type != "DequantizeLinear" or len(users) != 1:
            continue
        q = users[0]
        if q.op_type != "QuantizeLinear" or len(dq.input) < 3 or len(q.input) < 3:
            continue
        s1, z1, s2, z2 = (_const_value(g, n) for n in (dq.input[1], dq.input[2], q.input[1], q.input[2]))
        if any(v is None for v in (s1, z1, s2, z2)) or s1 != s2 or z1 != z2 or z1.dtype != z2.dtype:  # type: ignore[union-attr]
            continue
        new = helper.make_node("Pad", [dq.input[0], pad.input[1], dq.input[2]], [q.output[0]], name=pad.name, mode="constant")
        nodes = [n for n in g.model.graph.node if n is not q]
        nodes[next(i for i, n in enumerate(nodes) if n is pad)] = new
        del g.model.graph.node[:]
        g.model.graph.node.extend(nodes)
        dq_now = g.producer(dq.output[0])
        if dq_now is not None and not g.consumers(dq.output[0]) and dq.output[0] not in {o.name for o in g.model.graph.output}:
            g.model.graph.node.remove(dq_now)
        done.add(new.output[0])
        count += 1


# -- what runs on integers --------------------------------------------------------------------------------
_UNIT_KERNELS = {"add": "QLinearAdd", "mul": "QLinearMul", "cat": "QLinearConcat", "avgpool": "QLinearAveragePool"}


def _classify(prepared: PreparedModel, plan: QuantPlan, formats: dict[str, str]) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
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


def _types(plan: QuantPlan, formats: dict[str, str], weights: dict[str, dict[str, Any]]) -> tuple[str | None, str | None]:
    acts = sorted({("uint8" if pq.qmin >= 0 else "int8") for pq in plan.points.values() if pq.quant.mode == "static"})
    if any(pq.quant.mode == "dynamic" for pq in plan.points.values()):
        acts.append("uint8 (dynamic)")
    wts = sorted({str(w["dtype"]) for w in weights.values()})
    a = None if not acts else (acts[0] if len(acts) == 1 else "mixed (" + ", ".join(acts) + ")")
    w = None if not wts else (wts[0] if len(wts) == 1 else "mixed (" + ", ".join(wts) + ")")
    return a, w


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
    formats = {name: _weight_format(lq, plan.mode) for name, lq in plan.layers.items() if lq.quant is not None}
    needed = BLOCK_OPSET if any(f in ("int4", "blocked") for f in formats.values()) else MIN_OPSET
    opset = _resolve_opset(opset, needed)
    gm, order = _export_module(prepared, plan)
    try:
        model = _torch_export(gm, _example(prepared), opset, markers=bool(plan.points))
    except ExportError:
        raise
    except Exception as exc:  # the exporter raises many types for an op it cannot write
        raise ExportError(f"torch.onnx could not export the model: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}") from None
    marked = _strip_markers(model)
    model = _set_opset(model, opset)
    g = _Graph(model)
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
            entry = _emit_nbits(g, lq, wname, users[0])
            if entry is None:
                formats[name] = "int8" if lq.quant.bits > 4 else "int4"
        elif formats[name] == "dynamic":
            entry = _emit_dynamic(g, lq, wname, users[0])
            if entry is None:
                formats[name] = "int8"
        if entry is None:
            entry = _rewrite_dq(g, lq, wname, users[0], formats[name])
        weights[name] = entry
    if _integer_pads(g):
        folded = _fold_pads_into_convs(g)
        notes.append("zero padding runs on the integer codes (padded with the zero point): exact, no float round trip"
                     + (f"; {folded} folded into the following convolution's pads" if folded else ""))
    activations = _activation_entries(plan, order, marked, g)
    nodes = _unit_nodes(prepared, plan, g, activations, weights)
    kernels, fallback = _classify(prepared, plan, formats)
    act_type, w_type = _types(plan, formats, weights)
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


def _activation_entries(plan: QuantPlan, order: list[str], marked: dict[int, str], g: _Graph) -> dict[str, dict[str, Any]]:
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


def _unit_nodes(
    prepared: PreparedModel, plan: QuantPlan, g: _Graph, activations: dict[str, dict[str, Any]],
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


def export_float_onnx(prepared: PreparedModel, path: str | os.PathLike[str], *, opset: int = DEFAULT_OPSET) -> int:
    """Write the prepared (BN-folded) FP32 model to ``path`` as the runtime's float reference; returns bytes."""
    if not MIN_OPSET <= opset <= _TORCH_MAX_OPSET:
        raise ExportError(f"opset: got {opset!r}; allowed for the FP32 export: {MIN_OPSET} to {_TORCH_MAX_OPSET}")
    try:
        model = _torch_export(prepared.graph_module, _example(prepared), opset, markers=False)
    except Exception as exc:
        raise ExportError(f"torch.onnx could not export the model: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}") from None
    out = Path(path)
    out.write_bytes(model.SerializeToString())
    return out.stat().st_size


def export_config(
    config: QuantConfig,
    path: str | os.PathLike[str],
    *,
    explorer: Explorer | None = None,
    opset: int | None = None,
    on_progress: ProgressFn | None = None,
) -> ExportReport:
    """Plan ``config`` (calibrating if needed) on ``explorer`` (a new one if None) and export it.

    What the CLI's ``export`` command and the dashboard's Export page call.
    """
    from .pipeline import Explorer

    explorer = explorer if explorer is not None else Explorer.for_config(config)
    plan = explorer.plan(config, on_progress)
    return export_onnx(explorer.prepared(config.fold_batchnorm), plan, path, opset=opset)
