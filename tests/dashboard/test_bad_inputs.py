"""Bad input in the dashboard (AppTest, widgets driven by key): each case asserts the exact kind of outcome.

The outcome is an ``st.error`` naming the field or file and what is allowed, never an uncaught
exception; a refused Load or import leaves the session exactly as it was (the ``sb_*``/``cfg_*``
state compared before and after) and keeps no upload. Files are written by the tests under a data
root of their own (``PTQ_DATA_ROOTS``), uploads go to a folder beside it (``PTQ_UPLOAD_DIR``).
"""

from __future__ import annotations

import io
import json
import warnings
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image
from streamlit.testing.v1 import AppTest

from ptq_core.config import MAX_GROUP_SIZE
from ptq_core.models import load_model
from tests.dashboard.helpers import metric, new_app, open_page, problems
from tests.models import TinyImageNet

TINY = {"fmt": "torchscript", "shape": "3, 224, 224", "prep": "imagenet"}  # a 224x224 image model, fast on CPU
TOO_LONG = "weights.group_size: got 1000; allowed: 1 to 288 for this model, the longest row among the per_group layers"


def _jpeg(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.random.default_rng(seed).integers(0, 255, (40, 56, 3), dtype=np.uint8)).save(buf, format="JPEG")
    return buf.getvalue()


def _folder_images(corrupt: bytes | None) -> dict[str, bytes]:
    images = {f"c{c}/{i}.jpg": _jpeg(10 * c + i) for c in range(2) for i in range(4)}
    if corrupt is not None:
        images["c1/broken.jpg"] = corrupt
    return images


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("bad_inputs") / "root"
    root.mkdir()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.manual_seed(0)
        torch.jit.trace(TinyImageNet().eval(), torch.randn(2, 3, 224, 224)).save(str(root / "tiny_ts.pt"))
    for name, data in _folder_images(_jpeg(7)[:500]).items():
        (root / "corrupt" / name).parent.mkdir(parents=True, exist_ok=True)
        (root / "corrupt" / name).write_bytes(data)
    (root / "notes.pt").write_text("epoch,loss\n1,0.52\n2,0.31\n")  # a text file renamed .pt
    (root / "empty.pt").write_bytes(b"")
    state = load_model("digits_cnn").state_dict()
    state["bn2.running_var"][5] = float("nan")
    torch.save(state, root / "nan_bn.pt")
    return root


@pytest.fixture
def env(files: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    monkeypatch.setenv("PTQ_DATA_ROOTS", str(files))
    monkeypatch.setenv("PTQ_UPLOAD_DIR", str(tmp_path / "uploads"))
    return {"root": files, "uploads": tmp_path / "uploads"}


def _config_state(at: AppTest) -> dict[str, Any]:
    return {k: v for k, v in at.session_state.items() if k.startswith(("sb_", "cfg_"))}


def _refused(at: AppTest, before: dict[str, Any], *needles: str) -> None:
    """A refused Load: one clear st.error naming the problem, no exception, the config exactly as it was."""
    assert not at.exception, [e.value for e in at.exception]
    errors = [e.value for e in at.error]
    assert any(e.startswith("Not loaded, nothing changed") and all(n in e for n in needles) for e in errors), errors
    assert _config_state(at) == before


def _choose_file(at: AppTest, path: str, fmt: str = "auto", shape: str = "3, 224, 224", prep: str = "default",
                 arch: str = "") -> None:
    at.text_input(key="src_m_path").input(path).run()
    at.selectbox(key="src_m_format").set_value(fmt)
    at.text_input(key="src_m_shape").input(shape)
    at.selectbox(key="src_m_prep").set_value(prep)
    at.selectbox(key="src_m_arch").set_value(arch)


def _load(at: AppTest) -> AppTest:
    return at.button(key="src_load").click().run()


def _paste(at: AppTest, text: str) -> AppTest:
    open_page(at, "export")
    at.text_area(key="io_paste").input(text)
    return at.button(key="io_apply").click().run()


# -- the Group size box ------------------------------------------------------------------------------------
def test_group_size_box_cannot_take_a_size_beyond_any_model() -> None:
    at = new_app().run()
    at.selectbox(key="sb_w_granularity").set_value("per_group").run()
    at.number_input(key="sb_w_group_size").set_value(10**9).run()
    assert not at.exception
    assert 1 <= at.session_state["sb_w_group_size"] <= MAX_GROUP_SIZE  # the box's maximum: the config's bound
    assert not any("allocate" in p for p in problems(at))


@pytest.mark.parametrize("page", ["overview", "weights", "layer_error"])
def test_a_group_longer_than_every_row_is_an_error_naming_the_layer_on_every_page(page: str) -> None:
    at = new_app().run()
    at.selectbox(key="sb_w_granularity").set_value("per_group").run()
    at.number_input(key="sb_w_group_size").set_value(1000).run()
    open_page(at, page)
    assert not at.exception, [e.value for e in at.exception]
    assert any(TOO_LONG in e.value and "(conv3: 288 weights per output channel)" in e.value for e in at.error), \
        [e.value for e in at.error]


def test_a_group_as_long_as_the_longest_row_evaluates() -> None:
    at = new_app().run()
    at.selectbox(key="sb_w_granularity").set_value("per_group").run()
    at.number_input(key="sb_w_group_size").set_value(288).run()
    assert not problems(at)


# -- pasted configs -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("config, message", [
    ({"weights": {"granularity": "per_group", "group_size": 10**9}},
     "weights.group_size: got 1000000000; allowed: an integer from 1 to 65536"),
    ({"weights": {"granularity": "per_group", "group_size": 1000}}, TOO_LONG),
    ([{"weights": {"bits": 4}}], "config: got a JSON array; allowed: a JSON object with keys model, dataset"),
    ({"keep_float": ["conv9"]}, "keep_float[0]: no layer named 'conv9'; allowed: "),
])
def test_a_pasted_config_that_cannot_apply_changes_nothing(config: Any, message: str) -> None:
    at = new_app().run()
    at.selectbox(key="sb_w_bits").set_value(6).run()
    before = _config_state(at)
    _paste(at, json.dumps(config))
    assert not at.exception
    assert any(e.value.startswith("the pasted text was not imported, nothing changed: ") and message in e.value
               for e in at.error), [e.value for e in at.error]
    assert _config_state(at) == before


