"""Integer-exact simulation: what onnxruntime's CPU integer kernels compute, op for op, in PyTorch.

``"evaluation": {"arithmetic": "integer"}`` evaluates this model instead of the float fake-quantize
simulation. Where the export (:mod:`ptq_core.onnx.export`) becomes an integer kernel in
onnxruntime (:func:`ptq_core.onnx.report.classify` says which), the unit here computes what that
kernel computes, read from onnxruntime 1.31's MLAS sources; everywhere else it computes what
onnxruntime computes around a float op (QuantizeLinear / DequantizeLinear). Nothing here imports
onnxruntime; :func:`build_integer_model` needs only the prepared model and the plan.

The kernels (x86-64; ``f32(...)`` is one float32 rounding, ``rint`` rounds half to even, ``[a, b]``
clamps; ``k = q - zero_point`` are integer offsets; the container is u8 ``[0, 255]`` or s8 ``[-128, 127]``)::

    QuantizeLinear         q = rint([f32(x / s), lo - zp, hi - zp]) + zp      (a division, where the float
                           simulation multiplies by f32(1 / s): a value within an ulp of a tie may differ)
    DequantizeLinear       x = f32(f32(q - zp) * s)
    bias (BiasQuantization, a graph rewrite before fusion)
                           b = int32(rint(f32(bias / f32(s_x * s_w))))
    QLinearConv / QGemm    acc = sum(k_x * k_w) + b (int32, exact: computed in float64, which holds every sum here)
                           y = rint([f32(f32(acc) * f32(f32(s_x * s_w) / s_y)), lo - zp_y, hi - zp_y]) + zp_y
    QLinearAdd (AVX2 kernel, also used on AVX-512 CPUs)
                           r_a = f32(s_a / s_c), r_b = f32(s_b / s_c), c0 = f32(zp_c - f32(r_a * zp_a + r_b * zp_b))
                           y = saturate(rint(fma(q_a, r_a, fma(q_b, r_b, c0))))   (codes, not offsets; fused multiply-adds)
    QLinearGlobalAveragePool
                           acc = sum(q) - zp_x * HW (int32); y = rint([f32(f32(acc) * f32(s_x / f32(s_y * HW))), ...]) + zp_y
    QLinearMatMul (a transformer's Q·Kᵀ and attention·V: two activations)
                           acc = sum(k_a * k_b) (int32, exact); y = rint([f32(f32(acc) * f32(f32(s_a * s_b) / s_y)), ...]) + zp_y
    DynamicQuantizeLinear  lo = min(min(x), 0), hi = max(max(x), 0), s = f32((hi - lo) / 255),
                           zp = rint([0 - f32(lo / s), 0, 255]); then QuantizeLinear's division, u8
    DynamicQuantizeMatMul (MatMulInteger -> Cast -> Mul -> Add, fused)
                           y = f32(f32(acc) * f32(s_x * s_w)) + bias   (acc = sum(k_x * k_w), int32, exact)
    max pool, flatten, zero pad, reshape    exact on the codes (the float simulation's values are on the same grid)

Units onnxruntime runs in float (weights below 5 bits or per group, weight-only layers, dynamic per-token
layers, units kept in float, inputs that are not quantized) run here as the float simulation runs them, with
QuantizeLinear's division: their float op (a convolution's summation order) is not bit-exact with
onnxruntime's, and :class:`IntegerReport` lists them with the reason. A unit whose float32 multiplier
onnxruntime would compute differently (not observed) would show up in the test that compares logits.

Float ops between the integer kernels (a transformer's LayerNorm, softmax, GELU, the scaling of the
attention scores) are PyTorch's here and MLAS's there: equal to a few float32 ulps, not bit for bit.
A quantized network carries such a difference on wherever it moves a value across a rounding
boundary of the next quantizer; the integer kernels add none of their own, which is why this model
follows onnxruntime where the float simulation cannot (all-MiniLM-L6-v2 static W8A8, 64 sentences:
cosine of the two embeddings 0.99992 here, 0.928 for the float simulation). Dynamic per-tensor keeps
attention, LayerNorm and GELU in float and one range per batch, so there both stay near 0.999
(``benchmarks/RESULTS.md``, "Transformers").

Exactness assumes onnxruntime's exact integer kernels: on CPUs with VNNI/AMX, or with
``session.x64quantprecision = 1`` on AVX2 (:mod:`ptq_core.onnx.session` sets it); the default U8S8 AVX2
kernel saturates int16 pair sums, which nothing here reproduces.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from ..backends import TORCH_PER_SAMPLE_BATCH, BatchResult, SimulatedRun, TorchBackend, per_sample, run_batches
from ..calibration import load_batch
from ..graph import PreparedModel, Unit, is_pass_through, node_map, pass_through_source
from ..models.device import device_context
from ..progress import StepFn
from ..quantize import DynamicFakeQuantize, FakeQuantize, QuantPlan, build_quantized_model
from ..ranges import quantize_weight
from ..timing import SIMULATED_BUDGET_S, median_ms
from .report import classify
from .rewrite import weight_format

_F32_EXACT = float(2**24)  # every integer below this is a float32


def _container(qmin: int) -> tuple[int, int]:
    """The 8-bit container onnxruntime stores codes in: s8 for a signed range, else u8."""
    return (-128, 127) if qmin < 0 else (0, 255)


def _offsets(x: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """``q - zero_point`` of values that are on the grid of ``scale`` (dequantized codes): exact for |k| < 2**22."""
    return torch.round(x / scale)


def _to_grid(y: torch.Tensor, zp: int, qmin: int, qmax: int, scale: torch.Tensor) -> torch.Tensor:
    """Round ``y`` (float32, in steps, zero point not yet added) onto the codes, then DequantizeLinear, in place.

    Clamping to the 8-bit container, rounding, adding the zero point and the Clip of a narrower range
    are one clamp to ``[qmin - zp, qmax - zp]`` before rounding (integer bounds commute with rounding);
    DequantizeLinear's ``f32(q - zp) * s`` is then ``k * s``.
    """
    lo, hi = _container(qmin)
    return y.clamp_(max(lo, qmin) - zp, min(hi, qmax) - zp).round_().mul_(scale)


def _requantize(acc: torch.Tensor, multiplier: torch.Tensor, zp: int, qmin: int, qmax: int, scale: torch.Tensor) -> torch.Tensor:
    """MlasRequantizeOutput, then DequantizeLinear: ``acc`` exact integers, ``multiplier`` float32."""
    return _to_grid(acc.to(torch.float32) * multiplier, zp, qmin, qmax, scale)


class OrtQuantize(nn.Module):
    """A static activation quantizer as QuantizeLinear -> [Clip] -> DequantizeLinear compute it: divides by the scale."""

    scale: torch.Tensor

    def __init__(self, fq: FakeQuantize) -> None:
        super().__init__()
        self.point = fq.point
        self.register_buffer("scale", fq.scale.clone())
        self.zp, self.qmin, self.qmax = int(fq.zero_point), fq.qmin, fq.qmax
        # True after an integer kernel: its output is on this grid already (re-quantizing it changes nothing)
        self.passthrough = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.passthrough:
            return x
        return _to_grid(x.float() / self.scale, self.zp, self.qmin, self.qmax, self.scale)


@dataclass
class _Grid:
    scale: torch.Tensor  # float32 scalar
    zp: int
    qmin: int
    qmax: int


def _grid(plan: QuantPlan, point: str) -> _Grid:
    pq = plan.points[point]
    assert pq.scale is not None and pq.zero_point is not None
    return _Grid(torch.tensor(pq.scale, dtype=torch.float32), int(pq.zero_point), pq.qmin, pq.qmax)


class _IntegerSums(nn.Module):
    """The exact integer sums ``sum(k_x * k_w)`` of a convolution or Linear whose weight codes are known."""

    codes: torch.Tensor

    def __init__(self, module: nn.Module, codes: torch.Tensor, w_scale: torch.Tensor, w_zp: torch.Tensor) -> None:
        super().__init__()
        self.module_type = "conv" if isinstance(module, (nn.Conv1d, nn.Conv2d)) else "linear"
        self.conv_args: tuple[Any, ...] = ()
        if isinstance(module, (nn.Conv1d, nn.Conv2d)):
            self.conv = F.conv1d if isinstance(module, nn.Conv1d) else F.conv2d
            self.conv_args = (module.stride, module.padding, module.dilation, module.groups)
        out = codes.shape[0]
        self.s_w = w_scale.reshape(-1).to(torch.float32).expand(out) if w_scale.numel() == 1 else w_scale.reshape(-1).to(torch.float32)
        zp_w = w_zp.reshape(-1).expand(out) if w_zp.numel() == 1 else w_zp.reshape(-1)
        shape = (out,) + (1,) * (codes.dim() - 1)
        w = codes.to(torch.float64) - zp_w.to(torch.float64).reshape(shape)
        # How the integer sums are computed exactly: float32 when no partial sum can reach 2**24 (every
        # addition is then exact, in any order), else the input split into 16 * high + low nibbles, each
        # sum below 2**24, else float64 (exact below 2**53, and slow: no fast float64 convolution on CPU).
        terms = math.prod(codes.shape[1:])  # products per output value
        w_max = float(w.abs().max()) if w.numel() else 0.0
        self.path = ("float32" if terms * 255 * w_max < _F32_EXACT else
                     "nibbles" if terms * 16 * w_max < _F32_EXACT else "float64")
        self.register_buffer("codes", w.to(torch.float64 if self.path == "float64" else torch.float32))

    def _view(self, k: torch.Tensor) -> tuple[int, ...]:
        """How a per-output-channel vector broadcasts against the sums of ``k``."""
        return (1, -1) + (1,) * (k.dim() - 2) if self.module_type == "conv" else (1,) * (k.dim() - 1) + (-1,)

    def _sums(self, k: torch.Tensor) -> torch.Tensor:
        if self.module_type == "conv":
            return self.conv(k, self.codes, None, *self.conv_args)
        return k @ self.codes.t()

    def exact_sums(self, k: torch.Tensor) -> torch.Tensor:
        """``sum(k * w)`` of the integer offsets ``k`` (float32 integers), exactly, as float64 (float32 on that path)."""
        if self.path == "float32":
            return self._sums(k)
        if self.path == "nibbles":
            low = torch.remainder(k, 16.0)
            return self._sums((k - low) / 16.0).to(torch.float64) * 16.0 + self._sums(low).to(torch.float64)
        return self._sums(k.to(torch.float64))


class IntegerLinearOp(_IntegerSums):
    """QLinearConv (Conv1d/Conv2d) or QGemm (Linear): integer accumulation, int32 bias, one requantization."""

    bias_q: torch.Tensor
    multiplier: torch.Tensor

    def __init__(self, module: nn.Module, codes: torch.Tensor, w_scale: torch.Tensor, w_zp: torch.Tensor,
                 bias: torch.Tensor | None, x: _Grid, y: _Grid) -> None:
        super().__init__(module, codes, w_scale, w_zp)
        out = codes.shape[0]
        bias_scale = x.scale * self.s_w  # float32, as the Mul node BiasQuantization inserts
        b = torch.zeros(out) if bias is None else bias.detach().to(torch.float32)
        self.register_buffer("bias_q", torch.round(b / bias_scale).to(torch.float64))
        # float32 bias when every code is a float32 integer: acc (exact) + bias is then rounded once, as cvtepi32_ps does
        self.bias_f32 = self.bias_q.float() if bool((self.bias_q.abs() < _F32_EXACT).all()) else None
        self.register_buffer("multiplier", bias_scale / y.scale)  # X_scale * W_scale[i] / Y_scale in float32
        self.x, self.y = x, y

    def forward(self, inp: torch.Tensor) -> torch.Tensor:
        k = _offsets(inp, self.x.scale)
        view = self._view(k)
        if self.path == "float32" and self.bias_f32 is not None:  # both exact float32: one correctly rounded add
            acc32 = self._sums(k).add_(self.bias_f32.view(view))
            y = self.y
            return _requantize(acc32, self.multiplier.view(view), y.zp, y.qmin, y.qmax, y.scale)
        acc = self.exact_sums(k).to(torch.float64) + self.bias_q.view(view)
        y = self.y
        return _requantize(acc, self.multiplier.view(view), y.zp, y.qmin, y.qmax, y.scale)


def dynamic_quantize(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """DynamicQuantizeLinear (u8) as onnxruntime computes it: the offsets ``q - zp`` (float32 integers) and the scale.

    The range widened to contain 0, ``s = f32((hi - lo) / 255)`` (1 when ``hi == lo``), ``zp =
    rint([0 - f32(lo / s), 0, 255])``, then QuantizeLinear's division. The float simulation
    (:class:`ptq_core.quantize.DynamicFakeQuantize`) multiplies by ``f32(1 / s)`` instead and floors the
    scale at float32's eps: the same codes but for a value within an ulp of a tie.
    """
    xf = x.to(torch.float32)
    lo, hi = torch.clamp(xf.min(), max=0.0), torch.clamp(xf.max(), min=0.0)
    scale = torch.where(hi == lo, torch.ones_like(hi), (hi - lo) / 255.0)
    zp = torch.round(torch.clamp(0.0 - lo / scale, 0.0, 255.0))
    return torch.maximum(torch.minimum(xf / scale, 255.0 - zp), -zp).round_(), scale


class IntegerDynamicLinear(_IntegerSums):
    """DynamicQuantizeLinear on the float input, then DynamicQuantizeMatMul: exact sums scaled in float32, plus bias."""

    bias: torch.Tensor
    w_scale: torch.Tensor

    def __init__(self, module: nn.Module, codes: torch.Tensor, w_scale: torch.Tensor, w_zp: torch.Tensor,
                 bias: torch.Tensor | None) -> None:
        super().__init__(module, codes, w_scale, w_zp)
        out = codes.shape[0]
        self.register_buffer("w_scale", self.s_w.clone())
        self.register_buffer("bias", torch.zeros(out) if bias is None else bias.detach().to(torch.float32).clone())

    def forward(self, inp: torch.Tensor) -> torch.Tensor:
        k, s_x = dynamic_quantize(inp)
        acc = self.exact_sums(k).to(torch.float32)  # int32 -> float: one rounding, as onnxruntime's conversion
        return acc.mul_(s_x * self.w_scale).add_(self.bias)


class IntegerMatMul(nn.Module):
    """QLinearMatMul: the product of two quantized activations, an exact integer sum, one requantization."""

    multiplier: torch.Tensor

    def __init__(self, a: _Grid, b: _Grid, y: _Grid) -> None:
        super().__init__()
        self.a, self.b, self.y = a, b, y
        self.register_buffer("multiplier", a.scale * b.scale / y.scale)  # f32(f32(s_a * s_b) / s_y), as onnxruntime

    def forward(self, xa: torch.Tensor, xb: torch.Tensor) -> torch.Tensor:
        ka, kb = _offsets(xa, self.a.scale), _offsets(xb, self.b.scale)
        # |k| <= 255 on either side: float32 sums stay exact while K * 255 * 255 < 2**24 (K up to 258)
        exact32 = ka.shape[-1] * 255 * 255 < _F32_EXACT
        acc = torch.matmul(ka, kb) if exact32 else torch.matmul(ka.to(torch.float64), kb.to(torch.float64))
        y = self.y
        return _requantize(acc, self.multiplier, y.zp, y.qmin, y.qmax, y.scale)


def _f32(x: float) -> float:
    return float(torch.tensor(x, dtype=torch.float32))


class IntegerAdd(nn.Module):
    """QLinearAdd as MLAS's AVX2 kernel computes it: float32 ratios and two fused multiply-adds on the codes."""

    def __init__(self, a: _Grid, b: _Grid, c: _Grid) -> None:
        super().__init__()
        self.a, self.b, self.c = a, b, c
        r_a = _f32(float(a.scale) / float(c.scale))
        r_b = _f32(float(b.scale) / float(c.scale))
        self.r_a, self.r_b = r_a, r_b
        self.c0 = _f32(float(c.zp) - _f32(_f32(r_a * a.zp) + _f32(r_b * b.zp)))
        self.lo, self.hi = _container(c.qmin)

    def forward(self, xa: torch.Tensor, xb: torch.Tensor) -> torch.Tensor:
        qa = (_offsets(xa, self.a.scale) + self.a.zp).to(torch.float64)
        qb = (_offsets(xb, self.b.scale) + self.b.zp).to(torch.float64)
        t = (qb * self.r_b + self.c0).to(torch.float32).to(torch.float64)  # fma: one rounding to float32
        r = (qa * self.r_a + t).to(torch.float32)
        code = torch.round(r).clamp_(self.lo, self.hi).clamp_(self.c.qmin, self.c.qmax)
        return (code - self.c.zp) * self.c.scale


