"""Rewrites of onnxruntime's optimized graph: quantizer chains kept in its blocked layout, a memory-aware schedule.

onnxruntime (graph optimization level ALL, x86) runs convolutions in a blocked channel layout
(``com.microsoft.nchwc`` ops) and wraps every op it cannot run blocked between a
``ReorderOutput`` (blocked -> NCHW) and a ``ReorderInput`` (NCHW -> blocked, padded channels
filled with zeros). The simulation's quantizers (Mul, QuantizeLinear, Clip, DequantizeLinear)
and the probe's reductions are such ops, so a fake-quantized network pays two layout copies per
activation: a third of its forward. Those ops only combine scalars with one tensor, or two
tensors of one shape, elementwise, so they give the same values on the blocked tensor.

:func:`elide_reorders` rewrites onnxruntime's own optimized graph (written through
``SessionOptions.optimized_model_filepath``, its documented offline-optimization output; only
valid on the machine that wrote it, which is the one that loads it here):

* a *region* starts at each ReorderOutput and grows through the ops above (scalars: rank-0
  graph inputs and initializers; two tensors only with the same inferred shape);
* each region op gets a twin reading the blocked tensors; a ReorderInput of a region tensor
  is replaced by its twin, a whole-tensor ReduceSumSquare by its twin;
* only where that is bit-identical: the padded channels of every twin must be exactly zero,
  as ReorderInput would write them. The value of the padded channels is followed op by op
  (a convolution with a zero-preserving activation writes 0; Mul keeps 0; QuantizeLinear turns
  0 into its zero point, a Clip keeps it (the zero point lies in the clip range, as every
  ptq_core plan has it), DequantizeLinear with the same zero point returns 0);
* a region with any other consumer, or a graph output, keeps its reorders.

:func:`schedule` orders the nodes so that the probe's per-layer reductions run as early as
their inputs allow (see its docstring). Nothing here imports onnxruntime: the input and output are ``onnx.ModelProto``.
"""

from __future__ import annotations

from typing import Any

import onnx
from onnx import helper

NCHWC = "com.microsoft.nchwc"
_UNARY = {"Round", "Relu"}
_ZERO_PRESERVING_ACTIVATIONS = {None, b"Relu", b"LeakyRelu", b"Tanh"}  # Clip: checked against its bounds


def _attr(node: onnx.NodeProto, name: str, default: Any = None) -> Any:
    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return default


def _scalars(model: onnx.ModelProto) -> set[str]:
    g = model.graph
    names = {t.name for t in g.initializer if len(t.dims) == 0}
    names |= {i.name for i in g.input if i.type.tensor_type.HasField("shape") and len(i.type.tensor_type.shape.dim) == 0}
    for n in g.node:
        if n.op_type == "Constant" and n.domain == "":
            value = _attr(n, "value")
            if value is not None and len(value.dims) == 0:
                names.add(n.output[0])
    return names


def _zero_padded(tensor: str, producer: dict[str, onnx.NodeProto], memo: dict[str, bool]) -> bool:
    """Whether ``tensor`` is blocked with exactly 0 in its padded channels.

    True for the output of a blocked convolution with a zero-preserving activation (its padded
    filters and biases are 0), a ReorderInput (it writes 0), and blocked pooling, Add or an
    activation of such tensors. False for anything else, including NCHW tensors.
    """
    if tensor in memo:
        return memo[tensor]
    memo[tensor] = False  # no cycles in a graph; guards the recursion anyway
    node = producer.get(tensor)
    result = False
    if node is not None and node.domain == NCHWC:
        if node.op_type == "ReorderInput":
            result = True
        elif node.op_type == "Conv":
            act = _attr(node, "activation")
            if act == b"Clip":
                lo, hi = (list(_attr(node, "activation_params", [])) + [None, None])[:2]
                act_ok = lo is not None and hi is not None and lo <= 0.0 <= hi
            else:
                act_ok = act in _ZERO_PRESERVING_ACTIVATIONS
            summed = node.input[3] if len(node.input) > 3 and node.input[3] else None  # a fused residual Sum
            result = act_ok and (summed is None or _zero_padded(summed, producer, memo))
        elif node.op_type in ("MaxPool", "AveragePool", "GlobalMaxPool", "GlobalAveragePool"):
            result = _zero_padded(node.input[0], producer, memo)
    elif node is not None and node.domain == "" and node.op_type in ("Add", "Sum", "Relu"):
        result = all(_zero_padded(i, producer, memo) for i in node.input if i)
    memo[tensor] = result
    return result


