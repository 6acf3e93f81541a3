"""Model sources beyond the digits: EfficientNet-Lite0 and torchvision entries, and the user's own files.

No test downloads anything: torchvision weights come from a hub cache the test writes itself (or
are missing on purpose), and every model file is written by the test.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import urllib.error
import warnings
import zipfile
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from ptq_core.config import Evaluation, QuantConfig
from ptq_core.errors import DataError, ModelError
from ptq_core.graph import prepare
from ptq_core.models import available_models, get_model_entry, load_model
from ptq_core.models import torchvision_models as tv
from ptq_core.models.preprocessing import ImageTransform
from ptq_core.pipeline import Explorer

REPO = Path(__file__).resolve().parents[2]
TV_NAMES = ("resnet18", "resnet50", "mobilenet_v2", "mobilenet_v3_large", "efficientnet_b0", "shufflenet_v2_x1_0",
            "regnet_y_400mf")  # fmt: skip
# The evaluation config of these tests: the whole digits evaluation split, simulation only.
_EVAL = {f: v for f, v in (("runtime", None),) if f in Evaluation.__dataclass_fields__}


def _cfg(model: Any) -> QuantConfig:
    return QuantConfig(model=model, evaluation=Evaluation(**_EVAL))


@pytest.fixture
def hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty torch hub cache; downloads fail as on an offline machine."""
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))

    def offline(url: str, dest: Path) -> None:
        raise urllib.error.URLError("offline (test)")

    monkeypatch.setattr(tv, "_download", offline)
    return tmp_path / "torch" / "hub" / "checkpoints"


# -- registry ---------------------------------------------------------------------------------------
def test_available_models_list_efficientnet_and_torchvision_classifiers() -> None:
    names = set(available_models())
    assert {"digits_cnn", "digits_mlp", "efficientnet_lite0"} <= names
    assert {f"torchvision:{n}" for n in TV_NAMES} <= names


def test_importing_the_engine_does_not_import_torchvision() -> None:
    code = "import sys, ptq_core.pipeline, ptq_core.models; print(sorted(m for m in sys.modules if m.startswith('torchvision')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": str(REPO)})  # fmt: skip
    assert out.stdout.strip() == "[]"


def test_efficientnet_lite0_entries() -> None:
    entry = get_model_entry("efficientnet_lite0")
    assert entry.pretrained and entry.default_dataset == {"kind": "image_folder"}
    assert isinstance(entry.transform, ImageTransform) and "(x - 0.5) / 0.5" in entry.transform.describe
    random = get_model_entry({"kind": "efficientnet_lite0", "weights": "random"})
    assert not random.pretrained and "random weights" in random.name and "random weights" in random.description
    with pytest.raises(ModelError, match="model.weights: got 'imagenet'; allowed: pretrained, random"):
        get_model_entry({"kind": "efficientnet_lite0", "weights": "imagenet"})


def test_image_transform_refuses_tensors_with_a_data_error() -> None:
    transform = get_model_entry("efficientnet_lite0").transform
    assert transform is not None
    with pytest.raises(DataError, match=r"expects RGB images, got a Tensor of shape \(1, 8, 8\).*image_folder"):
        transform(torch.zeros(1, 8, 8))


# -- torchvision ------------------------------------------------------------------------------------
@pytest.mark.parametrize("spec", ["torchvision:resnet18", {"kind": "torchvision", "name": "resnet18"}])
def test_torchvision_default_weights_entry(spec: Any) -> None:
    entry = get_model_entry(spec)
    assert entry.name == "torchvision:resnet18" and entry.pretrained
    assert entry.default_dataset == {"kind": "image_folder"}


