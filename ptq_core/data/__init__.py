"""Data sets: the :class:`Dataset` record, the registry of loaders, and calibration-subset selection.

A data set has a *calibration pool* (what activation statistics may be gathered from) and an
*evaluation* split (what accuracy is measured on), kept disjoint. Both hold ``(x, y)`` items:
``x`` a float32 tensor of ``input_shape``, ``y`` an int class index, or -1 when unlabeled.

Specs are what a :class:`~ptq_core.config.QuantConfig` names in its ``dataset`` field: a
registered name (``"digits"``) or an object ``{"kind": <registered name>, **options}`` whose
options go to that loader as keyword arguments. New sources plug in with
:func:`register_dataset`. Registered here:

* ``"digits"``: the bundled 8x8 digits (:mod:`ptq_core.data.digits`);
* ``{"kind": "image_folder", "path": "PATH", "num_calibration": 128, "seed": 0, "max_images": null}``:
  images on disk (class sub-folders, ``labels.csv`` or unlabeled), split once by a seeded
  permutation into a calibration pool and a disjoint evaluation split, both recorded in the
  spec so an exported config reproduces them (:mod:`ptq_core.data.image_dataset`);
* ``{"kind": "text_file", "path": "PATH", ...}`` and ``"sentences"``: text, one sample a line,
  tokenized by the text model (:mod:`ptq_core.data.text`).

Nothing here downloads anything.

:func:`select_calibration` picks which pool samples a calibration run uses; it is a pure
function of its arguments (its own seeded generator, never the global RNG).
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import Dataset as TorchDataset
from torch.utils.data import Subset

from ptq_core.config import SELECTIONS
from ptq_core.diskcache import digest
from ptq_core.errors import ConfigError, DataError
from ptq_core.models.entry import Modality

from . import digits as _digits

__all__ = [
    "Dataset",
    "TensorSamples",
    "available_datasets",
    "check_dataset_spec",
    "dataset_description",
    "dataset_fingerprint",
    "load_dataset",
    "register_dataset",
    "select_calibration",
    "unregister_dataset",
]

log = logging.getLogger(__name__)

Transform = Callable[[Any], Any]


class TensorSamples(TorchDataset[tuple[Any, int]]):
    """In-memory samples: item ``i`` is ``(transform(x[i]), int(y[i]))``; ``y`` None means unlabeled (-1)."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor | None = None, transform: Transform | None = None) -> None:
        if y is not None and y.shape[0] != x.shape[0]:
            raise DataError(f"labels: got {y.shape[0]} labels for {x.shape[0]} samples; allowed: one label per sample")
        self.x = x
        self.y = y
        self.transform = transform

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def __getitem__(self, index: int) -> tuple[Any, int]:
        x: Any = self.x[index]
        if self.transform is not None:
            x = self.transform(x)
        return x, (-1 if self.y is None else int(self.y[index]))

    def fingerprint(self, indices: Sequence[int]) -> str | None:
        """The content key of items ``indices``; None when a transform without a ``cache_key`` applies."""
        transform_key = None if self.transform is None else getattr(self.transform, "cache_key", None)
        if self.transform is not None and transform_key is None:
            return None
        idx = torch.as_tensor(list(indices), dtype=torch.int64)
        return digest("tensor_samples", transform_key, self.x[idx], None if self.y is None else self.y[idx])


@dataclass
class Dataset:
    """A loaded data set: the calibration pool, the evaluation split and what describes them."""

    name: str  # registry name, e.g. "digits"
    description: str
    calibration_pool: TorchDataset[Any]  # items (x: float32 Tensor, y: int)
    evaluation: TorchDataset[Any]  # items (x, y); y = -1 when unlabeled
    calibration_labels: torch.Tensor | None  # int64 [len(calibration_pool)]; None if unlabeled
    evaluation_labels: torch.Tensor | None  # int64 [len(evaluation)]; None: accuracy not reported
    num_classes: int
    class_names: list[str] | None
    input_shape: tuple[int, ...]  # per sample, e.g. (1, 8, 8); (2, L) token ids and mask for text
    info: dict[str, Any] = field(default_factory=dict)  # anything worth showing: split sizes, source
    modality: Modality = "image"  # "image" (digits, image folders) or "text": must match the model's (ModelEntry.modality)
    warnings: list[str] = field(default_factory=list)  # said in every Result on this data set (e.g. truncated texts)


@dataclass(frozen=True)
class _Registered:
    loader: Callable[..., Dataset]
    description: str


_REGISTRY: dict[str, _Registered] = {}


