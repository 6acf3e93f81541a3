"""Write a plan as a full-integer LiteRT (.tflite) model carrying ptq_core's scales and zero points.

What lives here: :func:`check_plan` (what the LiteRT integer kernels can carry, as ExportErrors
naming the field and what is allowed), :func:`export_tflite` and :class:`TfliteReport` (what was
carried, what the converter chose itself, the file). Not here: the Q/DQ form
(:mod:`ptq_core.tflite.qdq`), reading the file back (:mod:`ptq_core.tflite.contents`), running it
(:mod:`ptq_core.tflite.runtime`).

How: the prepared model with ptq_core's Q/DQ on every point (:func:`ptq_core.tflite.qdq.pt2e_module`)
goes through ``litert_torch.convert`` with a static PT2E ``quant_config``. That quantizer is never
run: it only sets the converter's ``qdq_conversion_mode`` to STATIC, so every scale and zero point
in the file is the one written in the graph. This was chosen over running litert-torch's own
``PT2EQuantizer`` prepare and overwriting its observers: that quantizer annotates a fixed op list
(conv+relu, linear, add, pooling, cat) and places its quantizers by its own rules (no ReLU6
fusion: EfficientNet-Lite0's ReLU6 outputs would get a second grid), where ptq_core's placement is
graph.py's, the one the simulation and the ONNX export use.

What is ptq_core's in the file, and what is the converter's:

* activations (static, 8-bit): ptq_core's scale and zero point on every point (uint8 grids as int8
  with zero point - 128); checked after writing, a point whose grid is not found in the file is
  listed as a fallback;
* weights: ptq_core's int8 codes and per-channel (or per-tensor) scales for symmetric weights of 2
  to 8 bits (narrower codes stored in int8). Asymmetric weights (TFLite's int8 kernels need weight
  zero point 0) and per-group weights (one scale per output channel only) cannot be carried: those
  layers get litert-torch's own per-channel symmetric min-max qparams on their FP32 weights, and
  are listed as fallbacks with the reason. No image is needed for that: a weight observer sees only
  the weights;
* biases: the converter's: int32 at scale input_scale x weight_scale (ptq_core keeps biases in float);
* layers in ``keep_float`` run in float between a DEQUANTIZE and a QUANTIZE (a fallback, labelled).

Not exportable (ExportError saying what is allowed): dynamic activations, weight-only configs and
activations other than 8 bits: TFLite's full-integer kernels keep every activation in int8 with a
fixed scale and clamp to the whole int8 range.
"""

from __future__ import annotations

import logging
import os
import re
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..errors import ExportError
from ..graph import PreparedModel
from ..quantize import QuantPlan
from .availability import litert_unavailable, versions
from .contents import carried, read_contents
from .qdq import PointQDQ, QuantizedWeight, WeightForm, pt2e_module, weight_forms

log = logging.getLogger(__name__)

BIAS_NOTE = ("biases: int32 at scale input_scale x weight_scale, rounded by the converter (ptq_core keeps biases in "
             "float; at most half a step of the accumulator apart)")


@dataclass
class TfliteReport:
    """What :func:`export_tflite` wrote and where each number in it came from."""

    path: str
    file_bytes: int
    seconds: float  # conversion, including torch.export and litert-torch's passes
    versions: dict[str, str]
    weights_carried: list[str]  # layers whose int8 codes and scales are ptq_core's (found in the file)
    activations_carried: list[str]  # points whose scale and zero point are ptq_core's (found in the file)
    converter_own: list[dict[str, str]]  # [{"what", "how"}]: numbers the converter chose itself
    fallbacks: list[dict[str, str]]  # [{"layer", "reason"}]: what could not be carried as ptq_core planned it
    ops: dict[str, int]  # TFLite op -> count
    float_ops: list[str]  # ops computing in float32 (kept-float layers, or ops without an int8 kernel)
    input_dtype: str
    output_dtype: str
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def check_plan(plan: QuantPlan) -> None:
    """Raise ExportError unless every activation point is static 8-bit: what full-integer TFLite can carry."""
    if plan.mode == "weight_only":
        raise ExportError(
            "activations: got null (weight-only); allowed for the LiteRT full-integer export: static 8-bit "
            "activations (TFLite's integer kernels need every activation quantized; a weight-only model is not "
            "full-integer)"
        )
    for name, pq in plan.points.items():
        if pq.quant.mode != "static":
            raise ExportError(
                f"activations.mode (point {name}): got {pq.quant.mode!r}; allowed for the LiteRT full-integer export: "
                "'static' (TFLite's integer kernels take a fixed activation scale; its dynamic-range kernels quantize "
                "inputs their own way, not ptq_core's)"
            )
        if pq.quant.bits != 8:
            raise ExportError(
                f"activations.bits (point {name}): got {pq.quant.bits}; allowed for the LiteRT full-integer export: "
                "8 (TFLite keeps activations in int8 and its kernels clamp to the whole int8 range, so a "
                f"{pq.quant.bits}-bit grid cannot be carried)"
            )


