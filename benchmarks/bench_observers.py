"""How much calibration statistics cost, next to the forward pass that produces the tensor.

Run: ``PYTHONPATH=. .venv/bin/python benchmarks/bench_observers.py`` (or ``make bench``).

For each activation size it prints the time of ``TensorStats.update`` (the chosen design: one compiled
pass for min, max and counts, ``ptq_core.binning.histogram``, on float32 CPU tensors of 128K elements or
more; aminmax, then chunked multiply/floor/int16 cast/bincount below that), of the alternatives it was picked
over (``torch.histc`` over [-R, R], one unchunked int64 ``bincount``), and of a 3x3 Conv2d
forward producing a tensor of that size (in_channels = out_channels), plus the overhead
ratio update / conv. Then the time of each ``activation_range`` method on one statistics object.
Times are the minimum over repeats (the least disturbed by other processes), in ms.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch

from ptq_core.observers import NUM_BINS, TensorStats
from ptq_core.ranges import activation_range, clipping_curve

SHAPES = [(32, 32, 112, 112), (32, 16, 56, 56), (32, 64, 28, 28), (32, 256, 14, 14), (32, 64, 8, 8), (1, 32, 112, 112)]


def best_ms(fn: Callable[[], object], repeats: int = 7) -> float:
    fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times) * 1e3


def update_once(x: torch.Tensor) -> TensorStats:
    stats = TensorStats()
    stats.update(x, "bench")
    return stats


def histc(x: torch.Tensor) -> torch.Tensor:
    lo, hi = torch.aminmax(x)
    r = math.ldexp(1.0, math.frexp(max(-float(lo), float(hi)))[1])
    return torch.histc(x, bins=2 * NUM_BINS, min=-r, max=r)


def bincount_int64(x: torch.Tensor) -> torch.Tensor:
    lo, hi = torch.aminmax(x)
    r = math.ldexp(1.0, math.frexp(max(-float(lo), float(hi)))[1])
    idx = torch.floor(x.reshape(-1) * (NUM_BINS / r)).add_(NUM_BINS).to(torch.int64)
    return torch.bincount(idx, minlength=2 * NUM_BINS)


def main() -> None:
    gen = torch.Generator().manual_seed(0)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; times in ms (min of 7)")
    header = (
        f"{'tensor':>20} {'elements':>10} {'update':>8} {'histc':>8} {'bc int64':>9} {'conv3x3':>8} {'update/conv':>11}"
    )
    print(header)
    print("-" * len(header))
    for shape in SHAPES:
        x = torch.randn(shape, generator=gen)
        conv = torch.nn.Conv2d(shape[1], shape[1], 3, padding=1)
        inp = torch.randn(shape, generator=gen)
        with torch.inference_mode():
            t_conv = best_ms(lambda conv=conv, inp=inp: conv(inp))
        t_upd = best_ms(lambda x=x: update_once(x))
        t_histc = best_ms(lambda x=x: histc(x))
        t_bc = best_ms(lambda x=x: bincount_int64(x))
        print(
            f"{'x'.join(map(str, shape)):>20} {x.numel():>10} {t_upd:>8.2f} {t_histc:>8.2f} {t_bc:>9.2f} "
            f"{t_conv:>8.2f} {t_upd / t_conv:>10.0%}"
        )

    stats = TensorStats()
    for _ in range(8):  # 8 calibration batches of a heavy-tailed activation
        stats.update(torch.distributions.StudentT(4.0).sample((32, 64, 28, 28)), "bench")
    print()
    print(f"activation_range on {stats.count} values ({stats.num_batches} batches), ms:")
    for bits, scheme in ((8, "asymmetric"), (8, "symmetric"), (4, "symmetric")):
        cells = []
        for method in ("minmax", "percentile", "mse", "kl"):
            ms = best_ms(lambda m=method, b=bits, s=scheme: activation_range(stats, method=m, bits=b, scheme=s))
            cells.append(f"{method} {ms:6.2f}")
        curve_ms = best_ms(lambda b=bits, s=scheme: clipping_curve(stats, bits=b, scheme=s))
        print(f"  {bits}-bit {scheme:>10}: " + "  ".join(cells) + f"  clipping_curve {curve_ms:6.2f}")


if __name__ == "__main__":
    main()
