"""The sidebar's model and data pickers with real files: the user's TorchScript, state dicts, image folders, zips.

Every file is written by the test (a TorchScript of the trained digits CNN, its state dict, a
tiny image classifier, a few PNGs and zips of them) and loaded by the real engine; nothing is
mocked. ``PTQ_DATA_ROOTS`` points at the test's ``root/`` folder and ``PTQ_UPLOAD_DIR`` at a
folder beside it (not under it), so the dashboard's path check must accept the upload folder
on its own. A refused load must leave the session exactly as it was: the ``sb_*``/``cfg_*``
state (the config) is compared before and after.
"""

from __future__ import annotations

import io
import json
import warnings
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
import torch
from PIL import Image
from streamlit.testing.v1 import AppTest
from torch import nn

from dashboard import labels, resources, state, uploads
from ptq_core.config import QuantConfig
from ptq_core.errors import DataError
from ptq_core.models import load_model
from ptq_core.models.entry import ModelEntry
from ptq_core.pipeline import Explorer
from tests.dashboard.helpers import metric, new_app, open_page, problems
from tests.models import TinyImageNet

if TYPE_CHECKING:
    from tests.conftest import Registrations

TS_DIGITS = {"format": "torchscript", "input_shape": [1, 8, 8], "preprocessing": "none"}
TINY_IMAGE = {"format": "torchscript", "input_shape": [3, 224, 224], "preprocessing": "imagenet"}


class GroupNormDigits(nn.Module):
    """An 8x8-digits model with a GroupNorm: weights ptq_core does not quantize, to be listed as kept in float."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)
        self.norm = nn.GroupNorm(2, 4)
        self.fc = nn.Linear(4, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.norm(self.conv(x)))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))


def _png(color: tuple[int, int, int]) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (40, 30), color).save(buf, format="PNG")
    return buf.getvalue()


def _images(n_per_class: int = 4) -> dict[str, bytes]:
    """Class-folder layout, relative name -> PNG bytes: three classes of distinct colours."""
    return {f"c{c}/{i}.png": _png((70 * c + 9 * i, 120, 200 - 60 * c)) for c in range(3) for i in range(n_per_class)}


def _zip(entries: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        for name, data in entries.items():
            archive.writestr(name, data)
    return buf.getvalue()


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Model files and image folders under ``root/`` (the data root), made once for the module."""
    base = tmp_path_factory.mktemp("sources")
    root = base / "root"
    root.mkdir()
    digits = load_model("digits_cnn")
    with warnings.catch_warnings():  # torch.jit.trace is deprecated in favour of export; users still have such files
        warnings.simplefilter("ignore")
        torch.jit.trace(digits, torch.randn(2, 1, 8, 8)).save(str(root / "digits_ts.pt"))
        torch.manual_seed(0)
        torch.jit.trace(TinyImageNet().eval(), torch.randn(2, 3, 224, 224)).save(str(root / "tiny_ts.pt"))
    torch.save(digits.state_dict(), root / "digits_sd.pt")
    for name, data in _images().items():
        (root / "classes" / name).parent.mkdir(parents=True, exist_ok=True)
        (root / "classes" / name).write_bytes(data)
    (root / "flat").mkdir()
    for i, data in enumerate(_images(2).values()):
        (root / "flat" / f"img{i}.png").write_bytes(data)
    (base / "outside.pt").write_bytes((root / "digits_sd.pt").read_bytes())  # valid, but not under the root
    (root / "link.pt").symlink_to(base / "outside.pt")
    return {"base": base, "root": root}


