"""Edits of the exported ONNX graph: ptq_core's integer weight codes, MatMulNBits, integer zero padding.

What lives here: :class:`OnnxGraph` (a mutable index over a ModelProto), :func:`weight_format`
(how a quantized layer's weights are written: int8 | int4 | blocked | nbits | dynamic, and
:func:`nbits_fit`, whether they fit MatMulNBits), the rewrites of one weight initializer
(:func:`rewrite_dq`: integer codes -> DequantizeLinear per tensor, channel or block;
:func:`emit_nbits`: MatMulNBits; :func:`emit_dynamic`: MatMulInteger after DynamicQuantizeLinear)
and of zero padding (:func:`integer_pads`, :func:`fold_pads_into_convs`). The codes are
:func:`ptq_core.ranges.quantize_weight`'s, never re-rounded.

Not here: the torch-side modules and the TorchScript export (:mod:`ptq_core.onnx.qdq`), the
report (:mod:`ptq_core.onnx.report`), the entry points (:mod:`ptq_core.onnx.export`). Nothing
here imports onnxruntime.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper

from ..quantize import LayerQuant
from ..ranges import quantize_weight

NBITS_BITS = (2, 4, 8)  # MatMulNBits weight widths (onnxruntime contrib op)
NBITS_MAX_BLOCK = 128  # per-channel scales are repeated over blocks of at most this many inputs


# -- how each layer's weights are written ------------------------------------------------------------
def nbits_fit(lq: LayerQuant) -> bool:
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


def weight_format(lq: LayerQuant, mode: str = "static") -> str:
    """How a quantized layer's weights are written: int8 | int4 | blocked | nbits | dynamic.

    int8: 5..8-bit codes in an (u)int8 tensor, DequantizeLinear per tensor/channel (integer kernels
    use them); nbits: MatMulNBits (Linear, 2/4/8 bits, blocks fit); int4: 2..4-bit codes in an
    (u)int4 tensor (opset 21), dequantized to float; blocked: per-group weights, block-wise
    DequantizeLinear (opset 21), float compute; dynamic: int8 codes for MatMulInteger after the
    input's DynamicQuantizeLinear (dynamic mode, Linear, 5..8 bits).
    """
    assert lq.quant is not None
    q = lq.quant
    nbits = nbits_fit(lq)
    if q.granularity == "per_group" and not _one_group(lq):
        return "nbits" if nbits else "blocked"
    if mode == "dynamic" and lq.unit.kind == "linear" and q.bits > 4:
        return "dynamic"  # DynamicQuantizeLinear + MatMulInteger: onnxruntime's dynamic integer Linear
    if q.bits == 8 and mode == "static":
        return "int8"  # QLinearConv / QGemm: integer in, integer out
    if nbits and (q.bits < 8 or mode != "static"):
        return "nbits"
    return "int8" if q.bits > 4 else "int4"


# -- weights: integer codes + DequantizeLinear, or MatMulNBits ----------------------------------------------
@dataclass
class OnnxGraph:
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


def rewrite_dq(g: OnnxGraph, lq: LayerQuant, wname: str, consumer: onnx.NodeProto, fmt: str) -> dict[str, Any]:
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


def emit_nbits(g: OnnxGraph, lq: LayerQuant, wname: str, gemm: onnx.NodeProto) -> dict[str, Any] | None:
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


_SHAPE_OPS = ("Flatten", "Reshape", "Squeeze", "Unsqueeze", "Transpose")  # move values, never change them


def emit_dynamic(g: OnnxGraph, lq: LayerQuant, wname: str, gemm: onnx.NodeProto) -> dict[str, Any] | None:
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
    qp = lq.qparams
    w = numpy_helper.to_array(g.inits[wname])
    codes = quantize_weight(torch.from_numpy(w.copy()), qp).numpy()
    base = lq.unit.name
    q_name = g.add_init(numpy_helper.from_array(np.ascontiguousarray(codes.T).astype(np.int8), f"{base}.weight_quantized_t"))
    zp = qp.zero_point.numpy().astype(np.int8)
    z_name = g.add_init(numpy_helper.from_array(zp if zp.ndim else zp.reshape(()), f"{base}.weight_zero_point"))
    s_name = g.add_init(numpy_helper.from_array(qp.scale.numpy().astype(np.float32), f"{base}.weight_scale"))
    a_q, a_s, a_z = dql.output
    # This Linear's own copy of the shape ops carries the uint8 codes (value-preserving, so exact); the float
    # chain stays for whoever else reads it (the exporter merges identical reshapes of query, key and value).
    src = a_q
    nodes = []
    for node in chain:
        copy = onnx.NodeProto()
        copy.CopyFrom(node)
        copy.input[0] = src
        copy.output[0] = f"{base}/{node.output[0]}_u8"
        copy.name = f"{base}/{node.name}_u8"
        nodes.append(copy)
        src = copy.output[0]
    out = gemm.output[0]
    nodes += [
        helper.make_node("MatMulInteger", [src, q_name, a_z, z_name], [f"{base}/mm_i32"], name=f"{base}/MatMulInteger"),
        helper.make_node("Cast", [f"{base}/mm_i32"], [f"{base}/mm_f32"], name=f"{base}/Cast", to=TensorProto.FLOAT),
        helper.make_node("Mul", [a_s, s_name], [f"{base}/scale"], name=f"{base}/ScaleMul"),
    ]
    bias = gemm.input[2] if len(gemm.input) > 2 and gemm.input[2] else ""
    nodes.append(helper.make_node("Mul", [f"{base}/mm_f32", f"{base}/scale"], [out if not bias else f"{base}/mm_scaled"], name=f"{base}/Mul"))
    if bias:
        nodes.append(helper.make_node("Add", [f"{base}/mm_scaled", bias], [out], name=f"{base}/Add"))
    graph_nodes = list(g.model.graph.node)
    i = next(i for i, n in enumerate(graph_nodes) if n is gemm)
    graph_nodes[i : i + 1] = nodes
    del g.model.graph.node[:]
    g.model.graph.node.extend(graph_nodes)
    for node in [*reversed(chain), cur]:  # the float path, where nothing reads it any more
        if not g.consumers(node.output[0]):
            g.model.graph.node.remove(node)
    g.drop_init(wname)
    return {"format": "dynamic", "initializer": q_name, "scale": s_name, "zero_point": z_name, "dtype": "int8",
            "axis": 1 if qp.granularity == "per_channel" else None, "node": f"{base}/MatMulInteger"}


def shapes_from_codes(g: OnnxGraph) -> int:
    """``DequantizeLinear -> Shape`` -> ``Shape`` of the DequantizeLinear's input (the codes): the same shape.

    A Linear on a [N, L, K] input is exported as reshape -> Gemm -> reshape back with N and L read
    from the input (:func:`ptq_core.onnx.qdq.flatten_linear_inputs`); reading them from the codes
    leaves each DequantizeLinear one consumer, which onnxruntime's QDQ fusions require. Returns how
    many Shape nodes were moved.
    """
    count = 0
    for node in g.model.graph.node:
        if node.op_type != "Shape":
            continue
        dq = g.producer(node.input[0])
        if dq is not None and dq.op_type == "DequantizeLinear":
            node.input[0] = dq.input[0]
            count += 1
    return count


# -- zero padding on the integer codes ---------------------------------------------------------------
def _const_value(g: OnnxGraph, name: str) -> np.ndarray | None:
    if name in g.inits:
        return numpy_helper.to_array(g.inits[name])
    node = g.producer(name)
    if node is not None and node.op_type == "Constant":
        return numpy_helper.to_array(helper.get_attribute_value(node.attribute[0]))
    return None


def fold_pads_into_convs(g: OnnxGraph) -> int:
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


def integer_pads(g: OnnxGraph) -> int:
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