class IntegerGlobalAveragePool(nn.Module):
    """QLinearGlobalAveragePool: integer sum over H x W, one requantization by s_x / (s_y * HW)."""

    def __init__(self, x: _Grid, y: _Grid, keepdim: bool) -> None:
        super().__init__()
        self.x, self.y, self.keepdim = x, y, keepdim

    def forward(self, inp: torch.Tensor) -> torch.Tensor:
        dims = tuple(range(2, inp.dim()))
        hw = 1
        for d in dims:
            hw *= inp.shape[d]
        k = _offsets(inp, self.x.scale).to(torch.float64)  # sum(q) - zp * HW = sum(q - zp)
        acc = k.sum(dim=dims, keepdim=self.keepdim)
        scale = self.x.scale / (self.y.scale * torch.tensor(float(hw), dtype=torch.float32))
        return _requantize(acc, scale, self.y.zp, self.y.qmin, self.y.qmax, self.y.scale)


@dataclass
class IntegerReport:
    """Which units compute onnxruntime's integer kernels here, and which run a float op (with the reason)."""

    integer: list[dict[str, str]] = field(default_factory=list)  # {"layer", "kernel"}
    float_ops: list[dict[str, str]] = field(default_factory=list)  # {"layer", "reason"}

    def to_dict(self) -> dict[str, Any]:
        return {"integer": self.integer, "float_ops": self.float_ops}


