"""The torch side of the integer QDQ export: modules whose forward is the simulation and whose symbolic is ONNX.

What lives here: :class:`ExportQDQ` (the export-mode twin of
:class:`ptq_core.quantize.FakeQuantize`: ``QuantizeLinear -> [Clip] -> DequantizeLinear`` in
ONNX, ``DynamicQuantizeLinear -> DequantizeLinear`` for dynamic points), :class:`ExportPad` (zero
padding as a ``Pad`` with constant pads), :func:`export_module` (a copy of the prepared model
with fake-quantized weights and a Q/DQ on every point, placed as graph.py says; see
:mod:`ptq_core.onnx.export` for the placement rules; :mod:`ptq_core.tflite.qdq` reuses it with
its own Q/DQ module), :func:`torch_export` (the TorchScript exporter), :func:`strip_markers` and
:func:`set_opset`.

Not here: edits of the exported graph (integer weights, MatMulNBits, integer pads:
:mod:`ptq_core.onnx.rewrite`), the report (:mod:`ptq_core.onnx.report`), the entry points
(:mod:`ptq_core.onnx.export`). Nothing here imports onnxruntime.
"""

from __future__ import annotations

import copy
import io
import warnings
from collections.abc import Callable
from typing import Any

import onnx
import torch
import torch.fx
from torch import nn

from ..errors import ExportError
from ..graph import (
    PreparedModel,
    insert_after,
    is_pass_through,
    is_split,
    is_stochastic_depth_identity,
    is_tokens,
    pass_through_source,
    reads_for_weights,
)
from ..primitives import MIN_SCALE, fake_quantize, qparams_from_range
from ..quantize import PointQuant, QuantPlan, set_weights

TORCH_MAX_OPSET = 20  # the TorchScript exporter stops at 20; 21 is reached with onnx's converter
INPUT_NAME, OUTPUT_NAME = "input", "logits"
# A text model's one tensor [N, 2, L] (ids, mask: ptq_core.models.minilm) is given back to users as two inputs.
TOKEN_INPUTS, EMBEDDING_OUTPUT = ("input_ids", "attention_mask"), "embeddings"
MARKER_DOMAIN = "ptq"  # a temporary identity op marking each activation point; removed before saving

# Modules and calls that vanish from an eval-mode export: no Q/DQ is needed after them.
_IDENTITY_MODULES = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.AlphaDropout, nn.Identity)
_IDENTITY_TARGETS = {"contiguous", torch.nn.functional.dropout}


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


