"""Preprocessing of a user's model file: the explicit spec, the input size a .pt2 carries, and the warnings.

Every model file is written by the test (a tiny classifier exported with torch.export at 240x240).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image

from ptq_core.errors import ModelError
from ptq_core.models import get_model_entry, load_model
from ptq_core.models import torchvision_models as tv
from ptq_core.models.files import pt2_input_shape
from ptq_core.models.preprocessing import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageTransform,
    Preprocessing,
    parse_preprocessing,
)
from tests.models import TinyImageNet

HALF = [0.5, 0.5, 0.5]


def _pt2(tmp_path: Path, size: tuple[int, int] = (240, 240), dynamic_batch: bool = True) -> Path:
    path = tmp_path / f"tiny_{size[0]}x{size[1]}.pt2"
    shapes = ({0: torch.export.Dim("batch")},) if dynamic_batch else None
    program = torch.export.export(TinyImageNet().eval(), (torch.rand(2, 3, *size),), dynamic_shapes=shapes)
    torch.export.save(program, str(path))
    return path


def _entry(path: Path, **spec: Any) -> Any:
    return get_model_entry({"kind": "file", "path": str(path), **spec})


# -- the spec object ------------------------------------------------------------------------------
def test_all_keys_given() -> None:
    spec = {"resize": 274, "crop": 240, "mean": HALF, "std": HALF, "interpolation": "bicubic"}
    settings, missing = parse_preprocessing(spec)
    assert settings == Preprocessing(274, (240, 240), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "bicubic")
    assert missing == []
    assert settings.describe() == "resize 274 (bicubic), center-crop 240, mean [0.5, 0.5, 0.5], std [0.5, 0.5, 0.5]"
    assert parse_preprocessing(settings.to_dict())[0] == settings  # round trip


def test_defaults_crop_from_the_model_and_resize_from_the_crop() -> None:
    settings, missing = parse_preprocessing({}, default_crop=(240, 240))
    assert (settings.resize, settings.crop) == (274, (240, 240))  # round(240 / 0.875) = 274
    assert (settings.mean, settings.std, settings.interpolation) == (IMAGENET_MEAN, IMAGENET_STD, "bilinear")
    assert missing == ["resize", "crop", "mean", "std", "interpolation"]
    assert parse_preprocessing({})[0].crop == (224, 224)  # no model size known: 224, resize 256
    assert parse_preprocessing({})[0].resize == 256
    assert parse_preprocessing({"crop": [240, 320]})[0] == Preprocessing(274, (240, 320))


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"crop": -3}, r"model\.preprocessing\.crop: got -3; allowed: an integer from 1 to 4096"),
        ({"crop": 2.5}, r"model\.preprocessing\.crop: got 2\.5; allowed: an integer"),
        (
            {"crop": [240]},
            r"model\.preprocessing\.crop: got \[240\]; allowed: an integer \(square\) or \[height, width\]",
        ),
        ({"resize": "big"}, r"model\.preprocessing\.resize: got 'big'; allowed: an integer from 1 to 4096"),
        ({"resize": 200, "crop": 224}, r"model\.preprocessing\.resize: got 200, smaller than the crop 224"),
        ({"mean": [0.5, 0.5]}, r"model\.preprocessing\.mean: got \[0\.5, 0\.5\]; allowed: 3 finite numbers"),
        ({"mean": [0.5, float("nan"), 0.5]}, r"model\.preprocessing\.mean: got .*allowed: 3 finite numbers"),
        ({"std": [0.5, 0.0, 0.5]}, r"model\.preprocessing\.std: got \[0\.5, 0\.0, 0\.5\]; allowed: 3 positive numbers"),
        (
            {"interpolation": "lanczos"},
            r"model\.preprocessing\.interpolation: got 'lanczos'; allowed: bilinear, bicubic, nearest",
        ),
        ({"size": 3}, r"model\.preprocessing\.size: unknown key; allowed keys: resize, crop, mean, std, interpolation"),
    ],
)
def test_bad_values_name_the_field_and_what_is_allowed(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(ModelError, match=message):
        parse_preprocessing(spec)


def test_bad_values_are_refused_in_a_file_spec(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match=r"model\.preprocessing\.crop: got -3; allowed"):
        _entry(_pt2(tmp_path), preprocessing={"crop": -3})
    with pytest.raises(ModelError, match=r"model\.preprocessing: got 7; allowed: imagenet, none, .* or an object"):
        _entry(_pt2(tmp_path), preprocessing=7)


def test_the_stated_pipeline_is_what_runs() -> None:
    settings, _ = parse_preprocessing({"resize": 20, "crop": [12, 16], "mean": HALF, "std": HALF})
    out = settings.transform("file")(Image.new("RGB", (40, 30), (255, 0, 0)))
    assert out.shape == (3, 12, 16)
    # red 255 -> 1.0 -> (1 - 0.5) / 0.5 = 1; green and blue 0 -> -1
    torch.testing.assert_close(out[:, 0, 0], torch.tensor([1.0, -1.0, -1.0]))


# -- a .pt2's input size --------------------------------------------------------------------------
def test_pt2_input_shape_is_read_without_loading(tmp_path: Path) -> None:
    assert pt2_input_shape(_pt2(tmp_path)) == (3, 240, 240)
    assert pt2_input_shape(_pt2(tmp_path, (96, 128), dynamic_batch=False)) == (3, 96, 128)


def test_pt2_with_a_240_example_input_gets_crop_240_and_a_warning(tmp_path: Path) -> None:
    entry = _entry(_pt2(tmp_path))
    assert isinstance(entry.transform, ImageTransform)
    assert entry.transform.settings == Preprocessing(274, (240, 240))
    assert entry.warnings == (
        "model.preprocessing: not given; using ImageNet mean/std, resize 274, center-crop 240 (the model's input "
        "3x240x240, from the .pt2's example input); state it if the model was trained otherwise",
    )
    image = Image.new("RGB", (300, 280), (10, 20, 30))
    assert entry.transform(image).shape == (3, 240, 240)


def test_stated_preprocessing_without_crop_takes_the_pt2_size_and_says_nothing(tmp_path: Path) -> None:
    entry = _entry(_pt2(tmp_path), preprocessing={"mean": HALF, "std": HALF})
    assert entry.transform.settings == Preprocessing(274, (240, 240), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
    assert entry.warnings == ()


def test_crop_that_disagrees_with_the_pt2_input_is_a_warning(tmp_path: Path) -> None:
    path = _pt2(tmp_path)
    entry = _entry(path, preprocessing={"crop": 224, "mean": HALF, "std": HALF})
    assert entry.warnings == (
        "model.preprocessing.crop 224 disagrees with the model's input 240x240 (from the .pt2's example input); "
        "state the crop the model was trained at",
    )
    assert any("crop 224 disagrees" in w for w in _entry(path, preprocessing="imagenet").warnings)
    defaulted = _entry(path, preprocessing={"crop": 240})
    assert defaulted.warnings == (
        "model.preprocessing: mean and std not given; using ImageNet's; state it if the model was trained otherwise",
    )


def test_input_shape_that_disagrees_with_the_pt2_is_an_error(tmp_path: Path) -> None:
    path = _pt2(tmp_path)
    with pytest.raises(
        ModelError,
        match=r"model\.input_shape: got \[3, 224, 224\], but 'tiny_240x240\.pt2' was "
        r"exported with an example input of one sample \[3, 240, 240\]",
    ):
        _entry(path, input_shape=[3, 224, 224])
    assert _entry(path, input_shape=[3, 240, 240]).transform.settings.crop == (240, 240)


def test_pt2_of_a_non_image_input_defaults_to_no_preprocessing(tmp_path: Path) -> None:
    path = tmp_path / "mlp.pt2"
    torch.export.save(torch.export.export(load_model("digits_mlp"), (torch.rand(2, 1, 8, 8),)), str(path))
    entry = _entry(path)
    assert entry.transform is None and entry.default_dataset == "digits"
    assert entry.warnings and "input 1x8x8 (from the .pt2's example input) is not an RGB image" in entry.warnings[0]
    assert _entry(path, preprocessing="none").warnings == ()
    assert "image preprocessing gives 3xHxW RGB tensors" in _entry(path, preprocessing="imagenet").warnings[0]


def test_state_dict_default_preprocessing_is_the_architectures_with_a_warning(tmp_path: Path) -> None:
    path = tmp_path / "cnn.pt"
    torch.save(load_model("digits_cnn").state_dict(), path)
    assert _entry(path, architecture="digits_cnn").warnings == ()  # tensor data: nothing to state
    lite = tmp_path / "lite.pt"
    torch.save(get_model_entry({"kind": "efficientnet_lite0", "weights": "random"}).build().state_dict(), lite)
    entry = _entry(lite, architecture="efficientnet_lite0")
    assert entry.warnings == (
        "model.preprocessing: not given; using efficientnet_lite0's: resize 256 (bilinear), center-crop 224, "
        "(x - 0.5) / 0.5; state it if the model was trained otherwise",
    )


# -- torchvision weights say their own sizes ------------------------------------------------------
def test_torchvision_description_reports_the_weights_resize_and_crop() -> None:
    assert tv.torchvision_transform("resnet18").describe == "resize 256 (bilinear), center-crop 224, ImageNet mean/std"
    assert tv.torchvision_transform("resnet50").describe == "resize 232 (bilinear), center-crop 224, ImageNet mean/std"
    b1 = tv.torchvision_transform("efficientnet_b1")
    assert b1.describe == "resize 255 (bilinear), center-crop 240, ImageNet mean/std"
    assert b1.settings is not None and b1.settings.crop == (240, 240)


def test_the_model_s_warnings_reach_the_result(tmp_path: Path) -> None:
    from ptq_core.config import QuantConfig
    from ptq_core.paths import DATA_ROOTS_ENV
    from ptq_core.pipeline import Explorer

    path = tmp_path / "mlp.pt2"
    torch.export.save(torch.export.export(load_model("digits_mlp"), (torch.rand(2, 1, 8, 8),)), str(path))
    spec = {"kind": "file", "path": str(path)}
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(DATA_ROOTS_ENV, str(tmp_path))
        result = Explorer(spec, "digits").evaluate(QuantConfig.from_dict({"model": spec, "evaluation": {"runtime": None}}))
    assert any("is not an RGB image" in w for w in result.warnings)
