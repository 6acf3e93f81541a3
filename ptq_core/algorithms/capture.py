"""What the layer-wise algorithms read: each layer's input in the quantized model and its output in FP32.

The layers are visited in network order and each one is read *after* every layer before it has
been repaired, so a layer compensates the error that reaches it, not only its own: AdaRound's
"asymmetric" reconstruction, GPTQ's sequential mode, empirical bias correction. Two passes over
the calibration images do it all:

1. :func:`read_fp32`: one forward of the FP32 model (in batches) records, per layer, the mean output
   per channel and, where asked, the outputs at sampled positions (chosen here, seeded).
2. :func:`walk_quantized`: ONE forward of the quantized model over all calibration images at once,
   node by node (``torch.fx.Interpreter``, values freed after their last use): when it reaches a
   layer it hands the layer's input to a callback (the algorithm), which may change the layer's
   weight and bias before the forward continues through it. Every layer after it then sees the
   repaired layer. Reading a layer by re-running the model up to it instead costs half a forward
   per layer: 3.5 minutes of the 4 that bias correction took on EfficientNet-Lite0 (50 layers).

Memory: the quantized forward holds the live activations of all calibration images at once (on
EfficientNet-Lite0 with 128 images at most about 1.5 GB: a 96 x 112 x 112 tensor is 0.6 GB).

Per layer (:class:`LayerData`, shapes in the view of :mod:`.geometry`):

* ``x_mean [G, I]``, ``y_mean [G, O]``: the mean input column (quantized model) and the mean FP32
  output over every position of every calibration image: bias correction.
* ``hessian [G, I, I]``: ``mean(x x^T)`` over every position: GPTQ (:func:`read_fp32_hessians`: the same of
  the FP32 model's input, one forward for every layer, for GPTQ with ``inputs: "float"``).
* ``x [G, I, N]`` and ``y [G, O, N]``: N sampled positions (the same in both models), the quantized
  model's input columns and the FP32 pre-activation outputs there: AdaRound, bias correction
  through an activation.

Not here: the algorithms; the statistics of :mod:`ptq_core.calibration` (histograms of whole tensors).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.fx
from torch import nn

from ..graph import is_tokens
from .geometry import LayerGeometry

# Sampled positions per layer: at most SAMPLE_COLUMNS, and at most SAMPLE_ELEMENTS values in the input
# columns [G, I, N] (a depthwise conv on 672 channels has G * I = 6,048: 5,300 columns, 128 MB).
SAMPLE_COLUMNS = 16384
SAMPLE_ELEMENTS = 32 * 2**20


@dataclass
class LayerData:
    x_mean: torch.Tensor
    y_mean: torch.Tensor | None
    hessian: torch.Tensor | None
    x: torch.Tensor | None
    y: torch.Tensor | None


@dataclass
class _FP32Layer:
    y_sum: torch.Tensor | None = None
    n: int = 0
    picks: list[torch.Tensor] | None = None  # per image: its sampled positions
    ys: list[torch.Tensor] | None = None


def _sample_count(geo: LayerGeometry, in_per_group: int, images: int, positions_per_image: int) -> int:
    limit = min(SAMPLE_COLUMNS, SAMPLE_ELEMENTS // max(1, geo.groups * in_per_group))
    return max(1, min(positions_per_image, math.ceil(limit / max(1, images))))


def token_lengths(batches: Sequence[torch.Tensor]) -> list[int] | None:
    """Per sample, its number of real tokens, when the batches are a text model's tokens; None otherwise."""
    if not batches or not is_tokens(batches[0]):
        return None
    return [int(n) for b in batches for n in b[:, 1].sum(dim=1)]


def real_tokens(t: torch.Tensor, lengths: Sequence[int] | None, i: int) -> torch.Tensor:
    """Sample ``i``'s activation ``[1, L, K]`` cut to its ``lengths[i]`` real tokens (text pads at the end)."""
    if lengths is None or t.dim() != 3:
        return t
    return t[:, : lengths[i]]


def _real(t: torch.Tensor, geo: LayerGeometry, lengths: Sequence[int] | None, i: int) -> torch.Tensor:
    """:func:`real_tokens` at a Linear (a convolution's input has no tokens)."""
    return real_tokens(t, lengths, i) if geo.kind == "linear" else t


