"""Ranges ("clipping") and their expected errors: activations from stored statistics, weights
from the weight tensor itself.

Activations: :func:`activation_range` turns one :class:`~ptq_core.observers.TensorStats`
into ``(lo, hi)`` by min-max, percentile, MSE search or KL (TensorRT entropy calibration);
:func:`range_error` and :func:`clipping_curve` give the quantization error such a range is
expected to cause on the calibration distribution, from the histogram alone (no model run).
Weights: :func:`weight_qparams` gives per-tensor / per-channel / per-group qparams by
min-max, percentile or MSE search; :func:`fake_quantize_weight`, :func:`quantize_weight` and
:func:`weight_error` apply and measure them. Collecting statistics is
:mod:`ptq_core.observers`; the arithmetic itself is :mod:`ptq_core.primitives`.

How the histogram error model works: inside each histogram bin the data are taken as uniform
on the bin clipped to ``[min, max]`` (a bin of zero width is a point mass). A quantizer with
step ``s`` and representable extremes ``c_lo = (qmin - zp) * s``, ``c_hi = (qmax - zp) * s``
rounds values in ``[c_lo - s/2, c_hi + s/2]`` to the nearest level (rounding error, at most
``s/2``) and maps values beyond to ``c_lo`` / ``c_hi`` (clipping error, more than ``s/2``).
Both are integrated exactly over each bin (the squared sawtooth and the squared ramp have
closed-form integrals), so the expected error is accurate even when bins are as wide as steps.
``clip_fraction`` counts exactly the values whose integer code had to be clamped, the same
definition :func:`weight_error` uses (torch's fake-quantize mask).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from .config import ACTIVATION_CLIPPING, WEIGHT_CLIPPING
from .errors import CalibrationError, ConfigError, ModelError
from .metrics import sqnr_db
from .observers import NUM_BINS, TensorStats
from .primitives import (
    broadcast_to_weight,
    check_granularity,
    fake_quantize,
    group_view,
    int_range,
    num_groups,
    qparams_from_range,
    quantize,
    weight_minmax,
    weight_rows,
)

MSE_CANDIDATES = 128  # activation MSE search: alpha = 1/128, 2/128, ..., 1 of the min-max range
MSE_SEARCH_BINS = 1024  # the search runs on the histogram merged to <= 1024 bins (>= 4 per INT8 step)
KL_BINS = 2048  # bins of |x| over [0, R) for KL, as TensorRT's 2048-bin histogram
KL_START_BIN = 128  # smallest candidate threshold, in KL_BINS bins (1/16 of the range), as TensorRT starts
KL_MAX_CANDIDATES = 256  # thresholds tried at most; the stride grows to keep KL under ~20 ms
KL_EPS = 1e-4  # smoothing of empty bins, as in the MXNet/TVM port of TensorRT's algorithm
# Weight MSE search: alpha = 1.00, 0.99, ..., 0.20 of each channel's/group's min-max range (the
# grid GPTQ uses); descending, so on a tie the larger range (less clipping) wins.
WEIGHT_MSE_ALPHAS = torch.arange(100, 19, -1, dtype=torch.float32) / 100
_WEIGHT_MSE_CHUNK = 1 << 22  # elements of one alpha chunk of fake-quantized weights (16 MiB)


# -- activations: histogram as bins -------------------------------------------------------------
@dataclass(frozen=True)
class _Bins:
    """Non-empty span of a histogram: bin i holds ``c[i]`` values uniform on ``[a[i], b[i]]`` (float64)."""

    a: Tensor
    b: Tensor
    c: Tensor


def _require_data(stats: TensorStats) -> None:
    if stats.count == 0 or stats.range_exp is None:
        raise CalibrationError(f"{stats.name or 'activation'}: no calibration data was collected for this tensor")


def _bins(stats: TensorStats, max_bins: int | None = None) -> _Bins:
    """The histogram's non-empty span, merged in runs so that at most ``max_bins`` remain."""
    nz = torch.nonzero(stats.hist).flatten()
    first, last = int(nz[0]), int(nz[-1])
    span = last - first + 1
    factor = 1 if max_bins is None else -(-span // max_bins)
    groups = -(-span // factor)
    counts = torch.zeros(groups * factor, dtype=torch.float64)
    counts[:span] = stats.hist[first : last + 1].to(torch.float64)
    starts = (first - NUM_BINS + torch.arange(groups, dtype=torch.float64) * factor) * stats.bin_width
    a = starts.clamp(stats.min, stats.max)
    b = (starts + factor * stats.bin_width).clamp(stats.min, stats.max)
    return _Bins(a, b, counts.reshape(groups, factor).sum(dim=1))


def _abs_hist(stats: TensorStats) -> Tensor:
    """``[NUM_BINS]`` counts of |x|: bin k holds |x| in [k*w, (k+1)*w] (both signs folded)."""
    h = stats.hist.to(torch.float64)
    return h[NUM_BINS:] + h[:NUM_BINS].flip(0)


def _max_abs(stats: TensorStats) -> float:
    return max(-stats.min, stats.max)


def _grid(lo: Tensor, hi: Tensor, bits: int, scheme: str) -> tuple[Tensor, Tensor, Tensor]:
    """float64 step and representable extremes ``c_lo``, ``c_hi`` of the float32 qparams of ``[lo, hi]``."""
    qmin, qmax = int_range(bits, scheme)
    scale, zp = qparams_from_range(lo.to(torch.float32), hi.to(torch.float32), bits, scheme)
    s, z = scale.to(torch.float64), zp.to(torch.float64)
    return s, (qmin - z) * s, (qmax - z) * s


def _expected_errors(bins: _Bins, s: Tensor, c_lo: Tensor, c_hi: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Summed rounding error, clipping error and clipped count for C quantizers (inputs ``[C]``).

    Returns three float64 ``[C]`` tensors (sums over the data, not means); work is ``[C, B]``.
    """
    s, c_lo, c_hi = s[:, None], c_lo[:, None], c_hi[:, None]
    a, b, cnt = bins.a[None, :], bins.b[None, :], bins.c[None, :]
    lo_in, hi_in = c_lo - s / 2, c_hi + s / 2
    width = b - a
    point = width <= 0
    dens = torch.where(point, 0.0, cnt / torch.where(point, 1.0, width))

    def saw(x: Tensor) -> tuple[Tensor, Tensor]:  # x = n*s + r, r in [-s/2, s/2)
        n = torch.floor(x / s + 0.5)
        return n, x - n * s

    lo_r, hi_r = torch.maximum(a, lo_in), torch.minimum(b, hi_in)
    n_l, r_l = saw(lo_r)
    n_u, r_u = saw(hi_r)
    inside = (n_u - n_l) * s**3 / 12 + (r_u**3 - r_l**3) / 3  # integral of the squared sawtooth
    rounding = torch.where(hi_r > lo_r, inside, 0.0) * dens
    up = torch.maximum(a, hi_in)
    down = torch.minimum(b, lo_in)
    above = torch.where(b > up, ((b - c_hi) ** 3 - (up - c_hi) ** 3) / 3, 0.0)
    below = torch.where(down > a, ((down - c_lo) ** 3 - (a - c_lo) ** 3) / 3, 0.0)
    clipping = (above + below) * dens
    clipped = ((b - up).clamp_min(0) + (down - a).clamp_min(0)) * dens
    # point masses (zero-width bins): the error of the single value a, times its count
    m = torch.minimum(torch.maximum(torch.round(a / s), torch.round(c_lo / s)), torch.round(c_hi / s))
    err_pt = (a - m * s) ** 2 * cnt
    out_pt = point & ((a < lo_in) | (a > hi_in))
    rounding = torch.where(point & ~out_pt, err_pt, rounding)
    clipping = torch.where(out_pt, err_pt, clipping)
    clipped = torch.where(out_pt, cnt, torch.where(point, 0.0, clipped))
    return rounding.sum(1), clipping.sum(1), clipped.sum(1)


def _mean_square(bins: _Bins) -> float:
    """E[x^2] under the uniform-in-bin model."""
    width = bins.b - bins.a
    inner = (bins.b**3 - bins.a**3) / (3 * torch.where(width > 0, width, 1.0))
    per_value = torch.where(width > 0, inner, bins.a**2)
    return float((per_value * bins.c).sum() / bins.c.sum())


@dataclass(frozen=True)
class RangeError:
    """Expected quantization error of one range on the calibration distribution (NOT an exception).

    ``mse = rounding_mse + clipping_mse`` (mean over all values); ``clip_fraction`` the share of
    values whose code is clamped; ``sqnr_db = 10*log10(E[x^2] / mse)``, ``math.inf`` when mse is 0.
    """

    mse: float
    rounding_mse: float
    clipping_mse: float
    clip_fraction: float
    sqnr_db: float


def range_error(stats: TensorStats, lo: float, hi: float, *, bits: int, scheme: str) -> RangeError:
    """Expected error of quantizing the calibration data with the qparams of ``[lo, hi]``.

    Example: N(0, 1) data, 8-bit symmetric min-max (max about 4.8): step 4.8/127 = 0.038,
    rounding mse = step**2 / 12 = 1.2e-4, no clipping, sqnr_db about 39.
    """
    _require_data(stats)
    bins = _bins(stats)
    s, c_lo, c_hi = _grid(
        torch.tensor([lo], dtype=torch.float64), torch.tensor([hi], dtype=torch.float64), bits, scheme
    )
    rnd, clip, clipped = _expected_errors(bins, s, c_lo, c_hi)
    n = float(stats.count)
    mse = float(rnd[0] + clip[0]) / n
    return RangeError(
        mse=mse,
        rounding_mse=float(rnd[0]) / n,
        clipping_mse=float(clip[0]) / n,
        clip_fraction=min(float(clipped[0]) / n, 1.0),
        sqnr_db=sqnr_db(_mean_square(bins), mse),
    )


def _shrunk_ranges(stats: TensorStats, alphas: Tensor, scheme: str) -> tuple[Tensor, Tensor]:
    """Candidate ``(lo, hi)`` (float64 ``[C]``) at shrink factors ``alphas`` of the min-max range.

    symmetric: ``±alpha * max|x|``; asymmetric: ``(alpha * min, alpha * max)``, except that
    one-signed data keep their end nearest zero (``lo = min`` when min >= 0).
    """
    a = alphas.to(torch.float64)
    if scheme == "symmetric":
        t = a * _max_abs(stats)
        return -t, t
    lo = a * stats.min if stats.min < 0 else torch.full_like(a, stats.min)
    hi = a * stats.max if stats.max > 0 else torch.full_like(a, stats.max)
    return lo, hi


def clipping_curve(stats: TensorStats, *, bits: int, scheme: str, num: int = 100) -> dict[str, np.ndarray]:
    """The rounding/clipping tradeoff at shrink factors ``alpha = 1/num, 2/num, ..., 1``.

    Returns float64 arrays of length ``num``: ``alpha``, ``lo``, ``hi``, ``rounding_mse``,
    ``clipping_mse``, ``mse``, ``clip_fraction``. Shrinking the range lowers the step (rounding
    error ~ step**2 / 12) and raises the clipping error; ``mse`` has its minimum in between.
    """
    int_range(bits, scheme)
    if isinstance(num, bool) or not isinstance(num, int) or num < 1:
        raise ConfigError(f"num: got {num!r}; allowed: a positive integer, e.g. 100")
    _require_data(stats)
    alphas = torch.arange(1, num + 1, dtype=torch.float64) / num
    lo, hi = _shrunk_ranges(stats, alphas, scheme)
    rnd, clip, clipped = _expected_errors(_bins(stats, MSE_SEARCH_BINS), *_grid(lo, hi, bits, scheme))
    n = float(stats.count)
    return {
        "alpha": alphas.numpy(),
        "lo": lo.numpy(),
        "hi": hi.numpy(),
        "rounding_mse": (rnd / n).numpy(),
        "clipping_mse": (clip / n).numpy(),
        "mse": ((rnd + clip) / n).numpy(),
        "clip_fraction": (clipped / n).clamp(max=1.0).numpy(),
    }


# -- activations: the four range methods -------------------------------------------------------
def _quantile(bins: _Bins, rank: float) -> float:
    """The value below which ``rank`` of the values lie, interpolated linearly inside its bin."""
    cum = torch.cumsum(bins.c, 0)
    i = int(torch.searchsorted(cum, torch.tensor([rank], dtype=torch.float64))[0].clamp(max=cum.numel() - 1))
    frac = 0.0 if bins.c[i] == 0 else (rank - float(cum[i] - bins.c[i])) / float(bins.c[i])
    frac = min(max(frac, 0.0), 1.0)
    return float(bins.a[i] + frac * (bins.b[i] - bins.a[i]))


def _percentile_range(stats: TensorStats, scheme: str, percentile: float) -> tuple[float, float]:
    q = percentile / 100.0
    if scheme == "symmetric":
        h = _abs_hist(stats)
        last = int(torch.nonzero(h).flatten()[-1])
        w, top = stats.bin_width, _max_abs(stats)
        floor_abs = stats.min if stats.min >= 0 else (-stats.max if stats.max <= 0 else 0.0)
        edges = torch.arange(last + 2, dtype=torch.float64) * w
        bins = _Bins(edges[:-1].clamp(floor_abs, top), edges[1:].clamp(floor_abs, top), h[: last + 1])
        t = _quantile(bins, q * stats.count)
        return -t, t
    bins = _bins(stats)
    lo = stats.min if stats.min >= 0 else _quantile(bins, (1.0 - q) * stats.count)
    hi = stats.max if stats.max <= 0 else _quantile(bins, q * stats.count)
    return lo, hi


def _mse_range(stats: TensorStats, bits: int, scheme: str) -> tuple[float, float]:
    alphas = torch.arange(MSE_CANDIDATES, 0, -1, dtype=torch.float64) / MSE_CANDIDATES  # 1 first: ties keep it
    lo, hi = _shrunk_ranges(stats, alphas, scheme)
    rnd, clip, _ = _expected_errors(_bins(stats, MSE_SEARCH_BINS), *_grid(lo, hi, bits, scheme))
    best = int(torch.argmin(rnd + clip))
    return float(lo[best]), float(hi[best])


def _kl_threshold(h: Tensor, width: float, levels: int) -> float:
    """TensorRT entropy calibration on the |x| histogram ``h`` (float64, bins of ``width``).

    The zero bin is first given the count of its neighbour (see below). For each candidate i
    (bins kept, from max(``levels``, KL_START_BIN) to the last non-empty bin): P is
    ``h[:i]`` with every count beyond added to its last bin; Q is ``h[:i]`` merged into
    ``levels`` runs (bin j -> level floor(j * levels / i), pytorch-quantization's even split)
    and spread back evenly over the bins where P is non-zero. Both are smoothed as MXNet/TVM
    do (empty bins get KL_EPS, taken evenly from the others; a candidate whose smoothing fails
    scores inf), normalised, and scored with KL(P || Q). The threshold is the UPPER EDGE of the
    last kept bin, ``i * width`` (as TensorRT, pytorch-quantization and MXNet report it); among
    equal scores the largest threshold wins.
    """
    nz = torch.nonzero(h).flatten()
    L = int(nz[-1]) + 1
    start = max(levels, KL_START_BIN)
    if L <= start:
        return L * width
    h = h[:L].clone()
    # The zero bin of a post-ReLU tensor holds most of the data (often over half). Merging it
    # with its neighbours into one level then dominates KL(P||Q) and drags the threshold down
    # to a handful of bins; NVIDIA's pytorch-quantization neutralises it the same way.
    h[0] = h[1]
    stride = max(1, -(-(L - start) // KL_MAX_CANDIDATES))
    cands = torch.arange(start, L + 1, stride)
    if int(cands[-1]) != L:
        cands = torch.cat([cands, torch.tensor([L])])
    C = cands.numel()
    j = torch.arange(L)
    valid = j[None, :] < cands[:, None]  # [C, L]
    level = torch.minimum(j[None, :] * levels // cands[:, None], torch.tensor(levels - 1))
    hv = torch.where(valid, h[None, :], 0.0)
    outliers = h.sum() - torch.cumsum(h, 0)[cands - 1]
    p = hv.clone()
    p[torch.arange(C), cands - 1] += outliers
    p_nz = p > 0
    flat = (torch.arange(C)[:, None] * levels + level).masked_fill(~valid, C * levels).flatten()
    sums = torch.bincount(flat, weights=hv.flatten(), minlength=C * levels + 1)[:-1].view(C, levels)
    nnz = torch.bincount(flat, weights=p_nz.flatten().to(torch.float64), minlength=C * levels + 1)[:-1].view(C, levels)
    q = torch.where(p_nz, torch.gather(sums / nnz.clamp_min(1), 1, level), 0.0)

    def smooth(x: Tensor) -> tuple[Tensor, Tensor]:
        zeros, nonzeros = valid & (x == 0), valid & (x != 0)
        n_nz = nonzeros.sum(1, keepdim=True)
        eps1 = KL_EPS * zeros.sum(1, keepdim=True) / n_nz.clamp_min(1)
        out = x + KL_EPS * zeros - eps1 * nonzeros
        ok = (n_nz[:, 0] > 0) & ~(valid & (out <= 0)).any(1)
        return out / out.sum(1, keepdim=True), ok

    p_s, ok_p = smooth(p)
    q_s, ok_q = smooth(q)
    terms = torch.where(valid, p_s * torch.log(p_s.clamp_min(1e-300) / q_s.clamp_min(1e-300)), 0.0)
    kl = torch.where(ok_p & ok_q, terms.sum(1), math.inf)
    best = int(torch.nonzero(kl == kl.min()).flatten()[-1])
    return float(cands[best]) * width


def _kl_range(stats: TensorStats, bits: int, scheme: str) -> tuple[float, float]:
    qmin, qmax = int_range(bits, scheme)
    one_signed = stats.min >= 0 or stats.max <= 0
    levels = (
        qmax - qmin + 1
        if scheme == "asymmetric" and one_signed
        else qmax + 1
        if scheme == "symmetric"
        else 2 ** (bits - 1)
    )
    factor = NUM_BINS // KL_BINS
    h = _abs_hist(stats).reshape(KL_BINS, factor).sum(1)
    t = min(_kl_threshold(h, stats.bin_width * factor, levels), _max_abs(stats))
    if scheme == "symmetric":
        return -t, t
    return max(stats.min, -t), min(stats.max, t)


def activation_range(
    stats: TensorStats, *, method: str, bits: int, scheme: str, percentile: float = 99.99
) -> tuple[float, float]:
    """The ``(lo, hi)`` clip range of one activation tensor from its calibration statistics.

    minmax: ``(min, max)``. percentile: asymmetric ``(value at 100-p %, value at p %)``,
    symmetric ``±(p-th percentile of |x|)``, interpolated inside histogram bins. mse: the
    shrink factor alpha (of 128 in (0, 1]) of the min-max range whose expected quantization
    MSE (histogram model above) is least. kl: TensorRT's entropy calibration on the histogram of
    |x| (see ``_kl_threshold``) with ``qmax + 1`` levels for symmetric (128 at INT8, 8 at INT4),
    ``2**bits`` for asymmetric one-signed data and ``2**(bits-1)`` for asymmetric mixed-sign
    data, which gets ``(max(min, -T), min(max, T))``. Every method except minmax returns a range
    symmetric about 0 under the symmetric scheme; for one-signed data the end nearest zero
    stays at the data's min (or max). Example: 10^5 N(0, 1) values, asymmetric p = 99.9 ->
    about (-3.09, 3.09).
    """
    int_range(bits, scheme)
    if method not in ACTIVATION_CLIPPING:
        raise ConfigError(f"method: got {method!r}; allowed: {', '.join(ACTIVATION_CLIPPING)}")
    _check_percentile(percentile)
    _require_data(stats)
    if method == "minmax" or stats.min == stats.max:
        return stats.min, stats.max
    if method == "percentile":
        return _percentile_range(stats, scheme, percentile)
    if method == "mse":
        return _mse_range(stats, bits, scheme)
    return _kl_range(stats, bits, scheme)


def _check_percentile(percentile: float) -> None:
    if isinstance(percentile, bool) or not isinstance(percentile, (int, float)) or not 50.0 < float(percentile) < 100.0:
        raise ConfigError(
            f"percentile: got {percentile!r}; allowed: a number strictly between 50 and 100, e.g. 99.9, 99.99"
        )


# -- weights ------------------------------------------------------------------------------------
@dataclass(frozen=True, eq=False)  # eq=False: tensor fields have no boolean equality
class WeightQParams:
    """qparams of one weight. ``scale``/``zero_point``/``lo``/``hi`` have shape ``[]`` per_tensor,
    ``[out]`` per_channel, ``[out, G]`` per_group (G = ceil(K / group_size)). ``lo``/``hi`` are
    the clip range the clipping method chose, before qparams widen it to contain 0.
    """

    scale: Tensor  # float32
    zero_point: Tensor  # int32
    qmin: int
    qmax: int
    granularity: str
    group_size: int | None
    lo: Tensor
    hi: Tensor


def _check_finite(w: Tensor, name: str | None) -> None:
    if w.dim() == 0:
        raise ModelError(f"{name or 'weight'}: got a 0-d weight; allowed: a tensor [out, ...]")
    if not bool(torch.isfinite(w).all()):
        raise ModelError(f"{name + ': ' if name else ''}weights contain NaN or Inf; allowed: finite weights only")


def _reduction_view(wf: Tensor, granularity: str, group_size: int | None, fill: float) -> Tensor:
    """``w`` as ``[..., n]`` with one range per leading index: [1, N], [out, K] or [out, G, group_size]."""
    if granularity == "per_tensor":
        return wf.reshape(1, -1)
    rows = weight_rows(wf)
    if granularity == "per_channel":
        return rows
    assert group_size is not None
    return group_view(rows, group_size, fill)


def _sorted_quantile(sorted_x: Tensor, counts: Tensor, q: float) -> Tensor:
    """Linear-interpolated quantile (torch.quantile's default) of each row of ``sorted_x`` using its first ``counts``."""
    pos = q * (counts - 1).to(torch.float64)
    lo_i = pos.floor().to(torch.int64)
    hi_i = torch.minimum(lo_i + 1, counts - 1)
    frac = (pos - lo_i).to(sorted_x.dtype)
    v_lo = torch.gather(sorted_x, -1, lo_i.unsqueeze(-1)).squeeze(-1)
    v_hi = torch.gather(sorted_x, -1, hi_i.unsqueeze(-1)).squeeze(-1)
    return v_lo + frac * (v_hi - v_lo)


def _weight_percentile(
    wf: Tensor, granularity: str, group_size: int | None, scheme: str, percentile: float
) -> tuple[Tensor, Tensor]:
    x = _reduction_view(wf, granularity, group_size, math.nan)  # NaN padding sorts last, never counted
    n = x.shape[-1]
    counts = torch.full(x.shape[:-1], n, dtype=torch.int64)
    if granularity == "per_group":
        assert group_size is not None
        K = weight_rows(wf).shape[1]
        counts[:, -1] = K - (num_groups(K, group_size) - 1) * group_size
    q = percentile / 100.0
    if scheme == "symmetric":
        t = _sorted_quantile(torch.sort(x.abs(), dim=-1).values, counts, q)
        return -t, t
    s = torch.sort(x, dim=-1).values
    return _sorted_quantile(s, counts, 1.0 - q), _sorted_quantile(s, counts, q)


def _weight_mse(wf: Tensor, granularity: str, group_size: int | None, bits: int, scheme: str) -> tuple[Tensor, Tensor]:
    qmin, qmax = int_range(bits, scheme)
    x = _reduction_view(wf, granularity, group_size, 0.0)  # zeros quantize exactly: add no error
    lo0, hi0 = torch.aminmax(x, dim=-1)
    best_err = torch.full_like(lo0, math.inf)
    best_alpha = torch.ones_like(lo0)
    chunk = max(1, _WEIGHT_MSE_CHUNK // x.numel())
    for start in range(0, WEIGHT_MSE_ALPHAS.numel(), chunk):
        alpha = WEIGHT_MSE_ALPHAS[start : start + chunk].view(-1, *([1] * lo0.dim()))
        scale, zp = qparams_from_range(alpha * lo0, alpha * hi0, bits, scheme)  # [A, *P]
        fq = fake_quantize(x.unsqueeze(0), scale.unsqueeze(-1), zp.unsqueeze(-1), qmin, qmax)
        err = fq.sub_(x).square_().sum(-1)
        e_min, e_arg = err.min(0)  # first index on ties: the larger alpha
        better = e_min < best_err
        best_err = torch.where(better, e_min, best_err)
        best_alpha = torch.where(better, WEIGHT_MSE_ALPHAS[start + e_arg], best_alpha)
    return best_alpha * lo0, best_alpha * hi0


def weight_qparams(
    w: Tensor,
    *,
    bits: int,
    scheme: str,
    granularity: str,
    group_size: int | None = None,
    clipping: str = "minmax",
    percentile: float = 99.99,
    name: str | None = None,
) -> WeightQParams:
    """qparams of weight ``w [out, ...]`` (never modified) at ``granularity``.

    clipping minmax: exact min/max; percentile: per row/group, linear interpolation over its
    own elements; mse: per row/group, the alpha of WEIGHT_MSE_ALPHAS whose actual fake-quant
    squared error is least (alpha chunks bound memory to ~16 MiB). ``name`` goes into errors.
    Example: ``w = [[-1.0, 0.5], [0.0, 0.02]]``, 8-bit symmetric per_channel minmax ->
    scale ``[1/127, 0.02/127]``, zero_point ``[0, 0]``.
    """
    qmin, qmax = int_range(bits, scheme)
    check_granularity(granularity, group_size)
    if clipping not in WEIGHT_CLIPPING:
        raise ConfigError(
            f"clipping: got {clipping!r} for weights; allowed: {', '.join(WEIGHT_CLIPPING)} "
            "(kl needs an activation histogram and is offered for activations only)"
        )
    _check_percentile(percentile)
    _check_finite(w, name)
    gs = group_size if granularity == "per_group" else None
    wf = w.detach().to(torch.float32)
    if clipping == "minmax":
        lo, hi = weight_minmax(wf, granularity, gs)
    elif clipping == "percentile":
        lo, hi = _weight_percentile(wf, granularity, gs, scheme, percentile)
    else:
        lo, hi = _weight_mse(wf, granularity, gs, bits, scheme)
    if granularity == "per_tensor":
        lo, hi = lo.reshape(()), hi.reshape(())
    scale, zp = qparams_from_range(lo, hi, bits, scheme)
    return WeightQParams(scale, zp, qmin, qmax, granularity, gs, lo, hi)


def _broadcast_qparams(w: Tensor, qp: WeightQParams) -> tuple[Tensor, Tensor]:
    out = w.shape[0] if w.dim() else 0
    K = w.numel() // max(out, 1)
    expected: tuple[int, ...] = {
        "per_tensor": (),
        "per_channel": (out,),
        "per_group": (out, num_groups(K, qp.group_size or 1)),
    }[qp.granularity]
    if tuple(qp.scale.shape) != expected:
        raise ModelError(
            f"qparams of shape {tuple(qp.scale.shape)} do not fit weight {tuple(w.shape)} {qp.granularity}; expected {expected}"
        )
    return (
        broadcast_to_weight(qp.scale, w.shape, qp.granularity, qp.group_size),
        broadcast_to_weight(qp.zero_point, w.shape, qp.granularity, qp.group_size),
    )


def fake_quantize_weight(w: Tensor, qp: WeightQParams) -> Tensor:
    """``w`` quantized and dequantized with ``qp``: a new tensor of ``w``'s shape and dtype."""
    scale, zp = _broadcast_qparams(w, qp)
    return fake_quantize(w.detach(), scale, zp, qp.qmin, qp.qmax).to(w.dtype)


def quantize_weight(w: Tensor, qp: WeightQParams) -> Tensor:
    """int32 codes of ``w`` (same shape), as an integer runtime would store them."""
    scale, zp = _broadcast_qparams(w, qp)
    return quantize(w.detach(), scale, zp, qp.qmin, qp.qmax)


def weight_error(w: Tensor, qp: WeightQParams, *, name: str | None = None) -> dict[str, float]:
    """Error of ``qp`` on ``w``: ``mse``, ``rounding_mse``, ``clipping_mse``, ``clip_fraction``, ``sqnr_db``.

    ``clip_fraction`` is the share of weights whose integer code was clamped (torch's
    fake-quantize mask); their error is ``clipping_mse``, the rest ``rounding_mse``. ``sqnr_db``
    is ``10*log10(mean(w^2) / mse)``, ``math.inf`` when the error is exactly 0.
    """
    _check_finite(w, name)
    scale, zp = _broadcast_qparams(w, qp)
    wf = w.detach().to(torch.float32)
    raw = torch.round(wf * (1.0 / scale)).add_(zp.to(torch.float32))
    clipped = (raw < qp.qmin) | (raw > qp.qmax)
    err2 = (fake_quantize(wf, scale, zp, qp.qmin, qp.qmax) - wf).square_().to(torch.float64)
    n = wf.numel()
    mse = float(err2.sum()) / n
    clipping_mse = float(err2[clipped].sum()) / n
    return {
        "mse": mse,
        "rounding_mse": mse - clipping_mse,
        "clipping_mse": clipping_mse,
        "clip_fraction": float(clipped.sum()) / n,
        "sqnr_db": sqnr_db(float(wf.to(torch.float64).square().mean()), mse),
    }
