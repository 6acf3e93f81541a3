"""Image preprocessing attached to a model: built on first use, and refusing what is not an image.

A :class:`~ptq_core.models.ModelEntry` carries its preprocessing as ``transform``. For image models
that is an :class:`ImageTransform`: a callable PIL image -> float32 tensor whose real pipeline
(torchvision transforms) is built the first time it is called, so registering and listing models
never imports torchvision (about a second at dashboard start-up). Called with anything but a PIL
image (a tensor from the digits data set, say) it raises a DataError that says to choose an image
folder, instead of a TypeError from deep inside torchvision.

A user's model file may state its preprocessing as an object (:func:`parse_preprocessing`)::

    {"resize": 274, "crop": 240, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5], "interpolation": "bicubic"}

Every key is optional: ``crop`` (an int, or ``[height, width]``) defaults to the model's input size
(224 when unknown); ``resize`` (the shorter side before the center crop) to round(crop / 0.875),
the usual ImageNet evaluation ratio; ``mean``/``std`` to ImageNet's; ``interpolation`` to bilinear.

What lives elsewhere: each model's own pipeline (``efficientnet_lite``, ``torchvision_models``).
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, cast, get_args

import torch

from ptq_core.errors import DataError, ModelError

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "PREPROCESSING_KEYS",
    "ImageTransform",
    "Preprocessing",
    "imagenet_transform",
    "parse_preprocessing",
]

# The ImageNet channel statistics torchvision's classifiers were trained with.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
Interpolation = Literal["bilinear", "bicubic", "nearest"]
INTERPOLATIONS: tuple[str, ...] = get_args(Interpolation)
PREPROCESSING_KEYS = ("resize", "crop", "mean", "std", "interpolation")
DEFAULT_CROP = 224  # when neither the spec nor the model says its input size: the ImageNet standard
# crop / resize of torchvision's ImageNet evaluation (224 / 256): the default resize keeps it.
CROP_FRACTION = 0.875
MAX_SIZE = 4096  # pixels: larger sizes are typos (and would take gigabytes per batch)
Size = tuple[int, int]  # (height, width)


@dataclass(frozen=True)
class Preprocessing:
    """Resize the shorter side to ``resize``, center-crop ``crop`` (height, width), scale to [0, 1], normalise."""

    resize: int
    crop: Size
    mean: tuple[float, float, float] = IMAGENET_MEAN
    std: tuple[float, float, float] = IMAGENET_STD
    interpolation: Interpolation = "bilinear"

    def describe(self) -> str:
        """``resize 256 (bilinear), center-crop 224, ImageNet mean/std``: what the UI and the Result say."""
        crop = str(self.crop[0]) if self.crop[0] == self.crop[1] else f"{self.crop[0]}x{self.crop[1]}"
        if (self.mean, self.std) == (IMAGENET_MEAN, IMAGENET_STD):
            stats = "ImageNet mean/std"
        else:
            stats = f"mean {list(self.mean)}, std {list(self.std)}"
        return f"resize {self.resize} ({self.interpolation}), center-crop {crop}, {stats}"

    def to_dict(self) -> dict[str, Any]:
        """The spec object that gives this preprocessing back through :func:`parse_preprocessing`."""
        crop: int | list[int] = self.crop[0] if self.crop[0] == self.crop[1] else list(self.crop)
        return {"resize": self.resize, "crop": crop, "mean": list(self.mean), "std": list(self.std),
                "interpolation": self.interpolation}  # fmt: skip

    def pipeline(self) -> Callable[[Any], torch.Tensor]:
        """The torchvision pipeline (imports torchvision)."""
        from torchvision import transforms

        crop: int | Size = self.crop[0] if self.crop[0] == self.crop[1] else self.crop
        return transforms.Compose(
            [
                transforms.Resize(self.resize, interpolation=transforms.InterpolationMode(self.interpolation)),
                transforms.CenterCrop(crop),
                transforms.ToTensor(),
                transforms.Normalize(mean=list(self.mean), std=list(self.std)),
            ]
        )

    def transform(self, name: str) -> ImageTransform:
        return ImageTransform(name, self.pipeline, self.describe(), settings=self)


def default_resize(crop: Size) -> int:
    """round(shorter crop side / 0.875): 224 -> 256, 240 -> 274."""
    return round(min(crop) / CROP_FRACTION)


def _size(value: Any, field: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_SIZE:
        raise ModelError(f"{field}: got {value!r}; allowed: an integer from 1 to {MAX_SIZE} (pixels)")
    return value


def _crop(value: Any, field: str) -> Size:
    if isinstance(value, list | tuple):
        if len(value) != 2:
            raise ModelError(f"{field}: got {value!r}; allowed: an integer (square) or [height, width]")
        return _size(value[0], field), _size(value[1], field)
    side = _size(value, field)
    return side, side


def _channels(value: Any, field: str, *, positive: bool) -> tuple[float, float, float]:
    what = "positive numbers" if positive else "finite numbers"
    if (
        not isinstance(value, list | tuple)
        or len(value) != 3
        or not all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in value)
        or (positive and not all(v > 0 for v in value))
    ):
        raise ModelError(f"{field}: got {value!r}; allowed: 3 {what}, one per RGB channel, e.g. [0.5, 0.5, 0.5]")
    return float(value[0]), float(value[1]), float(value[2])


def parse_preprocessing(
    value: dict[str, Any], *, default_crop: Size | None = None, field: str = "model.preprocessing"
) -> tuple[Preprocessing, list[str]]:
    """A preprocessing object as a :class:`Preprocessing`, and the keys it left out (each filled with its default).

    ``default_crop`` is the model's input size when known; ModelError names the first bad key.
    """
    if not isinstance(value, dict):
        raise ModelError(f"{field}: got {value!r}; allowed: an object with keys {', '.join(PREPROCESSING_KEYS)}")
    unknown = sorted(set(value) - set(PREPROCESSING_KEYS))
    if unknown:
        raise ModelError(f"{field}.{unknown[0]}: unknown key; allowed keys: {', '.join(PREPROCESSING_KEYS)}")
    crop = _crop(value["crop"], f"{field}.crop") if "crop" in value else default_crop or (DEFAULT_CROP, DEFAULT_CROP)
    resize = _size(value["resize"], f"{field}.resize") if "resize" in value else default_resize(crop)
    if resize < min(crop):
        raise ModelError(
            f"{field}.resize: got {resize}, smaller than the crop {min(crop)} (the crop would be padded with black); "
            f"allowed: an integer from {min(crop)} to {MAX_SIZE}"
        )
    mean = _channels(value["mean"], f"{field}.mean", positive=False) if "mean" in value else IMAGENET_MEAN
    std = _channels(value["std"], f"{field}.std", positive=True) if "std" in value else IMAGENET_STD
    interpolation = value.get("interpolation", "bilinear")
    if interpolation not in INTERPOLATIONS:
        raise ModelError(f"{field}.interpolation: got {interpolation!r}; allowed: {', '.join(INTERPOLATIONS)}")
    missing = [k for k in PREPROCESSING_KEYS if k not in value]
    return Preprocessing(resize, crop, mean, std, cast(Interpolation, interpolation)), missing


class ImageTransform:
    """A named, lazily built PIL-image -> tensor pipeline. ``describe`` is what the UI shows.

    ``settings`` are its sizes and statistics when known: a :class:`Preprocessing`, or a function
    giving it on first use (torchvision weights: reading them imports torchvision). When given,
    ``describe`` is read from them, so it says the real resize and crop.
    """

    def __init__(
        self,
        name: str,
        factory: Callable[[], Callable[[Any], torch.Tensor]],
        describe: str,
        *,
        settings: Preprocessing | Callable[[], Preprocessing | None] | None = None,
    ) -> None:
        self.name = name
        self._describe = describe
        self._factory = factory
        self._settings = settings
        self._pipeline: Callable[[Any], torch.Tensor] | None = None
        self._lock = threading.Lock()

    @property
    def settings(self) -> Preprocessing | None:
        """Resize, crop, mean, std and interpolation, when this pipeline is one of those (else None)."""
        if callable(self._settings) and not isinstance(self._settings, Preprocessing):
            self._settings = self._settings()
        return self._settings

    @property
    def describe(self) -> str:
        settings = self.settings
        return settings.describe() if settings is not None else self._describe

    def _built(self) -> Callable[[Any], torch.Tensor]:
        with self._lock:
            if self._pipeline is None:
                self._pipeline = self._factory()
            return self._pipeline

    @property
    def cache_key(self) -> str:
        """What the output depends on: the pipeline as printed (every size, mean, std, interpolation) and the
        torchvision and Pillow versions that compute it. Preprocessed images are cached on disk under it."""
        import PIL
        import torchvision

        from ptq_core.diskcache import digest

        return digest("image-transform", self.name, repr(self._built()), torchvision.__version__, PIL.__version__)

    def __call__(self, image: Any) -> torch.Tensor:
        from PIL import Image

        if not isinstance(image, Image.Image):
            shape = f" of shape {tuple(image.shape)}" if isinstance(image, torch.Tensor) else ""
            raise DataError(
                f"model preprocessing {self.name!r} expects RGB images, got a {type(image).__name__}{shape}; "
                'allowed: an image data set, e.g. {"kind": "image_folder", "path": "PATH"}'
            )
        return self._built()(image)

    def __repr__(self) -> str:  # never computes settings: a repr must not import torchvision
        settings = self._settings if isinstance(self._settings, Preprocessing) else None
        return f"ImageTransform({self.name!r}: {settings.describe() if settings else self._describe})"


IMAGENET = Preprocessing(256, (224, 224))  # the common ImageNet evaluation


def imagenet_transform() -> ImageTransform:
    """The common ImageNet evaluation preprocessing: resize 256, center-crop 224, ImageNet mean/std."""
    return IMAGENET.transform("imagenet")
