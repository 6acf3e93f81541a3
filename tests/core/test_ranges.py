"""ptq_core.ranges: activation ranges from histograms, their predicted errors, weight qparams."""

from __future__ import annotations

import math

import pytest
import torch

from ptq_core.errors import CalibrationError, ConfigError, ModelError
from ptq_core.observers import TensorStats
from ptq_core.primitives import fake_quantize, int_range, qparams_from_range
from ptq_core.ranges import (
    activation_range,
    clipping_curve,
    fake_quantize_weight,
    quantize_weight,
    range_error,
    weight_error,
    weight_qparams,
)

METHODS = ("minmax", "percentile", "mse", "kl")


def laplace(n: int, gen: torch.Generator) -> torch.Tensor:
    u = torch.rand(n, generator=gen, dtype=torch.float64) - 0.5
    return (-torch.sign(u) * torch.log1p(-2 * u.abs())).float()


def student_t3(n: int, gen: torch.Generator) -> torch.Tensor:
    chi2 = (torch.randn(3, n, generator=gen) ** 2).sum(0)
    return torch.randn(n, generator=gen) / torch.sqrt(chi2 / 3)


def stats_of(x: torch.Tensor, batches: int = 4) -> TensorStats:
    return TensorStats.merge_all([_one(part) for part in x.chunk(batches)])


def _one(x: torch.Tensor) -> TensorStats:
    s = TensorStats()
    s.update(x, "act")
    return s


def actual_mse(x: torch.Tensor, lo: float, hi: float, bits: int, scheme: str) -> float:
    qmin, qmax = int_range(bits, scheme)
    scale, zp = qparams_from_range(torch.tensor(lo), torch.tensor(hi), bits, scheme)
    return float((fake_quantize(x, scale, zp, qmin, qmax) - x).double().square().mean())