_EXECUTING = re.compile(r"While executing %(\w+)")
_OP = re.compile(r"Lowering not found: (\S+)")
_LOCATE_HOPS = 50  # how far along the graph to look for the nearest named layer before and after a failing op


def _first_line(text: str) -> str:
    return next((ln.strip() for ln in text.splitlines() if ln.strip()), "")[:300]


def _layer_name(node: torch.fx.Node, gm: torch.fx.GraphModule) -> str | None:
    """ptq_core's name for the innermost module ``node`` came from: a layer, a point (its quantizer), a module path."""
    stack = node.meta.get("nn_module_stack") or {}
    for path, _type in reversed(list(stack.values())):
        if not path:
            continue
        path = str(path).removeprefix("L['self'].")
        try:
            module = gm.get_submodule(path)
        except AttributeError:
            return path
        if isinstance(module, PointQDQ):  # a point is named after the layer or op producing it
            return module.point
        if isinstance(module, QuantizedWeight):
            return path
        parent, _, attr = path.rpartition(".")
        if attr == "layer" and isinstance(gm.get_submodule(parent) if parent else gm, QuantizedWeight):
            return parent
        return path
    return None


def _nearest(node: torch.fx.Node, gm: torch.fx.GraphModule, forward: bool) -> str | None:
    frontier, seen = [node], {node}
    for _ in range(_LOCATE_HOPS):
        nxt = []
        for n in frontier:
            for m in (n.users if forward else n.all_input_nodes):
                if m not in seen:
                    seen.add(m)
                    name = _layer_name(m, gm)
                    if name is not None:
                        return name
                    nxt.append(m)
        if not nxt:
            return None
        frontier = nxt
    return None


def _locate(node_name: str, gm: torch.fx.GraphModule, example: torch.Tensor) -> str | None:
    """Where the converter's failing aten node (``While executing %name``) sits in ptq_core's terms.

    The converter names the node of its own decomposed program, not a layer; the program is rebuilt
    here the same way (torch.export, then litert-torch's pre-conversion decompositions), which only
    happens when a conversion has already failed.
    """
    from litert_torch import fx_infra

    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")
        ep = torch.export.export(gm, (example,), strict=False)
        ep = fx_infra.safe_run_decompositions(ep, fx_infra.decomp.pre_convert_decomp(), can_skip=False)
    node = next((n for n in ep.graph.nodes if n.name == node_name), None)
    if node is None:
        return None
    own = _layer_name(node, gm)
    if own is not None:
        return f"layer {own}"
    before, after = _nearest(node, gm, forward=False), _nearest(node, gm, forward=True)
    if before and after and before != after:
        return f"the op between {before} and {after}"
    if before or after:
        return f"the op {'after' if before else 'before'} {before or after}"
    return None


def _conversion_error(exc: BaseException, gm: torch.fx.GraphModule, example: torch.Tensor) -> ExportError:
    text = str(exc)
    where = None
    executing = _EXECUTING.search(text)
    if executing is not None:
        try:
            where = _locate(executing.group(1), gm, example)
        except Exception:  # locating is a courtesy: the conversion error itself must come through
            log.debug("could not locate %s", executing.group(1), exc_info=True)
    op = _OP.search(text)
    if op is not None:
        what = f"{op.group(1)} has no LiteRT conversion (litert-torch has no lowering for this PyTorch op)"
    else:
        what = f"{type(exc).__name__}: {_first_line(text)}"
    return ExportError(f"LiteRT-Torch cannot convert {where or 'the model'}: {what}")


