"""ptq_core.progress: one phase's (done, total) steps reach the caller's (done, total, message) callback."""

from __future__ import annotations

from ptq_core.progress import phase


def test_phase_fills_in_the_message_and_passes_none_through() -> None:
    calls: list[tuple[int, int, str]] = []
    step = phase(lambda done, total, message: calls.append((done, total, message)), "calibrating")
    assert step is not None
    step(1, 4)
    step(4, 4)
    assert calls == [(1, 4, "calibrating"), (4, 4, "calibrating")]
    assert phase(None, "calibrating") is None  # no callback: the loop skips the call
