"""Fixtures shared by every test: an isolated disk cache.

The engine keeps preprocessed images, FP32 logits and calibration statistics in a disk cache
(:mod:`ptq_core.diskcache`). Tests get a fresh folder of their own for the whole session, so a
run starts cold, never reads what another run (or the user's dashboard) left in
``~/.cache/ptq_explorer``, and never writes there.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from ptq_core.diskcache import CACHE_DIR_ENV, reset_default_cache


@pytest.fixture(scope="session", autouse=True)
def _isolated_disk_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    before = os.environ.get(CACHE_DIR_ENV)
    os.environ[CACHE_DIR_ENV] = str(tmp_path_factory.mktemp("ptq_cache"))
    reset_default_cache()
    yield
    if before is None:
        os.environ.pop(CACHE_DIR_ENV, None)
    else:
        os.environ[CACHE_DIR_ENV] = before
    reset_default_cache()