def test_torchvision_random_weights_are_explicit_and_labelled() -> None:
    entry = get_model_entry({"kind": "torchvision", "name": "mobilenet_v2", "weights": "random"})
    assert not entry.pretrained
    assert "random weights" in entry.name and "random weights" in entry.description
    model = entry.build()
    assert isinstance(model, nn.Module) and not model.training


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"kind": "torchvision", "name": "resnet9000"}, r"'resnet9000' is not a torchvision classification model"),
        ({"kind": "torchvision", "name": "resnet18", "weights": "V9"}, r"allowed: DEFAULT, random, IMAGENET1K_V1"),
        ({"kind": "torchvision", "name": "resnet18", "pretrained": True}, r"model.pretrained: unknown key"),
        ({"kind": "torchvision"}, r"model.name: got None"),
        ("torchvision:nope", r"'nope' is not a torchvision classification model"),
    ],
)
def test_torchvision_bad_specs(spec: Any, message: str) -> None:
    with pytest.raises(ModelError, match=message):
        get_model_entry(spec)


def test_torchvision_weights_missing_offline_says_what_to_do(hub: Path) -> None:
    with pytest.raises(ModelError) as info:
        get_model_entry("torchvision:resnet18").build()
    message = str(info.value)
    assert "not in the torch hub cache and cannot be downloaded" in message
    assert str(hub) in message and "resnet18-f37072fd.pth" in message
    assert '"weights": "random"' in message
    assert tv.weights_status("resnet18")["cached"] is False


def test_torchvision_weights_come_from_the_hub_cache(hub: Path) -> None:
    reference = get_model_entry({"kind": "torchvision", "name": "resnet18", "weights": "random"}).build()
    hub.mkdir(parents=True)
    torch.save(reference.state_dict(), hub / "resnet18-f37072fd.pth")
    assert tv.weights_status("resnet18") == {
        "weights": "IMAGENET1K_V1", "cached": True, "path": str(hub / "resnet18-f37072fd.pth"),
        "url": "https://download.pytorch.org/models/resnet18-f37072fd.pth",
    }  # fmt: skip
    model = load_model("torchvision:resnet18")
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), reference(x))


def test_corrupt_hub_cache_file_is_a_model_error(hub: Path) -> None:
    hub.mkdir(parents=True)
    (hub / "resnet18-f37072fd.pth").write_bytes(b"truncated")
    with pytest.raises(ModelError, match="cannot be loaded.*delete the file"):
        load_model("torchvision:resnet18")


# -- the user's files -------------------------------------------------------------------------------
def _save_state(model: nn.Module, path: Path) -> Path:
    torch.save(model.state_dict(), path)
    return path


def test_state_dict_for_resnet18_architecture(tmp_path: Path) -> None:
    reference = get_model_entry({"kind": "torchvision", "name": "resnet18", "weights": "random"}).build()
    path = _save_state(reference, tmp_path / "my_resnet.pth")
    entry = get_model_entry({"kind": "file", "path": str(path), "architecture": "torchvision:resnet18"})
    assert entry.name == "file:my_resnet.pth" and entry.pretrained
    assert entry.default_dataset == {"kind": "image_folder"}
    assert isinstance(entry.transform, ImageTransform) and entry.transform.name == "torchvision:resnet18"
    model = entry.build()
    assert entry.build() is not model  # a NEW module each time
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), reference(x))


def test_state_dict_for_digits_cnn_evaluates_like_the_builtin(tmp_path: Path) -> None:
    path = _save_state(load_model("digits_cnn"), tmp_path / "cnn.pt")
    spec = {"kind": "file", "path": str(path), "format": "state_dict", "architecture": "digits_cnn"}
    mine, builtin = Explorer(spec, "digits").evaluate(_cfg(spec)), Explorer("digits_cnn").evaluate(_cfg("digits_cnn"))
    assert mine.metrics["quant_top1"] == builtin.metrics["quant_top1"]
    assert mine.metrics["agreement"] == builtin.metrics["agreement"]


def _scripted_digits(tmp_path: Path) -> Path:
    path = tmp_path / "cnn_ts.pt"
    with warnings.catch_warnings():  # torch 2.14 deprecates TorchScript; users still have such files
        warnings.simplefilter("ignore", FutureWarning)
        torch.jit.save(torch.jit.script(load_model("digits_cnn")), str(path))
    return path


