"""The simulated model as one FX graph: the FP32 and the quantized model side by side, ready to export.

What lives here: the traced ops (the static fake quantize, written ``Mul -> QuantizeLinear(1) ->
Clip -> DequantizeLinear`` when exported; the probe's sums of squares; the dynamic NaN/Inf
check), :func:`simulation_graph` (one FX graph computing the FP32 and the quantized model layer
by layer), :func:`structure_key` (what decides that graph) and what a config feeds into it
(:func:`weight_key`, :func:`weight_values`, :func:`static_feeds`). The ops' ``symbolic`` methods
only call ``g.op``: nothing here imports onnx or onnxruntime.

Not here: exporting the graph to ONNX and giving it per-config initializers
(:mod:`ptq_core.onnx.simulate`), running it in onnxruntime (:mod:`ptq_core.onnx.backend`, the
``evaluation.backend = "onnxruntime"`` backend), and the integer QDQ export of a deployed model
(:mod:`ptq_core.onnx.export`). The PyTorch reference is :mod:`ptq_core.quantize`.

Names in the graph (and in its ONNX export)::

    inputs   input [N, ...]; w{i}, b{i} per Conv/Linear (made initializers per weight setting);
             p{j}_inv, p{j}_scale (float32 scalars), p{j}_zp, p{j}_lo, p{j}_hi (uint8 scalars) per static point j
    outputs  logits; with the probe fp32_logits; nonfinite{k} per dynamic point; signal{t}, noise{t} per probe tap

The arithmetic is the simulation's, op for op (:func:`ptq_core.primitives.fake_quantize`)
    ``clamp(round_half_even(x * inv_scale) + zp, qmin, qmax)`` then ``(q - zp) * scale`` is
    written ``Mul(x, inv_scale) -> QuantizeLinear(scale=1, zp) -> Clip(lo, hi) ->
    DequantizeLinear(scale, zp)``: the same float32 product (``inv_scale`` fed as torch computes
    it, ``1.0 / scale`` in float32); QuantizeLinear divides by 1 (exact), rounds half to even,
    adds the zero point and saturates to the uint8 container, and the Clip narrows that to
    ``[qmin, qmax]`` (2 to 8 bits, narrow symmetric ranges; clamping and rounding to integer
    bounds commute); DequantizeLinear computes ``float(q - zp) * scale``, the same single
    rounding. Four passes instead of six, one-byte codes between them.

    Every static quantizer has the same ops and its values are all fed, so bits, scheme and
    clipping are feeds and never a new export or session. A signed range is fed shifted by 128
    into the uint8 container (``zp + 128`` and ``[qmin + 128, qmax + 128]``): the same integers
    minus the same zero point, so the same values (int8 for symmetric ranges would need another
    graph; uint8 is also what onnxruntime's fast kernels read). The Clip on full-range 8-bit
    codes costs what a bit-width change saved: measured on EfficientNet-Lite0, 2 cores, a
    scheme or activation-bits what-if needed a new export and session (0.6 s) before any image
    ran. onnxruntime's QDQ fusions
    are off (``session.disable_quant_qdq``, :mod:`ptq_core.onnx.session`): no pair becomes an
    integer kernel.

    What differs is the convolutions' float summation order. A value within float rounding of a
    rounding tie then lands one quantization step away, and 60 quantized layers carry such steps
    on. Measured: on the digits models the logits are bit-identical (static, weight-only, dynamic
    per tensor; float logits within 4e-6). On EfficientNet-Lite0 (372 images) 1 to 6 top-1
    decisions differ from PyTorch's, all with a decision margin of at most two output steps (half
    of them exact ties in PyTorch's own logits), top-1 within 1 image; PyTorch itself with its
    native convolution instead of oneDNN differs from PyTorch by as much (1 to 4 decisions, top-1
    up to 3 images, the same largest logit difference). That is the yardstick used here: the
    backend moves the numbers no more than PyTorch's own choice of convolution kernel does
    (``benchmarks/bench_real_models.py`` prints both).

    Dynamic quantizers are traced from :class:`ptq_core.quantize.DynamicFakeQuantize`'s own
    functions (ReduceMin/ReduceMax, ``qparams_from_range``, ``fake_quantize``). Its NaN/Inf check
    cannot run inside onnxruntime (whose ReduceMin/ReduceMax skip NaN), so each dynamic input
    also yields ``sum(x * 0)``, NaN exactly when the input holds a NaN or an Inf; the backend
    checks it after each batch, in network order, and raises the same :class:`CalibrationError`.
"""

