"""ptq_core.observers: exact histograms, exact merging, NaN handling, views and serialization."""

from __future__ import annotations

import json
import math
import threading

import pytest
import torch

from ptq_core.errors import CalibrationError
from ptq_core.observers import NUM_BINS, TensorStats


def _stats(*xs: torch.Tensor) -> TensorStats:
    s = TensorStats()
    for x in xs:
        s.update(x, "t")
    return s


def _reference_hist(x: torch.Tensor, range_exp: int) -> torch.Tensor:
    """Direct float64 binning of x at R = 2**range_exp: bin = floor(x / w) + NUM_BINS."""
    w = math.ldexp(1.0, range_exp) / NUM_BINS
    idx = torch.floor(x.double().reshape(-1) / w).long() + NUM_BINS
    return torch.bincount(idx, minlength=2 * NUM_BINS)


def test_range_and_bin_placement() -> None:
    s = _stats(torch.tensor([-0.7, 3.2, 1.0, 0.0, -0.0009765625]))
    assert s.range == 4.0 and s.bin_width == 4.0 / NUM_BINS
    assert s.hist[NUM_BINS + 1024] == 1  # x = 1.0 starts bin 5120
    assert s.hist[NUM_BINS] == 1  # 0.0
    assert s.hist[NUM_BINS - 1] == 1  # -w is the lower edge of bin 4095
    assert (s.count, s.min, s.max, s.num_batches) == (5, pytest.approx(-0.7), pytest.approx(3.2), 1)
    assert int(s.hist.sum()) == 5


def test_max_equal_to_power_of_two_gets_a_larger_range() -> None:
    s = _stats(torch.tensor([-4.0, 4.0]))
    assert s.range == 8.0  # R > max|x| strictly: every value has a bin without clamping
    assert torch.equal(s.hist, _reference_hist(torch.tensor([-4.0, 4.0]), 3))


def test_histogram_matches_direct_float64_binning() -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(100_000, generator=gen) * 3
    s = _stats(x)
    assert s.hist.dtype == torch.int64
    assert torch.equal(s.hist, _reference_hist(x, s.range_exp or 0))


def test_rebinning_is_exact() -> None:
    gen = torch.Generator().manual_seed(1)
    small = torch.randn(50_000, generator=gen) * 0.3  # R = 2
    big = torch.randn(1000, generator=gen) * 40  # R = 256: 7 doublings
    s = _stats(small, big)
    assert s.range_exp == _stats(torch.cat([small, big])).range_exp
    assert torch.equal(s.hist, _reference_hist(torch.cat([small, big]), s.range_exp or 0))


def test_merge_equals_concatenation_in_any_order() -> None:
    gen = torch.Generator().manual_seed(2)
    xs = [torch.randn(3000, generator=gen) * m for m in (0.01, 5.0, 0.2, 100.0, 1.0)]
    parts = [_stats(x) for x in xs]
    full = _stats(torch.cat(xs))
    for merged in (
        TensorStats.merge_all(parts),
        TensorStats.merge_all(parts[::-1]),
        parts[3].merge(parts[0]).merge(parts[4]).merge(parts[1]).merge(parts[2]),
        _stats(*xs),
    ):
        assert torch.equal(merged.hist, full.hist)
        assert (merged.count, merged.min, merged.max, merged.range_exp) == (
            full.count,
            full.min,
            full.max,
            full.range_exp,
        )
    assert TensorStats.merge_all(parts).num_batches == 5


def test_merge_returns_new_object_and_handles_empty() -> None:
    a, empty = _stats(torch.tensor([1.0, -2.0])), TensorStats()
    before = a.hist.clone()
    m = a.merge(empty)
    assert m is not a and torch.equal(m.hist, a.hist) and m.count == 2
    m.hist += 1
    assert torch.equal(a.hist, before)
    m2 = empty.merge(a)
    assert torch.equal(m2.hist, a.hist) and (m2.min, m2.max) == (-2.0, 1.0)
    assert TensorStats.merge_all([]).count == 0


