"""From stored statistics and a QuantConfig to a QuantPlan, and from a plan to the simulated model.

``make_plan`` decides every scale and zero point without running the model: weight ranges
come from the weights themselves, static activation ranges from the calibration statistics
(:mod:`ptq_core.observers`), so changing bits, scheme, granularity or clipping is instant.
Settings that would change nothing are not dropped silently: ``make_plan`` lists them in
``QuantPlan.warnings`` (an override on a layer kept in float or on a point without a quantizer,
dynamic ``per_token`` on a conv input, a ``group_size`` that no per_group layer uses or that covers
whole rows). A group size longer than every row it applies to is a ConfigError (rule in
:mod:`ptq_core.config`). ``build_quantized_model`` returns a NEW ``GraphModule`` (the prepared model is never touched)
whose weights are replaced by their fake-quantized values and whose activation points carry
fake-quantize modules, placed as :mod:`ptq_core.graph` documents.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.fx
from torch import nn

from .config import ActivationQuant, QuantConfig, WeightQuant
from .errors import CalibrationError, ConfigError
from .graph import PreparedModel, Unit, insert_after, reads_for_weights
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
    from .observers import TensorStats


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

    def with_scale(self, scale: float) -> PointQuant:
        """The same quantizer with another scale (fine-tuned), its range following: ``[(qmin - zp) s, (qmax - zp) s]``."""
        assert self.zero_point is not None
        s = float(torch.tensor(scale, dtype=torch.float32))  # the float32 value the simulation uses
        return dataclasses.replace(self, scale=s, lo=(self.qmin - self.zero_point) * s, hi=(self.qmax - self.zero_point) * s)


@dataclass
class LayerQuant:
    """The weight quantization of one Conv/Linear unit (``quant`` None: kept in float)."""

    unit: Unit
    quant: WeightQuant | None
    qparams: WeightQParams | None = None
    fq_weight: torch.Tensor | None = None
    error: dict[str, float] = field(default_factory=dict)
    # The bias the quantized layer runs with when an algorithm changed it (bias correction, fine-tuning);
    # None: the prepared model's own. Always a full [out] tensor, also for a layer that had no bias.
    bias: torch.Tensor | None = None


@dataclass
class QuantPlan:
    """Every quantization decision of one config, in network order. No model has been run for it."""

    mode: str
    layers: dict[str, LayerQuant]
    points: dict[str, PointQuant]
    warnings: list[str] = field(default_factory=list)
    # Which algorithms (ptq_core.algorithms) moved weights, biases or scales off round-to-nearest: part of
    # every cache key of values a plan feeds (""  = none; plain round-to-nearest from the statistics).
    algorithm_key: str = ""
    algorithms: dict[str, Any] = field(default_factory=dict)  # what they did: seconds, per-layer numbers, notes


def check_names(prepared: PreparedModel, config: QuantConfig) -> None:
    """keep_float and overrides must name layers or activation points of this model; group sizes must fit it.

    Everything about ``config`` that can be checked against the model without statistics: what a
    sweep checks for every config before running the first.
    """
    layers = prepared.layer_names()
    units = {u.name for u in prepared.units}
    points = {p.name for p in prepared.points}
    for i, name in enumerate(config.keep_float):
        if name not in units:
            raise ConfigError(f"keep_float[{i}]: no layer named {name!r}; allowed: {', '.join(sorted(units)[:60])}")
    for i, name in enumerate(config.keep_float_activations):
        if name not in points:
            raise ConfigError(f"keep_float_activations[{i}]: no activation point named {name!r}; allowed: "
                              f"{', '.join(sorted(points)[:60])}")
    for name, ov in config.overrides.items():
        if ov.weights and name not in layers:
            raise ConfigError(f"overrides.{name}.weights: no Conv/Linear layer named {name!r}; allowed: {', '.join(layers[:60])}")
        if ov.activations and name not in points:
            raise ConfigError(f"overrides.{name}.activations: no activation point named {name!r}; allowed: {', '.join(sorted(points)[:60])}")
    _check_group_sizes(prepared, config, _resolved_weights(prepared, config))


def _resolved_weights(prepared: PreparedModel, config: QuantConfig) -> dict[str, WeightQuant | None]:
    return {u.name: config.weight_quant_for(u.name) for u in prepared.units if u.has_weights}


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
    wanted = set(names) - set(config.keep_float_activations)  # spared points: their readers take them in float
    out: dict[str, ActivationQuant] = {}
    for p in prepared.points:  # network order
        if p.name in wanted:
            aq = config.activation_quant_for(p.name)
            assert aq is not None
            out[p.name] = aq
    return out


_LISTED = 8  # names listed in one warning before "and N more"


def _listed(items: list[str]) -> str:
    more = f" and {len(items) - _LISTED} more" if len(items) > _LISTED else ""
    return ", ".join(items[:_LISTED]) + more


def _group_size_source(config: QuantConfig, layer: str) -> str:
    """The config field a layer's group size comes from."""
    ov = config.overrides.get(layer)
    return f"overrides.{layer}.weights.group_size" if ov is not None and "group_size" in ov.weights else "weights.group_size"


