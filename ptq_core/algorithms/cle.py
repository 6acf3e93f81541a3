"""Cross-layer equalization (Nagel et al., "Data-Free Quantization Through Weight Equalization and Bias
Correction", ICCV 2019): rescale consecutive layers so that their per-channel weight ranges even out.

For a pair ``A -> act -> B`` where ``act`` is ReLU or nothing (positively scale-equivariant:
``act(x / s) = act(x) / s`` for ``s > 0``), dividing output channel ``c`` of ``A`` (its weights and
bias) by ``s_c`` and multiplying the weights of ``B`` that read channel ``c`` by ``s_c`` computes
the same function. ``s_c = sqrt(r1_c / r2_c)`` (``r1_c`` = max |weight| of A's output channel c,
``r2_c`` = max |weight| of B over input channel c) makes both ranges ``sqrt(r1_c r2_c)``, which
is the optimum of the paper's per-tensor precision objective. Pairs are iterated until the scales
settle (a depthwise conv sits in two pairs: expand -> depthwise -> project).

A pair is ``A``'s output read by ``B`` alone, directly or through zero padding, dropout,
identity or max pooling (all commute with a positive per-channel scale); ``B`` a Conv reading
A's channels as its input channels, or a Linear after a Linear.

ReLU6 is not scale-equivariant (its clamp at 6 would have to become ``6 / s_c``, a per-channel
bound no integer runtime's fused activation has). As the paper does for MobileNetV2, the ReLU6
between an equalized pair is replaced by ReLU; the FP32 model then changes a little (activations
above 6 are no longer clipped), which the Result reports (``algorithms.cle``: the equalized
float model's agreement with the original and its top-1), and its activation ranges are
calibrated anew (the statistics of the original model do not describe it). Measured: harmless on the
digits CNN (one ReLU6, FP32 agreement 100%), ruinous on EfficientNet-Lite0 (32 ReLU6 replaced: FP32 top-1
88.7% -> 58.1%, its ReLU6 clamps carry information), where the Result then warns. Scaling the clamp per
channel (``min(x, 6 / s_c)``) would keep the function exactly but is no fused activation of any integer
runtime (a float op between the layers); not done here.

Data-free: no calibration image is needed. The result is a new :class:`PreparedModel` (variant
``"cle"``); the one passed in is never touched.
"""

from __future__ import annotations

import copy
import dataclasses
import math
from typing import Any

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from ..graph import PreparedModel, Unit, node_map

ITERATIONS = 20  # passes over the pairs at most; on EfficientNet-Lite0 the scales settle in under 10
TOLERANCE = 1e-4  # stop when no scale moves by more than this (relative)
_EQUIVARIANT_MODULES = (nn.ZeroPad1d, nn.ZeroPad2d, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Identity, nn.MaxPool1d, nn.MaxPool2d)


def _through(node: torch.fx.Node, modules: dict[str, nn.Module]) -> bool:
    if node.op == "call_module":
        m = modules.get(str(node.target))
        if isinstance(m, (nn.ConstantPad1d, nn.ConstantPad2d)):
            return float(m.value) == 0.0
        return isinstance(m, _EQUIVARIANT_MODULES)
    if node.op == "call_function":
        if node.target is F.pad:
            mode = node.kwargs.get("mode", node.args[2] if len(node.args) > 2 else "constant")
            value = node.kwargs.get("value", node.args[3] if len(node.args) > 3 else 0.0)
            return bool(mode == "constant" and not value)
        return node.target in (F.dropout, F.max_pool1d, F.max_pool2d)
    return False


def find_pairs(prepared: PreparedModel) -> list[tuple[Unit, Unit]]:
    """Consecutive (A, B) Conv/Linear units that can be equalized, in network order."""
    gm = prepared.graph_module
    nodes = node_map(gm)
    modules = dict(gm.named_modules())
    by_node = {u.node: u for u in prepared.units if u.has_weights}
    pairs = []
    for a in prepared.units:
        if not a.has_weights or a.fused_activation not in (None, "relu", "relu6"):
            continue
        cur = nodes[a.output_node]
        while len(cur.users) == 1:
            (user,) = cur.users
            if user.name in by_node:
                b = by_node[user.name]
                ma, mb = gm.get_submodule(str(a.module)), gm.get_submodule(str(b.module))
                conv_b = isinstance(mb, (nn.Conv1d, nn.Conv2d)) and isinstance(ma, (nn.Conv1d, nn.Conv2d))
                lin = isinstance(mb, nn.Linear) and isinstance(ma, nn.Linear)
                if (conv_b or lin) and _out_channels(ma) == _in_channels(mb) and user.args[0] is cur:
                    pairs.append((a, b))
                break
            if not _through(user, modules):
                break
            cur = user
    return pairs


def _w(m: nn.Module) -> torch.Tensor:
    w = m.weight
    assert isinstance(w, torch.Tensor)
    return w


