"""The model picker's preprocessing fields: a stated spec round trip, the defaulted warning, refusals.

A tiny image classifier exported with torch.export at 240x240 and a folder of PNGs are written by
the test under ``root/`` (``PTQ_DATA_ROOTS``); everything is loaded by the real engine.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pytest
import torch
from PIL import Image
from streamlit.testing.v1 import AppTest

from dashboard import state
from tests.dashboard.helpers import new_app, problems
from tests.models import TinyImageNet


@pytest.fixture(scope="module")
def root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("prep") / "root"
    root.mkdir()
    torch.manual_seed(0)
    program = torch.export.export(TinyImageNet().eval(), (torch.rand(2, 3, 240, 240),),
                                  dynamic_shapes=({0: torch.export.Dim("batch")},))  # fmt: skip
    torch.export.save(program, str(root / "tiny240.pt2"))
    for c in range(3):
        (root / "images" / f"c{c}").mkdir(parents=True)
        for i in range(3):
            buf = io.BytesIO()
            Image.new("RGB", (40, 30), (70 * c + 9 * i, 120, 200 - 60 * c)).save(buf, format="PNG")
            (root / "images" / f"c{c}" / f"{i}.png").write_bytes(buf.getvalue())
    return root


@pytest.fixture
def app(root: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> AppTest:
    monkeypatch.setenv("PTQ_DATA_ROOTS", str(root))
    monkeypatch.setenv("PTQ_UPLOAD_DIR", str(tmp_path / "uploads"))
    at = new_app().run()
    at.text_input(key="src_m_path").input(str(root / "tiny240.pt2")).run()
    at.text_input(key="src_d_path").input(str(root / "images")).run()
    return at


def _custom(at: AppTest, **fields: str) -> AppTest:
    at.selectbox(key="src_m_prep").set_value("custom").run()
    for key, value in fields.items():
        if key == "interp":
            at.selectbox(key="src_m_interp").set_value(value)
        else:
            at.text_input(key=f"src_m_{key}").input(value)
    return at.run()


def _config_state(at: AppTest) -> dict[str, Any]:
    return {k: v for k, v in at.session_state.items() if k.startswith(("sb_", "cfg_"))}


def _load(at: AppTest) -> AppTest:
    return at.button(key="src_load").click().run()


def _sidebar_warnings(at: AppTest) -> list[str]:
    return [w.value for w in at.sidebar.warning]


def test_stated_preprocessing_round_trips_through_the_picker(app: AppTest, root: Path) -> None:
    _custom(app, resize="274", crop="240", mean="0.5, 0.5, 0.5", std="0.5,0.5,0.5", interp="bicubic")
    _load(app)
    assert not problems(app)
    spec = state.spec_value(app.session_state["sb_model"])
    assert spec == {"kind": "file", "path": str(root / "tiny240.pt2"), "format": "export",
                    "preprocessing": {"resize": 274, "crop": 240, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5],
                                      "interpolation": "bicubic"}}  # fmt: skip
    # the pickers show the applied spec again
    ss = app.session_state
    assert (ss["src_m_prep"], ss["src_m_resize"], ss["src_m_crop"]) == ("custom", "274", "240")
    assert (ss["src_m_mean"], ss["src_m_std"], ss["src_m_interp"]) == ("0.5, 0.5, 0.5", "0.5, 0.5, 0.5", "bicubic")
    assert _sidebar_warnings(app) == []  # everything stated, and the crop fits the model


def test_empty_fields_are_left_out_and_the_crop_comes_from_the_pt2(app: AppTest) -> None:
    _custom(app, mean="0.5, 0.5, 0.5", std="0.5, 0.5, 0.5")
    _load(app)
    assert not problems(app)
    assert state.spec_value(app.session_state["sb_model"])["preprocessing"] == {
        "mean": [0.5, 0.5, 0.5],
        "std": [0.5, 0.5, 0.5],
    }
    assert _sidebar_warnings(app) == []


def test_defaulted_preprocessing_is_warned_about(app: AppTest) -> None:
    _load(app)
    assert not problems(app)
    assert "preprocessing" not in state.spec_value(app.session_state["sb_model"])
    assert any(w.startswith("model.preprocessing: not given; using ImageNet mean/std, resize 274, center-crop 240")
               for w in _sidebar_warnings(app))  # fmt: skip


def test_a_crop_that_disagrees_is_warned_about(app: AppTest) -> None:
    _custom(app, crop="224", mean="0.5, 0.5, 0.5", std="0.5, 0.5, 0.5")
    _load(app)
    assert not problems(app)
    assert any("model.preprocessing.crop 224 disagrees with the model's input 240x240" in w
               for w in _sidebar_warnings(app))  # fmt: skip


@pytest.mark.parametrize(("fields", "needle"), [
    ({"crop": "-3"}, "model.preprocessing.crop: got -3; allowed: an integer from 1 to 4096"),
    ({"resize": "big"}, "model.preprocessing.resize: got 'big'; allowed: an integer"),
    ({"std": "0.5, 0, 0.5"}, "model.preprocessing.std: got [0.5, 0.0, 0.5]; allowed: 3 positive numbers"),
    ({"mean": "0.5, 0.5"}, "model.preprocessing.mean: got [0.5, 0.5]; allowed: 3 finite numbers"),
])  # fmt: skip
def test_invalid_fields_are_refused_and_nothing_changes(app: AppTest, fields: dict[str, str], needle: str) -> None:
    before = _config_state(app)
    _load(_custom(app, **fields))
    assert not app.exception, [e.value for e in app.exception]
    errors = [e.value for e in app.error]
    assert any(e.startswith("Not loaded, nothing changed") and needle in e for e in errors), errors
    assert _config_state(app) == before