from __future__ import annotations

import copy
import dataclasses
from typing import Any, Literal

import numpy as np
import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from .errors import ExportError
from .graph import PreparedModel, is_pass_through
from .primitives import fake_quantize, qparams_from_range
from .quantize import QuantPlan

INPUT, LOGITS, FP32_LOGITS = "input", "logits", "fp32_logits"

# -- the ops, as traced ------------------------------------------------------------------------------
class _StaticFakeQuantize(torch.autograd.Function):
    """The simulation's static fake_quantize in PyTorch; Mul -> QuantizeLinear(1) -> Clip -> DequantizeLinear in ONNX."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, inv_scale: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor,
                lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
        zp = zero_point.float()
        return (torch.clamp(torch.round(x * inv_scale) + zp, lo.float(), hi.float()) - zp) * scale

    @staticmethod
    def symbolic(g: Any, x: Any, inv_scale: Any, scale: Any, zero_point: Any, lo: Any, hi: Any) -> Any:
        one = g.op("Constant", value_t=torch.tensor(1.0, dtype=torch.float32))
        q = g.op("Clip", g.op("QuantizeLinear", g.op("Mul", x, inv_scale), one, zero_point), lo, hi)
        return g.op("DequantizeLinear", q, scale, zero_point)


class _NoisePower(torch.autograd.Function):
    """sum((a - b)**2) over the whole tensor: Sub -> ReduceSumSquare."""

    @staticmethod
    def forward(ctx: Any, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return (a - b).square().sum()

    @staticmethod
    def symbolic(g: Any, a: Any, b: Any) -> Any:
        return g.op("ReduceSumSquare", g.op("Sub", a, b), keepdims_i=0)


class _NonFinite(torch.autograd.Function):
    """sum(x * 0): 0 when every element is finite, NaN otherwise (0 * inf is NaN and NaN survives a sum).

    onnxruntime's ReduceMin/ReduceMax skip NaN where torch.aminmax returns it, so the range
    cannot carry the check that DynamicFakeQuantize makes; this carries it, one pass and a scalar.
    """

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        return (x * 0.0).sum()

    @staticmethod
    def symbolic(g: Any, x: Any) -> Any:
        zero = g.op("Constant", value_t=torch.tensor(0.0, dtype=torch.float32))
        return g.op("ReduceSum", g.op("Mul", x, zero), keepdims_i=0)


class _SignalPower(torch.autograd.Function):
    """sum(a**2) over the whole tensor: ReduceSumSquare."""

    @staticmethod
    def forward(ctx: Any, a: torch.Tensor) -> torch.Tensor:
        return a.square().sum()

    @staticmethod
    def symbolic(g: Any, a: Any) -> Any:
        return g.op("ReduceSumSquare", a, keepdims_i=0)


def _static_fq(x: torch.Tensor, inv_scale: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor,
               lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    return _StaticFakeQuantize.apply(x, inv_scale, scale, zero_point, lo, hi)


def _static_fq_torch(x: torch.Tensor, inv_scale: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor,
                     lo: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
    """The PyTorch backend's static quantizer: :func:`fake_quantize` itself (it computes ``1 / scale`` as fed).

    Its zero point and bounds come shifted into the uint8 container like the ONNX graph's (:func:`static_feeds`);
    shifting ``zp``, ``qmin`` and ``qmax`` by the same integer gives the same values, exactly.
    """
    return fake_quantize(x, scale, zero_point, int(lo), int(hi))


def _signal64(a: torch.Tensor) -> torch.Tensor:
    """sum(a**2) accumulated in float64 (squares in float32: one temporary the size of ``a``, not three)."""
    return torch.sum(torch.square(a), dtype=torch.float64)


def _noise64(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """sum((a - b)**2) accumulated in float64; ``a - b`` is exact in float32 where the two are close."""
    return torch.sum(torch.sub(a, b).square_(), dtype=torch.float64)


def _dynamic_range(x: torch.Tensor, per_token: bool) -> tuple[torch.Tensor, torch.Tensor]:
    if per_token:  # DynamicFakeQuantize: one range per row of a Linear input
        return x.amin(dim=-1, keepdim=True), x.amax(dim=-1, keepdim=True)
    return x.amin(), x.amax()


def _dynamic_fq(x: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, bits: int, scheme: str, qmin: int, qmax: int) -> torch.Tensor:
    scale, zp = qparams_from_range(lo, hi, bits, scheme)
    return fake_quantize(x, scale, zp, qmin, qmax)


def _getitem(pair: tuple[torch.Tensor, torch.Tensor], i: int) -> torch.Tensor:
    return pair[i]


def _nonfinite(x: torch.Tensor) -> torch.Tensor:
    return _NonFinite.apply(x)


def _noise(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return _NoisePower.apply(a, b)


def _signal(a: torch.Tensor) -> torch.Tensor:
    return _SignalPower.apply(a)


class _WeightInput(nn.Module):
    """A Conv/Linear whose weight and bias are arguments (graph inputs in ONNX): algorithms change both per config."""

    def __init__(self, module: nn.Module) -> None:
        super().__init__()
        self.inner = module

    def forward(self, x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        m = self.inner
        if isinstance(m, nn.Linear):
            return F.linear(x, weight, bias)
        return m._conv_forward(x, weight, bias)  # type: ignore[operator]


def _bias(prepared: PreparedModel, unit: Any) -> torch.Tensor:
    """The prepared layer's bias, zeros when it has none (a bias input exists for every layer)."""
    b = prepared.bias(unit)
    return b.clone() if b is not None else torch.zeros(prepared.weight(unit).shape[0], dtype=prepared.weight(unit).dtype)


