"""map_ordered: results in job order whatever finishes first, the first failing job's error, a stop from on_step."""

from __future__ import annotations

import threading
import time

import pytest

from ptq_core.parallel import map_ordered, workers


@pytest.mark.parametrize("max_workers", [1, 2, 4])
def test_results_come_back_in_job_order(max_workers: int) -> None:
    def job(i: int) -> int:
        time.sleep(0.002 * ((7 * i) % 5))  # finish out of order
        return i * i

    steps: list[tuple[int, int]] = []
    out = map_ordered(job, list(range(12)), max_workers=max_workers, on_step=lambda d, t: steps.append((d, t)))
    assert out == [i * i for i in range(12)]
    assert steps[-1] == (12, 12) and all(t == 12 for _, t in steps)
    assert [d for d, _ in steps] == sorted(d for d, _ in steps)


def test_on_step_runs_in_the_calling_thread() -> None:
    caller = threading.get_ident()
    seen: set[int] = set()
    map_ordered(lambda i: i, list(range(6)), max_workers=3, on_step=lambda d, t: seen.add(threading.get_ident()))
    assert seen == {caller}


def test_the_first_failing_job_in_order_is_raised_and_later_jobs_do_not_start() -> None:
    started: list[int] = []

    def job(i: int) -> int:
        started.append(i)
        if i in (3, 5):
            time.sleep(0.01 if i == 3 else 0.0)  # 5 fails first in time, 3 first in order
            raise ValueError(f"job {i}")
        return i

    with pytest.raises(ValueError, match="job 3"):
        map_ordered(job, list(range(40)), max_workers=2)
    assert max(started) < 12  # at most the jobs in flight and queued when the failure was seen


class Stop(Exception):
    pass


def test_an_exception_from_on_step_stops_the_run() -> None:
    started: list[int] = []

    def job(i: int) -> int:
        started.append(i)
        time.sleep(0.005)
        return i

    def on_step(done: int, total: int) -> None:
        if done >= 2:
            raise Stop  # as the dashboard does when the user has moved on

    with pytest.raises(Stop):
        map_ordered(job, list(range(50)), max_workers=2, on_step=on_step)
    assert len(started) < 10


def test_workers_follows_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PTQ_WORKERS", "3")
    assert workers() == 3
    monkeypatch.setenv("PTQ_WORKERS", "zero")
    assert workers() >= 1
