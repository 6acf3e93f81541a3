"""The allocator tuning keeps freed activation buffers for reuse: a repeated large allocation stops faulting pages in.

Measured in a fresh process each (the setting is process-wide and made once): after a few
rounds of warm-up, a round that allocates and fills three buffers of 64, 32 and 64 MiB (freed as a forward
frees them) costs ~41K minor page faults with glibc's defaults (every buffer is a fresh mmap) and none once
tuned. Counting page faults, not seconds, keeps the test independent of the machine's load.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

_PROBE = """
import json, resource, sys
import torch
tuned = None
if sys.argv[1] == "tune":
    from ptq_core.allocator import tune_malloc
    tuned = tune_malloc()
    assert tune_malloc() == tuned  # idempotent
def faults():
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt
def one_round():  # what a forward does: each op's output allocated, the input freed
    a = torch.empty(16 << 20).fill_(1.0)  # 64 MiB
    b = torch.empty(8 << 20).fill_(2.0)
    del a
    c = torch.empty(16 << 20).fill_(3.0)
    del b, c
for _ in range(4):  # let the heap settle
    one_round()
before = faults()
for _ in range(8):
    one_round()
main_faults = (faults() - before) / 8
import threading
def in_a_thread():  # the forward workers of ptq_core.parallel allocate from threads
    for _ in range(6):
        one_round()
    global thread_faults
    start = faults()
    for _ in range(8):
        one_round()
    thread_faults = (faults() - start) / 8
worker = threading.Thread(target=in_a_thread)
worker.start()
worker.join()
print(json.dumps({"tuned": tuned, "faults_per_round": main_faults, "thread_faults_per_round": thread_faults}))
"""


def _run(mode: str, **env: str) -> dict[str, object]:
    out = subprocess.run([sys.executable, "-c", _PROBE, mode], cwd=ROOT, capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT), **env})
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's (Linux)")
def test_tuned_allocator_reuses_large_buffers() -> None:
    plain, tuned = _run("plain"), _run("tune")
    assert tuned["tuned"] is True
    pages = (160 << 20) / 4096  # 40960 pages of 4 KiB in the three buffers of a round
    assert plain["faults_per_round"] > 0.5 * pages  # every round maps and faults a fresh buffer in
    # Tuned, the freed buffers are reused: measured 0 faults on a quiet machine, up to 7% of the pages once while
    # another process was installing packages (the kernel reclaims and refaults a few pages under pressure).
    assert tuned["faults_per_round"] < 0.2 * pages
    assert plain["thread_faults_per_round"] > 0.5 * pages  # a thread's own arena maps buffers over 64 MiB afresh
    assert tuned["thread_faults_per_round"] < 0.2 * pages  # one arena for all threads: reused there too


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="mallopt is glibc's (Linux)")
def test_the_environment_can_switch_it_off() -> None:
    assert _run("tune", PTQ_MALLOC_TUNING="0")["tuned"] is False


def test_importing_the_engine_changes_no_allocator_setting() -> None:
    code = "import ptq_core.pipeline, ptq_core.cli, ptq_core.allocator as a; print(a._applied)"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert out.stdout.strip() == "None"
