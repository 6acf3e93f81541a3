"""The LiteRT target: a full-integer .tflite carrying ptq_core's scales, run in the LiteRT interpreter.

Real conversions with litert-torch and real runs in ai-edge-litert on the digits models (three
conversions of ~4 s each after a one-off ~8 s import of litert-torch). What is pinned: the file is
int8 end to end, its tensors hold the plan's own scales and zero points (uint8 grids as int8 with
zero point - 128), LiteRT agrees with the simulation, unsupported configs and failed conversions
are ExportErrors naming the field or layer, and a missing package is a row marked unavailable.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn

from ptq_core.calibration import batches
from ptq_core.config import QuantConfig
from ptq_core.errors import ExportError
from ptq_core.models import ModelEntry
from ptq_core.pipeline import Explorer
from ptq_core.quantize import QuantPlan, build_quantized_model
from ptq_core.tflite import TfliteRunner, check_plan, export_tflite, litert_unavailable, tflite_target
from ptq_core.tflite.qdq import weight_forms

pytestmark = pytest.mark.skipif(litert_unavailable() is not None, reason=f"LiteRT target unavailable: {litert_unavailable()}")


def _cfg(**sections: object) -> QuantConfig:
    return QuantConfig.from_dict({"evaluation": {"runtime": None}, **sections})


def _evaluation(ex: Explorer, cfg: QuantConfig) -> dict[str, Any]:
    """The evaluation samples with FP32 and simulated logits, as Explorer.evaluate computes them."""
    prepared, plan = ex.prepared_for(cfg), ex.plan(cfg)
    indices = ex.evaluation_indices(cfg.evaluation)
    xs, ys = zip(*batches(ex.dataset.evaluation, indices, 128), strict=True)
    x, y = torch.cat(xs), torch.cat(ys)
    sim, _ = build_quantized_model(prepared, plan)
    with torch.no_grad():
        return {"prepared": prepared, "plan": plan, "indices": indices, "x": x, "labels": y,
                "sim": sim(x), "fp32": prepared.graph_module(x)}


@pytest.fixture(scope="module")
def cnn_w8a8(cnn: Explorer, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """digits_cnn W8A8 (per-channel weights, uint8 activations) written once as .tflite."""
    ev = _evaluation(cnn, _cfg())
    path = tmp_path_factory.mktemp("tflite") / "digits_cnn.tflite"
    ev["report"] = export_tflite(ev["prepared"], ev["plan"], path, example=ev["x"][:1])
    return ev


def _tensors(path: str | Path) -> list[dict[str, Any]]:
    from ai_edge_litert.interpreter import Interpreter

    return Interpreter(model_path=str(path)).get_tensor_details()


def test_file_is_full_integer_with_the_plans_own_scales(cnn_w8a8: dict[str, Any]) -> None:
    report, plan = cnn_w8a8["report"], cnn_w8a8["plan"]
    assert report.fallbacks == [] and report.float_ops == []
    assert report.input_dtype == report.output_dtype == "int8"
    assert report.activations_carried == list(plan.points) and report.weights_carried == list(plan.layers)
    assert report.ops.keys() <= {"RESHAPE", "CONV_2D", "DEPTHWISE_CONV_2D", "MAX_POOL_2D", "ADD", "MEAN", "FULLY_CONNECTED"}
    assert Path(report.path).stat().st_size == report.file_bytes > 0
    tensors = _tensors(report.path)
    # Every tensor is int8 (activations, weights) or int32 (biases, shape operands): no float tensor left.
    assert {np.dtype(t["dtype"]).name for t in tensors} == {"int8", "int32"}
    # The input is ptq_core's input quantizer: uint8 (1/255, 0) is int8 (1/255, -128).
    x = plan.points["x"]
    inp = next(t for t in tensors if t["name"].startswith("serving_default_args_0"))
    assert inp["quantization"] == (pytest.approx(x.scale, rel=0, abs=0), x.zero_point - 128)
    # An activation in the middle: block.pw's output (zero point not 0) is found with exactly its float32 scale.
    pw = plan.points["block.pw"]
    assert pw.zero_point not in (0, 128)
    grids = {(float(t["quantization"][0]), int(t["quantization"][1])) for t in tensors if np.dtype(t["dtype"]).name == "int8"}
    assert (float(np.float32(pw.scale)), pw.zero_point - 128) in grids
    # conv2's weights: int8 with the plan's 32 per-channel scales, zero point 0.
    scale = plan.layers["conv2"].qparams.scale.numpy()
    w = next(t for t in tensors if t["quantization_parameters"]["scales"].shape == scale.shape
             and np.array_equal(t["quantization_parameters"]["scales"], scale))
    assert np.dtype(w["dtype"]).name == "int8" and not w["quantization_parameters"]["zero_points"].any()


def test_litert_decides_as_the_simulation(cnn_w8a8: dict[str, Any]) -> None:
    runner = TfliteRunner(cnn_w8a8["report"].path, threads=1)
    assert runner.delegated()  # XNNPACK took the graph
    out = torch.cat([runner.decode(runner.invoke(runner.encode(x[None]))) for x in cnn_w8a8["x"]])
    sim = cnn_w8a8["sim"]
    # Measured: 360/360 same top-1, largest logit difference one output step (0.13 = fc2's scale): the
    # converter rounds biases to int32 and requantizes in fixed point, the simulation in float. 99% allows
    # three such flips on a tie; three steps allow a carried one-code difference.
    assert (out.argmax(1) == sim.argmax(1)).float().mean() >= 0.99
    step = cnn_w8a8["plan"].points["fc2"].scale
    assert float((out - sim).abs().max()) <= 3 * step + 1e-6


def test_runtime_row_for_the_mlp_with_per_tensor_weights(mlp: Explorer) -> None:
    ev = _evaluation(mlp, _cfg(weights={"granularity": "per_tensor"}))
    row = tflite_target(ev["prepared"], ev["plan"], dataset=mlp.dataset.evaluation, indices=ev["indices"], batch_size=128,
                        fp32_logits=ev["fp32"], sim_logits=ev["sim"], labels=ev["labels"], threads=1)
    assert row.available, row.reason
    assert row.name == "LiteRT" and row.kind == "integer" and row.version.startswith("ai-edge-litert ")
    # Measured: sim_agreement 1.0 (360/360); top-1 equal to the simulation's.
    assert row.sim_agreement is not None and row.sim_agreement >= 0.99
    sim_top1 = float((ev["sim"].argmax(1) == ev["labels"]).float().mean())
    assert row.top1 is not None and abs(row.top1 - sim_top1) <= 0.01
    assert row.threads == 1 and row.latency_ms["1"] > 0 and row.file_bytes and row.fallbacks == []
    assert any("carry ptq_core's scales" in n for n in row.notes)


def test_layers_tflite_cannot_carry_take_the_converters_weights_labelled(cnn: Explorer) -> None:
    asym = cnn.plan(_cfg(weights={"scheme": "asymmetric"}))
    forms = {f.layer: f for f in weight_forms(cnn.prepared(), asym)}
    assert {f.source for f in forms.values()} == {"converter"}
    assert "zero point 0" in (forms["conv2"].reason or "") and "litert-torch" in (forms["conv2"].reason or "")
    # litert-torch's weight observer: symmetric per channel, scale = max|w| / 127, zero point 0
    w = cnn.prepared().weight(cnn.prepared().unit("conv2"))
    expected = w.abs().amax(dim=(1, 2, 3)) / 127
    assert forms["conv2"].scale is not None and forms["conv2"].zero_point is not None
    torch.testing.assert_close(forms["conv2"].scale, expected, rtol=1e-6, atol=0)
    assert not forms["conv2"].zero_point.any()
    grouped = cnn.plan(_cfg(weights={"bits": 4, "granularity": "per_group", "group_size": 16}))
    forms = {f.layer: f for f in weight_forms(cnn.prepared(), grouped)}
    assert forms["conv1"].source == "ptq_core" and forms["conv1"].qmax == 7  # 9 weights per row: one group, per-channel
    assert forms["conv2"].source == "converter" and "per-group" in (forms["conv2"].reason or "")


@pytest.mark.parametrize(
    ("sections", "match"),
    [
        ({"activations": {"mode": "dynamic"}}, r"activations\.mode \(point x\): got 'dynamic'; allowed .*'static'"),
        ({"activations": None}, r"activations: got null \(weight-only\); allowed .*static 8-bit"),
        ({"activations": {"bits": 4}}, r"activations\.bits \(point x\): got 4; allowed .*: 8"),
    ],
)
def test_configs_full_integer_tflite_cannot_carry_say_what_is_allowed(
    cnn: Explorer, sections: dict[str, Any], match: str,
) -> None:
    plan: QuantPlan = cnn.plan(_cfg(**sections))
    with pytest.raises(ExportError, match=match):
        check_plan(plan)


class _Erfinv(nn.Module):
    """A conv, an op litert-torch has no lowering for (erfinv), a Linear."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.fc = nn.Linear(4 * 64, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.special.erfinv(torch.relu(self.conv(x)).clamp(0, 0.5)).flatten(1))


