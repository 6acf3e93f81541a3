"""SmoothQuant (Xiao et al., "SmoothQuant: Accurate and Efficient Post-Training Quantization for Large Language
Models", ICML 2023): move activation outliers into the weights, one factor per input channel of a Linear.

A transformer's activations carry a few channels whose values are 10-100x the rest, the same
channels on every token; a per-tensor activation grid sized for them leaves the others a handful
of steps. For a Linear ``y = x W^T`` and any positive ``s`` per input channel,
``y = (x / s) (W * s)^T``: dividing channel ``j`` of the input by ``s_j`` and multiplying column
``j`` of the weight by it computes the same function, with
``s_j = max|x_j|^alpha / max|W_j|^(1 - alpha)`` (``alpha`` 0.5: both ranges become
``sqrt(max|x_j| max|W_j|)``). ``max|x_j|`` is read from one FP32 pass over the calibration samples
(real tokens only for text); ``max|W_j|`` over every Linear reading that input (a transformer's
query, key and value share one input, so one factor and one quantizer serve all three).

Where ``1 / s`` goes. The paper folds it into the LayerNorm before the Linear; that is exact only
when the LayerNorm output feeds nothing else. In a post-norm encoder (BERT, this model) the
LayerNorm output is also the residual stream, so folding would change the residual; here the
division is a per-channel multiply inserted right before the Linear(s): a float op between the
LayerNorm (float) and the input's QuantizeLinear, i.e. one elementwise Mul per group in the
exported model (a runtime may fold it into the preceding op where that op feeds nothing else).
It applies to every Linear whose input is quantized, static or dynamic: a dynamic per-token range
is still set by each token's outlier channel, which leaves the other channels few steps (the
paper's per-token settings use it too). Weight-only mode has no activation grid: nothing to do.

The result is a new :class:`~ptq_core.graph.PreparedModel` (variant ``smoothquant:...``), prepared
anew so the inserted multiplies are float ops and their outputs the quantized points; the model
passed in is never touched.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence
from typing import Any

import torch
import torch.fx
from torch import nn

from ..graph import PreparedModel, prepare
from .capture import real_tokens

EPS = 1e-5  # floor of both ranges: a channel that is always 0 keeps s = 1 instead of dividing by 0


@torch.fx.wrap
def smooth_channels(x: torch.Tensor, inv_scale: torch.Tensor) -> torch.Tensor:
    """``x * inv_scale`` per last-dim channel. Wrapped: one float op when traced, not a quantized multiply unit."""
    return x * inv_scale


class Smooth(nn.Module):
    """The activation side of SmoothQuant before one group of Linears (a float op, see :func:`smooth_channels`)."""

    def __init__(self, inv_scale: torch.Tensor) -> None:
        super().__init__()
        self.inv_scale = inv_scale  # a plain tensor, not a parameter or buffer: it is no weight to quantize

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return smooth_channels(x, self.inv_scale)


def _groups(prepared: PreparedModel, quantized_inputs: set[str]) -> dict[str, list[str]]:
    """Linear module paths grouped by the fx node they read (query, key and value of a layer read one node)."""
    gm = prepared.graph_module
    modules = dict(gm.named_modules())
    groups: dict[str, list[str]] = {}
    for node in gm.graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(str(node.target)), nn.Linear):
            continue
        unit = next((u for u in prepared.units if u.module == str(node.target)), None)
        if unit is None or not unit.inputs or unit.inputs[0] not in quantized_inputs:
            continue
        arg = node.args[0]
        if isinstance(arg, torch.fx.Node):
            groups.setdefault(arg.name, []).append(str(node.target))
    return groups


def _input_absmax(gm: torch.fx.GraphModule, paths: list[str], batches: Sequence[torch.Tensor],
                  lengths: Sequence[int] | None) -> dict[str, torch.Tensor]:
    """max |x| per input channel of each Linear in ``paths``, over the batches (padding left out when ``lengths``)."""
    out: dict[str, torch.Tensor] = {}
    seen = dict.fromkeys(paths, 0)
    handles = []

    def hook(path: str) -> Any:
        def fn(_m: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            x = args[0].detach()
            for part in (x.split(1) if lengths is not None else [x]):
                part = real_tokens(part, lengths, seen[path])
                seen[path] += 1
                m = part.abs().reshape(-1, part.shape[-1]).amax(dim=0).float()
                out[path] = m if path not in out else torch.maximum(out[path], m)

        return fn

    for path in paths:
        handles.append(gm.get_submodule(path).register_forward_pre_hook(hook(path)))
    try:
        with torch.no_grad():
            for x in batches:
                gm(x)
    finally:
        for h in handles:
            h.remove()
    return out


def smooth(prepared: PreparedModel, quantized_inputs: set[str], batches: Sequence[torch.Tensor], *, alpha: float,
           example: torch.Tensor, variant: str, lengths: Sequence[int] | None = None) -> tuple[PreparedModel, dict[str, Any]]:
    """A new prepared model with SmoothQuant applied to every Linear reading a point in ``quantized_inputs``.

    ``batches``: the calibration samples (``lengths``: per sample its real tokens, for text); ``example``: one input
    to trace the result with. Returns it and a report: per group its Linears, the largest over the median channel
    range of the input before and after (what the quantizer's grid has to span), and the same for the weights.
    """
    groups = _groups(prepared, quantized_inputs)
    gm = copy.deepcopy(prepared.graph_module)
    paths = [p for members in groups.values() for p in members]
    amax = _input_absmax(gm, paths, batches, lengths)
    nodes = {n.name: n for n in gm.graph.nodes}
    rows = []
    for k, (node_name, members) in enumerate(groups.items()):
        x_max = torch.stack([amax[p] for p in members]).amax(dim=0).clamp(min=EPS)
        weights: list[torch.Tensor] = [_linear(gm, p).weight for p in members]
        w_max = torch.stack([w.detach().abs().amax(dim=0) for w in weights]).amax(dim=0).clamp(min=EPS)
        s = (x_max.pow(alpha) / w_max.pow(1.0 - alpha)).clamp(min=EPS)
        with torch.no_grad():
            for w in weights:
                w.mul_(s)
        name = f"smoothquant_{k}"
        gm.add_submodule(name, Smooth((1.0 / s).to(weights[0].dtype)))
        src = nodes[node_name]
        users = [n for n in src.users if n.op == "call_module" and str(n.target) in members]
        with gm.graph.inserting_before(users[0]):
            new = gm.graph.call_module(name, (src,))
        for user in users:
            user.replace_input_with(src, new)
        x_after = x_max / s
        w_after = torch.stack([w.detach().abs().amax(dim=0) for w in weights]).amax(dim=0)
        rows.append({"layers": members, "input_range_spread_before": _spread(x_max), "input_range_spread_after": _spread(x_after),
                     "input_max_before": float(x_max.max()), "input_max_after": float(x_after.max()),
                     "weight_range_spread_before": _spread(w_max), "weight_range_spread_after": _spread(w_after)})
    gm.graph.lint()
    gm.recompile()
    smoothed = prepare(gm, example, fold_bn=prepared.fold_batchnorm)
    report = {"alpha": alpha, "groups": rows, "layers": len(paths)}
    # the traced factors are buffers of the Smooth modules, not weights left in float: not "unsupported" layers
    added = {f"smoothquant_{k}" for k in range(len(groups))}  # retracing keeps the names, not the Smooth class
    unsupported = [m for m in smoothed.unsupported if m not in added]
    return dataclasses.replace(smoothed, variant=variant, unsupported=unsupported), report


def _linear(gm: torch.fx.GraphModule, path: str) -> nn.Linear:
    module = gm.get_submodule(path)
    assert isinstance(module, nn.Linear)
    return module


def _spread(r: torch.Tensor) -> float:
    """Largest over median channel range: how far one channel stretches a per-tensor grid."""
    med = float(r.median())
    return float(r.max()) / med if med > 0 else float("inf")
