"""Images on disk as a lazily-loaded, labelled data set, plus a seeded calibration/evaluation split.

What lives here: :func:`load_image_folder`, which reads one of three layouts, and
:func:`split_calibration_evaluation`. What does not: the data-set registry (``ptq_core.data``) and
any preprocessing choice (the caller passes the model's transform).

Layouts, tried in this order:

1. a folder with ``labels.csv`` (header with at least ``file,class_index``; an optional ``name``
   column gives class names) next to the image files;
2. the ImageFolder layout: one sub-folder per class, classes sorted by folder name -> index 0..C-1
   (images directly inside each class folder; used when any sub-folder holds an image);
3. a flat folder of images without labels: every label is -1 and the returned labels are ``None``.

Files are sorted by name so the same folder always gives the same order. Images are opened with
PIL, converted to RGB and transformed only when an item is accessed. When the transform has a
``cache_key`` (every model's :class:`~ptq_core.models.preprocessing.ImageTransform` has), the
transformed tensor is kept in the disk cache (:mod:`ptq_core.diskcache`) under the SHA-256 of the
file's bytes and that key: the same image is decoded once per transform, across restarts too.
Measured on the 500 shared ImageNet samples (2-core AMD EPYC): decoding and preprocessing them
takes about 4 s; reading them back from the cache about 0.4 s.

A folder is all or nothing: :meth:`ImageFolderData.check_images` decodes every file once when the
data set is loaded (JPEGs in PIL's draft mode, at 1/8 scale: every compressed byte is still
read, so a truncated or corrupt file fails, at a fraction of a full decode) and raises a DataError
naming the first file that does not decode, before any of it is used. Files are known by the
SHA-256 of their bytes, as in the disk cache, so a file checked once in this process is not
checked again, and a file changed on disk since is.
"""

from __future__ import annotations

import csv
import hashlib
import io
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from ptq_core.diskcache import default_cache, digest
from ptq_core.errors import DataError

IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp")
LABELS_FILE = "labels.csv"
UNLABELED = -1
_DRAFT_SCALE = 8  # JPEG draft decoding at 1/8 scale: the check costs a fraction of a full decode
_DECODED: set[str] = set()  # SHA-256 of files that decoded in this process (never a failure: a fix is seen at once)


def check_decodes(data: bytes, path: Path) -> None:
    """DataError naming ``path`` unless ``data`` decodes as an image (every compressed byte is read)."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            if image.format == "JPEG":
                image.draft("RGB", (max(1, image.width // _DRAFT_SCALE), max(1, image.height // _DRAFT_SCALE)))
            image.load()
    except Exception as exc:  # PIL meets bad bytes with many types (OSError, SyntaxError, EOFError, struct.error ...)
        if not data:
            reason = "the file is empty"
        elif isinstance(exc, UnidentifiedImageError):  # its message names a BytesIO object: of no use to anyone
            reason = "not an image in a format PIL reads"
        else:
            reason = str(exc).strip() or "the image data is corrupt"
        raise DataError(
            f"image {str(path)!r} cannot be decoded ({reason}); allowed: complete image files "
            f"({', '.join(IMAGE_EXTENSIONS)}): remove or replace this one"
        ) from None


class ImageFolderData(Dataset[tuple[torch.Tensor, int]]):
    """Image files with integer labels (``-1`` when unlabeled); items are ``(transform(image), label)``."""

    def __init__(
        self,
        files: list[Path],
        labels: list[int],
        transform: Callable[[Image.Image], torch.Tensor],
        class_names: list[str] | None = None,
    ) -> None:
        assert len(files) == len(labels), "one label per file"
        self.files = files
        self.labels = labels
        self.transform = transform
        self.class_names = class_names
        self._digests: dict[int, str] = {}  # file index -> SHA-256 of its bytes, once read

    def __len__(self) -> int:
        return len(self.files)

    def _read(self, index: int) -> bytes:
        path = self.files[index]
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise DataError(f"cannot read image {str(path)!r}: {exc.strerror}; expected a readable image file") from exc
        self._digests[index] = hashlib.sha256(data).hexdigest()
        return data

    def check_images(self) -> None:
        """Decode every file once (see the module docstring); DataError naming the first that does not decode."""
        for index, path in enumerate(self.files):
            data = self._read(index)
            digest_hex = self._digests[index]
            if digest_hex in _DECODED:
                continue
            check_decodes(data, path)
            _DECODED.add(digest_hex)

    def file_digest(self, index: int) -> str:
        """SHA-256 of file ``index``'s bytes (read once)."""
        if index not in self._digests:
            self._read(index)
        return self._digests[index]

    def _cache_key(self, index: int) -> str | None:
        transform_key = getattr(self.transform, "cache_key", None)
        return None if transform_key is None else digest(transform_key, self.file_digest(index))

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        path = self.files[index]
        data = self._read(index)
        cache = default_cache()
        key = self._cache_key(index) if cache.enabled else None
        if key is not None:
            cached = cache.load("images", key)
            if isinstance(cached, torch.Tensor):
                return cached, self.labels[index]
        try:
            with Image.open(io.BytesIO(data)) as image:
                rgb = image.convert("RGB")
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            raise DataError(f"cannot read image {str(path)!r}: {exc}; expected a valid image file") from exc
        x = self.transform(rgb)
        if key is not None and isinstance(x, torch.Tensor):
            cache.save("images", key, x)
        return x, self.labels[index]

    def fingerprint(self, indices: Sequence[int]) -> str | None:
        """The content key of items ``indices`` (file bytes, labels, transform); None when the transform has no key."""
        transform_key = getattr(self.transform, "cache_key", None)
        if transform_key is None:
            return None
        return digest("image_folder", transform_key, [self.file_digest(i) for i in indices],
                      [self.labels[i] for i in indices])