def elide_reorders(model: onnx.ModelProto, shapes: dict[str, Any]) -> int:
    """Rewrite ``model`` in place as described above; return the number of ReorderInputs removed.

    ``shapes``: tensor name -> shape as inferred on the graph before optimization (names that
    onnxruntime keeps), used to allow a two-tensor op only between tensors of one shape.
    """
    g = model.graph
    nodes = list(g.node)
    scalars = _scalars(model)
    producer = {o: n for n in nodes for o in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in nodes:
        for name in n.input:
            consumers.setdefault(name, []).append(n)
    graph_outputs = {o.name for o in g.output}

    memo: dict[str, bool] = {}
    blocked: dict[str, str] = {}  # NCHW tensor -> its blocked twin
    pad: dict[str, Any] = {}  # NCHW tensor -> value of the twin's padded channels: 0.0, ("zp", name) or None (unknown)
    group: dict[str, str] = {}  # tensor -> region id (union-find parent)
    twins: dict[int, onnx.NodeProto] = {}  # id(original node) -> twin

    def find(t: str) -> str:
        while group[t] != t:
            group[t] = group[group[t]]
            t = group[t]
        return t

    for n in nodes:
        if n.domain == NCHWC and n.op_type == "ReorderOutput" and _attr(n, "channels_last", 0) == 0:
            out = n.output[0]
            blocked[out], group[out] = n.input[0], out
            pad[out] = 0.0 if _zero_padded(n.input[0], producer, memo) else None
            continue
        if n.domain != "" or not n.input or n.input[0] not in blocked:
            continue
        tensors = [i for i in n.input if i and i not in scalars]
        if not all(t in blocked for t in tensors):
            continue
        op, first = n.op_type, pad[n.input[0]]
        if op in _UNARY and len(tensors) == 1:
            value = first if first == 0.0 else None
        elif op == "Mul" and len(tensors) == 1:
            value = 0.0 if first == 0.0 else None
        elif op in ("Add", "Sub", "Mul") and len(tensors) == 2:
            same = shapes.get(tensors[0]) is not None and shapes.get(tensors[0]) == shapes.get(tensors[1])
            if not same:
                continue
            value = 0.0 if first == 0.0 and pad[tensors[1]] == 0.0 else None
        elif op == "QuantizeLinear" and len(tensors) == 1:
            value = ("zp", n.input[2]) if first == 0.0 and len(n.input) > 2 else None
        elif op == "Clip" and len(tensors) == 1:
            value = first if isinstance(first, tuple) else None  # the zero point lies within the clip range
        elif op == "DequantizeLinear" and len(tensors) == 1:
            value = 0.0 if first == ("zp", n.input[2] if len(n.input) > 2 else None) else None
        elif op == "ReduceSumSquare" and len(n.input) == 1 and _attr(n, "axes") is None and _attr(n, "keepdims", 1) == 0:
            if first != 0.0:
                continue  # the padded channels would be summed too
            value = None
        else:
            continue
        twin = onnx.NodeProto()
        twin.CopyFrom(n)
        twin.name = f"{n.name or n.output[0]}/nchwc"
        for k, name in enumerate(n.input):
            if name in blocked:
                twin.input[k] = blocked[name]
        out = n.output[0]
        if op != "ReduceSumSquare":
            twin.output[0] = f"{out}/nchwc"
            blocked[out], pad[out] = twin.output[0], value
        twins[id(n)] = twin
        group[out] = find(tensors[0])
        for t in tensors[1:]:
            group[find(t)] = find(tensors[0])

    # A region is rewritten only if every consumer outside it is a ReorderInput and every twin pad is 0.
    ok: dict[str, bool] = {}
    in_region = {t for t in group}
    for t in in_region:
        root = find(t)
        ok.setdefault(root, True)
        if t not in blocked:
            continue  # a reduction's scalar output
        if t in graph_outputs or pad[t] != 0.0 and any(c.op_type == "ReorderInput" for c in consumers.get(t, [])):
            ok[root] = False
        for c in consumers.get(t, []):
            if id(c) in twins or (c.domain == NCHWC and c.op_type == "ReorderInput" and _attr(c, "channels_last", 0) == 0):
                continue
            ok[root] = False

    rename: dict[str, str] = {}
    drop: set[int] = set()
    removed = 0
    for n in nodes:
        if n.domain == NCHWC and n.op_type == "ReorderInput" and n.input[0] in group and ok[find(n.input[0])]:
            rename[n.output[0]] = blocked[n.input[0]]
            drop.add(id(n))
            removed += 1
    result: list[onnx.NodeProto] = []
    for n in nodes:
        twin_of = twins.get(id(n))
        if twin_of is not None and ok[find(n.output[0])]:
            result.append(twin_of)
            if n.op_type == "ReduceSumSquare":
                drop.add(id(n))  # the twin writes the same (graph output) name
        if id(n) not in drop:
            result.append(n)
    for n in result:
        for k, name in enumerate(n.input):
            if name in rename:
                n.input[k] = rename[name]
    needed, keep = set(graph_outputs), []
    for n in reversed(result):  # drop what nothing reads any more: the NCHW chains and their ReorderOutputs
        if any(o in needed for o in n.output):
            keep.append(n)
            needed.update(i for i in n.input if i)
    _replace_nodes(g, keep[::-1])
    return removed


def schedule(model: onnx.ModelProto, outputs: list[str]) -> None:
    """Reorder ``model``'s nodes in place so each output's inputs are computed just before it, in ``outputs`` order.

    onnxruntime executes a loaded graph in a depth-first order from its leaves, taken in node
    order. Listing the probe's per-layer reductions first, in network order, makes it compute
    the FP32 and the quantized graph layer by layer and free each layer's tensors as it goes;
    otherwise it may run one whole graph first and keep every tapped tensor of a batch alive.
    """
    g = model.graph
    producer = {o: n for n in g.node for o in n.output if o}
    placed: set[int] = set()
    order: list[onnx.NodeProto] = []
    for name in outputs:
        start = producer.get(name)
        stack = [(start, False)] if start is not None else []
        while stack:  # iterative post-order DFS: a node after everything it reads
            node, ready = stack.pop()
            if id(node) in placed:
                continue
            if ready:
                placed.add(id(node))
                order.append(node)
                continue
            stack.append((node, True))
            for i in reversed(node.input):
                p = producer.get(i)
                if p is not None and id(p) not in placed:
                    stack.append((p, False))
    rest = [n for n in g.node if id(n) not in placed]  # reads nothing an output needs: keep, after
    _replace_nodes(g, order + rest)


def _replace_nodes(g: onnx.GraphProto, nodes: list[onnx.NodeProto]) -> None:
    copies = []
    for n in nodes:  # copies: the originals belong to the field being cleared
        c = onnx.NodeProto()
        c.CopyFrom(n)
        copies.append(c)
    del g.node[:]
    g.node.extend(copies)
