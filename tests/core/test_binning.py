"""ptq_core.binning: the compiled pass finds exactly the min, max and counts of direct float64 binning and of the PyTorch ops."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from ptq_core import binning
from ptq_core.errors import CalibrationError
from ptq_core.observers import _MIN_RANGE_EXP, NUM_BINS, TensorStats

SIZE = binning.NUMBA_MIN_ELEMENTS + 12_345  # over the threshold, and not a multiple of the chunk


def _reference(x: torch.Tensor, range_exp: int) -> torch.Tensor:
    """floor(x * NUM_BINS / 2**range_exp) + NUM_BINS in float64 (exact), counted by bincount on int64."""
    idx = torch.floor(x.double() * (NUM_BINS * math.ldexp(1.0, -range_exp))).long() + NUM_BINS
    return torch.bincount(idx, minlength=2 * NUM_BINS)


def _edge_heavy(seed: int, size: int = SIZE) -> torch.Tensor:
    """ReLU6-like data (runs of zeros) plus values on, just below and just above bin edges, and tiny negatives."""
    gen = torch.Generator().manual_seed(seed)
    x = (torch.randn(size, generator=gen) * 2).clamp(0, 6)
    width = 8.0 / NUM_BINS  # R = 8 for data in [-6, 6]
    edges = torch.arange(-2000, 2000, dtype=torch.float32) * width
    below = torch.from_numpy(np.nextafter(edges.numpy(), np.float32(-np.inf)))
    above = torch.from_numpy(np.nextafter(edges.numpy(), np.float32(np.inf)))
    tiny = torch.tensor([-1e-30, -1e-45, 1e-45, -0.0, 0.0, -5.99, 5.99])  # -1e-30 and -1e-45 belong to bin 4095
    special = torch.cat([edges, below, above, tiny])
    perm = torch.randperm(size, generator=gen)[: special.numel()]
    x[perm] = special
    return x


def _run(x: torch.Tensor, start_exp: int | None = None, chunk: int = binning.CHUNK) -> tuple[np.ndarray, int, float, float, bool]:
    """The compiled pass itself, with a chunk of the test's choosing."""
    kernel = binning._kernel()
    assert kernel is not None  # numba is in requirements.txt: the compiled pass is what runs
    start = _MIN_RANGE_EXP - 1 if start_exp is None else start_exp
    return kernel(x.numpy(), start, NUM_BINS, _MIN_RANGE_EXP, chunk)


def test_compiled_pass_matches_float64_reference_on_bin_edges() -> None:
    x = _edge_heavy(0)
    binned = binning.histogram(x, None, NUM_BINS, _MIN_RANGE_EXP)
    assert binned is not None and binned.finite
    lo, hi = torch.aminmax(x)
    assert (binned.min, binned.max) == (float(lo), float(hi))
    assert binned.range_exp == math.frexp(6.0)[1] == 3
    assert binned.counts.dtype == torch.int64 and binned.counts.shape == (2 * NUM_BINS,)
    assert torch.equal(binned.counts, _reference(x, 3))
    assert int(binned.counts[NUM_BINS - 1]) >= 2  # the tiny negatives are below zero, not in zero's bin
    assert int(binned.counts[NUM_BINS]) == int(((x >= 0) & (x < 8.0 / NUM_BINS)).sum())  # the spare counters add up


def test_compiled_pass_matches_the_pytorch_ops() -> None:
    for seed in (1, 2):
        x = _edge_heavy(seed) - 1.5  # negative values too
        binned = binning.histogram(x, None, NUM_BINS, _MIN_RANGE_EXP)
        assert binned is not None
        assert torch.equal(binned.counts, binning.bincount_torch(x, NUM_BINS * math.ldexp(1.0, -binned.range_exp), NUM_BINS))


def test_a_range_that_grows_chunk_by_chunk_is_re_binned_exactly() -> None:
    """Small values first, larger ones later: each wider chunk re-bins the counts so far, which must equal binning
    everything at the final range directly; a start range wider than the data is kept."""
    gen = torch.Generator().manual_seed(5)
    parts = [torch.randn(3000, generator=gen) * scale for scale in (0.01, 0.3, 0.2, 5.0, 1.0, 40.0, 3.0)]
    x = torch.cat(parts)
    x[4321] = -0.0
    counts, exp, lo, hi, finite = _run(x, chunk=1000)
    assert finite and exp == math.frexp(float(x.abs().max()))[1]
    assert (lo, hi) == (float(x.min()), float(x.max()))
    assert torch.equal(torch.from_numpy(counts), _reference(x, exp))
    wide, wide_exp, *_ = _run(x, start_exp=exp + 3, chunk=1000)
    assert wide_exp == exp + 3 and torch.equal(torch.from_numpy(wide), _reference(x, exp + 3))
    zeros, zero_exp, zlo, zhi, _ = _run(torch.zeros(2500), chunk=1000)  # all zero: the smallest range
    assert zero_exp == _MIN_RANGE_EXP and (zlo, zhi) == (0.0, 0.0) and int(zeros[NUM_BINS]) == 2500


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
@pytest.mark.parametrize("where", [0, SIZE // 2, SIZE - 1])
def test_nan_and_inf_are_found_anywhere_and_named(bad: float, where: int) -> None:
    x = _edge_heavy(6)
    x[where] = bad
    binned = binning.histogram(x, None, NUM_BINS, _MIN_RANGE_EXP)
    assert binned is not None and not binned.finite
    with pytest.raises(CalibrationError, match=r"blocks\.3: activation contains NaN or Inf"):
        TensorStats().update(x, "blocks.3")


def test_other_dtypes_devices_and_small_tensors_take_the_pytorch_ops() -> None:
    x = _edge_heavy(3)
    assert binning.histogram(x.double(), None, NUM_BINS, _MIN_RANGE_EXP) is None
    assert binning.histogram(x.to(torch.bfloat16), None, NUM_BINS, _MIN_RANGE_EXP) is None
    assert binning.histogram(x[: binning.NUMBA_MIN_ELEMENTS - 1], None, NUM_BINS, _MIN_RANGE_EXP) is None
    x64 = x.double()
    stats = TensorStats()
    stats.update(x64, "t")
    assert torch.equal(stats.hist, _reference(x64, 3))


def test_tensor_stats_of_a_large_tensor_equal_the_merged_small_ones() -> None:
    """One large batch (compiled pass) and the same values in small batches (PyTorch ops) give one histogram."""
    x = _edge_heavy(4)
    whole = TensorStats()
    whole.update(x.unsqueeze(0), "big")
    parts = TensorStats()
    for piece in x.split(binning.NUMBA_MIN_ELEMENTS // 4):
        parts.update(piece, "big")
    assert whole.range_exp == parts.range_exp == math.frexp(6.0)[1]
    assert torch.equal(whole.hist, parts.hist)
    assert (whole.min, whole.max) == (parts.min, parts.max)
    assert int(whole.hist.sum()) == whole.count == SIZE
    grown = TensorStats()  # a later, wider batch through the compiled pass re-bins the first one's counts
    grown.update(x * 0.01, "big")
    grown.update(x * 10, "big")
    both = torch.cat([x * 0.01, x * 10])
    assert grown.range_exp == math.frexp(60.0)[1] and torch.equal(grown.hist, _reference(both, grown.range_exp))


def test_warm_up_loads_the_compiled_pass() -> None:
    assert binning.warm_up() is True
    assert binning._kernel() is not None
