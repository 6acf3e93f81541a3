"""Per-channel activation outliers: max |x| of each hidden channel at the inputs of Linear layers.

What makes a transformer's activations hard to quantize per tensor is a few hidden channels whose
values are 10-100x the others', the same channels on every token (Dettmers et al. 2022; Bondarenko
et al. 2021). :func:`channel_absmax` reads them from one FP32 pass of a prepared model over
calibration samples (real tokens only for text); the Activations page draws them, before and after
SmoothQuant (:mod:`ptq_core.algorithms.smoothquant`), whose smoothed model has its own points.

Not here: the per-tensor statistics and ranges the quantizers use (:mod:`ptq_core.calibration`,
:mod:`ptq_core.ranges`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
import torch.fx
from torch.utils.data import Dataset

from .calibration import batches as batches_of
from .graph import PreparedModel, is_tokens, with_taps


@dataclass(frozen=True)
class ChannelRanges:
    """max |x| per channel (last dim) of each point that feeds a Linear, over the samples read."""

    absmax: dict[str, list[float]]  # point -> one value per channel
    consumers: dict[str, list[str]]  # point -> the Linear layers reading it
    num_samples: int

    def summary(self, point: str) -> dict[str, float]:
        """Largest channel, median channel and their ratio: how far one channel stretches a per-tensor grid."""
        values = torch.tensor(self.absmax[point])
        med = float(values.median())
        top = float(values.max())
        return {"max": top, "median": med, "ratio": top / med if med > 0 else float("inf"),
                "channel": int(values.argmax())}


def linear_inputs(prepared: PreparedModel) -> dict[str, list[str]]:
    """Points read by Linear layers -> those layers, in network order."""
    out: dict[str, list[str]] = {}
    for unit in prepared.units:
        if unit.kind == "linear" and unit.inputs:
            out.setdefault(unit.inputs[0], []).append(unit.name)
    return out


def _read_by_linear(prepared: PreparedModel, point: str, layers: list[str]) -> str:
    """The node a Linear reads for ``point``: the point itself, or what pass-through ops made of it (the attention's
    context [N, H, L, D] reaches the output projection as [N, L, H*D]: its channels are the Linear's, not the head's)."""
    if not layers:
        return prepared.point(point).node
    node = next(n for n in prepared.graph_module.graph.nodes if n.name == prepared.unit(layers[0]).node)
    arg = node.args[0]
    return arg.name if isinstance(arg, torch.fx.Node) else prepared.point(point).node


def channel_absmax(prepared: PreparedModel, dataset: Dataset, indices: Sequence[int], *, batch_size: int = 32,
                   points: Sequence[str] | None = None) -> ChannelRanges:
    """max |x| per channel at every Linear input (or at ``points``), from ``dataset[indices]`` in the FP32 model."""
    consumers = linear_inputs(prepared)
    names = list(points) if points is not None else list(consumers)
    taps = with_taps(prepared.graph_module, {name: _read_by_linear(prepared, name, consumers.get(name, [])) for name in names})
    absmax: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for x, _ in batches_of(dataset, indices, batch_size):
            _, tensors = taps(x)
            keep = x[:, 1].bool() if is_tokens(x) else None  # text: real tokens only
            for name, t in tensors.items():
                if keep is not None and t.dim() == 3 and t.shape[:2] == keep.shape:
                    t = t[keep]
                m = t.detach().abs().reshape(-1, t.shape[-1]).amax(dim=0).float()
                absmax[name] = m if name not in absmax else torch.maximum(absmax[name], m)
    return ChannelRanges({k: v.tolist() for k, v in absmax.items()}, {k: consumers.get(k, []) for k in names}, len(indices))