def _b(m: nn.Module) -> torch.Tensor | None:
    b = getattr(m, "bias", None)
    return b if isinstance(b, torch.Tensor) else None


def _out_channels(m: nn.Module) -> int:
    return int(m.out_features if isinstance(m, nn.Linear) else m.out_channels)  # type: ignore[arg-type]


def _in_channels(m: nn.Module) -> int:
    return int(m.in_features if isinstance(m, nn.Linear) else m.in_channels)  # type: ignore[arg-type]


def _input_channel_index(mb: nn.Module) -> torch.Tensor:
    """For each weight row/column ``[out, in/groups]`` of B, the input channel it reads."""
    w = _w(mb)
    out, per = int(w.shape[0]), int(w.shape[1])
    groups = int(getattr(mb, "groups", 1))
    group_of_out = torch.arange(out) // (out // groups)
    return group_of_out.unsqueeze(1) * per + torch.arange(per).unsqueeze(0)


def _scales(ma: nn.Module, mb: nn.Module) -> torch.Tensor:
    wa = _w(ma).detach()
    r1 = wa.abs().reshape(wa.shape[0], -1).amax(dim=1)
    wb = _w(mb).detach()
    per_in = wb.abs().reshape(wb.shape[0], wb.shape[1], -1).amax(dim=2)  # [out, in/groups]
    idx = _input_channel_index(mb)
    r2 = torch.zeros(_in_channels(mb), dtype=wb.dtype).scatter_reduce(0, idx.flatten(), per_in.flatten(), "amax")
    s = torch.sqrt(r1 / r2)
    return torch.where((r1 > 0) & (r2 > 0) & torch.isfinite(s), s, torch.ones_like(s))


def _apply(ma: nn.Module, mb: nn.Module, s: torch.Tensor) -> None:
    with torch.no_grad():
        wa, ba, wb = _w(ma), _b(ma), _w(mb)
        wa.div_(s.reshape((-1,) + (1,) * (wa.dim() - 1)))
        if ba is not None:
            ba.div_(s)
        idx = _input_channel_index(mb)
        mult = s[idx]  # [out, in/groups]
        wb.mul_(mult.reshape(*mult.shape, *([1] * (wb.dim() - 2))))


def _relu6_to_relu(gm: torch.fx.GraphModule, node: torch.fx.Node) -> None:
    if node.op == "call_module":
        parent, _, attr = str(node.target).rpartition(".")
        setattr(gm.get_submodule(parent) if parent else gm, attr, nn.ReLU())
    else:
        node.target, node.args, node.kwargs = torch.relu, (node.args[0],), {}


def equalize(prepared: PreparedModel) -> tuple[PreparedModel, dict[str, Any]]:
    """A new prepared model with every equalizable pair rescaled, and a report (pairs, iterations, ranges)."""
    gm = copy.deepcopy(prepared.graph_module)
    pairs = find_pairs(prepared)
    mods = [(gm.get_submodule(str(a.module)), gm.get_submodule(str(b.module))) for a, b in pairs]
    spread_before = [_spread(ma) for ma, _ in mods]
    iterations = 0
    for iterations in range(1, ITERATIONS + 1):  # noqa: B007 - the count is reported
        moved = 0.0
        for ma, mb in mods:
            s = _scales(ma, mb)
            _apply(ma, mb, s)
            moved = max(moved, float((s - 1).abs().max()) if s.numel() else 0.0)
        if moved < TOLERANCE:
            break
    nodes = node_map(gm)
    replaced = []
    units = []
    relu6_units = {a.name for a, _ in pairs if a.fused_activation == "relu6"}
    for u in prepared.units:
        if u.name in relu6_units:
            _relu6_to_relu(gm, nodes[u.output_node])
            replaced.append(u.name)
            u = dataclasses.replace(u, fused_activation="relu")
        units.append(u)
    gm.graph.lint()
    gm.recompile()
    report = {
        "pairs": [[a.name, b.name] for a, b in pairs],
        "iterations": iterations,
        "relu6_replaced": replaced,
        # median over pairs of (largest / median per-channel weight range) of the first layer: what CLE evens out
        "range_spread_before": _median(spread_before),
        "range_spread_after": _median([_spread(ma) for ma, _ in mods]),
    }
    return dataclasses.replace(prepared, graph_module=gm, units=units, variant="cle"), report


def _spread(m: nn.Module) -> float:
    """Largest over median per-channel weight range of ``m``: how much one channel's range stretches a per-tensor grid."""
    w = _w(m).detach()
    r = w.abs().reshape(w.shape[0], -1).amax(dim=1)
    med = float(r.median())
    return float(r.max()) / med if med > 0 else math.inf


def _median(values: list[float]) -> float:
    if not values:
        return math.nan
    v = sorted(values)
    return v[len(v) // 2]