def test_a_pasted_config_with_a_group_size_the_model_takes_applies() -> None:
    at = new_app().run()
    _paste(at, json.dumps({"weights": {"bits": 4, "granularity": "per_group", "group_size": 64}}))
    assert not problems(at)
    assert at.session_state["sb_w_group_size"] == 64 and at.session_state["sb_w_granularity"] == "per_group"


# -- model files --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, arch, needles", [
    ("notes.pt", "digits_cnn", ("notes.pt' is not a model file", "allowed: a TorchScript module (torch.jit.save)")),
    ("empty.pt", "digits_cnn", ("empty.pt' is empty (0 bytes)", "allowed: a TorchScript module")),
    ("nan_bn.pt", "digits_cnn", ("'nan_bn.pt': bn2.running_var contains NaN or Inf (1 of 32 values)",
                                 "allowed: finite weights and buffers only")),
])
def test_a_model_file_that_is_not_usable_is_refused_naming_it(env: dict[str, Path], name: str, arch: str,
                                                               needles: tuple[str, ...]) -> None:
    at = new_app().run()
    at.multiselect(key="sb_keep_float").set_value(["fc2"]).run()
    before = _config_state(at)
    _choose_file(at, str(env["root"] / name), arch=arch)
    _refused(_load(at), before, *needles)


def test_a_text_upload_as_a_model_is_refused_and_not_kept(env: dict[str, Path]) -> None:
    at = new_app().run()
    before = _config_state(at)
    at.file_uploader(key="src_m_upload").set_value(("passwd.pt", b"root:x:0:0:root:/root:/bin/bash\n" * 20,
                                                    "application/octet-stream")).run()
    _refused(_load(at), before, "passwd.pt", "is not a model file")
    assert not any((env["uploads"] / "models").iterdir())


# -- image folders: Load is all or nothing ----------------------------------------------------------------
def test_a_folder_with_one_corrupt_jpeg_is_refused_and_keep_float_survives(env: dict[str, Path]) -> None:
    at = new_app().run()
    at.multiselect(key="sb_keep_float").set_value(["fc2"]).run()  # a control the new model would clear
    before = _config_state(at)
    _choose_file(at, str(env["root"] / "tiny_ts.pt"), **TINY)
    at.text_input(key="src_d_path").input(str(env["root"] / "corrupt")).run()
    _refused(_load(at), before, "c1/broken.jpg' cannot be decoded", "remove or replace this one")
    assert at.session_state["sb_keep_float"] == ["fc2"] and at.session_state["sb_model"] == "digits_cnn"
    open_page(at, "overview")  # the pages still work on what was loaded before; only the Load message is shown
    assert [p for p in problems(at) if not p.startswith("Not loaded, nothing changed")] == []
    assert metric(at, "Quantized top-1").endswith("%")


def test_a_zip_with_one_corrupt_image_is_refused_and_not_kept(env: dict[str, Path]) -> None:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        for name, data in _folder_images(b"JFIF? no, a text file").items():
            archive.writestr(f"photos/{name}", data)
    at = new_app().run()
    before = _config_state(at)
    _choose_file(at, str(env["root"] / "tiny_ts.pt"), **TINY)
    at.file_uploader(key="src_d_zip").set_value(("photos.zip", buf.getvalue(), "application/zip")).run()
    _refused(_load(at), before, "broken.jpg' cannot be decoded (not an image in a format PIL reads)")
    assert list((env["uploads"] / "images").iterdir()) == []  # the extracted folder is not kept