def test_torchscript_upload_is_lifted_and_quantized_like_the_original(tmp_path: Path) -> None:
    spec = {"kind": "file", "path": str(_scripted_digits(tmp_path)), "input_shape": [1, 8, 8], "preprocessing": "none"}
    entry = get_model_entry(spec)
    assert entry.transform is None and entry.default_dataset == "digits"
    explorer = Explorer(spec, "digits")
    builtin = Explorer("digits_cnn")
    assert explorer.prepared().layer_names() == builtin.prepared().layer_names()
    mine, ref = explorer.evaluate(_cfg(spec)), builtin.evaluate(_cfg("digits_cnn"))
    assert mine.metrics["fp32_top1"] == ref.metrics["fp32_top1"]
    assert abs(mine.metrics["quant_top1"] - ref.metrics["quant_top1"]) <= 1 / 360  # one near-tie may flip
    assert mine.model["unsupported_layers"] == []


def test_torchscript_layers_ptq_core_cannot_quantize_are_listed(tmp_path: Path) -> None:
    """A traced GroupNorm's weights arrive as constants (buffers after lifting): still listed, kept in float."""

    class WithGroupNorm(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv, self.gn, self.fc = nn.Conv2d(3, 8, 3), nn.GroupNorm(2, 8), nn.Linear(8, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.gn(self.conv(x)).mean((2, 3)))

    model = WithGroupNorm().eval()
    path = tmp_path / "gn.pt"
    torch.jit.trace(model, torch.randn(1, 3, 16, 16)).save(str(path))
    lifted = load_model({"kind": "file", "path": str(path), "format": "torchscript", "input_shape": [3, 16, 16]})
    prepared = prepare(lifted, torch.randn(1, 3, 16, 16))
    assert prepared.unsupported == ["gn"]
    assert [u.name for u in prepared.units if u.kind in ("conv", "linear")] == ["conv", "fc"]


def test_exported_program_file_loads(tmp_path: Path) -> None:
    model = load_model("digits_mlp")
    path = tmp_path / "mlp.pt2"
    torch.export.save(torch.export.export(model, (torch.rand(2, 1, 8, 8),)), str(path))
    loaded = load_model({"kind": "file", "path": str(path), "preprocessing": "none"})
    x = torch.rand(5, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), model(x))


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"\x00garbage that is not a model", r"broken\.pt' is not a model file .*; allowed: a TorchScript module"),
        (b"PK\x03\x04truncated zip", r"broken\.pt' is a truncated or corrupt zip archive"),
    ],
)
def test_corrupt_file_is_a_model_error(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "broken.pt"
    path.write_bytes(content)
    with pytest.raises(ModelError, match=message):
        Explorer({"kind": "file", "path": str(path), "architecture": "digits_cnn"}, "digits")


def test_torchscript_that_is_corrupt_inside_is_a_model_error(tmp_path: Path) -> None:
    good = _scripted_digits(tmp_path)
    bad = tmp_path / "bad_ts.pt"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(bad, "w") as dst:
        for info in src.infolist():
            data = src.read(info.filename)
            dst.writestr(info.filename, b"def broken(" if info.filename.endswith(".py") else data)
    with pytest.raises(ModelError, match="cannot be loaded as TorchScript"):
        load_model({"kind": "file", "path": str(bad), "input_shape": [1, 8, 8], "preprocessing": "none"})


def test_mismatched_state_dict_names_the_keys(tmp_path: Path) -> None:
    path = _save_state(load_model("digits_mlp"), tmp_path / "mlp.pt")
    with pytest.raises(ModelError, match=r"does not match architecture 'digits_cnn'.*missing \(e\.g\. conv1\.weight"):
        load_model({"kind": "file", "path": str(path), "architecture": "digits_cnn"})


def test_pickled_code_in_a_state_dict_is_never_run(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self) -> tuple[Any, ...]:
            return (open, (str(marker), "w"))

    path = tmp_path / "evil.pt"
    torch.save({"conv1.weight": Payload()}, path)
    with pytest.raises(ModelError, match="pickled Python objects"):
        load_model({"kind": "file", "path": str(path), "architecture": "digits_cnn"})
    assert not marker.exists()


def test_pickled_code_in_a_pt2_is_never_run(tmp_path: Path) -> None:
    """A .pt2 whose weight is marked use_pickle runs its payload under torch.export.load; not under ours."""
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self) -> tuple[Any, ...]:
            return (open, (str(marker), "w"))

    good = tmp_path / "good.pt2"
    torch.export.save(torch.export.export(load_model("digits_mlp"), (torch.rand(2, 1, 8, 8),)), str(good))
    with zipfile.ZipFile(good) as src:
        entries = {i.filename: src.read(i.filename) for i in src.infolist()}
    config_name = next(n for n in entries if n.endswith("data/weights/model_weights_config.json"))
    config = json.loads(entries[config_name])
    first = next(iter(config["config"]))
    config["config"][first]["use_pickle"] = True  # "this weight is a torch.save pickle"
    entries[config_name] = json.dumps(config).encode()
    payload = io.BytesIO()
    torch.save(Payload(), payload)
    weight_name = config_name.replace("model_weights_config.json", config["config"][first]["path_name"])
    entries[weight_name] = payload.getvalue()
    evil = tmp_path / "evil.pt2"
    with zipfile.ZipFile(evil, "w") as dst:
        for name, data in entries.items():
            dst.writestr(name, data)
    with pytest.raises(ModelError, match="pickled Python objects"):
        load_model({"kind": "file", "path": str(evil), "preprocessing": "none"})
    assert not marker.exists()


