"""The embedded default data set: scikit-learn's handwritten digits, in fixed splits.

``load_digits()`` ships inside scikit-learn (1797 grayscale 8x8 images of the digits 0-9,
pixel values 0..16, no download). Here they become float32 tensors of shape (1, 8, 8) with
values in [0, 1] (pixel / 16), split once by a fixed permutation into three disjoint parts:

    train        1078 samples (60%)  used only by ``python -m ptq_core.models.train_digits``
    calibration   359 samples (20%)  the pool calibration subsets are drawn from
    evaluation    360 samples (20%)  accuracy and per-layer errors are measured here

The permutation comes from ``numpy.random.RandomState(0)``, whose stream numpy keeps frozen
across releases, so the splits do not depend on global seeds, torch or numpy versions.
The Dataset object and the registry live in :mod:`ptq_core.data`; this module only knows
the arrays.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch

NUM_SAMPLES = 1797
TRAIN_SIZE = 1078  # round(0.6 * 1797)
CALIBRATION_SIZE = 359  # round(0.2 * 1797)
EVALUATION_SIZE = NUM_SAMPLES - TRAIN_SIZE - CALIBRATION_SIZE  # 360, the remainder
SPLIT_SEED = 0
INPUT_SHAPE = (1, 8, 8)
NUM_CLASSES = 10
CLASS_NAMES = [str(d) for d in range(NUM_CLASSES)]
SOURCE = "scikit-learn load_digits (UCI optical recognition of handwritten digits, bundled; no download)"


@dataclass(frozen=True)
class Split:
    """One split: inputs ``x`` float32 [N, 1, 8, 8] in [0, 1], labels ``y`` int64 [N]."""

    x: torch.Tensor
    y: torch.Tensor

    def __len__(self) -> int:
        return int(self.y.shape[0])


@dataclass(frozen=True)
class DigitsSplits:
    """The three disjoint splits, plus the indices into ``load_digits()`` each one took."""

    train: Split
    calibration: Split
    evaluation: Split
    source_indices: dict[str, np.ndarray]


@lru_cache(maxsize=1)
def _raw_digits() -> tuple[np.ndarray, np.ndarray]:
    # Imported here: scikit-learn takes about a second to import and only this loader needs it.
    from sklearn.datasets import load_digits

    bunch = load_digits()
    images = np.asarray(bunch.images, dtype=np.float32)  # [1797, 8, 8], 0..16
    target = np.asarray(bunch.target, dtype=np.int64)
    images.setflags(write=False)
    target.setflags(write=False)
    return images, target


def split_indices() -> dict[str, np.ndarray]:
    """Indices into ``load_digits()`` of each split, from the fixed permutation."""
    order = np.random.RandomState(SPLIT_SEED).permutation(NUM_SAMPLES)
    cut1, cut2 = TRAIN_SIZE, TRAIN_SIZE + CALIBRATION_SIZE
    return {"train": order[:cut1], "calibration": order[cut1:cut2], "evaluation": order[cut2:]}


def digits_splits() -> DigitsSplits:
    """The train, calibration and evaluation splits as fresh tensors (callers may modify them)."""
    images, target = _raw_digits()
    if images.shape[0] != NUM_SAMPLES:  # a different scikit-learn copy would silently move the splits
        raise RuntimeError(f"load_digits() returned {images.shape[0]} samples, expected {NUM_SAMPLES}")
    indices = split_indices()

    def take(idx: np.ndarray) -> Split:
        x = torch.tensor(images[idx] / 16.0, dtype=torch.float32).unsqueeze(1)
        return Split(x=x, y=torch.tensor(target[idx], dtype=torch.int64))

    return DigitsSplits(
        train=take(indices["train"]),
        calibration=take(indices["calibration"]),
        evaluation=take(indices["evaluation"]),
        source_indices=indices,
    )
