"""The simulated model as ONNX, for the onnxruntime backend: one export per structure, values fed per config.

What lives here: :func:`export_structure` (:func:`ptq_core.simulation.simulation_graph`, the
quantized model alone or with the FP32 model beside it for the probe, exported with the
TorchScript exporter), :class:`Structure` (that graph with the names of its inputs and
outputs) and :func:`with_initializers` (a config's weights made initializers).

Not here: the graph itself, its ops and what a config feeds into it
(:mod:`ptq_core.simulation`, which also says why its numbers are the simulation's); sessions
(:mod:`ptq_core.onnx.session`), their layout rewrite (:mod:`ptq_core.onnx.layout`) and running
them (:mod:`ptq_core.onnx.backend`). Nothing here imports onnxruntime.
"""

from __future__ import annotations

import io
import time
import warnings
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
    """One exported simulation graph: the quantized model alone, or with the probe (FP32 beside it), and its names."""

    key: tuple[Any, ...]  # (structure_key, probe)
    model: onnx.ModelProto
    weight_inputs: dict[str, str]  # layer -> input name (made an initializer per weight setting)
    static_inputs: dict[str, tuple[str, ...]]  # point -> (inv_scale, scale, zero_point, lo, hi) input names
    dynamic_checks: list[tuple[str, str]]  # (point, output: NaN when its input has NaN or Inf), network order
    taps: list[tuple[str, str, str, str]]  # (kind "output" | "quantizer", name, signal output, noise output); [] without probe
    export_s: float = 0.0
    # tensor -> shape after constant folding, for the layout pass (filled by ptq_core.onnx.session.infer_shapes)
    shapes: dict[str, tuple[Any, ...] | None] = field(default_factory=dict)


def export_structure(prepared: PreparedModel, plan: QuantPlan, *, probe: bool) -> Structure:
    """Export the structure of ``plan`` on ``prepared`` (no per-config value is baked in), with or without the probe.

    Without the probe the graph holds the quantized model alone: about half the nodes, so half the
    export time (measured on EfficientNet-Lite0: 0.6 s against 1.4 s) for the answer a control
    change needs first; the probe graph is exported when the per-layer errors are asked for.
    """
    start = time.perf_counter()
    gm, inputs, out_names, info = simulation_graph(prepared, plan, probe=probe)
    batch = {0: "batch"}
    # Token inputs [N, 2, L] (a text model): each batch is as long as its longest text.
    x_axes = {0: "batch", 2: "sequence"} if not inputs[0][1].is_floating_point() else batch
    dynamic_axes = {INPUT: x_axes, LOGITS: batch, **({FP32_LOGITS: batch} if probe else {})}
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
    model = onnx.load_from_string(buf.getvalue())
    return Structure((structure_key(prepared, plan), probe), model, export_s=time.perf_counter() - start, **info)


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