# -- one graph per structure -------------------------------------------------------------------------
def structure_key(prepared: PreparedModel, plan: QuantPlan) -> tuple[Any, ...]:
    """What decides the exported graph; everything else a config sets is a feed or an initializer."""
    points: list[tuple[Any, ...]] = []
    for name, pq in plan.points.items():
        if pq.quant.mode == "dynamic":
            points.append((name, "dynamic", pq.quant.bits, pq.quant.scheme, pq.granularity))
        else:  # bits, scheme and range are fed (static_feeds)
            points.append((name, "static"))
    return (prepared.fold_batchnorm, prepared.variant, tuple(points))


def _fetch_attr(root: nn.Module, target: str) -> Any:
    obj: Any = root
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj


Ops = Literal["onnx", "torch"]


def simulation_graph(
    prepared: PreparedModel, plan: QuantPlan, *, probe: bool = True, ops: Ops = "onnx",
) -> tuple[torch.fx.GraphModule, list[tuple[str, torch.Tensor]], list[str], dict[str, Any]]:
    """One FX graph computing the quantized model and, with ``probe``, the FP32 model beside it, layer by layer.

    Interleaved so that each tap's reduction runs as soon as both of its tensors exist (nothing
    waits for the end of the network). Without ``probe`` the graph is the quantized model alone
    (logits and the dynamic checks). ``ops="torch"`` is for running the graph in PyTorch: static
    quantizers call :func:`fake_quantize` and the probe accumulates its sums in float64; ``"onnx"`` uses the ops
    that export as described in the module docstring. Input names are the same either way.
    Returns the module, its inputs (name, example), its output names and the name maps
    (``weight_inputs``, ``static_inputs``, ``dynamic_checks``, ``taps``).
    """
    static_fq, signal, noise = (_static_fq_torch, _signal64, _noise64) if ops == "torch" else (_static_fq, _signal, _noise)
    src = copy.deepcopy(prepared.graph_module)  # the exporter flips train/eval on what it traces: never the shared model
    g = torch.fx.Graph()
    root: dict[str, Any] = {}
    inputs: list[tuple[str, torch.Tensor]] = []

    def placeholder(name: str, example: torch.Tensor) -> torch.fx.Node:
        inputs.append((name, example))
        return g.placeholder(name)

    nodes = list(src.graph.nodes)
    model_inputs = [n for n in nodes if n.op == "placeholder"]
    if len(model_inputs) != 1:
        raise ExportError(f"the onnxruntime backend needs a model with one input tensor; this one has {len(model_inputs)}")
    meta = model_inputs[0].meta.get("tensor_meta")
    if meta is None:
        raise ExportError("the prepared model has no recorded input shape; prepare it with an example input")
    x = placeholder(INPUT, torch.zeros((1, *tuple(meta.shape)[1:]), dtype=meta.dtype))
    weighted = {u.node: u for u in prepared.units if u.has_weights}
    weight_nodes: dict[str, tuple[torch.fx.Node, torch.fx.Node]] = {}
    weight_inputs: dict[str, str] = {}
    for i, unit in enumerate(weighted.values()):
        weight_nodes[unit.node] = (placeholder(f"w{i}", prepared.weight(unit).clone()), placeholder(f"b{i}", _bias(prepared, unit)))
        weight_inputs[unit.name] = f"w{i}"
    static: dict[str, tuple[torch.fx.Node, ...]] = {}
    static_inputs: dict[str, tuple[str, ...]] = {}
    for j, (name, pq) in enumerate(plan.points.items()):
        if pq.quant.mode == "static":
            names = (f"p{j}_inv", f"p{j}_scale", f"p{j}_zp", f"p{j}_lo", f"p{j}_hi")
            examples = (torch.tensor(1.0), torch.tensor(1.0), *(torch.tensor(v, dtype=torch.uint8) for v in (0, 0, 255)))
            static[name] = tuple(placeholder(n, e) for n, e in zip(names, examples, strict=True))
            static_inputs[name] = names

    point_of_node = {prepared.point(name).node: name for name in plan.points}
    unit_names = {u.name for u in prepared.units}
    unit_point_of_node = {p.node: p.name for p in prepared.points if p.name in unit_names}
    env_f: dict[torch.fx.Node, torch.fx.Node] = {model_inputs[0]: x}
    env_q: dict[torch.fx.Node, torch.fx.Node] = {model_inputs[0]: x}
    dynamic: list[tuple[str, torch.fx.Node]] = []
    sums: list[tuple[str, str, torch.fx.Node, torch.fx.Node]] = []

    # Graph rule 6: a dynamic quantizer's output feeds the Conv/Linear layers (and the value-preserving ops on the
    # way to them) only; every other reader keeps the float tensor. env_d holds those quantized views.
    env_d: dict[torch.fx.Node, torch.fx.Node] = {}
    modules = dict(src.named_modules())

    def quantize(node: torch.fx.Node) -> None:
        name = point_of_node[node.name]
        pq, pre = plan.points[name], env_q[node]
        if pq.quant.mode == "dynamic":
            rng = g.call_function(_dynamic_range, (pre, pq.granularity == "per_token"))
            lo, hi = g.call_function(_getitem, (rng, 0)), g.call_function(_getitem, (rng, 1))
            post = g.call_function(_dynamic_fq, (pre, lo, hi, pq.quant.bits, pq.quant.scheme, pq.qmin, pq.qmax))
            dynamic.append((name, g.call_function(_nonfinite, (pre,))))
            env_d[node] = post
        else:
            post = g.call_function(static_fq, (pre, *static[name]))
            env_q[node] = post
        if probe:
            sums.append(("quantizer", name, g.call_function(signal, (pre,)), g.call_function(noise, (pre, post))))

    output: torch.fx.Node | None = None
    for node in nodes:
        if node.op == "output":
            output = node
            continue
        if node.op != "placeholder":
            if probe:
                env_f[node] = g.node_copy(node, lambda a: env_f[a])
            if node.op in ("call_module", "get_attr"):
                target = str(node.target)
                root[target] = src.get_submodule(target) if node.op == "call_module" else _fetch_attr(src, target)
            weighted_unit = weighted.get(node.name)
            if weighted_unit is not None:
                unit = weighted_unit
                if len(node.args) != 1 or node.kwargs:
                    raise ExportError(f"layer {unit.name}: expected a call with one input, got args {node.args} kwargs {node.kwargs}")
                target = f"ptq_weight_input_{weight_inputs[unit.name]}"
                assert unit.module is not None
                root[target] = _WeightInput(src.get_submodule(unit.module))
                x_in = env_d.get(node.args[0], env_q[node.args[0]])
                env_q[node] = g.call_module(target, (x_in, *weight_nodes[node.name]))
            elif any(a in env_d for a in node.all_input_nodes) and is_pass_through(node, modules):
                env_q[node] = env_d[node] = g.node_copy(node, lambda a: env_d.get(a, env_q[a]))
            else:
                env_q[node] = g.node_copy(node, lambda a: env_q[a])
        if node.name in point_of_node:
            quantize(node)
        unit_name = unit_point_of_node.get(node.name)
        if probe and unit_name is not None:
            f, q = env_f[node], env_q[node]
            sums.append(("output", unit_name, g.call_function(signal, (f,)), g.call_function(noise, (f, q))))
    assert output is not None
    outs: list[Any] = [torch.fx.map_arg(output.args[0], lambda a: env_q[a])]
    out_names = [LOGITS]
    if probe:
        outs.append(torch.fx.map_arg(output.args[0], lambda a: env_f[a]))
        out_names.append(FP32_LOGITS)
    checks = []
    for k, (name, check) in enumerate(dynamic):
        outs.append(check)
        out_names.append(f"nonfinite{k}")
        checks.append((name, f"nonfinite{k}"))
    taps = []
    for k, (kind, name, signal_node, noise_node) in enumerate(sums):
        outs += [signal_node, noise_node]
        out_names += [f"signal{k}", f"noise{k}"]
        taps.append((kind, name, f"signal{k}", f"noise{k}"))
    g.output(tuple(outs))
    g.lint()
    gm = torch.fx.GraphModule(root, g).eval()
    info = {"weight_inputs": weight_inputs, "static_inputs": static_inputs, "dynamic_checks": checks, "taps": taps}
    return gm, inputs, out_names, info


