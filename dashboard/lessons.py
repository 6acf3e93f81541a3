"""The Learn page's numbers: a small tensor quantized step by step, and the clipping tradeoff on a sample.

Every quantization number comes from the same ptq_core functions the rest of the app uses
(``int_range``, ``qparams_from_range``, ``quantize``, ``dequantize``, ``TensorStats``,
``clipping_curve``, ``activation_range``, ``range_error``); this module only makes the
example data and lays the intermediate values out for display. No Streamlit here.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ptq_core.config import ACTIVATION_CLIPPING
from ptq_core.observers import TensorStats
from ptq_core.primitives import dequantize, int_range, qparams_from_range, quantize
from ptq_core.ranges import activation_range, clipping_curve, range_error

MAX_VALUES = 32  # the step-by-step table stays readable
DISTRIBUTIONS = {
    "gaussian": "Bell curve (Gaussian): few outliers",
    "laplace": "Heavy tails (Laplace): more large values",
    "relu_outliers": "ReLU output with rare outliers: all ≥ 0, a few huge",
}
CLIP_PERCENTILE = 99.9  # the percentile method's setting on the Learn page (a common choice)


def parse_values(text: str) -> np.ndarray:
    """``"-1.2, 0.3 2"`` -> float32 array; ValueError with a readable message otherwise."""
    parts = [p for p in text.replace(";", ",").replace(" ", ",").split(",") if p.strip()]
    if not parts:
        raise ValueError("type a few numbers separated by commas, e.g. -1.2, 0.3, 2")
    if len(parts) > MAX_VALUES:
        raise ValueError(f"at most {MAX_VALUES} numbers, got {len(parts)}")
    try:
        values = np.array([float(p) for p in parts], dtype=np.float32)
    except ValueError:
        bad = next(p for p in parts if not _is_float(p))
        raise ValueError(f"{bad.strip()!r} is not a number") from None
    if not np.isfinite(values).all():
        raise ValueError("numbers must be finite (no inf or nan)")
    return values


def _is_float(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def random_values(seed: int, n: int = 8) -> list[float]:
    """``n`` values from N(0.3, 1), rounded to 2 decimals so they are easy to read."""
    g = torch.Generator().manual_seed(seed)
    return [round(float(v), 2) for v in (torch.randn(n, generator=g) + 0.3)]


def quantize_steps(x: np.ndarray, bits: int, scheme: str, shrink: float = 1.0) -> dict[str, Any]:
    """Every intermediate of quantizing ``x`` with the range ``shrink * [min, max]``.

    The unclamped code uses ``quantize`` with an integer range too wide to clamp anything, so
    the step "round" and the step "clamp" can be shown apart.
    """
    xt = torch.as_tensor(x, dtype=torch.float32)
    qmin, qmax = int_range(bits, scheme)
    lo, hi = float(xt.min()) * shrink, float(xt.max()) * shrink
    scale_t, zp_t = qparams_from_range(torch.tensor(lo), torch.tensor(hi), bits, scheme)
    unclamped = quantize(xt, scale_t, zp_t, -(2**30), 2**30)
    q = quantize(xt, scale_t, zp_t, qmin, qmax)
    x_hat = dequantize(q, scale_t, zp_t)
    levels = dequantize(torch.arange(qmin, qmax + 1, dtype=torch.int32), scale_t, zp_t)
    return {
        "bits": bits, "scheme": scheme, "qmin": qmin, "qmax": qmax,
        "lo": lo, "hi": hi,  # the chosen range, before it is widened to contain 0
        "lo0": min(lo, 0.0), "hi0": max(hi, 0.0),  # widened to contain 0: what qparams_from_range uses
        "scale": float(scale_t), "zero_point": int(zp_t),
        "x": x, "scaled": (xt / scale_t).numpy(), "unclamped": unclamped.numpy(), "q": q.numpy(),
        "x_hat": x_hat.numpy(), "error": (x_hat - xt).numpy(), "levels": levels.numpy(),
        "clamped": int((unclamped != q).sum()),
    }


def sample(distribution: str, n: int, seed: int) -> np.ndarray:
    """``n`` float32 values of one of :data:`DISTRIBUTIONS` (seeded, so a class sees the same data)."""
    g = torch.Generator().manual_seed(seed)
    if distribution == "gaussian":
        x = torch.randn(n, generator=g)
    elif distribution == "laplace":
        u = torch.rand(n, generator=g) - 0.5
        x = -torch.sign(u) * torch.log1p(-2 * u.abs())
    elif distribution == "relu_outliers":
        x = torch.relu(torch.randn(n, generator=g))
        k = max(1, n // 2000)  # 0.05 % outliers, 5-10x the typical value: what a calibration set often holds
        x[torch.randperm(n, generator=g)[:k]] = 5 + 5 * torch.rand(k, generator=g)
    else:
        raise ValueError(f"distribution: got {distribution!r}; allowed: {', '.join(DISTRIBUTIONS)}")
    return x.to(torch.float32).numpy()


def clipping_lesson(values: np.ndarray, bits: int, scheme: str, num: int = 200) -> dict[str, Any]:
    """The rounding/clipping curve of ``values`` and the range each clipping method picks, with its error."""
    stats = TensorStats()
    stats.update(torch.as_tensor(values), "sample")
    curve = clipping_curve(stats, bits=bits, scheme=scheme, num=num)
    methods = []
    for method in ACTIVATION_CLIPPING:
        lo, hi = activation_range(stats, method=method, bits=bits, scheme=scheme, percentile=CLIP_PERCENTILE)
        err = range_error(stats, lo, hi, bits=bits, scheme=scheme)
        methods.append({"method": method, "lo": lo, "hi": hi, "threshold": max(abs(lo), abs(hi)),
                        "mse": err.mse, "rounding_mse": err.rounding_mse, "clipping_mse": err.clipping_mse,
                        "clip_fraction": err.clip_fraction})
    return {"curve": curve, "methods": methods, "min": stats.min, "max": stats.max, "count": stats.count}


# -- AdaRound on one small layer ---------------------------------------------------------------------
ADAROUND_SHAPE = (8, 16)  # output x input channels: a heatmap that can be read weight by weight
ADAROUND_BITS = 3  # coarse enough that rounding decisions matter, as at INT4 and below on a real model
ADAROUND_COLUMNS = 512  # input vectors the layer is fitted on (the "calibration set")
ADAROUND_ITERATIONS = 500  # about half a second here (one thread); enough for every h(V) to settle at 0 or 1


def adaround_lesson(seed: int = 0, iterations: int = ADAROUND_ITERATIONS) -> dict[str, Any]:
    """Round one seeded random layer ``y = W x`` to 3 bits (per-channel symmetric) by nearest and by AdaRound.

    The inputs ``x`` are correlated (a random mix of independent signals), as a real layer's inputs are: then
    errors of weights that see similar inputs can cancel, which is what AdaRound exploits. Returns the weights,
    both roundings, which weights AdaRound rounded the other way (``direction``: +1 up where nearest rounds down,
    -1 down where nearest rounds up, 0 the same), and the weight and output errors (MSE) of both.
    """
    from ptq_core.algorithms.adaround import adaround_layer  # torch optimisation: imported when the lesson runs

    g = torch.Generator().manual_seed(seed)
    out_ch, in_ch = ADAROUND_SHAPE
    w = torch.randn(out_ch, in_ch, generator=g) * 0.5
    mix = torch.eye(in_ch) + torch.randn(in_ch, in_ch, generator=g) * 0.6
    x = mix @ torch.randn(in_ch, ADAROUND_COLUMNS, generator=g)
    qmin, qmax = int_range(ADAROUND_BITS, "symmetric")
    scale, zero_point = qparams_from_range(-w.abs().amax(1), w.abs().amax(1), ADAROUND_BITS, "symmetric")
    scale_w = scale[:, None].expand_as(w)
    zp_w = zero_point[:, None].expand_as(w).float()
    y = w @ x
    nearest = dequantize(quantize(w, scale_w, zp_w, qmin, qmax), scale_w, zp_w)
    learned, stats = adaround_layer(w[None], scale_w[None], zp_w[None], qmin, qmax, torch.zeros(1, out_ch), x[None],
                                    y[None], lambda t: t, iterations=iterations, seed=seed)
    learned = learned[0]
    direction = torch.round((learned - nearest) / scale_w).clamp(-1, 1)
    return {
        "bits": ADAROUND_BITS, "shape": ADAROUND_SHAPE, "columns": ADAROUND_COLUMNS, "iterations": iterations,
        "w": w.numpy(), "nearest": nearest.numpy(), "adaround": learned.numpy(), "direction": direction.numpy(),
        "flipped": int((direction != 0).sum()),
        "weight_mse_nearest": float((nearest - w).square().mean()),
        "weight_mse_adaround": float((learned - w).square().mean()),
        # the layer's output error, summed over the output channels and averaged over the input vectors (the
        # quantity AdaRound minimises): adaround_layer's own measure, so the lesson shows what the engine reports
        "output_mse_nearest": stats["output_mse_nearest"],
        "output_mse_adaround": stats["output_mse"],
    }
