"""Fixtures of the dashboard tests (helpers live in ``helpers.py``).

Streamlit's caches are process-wide, so every AppTest in this package shares one Explorer per
model and the Results already computed: the default config is evaluated once for the suite.
"""

from __future__ import annotations

import pytest

from dashboard import resources
from ptq_core.pipeline import Explorer


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread(one_torch_thread: None) -> None:
    """The app runs torch with one thread (dashboard.resources.TORCH_THREADS); so do the reference numbers here."""


@pytest.fixture(scope="package")
def explorer() -> Explorer:
    """The reference: a separate Explorer, so the app's numbers are checked against a fresh run."""
    return Explorer("digits_cnn", "digits")


@pytest.fixture(autouse=True)
def _no_quiet_period(monkeypatch: pytest.MonkeyPatch) -> None:
    """AppTest sessions run one after another: there is no room to yield to, so a runtime check need not wait
    ``resources.QUIET_S`` after the previous test's what-ifs (the waiting itself is tested in test_busy.py)."""
    monkeypatch.setattr(resources, "QUIET_S", 0.0)
