"""Fixtures shared by every test: an isolated disk cache, one torch thread, the digits models.

* The engine keeps preprocessed images, FP32 logits and calibration statistics in a disk cache
  (:mod:`ptq_core.diskcache`). Tests get a fresh folder of their own for the whole session, so a
  run starts cold, never reads what another run (or the user's dashboard) left in
  ``~/.cache/ptq_explorer``, and never writes there.
* ``one_torch_thread``: ops on one thread, as the dashboard and ``python -m ptq_core`` run them
  (reference numbers computed the same way); undone afterwards.
* ``cnn`` / ``mlp``: one Explorer of each digits model per test module.
* ``registry``: models and data sets registered for one test through the public API
  (``register_model``/``unregister_model``, ``register_dataset``/``unregister_dataset``), never by
  touching the registries' private dicts.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator

import pytest
import torch

from ptq_core.data import Dataset, available_datasets, register_dataset, unregister_dataset
from ptq_core.diskcache import CACHE_DIR_ENV, reset_default_cache
from ptq_core.models import ModelEntry, available_models, register_model, unregister_model
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


class Registrations:
    """Models and data sets registered by one test through the public registry API, all unregistered afterwards."""

    def __init__(self) -> None:
        self.models: list[str] = []
        self.datasets: list[str] = []

    def model(self, entry: ModelEntry) -> ModelEntry:
        register_model(entry)
        self.models.append(entry.name)
        return entry

    def dataset(self, name: str, loader: Callable[..., Dataset], description: str = "registered by a test") -> str:
        register_dataset(name, loader, description)
        self.datasets.append(name)
        return name

    def undo(self) -> None:
        for name in dict.fromkeys(self.models):
            if name in available_models():
                unregister_model(name)
        for name in dict.fromkeys(self.datasets):
            if name in available_datasets():
                unregister_dataset(name)


@pytest.fixture
def registry() -> Iterator[Registrations]:
    """``registry.model(ModelEntry(...))`` / ``registry.dataset(name, loader)``: registered for this test only.

    Unregistered after the test even when it fails, so no test sees another's models (and a name a
    test replaces must be one of its own: re-registering a built-in would remove it afterwards).
    """
    registrations = Registrations()
    try:
        yield registrations
    finally:
        registrations.undo()
