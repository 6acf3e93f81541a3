"""The ``image_folder`` data set: a folder of images as a :class:`~ptq_core.data.Dataset`.

Spec (the options are keyword arguments of :func:`load_image_folder_dataset`)::

    {"kind": "image_folder", "path": "PATH", "num_calibration": 128, "seed": 0, "max_images": null}

The folder is read by :func:`ptq_core.data.image_folder.load_image_folder` (class sub-folders,
``labels.csv``, or a flat unlabeled folder), in its deterministic file order, then split ONCE by
:func:`~ptq_core.data.image_folder.split_calibration_evaluation`: ``num_calibration`` images
(default ``min(128, N // 2)``) drawn by a permutation seeded with ``seed`` form the calibration
pool, the other images the evaluation split. The two never overlap. The spec holds everything
the split depends on, so a config exported with :func:`image_folder_spec` reproduces it exactly.

Images are decoded and preprocessed with the model's transform on first access and kept in
memory up to ``PTQ_IMAGE_CACHE_MB`` (default 1024 MiB, ~1,700 images at 3x224x224), because a
what-if re-evaluation should not pay JPEG decoding again. Unlabeled folders give
``evaluation_labels=None``: accuracy is not reported, agreement with FP32 and KL are.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset as TorchDataset
from torch.utils.data import Subset

from ptq_core.errors import DataError

from . import Dataset
from .image_folder import LABELS_FILE, load_image_folder, split_calibration_evaluation

__all__ = ["CachedItems", "default_num_calibration", "image_folder_spec", "load_image_folder_dataset"]

KIND = "image_folder"
# 128 calibration images are plenty for per-tensor INT8 ranges (the EfficientNet-Lite0
# protocol); half the folder at most, so small folders still leave images to evaluate on.
DEFAULT_NUM_CALIBRATION = 128
IMAGE_CACHE_ENV = "PTQ_IMAGE_CACHE_MB"
DEFAULT_IMAGE_CACHE_MB = 1024
_NEEDS_PATH = (
    'dataset.path: this model needs images; choose an image folder: {"kind": "image_folder", "path": "PATH"} '
    "(class sub-folders, a folder with labels.csv, or a flat folder of unlabeled images)"
)


def default_num_calibration(num_images: int) -> int:
    """``min(128, num_images // 2)``: the calibration pool size when the spec does not set one."""
    return min(DEFAULT_NUM_CALIBRATION, num_images // 2)


def _cache_budget_bytes() -> int:
    raw = os.environ.get(IMAGE_CACHE_ENV, "").strip()
    try:
        mib = int(raw) if raw else DEFAULT_IMAGE_CACHE_MB
    except ValueError:
        raise DataError(
            f"environment variable {IMAGE_CACHE_ENV}={raw!r}; allowed: an integer number of MiB >= 0"
        ) from None
    return max(mib, 0) * 1024 * 1024


class CachedItems(TorchDataset[tuple[Any, int]]):
    """Items of ``base`` kept after their first access, while their tensors fit in ``budget_bytes``."""

    def __init__(self, base: TorchDataset[tuple[Any, int]], budget_bytes: int) -> None:
        self.base = base
        self.budget_bytes = budget_bytes
        self.cached_bytes = 0
        self._items: dict[int, tuple[Any, int]] = {}
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self.base)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[Any, int]:
        item = self._items.get(index)
        if item is not None:
            return item
        item = self.base[index]
        x = item[0]
        size = x.numel() * x.element_size() if isinstance(x, torch.Tensor) else 0
        with self._lock:
            if index not in self._items and self.cached_bytes + size <= self.budget_bytes:
                self._items[index] = item
                self.cached_bytes += size
        return item

    def fingerprint(self, indices: Sequence[int]) -> str | None:
        base = getattr(self.base, "fingerprint", None)
        return base(indices) if base is not None else None


def image_folder_spec(
    path: str | os.PathLike[str], *, num_calibration: int | None = None, seed: int = 0, max_images: int | None = None
) -> dict[str, Any]:
    """The explicit data-set spec for a folder (defaults filled in), as a dashboard should store it."""
    folder = Path(path)
    spec: dict[str, Any] = {"kind": KIND, "path": str(folder), "seed": seed, "max_images": max_images}
    if num_calibration is None:
        images, _, _ = load_image_folder(
            folder, lambda image: torch.empty(0), max_images=max_images
        )  # lists, decodes nothing
        num_calibration = default_num_calibration(len(images))
    spec["num_calibration"] = num_calibration
    return spec


def _check_int(name: str, value: Any, lo: int, *, optional: bool = False) -> None:
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        allowed = f"an integer >= {lo}" + (" or null" if optional else "")
        raise DataError(f"dataset.{name}: got {value!r}; allowed: {allowed}")


def load_image_folder_dataset(
    *,
    path: str | None,
    num_calibration: int | None,
    seed: int,
    max_images: int | None,
    transform: Callable[[Any], Any] | None,
) -> Dataset:
    """The data set of an ``image_folder`` spec (see the module docstring).

    Raises:
        DataError: no path, a bad option, a folder that cannot be read, holds fewer than two
            images or an image that does not decode, a ``num_calibration`` that leaves no evaluation image, or a model without
            image preprocessing.
    """
    if path is None:
        raise DataError(_NEEDS_PATH)
    if not isinstance(path, str) or not path:
        raise DataError(f"dataset.path: got {path!r}; allowed: the path of a folder of images")
    _check_int("num_calibration", num_calibration, 1, optional=True)
    _check_int("seed", seed, 0)
    _check_int("max_images", max_images, 1, optional=True)
    if transform is None:
        raise DataError(
            "dataset: this model has no image preprocessing, so it cannot read an image folder; allowed: an image "
            "model (efficientnet_lite0, torchvision:<name>, a file model with preprocessing 'imagenet'), or a tensor "
            "data set such as digits for this model"
        )
    root = Path(path)
    base, labels, class_names = load_image_folder(root, transform, max_images=max_images)
    base.check_images()  # all or nothing: a corrupt file fails the load, not the first evaluation
    n = len(base)
    if n < 2:
        raise DataError(f"dataset.path: {path!r} holds {n} image; allowed: at least 2 (calibration and evaluation)")
    k = default_num_calibration(n) if num_calibration is None else num_calibration
    if k > n - 1:
        raise DataError(
            f"dataset.num_calibration: got {k} for a folder of {n} images; allowed: 1 to {n - 1}, so at least one "
            "image is left to evaluate on"
        )
    cal_idx, eval_idx = split_calibration_evaluation(n, k, seed)
    items = CachedItems(base, _cache_budget_bytes())
    x0, _ = items[cal_idx[0]]
    if not isinstance(x0, torch.Tensor) or x0.dtype != torch.float32:
        raise DataError(f"dataset: the model's preprocessing returned {type(x0).__name__}; allowed: a float32 tensor")
    if labels is not None:
        num_classes = max(len(class_names or []), int(labels.max()) + 1)
        layout = LABELS_FILE if (root / LABELS_FILE).is_file() else "class sub-folders"
    else:
        num_classes = 0
        layout = "flat folder, unlabeled"
    return Dataset(
        name=KIND,
        description=f"Images in {root.name or str(root)} ({layout}): {k} calibration / {n - k} evaluation",
        calibration_pool=Subset(items, cal_idx),
        evaluation=Subset(items, eval_idx),
        calibration_labels=labels[cal_idx].clone() if labels is not None else None,
        evaluation_labels=labels[eval_idx].clone() if labels is not None else None,
        num_classes=num_classes,
        class_names=class_names,
        input_shape=tuple(x0.shape),
        info={
            "source": str(root.resolve()),
            "layout": layout,
            "labeled": labels is not None,
            "samples": {"total": n, "calibration": k, "evaluation": n - k},
            "split": f"split_calibration_evaluation({n}, {k}, seed={seed}): seeded permutation, disjoint",
            "seed": seed,
            "max_images": max_images,
            "preprocessing": getattr(transform, "describe", repr(transform)),
        },
    )
