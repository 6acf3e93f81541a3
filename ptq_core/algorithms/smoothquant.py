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

``alpha: "auto"`` chooses the migration strength per group of Linears from the calibration data, as
Intel Neural Compressor's SmoothQuant does with ``alpha="auto"`` (its per-layer alpha search; the
paper itself picks one alpha per model by hand). One alpha cannot suit every input of a network:
on all-MiniLM-L6-v2 the LayerNorm outputs carry one channel 15-30x the median while the GELU
outputs are spread otherwise, and the whole-model sweep (benchmarks/RESULTS.md) moves neighbours
by 1-2 sentences from one alpha to the next. For each group, every alpha of :data:`ALPHA_GRID` is
tried on the group's FP32 input (real tokens of the calibration samples, read in the same pass as
``max|x|``): the input divided by ``s`` is quantized as the config quantizes that point (dynamic
per token or per tensor, or static per tensor from its calibration range with the config's
clipping), the weights times ``s`` as the config quantizes that layer's weights (the engine's own
:func:`~ptq_core.ranges.weight_qparams` and quantizers), and the alpha whose group output
``Q(x/s) Q(W s)^T`` is closest to the FP32 ``x W^T`` (mean squared error over every output of the
group's Linears) wins. The evaluation split is never read. Each group is chosen alone, on FP32
inputs: the error a group passes on to the next is not part of its choice (INC's default too).

The result is a new :class:`~ptq_core.graph.PreparedModel` (variant ``smoothquant:...``), prepared
anew so the inserted multiplies are float ops and their outputs the quantized points; the model
passed in is never touched.
"""

from __future__ import annotations

import copy
import dataclasses
import logging
import time
from collections.abc import Container, Sequence
from typing import TYPE_CHECKING, Any

import torch
import torch.fx
from torch import nn

from ..graph import PreparedModel, prepare
from ..observers import TensorStats
from ..primitives import fake_quantize, int_range
from ..quantize import DynamicFakeQuantize, static_range, weight_qparams_for
from ..ranges import fake_quantize_weight
from .capture import real_tokens

if TYPE_CHECKING:
    from ..config import ActivationQuant, QuantConfig, WeightQuant

log = logging.getLogger(__name__)

EPS = 1e-5  # floor of both ranges: a channel that is always 0 keeps s = 1 instead of dividing by 0
# The alphas "auto" tries per group: 0 to 1 in steps of 0.05. INC searches 0 to 1 (steps of 0.1). A narrower
# 0.3-0.8 (the paper's 0.4-0.6 for most models, up to 0.85 for the hardest) left the calibration error's minimum at
# the 0.8 edge for 14 of the 24 groups of all-MiniLM-L6-v2 under static W8A8, so the whole range is searched. The
# step is the dashboard slider's; each alpha costs one quantized matmul per Linear on the calibration tokens.
ALPHA_GRID = tuple(round(0.05 * k, 2) for k in range(21))


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


@dataclasses.dataclass
class _Group:
    """Linears reading one fx node: their module paths, unit names and the activation point they read."""

    node: str
    paths: list[str]
    units: list[str]
    point: str


def _groups(prepared: PreparedModel, quantized_inputs: Container[str]) -> list[_Group]:
    """Linears grouped by the fx node they read (query, key and value of a layer read one node), in graph order."""
    gm = prepared.graph_module
    modules = dict(gm.named_modules())
    groups: dict[str, _Group] = {}
    for node in gm.graph.nodes:
        if node.op != "call_module" or not isinstance(modules.get(str(node.target)), nn.Linear):
            continue
        unit = next((u for u in prepared.units if u.module == str(node.target)), None)
        if unit is None or not unit.inputs or unit.inputs[0] not in quantized_inputs:
            continue
        arg = node.args[0]
        if isinstance(arg, torch.fx.Node):
            group = groups.setdefault(arg.name, _Group(arg.name, [], [], unit.inputs[0]))
            group.paths.append(str(node.target))
            group.units.append(unit.name)
    return list(groups.values())


def _read_inputs(gm: torch.fx.GraphModule, paths: list[str], batches: Sequence[torch.Tensor],
                 lengths: Sequence[int] | None, keep: set[str]) -> tuple[dict[str, torch.Tensor], dict[str, list[torch.Tensor]]]:
    """One FP32 pass: max |x| per input channel of each Linear in ``paths`` (padding left out when ``lengths``) and,
    for those in ``keep``, the input itself: per batch its real tokens as rows ``[n, K]``."""
    out: dict[str, torch.Tensor] = {}
    kept: dict[str, list[torch.Tensor]] = {path: [] for path in keep}
    seen = dict.fromkeys(paths, 0)
    handles = []

    def hook(path: str) -> Any:
        def fn(_m: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            x = args[0].detach()
            rows = []
            for part in (x.split(1) if lengths is not None else [x]):
                part = real_tokens(part, lengths, seen[path])
                seen[path] += 1
                rows.append(part.reshape(-1, part.shape[-1]).float())
            flat = torch.cat(rows)
            m = flat.abs().amax(dim=0)
            out[path] = m if path not in out else torch.maximum(out[path], m)
            if path in kept:
                kept[path].append(flat)

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
    return out, kept


def _quantized_input(xs: list[torch.Tensor], aq: ActivationQuant) -> list[torch.Tensor]:
    """``xs`` (per calibration batch, rows of real tokens) through the quantizer ``aq`` puts on a Linear input:
    dynamic per token (a row's own range), dynamic per tensor (the batch's range), static (one range from all of them,
    clipped as ``aq.clipping`` says, from the statistics the calibration keeps; here of real tokens only, where the
    calibrated quantizer's range also sees the padding)."""
    if aq.mode == "dynamic":
        dynamic = DynamicFakeQuantize("smoothquant_auto", aq.bits, aq.scheme, per_token=aq.granularity == "per_token")
        return [dynamic(x) for x in xs]
    stats = TensorStats()
    for x in xs:
        stats.update(x, "smoothquant_auto")
    _, _, scale, zp = static_range(stats, aq)
    qmin, qmax = int_range(aq.bits, aq.scheme)
    scale_t, zp_t = torch.tensor(scale, dtype=torch.float32), torch.tensor(zp, dtype=torch.int32)  # as FakeQuantize holds them
    return [fake_quantize(x, scale_t, zp_t, qmin, qmax) for x in xs]


def _quantized_weight(w: torch.Tensor, wq: WeightQuant | None) -> torch.Tensor:
    """``w`` as the config quantizes this layer's weights (``wq`` None: kept in float), as ``make_plan`` does."""
    if wq is None:
        return w
    return fake_quantize_weight(w, weight_qparams_for(w, wq))


def smoothing_factors(x_max: torch.Tensor, w_max: torch.Tensor, alpha: float) -> torch.Tensor:
    """``s_j = max|x_j|^alpha / max|W_j|^(1 - alpha)`` per input channel (both ranges floored at :data:`EPS`)."""
    return (x_max.clamp(min=EPS).pow(alpha) / w_max.clamp(min=EPS).pow(1.0 - alpha)).clamp(min=EPS)


def choose_alpha(xs: list[torch.Tensor], weights: Sequence[torch.Tensor], x_max: torch.Tensor, w_max: torch.Tensor,
                 aq: ActivationQuant, wqs: Sequence[WeightQuant | None],
                 grid: Sequence[float] = ALPHA_GRID) -> tuple[float, dict[float, float]]:
    """The alpha of ``grid`` whose smoothed and quantized group output is closest to FP32 (the first of equals),
    and every alpha's error.

    ``xs``: the group's FP32 input per calibration batch (rows of real tokens); ``weights``: its Linears' weights
    (``wqs``: how the config quantizes each, None for float). The error is the mean squared difference of
    ``Q(x / s) Q(W s)^T`` and ``x W^T`` over every output of every Linear (the bias is the same on both sides).
    """
    x = torch.cat(xs)
    ws = [w.detach().float() for w in weights]
    refs = [x @ w.t() for w in ws]
    count = sum(r.numel() for r in refs)
    errors: dict[float, float] = {}
    for a in grid:
        s = smoothing_factors(x_max, w_max, a)
        xq = torch.cat(_quantized_input([c / s for c in xs], aq))
        total = sum(float((xq @ _quantized_weight(w * s, wq).t() - r).double().square().sum())
                    for w, wq, r in zip(ws, wqs, refs, strict=True))
        errors[a] = total / max(1, count)
    best = min(grid, key=lambda a: errors[a])
    return best, errors


def smooth(prepared: PreparedModel, quantized_inputs: Container[str], batches: Sequence[torch.Tensor], *,
           alpha: float | str, example: torch.Tensor, variant: str, lengths: Sequence[int] | None = None,
           config: QuantConfig | None = None) -> tuple[PreparedModel, dict[str, Any]]:
    """A new prepared model with SmoothQuant applied to every Linear reading a point in ``quantized_inputs``.

    ``batches``: the calibration samples (``lengths``: per sample its real tokens, for text); ``example``: one input
    to trace the result with. ``alpha``: a number from 0 to 1, or ``"auto"`` to choose one per group from
    :data:`ALPHA_GRID` (see the module docstring), which needs ``config`` (how it quantizes weights and activations).
    Returns it and a report: per group its Linears, its alpha, the largest over the median channel range of the input
    before and after (what the quantizer's grid has to span), and the same for the weights; with "auto" also each
    alpha's output error per group and the seconds the choice took.
    """
    auto = alpha == "auto"
    assert config is not None or not auto, 'alpha "auto" needs the config whose quantization it chooses for'
    groups = _groups(prepared, quantized_inputs)
    gm = copy.deepcopy(prepared.graph_module)
    paths = [p for g in groups for p in g.paths]
    amax, inputs = _read_inputs(gm, paths, batches, lengths, keep={g.paths[0] for g in groups} if auto else set())
    nodes = {n.name: n for n in gm.graph.nodes}
    rows = []
    started = time.perf_counter()
    for k, group in enumerate(groups):
        members = group.paths
        x_max = torch.stack([amax[p] for p in members]).amax(dim=0).clamp(min=EPS)
        weights: list[torch.Tensor] = [_linear(gm, p).weight for p in members]
        w_max = torch.stack([w.detach().abs().amax(dim=0) for w in weights]).amax(dim=0).clamp(min=EPS)
        row: dict[str, Any] = {"layers": members}
        if auto:
            assert config is not None
            aq = config.activation_quant_for(group.point)
            assert aq is not None  # the group's input is quantized: quantized_inputs holds it
            wqs = [config.weight_quant_for(u) for u in group.units]
            a, errors = choose_alpha(inputs.pop(members[0]), weights, x_max, w_max, aq, wqs)
            row.update(alpha=a, output_mse=errors[a], output_mse_by_alpha={f"{b:g}": e for b, e in errors.items()})
            log.info("SmoothQuant auto: %s alpha %g (output mse %.3g; at 0.5 %.3g)", ", ".join(members), a,
                     errors[a], errors.get(0.5, float("nan")))
        else:
            a = float(alpha)
            row["alpha"] = a
        s = smoothing_factors(x_max, w_max, a)
        with torch.no_grad():
            for w in weights:
                w.mul_(s)
        name = f"smoothquant_{k}"
        gm.add_submodule(name, Smooth((1.0 / s).to(weights[0].dtype)))
        src = nodes[group.node]
        users = [n for n in src.users if n.op == "call_module" and str(n.target) in members]
        with gm.graph.inserting_before(users[0]):
            new = gm.graph.call_module(name, (src,))
        for user in users:
            user.replace_input_with(src, new)
        x_after = x_max / s
        w_after = torch.stack([w.detach().abs().amax(dim=0) for w in weights]).amax(dim=0)
        row.update({"input_range_spread_before": _spread(x_max), "input_range_spread_after": _spread(x_after),
                    "input_max_before": float(x_max.max()), "input_max_after": float(x_after.max()),
                    "weight_range_spread_before": _spread(w_max), "weight_range_spread_after": _spread(w_after)})
        rows.append(row)
    gm.graph.lint()
    gm.recompile()
    smoothed = prepare(gm, example, fold_bn=prepared.fold_batchnorm)
    report: dict[str, Any] = {"alpha": alpha, "groups": rows, "layers": len(paths)}
    if auto:
        report.update(alpha_grid=list(ALPHA_GRID), alphas=[r["alpha"] for r in rows],
                      alpha_seconds=time.perf_counter() - started)
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