@pytest.fixture(scope="module")
def gauss() -> torch.Tensor:
    return torch.randn(200_000, generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def laplace_outliers() -> torch.Tensor:
    gen = torch.Generator().manual_seed(1)
    x = laplace(200_000, gen)
    x[:20] = torch.linspace(-40, 60, 20)  # a few huge outliers, as in real activations
    return x


# -- activation ranges ----------------------------------------------------------------------
def assert_between_order_stats(value: float, sorted_x: torch.Tensor, q: float, bin_width: float) -> None:
    """``value`` lies between the sample's order statistics around rank q*n, give or take one bin.

    In a sparse tail adjacent samples are further apart than a bin, so the histogram cannot
    know where between them the exact quantile lies; inside that bracket it must be.
    """
    n = sorted_x.numel()
    k = q * n
    lo_i, hi_i = max(math.floor(k) - 1, 0), min(math.ceil(k), n - 1)
    assert float(sorted_x[lo_i]) - bin_width <= value <= float(sorted_x[hi_i]) + bin_width


@pytest.mark.parametrize("dist", ["gauss", "laplace"])
def test_percentile_near_sample_quantile(dist: str, gauss: torch.Tensor) -> None:
    x = gauss if dist == "gauss" else laplace(200_000, torch.Generator().manual_seed(2))
    s = stats_of(x)
    xs, abs_sorted = x.double().sort().values, x.double().abs().sort().values
    for p in (99.0, 99.9, 99.99):
        lo, hi = activation_range(s, method="percentile", bits=8, scheme="asymmetric", percentile=p)
        assert_between_order_stats(lo, xs, 1 - p / 100, s.bin_width)
        assert_between_order_stats(hi, xs, p / 100, s.bin_width)
        lo, hi = activation_range(s, method="percentile", bits=8, scheme="symmetric", percentile=p)
        assert lo == -hi
        assert_between_order_stats(hi, abs_sorted, p / 100, s.bin_width)
    # the true 99.9 % points: Gaussian 3.090, Laplace(b=1) ln(500) = 6.215
    true_q = 3.090 if dist == "gauss" else math.log(500)
    hi = activation_range(s, method="percentile", bits=8, scheme="asymmetric", percentile=99.9)[1]
    assert hi == pytest.approx(true_q, rel=0.05)


def test_percentile_keeps_min_for_nonnegative_data(gauss: torch.Tensor) -> None:
    s = stats_of(gauss.relu() + 0.25)
    lo, hi = activation_range(s, method="percentile", bits=8, scheme="asymmetric", percentile=99.0)
    assert lo == s.min == 0.25 and hi < s.max


def test_mse_range_beats_minmax_at_4_bits(laplace_outliers: torch.Tensor) -> None:
    s = stats_of(laplace_outliers)
    for scheme in ("symmetric", "asymmetric"):
        lo_m, hi_m = activation_range(s, method="minmax", bits=4, scheme=scheme)
        lo, hi = activation_range(s, method="mse", bits=4, scheme=scheme)
        assert hi < 0.5 * hi_m  # the outliers are clipped away
        predicted = range_error(s, lo, hi, bits=4, scheme=scheme).mse
        assert predicted < 0.1 * range_error(s, lo_m, hi_m, bits=4, scheme=scheme).mse
        assert actual_mse(laplace_outliers, lo, hi, 4, scheme) < 0.1 * actual_mse(
            laplace_outliers, lo_m, hi_m, 4, scheme
        )


def test_mse_range_is_the_minimum_of_the_clipping_curve(laplace_outliers: torch.Tensor) -> None:
    s = stats_of(laplace_outliers)
    lo, hi = activation_range(s, method="mse", bits=4, scheme="symmetric")
    best = range_error(s, lo, hi, bits=4, scheme="symmetric").mse
    curve = clipping_curve(s, bits=4, scheme="symmetric", num=100)
    assert best <= float(curve["mse"].min()) * 1.01


def test_kl_clips_heavy_tails() -> None:
    """(Its speed, a plan-time figure, is measured by benchmarks/bench_engine.py, not asserted here.)"""
    x = student_t3(400_000, torch.Generator().manual_seed(3))
    s = stats_of(x)
    for bits, scheme in ((8, "symmetric"), (8, "asymmetric"), (4, "symmetric")):
        lo, hi = activation_range(s, method="kl", bits=bits, scheme=scheme)
        assert hi < 0.5 * s.max and lo > 0.5 * s.min
        if scheme == "symmetric":
            assert lo == -hi
    relu = stats_of(x.relu())
    lo, hi = activation_range(relu, method="kl", bits=8, scheme="asymmetric")
    assert lo == 0.0 and 0 < hi < relu.max


def test_kl_keeps_full_range_of_uniform_data() -> None:
    s = stats_of(torch.rand(100_000, generator=torch.Generator().manual_seed(4)) * 2 - 1)
    lo, hi = activation_range(s, method="kl", bits=8, scheme="symmetric")
    assert hi > 0.97 * s.max  # nothing to gain from clipping a flat distribution


@pytest.mark.parametrize("scheme", ["symmetric", "asymmetric"])
@pytest.mark.parametrize("dist", ["gauss", "laplace"])
def test_range_error_predicts_actual_mse(
    dist: str, scheme: str, gauss: torch.Tensor, laplace_outliers: torch.Tensor
) -> None:
    x = gauss if dist == "gauss" else laplace_outliers
    s = stats_of(x)
    for method in METHODS:
        lo, hi = activation_range(s, method=method, bits=8, scheme=scheme)
        err = range_error(s, lo, hi, bits=8, scheme=scheme)
        assert err.mse == pytest.approx(actual_mse(x, lo, hi, 8, scheme), rel=0.02)
        assert err.mse == pytest.approx(err.rounding_mse + err.clipping_mse)
        assert 0.0 <= err.clip_fraction <= 1.0


def test_range_error_clip_fraction_counts_clipped_values(gauss: torch.Tensor) -> None:
    s = stats_of(gauss)
    err = range_error(s, -1.0, 1.0, bits=8, scheme="symmetric")
    # a code is clamped when |x| rounds beyond level 127, i.e. |x| > 127.5 steps of 1/127
    clamped = float((gauss.abs() > 127.5 / 127).float().mean())
    assert err.clip_fraction == pytest.approx(clamped, abs=2e-4)
    assert err.clip_fraction < float((gauss.abs() > 1.0).float().mean())
    assert err.clipping_mse > err.rounding_mse


def test_int8_minmax_sqnr_floor_on_gaussian(gauss: torch.Tensor) -> None:
    # Uniform rounding noise step**2/12 with step = max|x|/127 gives
    # SQNR = 10*log10(12 * 127**2) - 20*log10(max|x| / sigma) = 52.9 - 13.5 dB for the
    # ~4.7-sigma maximum of 200k Gaussian samples (6.02*8 + 1.76 = 49.9 dB is for a full-scale
    # uniform signal; the Gaussian's peak-to-rms ratio costs the rest). 38 dB leaves ~1.4 dB margin.
    s = stats_of(gauss)
    lo, hi = activation_range(s, method="minmax", bits=8, scheme="symmetric")
    err = range_error(s, lo, hi, bits=8, scheme="symmetric")
    assert 38.0 < err.sqnr_db < 42.0
    measured = 10 * math.log10(float(gauss.double().square().mean()) / actual_mse(gauss, lo, hi, 8, "symmetric"))
    assert err.sqnr_db == pytest.approx(measured, abs=0.1)


def test_all_zero_activation_has_infinite_sqnr() -> None:
    s = stats_of(torch.zeros(1000))
    for method in METHODS:
        lo, hi = activation_range(s, method=method, bits=8, scheme="asymmetric")
        assert (lo, hi) == (0.0, 0.0)
    err = range_error(s, 0.0, 0.0, bits=8, scheme="asymmetric")
    assert err.mse == 0.0 and err.sqnr_db == math.inf


def test_clipping_curve_tradeoff(laplace_outliers: torch.Tensor) -> None:
    curve = clipping_curve(stats_of(laplace_outliers), bits=4, scheme="symmetric", num=50)
    assert {k: v.shape for k, v in curve.items()} == {
        k: (50,) for k in ("alpha", "lo", "hi", "rounding_mse", "clipping_mse", "mse", "clip_fraction")
    }
    assert curve["alpha"][-1] == 1.0 and curve["clipping_mse"][-1] == 0.0
    assert curve["clipping_mse"][0] > curve["clipping_mse"][-1]
    assert curve["rounding_mse"][0] < curve["rounding_mse"][-1]
    assert curve["mse"].min() < curve["mse"][-1]


def test_activation_range_errors(gauss: torch.Tensor) -> None:
    s = stats_of(gauss)
    with pytest.raises(ConfigError, match=r"method: got 'entropy'; allowed: minmax, percentile, mse, kl"):
        activation_range(s, method="entropy", bits=8, scheme="symmetric")
    with pytest.raises(ConfigError, match=r"bits: got 9; allowed: an integer from 2 to 8"):
        activation_range(s, method="minmax", bits=9, scheme="symmetric")
    with pytest.raises(ConfigError, match="percentile: got 100"):
        activation_range(s, method="percentile", bits=8, scheme="symmetric", percentile=100)
    with pytest.raises(CalibrationError, match="no calibration data"):
        activation_range(TensorStats(), method="minmax", bits=8, scheme="symmetric")


# -- weights ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def conv_weight() -> torch.Tensor:
    gen = torch.Generator().manual_seed(5)
    ranges = torch.logspace(-3, 0, 32).view(32, 1, 1, 1)  # channel ranges 1000x apart
    return torch.randn(32, 20, 3, 3, generator=gen) * ranges  # K = 180: per_group(32) is ragged


@pytest.mark.parametrize("clipping", ["minmax", "percentile", "mse"])
@pytest.mark.parametrize(
    ("granularity", "group_size"), [("per_tensor", None), ("per_channel", None), ("per_group", 32)]
)
def test_more_bits_lower_weight_mse(
    conv_weight: torch.Tensor, granularity: str, group_size: int | None, clipping: str
) -> None:
    errs = [
        weight_error(
            conv_weight,
            weight_qparams(
                conv_weight,
                bits=b,
                scheme="symmetric",
                granularity=granularity,
                group_size=group_size,
                clipping=clipping,
            ),
        )["mse"]
        for b in range(2, 9)
    ]
    assert all(a > b for a, b in zip(errs, errs[1:], strict=False))


@pytest.mark.parametrize("scheme", ["symmetric", "asymmetric"])
def test_finer_granularity_lower_error(conv_weight: torch.Tensor, scheme: str) -> None:
    def mse(granularity: str, group_size: int | None = None) -> float:
        qp = weight_qparams(conv_weight, bits=4, scheme=scheme, granularity=granularity, group_size=group_size)
        return weight_error(conv_weight, qp)["mse"]

    assert mse("per_channel") < 0.5 * mse("per_tensor")
    assert mse("per_group", 32) <= mse("per_channel")


def test_per_channel_matches_torch_fake_quantize(conv_weight: torch.Tensor) -> None:
    for scheme in ("symmetric", "asymmetric"):
        qp = weight_qparams(conv_weight, bits=4, scheme=scheme, granularity="per_channel")
        ref = torch.fake_quantize_per_channel_affine(conv_weight, qp.scale, qp.zero_point, 0, qp.qmin, qp.qmax)
        assert torch.equal(fake_quantize_weight(conv_weight, qp), ref)


def test_ragged_group_matches_zero_padding() -> None:
    gen = torch.Generator().manual_seed(6)
    w = torch.randn(8, 70, generator=gen)  # groups of 32: 32, 32, 6
    padded = torch.cat([w, torch.zeros(8, 26)], dim=1)
    for clipping in ("minmax", "mse"):
        qp = weight_qparams(w, bits=4, scheme="asymmetric", granularity="per_group", group_size=32, clipping=clipping)
        qp_pad = weight_qparams(
            padded, bits=4, scheme="asymmetric", granularity="per_group", group_size=32, clipping=clipping
        )
        assert qp.scale.shape == (8, 3)
        assert torch.equal(qp.scale, qp_pad.scale) and torch.equal(qp.zero_point, qp_pad.zero_point)
        assert torch.equal(fake_quantize_weight(w, qp), fake_quantize_weight(padded, qp_pad)[:, :70])
    # the padding is never counted as data: a ragged group's percentile uses its 6 values only
    qp = weight_qparams(
        w, bits=8, scheme="asymmetric", granularity="per_group", group_size=32, clipping="percentile", percentile=90.0
    )
    tail = w[:, 64:].double()
    assert torch.allclose(qp.hi[:, 2].double(), torch.quantile(tail, 0.9, dim=1), atol=1e-6)
    assert torch.allclose(qp.lo[:, 2].double(), torch.quantile(tail, 0.1, dim=1), atol=1e-6)


def test_mse_clipping_never_worse_than_minmax(conv_weight: torch.Tensor) -> None:
    for granularity, gs in (("per_tensor", None), ("per_channel", None), ("per_group", 16)):
        e_min = weight_error(
            conv_weight, weight_qparams(conv_weight, bits=3, scheme="symmetric", granularity=granularity, group_size=gs)
        )
        e_mse = weight_error(
            conv_weight,
            weight_qparams(
                conv_weight, bits=3, scheme="symmetric", granularity=granularity, group_size=gs, clipping="mse"
            ),
        )
        assert e_mse["mse"] <= e_min["mse"]
        assert e_mse["clip_fraction"] > 0.0 == e_min["clip_fraction"]


def test_weight_qparams_shapes_and_codes(conv_weight: torch.Tensor) -> None:
    for granularity, gs, shape in (("per_tensor", None, ()), ("per_channel", None, (32,)), ("per_group", 32, (32, 6))):
        qp = weight_qparams(conv_weight, bits=4, scheme="asymmetric", granularity=granularity, group_size=gs)
        assert qp.scale.shape == qp.zero_point.shape == qp.lo.shape == qp.hi.shape == shape
        q = quantize_weight(conv_weight, qp)
        assert q.dtype == torch.int32 and q.shape == conv_weight.shape
        assert int(q.min()) >= 0 and int(q.max()) <= 15


def test_all_zero_channel_and_no_mutation(conv_weight: torch.Tensor) -> None:
    w = conv_weight.clone()
    w[3] = 0.0
    before = w.clone()
    qp = weight_qparams(w, bits=4, scheme="symmetric", granularity="per_channel", clipping="mse")
    fq = fake_quantize_weight(w, qp)
    assert torch.equal(w, before)
    assert bool(torch.isfinite(qp.scale).all()) and torch.equal(fq[3], torch.zeros_like(fq[3]))


def test_weight_error_fields(conv_weight: torch.Tensor) -> None:
    qp = weight_qparams(conv_weight, bits=8, scheme="symmetric", granularity="per_channel")
    err = weight_error(conv_weight, qp)
    assert set(err) == {"mse", "rounding_mse", "clipping_mse", "clip_fraction", "sqnr_db"}
    assert err["clip_fraction"] == 0.0 and err["clipping_mse"] == 0.0
    assert err["sqnr_db"] > 38.0  # INT8 per-channel on Gaussian rows: ~40 dB (see the activation floor)


def test_weight_errors() -> None:
    w = torch.randn(4, 8)
    with pytest.raises(ConfigError, match=r"clipping: got 'kl' for weights; allowed: minmax, percentile, mse"):
        weight_qparams(w, bits=8, scheme="symmetric", granularity="per_channel", clipping="kl")
    with pytest.raises(ConfigError, match=r"group_size: got None with per_group"):
        weight_qparams(w, bits=8, scheme="symmetric", granularity="per_group")
    with pytest.raises(ConfigError, match=r"granularity: got 'per_row'"):
        weight_qparams(w, bits=8, scheme="symmetric", granularity="per_row")
    with pytest.raises(ConfigError, match=r"bits: got 1"):
        weight_qparams(w, bits=1, scheme="symmetric", granularity="per_channel")
    w[1, 2] = math.nan
    with pytest.raises(ModelError, match=r"^features\.0: weights contain NaN or Inf"):
        weight_qparams(w, bits=8, scheme="symmetric", granularity="per_channel", name="features.0")


def test_kl_is_not_dragged_down_by_a_spike_of_zeros() -> None:
    """Post-ReLU tensors are often more than half exact zeros. Without neutralising the zero bin
    (as NVIDIA's pytorch-quantization does), KL picked a threshold of ~1% of the range at 4 bits
    and the digits CNN fell to 20% top-1."""
    g = torch.Generator().manual_seed(0)
    mags = torch.empty(200_000).exponential_(2.0, generator=g).clamp(max=6.0)  # long tail up to 6
    x = torch.where(torch.rand(200_000, generator=g) < 0.6, 0.0, mags)  # 60% exact zeros, as after ReLU
    stats = TensorStats()
    stats.update(x, "relu_out")
    for bits in (8, 4):
        lo, hi = activation_range(stats, method="kl", bits=bits, scheme="asymmetric")
        assert lo == 0.0
        assert hi > 0.4 * float(x.max()), (bits, hi)