def _is_global_pool(node: torch.fx.Node, modules: dict[str, nn.Module]) -> bool:
    """An average pool whose output has spatial size 1: what the export writes as GlobalAveragePool."""
    meta = node.meta.get("tensor_meta")
    if meta is None or len(meta.shape) < 3 or any(int(s) != 1 for s in meta.shape[2:]):
        return False
    if node.op == "call_module":
        return isinstance(modules.get(str(node.target)), (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d))
    return node.target in (F.adaptive_avg_pool1d, F.adaptive_avg_pool2d)


def _read_grid(node: torch.fx.Node, plan: QuantPlan, modules: dict[str, nn.Module]) -> _Grid | None:
    """The grid of the quantizer ``node`` reads, through value-preserving ops (max pool, pad, flatten)."""
    current: torch.fx.Node | None = node
    while current is not None:
        mod = modules.get(str(current.target)) if current.op == "call_module" else None
        if isinstance(mod, (FakeQuantize, OrtQuantize)):
            return _grid(plan, mod.point)
        current = pass_through_source(current) if is_pass_through(current, modules) else None
    return None


def _replace(gm: torch.fx.GraphModule, node: torch.fx.Node, name: str, module: nn.Module, args: tuple[Any, ...]) -> None:
    gm.add_submodule(name, module)
    with gm.graph.inserting_after(node):
        new = gm.graph.call_module(name, args)
    new.meta = dict(node.meta)
    node.replace_all_uses_with(new)
    gm.graph.erase_node(node)


