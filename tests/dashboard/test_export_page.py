"""The Export page's ONNX section under AppTest, with the real engine: click, download, run the bytes.

The downloaded bytes are read from the media storage AppTest gives the app (the storage a
browser's download would be served from), loaded in onnxruntime and compared with a fresh
simulation of the same config. Failures come from real causes: a config the exporter rejects
(dynamic symmetric activations: onnxruntime's DynamicQuantizeLinear is asymmetric uint8 only)
and a temporary folder that cannot be created (a file in its place: as root, permissions cannot
be taken away).
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import torch
from streamlit.runtime.memory_media_file_storage import MemoryMediaFileStorage
from streamlit.testing.v1 import app_test
from streamlit.testing.v1.app_test import AppTest

from dashboard import labels, resources
from ptq_core.calibration import batches
from ptq_core.cli import main
from ptq_core.config import QuantConfig
from ptq_core.errors import ExportError
from ptq_core.onnx.session import X64_PRECISION
from ptq_core.pipeline import Explorer
from tests.dashboard.helpers import new_app, open_page, problems

SAMPLES = 32  # digits evaluation samples run through the downloaded file
CLI_EXPORT = "python -m ptq_core export --config ptq_config.json --output model.onnx"


@pytest.fixture
def media(monkeypatch: pytest.MonkeyPatch) -> list[MemoryMediaFileStorage]:
    """Every media storage AppTest creates (one per run), so a download's bytes can be read back."""
    stores: list[MemoryMediaFileStorage] = []

    class Recording(MemoryMediaFileStorage):
        def __init__(self, *args: object, **kwargs: object) -> None:
            super().__init__(*args, **kwargs)  # type: ignore[arg-type]
            stores.append(self)

    monkeypatch.setattr(app_test, "MemoryMediaFileStorage", Recording)
    return stores


def _download(at: AppTest, stores: list[MemoryMediaFileStorage], key: str) -> tuple[str, bytes]:
    """(file name, bytes) the download button ``key`` serves after the last run."""
    button = at.download_button(key=key)
    file = stores[-1].get_file(button.proto.url.rsplit("/", 1)[-1])
    assert file.filename is not None
    return file.filename, file.content


def _texts(at: AppTest) -> str:
    return "\n".join([m.value for m in at.markdown] + [c.value for c in at.caption] + [s.value for s in at.success]
                     + [i.value for i in at.info])


def _export(at: AppTest) -> AppTest:
    open_page(at, "export")
    assert not problems(at)
    assert "io_dl_onnx" not in [b.key for b in at.download_button]  # only after a click
    return at.button(key="io_onnx_export").click().run()


