"""The activation histogram's counting: ``floor(x * inv_width) + num_bins`` counted per bin, and the range with it.

What lives here: :func:`histogram`, one compiled pass (numba) that finds a float32 CPU tensor's min
and max and counts its histogram at the power-of-two range those need, and :func:`bincount_torch`,
the same counts from PyTorch ops at a range the caller found (every other device and dtype, small
tensors, and when numba is missing). Both give the same counts, exactly: ``inv_width`` is a power of
two, so ``x * inv_width`` and its floor are exact in float32, and every value lands in the bin it
mathematically belongs to (``tests/core/test_binning.py`` compares them on values that sit on bin
edges). What the bins mean is :mod:`ptq_core.observers`.

Why a compiled pass, and why this shape. Statistics collection is the model's forward plus this
histogram over every activation element (about 7 million elements per image for EfficientNet-Lite0,
36% of them exact zeros after its ReLU6s), and the increments are the cost: a plain loop of
``counts[bin] += 1`` spends most of its time on increments of the same counter in a row, each
waiting for the previous one to be stored (the zeros), and on counters that do not stay in the
first-level cache. So the tensor is taken in chunks of :data:`CHUNK` elements (they stay in the
second-level cache between the steps):

1. min and max of the chunk, on the float's bits read as ordered integers (a loop the compiler
   vectorizes; NaN and Inf show up as keys beyond those of the infinities);
2. if the chunk needs a wider range than the counts so far, the counts are re-binned to it, exactly
   as :func:`ptq_core.observers._rebin` does (pairs of bins summed toward the centre);
3. each element's bin index, vectorized, into a small buffer; the zero bin's increments go to one
   of :data:`SPREAD` spare counters in turn, so that the zeros' increments do not wait on one another;
4. the increments, one counter array of 8,208 int32 (32 KB).

One core, 2026-12-03, AMD EPYC (AVX512-VNNI), EfficientNet-Lite0's activations at all 61 points for
8 images: 0.90 ns per element for the whole pass, against 1.16-1.21 ns for the earlier ``aminmax``
plus a loop of four sub-histograms, measured side by side (benchmarks/RESULTS.md, issue 9); 0.75-0.88 ns since the
indices are computed in float32. The loops are
:mod:`ptq_core._histogram_kernel`; they compile once per installation (numba's on-disk cache) and loading it takes about a second in each
new process, so tensors below :data:`NUMBA_MIN_ELEMENTS` take the PyTorch ops. It releases the GIL, so the
calibration workers count side by side.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

log = logging.getLogger(__name__)

TORCH_CHUNK = 1 << 18  # elements per PyTorch chunk: temporaries (1 MiB + 0.5 MiB) stay in cache
CHUNK = 1 << 16  # elements per step of the compiled pass: the chunk (256 KiB) and its indices stay in L2
SPREAD = 16  # spare counters the zero bin's increments rotate over
# Elements between two flushes of the int32 counters into the int64 result: no counter can overflow.
FLUSH = 1 << 30
# Smaller tensors use the PyTorch ops: importing numba and loading its compiled pass take about a second, more than
# the pass saves on the digits models (tens of thousands of elements a point and batch), and a batch of 32 at the
# narrow end of EfficientNet-Lite0 (32 * 1280 pooled features) would gain milliseconds. At a million, 23 of
# EfficientNet-Lite0's 61 points (5% of its elements, at twice the cost per element) took the PyTorch ops.
NUMBA_MIN_ELEMENTS = 1 << 17


@dataclass(frozen=True)
class Binned:
    """What :func:`histogram` found: int64 ``counts [2 * num_bins]`` over ``[-2**range_exp, 2**range_exp)``,
    the exact ``min`` and ``max``, and ``finite`` False when the tensor holds NaN or Inf (then nothing else holds)."""

    counts: Tensor
    range_exp: int
    min: float
    max: float
    finite: bool


def histogram(flat: Tensor, start_exp: int | None, num_bins: int, min_exp: int) -> Binned | None:
    """Min, max and the histogram of ``flat`` (1-D) in one pass, at ``range_exp = max(start_exp, need)`` where
    ``need`` is the exponent of the power of two just above ``max |x|`` (at least ``min_exp``).

    None when the compiled pass does not apply (not float32, not on the CPU, fewer than :data:`NUMBA_MIN_ELEMENTS`
    elements, numba missing): the caller then finds the range with ``aminmax`` and counts with :func:`bincount_torch`.
    """
    if flat.device.type != "cpu" or flat.dtype != torch.float32 or flat.numel() < NUMBA_MIN_ELEMENTS:
        return None
    kernel = _kernel()
    if kernel is None:
        return None
    assert 2 * num_bins + SPREAD <= 1 << 16, "bin indices are uint16"
    x = flat.contiguous().numpy()
    start = min_exp - 1 if start_exp is None else max(start_exp, min_exp)
    counts, exp, lo, hi, finite = kernel(x, start, num_bins, min_exp, CHUNK)
    # + 0.0: a -0.0 minimum reads as 0.0, as torch.aminmax of the same values may give either
    return Binned(torch.from_numpy(counts), int(exp), float(lo) + 0.0, float(hi) + 0.0, bool(finite))


def bincount_torch(flat: Tensor, inv_width: float, num_bins: int) -> Tensor:
    """int64 counts ``[2 * num_bins]`` of ``floor(flat * inv_width) + num_bins`` with PyTorch ops, in chunks of
    :data:`TORCH_CHUNK` on the CPU (any float dtype, any device). ``inv_width`` is a power of two chosen so that every
    index falls in ``[0, 2 * num_bins)`` (the caller's ``aminmax`` pass guarantees it)."""
    n = flat.numel()
    chunk = n if flat.device.type != "cpu" else min(n, TORCH_CHUNK)
    buf_dtype = torch.float64 if flat.dtype == torch.float64 else torch.float32
    buf = torch.empty(chunk, dtype=buf_dtype, device=flat.device)
    idx = torch.empty(chunk, dtype=torch.int16 if 2 * num_bins <= 2**15 else torch.int32, device=flat.device)
    counts = torch.zeros(2 * num_bins, dtype=torch.int64, device=flat.device)
    for start in range(0, n, chunk):
        part = flat[start : start + chunk]
        m = part.numel()
        b, i = buf[:m], idx[:m]
        if part.dtype == buf_dtype:
            torch.mul(part, inv_width, out=b)  # exact: inv_width is a power of two
        else:  # float16/bfloat16: widen first, inv_width may not fit their range
            b.copy_(part).mul_(inv_width)
        b.floor_().add_(num_bins)
        i.copy_(b)
        counts += torch.bincount(i, minlength=2 * num_bins)
    assert counts.numel() == 2 * num_bins, "bin index out of range"
    return counts.cpu()


def warm_up() -> bool:
    """Load the compiled pass now (compiling it the first time after an install or a change: about 5 s), so that
    the first large statistics do not wait for it; True when it is there. Safe to call from any thread."""
    kernel = _kernel()
    if kernel is None:
        return False
    kernel(np.zeros(4, dtype=np.float32), 0, 4, -100, 4)
    return True


@functools.cache
def _kernel() -> Callable[..., Any] | None:
    """The compiled pass, or None (logged once) when numba cannot be imported here."""
    try:
        from ._histogram_kernel import run
    except ImportError as exc:  # pragma: no cover - numba is in requirements.txt
        log.info("numba unavailable (%s): activation histograms use PyTorch ops", exc)
        return None
    return run