def _is_image(path: Path) -> bool:
    return path.is_file() and path.suffix.lower() in IMAGE_EXTENSIONS


def _images_in(folder: Path) -> list[Path]:
    return sorted((p for p in folder.iterdir() if _is_image(p)), key=lambda p: p.name)


def _read_labels_csv(root: Path) -> tuple[list[Path], list[int], list[str] | None]:
    """Files, labels and (when a ``name`` column exists) class names indexed by class index."""
    csv_path = root / LABELS_FILE
    try:
        return _parse_labels_csv(root, csv_path)
    except (csv.Error, UnicodeDecodeError) as exc:
        raise DataError(f"{str(csv_path)!r} is not a readable UTF-8 CSV file: {exc}") from exc


def _parse_labels_csv(root: Path, csv_path: Path) -> tuple[list[Path], list[int], list[str] | None]:
    with csv_path.open(newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        columns = reader.fieldnames or []
        missing = [c for c in ("file", "class_index") if c not in columns]
        if missing:
            raise DataError(
                f"{str(csv_path)!r} lacks column(s) {missing}; its header is {columns}, "
                "expected at least 'file,class_index' (optionally 'name')"
            )
        has_names = "name" in columns
        entries: list[tuple[str, int]] = []
        names: dict[int, str] = {}
        # Row 1 is the header, so data rows start at line 2 as a spreadsheet would number them.
        for line, row in enumerate(reader, start=2):
            file_name = (row.get("file") or "").strip()
            raw_index = (row.get("class_index") or "").strip()
            try:
                class_index = int(raw_index)
            except ValueError:
                raise DataError(
                    f"{str(csv_path)!r} line {line}: class_index {raw_index!r} is not an integer; "
                    "expected a class index >= 0"
                ) from None
            if class_index < 0:
                raise DataError(f"{str(csv_path)!r} line {line}: class_index {class_index} is negative; expected >= 0")
            if not file_name or not (root / file_name).is_file():
                raise DataError(f"{str(csv_path)!r} line {line}: file {file_name!r} does not exist in {str(root)!r}")
            entries.append((file_name, class_index))
            if has_names and row.get("name"):
                names.setdefault(class_index, str(row["name"]).strip())
    if not entries:
        raise DataError(f"{str(csv_path)!r} has a header but no rows; expected one row per image")
    entries.sort(key=lambda entry: entry[0])
    files = [root / name for name, _ in entries]
    labels = [index for _, index in entries]
    class_names: list[str] | None = None
    if names:
        # Index-aligned list; classes absent from the CSV get an empty name.
        class_names = [names.get(i, "") for i in range(max(names) + 1)]
    return files, labels, class_names


def load_image_folder(
    path: str | Path,
    transform: Callable[[Image.Image], torch.Tensor],
    *,
    max_images: int | None = None,
) -> tuple[ImageFolderData, torch.Tensor | None, list[str] | None]:
    """Read a folder of images; return the data set, its int64 labels (or None) and class names (or None).

    ``max_images`` keeps the first N files in the deterministic order: by file name for the flat and
    labels.csv layouts, by class folder then file name for the ImageFolder layout.

    Raises:
        DataError: the path is missing or not a folder, holds no images, labels.csv is malformed
            or names a missing file, or ``max_images`` is not positive.
    """
    root = Path(path)
    if not root.exists():
        raise DataError(f"data folder {str(root)!r} does not exist")
    if not root.is_dir():
        raise DataError(f"data path {str(root)!r} is not a directory; expected a folder of images")
    if max_images is not None and max_images < 1:
        raise DataError(f"max_images is {max_images}; expected a positive integer or None")

    labels: list[int] | None
    class_names: list[str] | None = None
    if (root / LABELS_FILE).is_file():
        files, labels, class_names = _read_labels_csv(root)
    else:
        class_dirs = sorted(
            (p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name
        )
        per_class = [_images_in(d) for d in class_dirs]
        if any(per_class):
            # Every sub-folder is a class, even an empty one, so indices depend only on folder names.
            class_names = [d.name for d in class_dirs]
            files = [image for images in per_class for image in images]
            labels = [index for index, images in enumerate(per_class) for _ in images]
        else:
            files = _images_in(root)
            labels = None
    if not files:
        raise DataError(
            f"no images found in {str(root)!r}; accepted extensions are {', '.join(IMAGE_EXTENSIONS)} "
            f"(flat, in one sub-folder per class, or listed in {LABELS_FILE})"
        )
    if max_images is not None:
        files = files[:max_images]
        labels = labels[:max_images] if labels is not None else None
    item_labels = labels if labels is not None else [UNLABELED] * len(files)
    dataset = ImageFolderData(files, item_labels, transform, class_names)
    label_tensor = torch.tensor(labels, dtype=torch.int64) if labels is not None else None
    return dataset, label_tensor, class_names


def split_calibration_evaluation(num_items: int, num_calibration: int, seed: int) -> tuple[list[int], list[int]]:
    """Disjoint calibration and evaluation indices drawn by a seeded permutation (no global RNG state).

    Both lists are sorted. Example: ``split_calibration_evaluation(10, 3, seed=0)`` gives 3 and 7
    indices whose union is ``range(10)``; the same arguments always give the same lists.

    Raises:
        DataError: ``num_items`` < 1 or ``num_calibration`` outside ``0..num_items``.
    """
    if num_items < 1:
        raise DataError(f"num_items is {num_items}; expected at least 1 item to split")
    if not 0 <= num_calibration <= num_items:
        raise DataError(f"num_calibration is {num_calibration}; expected a value in 0..{num_items} (num_items)")
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(num_items, generator=generator).tolist()
    return sorted(order[:num_calibration]), sorted(order[num_calibration:])