def register_dataset(name: str, loader: Callable[..., Dataset], description: str) -> None:
    """Make ``loader`` available as the data set ``name`` (and as ``{"kind": name, ...}``).

    ``loader`` is called with the spec's options as keyword arguments plus ``transform``
    (a callable applied to each ``x``, or None). Registering a name again replaces it.
    """
    if not name or not isinstance(name, str):
        raise ValueError(f"data set name must be a non-empty string, got {name!r}")
    if name in _REGISTRY:
        log.debug("data set %r registered again; replacing the previous loader", name)
    _REGISTRY[name] = _Registered(loader=loader, description=description)


def unregister_dataset(name: str) -> None:
    """Forget the data set registered as ``name`` (tests, plug-ins that go away); DataError if there is none."""
    if name not in _REGISTRY:
        raise DataError(f"dataset: {name!r} is not registered; registered: {', '.join(available_datasets())}")
    del _REGISTRY[name]


def available_datasets() -> list[str]:
    """Registered data set names, sorted."""
    return sorted(_REGISTRY)


def dataset_description(name: str) -> str:
    """The one-line description ``name`` was registered with."""
    return _lookup(name, "dataset").description


def _lookup(name: str, path: str) -> _Registered:
    try:
        return _REGISTRY[name]
    except KeyError:
        raise DataError(f"{path}: unknown data set {name!r}; available: {', '.join(available_datasets())}") from None


def dataset_fingerprint(data: TorchDataset[Any], indices: Sequence[int]) -> str | None:
    """A key of the contents of ``data[indices]`` (values and labels), or None when it cannot be known.

    Data sets that can say what their items are made of have a ``fingerprint(indices)`` method
    (tensor samples, image folders); ``Subset`` is followed to its base. Used to keep FP32 logits and
    calibration statistics on disk (:mod:`ptq_core.diskcache`).
    """
    if isinstance(data, Subset):
        return dataset_fingerprint(data.dataset, [data.indices[i] for i in indices])
    own = getattr(data, "fingerprint", None)
    return own(indices) if callable(own) else None


def load_dataset(spec: str | dict[str, Any], *, transform: Transform | None = None) -> Dataset:
    """Load the data set a spec names: ``"digits"`` or ``{"kind": "digits", **options}``.

    ``transform`` is applied to every ``x`` of both splits (e.g. a model's preprocessing).
    Unknown names, kinds or options raise :class:`~ptq_core.errors.DataError`.
    """
    entry, options = _resolve(spec)
    return entry.loader(**options, transform=transform)


def check_dataset_spec(spec: Any) -> None:
    """DataError unless ``spec`` names a registered data set with options its loader takes; loads nothing.

    What a sweep checks for every data set of its grid before running the first config.
    """
    _resolve(spec)


def _resolve(spec: Any) -> tuple[_Registered, dict[str, Any]]:
    if isinstance(spec, str):
        name, options, path = spec, {}, "dataset"
    elif isinstance(spec, dict) and isinstance(spec.get("kind"), str):
        name, path = spec["kind"], "dataset.kind"
        options = {k: v for k, v in spec.items() if k != "kind"}
    else:
        raise DataError(
            f"dataset: got {spec!r}; allowed: a registered name ({', '.join(available_datasets())}) "
            'or an object with a "kind" key'
        )
    entry = _lookup(name, path)
    try:
        inspect.signature(entry.loader).bind(**options, transform=None)
    except TypeError:
        params = [p for p in inspect.signature(entry.loader).parameters if p != "transform"]
        unknown = sorted(set(options) - set(params))
        raise DataError(
            f"dataset: options {unknown or sorted(options)} are not accepted by kind {name!r}; "
            f"allowed options: {', '.join(params) or 'none'}"
        ) from None
    return entry, options


