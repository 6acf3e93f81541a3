"""The compiled loops of :func:`ptq_core.binning.histogram` (numba), in a module of their own.

Imported only when a tensor is large enough to need them (importing numba takes about a second), and
defined at module level so that numba's on-disk cache holds them: compiled once per installation, not
in every process (functions made inside another function were compiled anew in each process, 5 s).
What the steps do and why: :mod:`ptq_core.binning`.
"""

from __future__ import annotations

import math
from typing import Any

import numba
import numpy as np

from .binning import FLUSH, SPREAD

# float32 bits as int32 keys that order like the floats: negative floats have their magnitude bits flipped.
# The map is its own inverse. Keys beyond those of +Inf / -Inf are NaN.
KEY_POS_INF = np.int32(0x7F800000)
KEY_NEG_INF = np.int32(-0x7F800001)  # bits 0xFF800000 -> key 0x807FFFFF


@numba.njit(nogil=True, cache=True, inline="always")
def to_float(key: Any) -> Any:
    bits = np.empty(1, dtype=np.int32)
    bits[0] = key ^ ((key >> 31) & np.int32(0x7FFFFFFF))
    return bits.view(np.float32)[0]


@numba.njit(nogil=True, cache=True)
def key_range(keys: Any) -> Any:  # 1. min and max as ordered integer keys (vectorized)
    kmin, kmax = np.int32(0x7FFFFFFF), np.int32(-0x7FFFFFFF - 1)
    for j in range(keys.shape[0]):
        b = keys[j]
        k = b ^ ((b >> 31) & np.int32(0x7FFFFFFF))
        kmin = min(kmin, k)
        kmax = max(kmax, k)
    return kmin, kmax


@numba.njit(nogil=True, cache=True)
def bin_indices(x: Any, inv_width: Any, num_bins: int, idx: Any) -> None:  # 3. (vectorized)
    # In float32 until the store: numba widens int32 arithmetic to int64, which halved the vector lanes and made this
    # step 0.06 ns per element slower. Exact: floor(x * inv_width) is an integer below num_bins in magnitude.
    nb, top, span = np.float32(num_bins), np.float32(2 * num_bins - 1), np.float32(2 * num_bins)
    for j in range(x.shape[0]):
        t = min(max(np.floor(x[j] * inv_width) + nb, np.float32(0.0)), top)
        idx[j] = np.uint16(span + np.float32(j & (SPREAD - 1)) if t == nb else t)


@numba.njit(nogil=True, cache=True)
def increments(idx: Any, m: int, counters: Any) -> None:  # 4.
    for j in range(m):
        counters[idx[j]] += 1


@numba.njit(nogil=True, cache=True)
def flush(counters: Any, out: Any, num_bins: int) -> None:
    """Add the int32 ``counters`` into the int64 ``out`` (the spare ones into the zero bin) and zero them."""
    span = 2 * num_bins
    for i in range(span):
        out[i] += counters[i]
    for i in range(SPREAD):
        out[num_bins] += counters[span + i]
    counters[:] = 0


@numba.njit(nogil=True, cache=True)
def run(x: Any, start_exp: int, num_bins: int, min_exp: int, chunk: int) -> Any:
    """``(counts, range_exp, min, max, finite)`` of float32 ``x``, chunk by chunk (steps 1-4 of :mod:`ptq_core.binning`).

    ``start_exp`` below ``min_exp`` means no range yet; the counts are at ``max(start_exp, need)``. On NaN or Inf it
    stops with ``finite`` False (the other values mean nothing then).
    """
    span = 2 * num_bins
    counters = np.zeros(span + SPREAD, dtype=np.int32)
    out = np.zeros(span, dtype=np.int64)
    idx = np.empty(min(chunk, max(x.shape[0], 1)), dtype=np.uint16)  # span + SPREAD <= 65536: checked in histogram()
    keys = x.view(np.int32)
    n = x.shape[0]
    exp = start_exp  # below min_exp: no range yet
    kmin_all, kmax_all = np.int32(0x7FFFFFFF), np.int32(-0x7FFFFFFF - 1)
    unflushed = 0
    for s in range(0, n, chunk):
        e = min(n, s + chunk)
        kmin, kmax = key_range(keys[s:e])
        if kmax >= KEY_POS_INF or kmin <= KEY_NEG_INF:
            return out, exp, np.nan, np.nan, False
        kmin_all, kmax_all = min(kmin_all, kmin), max(kmax_all, kmax)
        max_abs = max(-to_float(kmin), to_float(kmax))
        need = max(math.frexp(max_abs)[1], min_exp) if max_abs > 0 else min_exp
        if exp < min_exp:
            exp = need
        elif need > exp:  # 2. a wider range: flush, then re-bin what was counted (exact, see observers._rebin)
            flush(counters, out, num_bins)
            shift = min(need - exp, 62)
            wider = np.zeros(span, dtype=np.int64)
            for i in range(span):
                wider[((i - num_bins) >> shift) + num_bins] += out[i]
            out[:] = wider
            exp = need
        inv_width = np.float32(num_bins * math.ldexp(1.0, -exp))
        m = e - s
        bin_indices(x[s:e], inv_width, num_bins, idx)
        increments(idx, m, counters)
        unflushed += m
        if unflushed >= FLUSH:
            flush(counters, out, num_bins)
            unflushed = 0
    flush(counters, out, num_bins)
    if n == 0:
        return out, exp, np.nan, np.nan, True
    return out, exp, to_float(kmin_all), to_float(kmax_all), True
