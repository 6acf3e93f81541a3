"""Models: the :class:`ModelEntry` record and the registry that turns a model spec into a module.

A spec is what a :class:`~ptq_core.config.QuantConfig` names in its ``model`` field:

* a registered name, e.g. ``"digits_cnn"`` -> the :class:`ModelEntry` registered under it;
* an object ``{"kind": <kind>, **options}`` -> the resolver registered for that kind with
  :func:`register_model_kind` builds the entry from the whole spec. This is the extension
  point for model sources that take options (torchvision models, EfficientNet-Lite0, a
  user's file); none is registered here.

:func:`load_model` always returns a NEW module in eval mode, so a caller may quantize or
mutate it freely. The architectures and weights of the built-in models live in
:mod:`ptq_core.models.digits`; how those weights were made, in
:mod:`ptq_core.models.train_digits`.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import nn

from ptq_core.errors import ModelError

from . import digits as _digits

__all__ = [
    "ModelEntry",
    "available_model_kinds",
    "available_models",
    "get_model_entry",
    "load_model",
    "register_model",
    "register_model_kind",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ModelEntry:
    """How to build one model and what it expects."""

    name: str
    description: str
    default_dataset: str | dict[str, Any]  # a data-set spec for ptq_core.data.load_dataset
    build: Callable[[], nn.Module]  # returns a NEW model in eval mode with its weights loaded
    pretrained: bool = True  # False: random weights; the UI must label them "random weights"
    transform: Callable[..., Any] | None = None  # preprocessing for image data sets (None for digits)


ModelKindResolver = Callable[[dict[str, Any]], ModelEntry]

_MODELS: dict[str, ModelEntry] = {}
_KINDS: dict[str, ModelKindResolver] = {}


def register_model(entry: ModelEntry) -> None:
    """Make ``entry`` loadable by its name. Registering a name again replaces it."""
    if not entry.name or not isinstance(entry.name, str):
        raise ValueError(f"model name must be a non-empty string, got {entry.name!r}")
    if entry.name in _MODELS:
        log.debug("model %r registered again; replacing the previous entry", entry.name)
    _MODELS[entry.name] = entry


def register_model_kind(kind: str, resolver: ModelKindResolver) -> None:
    """Resolve specs ``{"kind": kind, ...}`` with ``resolver(spec) -> ModelEntry``.

    The resolver gets a copy of the whole spec (``kind`` included) and raises
    :class:`~ptq_core.errors.ModelError` for options it does not accept.
    """
    if not kind or not isinstance(kind, str):
        raise ValueError(f"model kind must be a non-empty string, got {kind!r}")
    _KINDS[kind] = resolver


def available_models() -> list[str]:
    """Registered model names, sorted."""
    return sorted(_MODELS)


def available_model_kinds() -> list[str]:
    """Kinds accepted in ``{"kind": ...}`` model specs, sorted."""
    return sorted(_KINDS)


def get_model_entry(spec: str | dict[str, Any]) -> ModelEntry:
    """The :class:`ModelEntry` a spec names; unknown names or kinds raise ModelError listing the known ones."""
    if isinstance(spec, str):
        try:
            return _MODELS[spec]
        except KeyError:
            raise ModelError(f"model: unknown model {spec!r}; available: {', '.join(available_models())}") from None
    if isinstance(spec, dict) and isinstance(spec.get("kind"), str):
        kind = spec["kind"]
        resolver = _KINDS.get(kind)
        if resolver is None:
            kinds = ", ".join(available_model_kinds()) or "none registered"
            raise ModelError(
                f"model.kind: unknown kind {kind!r}; known kinds: {kinds} "
                f"(or name a registered model: {', '.join(available_models())})"
            )
        return resolver(dict(spec))
    raise ModelError(
        f'model: got {spec!r}; allowed: a registered name ({", ".join(available_models())}) or an object with a "kind" key'
    )


def load_model(spec: str | dict[str, Any]) -> nn.Module:
    """A NEW instance of the model a spec names, in eval mode, weights loaded."""
    return get_model_entry(spec).build().eval()


register_model(
    ModelEntry(
        name="digits_cnn",
        description=(
            "Small CNN for 8x8 digits (conv-BN-ReLU x3, max-pool, depthwise-separable residual block "
            "with ReLU6, global average pool, 2 Linear): 31k parameters"
        ),
        default_dataset="digits",
        build=_digits.build_digits_cnn,
    )
)
register_model(
    ModelEntry(
        name="digits_mlp",
        description="MLP for 8x8 digits (64-128-64-10, ReLU): 17k parameters",
        default_dataset="digits",
        build=_digits.build_digits_mlp,
    )
)
