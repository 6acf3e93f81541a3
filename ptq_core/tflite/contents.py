"""What a written .tflite holds, read back with the LiteRT interpreter, and whether ptq_core's numbers are in it.

What lives here: :class:`Contents` (tensors with their dtype and quantization, the ops, the
interface dtypes), :func:`read_contents` and :func:`carried`, which looks up every activation
point's (scale, zero point - 128) and every layer's weight scales among the file's int8 tensors.
Not here: writing the file (:mod:`ptq_core.tflite.export`), running it (:mod:`ptq_core.tflite.runtime`).

The check is by value, not by tensor name: the converter names tensors after the modules that made
them (``torch.nn.modules.conv.Conv2d_conv1;...``), fused ops after several, so a name does not map
back to one ptq_core point. A point counts as carried when an int8 tensor in the file has exactly its
float32 scale and its int8 zero point; a layer when an int8 weight tensor has exactly its per-channel
(or per-tensor) scales with zero point 0.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..quantize import QuantPlan
from .qdq import UINT8_SHIFT, WeightForm

# Ops that only change a tensor's type (the interface of a model with float I/O, or a float island).
_CONVERSIONS = {"QUANTIZE", "DEQUANTIZE"}


@dataclass
class Contents:
    """The tensors and ops of one .tflite, as the interpreter lists them (default delegates not applied)."""

    tensors: list[dict[str, Any]]
    ops: list[dict[str, Any]]
    input_dtype: str
    output_dtype: str
    op_counts: dict[str, int] = field(default_factory=dict)

    def float_ops(self) -> list[str]:
        """Ops that compute in float32 (a float output), other than type conversions: ``["LOGISTIC (tensor 12)"]``."""
        out = []
        for op in self.ops:
            if op["op_name"] in _CONVERSIONS:
                continue
            outs = [self.tensors[i] for i in op["outputs"] if 0 <= i < len(self.tensors)]
            if any(t["dtype"] == "float32" for t in outs):
                out.append(f"{op['op_name']} ({outs[0]['name'][:80]})")
        return out


def read_contents(path: str | Path) -> Contents:
    from ai_edge_litert.interpreter import Interpreter, OpResolverType

    it = Interpreter(model_path=str(path), experimental_op_resolver_type=OpResolverType.BUILTIN_WITHOUT_DEFAULT_DELEGATES)
    by_index: dict[int, dict[str, Any]] = {}
    for d in it.get_tensor_details():
        qp = d.get("quantization_parameters", {})
        by_index[d["index"]] = {
            "name": d["name"], "dtype": np.dtype(d["dtype"]).name, "shape": tuple(int(s) for s in d["shape"]),
            "scales": np.asarray(qp.get("scales", []), dtype=np.float32),
            "zero_points": np.asarray(qp.get("zero_points", []), dtype=np.int64),
            "axis": int(qp.get("quantized_dimension", 0)),
        }
    tensors = [by_index.get(i, {"name": "", "dtype": "unknown", "shape": (), "scales": np.zeros(0, np.float32),
                                "zero_points": np.zeros(0, np.int64), "axis": 0}) for i in range(max(by_index) + 1)]
    # _get_ops_details is the interpreter's own listing (op names, tensor indices); private but stable since TF 2.4
    ops = [{"op_name": o["op_name"], "inputs": [int(i) for i in o["inputs"]], "outputs": [int(i) for i in o["outputs"]]}
           for o in it._get_ops_details()]
    inp, out = it.get_input_details()[0], it.get_output_details()[0]
    return Contents(tensors, ops, np.dtype(inp["dtype"]).name, np.dtype(out["dtype"]).name,
                    dict(Counter(o["op_name"] for o in ops)))


def _activation_grid(t: dict[str, Any]) -> tuple[float, int] | None:
    if t["dtype"] != "int8" or t["scales"].size != 1:
        return None
    return float(t["scales"][0]), int(t["zero_points"][0]) if t["zero_points"].size else 0


def carried(contents: Contents, plan: QuantPlan, forms: list[WeightForm]) -> tuple[list[str], list[str], list[str]]:
    """``(points found, points not found, layers whose weight scales were found)`` in the file."""
    grids = {g for t in contents.tensors if (g := _activation_grid(t)) is not None}
    found: list[str] = []
    missing: list[str] = []
    for name, pq in plan.points.items():
        assert pq.scale is not None and pq.zero_point is not None
        shift = UINT8_SHIFT if pq.qmin >= 0 else 0
        key = (float(np.float32(pq.scale)), int(pq.zero_point) + shift)
        (found if key in grids else missing).append(name)
    weights = [t for t in contents.tensors if t["dtype"] == "int8" and t["scales"].size >= 1]
    layers = []
    for form in forms:
        if form.source != "ptq_core" or form.scale is None:
            continue
        want = form.scale.reshape(-1).numpy().astype(np.float32)
        if any(t["scales"].shape == want.shape and np.array_equal(t["scales"], want) and not t["zero_points"].any()
               for t in weights):
            layers.append(form.layer)
    return found, missing, layers
