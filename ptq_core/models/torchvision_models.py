"""torchvision classifiers as model entries: weights from the torch hub cache, a download, or random.

Specs this module resolves (registered in :mod:`ptq_core.models` as the kind ``"torchvision"``)::

    "torchvision:resnet18"                                   # default (best) ImageNet weights
    {"kind": "torchvision", "name": "resnet50", "weights": "IMAGENET1K_V1"}
    {"kind": "torchvision", "name": "resnet18", "weights": "random"}   # explicit, labelled everywhere

Any classification model of ``torchvision.models`` is accepted by name; :data:`CLASSIFIERS` are the
ones listed by ``available_models()`` and checked end to end by the tests. Pretrained weights are
read from the torch hub cache (``$TORCH_HOME/hub/checkpoints``, the file name torchvision uses),
downloaded into it when the network allows, and otherwise a ModelError says where to put the
file or how to ask for random weights. Checkpoints are loaded with ``weights_only=True``
(torchvision's own loader does not). Each model gets its weights' own preprocessing
(``weights.transforms()``), described by its real resize, crop, interpolation and mean/std
(resize 232 or 256 and crop 224 for most; 255/240 for EfficientNet-B1, 342/299 for Inception-v3).

torchvision itself is imported only when a model is resolved or built, never at registration.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import tempfile
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ptq_core.errors import ModelError

from .preprocessing import ImageTransform, Preprocessing

log = logging.getLogger(__name__)

KIND = "torchvision"
RANDOM = "random"
DEFAULT = "DEFAULT"
SPEC_KEYS = ("kind", "name", "weights")
DOWNLOAD_TIMEOUT_S = 30.0  # per network operation; an offline machine fails in milliseconds anyway
# The data-set spec image models default to: image_folder without a path raises a DataError
# asking for one, so nothing silently falls back to the 8x8 digits.
IMAGE_DATASET: dict[str, Any] = {"kind": "image_folder"}

# name -> (what it is, parameters, default weights' ImageNet top-1 from torchvision's model card).
# Static so that listing models never imports torchvision.
CLASSIFIERS: dict[str, tuple[str, str, float]] = {
    "resnet18": ("ResNet-18", "11.7M", 69.758),
    "resnet50": ("ResNet-50", "25.6M", 80.858),
    "mobilenet_v2": ("MobileNetV2 (depthwise, ReLU6, residual adds)", "3.5M", 72.154),
    "mobilenet_v3_large": ("MobileNetV3-Large (hardswish, squeeze-excitation)", "5.5M", 75.274),
    "efficientnet_b0": ("EfficientNet-B0 (SiLU, squeeze-excitation, stochastic depth)", "5.3M", 77.692),
    "shufflenet_v2_x1_0": ("ShuffleNetV2 x1.0 (channel shuffle, split/concat)", "2.3M", 69.362),
    "regnet_y_400mf": ("RegNetY-400MF (grouped convs, squeeze-excitation)", "4.3M", 75.804),
}
_HASH_REGEX = re.compile(r"-([a-f0-9]*)\.")


def registered_name(name: str) -> str:
    return f"{KIND}:{name}"


def _tv() -> Any:
    try:
        import torchvision
    except ImportError as exc:  # pragma: no cover - torchvision is in requirements.txt
        raise ModelError("torchvision models need the package 'torchvision'; pip install torchvision") from exc
    return torchvision


def classification_models() -> list[str]:
    """Every classification model name torchvision offers (imports torchvision)."""
    tv = _tv()
    return sorted(tv.models.list_models(module=tv.models))


def _weights_enum(name: str) -> Any:
    tv = _tv()
    if name not in tv.models.list_models(module=tv.models):
        listed = ", ".join(CLASSIFIERS)
        raise ModelError(
            f"model.name: {name!r} is not a torchvision classification model; allowed: e.g. {listed} "
            "(any name in torchvision.models.list_models(module=torchvision.models))"
        )
    return tv.models.get_model_weights(name)


def resolve_weights(name: str, weights: str) -> Any:
    """The weights enum member ``weights`` names for model ``name`` (``DEFAULT`` allowed), or None for random."""
    if weights == RANDOM:
        _weights_enum(name)  # still validate the name
        return None
    enum = _weights_enum(name)
    if weights.upper() == DEFAULT:
        return enum.DEFAULT
    members = [m.name for m in enum]
    if weights not in members:
        raise ModelError(
            f"model.weights: got {weights!r} for {name}; allowed: {DEFAULT}, {RANDOM}, {', '.join(members)}"
        )
    return enum[weights]


def hub_checkpoint_path(url: str) -> Path:
    """Where torch hub keeps (or would keep) the checkpoint at ``url``."""
    return Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(url)


def weights_status(name: str, weights: str = DEFAULT) -> dict[str, Any]:
    """For a UI badge: the weights' enum name, checkpoint path, and whether it is already cached."""
    member = resolve_weights(name, weights)
    if member is None:
        return {"weights": RANDOM, "cached": True, "path": None}
    path = hub_checkpoint_path(member.url)
    return {"weights": member.name, "cached": path.is_file(), "path": str(path), "url": member.url}