@pytest.fixture
def env(files: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """Data root = ``root/``; a fresh upload folder per test, outside the root."""
    monkeypatch.setenv("PTQ_DATA_ROOTS", str(files["root"]))
    monkeypatch.setenv("PTQ_UPLOAD_DIR", str(tmp_path / "uploads"))
    return {**files, "uploads": tmp_path / "uploads"}


def _config_state(at: AppTest) -> dict[str, Any]:
    """Everything the config and the layer choices are made of (what "nothing changed" compares)."""
    return {k: v for k, v in at.session_state.items() if k.startswith(("sb_", "cfg_"))}


def _load(at: AppTest) -> AppTest:
    return at.button(key="src_load").click().run()


def _choose_file(at: AppTest, path: str, fmt: str = "auto", shape: str = "3, 224, 224", prep: str = "default",
                 arch: str = "") -> None:
    at.text_input(key="src_m_path").input(path).run()
    at.selectbox(key="src_m_format").set_value(fmt)
    at.text_input(key="src_m_shape").input(shape)
    at.selectbox(key="src_m_prep").set_value(prep)
    at.selectbox(key="src_m_arch").set_value(arch)


def _refused(at: AppTest, before: dict[str, Any], *needles: str) -> None:
    """A refusal: a clear st.error naming the problem, no traceback, and the config as it was."""
    assert not at.exception, [e.value for e in at.exception]
    errors = [e.value for e in at.error]
    assert any(all(n in e for n in needles) for e in errors), errors
    assert any(e.startswith("Not loaded, nothing changed") for e in errors)
    assert _config_state(at) == before


def test_torchscript_path_loads_switches_model_and_evaluates(env: dict[str, Path], explorer: Explorer) -> None:
    at = new_app().run()
    at.multiselect(key="sb_keep_float").set_value(["fc2"]).run()  # layer names of the old model
    _choose_file(at, str(env["root"] / "digits_ts.pt"), shape="1, 8, 8", prep="none")
    assert at.session_state["src_m_from"] == "path"  # typing a path chose that source
    _load(at)
    assert not problems(at)
    spec = {"kind": "file", "path": str(env["root"] / "digits_ts.pt"), **TS_DIGITS}
    assert state.spec_value(at.session_state["sb_model"]) == spec
    assert at.session_state["sb_keep_float"] == [] and at.session_state["cfg_overrides"] == {}
    r = Explorer(spec, "digits").evaluate(QuantConfig(model=spec, dataset="digits"))  # a fresh engine run, not the app's cache
    assert metric(at, "Quantized top-1") == labels.pct(r.metrics["quant_top1"])
    assert metric(at, "Agreement with FP32") == labels.pct(r.metrics["agreement"])
    # the file holds the trained digits CNN: same FP32 accuracy as the registered model
    assert metric(at, "FP32 top-1") == labels.pct(explorer.evaluate(QuantConfig()).metrics["fp32_top1"])
    assert any("your model digits_ts.pt (file)" in c.value for c in at.sidebar.caption)
    exported = json.loads(open_page(at, "export").code[0].value)
    assert exported["model"] == spec and exported["dataset"] == "digits"


def test_state_dict_with_its_architecture_loads(env: dict[str, Path], explorer: Explorer) -> None:
    at = new_app().run()
    _choose_file(at, str(env["root"] / "digits_sd.pt"), arch="digits_cnn")
    _load(at)
    assert not problems(at)
    assert state.spec_value(at.session_state["sb_model"]) == {
        "kind": "file", "path": str(env["root"] / "digits_sd.pt"), "format": "state_dict", "architecture": "digits_cnn"}
    r = explorer.evaluate(QuantConfig())  # the same weights as the registered digits_cnn
    assert metric(at, "FP32 top-1") == labels.pct(r.metrics["fp32_top1"])
    assert metric(at, "Quantized top-1") == labels.pct(r.metrics["quant_top1"])


@pytest.mark.parametrize("path, needles", [
    ("/etc/hostname", ("'/etc/hostname'", "outside the data roots", "allowed")),
    ("{root}/../outside.pt", ("outside the data roots",)),
    ("{root}/link.pt", ("outside the data roots",)),  # a symlink inside the root pointing out
    ("{root}/../..", ("outside the data roots",)),
    ("..", ("outside the data roots",)),  # relative: resolved from the server's working directory
    ("{root}/missing.pt", ("does not exist",)),
])
def test_paths_outside_the_roots_are_refused_and_nothing_changes(env: dict[str, Path], path: str,
                                                                 needles: tuple[str, ...]) -> None:
    at = new_app().run()
    at.selectbox(key="sb_w_bits").set_value(6).run()
    before = _config_state(at)
    _choose_file(at, path.format(root=env["root"]), arch="digits_cnn")
    _refused(_load(at), before, "model file", *needles)


def test_an_image_folder_outside_the_roots_is_refused(env: dict[str, Path]) -> None:
    at = new_app().run()
    before = _config_state(at)
    at.text_input(key="src_d_path").input("/etc").run()
    assert at.session_state["src_d_from"] == "path"
    _refused(_load(at), before, "image folder", "outside the data roots")
    at.text_input(key="src_d_path").input(str(env["root"] / "classes")).run()  # the message was about /etc
    assert not at.error and any(c.value.startswith("Changed: press **Load**") for c in at.sidebar.caption)


@pytest.mark.parametrize("name, fmt, arch, needles", [
    ("digits_sd.pt", "auto", "digits_mlp", ("does not match architecture 'digits_mlp'",)),
    ("digits_sd.pt", "auto", "", ("needs the architecture",)),
    ("digits_sd.pt", "torchscript", "", ("is a state_dict file", "allowed")),
    ("classes", "auto", "", ("is not a file",)),
])
def test_a_file_that_does_not_fit_is_refused(env: dict[str, Path], name: str, fmt: str, arch: str,
                                             needles: tuple[str, ...]) -> None:
    at = new_app().run()
    before = _config_state(at)
    _choose_file(at, str(env["root"] / name), fmt=fmt, arch=arch)
    _refused(_load(at), before, *needles)


@pytest.mark.parametrize("data, needles", [
    (b"not a model at all" * 40, ("broken.pt",)),
    (b"PK\x03\x04" + b"\0" * 300, ("broken.pt",)),  # a zip header and nothing else
])
def test_a_corrupt_upload_is_refused_and_not_kept(env: dict[str, Path], data: bytes, needles: tuple[str, ...]) -> None:
    at = new_app().run()
    at.selectbox(key="sb_w_bits").set_value(4).run()
    before = _config_state(at)
    at.file_uploader(key="src_m_upload").set_value(("broken.pt", data, "application/octet-stream")).run()
    assert at.session_state["src_m_from"] == "upload"
    _refused(_load(at), before, *needles)
    assert not any((env["uploads"] / "models").iterdir())  # a file that does not load is not kept


def test_a_truncated_torchscript_upload_is_refused(env: dict[str, Path]) -> None:
    data = (env["root"] / "digits_ts.pt").read_bytes()
    at = new_app().run()
    before = _config_state(at)
    at.file_uploader(key="src_m_upload").set_value(("cut.pt", data[: len(data) // 2], "application/octet-stream")).run()
    _refused(_load(at), before, "cut.pt")


def test_an_oversize_upload_is_refused_before_it_is_written(env: dict[str, Path], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PTQ_MAX_MODEL_MB", "1")
    at = new_app().run()
    before = _config_state(at)
    big = b"\0" * (1024 * 1024 + 1)
    at.file_uploader(key="src_m_upload").set_value(("huge.pt", big, "application/octet-stream")).run()
    _refused(_load(at), before, "model upload 'huge.pt'", "larger than the limit of 1.0 MiB", "PTQ_MAX_MODEL_MB")
    assert not (env["uploads"] / "models").exists() or not any((env["uploads"] / "models").iterdir())


def test_a_model_upload_loads_and_is_labeled_as_living_on_this_server(env: dict[str, Path]) -> None:
    data = (env["root"] / "digits_sd.pt").read_bytes()
    at = new_app().run()
    at.file_uploader(key="src_m_upload").set_value(("my weights.pth", data, "application/octet-stream")).run()
    at.selectbox(key="src_m_arch").set_value("digits_cnn")
    _load(at)
    assert not problems(at)
    stored = env["uploads"] / "models" / (uploads._sha256(data) + ".pth")  # named by content, shared by sessions
    assert state.spec_value(at.session_state["sb_model"])["path"] == str(stored.resolve())
    assert any("reproduces only on this server" in c.value for c in at.sidebar.caption)
    assert metric(at, "FP32 top-1").endswith("%")
    open_page(at, "export")
    assert not problems(at)
    assert any("the model you uploaded by its path on this server" in w.value for w in at.warning)


def _upload_zip(at: AppTest, data: bytes, name: str = "images.zip") -> None:
    at.file_uploader(key="src_d_zip").set_value((name, data, "application/zip")).run()
    assert at.session_state["src_d_from"] == "upload"


def test_a_zip_with_a_parent_entry_is_refused(env: dict[str, Path]) -> None:
    at = new_app().run()
    before = _config_state(at)
    _choose_file(at, str(env["root"] / "tiny_ts.pt"), fmt="torchscript", prep="imagenet")
    _upload_zip(at, _zip({"c0/a.png": _png((1, 2, 3)), "../evil.png": _png((4, 5, 6))}), "evil.zip")
    _refused(_load(at), before, "evil.zip", "'..' is not allowed")
    assert not (env["base"] / "evil.png").exists() and not (env["uploads"].parent / "evil.png").exists()
    assert [p.name for p in (env["uploads"] / "images").iterdir()] == []  # nothing extracted is left behind


def test_a_zip_of_an_image_folder_loads_and_shows_numbers(env: dict[str, Path]) -> None:
    at = new_app().run()
    _choose_file(at, str(env["root"] / "tiny_ts.pt"), fmt="torchscript", prep="imagenet")
    data = _zip({f"my_images/{k}": v for k, v in _images().items()})  # zipped folder: read from inside it
    _upload_zip(at, data)
    at.number_input(key="src_d_num_cal").set_value(5)
    at.number_input(key="src_d_seed").set_value(3)
    _load(at)
    assert not problems(at)
    model, dataset = (state.spec_value(at.session_state[k]) for k in ("sb_model", "sb_dataset"))
    folder = env["uploads"] / "images" / uploads._sha256(data) / "my_images"
    assert dataset == {"kind": "image_folder", "path": str(folder.resolve()), "num_calibration": 5, "seed": 3,
                       "max_images": None}
    r = Explorer(model, dataset).evaluate(QuantConfig(model=model, dataset=dataset))
    assert r.metrics["num_eval_samples"] == 7 and r.metrics["labeled"]
    assert metric(at, "Quantized top-1") == labels.pct(r.metrics["quant_top1"])
    assert metric(at, "Agreement with FP32") == labels.pct(r.metrics["agreement"])
    captions = [c.value for c in at.sidebar.caption]
    assert any("The data set is an upload" in c and "reproduces only on this server" in c for c in captions)

    other = new_app().run()  # the same zip from another session: the same folder, not a second copy
    _choose_file(other, str(env["root"] / "tiny_ts.pt"), fmt="torchscript", prep="imagenet")
    _upload_zip(other, data, "same.zip")
    other.number_input(key="src_d_num_cal").set_value(5)
    other.number_input(key="src_d_seed").set_value(3)
    _load(other)
    assert not problems(other)
    assert state.spec_value(other.session_state["sb_dataset"]) == dataset
    assert len(list((env["uploads"] / "images").iterdir())) == 1


def test_an_unlabeled_folder_reports_agreement_not_accuracy(env: dict[str, Path]) -> None:
    at = new_app().run()
    _choose_file(at, str(env["root"] / "tiny_ts.pt"), fmt="torchscript", prep="imagenet")
    at.text_input(key="src_d_path").input(str(env["root"] / "flat")).run()
    _load(at)
    assert not problems(at)
    assert any("Unlabeled images" in c.value and "not accuracy" in c.value for c in at.sidebar.caption)
    assert metric(at, "FP32 top-1") == "n/a" and metric(at, "Agreement with FP32").endswith("%")
    assert "**Unlabeled** data: agreement with FP32 is reported, not accuracy" in at.markdown[0].value


def test_images_for_a_model_without_image_preprocessing_are_refused(env: dict[str, Path]) -> None:
    at = new_app().run()
    before = _config_state(at)
    at.text_input(key="src_d_path").input(str(env["root"] / "classes")).run()
    _refused(_load(at), before, "no image preprocessing")


def test_layers_the_engine_cannot_quantize_are_listed_and_random_weights_said(registry: Registrations) -> None:
    def build() -> nn.Module:
        torch.manual_seed(0)
        return GroupNormDigits().eval()

    registry.model(ModelEntry(name="test_groupnorm", description="digits with a GroupNorm, untrained",
                              default_dataset="digits", build=build, pretrained=False))
    at = new_app().run()
    at.selectbox(key="src_m_name").set_value("test_groupnorm").run()
    _load(at)
    assert not problems(at)
    assert [i.value for i in at.sidebar.info] == [
        "ptq_core does not quantize these layers with weights; they stay in float: norm"]
    assert any("**Random weights**" in c.value for c in at.sidebar.caption)
    assert metric(at, "FP32 top-1") == "n/a"
    assert any(i.value.endswith("stay in float (their size and error count as FP32): norm") for i in at.info)


def test_sessions_do_not_see_each_others_sources(env: dict[str, Path]) -> None:
    a, b = new_app().run(), new_app().run()
    _choose_file(a, str(env["root"] / "digits_sd.pt"), arch="digits_cnn")
    _load(a)
    b.run()
    assert state.spec_value(a.session_state["sb_model"])["kind"] == "file"
    assert b.session_state["sb_model"] == "digits_cnn" and b.session_state["src_m_path"] == ""


def test_registered_pickers_label_random_weights_and_torchvision() -> None:
    at = new_app().run()
    picker = at.selectbox(key="src_m_name")  # AppTest lists options as the labels a user reads
    assert {"resnet18 (torchvision, ImageNet weights)", "resnet18 (torchvision, random weights)",
            "efficientnet_lite0 (random weights)", "digits_cnn"} <= set(picker.options)
    random_resnet = labels.spec({"kind": "torchvision", "name": "resnet18", "weights": "random"})
    assert picker.format_func(random_resnet) == "resnet18 (torchvision, random weights)"
    assert "image_folder" not in at.selectbox(key="src_d_name").options  # needs a path: offered as its own source


def test_an_imported_config_naming_a_path_outside_the_roots_is_refused(env: dict[str, Path]) -> None:
    config = QuantConfig(model={"kind": "file", "path": str(env["base"] / "outside.pt"), "architecture": "digits_cnn"})
    with pytest.raises(DataError, match="model file: path: .* is outside the data roots"):
        resources.validate_for_model(config)


def test_uploads_are_named_by_content(env: dict[str, Path]) -> None:
    p1, new1 = uploads.store_model_upload(b"one", "a.pt")
    p2, new2 = uploads.store_model_upload(b"one", "b.pt")
    p3, _ = uploads.store_model_upload(b"two", "a.pt")
    assert (p1, new1, new2) == (p2, True, False) and p3 != p1
    assert uploads.check_dashboard_path(str(p1), what="model file") == p1  # the upload folder is allowed
    assert uploads.is_upload(p1) and not uploads.is_upload(env["root"] / "digits_sd.pt")
