"""ptq_core.primitives: integer ranges, qparams, bit-exactness against torch, weight layouts."""

from __future__ import annotations

import pytest
import torch

from ptq_core.errors import ConfigError
from ptq_core.primitives import (
    MIN_SCALE,
    broadcast_to_weight,
    dequantize,
    expand_groups,
    fake_quantize,
    group_view,
    int_range,
    qparams_from_range,
    quantize,
    weight_minmax,
)

BITS = range(2, 9)
SCHEMES = ("symmetric", "asymmetric")


def _data(gen: torch.Generator, scale: torch.Tensor, n: int = 2000) -> torch.Tensor:
    """Gaussian values of several magnitudes plus values exactly on .5 rounding boundaries."""
    spread = float(torch.rand((), generator=gen)) * 300
    x = torch.randn(n, generator=gen) * spread * float(scale.max())
    k = torch.randint(-300, 300, (n // 4,), generator=gen).float()
    s = scale.reshape(-1)[: n // 4] if scale.numel() > 1 else scale
    return torch.cat([x, (k + 0.5) * s, (k + 0.5) / (1.0 / s), torch.zeros(3)])


def test_int_range_values() -> None:
    assert int_range(8, "symmetric") == (-127, 127)
    assert int_range(4, "symmetric") == (-7, 7)
    assert int_range(2, "symmetric") == (-1, 1)
    assert int_range(8, "asymmetric") == (0, 255)
    assert int_range(4, "asymmetric") == (0, 15)


@pytest.mark.parametrize("bits", [1, 9, 0, 16, True, 8.0, "8"])
def test_int_range_rejects_bits(bits: object) -> None:
    with pytest.raises(ConfigError, match=r"bits: got .*allowed: an integer from 2 to 8"):
        int_range(bits, "symmetric")  # type: ignore[arg-type]


def test_int_range_rejects_scheme() -> None:
    with pytest.raises(ConfigError, match=r"scheme: got 'affine'; allowed: symmetric, asymmetric"):
        int_range(8, "affine")


def test_worked_example_8bit_asymmetric() -> None:
    # range [-1, 2] -> scale = 3/255, zero_point = 0 - round(-1 / scale) = 85
    scale, zp = qparams_from_range(torch.tensor(-1.0), torch.tensor(2.0), 8, "asymmetric")
    assert scale.dtype == torch.float32 and zp.dtype == torch.int32
    assert scale.item() == pytest.approx(3.0 / 255.0, rel=1e-7)
    assert zp.item() == 85
    x = torch.tensor([-1.0, 0.0, 0.3, 2.0])
    q = quantize(x, scale, zp, 0, 255)
    # 0.3 * float32(1/scale) = 25.500002 -> 26 steps above zero -> code 111
    assert q.tolist() == [0, 85, 111, 255]
    x_hat = dequantize(q, scale, zp)
    assert torch.equal(x_hat, torch.tensor([-1.0, 0.0, 26 * scale.item(), 2.0]))
    assert x_hat[2].item() == pytest.approx(0.30588236, abs=1e-8)


def test_worked_example_symmetric() -> None:
    scale, zp = qparams_from_range(torch.tensor(-1.0), torch.tensor(2.0), 8, "symmetric")
    assert scale.item() == pytest.approx(2.0 / 127.0) and zp.item() == 0


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("bits", BITS)
def test_fake_quantize_bit_exact_per_tensor(bits: int, scheme: str) -> None:
    gen = torch.Generator().manual_seed(bits * 10 + len(scheme))
    qmin, qmax = int_range(bits, scheme)
    for _ in range(20):
        scale = torch.rand((), generator=gen) * 0.5 + 1e-4
        zp = (
            torch.randint(qmin, qmax + 1, (), generator=gen, dtype=torch.int32)
            if scheme == "asymmetric"
            else torch.tensor(0, dtype=torch.int32)
        )
        x = _data(gen, scale)
        ours = fake_quantize(x, scale, zp, qmin, qmax)
        ref = torch.fake_quantize_per_tensor_affine(x, float(scale), int(zp), qmin, qmax)
        assert torch.equal(ours, ref)
        assert torch.equal(dequantize(quantize(x, scale, zp, qmin, qmax), scale, zp), ref)


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("bits", [2, 4, 8])
@pytest.mark.parametrize("axis", [0, 1])
def test_fake_quantize_bit_exact_per_channel(bits: int, scheme: str, axis: int) -> None:
    gen = torch.Generator().manual_seed(bits + axis)
    qmin, qmax = int_range(bits, scheme)
    w = torch.randn(16, 12, 3, 3, generator=gen) * 2
    n = w.shape[axis]
    for _ in range(10):
        scale = torch.rand(n, generator=gen) * 0.2 + 1e-3
        zp = (
            torch.randint(qmin, qmax + 1, (n,), generator=gen, dtype=torch.int32)
            if scheme == "asymmetric"
            else torch.zeros(n, dtype=torch.int32)
        )
        shape = [1] * w.dim()
        shape[axis] = n
        w[0, 0, 0, :] = 2.5 * scale[0]  # values on a rounding boundary
        ours = fake_quantize(w, scale.view(shape), zp.view(shape), qmin, qmax)
        ref = torch.fake_quantize_per_channel_affine(w, scale, zp, axis, qmin, qmax)
        assert torch.equal(ours, ref)


def test_qparams_match_torch_ao_observers() -> None:
    obs = pytest.importorskip("torch.ao.quantization.observer")
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(64, 100, generator=gen) * torch.rand(64, 1, generator=gen) + 0.3
    o = obs.MinMaxObserver(dtype=torch.quint8, qscheme=torch.per_tensor_affine, quant_min=0, quant_max=255)
    o(x)
    ref_s, ref_z = o.calculate_qparams()
    s, z = qparams_from_range(x.min(), x.max(), 8, "asymmetric")
    assert torch.equal(s, ref_s.reshape(())) and torch.equal(z, ref_z.reshape(()).to(torch.int32))
    o = obs.PerChannelMinMaxObserver(
        ch_axis=0, dtype=torch.qint8, qscheme=torch.per_channel_symmetric, quant_min=-127, quant_max=127
    )
    o(x)
    ref_s, ref_z = o.calculate_qparams()
    s, z = qparams_from_range(x.amin(1), x.amax(1), 8, "symmetric")
    assert torch.equal(s, ref_s) and torch.equal(z, ref_z.to(torch.int32))


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("bits", BITS)
def test_roundtrip_within_half_step_and_zero_exact(bits: int, scheme: str) -> None:
    gen = torch.Generator().manual_seed(bits)
    qmin, qmax = int_range(bits, scheme)
    lo = -torch.rand(50, generator=gen) * 3
    hi = torch.rand(50, generator=gen) * 5
    scale, zp = qparams_from_range(lo, hi, bits, scheme)
    # points inside the representable range of each of the 50 quantizers
    c_lo, c_hi = (qmin - zp) * scale, (qmax - zp) * scale
    t = torch.rand(50, 200, generator=gen)
    x = c_lo[:, None] + t * (c_hi - c_lo)[:, None]
    err = (dequantize(quantize(x, scale[:, None], zp[:, None], qmin, qmax), scale[:, None], zp[:, None]) - x).abs()
    assert bool((err <= scale[:, None] / 2 * (1 + 1e-5)).all())
    zeros = fake_quantize(torch.zeros(50, 1), scale[:, None], zp[:, None], qmin, qmax)
    assert bool((zeros == 0).all())


def test_range_widened_to_contain_zero() -> None:
    s, z = qparams_from_range(torch.tensor(2.0), torch.tensor(6.0), 8, "asymmetric")  # [0, 6]
    assert z.item() == 0 and s.item() == pytest.approx(6 / 255)
    s, z = qparams_from_range(torch.tensor(-6.0), torch.tensor(-2.0), 8, "asymmetric")  # [-6, 0]
    assert z.item() == 255


@pytest.mark.parametrize("scheme", SCHEMES)
def test_all_zero_channel_is_finite(scheme: str) -> None:
    s, z = qparams_from_range(torch.zeros(3), torch.zeros(3), 4, scheme)
    assert torch.equal(s, torch.full((3,), MIN_SCALE))
    qmin, qmax = int_range(4, scheme)
    out = fake_quantize(torch.zeros(3, 5), s[:, None], z[:, None], qmin, qmax)
    assert torch.equal(out, torch.zeros(3, 5))


def test_fake_quantize_does_not_mutate_input() -> None:
    x = torch.randn(100)
    before = x.clone()
    fake_quantize(x, torch.tensor(0.1), torch.tensor(3), 0, 15)
    assert torch.equal(x, before)


def test_expand_groups_ragged() -> None:
    p = torch.tensor([[1.0, 2.0], [3.0, 4.0]])
    assert expand_groups(p, 3, 2).tolist() == [[1.0, 1.0, 2.0], [3.0, 3.0, 4.0]]
    assert expand_groups(p, 4, 2).tolist() == [[1.0, 1.0, 2.0, 2.0], [3.0, 3.0, 4.0, 4.0]]


def test_group_view_pads_last_group() -> None:
    rows = torch.arange(1.0, 6.0).reshape(1, 5)
    assert group_view(rows, 2).tolist() == [[[1.0, 2.0], [3.0, 4.0], [5.0, 0.0]]]


def test_weight_minmax_granularities() -> None:
    w = torch.tensor([[[1.0, -2.0, 3.0]], [[0.5, 0.25, -4.0]]])  # [out=2, 1, 3] -> K = 3
    lo, hi = weight_minmax(w, "per_tensor")
    assert (lo.item(), hi.item()) == (-4.0, 3.0)
    lo, hi = weight_minmax(w, "per_channel")
    assert lo.tolist() == [-2.0, -4.0] and hi.tolist() == [3.0, 0.5]
    lo, hi = weight_minmax(w, "per_group", 2)
    # groups: [1, -2], [3 | 0-pad]; [0.5, 0.25], [-4 | 0-pad]
    assert lo.tolist() == [[-2.0, 0.0], [0.25, -4.0]] and hi.tolist() == [[1.0, 3.0], [0.5, 0.0]]


def test_broadcast_to_weight_shapes() -> None:
    shape = (4, 3, 2, 2)  # K = 12
    assert broadcast_to_weight(torch.tensor(2.0), shape, "per_tensor", None).shape == ()
    assert broadcast_to_weight(torch.ones(4), shape, "per_channel", None).shape == (4, 1, 1, 1)
    per_group = broadcast_to_weight(torch.arange(8.0).reshape(4, 2), shape, "per_group", 8)
    assert per_group.shape == shape
    assert per_group[0].reshape(-1).tolist() == [0.0] * 8 + [1.0] * 4


@pytest.mark.parametrize(("granularity", "group_size"), [("per_row", None), ("per_group", None), ("per_group", 0)])
def test_weight_minmax_rejects_bad_granularity(granularity: str, group_size: int | None) -> None:
    with pytest.raises(ConfigError, match="allowed"):
        weight_minmax(torch.ones(2, 2), granularity, group_size)
