"""The simulated model as ONNX, for the onnxruntime backend: one export per structure, values fed per config.

What lives here: :func:`export_structure` (:func:`ptq_core.simulation.simulation_graph`, the
FP32 and the quantized model side by side, exported with the TorchScript exporter, and the two
graphs cut from it), :class:`Structure` (those graphs with the names of their inputs and
outputs), :func:`prune` and :func:`with_initializers` (a config's weights made initializers).

Not here: the graph itself, its ops and what a config feeds into it
(:mod:`ptq_core.simulation`, which also says why its numbers are the simulation's); sessions
(:mod:`ptq_core.onnx.session`), their layout rewrite (:mod:`ptq_core.onnx.layout`) and running
them (:mod:`ptq_core.onnx.backend`). Nothing here imports onnxruntime.
"""

from __future__ import annotations

import copy
import io
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import torch

from ..errors import ExportError
from ..graph import PreparedModel
from ..quantize import QuantPlan
from ..simulation import FP32_LOGITS, INPUT, LOGITS, simulation_graph, structure_key

OPSET = 17  # QuantizeLinear/DequantizeLinear with zero points as inputs, Clip on int8/uint8 codes


@dataclass
class Structure:
    """The exported graphs of one structure, with the names of their inputs and outputs."""

    key: tuple[Any, ...]
    probe: onnx.ModelProto  # FP32 and quantized graphs interleaved; logits, dynamic ranges, two sums per tap
    forward: onnx.ModelProto  # the quantized graph alone: logits and dynamic ranges
    float_model: onnx.ModelProto  # the FP32 graph alone (for the latency reference)
    weight_inputs: dict[str, str]  # layer -> input name (made an initializer per weight setting)
    static_inputs: dict[str, tuple[str, str, str]]  # point -> (inv_scale, scale, zero_point) input names
    dynamic_checks: list[tuple[str, str]]  # (point, output: NaN when its input has NaN or Inf), network order
    taps: list[tuple[str, str, str, str]]  # (kind "output" | "quantizer", name, signal output, noise output)
    export_s: float = 0.0
    # tensor -> shape after constant folding, for the layout pass (filled by ptq_core.onnx.session.infer_shapes)
    shapes: dict[str, tuple[Any, ...] | None] = field(default_factory=dict)


def export_structure(prepared: PreparedModel, plan: QuantPlan) -> Structure:
    """Export the structure of ``plan`` on ``prepared`` (no per-config value is baked in)."""
    start = time.perf_counter()
    gm, inputs, out_names, info = simulation_graph(prepared, plan)
    batch = {0: "batch"}
    dynamic_axes = {INPUT: batch, LOGITS: batch, FP32_LOGITS: batch}
    buf = io.BytesIO()
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer warnings
            torch.onnx.export(
                gm, tuple(t for _, t in inputs), buf, dynamo=False, opset_version=OPSET,  # type: ignore[arg-type]
                input_names=[n for n, _ in inputs], output_names=out_names, dynamic_axes=dynamic_axes,
                do_constant_folding=True,
            )
    except ExportError:
        raise
    except Exception as exc:  # the exporter raises many types; all mean the same to a user
        raise ExportError(f"torch.onnx could not export the simulated model: {type(exc).__name__}: {str(exc).splitlines()[0][:300]}") from None
    probe = onnx.load_from_string(buf.getvalue())
    forward = prune(probe, [LOGITS, *(name for _, name in info["dynamic_checks"])])
    float_model = prune(probe, [FP32_LOGITS])
    return Structure(structure_key(prepared, plan), probe, forward, float_model, export_s=time.perf_counter() - start, **info)


def prune(model: onnx.ModelProto, outputs: Sequence[str]) -> onnx.ModelProto:
    """A copy of ``model`` computing only ``outputs``: nodes, inputs and initializers nothing needs are dropped."""
    needed, keep = set(outputs), []
    for node in reversed(model.graph.node):
        if any(o in needed for o in node.output):
            keep.append(node)
            needed.update(i for i in node.input if i)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    for repeated, kept in ((g.node, keep[::-1]), (g.output, [o for o in model.graph.output if o.name in outputs]),
                           (g.input, [i for i in model.graph.input if i.name in needed]),
                           (g.initializer, [t for t in model.graph.initializer if t.name in needed])):
        kept = [copy.deepcopy(k) for k in kept]
        del repeated[:]
        repeated.extend(kept)
    return out


def with_initializers(model: onnx.ModelProto, values: dict[str, np.ndarray]) -> onnx.ModelProto:
    """A copy of ``model`` whose inputs named in ``values`` are initializers holding those values."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    present = {i.name for i in g.input}
    kept = [i for i in g.input if i.name not in values]
    del g.input[:]
    g.input.extend(kept)
    g.initializer.extend(onnx.numpy_helper.from_array(v, k) for k, v in values.items() if k in present)
    return out
