"""The ``image_folder`` data set kind: seeded disjoint split recorded in the spec, labels, errors, unlabeled runs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from ptq_core.config import Evaluation, QuantConfig
from ptq_core.data import load_dataset
from ptq_core.data.image_dataset import CachedItems, default_num_calibration, image_folder_spec
from ptq_core.data.image_folder import load_image_folder
from ptq_core.errors import DataError
from ptq_core.models import ModelEntry, register_model
from ptq_core.models.preprocessing import ImageTransform
from ptq_core.pipeline import Explorer

_EVAL = {f: v for f, v in (("runtime", None),) if f in Evaluation.__dataclass_fields__}


def _to_tensor(image: Image.Image) -> torch.Tensor:
    """3x8x8 float32 in [0, 1]: small, so the tests stay fast."""
    array = np.asarray(image.resize((8, 8)), dtype=np.float32) / 255.0
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def _write_images(folder: Path, count: int, *, classes: int = 0, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    for i in range(count):
        target = folder / f"class_{i % classes}" if classes else folder
        target.mkdir(parents=True, exist_ok=True)
        pixels = rng.integers(0, 256, size=(12, 12, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(target / f"img_{i:03d}.png")


@pytest.fixture
def labeled(tmp_path: Path) -> Path:
    _write_images(tmp_path / "labeled", 20, classes=4)
    return tmp_path / "labeled"


def test_split_is_disjoint_complete_seeded_and_labels_follow(labeled: Path) -> None:
    data = load_dataset({"kind": "image_folder", "path": str(labeled)}, transform=_to_tensor)
    assert data.name == "image_folder" and data.input_shape == (3, 8, 8)
    assert len(data.calibration_pool) == default_num_calibration(20) == 10  # type: ignore[arg-type]
    assert len(data.evaluation) == 10  # type: ignore[arg-type]
    cal, ev = data.calibration_pool.indices, data.evaluation.indices  # type: ignore[attr-defined]
    assert set(cal).isdisjoint(ev) and sorted([*cal, *ev]) == list(range(20))
    assert data.class_names == ["class_0", "class_1", "class_2", "class_3"] and data.num_classes == 4
    assert data.calibration_labels is not None and data.evaluation_labels is not None
    assert [data.evaluation[i][1] for i in range(10)] == data.evaluation_labels.tolist()
    assert data.info["samples"] == {"total": 20, "calibration": 10, "evaluation": 10} and data.info["labeled"]
    again = load_dataset({"kind": "image_folder", "path": str(labeled)}, transform=_to_tensor)
    assert again.calibration_pool.indices == cal  # type: ignore[attr-defined]
    other = load_dataset({"kind": "image_folder", "path": str(labeled), "seed": 1}, transform=_to_tensor)
    assert other.calibration_pool.indices != cal  # type: ignore[attr-defined]


def test_explicit_sizes_and_max_images(labeled: Path) -> None:
    spec = {"kind": "image_folder", "path": str(labeled), "num_calibration": 3, "max_images": 8}
    data = load_dataset(spec, transform=_to_tensor)
    assert (len(data.calibration_pool), len(data.evaluation)) == (3, 5)  # type: ignore[arg-type]


def test_image_folder_spec_writes_every_default_so_a_config_reproduces_the_split(labeled: Path) -> None:
    spec = image_folder_spec(labeled)
    assert spec == {"kind": "image_folder", "path": str(labeled), "seed": 0, "max_images": None, "num_calibration": 10}
    config = QuantConfig.from_json(QuantConfig(dataset=spec).to_json())
    assert config.dataset == spec
    first = load_dataset(config.dataset, transform=_to_tensor)
    second = load_dataset(spec, transform=_to_tensor)
    assert first.evaluation.indices == second.evaluation.indices  # type: ignore[attr-defined]


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({}, r"dataset.path: this model needs images; choose an image folder"),
        ({"path": 3}, r"dataset.path: got 3"),
        ({"num_calibration": 20}, r"num_calibration: got 20 for a folder of 20 images; allowed: 1 to 19"),
        ({"num_calibration": 0}, r"dataset.num_calibration: got 0; allowed: an integer >= 1"),
        ({"seed": -1}, r"dataset.seed: got -1"),
        ({"max_images": True}, r"dataset.max_images: got True"),
        ({"max_images": 1}, r"holds 1 image; allowed: at least 2"),
        ({"colour": "red"}, r"options \['colour'\] are not accepted"),
    ],
)
def test_bad_options_are_data_errors(labeled: Path, options: dict[str, Any], message: str) -> None:
    spec: dict[str, Any] = {"kind": "image_folder", **({"path": str(labeled)} if options else {}), **options}
    with pytest.raises(DataError, match=message):
        load_dataset(spec, transform=_to_tensor)


def test_a_model_without_image_preprocessing_cannot_read_images(labeled: Path) -> None:
    with pytest.raises(DataError, match="no image preprocessing"):
        load_dataset({"kind": "image_folder", "path": str(labeled)}, transform=None)


def test_decoded_images_are_cached_within_the_budget(labeled: Path) -> None:
    data = load_dataset({"kind": "image_folder", "path": str(labeled)}, transform=_to_tensor)
    assert data.evaluation[0][0] is data.evaluation[0][0]  # decoded once, then served from memory
    uncached = CachedItems(load_image_folder(labeled, _to_tensor)[0], budget_bytes=0)
    assert uncached[0][0] is not uncached[0][0] and uncached.cached_bytes == 0


class _TinyImageNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.pool(torch.relu(self.conv(x))), 1))


def _register_tiny() -> str:
    register_model(
        ModelEntry(
            name="test_tiny_image_model", description="a tiny random image classifier (test only)",
            default_dataset={"kind": "image_folder"}, build=lambda: _TinyImageNet().eval(),
            transform=ImageTransform("tiny", lambda: _to_tensor, "8x8, [0, 1]"),
        )
    )  # fmt: skip
    return "test_tiny_image_model"


def test_unlabeled_folder_reports_agreement_and_kl_not_accuracy(tmp_path: Path) -> None:
    _write_images(tmp_path / "flat", 12)
    name = _register_tiny()
    spec = {"kind": "image_folder", "path": str(tmp_path / "flat"), "num_calibration": 4}
    explorer = Explorer(name, spec)
    assert explorer.dataset.evaluation_labels is None and explorer.dataset.num_classes == 0
    result = explorer.evaluate(QuantConfig(model=name, dataset=spec, evaluation=Evaluation(**_EVAL)))
    assert result.metrics["labeled"] is False
    assert not any(key.endswith(("top1", "top5")) for key in result.metrics)
    assert 0.0 <= result.metrics["agreement"] <= 1.0 and result.metrics["kl_divergence"] >= 0.0
    assert result.dataset["calibration_pool_size"] == 4 and result.dataset["evaluation_size"] == 8
    assert set(result.dataset["calibration_indices"]) <= set(range(4))


def test_labeled_folder_reports_accuracy(labeled: Path) -> None:
    name = _register_tiny()
    spec = {"kind": "image_folder", "path": str(labeled)}
    result = Explorer(name, spec).evaluate(QuantConfig(model=name, dataset=spec, evaluation=Evaluation(**_EVAL)))
    assert result.metrics["labeled"] is True and 0.0 <= result.metrics["fp32_top1"] <= 1.0


def test_image_models_refuse_to_run_without_an_image_folder() -> None:
    name = _register_tiny()
    with pytest.raises(DataError, match="choose an image folder"):
        Explorer(name)  # its default data set is an image folder without a path, as for efficientnet_lite0
    explorer = Explorer(name, "digits")  # the digits are 1x8x8 tensors, not images
    with pytest.raises(DataError, match=r"expects RGB images, got a Tensor of shape \(1, 8, 8\)"):
        explorer.evaluate(QuantConfig(model="test_tiny_image_model", evaluation=Evaluation(**_EVAL)))
