"""Wall-clock latency: the one median timer every latency in a Result comes from.

What lives here: :func:`median_ms` (warm-up calls, then the median of as many timed repeats as
fit a time budget, at least :data:`MIN_REPEATS`, at most :data:`MAX_REPEATS`) and the budgets
its callers use. It times the integer runtime in the onnxruntime check
(:mod:`ptq_core.onnx.runtime`), the simulated latency of the onnxruntime backend
(:mod:`ptq_core.onnx.backend`) and the simulated latency of the PyTorch backend
(:mod:`ptq_core.pipeline`).

Not here: what is timed. Sessions, modules, ``torch.inference_mode`` and the synchronization a
CUDA device needs (it runs asynchronously) belong to the function the caller passes in.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from typing import Any

LATENCY_BUDGET_S = 0.4  # the runtime check, per measurement (model x batch size), after warm-up
# A simulated latency: measured on every torch-backend evaluate (and per onnxruntime session), so it
# must not cost more than the what-if around it. Measured on the digits CNN (2 cores): 16 repeats of
# the FP32 model and 9 of the fake-quantized one, ~20 ms together in a ~0.1 s re-evaluation, where
# the runtime check's 0.4 s would take 50 repeats each and nearly double it; large models get 3.
SIMULATED_BUDGET_S = 0.01
MIN_REPEATS, MAX_REPEATS = 3, 50


def median_ms(fn: Callable[[], Any], *, budget_s: float = LATENCY_BUDGET_S, warmup: int = 2) -> tuple[float, int]:
    """Median wall time of ``fn()`` in ms after ``warmup`` calls, and the number of timed repeats.

    Repeats: as many as fit in ``budget_s`` judged from the first timed call, clamped to
    [MIN_REPEATS, MAX_REPEATS], so small models get many repeats and large ones a few; a call
    that alone takes a quarter of the budget gets one warm-up call, not ``warmup``.
    """
    for i in range(warmup):
        t = time.perf_counter()
        fn()
        if i == 0 and time.perf_counter() - t > budget_s / 4:
            break
    t = time.perf_counter()
    fn()
    first = time.perf_counter() - t
    repeats = int(min(MAX_REPEATS, max(MIN_REPEATS, budget_s / max(first, 1e-6))))
    times = [first * 1e3]
    for _ in range(repeats - 1):
        t = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t) * 1e3)
    return statistics.median(times), repeats
