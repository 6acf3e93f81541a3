"""ptq_core.timing: the one median timer warms up and bounds its repeats by a time budget."""

from __future__ import annotations

import time

from ptq_core.timing import MAX_REPEATS, MIN_REPEATS, median_ms


def test_median_ms_warms_up_and_bounds_repeats() -> None:
    calls: list[int] = []
    ms, repeats = median_ms(lambda: calls.append(1), budget_s=1.0, warmup=2)
    assert repeats == MAX_REPEATS and len(calls) == 2 + repeats and ms >= 0  # a fast call: the most repeats
    calls.clear()
    ms, repeats = median_ms(lambda: calls.append(1) or time.sleep(0.01), budget_s=0.02, warmup=2)
    assert repeats == MIN_REPEATS and len(calls) == 1 + repeats and ms >= 10  # a slow call: one warm-up, the fewest