def build_integer_model(prepared: PreparedModel, plan: QuantPlan) -> tuple[torch.fx.GraphModule, IntegerReport]:
    """The simulated model of ``plan`` with onnxruntime's integer arithmetic, and where it is exact."""
    gm, _ = build_quantized_model(prepared, plan)
    modules = dict(gm.named_modules())
    for name, mod in list(modules.items()):
        if isinstance(mod, FakeQuantize):
            gm.set_submodule(name, OrtQuantize(mod))
    modules = dict(gm.named_modules())
    for n in gm.graph.nodes:  # a quantizer's output has its input's shape: value-preserving ops after it are followed
        src = n.args[0] if n.op == "call_module" and n.args else None
        if isinstance(modules.get(str(n.target)), (OrtQuantize, DynamicFakeQuantize)) and isinstance(src, torch.fx.Node):
            n.meta.setdefault("tensor_meta", src.meta.get("tensor_meta"))
    formats = {name: weight_format(lq, plan.mode) for name, lq in plan.layers.items() if lq.quant is not None}
    for name, fmt in formats.items():  # per-token inputs are exported as float ops, their Linear as a float Gemm
        if fmt == "dynamic" and any(plan.points[i].granularity == "per_token" for i in plan.layers[name].unit.inputs
                                    if i in plan.points):
            formats[name] = "int8"
    kernels, fallback = classify(prepared, plan, formats)
    report = IntegerReport(float_ops=[{"layer": f["layer"], "reason": f["reason"]} for f in fallback])
    nodes = node_map(gm)
    units = {u.name: u for u in prepared.units}
    for row in kernels:
        unit = units[row["layer"]]
        done = _integer_unit(gm, nodes[unit.node], unit, plan, modules)
        if done is None:
            report.integer.append({"layer": unit.name, "kernel": row["kernel"]})
            quantizer = next((m for m in modules.values() if isinstance(m, OrtQuantize) and m.point == unit.name), None)
            if quantizer is not None:
                quantizer.passthrough = True
        else:
            report.float_ops.append({"layer": unit.name, "reason": done})
    gm.graph.lint()
    gm.recompile()
    return gm, report