def select_calibration(
    labels: torch.Tensor | None, pool_size: int, num_samples: int, seed: int, selection: str
) -> tuple[list[int], list[str]]:
    """Indices into the calibration pool for one calibration run, and warnings worth showing.

    ``first``: ``0..n-1``. ``random``: the first ``n`` of ``randperm(pool_size)`` drawn from
    ``torch.Generator().manual_seed(seed)``. ``balanced``: round-robin over the classes of
    ``labels`` in sorted order, each class's indices shuffled by that generator, one per class
    per round until ``n`` are taken (a class that runs out is skipped); needs labels.
    ``n = min(num_samples, pool_size)``; a cap adds a warning. Same arguments, same indices.

    Example: labels [0, 0, 1, 1, 1, 2], n = 4, balanced -> one index of class 0, one of 1,
    one of 2, then a second one of class 0 (per-class counts 2, 1, 1).
    """
    if selection not in SELECTIONS:
        raise ConfigError(f"calibration.selection: got {selection!r}; allowed: {', '.join(SELECTIONS)}")
    if isinstance(num_samples, bool) or not isinstance(num_samples, int) or num_samples < 1:
        raise ConfigError(f"calibration.num_samples: got {num_samples!r}; allowed: an integer >= 1")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ConfigError(f"calibration.seed: got {seed!r}; allowed: an integer >= 0")
    if pool_size < 1:
        raise DataError(f"calibration pool: got {pool_size} samples; allowed: a pool of at least 1 sample")
    warnings: list[str] = []
    n = num_samples
    if num_samples > pool_size:
        n = pool_size
        warnings.append(
            f"calibration.num_samples={num_samples} exceeds the calibration pool ({pool_size} samples); using {pool_size}"
        )
    if selection == "first":
        return list(range(n)), warnings
    generator = torch.Generator().manual_seed(seed)
    if selection == "random":
        return torch.randperm(pool_size, generator=generator)[:n].tolist(), warnings

    if labels is None:
        raise DataError(
            "calibration.selection: got 'balanced' but this data set's calibration pool is unlabeled; "
            "allowed: random, first"
        )
    labels = labels.reshape(-1)
    if labels.shape[0] != pool_size:
        raise DataError(
            f"calibration labels: got {labels.shape[0]} labels for a pool of {pool_size}; allowed: one per sample"
        )
    classes = torch.unique(labels, sorted=True).tolist()
    queues: list[list[int]] = []
    for cls in classes:
        members = torch.nonzero(labels == cls).flatten()
        queues.append(members[torch.randperm(members.numel(), generator=generator)].tolist())
    chosen: list[int] = []
    picks = [0] * len(queues)
    depth = 0
    while len(chosen) < n:
        for i, queue in enumerate(queues):
            if depth < len(queue) and len(chosen) < n:
                chosen.append(queue[depth])
                picks[i] += 1
        depth += 1
    if max(picks) - min(picks) > 1:  # some class ran out before n was reached
        short = [f"{cls} ({len(q)})" for cls, q in zip(classes, queues, strict=True) if len(q) < max(picks)]
        warnings.append(
            f"calibration.selection='balanced': class(es) {', '.join(short)} have fewer than {max(picks)} samples; "
            f"the {n} picks are not exactly balanced"
        )
    return chosen, warnings


def _load_digits(*, transform: Transform | None = None) -> Dataset:
    splits = _digits.digits_splits()
    return Dataset(
        name="digits",
        description=_DIGITS_DESCRIPTION,
        calibration_pool=TensorSamples(splits.calibration.x, splits.calibration.y, transform),
        evaluation=TensorSamples(splits.evaluation.x, splits.evaluation.y, transform),
        calibration_labels=splits.calibration.y.clone(),
        evaluation_labels=splits.evaluation.y.clone(),
        num_classes=_digits.NUM_CLASSES,
        class_names=list(_digits.CLASS_NAMES),
        input_shape=_digits.INPUT_SHAPE,
        info={
            "source": _digits.SOURCE,
            "samples": {
                "train": len(splits.train),
                "calibration": len(splits.calibration),
                "evaluation": len(splits.evaluation),
            },
            "split": f"fixed permutation numpy.random.RandomState({_digits.SPLIT_SEED}): 60% train / 20% calibration / 20% evaluation",
            "preprocessing": "pixel / 16 -> float32 in [0, 1], shape (1, 8, 8)",
        },
    )


_DIGITS_DESCRIPTION = (
    "Handwritten digits 0-9, 8x8 grayscale (scikit-learn, bundled): 359 calibration / 360 evaluation samples"
)

register_dataset("digits", _load_digits, _DIGITS_DESCRIPTION)


def _load_image_folder(
    *,
    path: str | None = None,
    num_calibration: int | None = None,
    seed: int = 0,
    max_images: int | None = None,
    transform: Transform | None = None,
) -> Dataset:
    # Imported here: the loader pulls in PIL, which only image data sets need.
    from .image_dataset import load_image_folder_dataset

    return load_image_folder_dataset(
        path=path, num_calibration=num_calibration, seed=seed, max_images=max_images, transform=transform
    )


register_dataset(
    "image_folder",
    _load_image_folder,
    "Images on disk (class sub-folders, labels.csv, or unlabeled), split into a calibration pool and evaluation set",
)


from . import text as _text  # noqa: E402, F401  (registers text_file and sentences; it imports Dataset from here)
