"""Fixtures shared by every test: an isolated disk cache, one torch thread, the digits models.

* The engine keeps preprocessed images, FP32 logits and calibration statistics in a disk cache
  (:mod:`ptq_core.diskcache`). Tests get a fresh folder of their own for the whole session, so a
  run starts cold, never reads what another run (or the user's dashboard) left in
  ``~/.cache/ptq_explorer``, and never writes there.
* ``one_torch_thread``: ops on one thread, as the dashboard and ``python -m ptq_core`` run them
  (reference numbers computed the same way); undone afterwards.
* ``cnn`` / ``mlp``: one Explorer of each digits model per test module.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
import torch

from ptq_core.diskcache import CACHE_DIR_ENV, reset_default_cache
from ptq_core.pipeline import Explorer


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


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def cnn() -> Explorer:
    return Explorer("digits_cnn", "digits")


@pytest.fixture(scope="module")
def mlp() -> Explorer:
    return Explorer("digits_mlp", "digits")