def test_failed_conversion_names_the_op_and_its_layers(registry: Any, tmp_path: Path) -> None:
    registry.model(ModelEntry(name="digits_erfinv", description="test", default_dataset="digits",
                              build=lambda: _Erfinv().eval()))
    ex = Explorer("digits_erfinv", "digits")
    ev = _evaluation(ex, _cfg(model="digits_erfinv"))
    with pytest.raises(ExportError, match=r"cannot convert the op between conv and special_erfinv: aten\.erfinv"):
        export_tflite(ev["prepared"], ev["plan"], tmp_path / "bad.tflite", example=ev["x"][:1])


def test_an_export_error_is_a_row_marked_unavailable(cnn: Explorer) -> None:
    ev = _evaluation(cnn, _cfg(activations={"mode": "dynamic"}))
    row = tflite_target(ev["prepared"], ev["plan"], dataset=cnn.dataset.evaluation, indices=ev["indices"], batch_size=128,
                        fp32_logits=ev["fp32"], sim_logits=ev["sim"], labels=ev["labels"], threads=1)
    assert not row.available and row.top1 is None and row.version.startswith("ai-edge-litert ")
    assert row.reason is not None and row.reason.startswith("activations.mode (point x): got 'dynamic'")


@pytest.mark.parametrize(("module", "package"), [("ai_edge_litert", "ai-edge-litert"), ("litert_torch", "litert-torch")])
def test_missing_package_is_a_row_marked_unavailable(
    cnn_w8a8: dict[str, Any], cnn: Explorer, monkeypatch: pytest.MonkeyPatch, module: str, package: str,
) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # what a missing package looks like to importlib
    reason = litert_unavailable()
    assert reason is not None and f"{package} is not installed" in reason
    ev = cnn_w8a8
    row = tflite_target(ev["prepared"], ev["plan"], dataset=cnn.dataset.evaluation, indices=ev["indices"], batch_size=128,
                        fp32_logits=ev["fp32"], sim_logits=ev["sim"], labels=ev["labels"])
    assert not row.available and row.reason == reason and row.name == "LiteRT" and row.to_dict()["top1"] is None
    with pytest.raises(ExportError, match=f"LiteRT export unavailable: {package} is not installed"):
        export_tflite(ev["prepared"], ev["plan"], Path(ev["report"].path).with_name("x.tflite"), example=ev["x"][:1])
