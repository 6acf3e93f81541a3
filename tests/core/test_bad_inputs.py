"""Bad input to the engine and the CLI: each case asserts the exact kind of outcome.

The outcome is always one of: a PTQError subclass whose message names the field or file and says
what is allowed; exit status 2 with that message and no traceback (CLI); or a run that goes
ahead and says in ``QuantPlan.warnings`` what it did instead of what was asked. Where the input is
an output path, nothing is computed before it is checked (the pipeline is replaced by a function
that fails the test if called), so no result can be lost.
"""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pytest
import torch
from PIL import Image

import ptq_core.pipeline as pipeline
from ptq_core.cli import main
from ptq_core.config import MAX_GROUP_SIZE, QuantConfig
from ptq_core.data import check_dataset_spec, load_dataset
from ptq_core.errors import ConfigError, DataError, ModelError
from ptq_core.models import ModelEntry, get_model_entry, load_model
from ptq_core.models.digits import DigitsCNN
from ptq_core.pipeline import Explorer

if TYPE_CHECKING:
    from tests.conftest import Registrations

ROOT = Path(__file__).resolve().parents[2]
FAST = {"evaluation": {"runtime": None, "num_samples": 32, "layer_error_samples": 8}}  # CLI runs: seconds, not minutes
# digits_cnn's weight rows (in_channels/groups * kh * kw, or in_features): the group-size rule's numbers.
ROWS = {"conv1": 9, "conv2": 144, "conv3": 288, "block.dw": 9, "block.pw": 64, "fc1": 64, "fc2": 32}


def _config_file(tmp_path: Path, data: dict[str, Any] | list[Any], name: str = "cfg.json") -> str:
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return str(path)


