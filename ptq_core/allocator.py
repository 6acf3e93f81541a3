"""How the process allocates memory: keep freed activation buffers instead of returning them to the OS.

What lives here: :func:`tune_malloc`, which the entry points (``python -m ptq_core``, the
dashboard, the benchmarks) call once at start-up. Importing ptq_core changes nothing; a program
that uses ptq_core as a library decides for itself.

Why. glibc serves every allocation above ``M_MMAP_THRESHOLD`` (128 KiB, adapted up to 32 MiB)
with a fresh ``mmap`` and unmaps it on free, and trims the heap top above ``M_TRIM_THRESHOLD``.
A CNN forward allocates and frees one large activation per op, so each op's output is faulted
in page by page again: the kernel zeroes every page, which shows as *system* time. Measured on
EfficientNet-Lite0 (2-core AMD EPYC, torch 2.14.1, 128 images of 224x224, one thread):

=========================  ==============  ==============
                            default glibc   tuned (here)
=========================  ==============  ==============
batch 128                   9.0 s (6.3 s    3.6 s (0.1 s
                            of it system)   system)
batch 8                     4.7 s           3.9 s
2 threads, batch 32         4.1 s           2.5 s
=========================  ==============  ==============

The dashboard's first EfficientNet-Lite0 evaluation spent 98 s in the kernel against 70 s of
user time before this (issue 9). Raising both thresholds to 1 GiB keeps freed buffers in the
heap for reuse. Threads other than the main one get heaps of their own of at most 64 MiB, whose
large allocations are mapped fresh every time whatever the threshold, so one arena serves every
thread (``M_ARENA_MAX`` 1): two one-thread forward workers (:mod:`ptq_core.parallel`) over the
same 128 images took 2.8 s at batch 16 with per-thread arenas and 2.2 s with one (one worker:
3.9 s). The lock this adds is taken a few hundred times per forward, not per element. the process's resident size then stays near its peak instead of shrinking
between evaluations, which the bounded batch sizes keep small. Set ``PTQ_MALLOC_TUNING=0`` to
leave the allocator alone. Other C libraries (musl, macOS) have no ``mallopt``: nothing happens.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import os

log = logging.getLogger(__name__)

ENV = "PTQ_MALLOC_TUNING"
THRESHOLD_BYTES = 1 << 30  # allocations below 1 GiB come from the heap; up to 1 GiB of free heap is kept
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD, _M_ARENA_MAX = -1, -3, -8  # glibc's mallopt parameter numbers (malloc.h)
_applied: bool | None = None


def tune_malloc() -> bool:
    """Raise glibc's mmap and trim thresholds and use one arena, once per process; True if the settings are in effect."""
    global _applied
    if _applied is not None:
        return _applied
    _applied = False
    if os.environ.get(ENV, "1").strip() in ("0", "false", "no", "off"):
        log.info("%s=0: allocator left as it is", ENV)
        return False
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError, TypeError):  # no glibc (musl, macOS): nothing to tune
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    _applied = all(mallopt(param, value) for param, value in (
        (_M_MMAP_THRESHOLD, THRESHOLD_BYTES), (_M_TRIM_THRESHOLD, THRESHOLD_BYTES), (_M_ARENA_MAX, 1)))
    return _applied
