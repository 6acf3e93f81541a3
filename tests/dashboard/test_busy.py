"""Many sessions in one server: ``Activity`` counts running evaluations, ``busy_note`` words the wait, exports queue.

The count is server-wide (``st.cache_resource``), so the test holds two evaluations open itself
(as two other sessions would) while the app evaluates a configuration nobody has computed yet,
then checks the app's evaluation was counted beside them and its time recorded as if alone.

Two sessions exporting to ONNX at once (a new simulation structure, the integer runtime check)
broke torch's exporter (benchmarks/bench_room.py found it with two sessions); the export that
starts while another is inside ``torch.onnx.export`` is made deterministic here by a model whose
forward waits for the test.
"""

from __future__ import annotations

import dataclasses
import io
import sys
import threading
from collections.abc import Callable
from contextlib import ExitStack

import pytest
import torch
from torch import nn

from dashboard import resources, sharing
from dashboard.state import default_config
from ptq_core import binning
from tests.dashboard.helpers import new_app, problems


def test_the_count_follows_evaluations_even_when_they_fail() -> None:
    busy = resources.Activity()
    with busy.evaluation() as first:
        assert first == 0
        with busy.evaluation() as second:
            assert second == 1 and busy.others() == 1
        with pytest.raises(RuntimeError), busy.evaluation():
            raise RuntimeError("an evaluation that fails still stops counting")
    assert (busy.running, busy.peak) == (0, 2)


def test_the_count_is_exact_across_threads() -> None:
    busy, started, release = resources.Activity(), threading.Barrier(9), threading.Event()

    def hold() -> None:
        with busy.evaluation():
            started.wait()
            release.wait()

    threads = [threading.Thread(target=hold) for _ in range(8)]
    for t in threads:
        t.start()
    started.wait()
    assert busy.running == 8
    release.set()
    for t in threads:
        t.join()
    assert (busy.running, busy.peak) == (0, 8)


def test_the_estimate_is_the_time_alone_times_the_evaluations_sharing_the_cpus() -> None:
    busy = resources.Activity()
    assert busy.estimate_s(("m", "d", "b", "main"), 2) is None
    busy.record(("m", "d", "b", "main"), 6.0, 1, 1)  # 6 s with one other running all along: 3 s alone
    assert busy.estimate_s(("m", "d", "b", "main"), 2) == pytest.approx(9.0)
    assert resources.busy_note(2, 9.0) == ("2 other evaluations running on this server; this may take about 9 s "
                                           "(the server's CPUs are shared).")
    assert resources.busy_note(1, None).startswith("1 other evaluation running on this server; this may take longer")


def test_an_evaluation_beside_two_others_is_counted_and_timed_as_if_alone() -> None:
    busy = resources.activity()  # the server-wide one the app uses
    base = default_config()
    config = base.replace(calibration=dataclasses.replace(base.calibration, seed=4242))  # computed by no other test
    at = new_app()
    at.query_params[sharing.PARAM] = sharing.encode(config, base)
    with ExitStack() as others:
        for _ in range(2):  # other sessions' runtime checks (background: this session's own check need not wait)
            others.enter_context(busy.evaluation(background=True))
        busy.peak = busy.running  # the most at once from here on (earlier tests ran in this process too)
        at.run()
        assert busy.running == 2  # the app's own evaluations have ended
        assert busy.peak == 3  # ... and ran beside the two others, one at a time: the notice's branch ran
    assert not problems(at)
    key = (*resources._speed_key(config), "main")
    assert key in busy.solo_s or (*key[:3], "quick") in busy.solo_s


def test_background_parts_run_one_at_a_time_and_only_without_what_ifs() -> None:
    busy = resources.Activity()
    first_in, first_out, second_in = threading.Event(), threading.Event(), threading.Event()
    waits: list[int] = []

    def first() -> None:
        with busy.quiet(lambda n: None, poll_s=0.01, quiet_s=0.0):
            first_in.set()
            first_out.wait(60)

    def second() -> None:
        with busy.quiet(waits.append, poll_s=0.01, quiet_s=0.0):
            second_in.set()

    with busy.evaluation():  # a what-if: no background part starts
        a = threading.Thread(target=first)
        a.start()
        while busy.waiting < 1:
            a.join(0.01)
        assert not first_in.is_set()
    assert first_in.wait(60)  # the what-if ended: the first starts...
    b = threading.Thread(target=second)
    b.start()
    while not waits:
        b.join(0.01)
    assert not second_in.is_set() and waits[0] == 0  # ...and the second waits for it, not for a what-if
    first_out.set()
    a.join(60)
    assert second_in.wait(60)
    b.join(60)
    assert busy.waiting == 0


