"""From stored statistics and a QuantConfig to a QuantPlan, and from a plan to the simulated model.

``make_plan`` decides every scale and zero point without running the model: weight ranges
come from the weights themselves, static activation ranges from the calibration statistics
(:mod:`ptq_core.observers`), so changing bits, scheme, granularity or clipping is instant.
``build_quantized_model`` returns a NEW ``GraphModule`` (the prepared model is never touched)
whose weights are replaced by their fake-quantized values and whose activation points carry
fake-quantize modules, placed as :mod:`ptq_core.graph` documents.
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.fx
from torch import nn

from .config import ActivationQuant, QuantConfig, WeightQuant
from .errors import CalibrationError, ConfigError
from .graph import PreparedModel, Unit, insert_after
from .primitives import fake_quantize, int_range, qparams_from_range
from .ranges import (
    RangeError,
    WeightQParams,
    activation_range,
    fake_quantize_weight,
    range_error,
    weight_error,
    weight_qparams,
)

if TYPE_CHECKING:
    from .calibration import CalibrationStats


class FakeQuantize(nn.Module):
    """Static activation quantizer: one calibrated (scale, zero_point) for the whole tensor."""

    scale: torch.Tensor
    zero_point: torch.Tensor

    def __init__(self, name: str, scale: float, zero_point: int, qmin: int, qmax: int) -> None:
        super().__init__()
        self.point = name
        self.register_buffer("scale", torch.tensor(scale, dtype=torch.float32))
        self.register_buffer("zero_point", torch.tensor(zero_point, dtype=torch.int32))
        self.qmin, self.qmax = qmin, qmax

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fake_quantize(x, self.scale, self.zero_point, self.qmin, self.qmax)

    def extra_repr(self) -> str:
        return f"point={self.point}, scale={float(self.scale):.6g}, zero_point={int(self.zero_point)}, range=[{self.qmin}, {self.qmax}]"


class DynamicFakeQuantize(nn.Module):
    """Dynamic activation quantizer: the range of each input (per tensor or per row) at inference.

    Matches onnxruntime's DynamicQuantizeLinear for the asymmetric 8-bit case: the range is
    widened to include 0, scale = (max - min) / 255, zero_point = round(-min / scale).
    """

    def __init__(self, name: str, bits: int, scheme: str, per_token: bool) -> None:
        super().__init__()
        self.point, self.bits, self.scheme, self.per_token = name, bits, scheme, per_token
        self.qmin, self.qmax = int_range(bits, scheme)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.per_token:
            lo, hi = x.amin(dim=-1, keepdim=True), x.amax(dim=-1, keepdim=True)
        else:
            lo, hi = torch.aminmax(x)
        if not (torch.isfinite(lo).all() and torch.isfinite(hi).all()):
            raise CalibrationError(f"{self.point}: activation contains NaN or Inf")
        scale, zp = qparams_from_range(lo, hi, self.bits, self.scheme)
        return fake_quantize(x, scale, zp, self.qmin, self.qmax)

    def extra_repr(self) -> str:
        return f"point={self.point}, bits={self.bits}, scheme={self.scheme}, per_token={self.per_token}"


@dataclass
class PointQuant:
    """The quantizer on one activation point. Static: calibrated range; dynamic: none stored."""

    name: str
    quant: ActivationQuant
    granularity: str  # what is actually used: dynamic per_token applies to Linear inputs only
    lo: float | None = None
    hi: float | None = None
    scale: float | None = None
    zero_point: int | None = None
    qmin: int = 0
    qmax: int = 0
    error: RangeError | None = None  # expected error on the calibration distribution


@dataclass
class LayerQuant:
    """The weight quantization of one Conv/Linear unit (``quant`` None: kept in float)."""

    unit: Unit
    quant: WeightQuant | None
    qparams: WeightQParams | None = None
    fq_weight: torch.Tensor | None = None
    error: dict[str, float] = field(default_factory=dict)


@dataclass
class QuantPlan:
    """Every quantization decision of one config, in network order. No model has been run for it."""

    mode: str
    layers: dict[str, LayerQuant]
    points: dict[str, PointQuant]
    warnings: list[str] = field(default_factory=list)


def check_names(prepared: PreparedModel, config: QuantConfig) -> None:
    """keep_float and overrides must name layers or activation points of this model."""
    layers = prepared.layer_names()
    units = {u.name for u in prepared.units}
    points = {p.name for p in prepared.points}
    for i, name in enumerate(config.keep_float):
        if name not in units:
            raise ConfigError(f"keep_float[{i}]: no layer named {name!r}; allowed: {', '.join(sorted(units)[:60])}")
    for name, ov in config.overrides.items():
        if ov.weights and name not in layers:
            raise ConfigError(f"overrides.{name}.weights: no Conv/Linear layer named {name!r}; allowed: {', '.join(layers[:60])}")
        if ov.activations and name not in points:
            raise ConfigError(f"overrides.{name}.activations: no activation point named {name!r}; allowed: {', '.join(sorted(points)[:60])}")


def active_points(prepared: PreparedModel, config: QuantConfig) -> dict[str, ActivationQuant]:
    """The activation points that carry a quantizer under ``config``, with their settings."""
    if config.activations is None:
        return {}
    quantized = [u for u in prepared.units if u.name not in config.keep_float]
    names: list[str] = []
    if config.activations.mode == "dynamic":
        for u in quantized:
            if u.has_weights:
                names.extend(u.inputs)
    else:
        for u in quantized:
            names.extend(u.inputs)
            names.append(u.name)
    wanted = set(names)
    out: dict[str, ActivationQuant] = {}
    for p in prepared.points:  # network order
        if p.name in wanted:
            aq = config.activation_quant_for(p.name)
            assert aq is not None
            out[p.name] = aq
    return out


def _weight_key(unit: Unit, wq: WeightQuant) -> tuple[Any, ...]:
    return (unit.module, dataclasses.astuple(wq))


def make_plan(
    prepared: PreparedModel,
    config: QuantConfig,
    stats: CalibrationStats | None,
    *,
    cache: dict[Any, Any] | None = None,
) -> QuantPlan:
    """Decide every range, scale and zero point of ``config``.

    ``cache`` memoizes weight qparams per (layer, weight setting); activation ranges are memoized
    on the statistics object itself.
    """
    check_names(prepared, config)
    cache = cache if cache is not None else {}
    layers: dict[str, LayerQuant] = {}
    for unit in prepared.units:
        if not unit.has_weights:
            continue
        wq = config.weight_quant_for(unit.name)
        if wq is None:
            layers[unit.name] = LayerQuant(unit=unit, quant=None)
            continue
        key = ("w",) + _weight_key(unit, wq)
        if key not in cache:
            w = prepared.weight(unit)
            qp = weight_qparams(
                w, bits=wq.bits, scheme=wq.scheme, granularity=wq.granularity,
                group_size=wq.group_size, clipping=wq.clipping, percentile=wq.percentile,
            )
            cache[key] = (qp, fake_quantize_weight(w, qp), weight_error(w, qp))
        qp, fq, err = cache[key]
        layers[unit.name] = LayerQuant(unit=unit, quant=wq, qparams=qp, fq_weight=fq, error=dict(err))

    points: dict[str, PointQuant] = {}
    linear_inputs = {i for u in prepared.units if u.kind == "linear" for i in u.inputs}
    conv_inputs = {i for u in prepared.units if u.kind == "conv" for i in u.inputs}
    for name, aq in active_points(prepared, config).items():
        if aq.mode == "dynamic":
            per_token = aq.granularity == "per_token" and name in linear_inputs and name not in conv_inputs
            qmin, qmax = int_range(aq.bits, aq.scheme)
            points[name] = PointQuant(name, aq, "per_token" if per_token else "per_tensor", qmin=qmin, qmax=qmax)
            continue
        if stats is None or name not in stats.points:
            raise CalibrationError(f"{name}: no calibration statistics for this activation; run calibration first")
        akey = (name, aq.bits, aq.scheme, aq.clipping, aq.percentile if aq.clipping == "percentile" else None)
        if akey not in stats.ranges:
            ts = stats.points[name]
            lo, hi = activation_range(ts, method=aq.clipping, bits=aq.bits, scheme=aq.scheme, percentile=aq.percentile)
            err = range_error(ts, lo, hi, bits=aq.bits, scheme=aq.scheme)
            scale, zp = qparams_from_range(torch.tensor(lo), torch.tensor(hi), aq.bits, aq.scheme)
            stats.ranges[akey] = (lo, hi, float(scale), int(zp), err)
        lo, hi, scale, zp, err = stats.ranges[akey]
        qmin, qmax = int_range(aq.bits, aq.scheme)
        points[name] = PointQuant(name, aq, "per_tensor", lo, hi, scale, zp, qmin, qmax, err)
    return QuantPlan(mode=config.mode, layers=layers, points=points)


def _module_name(prefix: str, name: str) -> str:
    return prefix + "".join(c if c.isalnum() else "_" for c in name)


def build_quantized_model(prepared: PreparedModel, plan: QuantPlan) -> tuple[torch.fx.GraphModule, dict[str, str]]:
    """A new simulated model for ``plan``, and for each point the node that consumers now read."""
    gm = copy.deepcopy(prepared.graph_module)
    for lq in plan.layers.values():
        if lq.fq_weight is not None:
            assert lq.unit.module is not None
            mod = gm.get_submodule(lq.unit.module)
            mod.weight = nn.Parameter(lq.fq_weight.clone(), requires_grad=False)
    visible = {p.name: p.node for p in prepared.points}
    for name, pq in plan.points.items():
        point = prepared.point(name)
        q: nn.Module
        if pq.quant.mode == "dynamic":
            q = DynamicFakeQuantize(name, pq.quant.bits, pq.quant.scheme, pq.granularity == "per_token")
        else:
            assert pq.scale is not None and pq.zero_point is not None
            q = FakeQuantize(name, pq.scale, pq.zero_point, pq.qmin, pq.qmax)
        visible[name] = insert_after(gm, point.node, _module_name("ptq_act_", name), q)
    gm.graph.lint()
    gm.recompile()
    return gm, visible