def test_pt2_with_custom_objects_is_refused(tmp_path: Path) -> None:
    good = tmp_path / "good.pt2"
    torch.export.save(torch.export.export(load_model("digits_mlp"), (torch.rand(2, 1, 8, 8),)), str(good))
    evil = tmp_path / "objects.pt2"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(evil, "w") as dst:
        root = src.namelist()[0].split("/")[0]
        for info in src.infolist():
            dst.writestr(info.filename, src.read(info.filename))
        dst.writestr(f"{root}/data/constants/custom_obj_0", b"anything")
    with pytest.raises(ModelError, match="custom_obj_0.*pickled objects or compiled code"):
        load_model({"kind": "file", "path": str(evil), "preprocessing": "none"})


def test_oversize_file_is_refused_before_loading(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PTQ_MAX_MODEL_MB", "1")
    path = tmp_path / "big.pt"
    torch.save({"w": torch.zeros(300_000)}, path)  # 1.2 MB
    with pytest.raises(ModelError, match=r"big\.pt' is 1\.1 MiB; allowed: files up to 1\.0 MiB.*PTQ_MAX_MODEL_MB"):
        get_model_entry({"kind": "file", "path": str(path), "architecture": "digits_cnn"})


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"format": "onnx"}, r"model.format: got 'onnx'; allowed: auto, torchscript, export, state_dict"),
        ({"format": "torchscript"}, r"got 'torchscript' but 'w.pt' is a state_dict file"),
        ({}, r"is a state dict, which needs the architecture"),
        ({"architecture": "digits_cnn", "size": 3}, r"model.size: unknown key for kind 'file'"),
        ({"architecture": "digits_cnn", "preprocessing": "sharpen"}, r"model.preprocessing: got 'sharpen'"),
        ({"architecture": "resnet9000"}, r"unknown model 'resnet9000'"),
    ],
)
def test_file_spec_errors(tmp_path: Path, spec: dict[str, Any], message: str) -> None:
    path = _save_state(load_model("digits_cnn"), tmp_path / "w.pt")
    with pytest.raises(ModelError, match=message):
        get_model_entry({"kind": "file", "path": str(path), **spec})


def test_missing_file_and_unknown_zip_layout(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="does not exist"):
        get_model_entry({"kind": "file", "path": str(tmp_path / "gone.pt")})
    odd = tmp_path / "notes.zip"
    with zipfile.ZipFile(odd, "w") as archive:
        archive.writestr("notes/readme.txt", "hello")
    with pytest.raises(ModelError, match="not a TorchScript module, torch.export program or torch.save state dict"):
        get_model_entry({"kind": "file", "path": str(odd)})