class _Stopped(Exception):
    """What Streamlit raises in a waiting run when the user changes a control."""


def test_only_another_sessions_recent_what_if_delays_a_background_part() -> None:
    busy = resources.Activity()
    with busy.evaluation(session="me"):
        pass
    with busy.quiet(lambda n: pytest.fail("waited for its own what-if"), quiet_s=3600, session="me"):
        pass  # alone on the server: the check starts as soon as the numbers are drawn

    with busy.evaluation(session="other"):
        pass
    waits: list[int] = []

    def stop_after_first_wait(n: int) -> None:
        waits.append(n)
        raise _Stopped  # the user changed a control while the check waited

    with pytest.raises(_Stopped), busy.quiet(stop_after_first_wait, quiet_s=3600, session="me"):
        pytest.fail("started although another session's what-if just ended")
    assert waits == [0] and busy.waiting == 0
    with busy.quiet(lambda n: None, quiet_s=0.0, session="me"):
        pass  # the slot was not left taken by the stopped wait


def test_the_runtime_check_waits_while_another_sessions_what_if_runs() -> None:
    busy = resources.activity()
    base = default_config()
    config = base.replace(calibration=dataclasses.replace(base.calibration, seed=4343))
    at = new_app()
    at.query_params[sharing.PARAM] = sharing.encode(config, base)
    runner = threading.Thread(target=at.run)
    with busy.evaluation():  # another session's what-if, running all along
        runner.start()
        for _ in range(600):  # the app draws its numbers, then holds its runtime check back
            if busy.waiting:
                break
            runner.join(0.1)
        assert busy.waiting == 1
    runner.join(120)  # the what-if is done: the check runs, the page is redrawn with it
    assert not runner.is_alive() and busy.waiting == 0
    assert not problems(at)
    assert any(m.label == "Latency (measured)" for m in at.metric)  # the integer runtime check's number


class _Waiting(nn.Module):
    """A model whose forward (run by the exporter's tracer) signals it started, then waits for the test."""

    def __init__(self, inside: threading.Event, release: threading.Event) -> None:
        super().__init__()
        self.inside, self.release = inside, release

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.inside.set()
        self.release.wait(60)
        return x * 2


def _export_during_another(export: Callable[..., object]) -> list[BaseException]:
    """Start an export that stays inside the exporter, export a second model meanwhile; the errors raised."""
    inside, release, errors = threading.Event(), threading.Event(), []

    def run(model: nn.Module) -> None:
        try:
            export(model, (torch.ones(1, 2),), io.BytesIO(), dynamo=False)
        except BaseException as exc:  # noqa: BLE001 - collected for the assertion
            errors.append(exc)

    first = threading.Thread(target=run, args=(_Waiting(inside, release),))
    first.start()
    assert inside.wait(60)
    second = threading.Thread(target=run, args=(nn.Linear(2, 2),))
    second.start()
    second.join(0.5)  # with the lock it waits for the first; without it, it has already failed
    release.set()
    first.join(60)
    second.join(60)
    return errors


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the TorchScript exporter's, as in ptq_core.onnx
def test_torchs_exporter_fails_when_two_threads_export_at_once() -> None:
    resources.serialize_onnx_exports()
    raw = torch.onnx.export.__wrapped__  # type: ignore[attr-defined]
    errors = _export_during_another(raw)
    assert any("in_onnx_export" in str(e) for e in errors), errors  # the reason for the lock


@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_the_dashboard_exports_one_at_a_time() -> None:
    resources.configure_torch()
    resources.configure_torch()  # every run calls it: wrapped once
    assert not getattr(torch.onnx.export.__wrapped__, "_ptq_serialized", False)  # type: ignore[attr-defined]
    assert _export_during_another(torch.onnx.export) == []


def test_the_histogram_kernel_and_torchvision_are_loaded_once_in_the_background() -> None:
    """Every run of the app calls it: one background thread, once, loads the compiled histogram pass and torchvision."""
    resources.warm_up_in_background()
    resources.warm_up_in_background()
    starters = [t for t in threading.enumerate() if t.name == "ptq_warm_up"]
    assert len(starters) <= 1 and resources._warm_up_started
    for t in starters:
        t.join(timeout=120)
    assert binning._kernel.cache_info().currsize == 1 and binning._kernel() is not None
    assert "torchvision.transforms" in sys.modules and "ptq_core.models.efficientnet_lite" in sys.modules