def test_all_zero_batch_then_data() -> None:
    s = _stats(torch.zeros(10), torch.tensor([1e-3, -2e-3]))
    assert s.range_exp == math.frexp(2e-3)[1]
    assert s.hist[NUM_BINS] == 10 and int(s.hist.sum()) == 12  # the zeros stayed in the centre bin
    assert torch.equal(s.hist, _reference_hist(torch.cat([torch.zeros(10), torch.tensor([1e-3, -2e-3])]), s.range_exp))


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
def test_non_finite_raises_naming_the_tensor(bad: float) -> None:
    s = TensorStats()
    x = torch.randn(4, 5)
    x[2, 3] = bad
    with pytest.raises(CalibrationError, match=r"^layer3\.relu: activation contains NaN or Inf"):
        s.update(x, "layer3.relu")


def test_half_precision_and_multidim_input() -> None:
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(2, 3, 16, 16, generator=gen)
    assert torch.equal(_stats(x.half()).hist, _stats(x.half().float()).hist)
    assert _stats(x).count == x.numel()


def test_different_stats_from_different_threads() -> None:
    gen = torch.Generator().manual_seed(4)
    data = [[torch.randn(20_000, generator=gen) * (i + 1) for _ in range(5)] for i in range(4)]
    serial = [_stats(*xs) for xs in data]
    threaded = [TensorStats() for _ in data]

    def work(i: int) -> None:
        for x in data[i]:
            threaded[i].update(x, f"t{i}")

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(data))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for a, b in zip(serial, threaded, strict=True):
        assert torch.equal(a.hist, b.hist) and a.count == b.count


def test_to_plot_is_bounded_and_covers_min_max() -> None:
    gen = torch.Generator().manual_seed(5)
    s = _stats(torch.randn(10_000, generator=gen).abs() + 0.5)
    counts, edges = s.to_plot(64)
    assert 0 < len(counts) <= 64 and len(edges) == len(counts) + 1
    assert int(counts.sum()) == s.count
    assert edges[0] == s.min and edges[-1] == s.max
    assert bool((edges[1:] >= edges[:-1]).all())
    c0, e0 = TensorStats().to_plot()
    assert len(c0) == 0 and len(e0) == 0
    c1, e1 = _stats(torch.full((7,), 2.0)).to_plot()
    assert c1.tolist() == [7] and e1.tolist() == [2.0, 2.0]


def test_dict_round_trip_through_json() -> None:
    gen = torch.Generator().manual_seed(6)
    s = _stats(torch.randn(5000, generator=gen), torch.randn(10, generator=gen) * 9)
    back = TensorStats.from_dict(json.loads(json.dumps(s.to_dict())))
    assert torch.equal(back.hist, s.hist)
    assert (back.count, back.min, back.max, back.range_exp, back.num_batches, back.name) == (
        s.count,
        s.min,
        s.max,
        s.range_exp,
        s.num_batches,
        s.name,
    )
    empty = TensorStats.from_dict(json.loads(json.dumps(TensorStats().to_dict())))
    assert empty.count == 0 and empty.min == math.inf


def test_from_dict_rejects_malformed() -> None:
    d = _stats(torch.randn(100)).to_dict()
    with pytest.raises(CalibrationError, match="num_bins"):
        TensorStats.from_dict({**d, "num_bins": 2048})
    with pytest.raises(CalibrationError, match="count"):
        TensorStats.from_dict({**d, "count": 99})
    with pytest.raises(CalibrationError, match="malformed"):
        TensorStats.from_dict({"count": 1})


@pytest.mark.parametrize("shape", [(2, 3, 5, 7), (4, 32, 40, 40)])  # the PyTorch ops, and the compiled pass (>= 128K)
def test_a_channels_last_batch_counts_the_same_as_its_contiguous_copy(shape: tuple[int, ...]) -> None:
    x = torch.randn(*shape).relu()
    fast = x.contiguous(memory_format=torch.channels_last)  # how the engine feeds conv nets (models.device.fast_layout)
    a, b = _stats(x), _stats(fast)
    assert torch.equal(a.hist, b.hist) and (a.min, a.max, a.count, a.range_exp) == (b.min, b.max, b.count, b.range_exp)