def test_w8a8_download_runs_in_onnxruntime_with_the_simulations_top1(media, explorer: Explorer, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    at = _export(new_app().run())
    assert not problems(at)
    name, data = _download(at, media, "io_dl_onnx")
    config = QuantConfig()
    assert name == labels.file_stem("digits_cnn", labels.config_label(config.to_dict())) + ".onnx"

    # As the export page tells a user: on x86 CPUs without VNNI, run int8 models with exact U8U8 kernels
    # (onnxruntime's default U8S8 kernels saturate there; the option changes nothing on CPUs with VNNI).
    options = ort.SessionOptions()
    options.add_session_config_entry(X64_PRECISION, "1")
    session = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    assert "VNNI" in _texts(at)  # the page says which kernels this CPU gets
    x, _ = next(iter(batches(explorer.dataset.evaluation, list(range(SAMPLES)), SAMPLES)))
    runtime_logits = session.run(None, {session.get_inputs()[0].name: x.numpy().astype(np.float32)})[0]
    with torch.inference_mode():
        simulated = explorer.quantized_model(config)(x).numpy()
    assert (runtime_logits.argmax(1) == simulated.argmax(1)).all()

    text = _texts(at)
    result = explorer.evaluate(config)
    assert f"**{labels.size_bytes(len(data))}** on disk ({len(data):,} bytes)" in text
    assert f"packed size (the Size card) is **{labels.size_bytes(result.size['quant_bytes'])}**" in text
    assert "opset **17**" in text and "Activations **uint8**, weights **int8**" in text and "U8S8" in text
    assert "statistics reused, no recalibration" in text  # the Result's calibration, not a new one
    assert "No float fallbacks" in text and "`conv1`" in text and "QLinearConv" in text
    assert at.success[0].value == f"Integer runtime check: {labels.runtime_agreement(result.metrics)}."
    assert "simulation matches onnxruntime on 360/360 samples" in at.success[0].value
    assert CLI_EXPORT in [c.value for c in at.code]
    # The command the page shows, run on the config the page shows, writes the same bytes.
    (tmp_path / "ptq_config.json").write_text(at.code[0].value)
    argv = CLI_EXPORT.split()[3:]
    argv[argv.index("--config") + 1] = str(tmp_path / "ptq_config.json")
    argv[argv.index("--output") + 1] = str(tmp_path / "model.onnx")
    assert main([*argv, "--quiet"]) == 0
    assert (tmp_path / "model.onnx").read_bytes() == data


def test_4bit_weights_name_every_float_fallback_and_the_runtime_check_hint() -> None:
    at = new_app().run()
    at.selectbox(key="sb_eval_runtime").set_value(None).run()
    at.selectbox(key="sb_w_bits").set_value(4).run()
    at = _export(at)
    assert not problems(at)
    text = _texts(at)
    assert "**5 layers fall back to float**" in text
    fallback = next(m.value for m in at.markdown if m.value.startswith("**5 layers fall back"))
    assert "`conv1`, `conv2`, `conv3`, `block.dw`, `block.pw`: 4-bit convolution weights" in fallback
    assert "no 4-bit convolution kernel" in fallback
    assert "`fc1`, `fc2`: MatMulNBits (4-bit weights" in text  # INT4 Linear runs on MatMulNBits, not in float
    assert "opset **21**" in text
    assert "integer runtime check is off" in at.info[0].value and "Integer runtime check" in at.info[0].value


def test_a_failed_export_shows_an_error_and_the_session_keeps_working(media) -> None:  # type: ignore[no-untyped-def]
    at = new_app().run()
    at.selectbox(key="sb_eval_runtime").set_value(None).run()
    at.radio(key="sb_a_mode").set_value("dynamic").run()
    at.radio(key="sb_a_scheme").set_value("symmetric").run()
    at = _export(at)
    assert not at.exception
    assert len(at.error) == 1 and "ONNX export failed" in at.error[0].value
    assert "activation point 'x': dynamic 8-bit symmetric per_tensor quantization cannot be exported" in at.error[0].value
    name, data = _download(at, media, "io_dl_config")  # the other downloads still work
    assert name == "ptq_config.json" and QuantConfig.from_json(data.decode()).activations.scheme == "symmetric"  # type: ignore[union-attr]

    at.radio(key="sb_a_scheme").set_value("asymmetric").run()  # fix what the message names, export again
    at.button(key="io_onnx_export").click().run()
    assert not problems(at)
    _, onnx_bytes = _download(at, media, "io_dl_onnx")
    assert ort.InferenceSession(onnx_bytes, providers=["CPUExecutionProvider"])
    assert not problems(open_page(at, "overview"))


def test_a_temporary_folder_that_cannot_be_created_is_an_export_error(monkeypatch: pytest.MonkeyPatch,
                                                                      tmp_path: Path) -> None:
    # Called directly: the app's sidebar (data-set uploads) would recreate a missing temp folder first.
    not_a_folder = tmp_path / "tmp"
    not_a_folder.write_text("a file where the temp folder should be")
    monkeypatch.setattr(tempfile, "tempdir", str(not_a_folder))
    config = QuantConfig.from_dict({"weights": {"bits": 6}, "evaluation": {"runtime": None}})  # not exported elsewhere
    with pytest.raises(ExportError, match=r"cannot create a temporary folder for the ONNX file in '.*tmp'"):
        resources.onnx_export(config.to_json())
    monkeypatch.undo()
    assert ort.InferenceSession(resources.onnx_export(config.to_json())["onnx"], providers=["CPUExecutionProvider"])