def _integer_unit(gm: torch.fx.GraphModule, node: torch.fx.Node, unit: Unit, plan: QuantPlan,
                  modules: dict[str, nn.Module]) -> str | None:
    """Replace ``unit``'s op by its integer kernel; None when done, else why it stays a float op."""
    tag = "ptq_int_" + unit.name.replace(".", "_")
    if unit.has_weights and plan.mode == "dynamic":
        return _dynamic_linear(gm, node, unit, plan, modules, tag)
    y = _grid(plan, unit.name)
    if unit.has_weights:
        lq = plan.layers[unit.name]
        assert lq.qparams is not None and lq.fq_weight is not None and unit.module is not None
        module = gm.get_submodule(unit.module)
        if isinstance(module, (nn.Conv1d, nn.Conv2d)) and module.padding_mode != "zeros":
            return f"padding_mode {module.padding_mode!r}: onnxruntime pads such a convolution in float"
        codes = quantize_weight(lq.fq_weight, lq.qparams)
        bias = module.bias if isinstance(module.bias, torch.Tensor) else None
        op = IntegerLinearOp(module, codes, lq.qparams.scale, lq.qparams.zero_point, bias,
                             _grid(plan, unit.inputs[0]), y)
        _replace(gm, node, tag, op, (node.args[0],))
        return None
    if unit.kind == "add":
        a, b = node.args[:2]
        assert isinstance(a, torch.fx.Node) and isinstance(b, torch.fx.Node)
        grid_a, grid_b = _read_grid(a, plan, modules), _read_grid(b, plan, modules)
        if grid_a is None or grid_b is None:
            return "add: an input is not read from a quantizer; it runs as the float simulation does"
        _replace(gm, node, tag, IntegerAdd(grid_a, grid_b, y), (a, b))
        return None
    if unit.kind == "matmul":
        a, b = node.args[:2]
        assert isinstance(a, torch.fx.Node) and isinstance(b, torch.fx.Node)
        grid_a, grid_b = _read_grid(a, plan, modules), _read_grid(b, plan, modules)
        if grid_a is None or grid_b is None:
            return "matmul: an operand is not read from a quantizer; it runs as the float simulation does"
        _replace(gm, node, tag, IntegerMatMul(grid_a, grid_b, y), (a, b))
        return None
    if unit.kind == "avgpool" and _is_global_pool(node, modules):
        _replace(gm, node, tag, IntegerGlobalAveragePool(_grid(plan, unit.inputs[0]), y, keepdim=True), (node.args[0],))
        return None
    return f"{unit.kind}: its onnxruntime integer kernel is not emulated here; it runs as the float simulation does"