@pytest.fixture
def no_compute(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail the test if anything is evaluated: a bad output path must be refused before that."""

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the pipeline ran before the bad input was refused")

    monkeypatch.setattr(pipeline, "run", refuse)
    monkeypatch.setattr(pipeline.Explorer, "evaluate", refuse)
    monkeypatch.setattr(pipeline.Explorer, "export_onnx", refuse)


# -- weights.group_size -----------------------------------------------------------------------------
@pytest.mark.parametrize("value", [10**9, 10**6, MAX_GROUP_SIZE + 1])
def test_a_group_size_beyond_any_model_is_a_config_error(value: int) -> None:
    with pytest.raises(ConfigError, match=rf"^weights\.group_size: got {value}; allowed: an integer from 1 to {MAX_GROUP_SIZE}$"):
        QuantConfig.from_dict({"weights": {"granularity": "per_group", "group_size": value}})


@pytest.mark.parametrize("value", [0, -32, True, 32.0, "32"])
def test_a_group_size_that_is_not_a_positive_integer_is_a_config_error(value: Any) -> None:
    with pytest.raises(ConfigError, match=r"^weights\.group_size: got .*; allowed: an integer from 1 to 65536$"):
        QuantConfig.from_dict({"weights": {"granularity": "per_group", "group_size": value}})


@pytest.mark.parametrize("value", [1000, 289])
def test_a_group_longer_than_every_row_is_refused_naming_the_longest_layer(cnn: Explorer, value: int) -> None:
    config = QuantConfig.from_dict({"weights": {"bits": 4, "granularity": "per_group", "group_size": value}})
    with pytest.raises(ConfigError, match=rf"^weights\.group_size: got {value}; allowed: 1 to 288 for this model, the "
                                          r"longest row .* \(conv3: 288 weights per output channel\)"):
        cnn.plan(config)


def test_a_group_as_long_as_the_longest_row_runs_and_says_it_is_per_channel(cnn: Explorer) -> None:
    grouped = cnn.plan(QuantConfig.from_dict({"weights": {"bits": 4, "granularity": "per_group", "group_size": 288}}))
    per_channel = cnn.plan(QuantConfig.from_dict({"weights": {"bits": 4}}))
    listed = ", ".join(f"{name} ({row})" for name, row in ROWS.items())
    assert grouped.warnings == [f"weights.group_size=288 is at least the row length of 7 layer(s): {listed}; each of "
                                "their rows is one group, the same numbers as per_channel"]
    for name, lq in grouped.layers.items():  # the warning is true: the same fake-quantized weights
        assert torch.equal(lq.fq_weight, per_channel.layers[name].fq_weight), name


def test_a_group_covering_only_short_rows_names_those_layers(cnn: Explorer) -> None:
    plan = cnn.plan(QuantConfig.from_dict({"weights": {"bits": 4, "granularity": "per_group", "group_size": 32}}))
    assert plan.warnings == ["weights.group_size=32 is at least the row length of 3 layer(s): conv1 (9), block.dw (9), "
                             "fc2 (32); each of their rows is one group, the same numbers as per_channel"]


def test_an_override_group_longer_than_its_layer_names_the_override(cnn: Explorer) -> None:
    config = QuantConfig.from_dict({"weights": {"granularity": "per_group", "group_size": 32},
                                    "overrides": {"conv2": {"weights": {"group_size": 145}}}})
    with pytest.raises(ConfigError, match=r"^overrides\.conv2\.weights\.group_size: got 145; allowed: 1 to 144 .*conv2: 144"):
        cnn.plan(config)


def test_a_group_size_with_per_channel_is_ignored_and_said(cnn: Explorer) -> None:
    plan = cnn.plan(QuantConfig.from_dict({"weights": {"granularity": "per_channel", "group_size": 32}}))
    assert plan.warnings == ["weights.group_size=32 is ignored: no layer is quantized per_group with it (granularity "
                             "is per_channel; group_size applies to per_group only)"]
    assert all(lq.quant is not None and lq.quant.group_size is None for lq in plan.layers.values())  # not echoed


def test_a_group_size_whose_layers_are_all_float_is_said_to_be_ignored(cnn: Explorer) -> None:
    plan = cnn.plan(QuantConfig.from_dict({"weights": {"granularity": "per_group", "group_size": 16},
                                           "keep_float": list(ROWS)}))
    assert plan.warnings == ["weights.group_size=16 is ignored: no layer is quantized per_group with it (every "
                             "per_group layer is in keep_float or has its own group size)"]


def test_a_group_size_used_only_by_an_override_is_not_called_ignored(cnn: Explorer) -> None:
    plan = cnn.plan(QuantConfig.from_dict({"weights": {"granularity": "per_channel", "group_size": 64},
                                           "overrides": {"conv3": {"weights": {"granularity": "per_group"}}}}))
    assert plan.warnings == []
    assert plan.layers["conv3"].qparams is not None and plan.layers["conv3"].qparams.scale.shape == (64, 5)  # ceil(288/64)


# -- overrides that change nothing are said -----------------------------------------------------------
def test_a_weight_override_on_a_float_layer_is_said(cnn: Explorer) -> None:
    plan = cnn.plan(QuantConfig.from_dict({"keep_float": ["conv2"], "overrides": {"conv2": {"weights": {"bits": 4}}}}))
    assert plan.warnings == ["overrides.conv2.weights: layer conv2 is in keep_float, so its weights stay float; "
                             "the override changes nothing"]
    assert plan.layers["conv2"].quant is None


def test_an_activation_override_on_a_float_layers_output_is_said(cnn: Explorer) -> None:
    plan = cnn.plan(QuantConfig.from_dict({"keep_float": ["fc2"], "overrides": {"fc2": {"activations": {"bits": 4}}}}))
    assert plan.warnings == ["overrides.fc2.activations: fc2 has no activation quantizer (layer fc2 is in keep_float, "
                             "so its output stays float); the override changes nothing"]
    assert "fc2" not in plan.points


def test_an_activation_override_on_an_output_in_dynamic_mode_is_said(cnn: Explorer) -> None:
    plan = cnn.plan(QuantConfig.from_dict({"activations": {"mode": "dynamic"},
                                           "overrides": {"fc2": {"activations": {"bits": 4}}}}))
    assert plan.warnings == ["overrides.fc2.activations: fc2 has no activation quantizer (dynamic mode quantizes only "
                             "the inputs of quantized Conv/Linear layers); the override changes nothing"]


def test_dynamic_per_token_on_conv_inputs_says_it_uses_per_tensor(cnn: Explorer) -> None:
    plan = cnn.plan(QuantConfig.from_dict({"activations": {"mode": "dynamic", "granularity": "per_token"}}))
    assert plan.warnings == ["activations.granularity: per_token applies to Linear inputs only (a conv input has no "
                             "token rows); 5 conv input(s) use per_tensor: x, conv1, conv2, conv3, block.dw"]
    assert {n: p.granularity for n, p in plan.points.items()} == {
        "x": "per_tensor", "conv1": "per_tensor", "conv2": "per_tensor", "conv3": "per_tensor",
        "block.dw": "per_tensor", "avgpool": "per_token", "fc1": "per_token"}


def test_an_override_that_applies_gives_no_warning(cnn: Explorer) -> None:
    plan = cnn.plan(QuantConfig.from_dict({"overrides": {"conv2": {"weights": {"bits": 4}, "activations": {"bits": 6}}}}))
    assert plan.warnings == []


# -- config files -------------------------------------------------------------------------------------
@pytest.mark.parametrize("text, kind", [("[1, 2]", "a JSON array"), ('"w8a8"', "a JSON string"), ("8", "a JSON number"),
                                        ("null", "null"), ("true", "a JSON boolean")])
def test_a_config_that_is_not_an_object_says_what_it_is(text: str, kind: str) -> None:
    with pytest.raises(ConfigError, match=rf"^config: got {kind}; allowed: a JSON object with keys model, dataset, "):
        QuantConfig.from_json(text)


# -- CLI outputs: checked before anything is computed ------------------------------------------------------
def test_run_output_onto_a_folder_exits_2_before_computing(tmp_path: Path, no_compute: None,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "--config", _config_file(tmp_path, FAST), "--output", str(tmp_path), "--quiet"]) == 2
    assert f"error: --output: '{tmp_path}' is a folder; allowed: a file path" in capsys.readouterr().err


def test_run_output_in_a_read_only_place_exits_2_before_computing(tmp_path: Path, no_compute: None,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    if not Path("/sys").is_dir():
        pytest.skip("needs /sys, a folder even root cannot write to")
    assert main(["run", "--config", _config_file(tmp_path, FAST), "--output", "/sys/ptq_result.json", "--quiet"]) == 2
    assert "error: --output: cannot write '/sys/ptq_result.json' (Permission denied); allowed: a file in a writable folder" \
        in capsys.readouterr().err


def test_run_output_under_a_file_exits_2_before_computing(tmp_path: Path, no_compute: None,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "plain").write_text("a file, not a folder")
    out = tmp_path / "plain" / "r.json"
    assert main(["run", "--config", _config_file(tmp_path, FAST), "--output", str(out), "--quiet"]) == 2
    assert f"error: --output: cannot create the folder '{tmp_path / 'plain'}'" in capsys.readouterr().err


def test_run_output_into_missing_folders_creates_them(tmp_path: Path) -> None:
    out = tmp_path / "new" / "deeper" / "r.json"
    assert main(["run", "--config", _config_file(tmp_path, FAST), "--output", str(out), "--quiet"]) == 0
    assert json.loads(out.read_text())["metrics"]["num_eval_samples"] == 32


def test_a_refused_output_leaves_no_file_and_no_traceback(tmp_path: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "ptq_core", "run", "--config", _config_file(tmp_path, FAST),
                           "--output", str(tmp_path)], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "is a folder" in proc.stderr and sorted(p.name for p in tmp_path.iterdir()) == ["cfg.json"]


def test_sweep_output_onto_a_folder_exits_2_before_computing(tmp_path: Path, no_compute: None,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "t.csv").mkdir()
    args = ["sweep", "--config", _config_file(tmp_path, FAST), "--grid", "weights.bits=8,4", "--output",
            str(tmp_path / "t.csv"), "--quiet"]
    assert main(args) == 2
    assert "error: --output: " in capsys.readouterr().err


def test_sweep_output_named_json_would_overwrite_itself(tmp_path: Path, no_compute: None,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    args = ["sweep", "--config", _config_file(tmp_path, FAST), "--grid", "weights.bits=8,4", "--output",
            str(tmp_path / "t.json"), "--quiet"]
    assert main(args) == 2
    assert "--output: got" in capsys.readouterr().err and not (tmp_path / "t.json").exists()


def test_export_report_onto_a_folder_exits_2_before_exporting(tmp_path: Path, no_compute: None,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    args = ["export", "--config", _config_file(tmp_path, FAST), "--output", str(tmp_path / "m.onnx"),
            "--report", str(tmp_path), "--quiet"]
    assert main(args) == 2
    assert f"error: --report: '{tmp_path}' is a folder" in capsys.readouterr().err


# -- sweep grids: every value checked before the first config runs ---------------------------------
@pytest.mark.parametrize("grid, message", [
    ("model=digits_cnn,nosuch_model", "model: unknown model 'nosuch_model'; available: all_minilm_l6_v2, digits_cnn, digits_mlp"),
    ("dataset=digits,nosuch_data", "dataset: unknown data set 'nosuch_data'; available: digits"),
])
def test_sweep_refuses_an_unknown_model_or_data_set_before_running_any(
    tmp_path: Path, no_compute: None, capsys: pytest.CaptureFixture[str], grid: str, message: str
) -> None:
    args = ["sweep", "--config", _config_file(tmp_path, FAST), "--grid", grid, "--output", str(tmp_path / "t.csv"),
            "--quiet"]
    assert main(args) == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "t.csv").exists()


def test_sweep_refuses_a_group_size_the_model_cannot_take_before_running_any(
    tmp_path: Path, no_compute: None, capsys: pytest.CaptureFixture[str]
) -> None:
    args = ["sweep", "--config", _config_file(tmp_path, FAST), "--grid", "weights.granularity=per_group",
            "weights.group_size=16,1000", "--output", str(tmp_path / "t.csv"), "--quiet"]
    assert main(args) == 2
    assert "weights.group_size: got 1000; allowed: 1 to 288 for this model" in capsys.readouterr().err


def test_check_dataset_spec_refuses_unknown_options_without_loading() -> None:
    with pytest.raises(DataError, match=r"^dataset: options \['colour'\] are not accepted by kind 'digits'"):
        check_dataset_spec({"kind": "digits", "colour": "red"})
    with pytest.raises(DataError, match=r"^dataset\.kind: unknown data set 'webcam'"):
        check_dataset_spec({"kind": "webcam"})


# -- model files --------------------------------------------------------------------------------------------
ACCEPTED = ("allowed: a TorchScript module (torch.jit.save), a torch.export program (.pt2, torch.export.save) or "
            "a state dict (torch.save(model.state_dict(), path))")


def _state_dict_bytes(legacy: bool = False, **edits: tuple[int, float]) -> bytes:
    state = load_model("digits_cnn").state_dict()
    for name, (index, value) in edits.items():
        state[name.replace("__", ".")].view(-1)[index] = value
    buf = io.BytesIO()
    torch.save(state, buf, _use_new_zipfile_serialization=not legacy)
    return buf.getvalue()


def test_a_system_text_file_is_not_a_model_file() -> None:
    if not Path("/etc/passwd").is_file():
        pytest.skip("no /etc/passwd")
    with pytest.raises(ModelError) as info:
        get_model_entry({"kind": "file", "path": "/etc/passwd"})
    assert str(info.value) == ("model.path: '/etc/passwd' is not a model file (neither a zip archive written by torch "
                               f"nor a torch.save pickle); {ACCEPTED}")


@pytest.mark.parametrize("content, message", [
    (b"epoch,loss\n1,0.5\n", "is not a model file"),  # a text file renamed .pt
    (b"\x80\x02.", "is not a model file"),  # a pickle, but not torch.save's (torch's unpickler: IndexError)
    (b"", r"is empty \(0 bytes\)"),
])
def test_files_that_are_not_models_say_so_with_the_accepted_formats(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "model.pt"
    path.write_bytes(content)
    with pytest.raises(ModelError, match=rf"^model\.path: {re.escape(repr(str(path)))} {message}.*; {re.escape(ACCEPTED)}$"):
        get_model_entry({"kind": "file", "path": str(path), "architecture": "digits_cnn"})


@pytest.mark.parametrize("legacy", [False, True])
def test_a_truncated_state_dict_says_truncated_without_internal_causes(tmp_path: Path, legacy: bool) -> None:
    data = _state_dict_bytes(legacy=legacy)
    path = tmp_path / "cut.pt"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelError) as info:
        load_model({"kind": "file", "path": str(path), "architecture": "digits_cnn"})
    message = str(info.value)
    assert message.startswith(f"model.path: '{path}' ") and "truncated or corrupt" in message and "allowed: " in message
    for internal in ("EOFError", "IndexError", "KeyError", "RuntimeError", "OSError", "Errno"):
        assert internal not in message


def test_a_legacy_state_dict_cut_after_its_header_says_truncated(tmp_path: Path) -> None:
    path = tmp_path / "head.pt"
    path.write_bytes(_state_dict_bytes(legacy=True)[:20])  # torch's loader: "EOFError: "
    with pytest.raises(ModelError, match=r"cannot be loaded as a state dict: it is truncated or corrupt; allowed: a "
                                         r"complete file written by torch\.save"):
        load_model({"kind": "file", "path": str(path), "architecture": "digits_cnn"})


def test_nan_in_a_batchnorm_buffer_names_the_buffer(tmp_path: Path) -> None:
    path = tmp_path / "nan_bn.pt"
    path.write_bytes(_state_dict_bytes(bn2__running_var=(3, float("nan"))))
    with pytest.raises(ModelError) as info:
        Explorer({"kind": "file", "path": str(path), "architecture": "digits_cnn"}, "digits")
    assert str(info.value) == ("model.path: 'nan_bn.pt': bn2.running_var contains NaN or Inf (1 of 32 values); "
                               "allowed: finite weights and buffers only")


def test_inf_in_a_weight_names_the_weight(tmp_path: Path) -> None:
    path = tmp_path / "inf_w.pt"
    path.write_bytes(_state_dict_bytes(conv1__weight=(0, float("inf"))))
    with pytest.raises(ModelError, match=r"^model\.path: 'inf_w\.pt': conv1\.weight contains NaN or Inf \(1 of 144 values\)"):
        load_model({"kind": "file", "path": str(path), "architecture": "digits_cnn"})


def test_nan_in_an_exported_programs_buffer_names_the_buffer(tmp_path: Path) -> None:
    model = load_model("digits_cnn")
    model.bn1.running_mean[0] = float("nan")
    path = tmp_path / "nan.pt2"
    torch.export.save(torch.export.export(model, (torch.rand(2, 1, 8, 8),)), str(path))
    with pytest.raises(ModelError, match=r"^model\.path: 'nan\.pt2': bn1\.running_mean contains NaN or Inf"):
        load_model({"kind": "file", "path": str(path), "preprocessing": "none"})


def test_a_corrupt_exported_program_names_no_internal_cause(tmp_path: Path) -> None:
    import zipfile

    good = tmp_path / "good.pt2"
    torch.export.save(torch.export.export(load_model("digits_mlp"), (torch.rand(2, 1, 8, 8),)), str(good))
    bad = tmp_path / "bad.pt2"
    with zipfile.ZipFile(good) as src, zipfile.ZipFile(bad, "w") as dst:
        for info in src.infolist():
            data = src.read(info.filename)
            dst.writestr(info.filename, b"{" if info.filename.endswith("models/model.json") else data)
    with pytest.raises(ModelError) as caught:
        load_model({"kind": "file", "path": str(bad), "preprocessing": "none"})
    message = str(caught.value)
    assert message.startswith(f"model.path: '{bad}' cannot be loaded as a torch.export program: it is truncated, corrupt")
    assert message.endswith("allowed: a complete .pt2 file written by torch.export.save")
    assert "Error:" not in message


def test_a_program_exported_in_training_mode_names_the_file_and_what_is_allowed(tmp_path: Path) -> None:
    model = load_model("digits_cnn").train()  # BatchNorm updates its statistics: not a program to quantize
    path = tmp_path / "train.pt2"
    torch.export.save(torch.export.export(model, (torch.rand(2, 1, 8, 8),)), str(path))
    with pytest.raises(ModelError, match=r"^model\.path: 'train\.pt2': the exported program .*; allowed: .*model\.eval\(\)"):
        load_model({"kind": "file", "path": str(path), "preprocessing": "none"})


def test_all_zero_weights_run_and_ties_go_to_the_first_class(registry: Registrations) -> None:
    def build() -> torch.nn.Module:
        model = DigitsCNN().eval()
        with torch.no_grad():
            for p in model.parameters():
                p.zero_()
        return model

    registry.model(ModelEntry(name="test_zero_weights", description="every weight 0", default_dataset="digits",
                              build=build))
    result = Explorer("test_zero_weights", "digits").evaluate(
        QuantConfig.from_dict({"model": "test_zero_weights", **FAST}), layer_errors=False)
    labels = load_dataset("digits").evaluation_labels
    assert labels is not None
    # every logit equal: top-1 is class 0 for every sample, top-5 classes 0-4 (the first maxima)
    assert result.metrics["quant_top1"] == pytest.approx(float((labels[:32] == 0).float().mean()), abs=1e-7)
    assert result.metrics["quant_top5"] == pytest.approx(float((labels[:32] < 5).float().mean()), abs=1e-7)
    assert result.predictions == [0] * 32 and result.metrics["agreement"] == 1.0


# -- image folders ------------------------------------------------------------------------------------------
def _jpeg(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (48, 64, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(pixels).save(buf, format="JPEG")
    return buf.getvalue()


def _image_transform() -> Any:
    """ResNet-18's preprocessing (resize, crop, normalise); no model is built or downloaded."""
    return get_model_entry({"kind": "torchvision", "name": "resnet18", "weights": "random"}).transform


@pytest.mark.parametrize("bad, reason", [
    (lambda: _jpeg(0)[:600], r"(?i)truncated"),
    (lambda: b"this is a text file", r"not an image in a format PIL reads"),
    (lambda: b"", r"the file is empty"),
])
def test_an_image_folder_with_one_bad_file_fails_to_load_naming_it(tmp_path: Path, bad: Any, reason: str) -> None:
    for c in range(2):
        (tmp_path / f"class{c}").mkdir()
        for i in range(3):
            (tmp_path / f"class{c}" / f"{i}.jpg").write_bytes(_jpeg(10 * c + i))
    broken = tmp_path / "class1" / "z_broken.jpg"
    broken.write_bytes(bad())
    with pytest.raises(DataError) as info:
        load_dataset({"kind": "image_folder", "path": str(tmp_path)}, transform=_image_transform())
    message = str(info.value)
    assert message.startswith(f"image '{broken}' cannot be decoded (")
    assert re.search(reason, message) and message.endswith("remove or replace this one")
    broken.write_bytes(_jpeg(99))  # fixed on disk: the next load sees the new bytes and succeeds
    assert len(load_dataset({"kind": "image_folder", "path": str(tmp_path)}, transform=_image_transform()).evaluation) > 0
