"""Image folders on disk (ptq_core.data.image_folder): layouts, labels, errors and the seeded split."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from PIL import Image

from ptq_core.data.image_folder import load_image_folder, split_calibration_evaluation
from ptq_core.errors import DataError


def _to_tensor(image: Image.Image) -> torch.Tensor:
    """Tiny stand-in transform: the red channel of the top-left pixel and the image size."""
    red = image.getpixel((0, 0))
    assert isinstance(red, tuple)
    return torch.tensor([float(red[0]), float(image.width), float(image.height)])


def _save(path: Path, red: int, size: tuple[int, int] = (4, 3), mode: str = "RGB") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    color: int | tuple[int, ...] = red if mode == "L" else (red, 0, 0)
    Image.new(mode, size, color).save(path)


def test_imagefolder_layout_indexes_classes_by_sorted_folder_name(tmp_path: Path) -> None:
    _save(tmp_path / "zebra" / "b.png", 30)
    _save(tmp_path / "zebra" / "a.jpg", 20)
    _save(tmp_path / "ant" / "x.png", 10)
    (tmp_path / "ant" / "notes.txt").write_text("not an image")
    dataset, labels, names = load_image_folder(tmp_path, _to_tensor)
    assert names == ["ant", "zebra"]
    assert labels is not None and labels.dtype == torch.int64
    assert labels.tolist() == [0, 1, 1]
    assert [p.name for p in dataset.files] == ["x.png", "a.jpg", "b.png"]
    x, label = dataset[2]
    assert label == 1
    assert x.tolist() == [30.0, 4.0, 3.0]


def test_flat_folder_with_labels_csv_uses_its_indices_and_names(tmp_path: Path) -> None:
    _save(tmp_path / "b.png", 2)
    _save(tmp_path / "a.png", 1, mode="L")  # greyscale is converted to RGB on access
    (tmp_path / "labels.csv").write_text("file,class_index,name\nb.png,4,dog\na.png,2,cat\n")
    dataset, labels, names = load_image_folder(tmp_path, _to_tensor)
    assert labels is not None and labels.tolist() == [2, 4]
    assert names == ["", "", "cat", "", "dog"]
    x, label = dataset[0]
    assert (x[0].item(), label) == (1.0, 2)


def test_labels_csv_without_name_column_gives_no_class_names(tmp_path: Path) -> None:
    _save(tmp_path / "a.png", 1)
    (tmp_path / "labels.csv").write_text("file,class_index\na.png,7\n")
    _, labels, names = load_image_folder(tmp_path, _to_tensor)
    assert labels is not None and labels.tolist() == [7]
    assert names is None


def test_flat_folder_without_labels_is_unlabeled(tmp_path: Path) -> None:
    for i, name in enumerate(["c.png", "a.JPG", "b.bmp"]):
        _save(tmp_path / name, i)
    dataset, labels, names = load_image_folder(tmp_path, _to_tensor)
    assert labels is None and names is None
    assert [p.name for p in dataset.files] == ["a.JPG", "b.bmp", "c.png"]
    assert [dataset[i][1] for i in range(len(dataset))] == [-1, -1, -1]


def test_max_images_keeps_the_first_files_in_sorted_order(tmp_path: Path) -> None:
    for name in ["d.png", "a.png", "c.png", "b.png"]:
        _save(tmp_path / "cls" / name, 0)
    dataset, labels, _ = load_image_folder(tmp_path, _to_tensor, max_images=2)
    assert [p.name for p in dataset.files] == ["a.png", "b.png"]
    assert labels is not None and len(labels) == 2
    with pytest.raises(DataError, match="max_images is 0"):
        load_image_folder(tmp_path, _to_tensor, max_images=0)


def test_missing_path_and_file_path_raise(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="does not exist"):
        load_image_folder(tmp_path / "nope", _to_tensor)
    file_path = tmp_path / "f.png"
    _save(file_path, 0)
    with pytest.raises(DataError, match="not a directory"):
        load_image_folder(file_path, _to_tensor)


def test_folder_without_images_lists_accepted_extensions(tmp_path: Path) -> None:
    (tmp_path / "readme.txt").write_text("hi")
    with pytest.raises(DataError, match=r"no images found.*\.jpg.*\.png"):
        load_image_folder(tmp_path, _to_tensor)


def test_corrupt_image_names_the_file_on_access(tmp_path: Path) -> None:
    _save(tmp_path / "good.png", 0)
    (tmp_path / "broken.jpg").write_bytes(b"definitely not a jpeg")
    dataset, _, _ = load_image_folder(tmp_path, _to_tensor)
    assert dataset[1][0][0].item() == 0.0  # good.png sorts after broken.jpg
    with pytest.raises(DataError, match="broken.jpg"):
        dataset[0]


@pytest.mark.parametrize(
    ("csv_text", "message"),
    [
        ("file,class_index\na.png,1\nmissing.png,2\n", r"line 3: file 'missing.png' does not exist"),
        ("file,class_index\na.png,cat\n", r"line 2: class_index 'cat' is not an integer"),
        ("file,class_index\na.png,-3\n", r"line 2: class_index -3 is negative"),
        ("file,label\na.png,1\n", r"lacks column\(s\) \['class_index'\]"),
        ("file,class_index\n", "no rows"),
    ],
)
def test_bad_labels_csv_names_the_row_or_column(tmp_path: Path, csv_text: str, message: str) -> None:
    _save(tmp_path / "a.png", 0)
    (tmp_path / "labels.csv").write_text(csv_text)
    with pytest.raises(DataError, match=message):
        load_image_folder(tmp_path, _to_tensor)


def test_split_is_disjoint_complete_and_deterministic() -> None:
    calibration, evaluation = split_calibration_evaluation(20, 6, seed=3)
    assert len(calibration) == 6 and len(evaluation) == 14
    assert set(calibration).isdisjoint(evaluation)
    assert sorted(calibration + evaluation) == list(range(20))
    assert calibration == sorted(calibration)
    assert split_calibration_evaluation(20, 6, seed=3) == (calibration, evaluation)
    assert split_calibration_evaluation(20, 6, seed=4) != (calibration, evaluation)


def test_split_does_not_touch_global_rng() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    split_calibration_evaluation(50, 10, seed=0)
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.parametrize(
    ("num_items", "num_calibration", "message"),
    [(0, 0, "num_items is 0"), (5, 6, "num_calibration is 6"), (5, -1, "num_calibration is -1")],
)
def test_split_rejects_bad_sizes(num_items: int, num_calibration: int, message: str) -> None:
    with pytest.raises(DataError, match=message):
        split_calibration_evaluation(num_items, num_calibration, seed=0)