class _PerTokenQDQ(torch.autograd.Function):
    """Dynamic per-token quantization (one range per row of the last dim) in float ONNX ops.

    onnxruntime has no per-row DynamicQuantizeLinear, so the export writes what the simulation
    computes (:func:`ptq_core.primitives.qparams_from_range` then :func:`fake_quantize`), op for op:
    ``ReduceMin/Max(x, -1) -> Min/Max with 0 -> scale = max((hi - lo) / (qmax - qmin), MIN_SCALE) ->
    zp = clip(qmin - round(lo / scale)) -> clip(round(x * (1 / scale)) + zp) - zp) * scale``. The
    Linear after it then runs in float on the fake-quantized input: the accuracy is the per-token
    one, the latency is not an integer kernel's (the report lists it among the float fallbacks).
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, bits: int, scheme: str, qmin: int, qmax: int, index: int) -> torch.Tensor:
        scale, zp = qparams_from_range(x.amin(dim=-1, keepdim=True), x.amax(dim=-1, keepdim=True), bits, scheme)
        return fake_quantize(x, scale, zp, qmin, qmax)

    @staticmethod
    def symbolic(g: Any, x: Any, bits: int, scheme: str, qmin: int, qmax: int, index: int) -> Any:
        def const(v: float) -> Any:
            return g.op("Constant", value_t=torch.tensor(v, dtype=torch.float32))

        def reduce(op: str) -> Any:  # from opset 18 the axes are an input, before an attribute (g.opset: the export's)
            if getattr(g, "opset", 17) >= 18:
                return g.op(op, x, g.op("Constant", value_t=torch.tensor([-1], dtype=torch.int64)), keepdims_i=1)
            return g.op(op, x, axes_i=[-1], keepdims_i=1)

        lo = g.op("Min", reduce("ReduceMin"), const(0.0))
        hi = g.op("Max", reduce("ReduceMax"), const(0.0))
        if scheme == "symmetric":
            scale = g.op("Max", g.op("Div", g.op("Max", g.op("Neg", lo), hi), const(float(qmax))), const(MIN_SCALE))
            zp = const(0.0)
        else:
            scale = g.op("Max", g.op("Div", g.op("Sub", hi, lo), const(float(qmax - qmin))), const(MIN_SCALE))
            zp = g.op("Clip", g.op("Sub", const(float(qmin)), g.op("Round", g.op("Div", lo, scale))), const(float(qmin)),
                      const(float(qmax)))
        inv = g.op("Div", const(1.0), scale)
        q = g.op("Clip", g.op("Add", g.op("Round", g.op("Mul", x, inv)), zp), const(float(qmin)), const(float(qmax)))
        dq = g.op("Mul", g.op("Sub", q, zp), scale)
        marked = g.op(f"{MARKER_DOMAIN}::Point", dq, index_i=index)
        marked.setType(x.type())
        return marked


class ExportQDQ(nn.Module):
    """The export-mode twin of :class:`ptq_core.quantize.FakeQuantize` (same numbers in PyTorch)."""

    def __init__(self, point: str, index: int, pq: PointQuant) -> None:
        super().__init__()
        self.point, self.index, self.pq = point, index, pq

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pq = self.pq
        if pq.quant.mode == "dynamic" and pq.granularity == "per_token":
            return _PerTokenQDQ.apply(x, pq.quant.bits, pq.quant.scheme, pq.qmin, pq.qmax, self.index)
        if pq.quant.mode == "dynamic":
            return _DynamicQDQ.apply(x, self.index)
        assert pq.scale is not None and pq.zero_point is not None
        return _StaticQDQ.apply(x, pq.scale, pq.zero_point, pq.qmin, pq.qmax, pq.qmin < 0, self.index)


# -- the export --------------------------------------------------------------------------------------
# Makes the module put on one point: (point name, marker index, its quantizer) -> module.
QDQFactory = Callable[[str, int, PointQuant], nn.Module]


def export_module(
    prepared: PreparedModel, plan: QuantPlan, *, qdq: QDQFactory = ExportQDQ, onnx_forms: bool = True,
) -> tuple[torch.fx.GraphModule, list[str]]:
    """A copy of the prepared model with fake-quantized weights and a Q/DQ module on every point.

    ``qdq`` makes each point's module (default :class:`ExportQDQ`, the ONNX one; the LiteRT export
    passes its PT2E form, :mod:`ptq_core.tflite.qdq`). ``onnx_forms`` rewrites what only the ONNX
    writer needs: Linear inputs flattened to 2-D (:func:`flatten_linear_inputs`) and zero padding as
    :class:`ExportPad`. Returns the module and the point name of each marker index.
    """
    gm = copy.deepcopy(prepared.graph_module)
    set_weights(gm, plan)
    if onnx_forms:
        flatten_linear_inputs(gm)
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
    for node in nodes if onnx_forms else []:  # zero padding modules -> ExportPad (padding on all four sides is a 4-tuple)
        mod = modules.get(str(node.target)) if node.op == "call_module" else None
        if isinstance(mod, nn.ZeroPad1d | nn.ZeroPad2d | nn.ConstantPad1d | nn.ConstantPad2d) and float(mod.value) == 0.0:
            parent, _, attr = str(node.target).rpartition(".")
            setattr(gm.get_submodule(parent) if parent else gm, attr, ExportPad(tuple(int(p) for p in mod.padding)))
    for i, (name, _pq) in enumerate(plan.points.items()):
        order.append(name)
        only = reads_for_weights(gm) if plan.points[name].quant.mode == "dynamic" else None  # graph rule 6
        insert_after(gm, prepared.point(name).node, f"ptq_export_{i}", qdq(name, i, plan.points[name]), only=only)
    for j, (node_name, src) in enumerate(requant_after):
        idx = len(order)
        order.append(src)
        insert_after(gm, node_name, f"ptq_export_pt_{j}", qdq(src, idx, plan.points[src]))
    gm.graph.lint()
    gm.recompile()
    return gm, order


def example_input(prepared: PreparedModel) -> torch.Tensor:
    node = next(n for n in prepared.graph_module.graph.nodes if n.op == "placeholder")
    meta = node.meta.get("tensor_meta")
    if meta is None:
        raise ExportError("the prepared model has no recorded input shape; prepare it with an example input")
    shape = (1, *tuple(meta.shape)[1:])
    return torch.zeros(shape, dtype=meta.dtype)


class _TokenInputs(nn.Module):
    """``(input_ids, attention_mask)`` -> the model's one ``[N, 2, L]`` tensor: ONNX gets the two inputs users feed."""

    PREFIX = "inner."  # what the exporter puts before the wrapped model's parameter names

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.inner(torch.stack([input_ids, attention_mask], dim=1))