def _check_group_sizes(prepared: PreparedModel, config: QuantConfig, resolved: dict[str, WeightQuant | None]) -> list[str]:
    """The group-size rule of :mod:`ptq_core.config`, checked before any weight is reshaped into groups.

    Per field that sets a group size: longer than the longest row of the per_group layers it applies
    to -> ConfigError naming that layer and its row length; as long as some rows -> a warning naming
    those layers (one group per row is per_channel). A group size nothing uses -> a warning.
    """
    by_source: dict[str, list[tuple[str, int, int]]] = {}  # field -> [(layer, row length, group size)]
    warnings: list[str] = []
    for unit in prepared.units:
        wq = resolved.get(unit.name)
        if wq is None or wq.granularity != "per_group":
            continue
        assert wq.group_size is not None
        row = math.prod(prepared.weight(unit).shape[1:])
        by_source.setdefault(_group_size_source(config, unit.name), []).append((unit.name, row, wq.group_size))
    for source, rows in by_source.items():
        group = rows[0][2]
        layer, longest, _ = max(rows, key=lambda r: r[1])
        if group > longest:
            raise ConfigError(
                f"{source}: got {group}; allowed: 1 to {longest} for this model, the longest row among the per_group "
                f"layers it applies to ({layer}: {longest} weights per output channel); a group longer than every row "
                "is per_channel quantization, choose granularity per_channel for that"
            )
        whole = [f"{name} ({row})" for name, row, _ in rows if row <= group]
        if whole:
            warnings.append(
                f"{source}={group} is at least the row length of {len(whole)} layer(s): {_listed(whole)}; each of "
                "their rows is one group, the same numbers as per_channel"
            )
    w = config.weights
    if w.group_size is not None and "weights.group_size" not in by_source:
        why = (f"granularity is {w.granularity}; group_size applies to per_group only" if w.granularity != "per_group"
               else "every per_group layer is in keep_float or has its own group size")
        warnings.append(f"weights.group_size={w.group_size} is ignored: no layer is quantized per_group with it ({why})")
    for name, ov in config.overrides.items():
        wq = resolved.get(name)
        if "group_size" in ov.weights and wq is not None and wq.granularity != "per_group":
            warnings.append(
                f"overrides.{name}.weights.group_size={ov.weights['group_size']} is ignored: layer {name} is "
                f"quantized {wq.granularity} (group_size applies to per_group only)"
            )
    return warnings


def _override_warnings(prepared: PreparedModel, config: QuantConfig, active: dict[str, ActivationQuant]) -> list[str]:
    """Overrides and choices that change nothing in this model: said, not dropped silently."""
    warnings: list[str] = []
    dynamic = config.activations is not None and config.activations.mode == "dynamic"
    for name, ov in config.overrides.items():
        if ov.weights and name in config.keep_float:
            warnings.append(
                f"overrides.{name}.weights: layer {name} is in keep_float, so its weights stay float; the override "
                "changes nothing"
            )
        if ov.activations and name not in active:
            if name in config.keep_float:
                why = f"layer {name} is in keep_float, so its output stays float"
            elif name in config.keep_float_activations:
                why = f"{name} is in keep_float_activations"
            elif dynamic:
                why = "dynamic mode quantizes only the inputs of quantized Conv/Linear layers"
            else:
                why = "no quantized layer reads or produces it"
            warnings.append(f"overrides.{name}.activations: {name} has no activation quantizer ({why}); the override "
                            "changes nothing")
    linear_inputs = {i for u in prepared.units if u.kind == "linear" for i in u.inputs}
    conv_inputs = {i for u in prepared.units if u.kind == "conv" for i in u.inputs}
    fallback: dict[str, list[str]] = {}
    for name, aq in active.items():
        if aq.mode == "dynamic" and aq.granularity == "per_token" and (name not in linear_inputs or name in conv_inputs):
            own = config.overrides.get(name)
            source = (f"overrides.{name}.activations.granularity" if own is not None and "granularity" in own.activations
                      else "activations.granularity")
            fallback.setdefault(source, []).append(name)
    for source, names in fallback.items():
        warnings.append(
            f"{source}: per_token applies to Linear inputs only (a conv input has no token rows); {len(names)} "
            f"conv input(s) use per_tensor: {_listed(names)}"
        )
    return warnings


