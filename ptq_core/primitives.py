"""Pure quantization arithmetic: integer ranges, (scale, zero_point) from a range, and
quantize / dequantize / fake_quantize, plus the helpers that lay a weight out per tensor,
per channel or per group.

What lives here is stateless tensor math with no knowledge of models, statistics or
clipping methods: choosing a range is :mod:`ptq_core.ranges`, collecting statistics is
:mod:`ptq_core.observers`.

Conventions (the same as ``torch.ao`` and the integer runtimes)::

    q     = clamp(round_half_even(x * (1 / scale)) + zero_point, qmin, qmax)   # int32
    x_hat = (q - zero_point) * scale                                          # float32

Worked example, 8-bit asymmetric, range [-1.0, 2.0] (qmin, qmax = 0, 255)::

    scale      = (2.0 - (-1.0)) / 255          = 0.011764706
    zero_point = 0 - round(-1.0 / scale)       = 85
    x          = [-1.0, 0.0, 0.3, 2.0]
    q          = [0, 85, 111, 255]          (0.3 * float32(1 / scale) = 25.500002 -> 26, + 85)
    x_hat      = [-1.0, 0.0, 0.30588236, 2.0]

0.3 sits on a rounding boundary (25.5 steps above zero): which side it lands on depends on
float32 details, so ``fake_quantize`` copies torch's arithmetic exactly (multiply by a float32
reciprocal, round half to even) and is bit-identical to ``torch.fake_quantize_per_tensor_affine``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from .config import MAX_BITS, MIN_BITS, SCHEMES, WEIGHT_GRANULARITIES
from .errors import ConfigError

# The smallest scale ever produced: the floor torch.ao observers use. An all-zero channel then
# gets scale = eps instead of 0, so 1/scale stays finite and every zero maps to q = zero_point.
MIN_SCALE: float = float(torch.finfo(torch.float32).eps)


def int_range(bits: int, scheme: str) -> tuple[int, int]:
    """The integer range ``(qmin, qmax)`` of ``bits``-bit values under ``scheme``.

    symmetric  -> (-(2**(bits-1) - 1), 2**(bits-1) - 1): INT8 [-127, 127], INT4 [-7, 7].
        The "narrow" signed range: with zero_point = 0 both +max and -max are representable,
        so the grid is symmetric around an exact zero, as TensorRT and onnxruntime use for
        symmetric weights. It gives up one of the 2**bits codes (-128 for INT8).
    asymmetric -> (0, 2**bits - 1): unsigned, UINT8 [0, 255]; zero_point places 0 exactly.

    >>> int_range(8, "symmetric"), int_range(4, "asymmetric")
    ((-127, 127), (0, 15))
    """
    if isinstance(bits, bool) or not isinstance(bits, int) or not MIN_BITS <= bits <= MAX_BITS:
        raise ConfigError(f"bits: got {bits!r}; allowed: an integer from {MIN_BITS} to {MAX_BITS}")
    if scheme == "symmetric":
        return -(2 ** (bits - 1) - 1), 2 ** (bits - 1) - 1
    if scheme == "asymmetric":
        return 0, 2**bits - 1
    raise ConfigError(f"scheme: got {scheme!r}; allowed: {', '.join(SCHEMES)}")


def qparams_from_range(lo: Tensor, hi: Tensor, bits: int, scheme: str) -> tuple[Tensor, Tensor]:
    """float32 ``scale`` and int32 ``zero_point`` mapping ``[lo, hi]`` onto ``int_range(bits, scheme)``.

    ``lo`` and ``hi`` have any common shape: ``[]`` per tensor, ``[out]`` per channel,
    ``[out, G]`` per group; the outputs have that shape. The range is first widened to
    contain 0 (``lo = min(lo, 0)``, ``hi = max(hi, 0)``) so zero is exactly representable
    (zero padding, ReLU zeros). Then, as ``torch.ao`` observers compute it::

        symmetric:  zero_point = 0,  scale = max(|lo|, |hi|) / qmax
        asymmetric: scale = (hi - lo) / (qmax - qmin),
                    zero_point = clamp(qmin - round(lo / scale), qmin, qmax)
        scale = max(scale, MIN_SCALE)

    Example: ``lo=-1, hi=2`` at 8 bits: symmetric gives (2/127 = 0.015748, 0), asymmetric
    (3/255 = 0.011765, 85).
    """
    qmin, qmax = int_range(bits, scheme)
    lo_t = torch.as_tensor(lo, dtype=torch.float32)
    hi_t = torch.as_tensor(hi, dtype=torch.float32)
    zero = torch.zeros((), dtype=torch.float32, device=lo_t.device)
    lo_t, hi_t = torch.minimum(lo_t, zero), torch.maximum(hi_t, zero)
    if scheme == "symmetric":
        scale = torch.maximum(-lo_t, hi_t) / qmax
        scale = torch.clamp(scale, min=MIN_SCALE)
        zero_point = torch.zeros_like(scale, dtype=torch.int32)
    else:
        scale = (hi_t - lo_t) / float(qmax - qmin)
        scale = torch.clamp(scale, min=MIN_SCALE)
        zero_point = torch.clamp(qmin - torch.round(lo_t / scale), qmin, qmax).to(torch.int32)
    return scale, zero_point


def _as_float(t: Tensor | float | int, device: torch.device) -> Tensor:
    return torch.as_tensor(t, device=device).to(torch.float32)


def quantize(x: Tensor, scale: Tensor, zero_point: Tensor, qmin: int, qmax: int) -> Tensor:
    """Integer codes (int32, the broadcast shape of ``x`` and the qparams) of ``x``.

    ``scale``/``zero_point`` are scalars or shaped to broadcast against ``x`` (e.g.
    ``[out, 1, 1, 1]`` for per-channel conv weights). The arithmetic is that of
    :func:`fake_quantize`, so ``dequantize(quantize(x)) == fake_quantize(x)`` bit for bit.
    """
    xf = x.to(torch.float32)
    inv_scale = 1.0 / _as_float(scale, xf.device)
    q = torch.round(xf * inv_scale)
    q.add_(_as_float(zero_point, xf.device)).clamp_(qmin, qmax)
    return q.to(torch.int32)


def dequantize(q: Tensor, scale: Tensor, zero_point: Tensor) -> Tensor:
    """float32 ``(q - zero_point) * scale``; ``q`` int32 codes, qparams broadcast as in :func:`quantize`."""
    out = q.to(torch.float32) - _as_float(zero_point, q.device)
    return out.mul_(_as_float(scale, q.device))


def fake_quantize(x: Tensor, scale: Tensor, zero_point: Tensor, qmin: int, qmax: int) -> Tensor:
    """``dequantize(quantize(x))`` in float32, in place on one temporary (fast: 6 elementwise ops).

    Bit-identical to ``torch.fake_quantize_per_tensor_affine(x, float(scale), int(zp), qmin, qmax)``
    for scalar qparams and to ``torch.fake_quantize_per_channel_affine(x, scale, zp, axis, ...)``
    with qparams shaped to broadcast along ``axis``: torch's CPU kernel computes
    ``inv_scale = 1.0f / scale`` in float32, ``nearbyint(x * inv_scale)`` (round half to even),
    adds zero_point in float, clamps to ``[qmin, qmax]`` and returns ``(q - zero_point) * scale``;
    the last product is exact before its single rounding to float32, as here. Only NaN inputs
    differ (torch's int64 cast of NaN is undefined; here NaN propagates).

    Shapes: ``x`` any shape; ``scale``/``zero_point`` ``[]`` or broadcastable to ``x``; the
    result has the broadcast shape (``x.shape`` when the qparams broadcast to it) and ``x``'s
    dtype; the arithmetic is always float32, as in torch's kernel for float inputs.
    Example: ``fake_quantize(tensor([0.3]), tensor(3/255), tensor(85), 0, 255) -> [0.30588236]``.
    """
    scale_f = _as_float(scale, x.device)
    xf = x if x.dtype == torch.float32 else x.to(torch.float32)
    out = xf * (1.0 / scale_f)
    zp = _as_float(zero_point, x.device)
    out.round_().add_(zp).clamp_(qmin, qmax).sub_(zp).mul_(scale_f)
    return out if x.dtype == torch.float32 else out.to(x.dtype)


# -- weight granularity --------------------------------------------------------------------
# A weight w of shape [out, ...] (Linear [out, in], Conv [out, in/groups, *k]) is seen as
# rows = w.reshape(out, K). per_tensor: one range; per_channel: one per row (output channel,
# axis 0); per_group: one per run of `group_size` consecutive elements of a row.


def weight_rows(w: Tensor) -> Tensor:
    """``w`` as ``[out, K]`` (``K`` = product of the remaining dims; a 1-D weight gives K = 1)."""
    return w.reshape(w.shape[0], -1)


def num_groups(K: int, group_size: int) -> int:
    """Groups per row: ``ceil(K / group_size)``; e.g. K = 100, group_size = 32 -> 4 (32, 32, 32, 4)."""
    return -(-K // group_size)


def check_granularity(granularity: str, group_size: int | None) -> None:
    """Raise ConfigError unless ``granularity`` is known and per_group has a positive group_size."""
    if granularity not in WEIGHT_GRANULARITIES:
        raise ConfigError(f"granularity: got {granularity!r}; allowed: {', '.join(WEIGHT_GRANULARITIES)}")
    if granularity == "per_group" and (
        isinstance(group_size, bool) or not isinstance(group_size, int) or group_size < 1
    ):
        raise ConfigError(
            f"group_size: got {group_size!r} with per_group; allowed: a positive integer, e.g. 32, 64, 128"
        )


def group_view(rows: Tensor, group_size: int, fill: float = 0.0) -> Tensor:
    """``rows [out, K]`` as ``[out, G, group_size]``, the ragged tail padded with ``fill``.

    Padding rule: when ``group_size`` does not divide ``K`` the LAST group of each row is
    shorter; this is the same as zero-padding K up to ``G * group_size``, as block-wise
    runtimes (onnxruntime MatMulNBits) pad their last block. Zero padding never changes a
    group's quantization: ranges are widened to contain 0 anyway and 0 quantizes exactly, so
    it adds nothing to min/max or to a squared error. Statistics that count elements
    (percentiles) pad with NaN and ignore it. Example: K = 5, group_size = 2 ->
    ``[[a, b], [c, d], [e, 0]]``.
    """
    out, K = rows.shape
    G = num_groups(K, group_size)
    pad = G * group_size - K
    if pad:
        rows = torch.cat([rows, rows.new_full((out, pad), fill)], dim=1)
    return rows.reshape(out, G, group_size)


def expand_groups(p: Tensor, K: int, group_size: int) -> Tensor:
    """Per-group values ``p [out, G]`` repeated over their elements: ``[out, K]``.

    Example: ``p = [[1., 2.]], K = 3, group_size = 2 -> [[1., 1., 2.]]`` (the ragged last group
    has one element).
    """
    out, G = p.shape
    return p.unsqueeze(-1).expand(out, G, group_size).reshape(out, G * group_size)[:, :K]


def broadcast_to_weight(
    p: Tensor, shape: torch.Size | tuple[int, ...], granularity: str, group_size: int | None
) -> Tensor:
    """Per-tensor ``[]``, per-channel ``[out]`` or per-group ``[out, G]`` values made to broadcast
    against a weight of ``shape``: ``[]``, ``[out, 1, ..., 1]`` or ``[*shape]`` respectively.
    """
    if granularity == "per_tensor":
        return p.reshape(())
    out = shape[0]
    if granularity == "per_channel":
        return p.reshape(out, *([1] * (len(shape) - 1)))
    assert group_size is not None
    K = 1
    for d in shape[1:]:
        K *= d
    return expand_groups(p.reshape(out, -1), K, group_size).reshape(shape)


def weight_minmax(w: Tensor, granularity: str, group_size: int | None = None) -> tuple[Tensor, Tensor]:
    """Exact (min, max) of ``w`` at ``granularity``: shapes ``[]``, ``[out]`` or ``[out, G]``.

    The ragged last group is zero-padded (see :func:`group_view`), which is harmless because
    the range is widened to contain 0 before qparams are taken.
    """
    check_granularity(granularity, group_size)
    wf = w.detach().to(torch.float32)
    if granularity == "per_tensor":
        lo, hi = torch.aminmax(wf)
        return lo, hi
    rows = weight_rows(wf)
    if granularity == "per_channel":
        lo, hi = torch.aminmax(rows, dim=1)
        return lo, hi
    assert group_size is not None
    lo, hi = torch.aminmax(group_view(rows, group_size), dim=-1)
    return lo, hi
