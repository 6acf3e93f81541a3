"""A Conv/Linear layer seen as a batched matrix product: weights ``[G, O, I]``, input columns ``[G, I, N]``.

Every layer-wise algorithm here (AdaRound, GPTQ, bias correction) works on ``y = W x`` per group:
a Linear is one group (``G = 1``, ``I = in_features``); a convolution with ``groups = g`` is ``g``
products of its weight block ``[out/g, in/g * kh * kw]`` with the im2col columns of its input
channels (``F.unfold`` orders a column as channel, kernel row, kernel column, the same order as
``weight.reshape(out, -1)``); a depthwise conv is ``G = channels`` products of ``[1, kh * kw]``.
Shapes, for a 3x3 depthwise conv on 32 channels of 56x56 (stride 1, padding 1) and a batch of 8::

    weight [32, 1, 3, 3]   -> matrix(weight)  [32, 1, 9]
    input  [8, 32, 56, 56] -> columns(input)  [32, 9, 8 * 3136]
    output [8, 32, 56, 56] -> rows(output)    [32, 1, 8 * 3136]

Not here: what the algorithms do with them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError


@dataclass(frozen=True)
class LayerGeometry:
    """How to turn one layer's weight, input and output into the batched-matrix view."""

    name: str
    kind: str  # linear | conv1d | conv2d
    groups: int
    out_channels: int
    kernel: tuple[int, int] = (1, 1)
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)

    @classmethod
    def of(cls, name: str, module: nn.Module) -> LayerGeometry:
        if isinstance(module, nn.Linear):
            return cls(name, "linear", 1, module.out_features)
        if isinstance(module, (nn.Conv1d, nn.Conv2d)):
            if module.padding_mode != "zeros" or isinstance(module.padding, str) and module.padding not in ("valid",):
                raise ConfigError(
                    f"algorithms: layer {name} pads with {module.padding!r}/{module.padding_mode!r}; allowed for AdaRound, "
                    "GPTQ and bias correction: numeric zero padding (keep this layer in float or use rounding nearest)"
                )
            two = isinstance(module, nn.Conv2d)

            def pair(v: object) -> tuple[int, int]:
                if v == "valid":
                    return (0, 0)
                t = tuple(v) if isinstance(v, (tuple, list)) else (v,)
                return (int(t[0]), int(t[1])) if two else (1, int(t[0]))

            pad = (0, 0) if module.padding == "valid" else pair(module.padding)
            if not two:
                pad = (0, pad[1])
            return cls(name, "conv2d" if two else "conv1d", module.groups, module.out_channels,
                       pair(module.kernel_size) if two else (1, int(module.kernel_size[0])),
                       pair(module.stride) if two else (1, int(module.stride[0])), pad,
                       pair(module.dilation) if two else (1, int(module.dilation[0])))
        raise ConfigError(f"algorithms: layer {name} is a {type(module).__name__}; allowed: Conv1d, Conv2d, Linear")

    def matrix(self, w: torch.Tensor) -> torch.Tensor:
        """Weight ``[out, ...]`` as ``[G, out/G, K/...]`` (a view when possible)."""
        return w.reshape(self.groups, self.out_channels // self.groups, -1)

    def columns(self, x: torch.Tensor) -> torch.Tensor:
        """The layer's input as im2col columns ``[G, I, N]`` (N = batch x output positions)."""
        if self.kind == "linear":
            return x.reshape(-1, x.shape[-1]).t().unsqueeze(0)
        if self.kind == "conv1d":
            x = x.unsqueeze(2)
        cols = F.unfold(x, self.kernel, dilation=self.dilation, padding=self.padding, stride=self.stride)  # [B, C*k, L]
        b, ck, L = cols.shape
        return cols.reshape(b, self.groups, ck // self.groups, L).permute(1, 2, 0, 3).reshape(self.groups, ck // self.groups, b * L)

    def rows(self, y: torch.Tensor) -> torch.Tensor:
        """The layer's output as ``[G, out/G, N]``, positions in the same order as :meth:`columns`."""
        if self.kind == "linear":
            return y.reshape(-1, y.shape[-1]).t().reshape(self.groups, -1, y.reshape(-1, y.shape[-1]).shape[0])
        b, c = y.shape[:2]
        return y.reshape(b, self.groups, c // self.groups, -1).permute(1, 2, 0, 3).reshape(self.groups, c // self.groups, -1)


def activation_fn(kind: str | None) -> Callable[[torch.Tensor], torch.Tensor]:
    """The fused activation of a unit as a function (identity when there is none)."""
    if kind == "relu":
        return torch.relu
    if kind == "relu6":
        return lambda t: torch.clamp(t, 0.0, 6.0)
    return lambda t: t