def _convert(gm: torch.fx.GraphModule, example: torch.Tensor) -> bytes:
    # litert-torch prints every conversion step to stdout (a server's log, the CLI's output) unless told not to;
    # a user who set the variable keeps their choice
    os.environ.setdefault("LITERT_TORCH_SHOW_PROGRESS", "n")
    import litert_torch
    from litert_torch.quantize.pt2e_quantizer import PT2EQuantizer, get_symmetric_quantization_config
    from litert_torch.quantize.quant_config import QuantConfig as LiteRTQuantConfig

    # Never run on the model: it only tells the converter the graph holds static Q/DQ pairs (qdq_conversion_mode).
    static = LiteRTQuantConfig(pt2e_quantizer=PT2EQuantizer().set_global(get_symmetric_quantization_config(is_per_channel=True)))
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # torch.export / litert deprecation chatter, not the user's business
        model = litert_torch.convert(gm, (example,), quant_config=static)
    return bytes(model.model_content())


def export_tflite(
    prepared: PreparedModel, plan: QuantPlan, path: str | os.PathLike[str], *, example: torch.Tensor,
) -> TfliteReport:
    """Write ``plan`` on ``prepared`` to ``path`` as a full-integer .tflite; raise ExportError naming the layer on failure.

    ``example`` is one input (batch 1 is taken from it): the file's fixed input shape.
    """
    reason = litert_unavailable()
    if reason is not None:
        raise ExportError(f"LiteRT export unavailable: {reason}")
    check_plan(plan)
    start = time.perf_counter()
    forms = weight_forms(prepared, plan)
    gm = pt2e_module(prepared, plan, forms)
    try:
        content = _convert(gm, example[:1].contiguous())
    except ImportError as exc:
        raise ExportError(f"litert-torch is installed but does not import: {type(exc).__name__}: {exc}") from None
    except Exception as exc:  # the converter raises RuntimeError, ValueError, torch export errors...
        log.debug("litert-torch conversion failed", exc_info=True)
        raise _conversion_error(exc, gm, example[:1].contiguous()) from None
    seconds = time.perf_counter() - start
    path = Path(path)
    try:
        path.write_bytes(content)
    except OSError as exc:
        raise ExportError(f"cannot write the .tflite to {path}: {exc.strerror or exc}") from None
    return _report(path, len(content), seconds, plan, forms)


def _report(path: Path, size: int, seconds: float, plan: QuantPlan, forms: list[WeightForm]) -> TfliteReport:
    contents = read_contents(path)
    points_found, points_missing, layers_found = carried(contents, plan, forms)
    fallbacks = [{"layer": f.layer, "reason": f.reason or ""} for f in forms if f.source != "ptq_core"]
    for name in points_missing:
        fallbacks.append({"layer": name, "reason": "the converter did not keep ptq_core's activation scale and zero "
                                                   "point here (no int8 tensor in the file has them)"})
    expected = [f.layer for f in forms if f.source == "ptq_core"]
    for layer in expected:
        if layer not in layers_found:
            fallbacks.append({"layer": layer, "reason": "its weight scales are not found in the file (the converter "
                                                        "requantized or kept the weight in float)"})
    own = [{"what": "biases", "how": BIAS_NOTE}]
    own += [{"what": f"weights of {f.layer}", "how": f.reason or ""} for f in forms if f.source == "converter"]
    notes = []
    if any(pq.qmin < 0 for pq in plan.points.values()):
        notes.append("symmetric activations: the simulation clamps codes to [-127, 127], TFLite to [-128, 127]; "
                     "values below -127 steps differ by one step")
    narrow = sorted({f.qmax for f in forms if f.source == "ptq_core" and f.qmax < 127})
    if narrow:
        notes.append(f"weights narrower than 8 bits (codes up to +-{', '.join(map(str, narrow))}) are stored as int8: "
                     "the file is not smaller for them")
    return TfliteReport(
        path=str(path), file_bytes=size, seconds=seconds, versions=versions(),
        weights_carried=layers_found, activations_carried=points_found, converter_own=own, fallbacks=fallbacks,
        ops=contents.op_counts, float_ops=contents.float_ops(), input_dtype=contents.input_dtype,
        output_dtype=contents.output_dtype, notes=notes,
    )