def read_fp32(
    fp_gm: nn.Module, layers: dict[str, tuple[LayerGeometry, int]], batches: Sequence[torch.Tensor], *,
    sample: set[str], seed: int, lengths: Sequence[int] | None = None,
) -> dict[str, _FP32Layer]:
    """One FP32 forward: per layer (module path -> (geometry, inputs per group)) the output sums and, for the layers
    in ``sample``, the outputs at sampled positions (drawn here, seeded per layer). ``lengths``: per sample, its
    number of real tokens (a text model); positions past it are padding, left out of every statistic."""
    images = sum(int(b.shape[0]) for b in batches)
    out = {path: _FP32Layer(picks=[] if path in sample else None, ys=[] if path in sample else None) for path in layers}
    gens = {path: torch.Generator().manual_seed(seed * 1_000_003 + k) for k, path in enumerate(layers)}
    seen = dict.fromkeys(layers, 0)  # samples each layer has seen so far (they arrive batch by batch)
    handles = []

    def hook(path: str) -> Callable[..., None]:
        geo, in_per_group = layers[path]
        rec = out[path]

        def fn(_m: nn.Module, _args: Any, y: torch.Tensor) -> None:
            for img in y.split(1):
                img = _real(img, geo, lengths, seen[path])
                seen[path] += 1
                rows = geo.rows(img.float())  # [G, O, L]
                rec.y_sum = rows.sum(-1) if rec.y_sum is None else rec.y_sum + rows.sum(-1)
                rec.n += rows.shape[-1]
                if rec.picks is not None and rec.ys is not None:
                    L = rows.shape[-1]
                    idx = torch.randperm(L, generator=gens[path])[:_sample_count(geo, in_per_group, images, L)]
                    rec.picks.append(idx)
                    rec.ys.append(rows[:, :, idx].clone())

        return fn

    for path in layers:
        handles.append(fp_gm.get_submodule(path).register_forward_hook(hook(path)))
    try:
        with torch.no_grad():
            for x in batches:
                fp_gm(x)
    finally:
        for h in handles:
            h.remove()
    return out


def layer_data(x: torch.Tensor, geo: LayerGeometry, fp: _FP32Layer | None, *, hessian: bool,
               lengths: Sequence[int] | None = None) -> LayerData:
    """What the algorithms need of one layer, from its input ``x`` in the quantized model (all calibration images);
    ``lengths`` as :func:`read_fp32` takes them."""
    x_sum: torch.Tensor | None = None
    h_sum: torch.Tensor | None = None
    xs: list[torch.Tensor] = []
    n = 0
    for i, img in enumerate(x.split(1)):  # one image at a time: a 3x3 depthwise conv's columns are 9x its input
        cols = geo.columns(_real(img, geo, lengths, i).float())  # [G, I, L]
        x_sum = cols.sum(-1) if x_sum is None else x_sum + cols.sum(-1)
        if hessian:
            h = torch.bmm(cols, cols.transpose(1, 2))
            h_sum = h if h_sum is None else h_sum + h
        n += cols.shape[-1]
        if fp is not None and fp.picks is not None:
            xs.append(cols[:, :, fp.picks[i]].clone())
    assert x_sum is not None
    n = max(1, n)
    return LayerData(
        x_mean=x_sum / n,
        y_mean=fp.y_sum / max(1, fp.n) if fp is not None and fp.y_sum is not None else None,
        hessian=h_sum / n if h_sum is not None else None,
        x=torch.cat(xs, dim=-1) if xs else None,
        y=torch.cat(fp.ys, dim=-1) if fp is not None and fp.ys else None,
    )


def read_fp32_hessians(fp_gm: nn.Module, layers: dict[str, LayerGeometry], batches: Sequence[torch.Tensor], *,
                       lengths: Sequence[int] | None = None) -> dict[str, torch.Tensor]:
    """One FP32 forward: per layer (module path -> geometry) ``mean(x x^T)`` of its input columns ``[G, I, I]``, as
    :func:`layer_data` computes it from the quantized model's input: GPTQ with ``inputs: "float"``."""
    sums: dict[str, torch.Tensor] = {}
    columns = dict.fromkeys(layers, 0)
    seen = dict.fromkeys(layers, 0)

    def hook(path: str) -> Callable[..., None]:
        geo = layers[path]

        def fn(_m: nn.Module, args: Any) -> None:
            for img in args[0].split(1):  # one image at a time, as layer_data: the same sums in the same order
                cols = geo.columns(_real(img, geo, lengths, seen[path]).float())  # [G, I, L]
                seen[path] += 1
                h = torch.bmm(cols, cols.transpose(1, 2))
                sums[path] = h if path not in sums else sums[path] + h
                columns[path] += cols.shape[-1]

        return fn

    handles = [fp_gm.get_submodule(path).register_forward_pre_hook(hook(path)) for path in layers]
    try:
        with torch.no_grad():
            for x in batches:
                fp_gm(x)
    finally:
        for h in handles:
            h.remove()
    return {path: h / max(1, columns[path]) for path, h in sums.items()}


class _Walker(torch.fx.Interpreter):
    """Runs a GraphModule node by node; before a watched module runs, its callback gets the module's input."""

    def __init__(self, gm: torch.fx.GraphModule, callbacks: dict[str, Callable[[torch.Tensor], None]]) -> None:
        super().__init__(gm)
        self.callbacks = dict(callbacks)

    def call_module(self, target: Any, args: Any, kwargs: Any) -> Any:
        callback = self.callbacks.pop(str(target), None)  # once per layer, even if a module were called twice
        if callback is not None:
            callback(args[0])
        return super().call_module(target, args, kwargs)


def walk_quantized(q_gm: torch.fx.GraphModule, images: torch.Tensor,
                   callbacks: dict[str, Callable[[torch.Tensor], None]]) -> None:
    """One forward of ``q_gm`` on ``images``; ``callbacks[module path](input)`` runs before that module does."""
    with torch.no_grad():
        _Walker(q_gm, callbacks).run(images)