def _download(url: str, dest: Path) -> None:
    """Download ``url`` to ``dest`` through a temporary file, checking the hash prefix in the file name."""
    match = _HASH_REGEX.search(os.path.basename(url))
    hash_prefix = match.group(1) if match else None
    dest.parent.mkdir(parents=True, exist_ok=True)
    sha256 = hashlib.sha256()
    fd, tmp_name = tempfile.mkstemp(dir=dest.parent, prefix=dest.name, suffix=".partial")
    try:
        with os.fdopen(fd, "wb") as out, urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response:  # noqa: S310 - https URL from torchvision's weights table
            while chunk := response.read(1 << 20):
                sha256.update(chunk)
                out.write(chunk)
        if hash_prefix and not sha256.hexdigest().startswith(hash_prefix):
            raise ModelError(f"downloaded {url} has SHA-256 {sha256.hexdigest()[:12]}..., expected {hash_prefix}...")
        os.replace(tmp_name, dest)
    finally:
        if os.path.exists(tmp_name):
            os.unlink(tmp_name)


def load_weights_state(name: str, member: Any) -> dict[str, torch.Tensor]:
    """The state dict of ``member``: from the hub cache, else downloaded into it, else ModelError."""
    path = hub_checkpoint_path(member.url)
    if not path.is_file():
        log.info("downloading %s weights %s to %s", name, member, path)
        try:
            _download(member.url, path)
        except (urllib.error.URLError, OSError, TimeoutError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ModelError(
                f"weights {member} for torchvision model {name!r} are not in the torch hub cache and cannot be "
                f"downloaded ({reason}). To fix: on a machine with internet run "
                f"`python -c \"import torchvision; torchvision.models.get_model('{name}', weights='{member.name}')\"` "
                f"and copy {path.name} into {path.parent} (or set TORCH_HOME to a folder holding hub/checkpoints/"
                f"{path.name}); or ask for random weights with "
                f'{{"kind": "torchvision", "name": "{name}", "weights": "random"}} (agreement only, no accuracy)'
            ) from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # a truncated or foreign file: many exception types, one meaning
        raise ModelError(
            f"cached weights {str(path)!r} for {name!r} cannot be loaded ({type(exc).__name__}: {exc}); "
            "delete the file so it is downloaded again"
        ) from None
    if not isinstance(state, dict):
        raise ModelError(f"cached weights {str(path)!r} for {name!r} hold a {type(state).__name__}, not a state dict")
    return state


def build_torchvision(name: str, weights: str) -> nn.Module:
    """A NEW torchvision ``name`` in eval mode with ``weights`` (an enum name, ``DEFAULT`` or ``random``)."""
    tv = _tv()
    member = resolve_weights(name, weights)
    if member is None:
        return tv.models.get_model(name, weights=None).eval()
    model = tv.models.get_model(name, weights=None, num_classes=len(member.meta["categories"]))
    state = load_weights_state(name, member)
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise ModelError(f"cached weights for {name!r} do not match the architecture: {str(exc)[:400]}") from None
    return model.eval()


def _transform_factory(name: str, weights: str) -> Callable[[], Callable[[Any], torch.Tensor]]:
    def factory() -> Callable[[Any], torch.Tensor]:
        member = resolve_weights(name, DEFAULT if weights == RANDOM else weights)
        return member.transforms()

    return factory


def _settings_factory(name: str, weights: str) -> Callable[[], Preprocessing | None]:
    """The sizes and statistics of ``weights.transforms()`` (None when it is not torchvision's ImageClassification)."""

    def settings() -> Preprocessing | None:
        try:
            preset = _transform_factory(name, weights)()
            resize = [int(v) for v in getattr(preset, "resize_size")]  # noqa: B009 - absent on other presets
            crop = [int(v) for v in getattr(preset, "crop_size")]  # noqa: B009
            mean, std = tuple(map(float, getattr(preset, "mean"))), tuple(map(float, getattr(preset, "std")))  # noqa: B009
            mode = str(getattr(preset, "interpolation").value)  # noqa: B009
        except (AttributeError, TypeError, ValueError, ModelError):
            return None
        if len(resize) != 1 or len(crop) not in (1, 2) or len(mean) != 3 or len(std) != 3:
            return None
        if mode not in ("bilinear", "bicubic", "nearest"):
            return None
        size = (crop[0], crop[-1])
        return Preprocessing(resize[0], size, mean, std, mode)  # type: ignore[arg-type]

    return settings


def torchvision_transform(name: str, weights: str = DEFAULT) -> ImageTransform:
    """The preprocessing of ``name``'s weights (random weights use the default weights' preprocessing).

    Its ``describe`` reads the weights' real resize and crop on first use (which imports torchvision).
    """
    return ImageTransform(
        registered_name(name),
        _transform_factory(name, weights),
        "torchvision weights.transforms(): resize and center-crop of the weights, ImageNet mean/std",
        settings=_settings_factory(name, weights),
    )


def describe(name: str, weights: str) -> str:
    """One line for model pickers, without importing torchvision."""
    title, params, top1 = CLASSIFIERS.get(name, (name, "", float("nan")))
    size = f", {params} parameters" if params else ""
    if weights == RANDOM:
        return f"torchvision {title}{size}, random weights (agreement with FP32 only; no accuracy)"
    which = "default ImageNet weights" if weights.upper() == DEFAULT else f"ImageNet weights {weights}"
    card = f" (model card top-1 {top1:.1f}%)" if name in CLASSIFIERS and weights.upper() == DEFAULT else ""
    return f"torchvision {title}{size}, {which}{card} from the torch hub cache or downloaded"