def _substitute(old: torch.fx.Node | None, new: torch.fx.Node) -> Callable[[torch.fx.Node], torch.fx.Node]:
    return lambda n: new if n is old else n


def _dynamic_linear(gm: torch.fx.GraphModule, node: torch.fx.Node, unit: Unit, plan: QuantPlan,
                    modules: dict[str, nn.Module], tag: str) -> str | None:
    """A dynamic Linear reading its DynamicQuantizeLinear -> :class:`IntegerDynamicLinear` on the float tensor."""
    lq = plan.layers[unit.name]
    assert lq.qparams is not None and lq.fq_weight is not None and unit.module is not None
    # The quantizer, maybe behind value-preserving ops (attention's context: permute, flatten). Per tensor, those
    # commute with quantization (same values, same min/max): the Linear reads them applied to the float tensor.
    chain: list[torch.fx.Node] = []
    src = node.args[0]
    while isinstance(src, torch.fx.Node) and src.op != "call_module" and is_pass_through(src, modules):
        chain.append(src)
        src = pass_through_source(src)
    quantizer = modules.get(str(src.target)) if isinstance(src, torch.fx.Node) and src.op == "call_module" else None
    if not isinstance(quantizer, DynamicFakeQuantize) or quantizer.per_token or (quantizer.bits, quantizer.scheme) != (8, "asymmetric"):
        return "dynamic Linear whose input is not one 8-bit asymmetric per-tensor DynamicQuantizeLinear; it runs as the float simulation does"
    assert isinstance(src, torch.fx.Node) and isinstance(src.args[0], torch.fx.Node)
    value: torch.fx.Node = src.args[0]
    with gm.graph.inserting_before(node):
        for op_node in reversed(chain):
            value = gm.graph.node_copy(op_node, _substitute(pass_through_source(op_node), value))
    module = gm.get_submodule(unit.module)
    bias = module.bias if isinstance(module.bias, torch.Tensor) else None
    op = IntegerDynamicLinear(module, quantize_weight(lq.fq_weight, lq.qparams), lq.qparams.scale, lq.qparams.zero_point, bias)
    _replace(gm, node, tag, op, (value,))
    for dead in [*chain, src]:  # the quantized path, once nothing reads it (each Linear quantizes its float input itself)
        if not dead.users:
            gm.graph.erase_node(dead)
    return None


