"""The :class:`ModelEntry` record: how to build one model and what it expects.

It lives apart from the registry (``ptq_core.models``) so that the modules resolving model
sources (torchvision, user files) can build entries without importing the registry.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal

from torch import nn

__all__ = ["Modality", "ModelEntry", "Task"]

Modality = Literal["image", "text"]
Task = Literal["classification", "embedding"]


@dataclass(frozen=True)
class ModelEntry:
    """How to build one model and what it expects."""

    name: str
    description: str
    default_dataset: str | dict[str, Any]  # a data-set spec for ptq_core.data.load_dataset
    build: Callable[[], nn.Module]  # returns a NEW model in eval mode with its weights loaded
    pretrained: bool = True  # False: random weights; the UI must label them "random weights"
    transform: Callable[..., Any] | None = None  # preprocessing for image data sets (None for digits)
    # The same architecture with random weights, what a user's state dict is loaded into;
    # None when the entry cannot be used as an architecture.
    architecture: Callable[[], nn.Module] | None = None
    # Said in every Result of this model: e.g. preprocessing that was defaulted, or that disagrees
    # with the model's input size (ptq_core.models.files).
    warnings: tuple[str, ...] = ()
    # What the model reads and what it outputs: "image" models (digits included) take image tensors and
    # give class logits; "text" models take tokens [2, L] and give embeddings (metrics per ptq_core.metrics).
    modality: Modality = "image"
    task: Task = "classification"  # "classification" (logits) or "embedding" (one vector per sample)
