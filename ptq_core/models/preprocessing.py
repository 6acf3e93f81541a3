"""Image preprocessing attached to a model: built on first use, and refusing what is not an image.

A :class:`~ptq_core.models.ModelEntry` carries its preprocessing as ``transform``. For image models
that is an :class:`ImageTransform`: a callable PIL image -> float32 tensor whose real pipeline
(torchvision transforms) is built the first time it is called, so registering and listing models
never imports torchvision (about a second at dashboard start-up). Called with anything but a PIL
image (a tensor from the digits data set, say) it raises a DataError that says to choose an image
folder, instead of a TypeError from deep inside torchvision.

What lives elsewhere: each model's own pipeline (``efficientnet_lite``, ``torchvision_models``).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import torch

from ptq_core.errors import DataError

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "ImageTransform", "imagenet_transform"]

# The ImageNet channel statistics torchvision's classifiers were trained with.
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class ImageTransform:
    """A named, lazily built PIL-image -> tensor pipeline. ``describe`` is what the UI shows."""

    def __init__(self, name: str, factory: Callable[[], Callable[[Any], torch.Tensor]], describe: str) -> None:
        self.name = name
        self.describe = describe
        self._factory = factory
        self._pipeline: Callable[[Any], torch.Tensor] | None = None
        self._lock = threading.Lock()

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

    def __repr__(self) -> str:
        return f"ImageTransform({self.name!r}: {self.describe})"


def _imagenet_pipeline() -> Callable[[Any], torch.Tensor]:
    from torchvision import transforms

    return transforms.Compose(
        [
            transforms.Resize(256, interpolation=transforms.InterpolationMode.BILINEAR),
            transforms.CenterCrop(224),
            transforms.ToTensor(),
            transforms.Normalize(mean=list(IMAGENET_MEAN), std=list(IMAGENET_STD)),
        ]
    )


def imagenet_transform() -> ImageTransform:
    """The common ImageNet evaluation preprocessing: resize 256, center-crop 224, ImageNet mean/std."""
    return ImageTransform("imagenet", _imagenet_pipeline, "resize 256 (bilinear), center-crop 224, ImageNet mean/std")
