"""Progress callbacks: how engine work tells a caller how far it has come, without knowing who draws it.

What lives here: the two callback types and :func:`phase`, which turns the first into the second.

* :data:`ProgressFn` ``(done, total, message)``: what the facade's methods take (``on_progress``);
  the message names the phase ("calibrating", "evaluating quantized", ...).
* :data:`StepFn` ``(done, total)``: what one phase's loop calls (``collect_stats``, the backends).

Not here: any drawing. The CLI's text bar (:mod:`ptq_core.cli`) and the dashboard's progress bar
(``dashboard/resources.py``) are ProgressFns of their own; the engine never imports a UI.
"""

from __future__ import annotations

from collections.abc import Callable

ProgressFn = Callable[[int, int, str], None]  # (done, total, message)
StepFn = Callable[[int, int], None]  # (done, total) within one phase


def phase(on_progress: ProgressFn | None, message: str) -> StepFn | None:
    """``on_progress`` with ``message`` filled in, for one phase's loop; None when there is no callback."""
    if on_progress is None:
        return None
    return lambda done, total: on_progress(done, total, message)
