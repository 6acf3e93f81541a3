"""Batches side by side: each job on one thread, several jobs at once, results in job order.

What lives here: :func:`workers` (how many jobs run at once) and :func:`map_ordered` (run jobs,
report progress from the calling thread, stop early when asked). Every forward pass the engine
makes over a data set goes through it: statistics collection, the FP32 reference, the PyTorch
simulation and the onnxruntime backend's sessions. Not here: what a job computes.

Why batches and not threads inside each op. PyTorch's intra-op pool splits every op across
threads and waits at a barrier after it; on a shared machine one descheduled thread stalls the
op, and small elementwise ops (the histogram passes of calibration) pay the barrier for little
work. One-thread jobs side by side have no barrier, and give the same numbers whatever the core
count, since each batch is computed the same way.

Jobs share read-only modules (a forward in ``inference_mode`` mutates nothing) and must not share
mutable state; results come back in the order of the jobs, whatever order they finished in.
``on_step`` is called from the calling thread only; if it raises (the dashboard raises when the
user has changed a control and the result is no longer wanted) or a job raises, jobs not yet
started are cancelled and the exception propagates: the first failing job's, in job order.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from typing import TypeVar

import torch

from .progress import StepFn

T = TypeVar("T")
R = TypeVar("R")

WORKERS_ENV = "PTQ_WORKERS"


def workers() -> int:
    """Jobs at once: ``PTQ_WORKERS`` if set, else the CPU cores this process may use divided by torch's intra-op threads."""
    raw = os.environ.get(WORKERS_ENV, "").strip()
    if raw.isdigit() and int(raw) > 0:
        return int(raw)
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        cores = os.cpu_count() or 1
    return max(1, cores // max(1, torch.get_num_threads()))


def map_ordered(
    fn: Callable[[T], R], jobs: Sequence[T], *, max_workers: int | None = None, on_step: StepFn | None = None,
) -> list[R]:
    """``[fn(job) for job in jobs]``, run ``max_workers`` at a time (default :func:`workers`), in job order.

    One worker runs the jobs in the calling thread, one after the other (no thread at all).
    """
    n = len(jobs)
    count = min(max_workers or workers(), n)
    if count <= 1:
        out = []
        for i, job in enumerate(jobs):
            out.append(fn(job))
            if on_step is not None:
                on_step(i + 1, n)
        return out
    results: dict[int, R] = {}
    errors: dict[int, BaseException] = {}
    pool = ThreadPoolExecutor(max_workers=count, thread_name_prefix="ptq_batch")
    pending: dict[Future[R], int] = {}
    next_job = 0
    try:
        # Submit only as many jobs as run at once (plus one each, to keep workers busy): a cancelled
        # run then stops after the jobs in flight, and at most that many batches are in memory.
        while next_job < min(n, 2 * count):
            pending[pool.submit(fn, jobs[next_job])] = next_job
            next_job += 1
        done_count = 0
        while pending:
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in finished:
                k = pending.pop(future)
                error = future.exception()
                if error is not None:
                    errors[k] = error
                else:
                    results[k] = future.result()
                done_count += 1
            if errors:
                continue  # no new jobs; let those in flight finish, then raise
            while next_job < n and len(pending) < 2 * count:
                pending[pool.submit(fn, jobs[next_job])] = next_job
                next_job += 1
            if on_step is not None:
                on_step(done_count, n)
    finally:
        for future in pending:
            future.cancel()
        pool.shutdown(wait=True, cancel_futures=True)
    if errors:
        raise errors[min(errors)]
    return [results[i] for i in range(n)]
