"""ptq_core.binning: the compiled counting loop gives exactly the counts of direct float64 binning and of the PyTorch ops."""

from __future__ import annotations

import math

import numpy as np
import torch

from ptq_core import binning
from ptq_core.observers import NUM_BINS, TensorStats

SIZE = binning.NUMBA_MIN_ELEMENTS + 12_345  # over the threshold, and not a multiple of the four sub-histograms


def _reference(x: torch.Tensor, inv_width: float) -> torch.Tensor:
    """floor(x * inv_width) + NUM_BINS in float64 (exact), counted by bincount on int64."""
    idx = torch.floor(x.double() * inv_width).long() + NUM_BINS
    return torch.bincount(idx, minlength=2 * NUM_BINS)


def _edge_heavy(seed: int) -> tuple[torch.Tensor, float]:
    """ReLU6-like data (runs of zeros) plus values on, just below and just above bin edges, and tiny negatives."""
    gen = torch.Generator().manual_seed(seed)
    x = (torch.randn(SIZE, generator=gen) * 2).clamp(0, 6)
    width = 8.0 / NUM_BINS  # R = 8 for data in [-6, 6]
    edges = torch.arange(-2000, 2000, dtype=torch.float32) * width
    below = torch.from_numpy(np.nextafter(edges.numpy(), np.float32(-np.inf)))
    above = torch.from_numpy(np.nextafter(edges.numpy(), np.float32(np.inf)))
    tiny = torch.tensor([-1e-30, -1e-45, 1e-45, -0.0, 0.0, -5.99, 5.99])  # -1e-30 and -1e-45 belong to bin 4095
    special = torch.cat([edges, below, above, tiny])
    perm = torch.randperm(SIZE, generator=gen)[: special.numel()]
    x[perm] = special
    return x, 1.0 / width


def test_compiled_loop_matches_float64_reference_on_bin_edges() -> None:
    x, inv = _edge_heavy(0)
    counts = binning.bincount(x, inv, NUM_BINS)
    assert binning._numba_kernel() is not None  # numba is in requirements.txt: the compiled loop is what ran
    assert counts.dtype == torch.int64 and counts.shape == (2 * NUM_BINS,)
    assert torch.equal(counts, _reference(x, inv))
    assert int(counts[NUM_BINS - 1]) >= 2  # the tiny negatives are below zero, not in zero's bin


def test_compiled_loop_matches_pytorch_ops() -> None:
    for seed in (1, 2):
        x, inv = _edge_heavy(seed)
        assert torch.equal(binning.bincount(x, inv, NUM_BINS), binning.bincount_torch(x, inv, NUM_BINS))


def test_other_dtypes_and_small_tensors_take_the_pytorch_ops() -> None:
    x, inv = _edge_heavy(3)
    x64 = x.double()
    assert torch.equal(binning.bincount(x64, inv, NUM_BINS), _reference(x64, inv))
    half = x[:5000].to(torch.bfloat16)
    assert torch.equal(binning.bincount(half, inv, NUM_BINS), _reference(half.float(), inv))
    small = x[: binning.NUMBA_MIN_ELEMENTS - 1]
    assert torch.equal(binning.bincount(small, inv, NUM_BINS), _reference(small, inv))


def test_tensor_stats_of_a_large_tensor_equal_the_merged_small_ones() -> None:
    """One large batch (compiled loop) and the same values in small batches (PyTorch ops) give one histogram."""
    x, _ = _edge_heavy(4)
    whole = TensorStats()
    whole.update(x.unsqueeze(0), "big")
    parts = TensorStats()
    for piece in x.split(binning.NUMBA_MIN_ELEMENTS // 4):
        parts.update(piece, "big")
    assert whole.range_exp == parts.range_exp == math.frexp(6.0)[1]
    assert torch.equal(whole.hist, parts.hist)
    assert int(whole.hist.sum()) == whole.count == SIZE