def flatten_linear_inputs(gm: torch.fx.GraphModule) -> int:
    """Run every Linear on a [.., K] input (rank > 2) as ``reshape(-1, K) -> Linear -> reshape back``, in place.

    The TorchScript exporter writes a Linear on a 2-D input as ``Gemm(A, W, b, transB=1)`` with the
    layer's own weight initializer, the form the weight rewrites (int8 codes, MatMulNBits,
    MatMulInteger) look for; on a 3-D input it writes MatMul with a folded, renamed transpose.
    A reshape keeps the input's grid, so the pass-through rule gives it a Q/DQ of the same scale.
    Returns how many Linear calls were rewritten.
    """
    modules = dict(gm.named_modules())
    count = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or not isinstance(modules.get(str(node.target)), nn.Linear):
            continue
        x = node.args[0]
        meta = x.meta.get("tensor_meta") if isinstance(x, torch.fx.Node) else None
        if meta is None or len(meta.shape) <= 2:
            continue
        in_features, out_features = modules[str(node.target)].in_features, modules[str(node.target)].out_features
        with gm.graph.inserting_before(node):
            flat = gm.graph.call_method("reshape", (x, -1, in_features))
            # reshape back with size(d) of the leading dims: each stays dynamic in the trace (flatten/unflatten
            # and a sliced torch.Size are written with the example's sizes as constants)
            lead = [gm.graph.call_method("size", (x, d)) for d in range(len(meta.shape) - 2)]
        node.args = (flat,)
        with gm.graph.inserting_after(node):
            out = gm.graph.call_method("reshape", (node, *lead, -1, out_features))
        node.replace_all_uses_with(out, delete_user_cb=lambda user, out=out: user is not out)
        count += 1
    if count:
        gm.graph.lint()
        gm.recompile()
    return count


def torch_export(module: nn.Module, example: torch.Tensor, opset: int, *, markers: bool = True) -> onnx.ModelProto:
    """Export with the TorchScript exporter; a text model gets two inputs (``input_ids``, ``attention_mask``)."""
    args: tuple[torch.Tensor, ...]
    if is_tokens(example):
        module, args = _TokenInputs(module), (example[:, 0].contiguous(), example[:, 1].contiguous())
        names, out = list(TOKEN_INPUTS), EMBEDDING_OUTPUT
        axes = {**{n: {0: "batch", 1: "sequence"} for n in names}, out: {0: "batch"}}
    else:
        args, names, out = (example,), [INPUT_NAME], OUTPUT_NAME
        axes = {INPUT_NAME: {0: "batch"}, OUTPUT_NAME: {0: "batch"}}
    buf = io.BytesIO()
    with warnings.catch_warnings(), torch.no_grad():
        # The TorchScript exporter warns that it is deprecated in favour of dynamo=True, which needs
        # seconds per export (torch.export tracing) against milliseconds here.
        warnings.simplefilter("ignore")
        torch.onnx.export(  # a BytesIO works; the stub asks for a path
            module, args, buf, dynamo=False, opset_version=min(opset, TORCH_MAX_OPSET),  # type: ignore[arg-type]
            input_names=names, output_names=[out], dynamic_axes=axes,
            do_constant_folding=True, custom_opsets={MARKER_DOMAIN: 1} if markers else None,
        )
    model = onnx.load_from_string(buf.getvalue())
    if isinstance(module, _TokenInputs):  # weights named as the model names them (the rewrites find them so)
        _strip_prefix(model, _TokenInputs.PREFIX)
    return model


def _strip_prefix(model: onnx.ModelProto, prefix: str) -> None:
    renames = {t.name: t.name[len(prefix):] for t in model.graph.initializer if t.name.startswith(prefix)}
    for t in model.graph.initializer:
        t.name = renames.get(t.name, t.name)
    for node in model.graph.node:
        for i, name in enumerate(node.input):
            if name in renames:
                node.input[i] = renames[name]


def strip_markers(model: onnx.ModelProto) -> dict[int, str]:
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


def set_opset(model: onnx.ModelProto, opset: int) -> onnx.ModelProto:
    current = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    if current == opset:
        return model
    try:
        return onnx.version_converter.convert_version(model, opset)
    except Exception as exc:  # the converter raises plain RuntimeErrors
        raise ExportError(f"cannot convert the exported graph from opset {current} to {opset}: {exc}") from None