# -- what a config feeds in --------------------------------------------------------------------------
def weight_key(plan: QuantPlan) -> tuple[Any, ...]:
    layers = tuple((name, None if lq.quant is None else dataclasses.astuple(lq.quant)) for name, lq in plan.layers.items())
    return (plan.algorithm_key, layers)


def weight_values(weight_inputs: dict[str, str], prepared: PreparedModel, plan: QuantPlan) -> dict[str, np.ndarray]:
    """Input name -> the (fake-quantized, or float when kept in float) weight, and the bias, each layer runs with.

    ``weight_inputs``: layer -> weight input name ``w{i}``, as :func:`simulation_graph` returns it; its bias is ``b{i}``.
    """
    out = {}
    for layer, name in weight_inputs.items():
        lq = plan.layers[layer]
        w = lq.fq_weight if lq.fq_weight is not None else prepared.weight(lq.unit)
        b = lq.bias if lq.bias is not None else _bias(prepared, lq.unit)
        out[name] = w.detach().float().contiguous().numpy()
        out["b" + name[1:]] = b.detach().float().contiguous().numpy()
    return out


def static_feeds(static_inputs: dict[str, tuple[str, ...]], plan: QuantPlan) -> dict[str, np.ndarray]:
    """The quantizer values of ``plan``: ``1/scale`` computed as fake_quantize does (float32), scale, and the zero
    point and code range in the uint8 container (a signed range shifted by 128, see the module docstring).

    ``static_inputs``: point -> (inv_scale, scale, zero_point, lo, hi) input names, as :func:`simulation_graph` returns it.
    Example: symmetric 8 bits, narrow range [-127, 127], zero point 0 -> zero point 128, lo 1, hi 255.
    """
    feeds: dict[str, np.ndarray] = {}
    for name, (inv_name, scale_name, zp_name, lo_name, hi_name) in static_inputs.items():
        pq = plan.points[name]
        assert pq.scale is not None and pq.zero_point is not None
        shift = 128 if pq.qmin < 0 else 0
        assert 0 <= pq.qmin + shift <= pq.qmax + shift <= 255, f"{name}: codes [{pq.qmin}, {pq.qmax}] exceed 8 bits"
        scale = torch.tensor(pq.scale, dtype=torch.float32)
        feeds[inv_name] = (1.0 / scale).numpy()
        feeds[scale_name] = scale.numpy()
        feeds[zp_name] = np.array(int(pq.zero_point) + shift, dtype=np.uint8)
        feeds[lo_name] = np.array(pq.qmin + shift, dtype=np.uint8)
        feeds[hi_name] = np.array(pq.qmax + shift, dtype=np.uint8)
    return feeds
