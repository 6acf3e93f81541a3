"""Fixtures of the dashboard tests (helpers live in ``helpers.py``).

Streamlit's caches are process-wide, so every AppTest in this package shares one Explorer per
model and the Results already computed: the default config is evaluated once for the suite.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch

from ptq_core.pipeline import Explorer


@pytest.fixture(scope="module", autouse=True)
def _one_torch_thread() -> Iterator[None]:
    # The app runs torch with one thread (dashboard.resources.TORCH_THREADS); the reference
    # numbers in these tests are computed the same way, and the setting is undone afterwards.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="package")
def explorer() -> Explorer:
    """The reference: a separate Explorer, so the app's numbers are checked against a fresh run."""
    return Explorer("digits_cnn", "digits")
