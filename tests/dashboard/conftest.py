"""Fixtures of the dashboard tests (helpers live in ``helpers.py``).

Streamlit's caches are process-wide, so every AppTest in this package shares one Explorer per
model and the Results already computed: the default config is evaluated once for the suite.
"""

from __future__ import annotations

import pytest

from ptq_core.pipeline import Explorer


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread(one_torch_thread: None) -> None:
    """The app runs torch with one thread (dashboard.resources.TORCH_THREADS); so do the reference numbers here."""


@pytest.fixture(scope="package")
def explorer() -> Explorer:
    """The reference: a separate Explorer, so the app's numbers are checked against a fresh run."""
    return Explorer("digits_cnn", "digits")