class IntegerBackend:
    """``evaluation.arithmetic = "integer"``: the integer model of each plan run in PyTorch, in the shared batch schedule.

    The per-layer error probe is the float simulation's (:class:`ptq_core.backends.TorchBackend`): it
    measures quantization noise layer by layer, which integer arithmetic moves by rounding ties only.
    """

    name = "integer"
    per_sample_batch = TORCH_PER_SAMPLE_BATCH

    def __init__(self) -> None:
        self._float = TorchBackend()

    def evaluate(
        self, *, prepared: PreparedModel, plan: QuantPlan, dataset: torch.utils.data.Dataset, indices: Sequence[int],
        probe_indices: Sequence[int], batch_size: int, model: nn.Module, example: torch.Tensor, device: torch.device,
        on_step: StepFn | None = None,
    ) -> SimulatedRun:
        gm, report = build_integer_model(prepared, plan)
        gm = gm.to(device)

        def run_batch(chunk: list[int], with_probe: bool) -> BatchResult:
            start = time.perf_counter()
            x, _ = load_batch(dataset, chunk)
            with torch.inference_mode(), device_context(device):
                out = gm(x.to(device))
            return BatchResult(out.float().cpu(), [], time.perf_counter() - start)

        bs = min(batch_size, self.per_sample_batch) if per_sample(plan) else batch_size
        logits, _, timing = run_batches(run_batch, indices=indices, probe_indices=[], batch_size=bs, on_step=on_step,
                                        taps=[], max_workers=None if device.type == "cpu" else 1)
        rows: dict[str, dict[str, float]] = {}
        if probe_indices:
            probe = self._float.evaluate(prepared=prepared, plan=plan, dataset=dataset, indices=[], probe_indices=probe_indices,
                                         batch_size=batch_size, model=model, example=example, device=device)
            rows, timing["layer_error_s"] = probe.layer_errors, probe.timing["layer_error_s"]
        with torch.inference_mode(), device_context(device):
            x = example.to(device)
            quant_ms = median_ms(lambda: gm(x), budget_s=SIMULATED_BUDGET_S, warmup=1)[0]
            fp32_ms = median_ms(lambda: model(x), budget_s=SIMULATED_BUDGET_S, warmup=1)[0]
        latency = {
            "kind": "simulated",
            "runtime": f"PyTorch {torch.__version__} eager, onnxruntime's integer arithmetic emulated in float64/float32",
            "note": "simulated: integer kernels emulated op for op in PyTorch; this is the cost of the emulation, not "
                    "the latency of integer kernels",
            "threads": torch.get_num_threads(), "batch_size": int(example.shape[0]), "fp32_ms": fp32_ms, "quant_ms": quant_ms,
        }
        timing.update({"export_s": 0.0, "session_s": 0.0})
        return SimulatedRun(logits, rows, latency, timing, {"evaluation_backend": "torch", "arithmetic": "integer",
                                                            "integer_arithmetic": report.to_dict()})