def weight_qparams_for(w: torch.Tensor, wq: WeightQuant) -> Any:
    """The grid ``wq`` puts on weight ``w`` (:func:`ptq_core.ranges.weight_qparams`; a group size counts only
    ``per_group``)."""
    return weight_qparams(w, bits=wq.bits, scheme=wq.scheme, granularity=wq.granularity,
                          group_size=wq.group_size if wq.granularity == "per_group" else None,
                          clipping=wq.clipping, percentile=wq.percentile)


def static_range(ts: TensorStats, aq: ActivationQuant) -> tuple[float, float, float, int]:
    """``(lo, hi, scale, zero_point)`` of a static activation quantizer ``aq`` on statistics ``ts``."""
    lo, hi = activation_range(ts, method=aq.clipping, bits=aq.bits, scheme=aq.scheme, percentile=aq.percentile)
    scale, zp = qparams_from_range(torch.tensor(lo), torch.tensor(hi), aq.bits, aq.scheme)
    return lo, hi, float(scale), int(zp)


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
    resolved = _resolved_weights(prepared, config)
    warnings = _check_group_sizes(prepared, config, resolved)
    layers: dict[str, LayerQuant] = {}
    for unit in prepared.units:
        if not unit.has_weights:
            continue
        wq = resolved[unit.name]
        if wq is not None and wq.granularity != "per_group" and wq.group_size is not None:
            wq = dataclasses.replace(wq, group_size=None)  # ignored (warned above): not echoed per layer
        if wq is None:
            layers[unit.name] = LayerQuant(unit=unit, quant=None)
            continue
        key = ("w", prepared.variant) + _weight_key(unit, wq)
        if key not in cache:
            w = prepared.weight(unit)
            qp = weight_qparams_for(w, wq)
            cache[key] = (qp, fake_quantize_weight(w, qp), weight_error(w, qp))
        qp, fq, err = cache[key]
        layers[unit.name] = LayerQuant(unit=unit, quant=wq, qparams=qp, fq_weight=fq, error=dict(err))

    points: dict[str, PointQuant] = {}
    linear_inputs = {i for u in prepared.units if u.kind == "linear" for i in u.inputs}
    conv_inputs = {i for u in prepared.units if u.kind == "conv" for i in u.inputs}
    active = active_points(prepared, config)
    warnings.extend(_override_warnings(prepared, config, active))
    for name, aq in active.items():
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
            lo, hi, scale, zp = static_range(ts, aq)
            err = range_error(ts, lo, hi, bits=aq.bits, scheme=aq.scheme)
            stats.ranges[akey] = (lo, hi, scale, zp, err)
        lo, hi, scale, zp, err = stats.ranges[akey]
        qmin, qmax = int_range(aq.bits, aq.scheme)
        points[name] = PointQuant(name, aq, "per_tensor", lo, hi, scale, zp, qmin, qmax, err)
    return QuantPlan(mode=config.mode, layers=layers, points=points, warnings=warnings)


def _module_name(prefix: str, name: str) -> str:
    return prefix + "".join(c if c.isalnum() else "_" for c in name)


def set_layer_weights(gm: torch.fx.GraphModule, lq: LayerQuant) -> None:
    """Give ``lq``'s Conv/Linear module in ``gm`` (a copy of the prepared model) its weight and bias, where set."""
    if lq.fq_weight is None and lq.bias is None:
        return
    assert lq.unit.module is not None
    mod = gm.get_submodule(lq.unit.module)
    if lq.fq_weight is not None:
        mod.weight = nn.Parameter(lq.fq_weight.clone(), requires_grad=False)
    if lq.bias is not None:
        mod.bias = nn.Parameter(lq.bias.clone(), requires_grad=False)


def set_weights(gm: torch.fx.GraphModule, plan: QuantPlan) -> None:
    """Give the Conv/Linear modules of ``gm`` (a copy of the prepared model) the plan's weights and biases."""
    for lq in plan.layers.values():
        set_layer_weights(gm, lq)


def build_quantized_model(prepared: PreparedModel, plan: QuantPlan) -> tuple[torch.fx.GraphModule, dict[str, str]]:
    """A new simulated model for ``plan``, and for each point the node that consumers now read."""
    gm = copy.deepcopy(prepared.graph_module)
    set_weights(gm, plan)
    visible = {p.name: p.node for p in prepared.points}
    for name, pq in plan.points.items():
        point = prepared.point(name)
        q: nn.Module
        if pq.quant.mode == "dynamic":
            q = DynamicFakeQuantize(name, pq.quant.bits, pq.quant.scheme, pq.granularity == "per_token")
        else:
            assert pq.scale is not None and pq.zero_point is not None
            q = FakeQuantize(name, pq.scale, pq.zero_point, pq.qmin, pq.qmax)
        only = reads_for_weights(gm) if pq.quant.mode == "dynamic" else None  # graph rule 6: the residual reads float
        visible[name] = insert_after(gm, point.node, _module_name("ptq_act_", name), q, only=only)
    gm.graph.lint()
    gm.recompile()
    return gm, visible
