"""ONNX QDQ export: the file carries ptq_core's own qparams, placed as graph.py says, and runs in onnxruntime.

Everything here reads the written file back with ``onnx`` or runs it with onnxruntime; nothing is
mocked. Thresholds: the digits CNN W8A8 simulation and the exported model must pick the same class
on at least 99.5% of the 360 evaluation samples (the issue's bar: at most one sample may differ);
logit differences are bounded by a few output quantization steps (see ptq_core.onnx.export's docstring
for where one-step differences come from).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import nn

from ptq_core.calibration import batches, collect_stats
from ptq_core.cli import main
from ptq_core.config import QuantConfig
from ptq_core.errors import ExportError
from ptq_core.graph import prepare
from ptq_core.onnx.export import export_float_onnx, export_onnx
from ptq_core.onnx.session import make_runtime_session, run_logits
from ptq_core.pipeline import Explorer
from ptq_core.quantize import QuantPlan, build_quantized_model, make_plan
from ptq_core.ranges import quantize_weight

ROOT = Path(__file__).resolve().parents[2]


def _cfg(**sections: object) -> QuantConfig:
    return QuantConfig.from_dict(dict(sections))


def _const(model: onnx.ModelProto, name: str) -> np.ndarray:
    for t in model.graph.initializer:
        if t.name == name:
            return numpy_helper.to_array(t)
    for n in model.graph.node:
        if n.op_type == "Constant" and n.output[0] == name:
            return numpy_helper.to_array(helper.get_attribute_value(n.attribute[0]))
    raise KeyError(name)


def _producer(model: onnx.ModelProto, name: str) -> onnx.NodeProto:
    return next(n for n in model.graph.node if name in n.output)


def _sim_and_runtime(explorer: Explorer, config: QuantConfig, path: Path) -> tuple[torch.Tensor, torch.Tensor]:
    prepared = explorer.prepared(config.fold_batchnorm)
    plan = explorer.plan(config)
    export_onnx(prepared, plan, path)
    qgm, _ = build_quantized_model(prepared, plan)
    indices = explorer.evaluation_indices(config.evaluation)
    with torch.inference_mode():
        sim = torch.cat([qgm(x) for x, _ in batches(explorer.dataset.evaluation, indices, 128)])
    ort = run_logits(make_runtime_session(path, threads=2), explorer.dataset.evaluation, indices, 128)
    return sim, ort


def test_w8a8_cnn_runtime_agrees_with_simulation(cnn: Explorer, tmp_path: Path) -> None:
    sim, ort = _sim_and_runtime(cnn, _cfg(), tmp_path / "q.onnx")
    agreement = float((sim.argmax(1) == ort.argmax(1)).float().mean())
    assert agreement >= 0.995
    fc2_step = cnn.plan(_cfg()).points["fc2"].scale
    assert fc2_step is not None
    # A few output steps, never a different model. Compared as integer codes (round(logits / step)): values
    # k steps apart differ by k * step only up to float rounding, which can tip a float comparison at the bound.
    codes_apart = int((torch.round(sim / fc2_step) - torch.round(ort / fc2_step)).abs().max())
    assert codes_apart <= 4, (codes_apart, float((sim - ort).abs().max()))


def test_activation_qdq_carry_the_plans_exact_scales_and_zero_points(cnn: Explorer, tmp_path: Path) -> None:
    plan = cnn.plan(_cfg())
    report = export_onnx(cnn.prepared(), plan, tmp_path / "q.onnx")
    model = onnx.load(str(tmp_path / "q.onnx"))
    assert set(report.activations) == set(plan.points)
    for name, pq in plan.points.items():
        for dq_out in report.activations[name]["dequantize_outputs"]:
            dq = _producer(model, dq_out)
            q = _producer(model, dq.input[0])
            assert dq.op_type == "DequantizeLinear" and q.op_type == "QuantizeLinear"
            for node in (q, dq):
                scale, zp = _const(model, node.input[1]), _const(model, node.input[2])
                assert scale.dtype == np.float32 and float(scale) == np.float32(pq.scale)  # bit-exact, not re-calibrated
                assert zp.dtype == np.uint8 and int(zp) == pq.zero_point  # asymmetric -> uint8, onnxruntime's fast path


def test_weights_are_ptq_cores_integer_codes_per_channel(cnn: Explorer, tmp_path: Path) -> None:
    prepared, plan = cnn.prepared(), cnn.plan(_cfg())
    report = export_onnx(prepared, plan, tmp_path / "q.onnx")
    model = onnx.load(str(tmp_path / "q.onnx"))
    assert report.weight_type == "int8"
    for name, lq in plan.layers.items():
        assert lq.qparams is not None
        entry = report.weights[name]
        codes = _const(model, entry["initializer"])
        assert codes.dtype == np.int8
        assert np.array_equal(codes, quantize_weight(prepared.weight(lq.unit), lq.qparams).numpy())
        assert np.array_equal(_const(model, entry["scale"]), lq.qparams.scale.numpy())
        assert not _const(model, entry["zero_point"]).any()  # symmetric weights: zero point 0
        dq = next(n for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0] == entry["initializer"])
        assert {a.name: helper.get_attribute_value(a) for a in dq.attribute}.get("axis") == 0  # per output channel
    assert not any(t.data_type == TensorProto.FLOAT and t.name.endswith(".weight") for t in model.graph.initializer)


def test_placement_matches_graph_rules(cnn: Explorer, tmp_path: Path) -> None:
    plan = cnn.plan(_cfg())
    report = export_onnx(cnn.prepared(), plan, tmp_path / "q.onnx")
    model = onnx.load(str(tmp_path / "q.onnx"))
    q_inputs = {n.input[0]: n for n in model.graph.node if n.op_type == "QuantizeLinear"}
    # one Q per point, plus a same-qparams Q after the max pool and the flatten (value-preserving ops)
    assert len(q_inputs) == len(plan.points) + 2
    fused = {u.name: u.fused_activation for u in cnn.prepared().units}
    for unit, act in fused.items():
        q = _producer(model, _producer(model, report.activations[unit]["dequantize_outputs"][0]).input[0])
        before = _producer(model, q.input[0])
        expected = {"relu": "Relu", "relu6": "Clip", None: None}[act]
        if expected is not None:  # the fused activation sits before the Q, where onnxruntime folds it
            assert before.op_type == expected, unit
        else:
            assert before.op_type in ("Conv", "Gemm", "Add", "GlobalAveragePool"), unit


def test_file_size_is_reported_and_int8_is_smaller(cnn: Explorer, tmp_path: Path) -> None:
    report = export_onnx(cnn.prepared(), cnn.plan(_cfg()), tmp_path / "q.onnx")
    fp32_bytes = export_float_onnx(cnn.prepared(), tmp_path / "f.onnx")
    assert report.onnx_bytes == (tmp_path / "q.onnx").stat().st_size
    assert 2.5 < fp32_bytes / report.onnx_bytes < 4.5  # int8 weights, float biases and graph overhead
    assert "KiB" in report.summary() and "9 integer kernel(s), 0 float fallback(s)" in report.summary()


def test_int4_convolutions_fall_back_with_a_clear_reason(cnn: Explorer, tmp_path: Path) -> None:
    report = export_onnx(cnn.prepared(), cnn.plan(_cfg(weights={"bits": 4})), tmp_path / "q4.onnx")
    model = onnx.load(str(tmp_path / "q4.onnx"))
    assert report.opset == 21  # INT4 tensors
    reasons = {r["layer"]: r["reason"] for r in report.float_fallback}
    assert set(reasons) == {"conv1", "conv2", "conv3", "block.dw", "block.pw"}
    assert "no 4-bit convolution kernel" in reasons["conv1"] and "FP32" in reasons["conv1"]
    conv1 = next(t for t in model.graph.initializer if t.name == report.weights["conv1"]["initializer"])
    assert conv1.data_type == TensorProto.INT4
    assert {r["layer"] for r in report.integer_kernels} == {"add", "avgpool", "fc1", "fc2"}


@pytest.mark.parametrize("weights", [{"bits": 4}, {"bits": 4, "granularity": "per_group", "group_size": 32}])
def test_int4_linear_uses_matmulnbits_and_agrees(mlp: Explorer, tmp_path: Path, weights: dict[str, object]) -> None:
    config = _cfg(weights=weights, activations=None)
    sim, ort = _sim_and_runtime(mlp, config, tmp_path / "nbits.onnx")
    model = onnx.load(str(tmp_path / "nbits.onnx"))
    nbits = [n for n in model.graph.node if n.op_type == "MatMulNBits"]
    assert len(nbits) == 3 and all(n.domain == "com.microsoft" for n in nbits)
    attrs = {a.name: helper.get_attribute_value(a) for a in nbits[0].attribute}
    assert attrs["bits"] == 4 and attrs["block_size"] == weights.get("group_size", 64)
    assert float((sim.argmax(1) == ort.argmax(1)).float().mean()) >= 0.995
    assert float((sim - ort).abs().max()) < 1e-3  # weight-only: same dequantized weights, fp32 matmuls


def test_symmetric_narrow_activations_clip_exactly(tmp_path: Path) -> None:
    """A value far below the calibrated range saturates at -127 (not onnxruntime's int8 -128), as simulated."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(8, 4)).eval()
    x = torch.rand(64, 8) * 2 - 1
    prepared = prepare(model, x[:1])
    stats = collect_stats(prepared, torch.utils.data.TensorDataset(x, torch.zeros(64)), list(range(64)), batch_size=64)
    plan: QuantPlan = make_plan(prepared, _cfg(activations={"scheme": "symmetric"}), stats)
    export_onnx(prepared, plan, tmp_path / "s.onnx")
    onnx_model = onnx.load(str(tmp_path / "s.onnx"))
    clips = [n for n in onnx_model.graph.node if n.op_type == "Clip"]
    assert clips and all(int(_const(onnx_model, c.input[1])) == -127 for c in clips)
    extreme = torch.full((3, 8), -50.0)
    extreme[1] = 50.0
    qgm, _ = build_quantized_model(prepared, plan)
    with torch.no_grad():
        sim = qgm(extreme)
    ort = make_runtime_session(tmp_path / "s.onnx", threads=1).run(None, {"input": extreme.numpy()})[0]
    assert np.allclose(sim.numpy(), ort, atol=1e-5)


def test_weight_only_and_dynamic_modes_export(mlp: Explorer, tmp_path: Path) -> None:
    sim, ort = _sim_and_runtime(mlp, _cfg(activations={"mode": "dynamic"}), tmp_path / "dyn.onnx")
    model = onnx.load(str(tmp_path / "dyn.onnx"))
    assert [n.op_type for n in model.graph.node].count("MatMulInteger") == 3
    assert [n.op_type for n in model.graph.node].count("DynamicQuantizeLinear") == 3
    assert float((sim.argmax(1) == ort.argmax(1)).float().mean()) >= 0.995
    report = export_onnx(mlp.prepared(), mlp.plan(_cfg(activations=None)), tmp_path / "w8.onnx")
    assert report.mode == "weight_only" and report.activation_type is None and not report.float_fallback


def test_dynamic_per_token_exports_as_float_ops_and_agrees_with_the_simulation(mlp: Explorer, tmp_path: Path) -> None:
    per_token = _cfg(activations={"mode": "dynamic"}, overrides={"fc2": {"activations": {"granularity": "per_token"}}})
    sim, ort = _sim_and_runtime(mlp, per_token, tmp_path / "pt.onnx")
    report = export_onnx(mlp.prepared(), mlp.plan(per_token), tmp_path / "pt.onnx")
    ops = [n.op_type for n in onnx.load(str(tmp_path / "pt.onnx")).graph.node]
    # point "fc2" is fc2's output, fc3's input: fc1's and fc2's inputs per tensor, fc3's per row in float ops
    assert ops.count("DynamicQuantizeLinear") == 2 and "ReduceMax" in ops
    assert [r["layer"] for r in report.float_fallback] == ["fc3"]
    assert "no per-row DynamicQuantizeLinear" in report.float_fallback[0]["reason"]
    assert float((sim.argmax(1) == ort.argmax(1)).float().mean()) >= 0.995


def test_unexportable_settings_raise_export_error_naming_the_layer(mlp: Explorer, tmp_path: Path) -> None:
    four_bit = _cfg(activations={"mode": "dynamic"}, overrides={"fc2": {"activations": {"bits": 4}}})
    with pytest.raises(ExportError, match=r"activation point 'fc2': dynamic 4-bit.*allowed for dynamic export: 8-bit asymmetric"):
        export_onnx(mlp.prepared(), mlp.plan(four_bit), tmp_path / "bad.onnx")
    assert not (tmp_path / "bad.onnx").exists()
    with pytest.raises(ExportError, match=r"opset: got 17; .*need opset 21"):
        # 3-bit Linear weights: no MatMulNBits width, stored as INT4 (opset 21)
        export_onnx(mlp.prepared(), mlp.plan(_cfg(weights={"bits": 3})), tmp_path / "bad.onnx", opset=17)
    with pytest.raises(ExportError, match=r"opset: got 9; allowed: an integer from 13 to 21"):
        export_onnx(mlp.prepared(), mlp.plan(_cfg()), tmp_path / "bad.onnx", opset=9)


def test_cli_export_writes_file_and_one_line_summary(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, report = tmp_path / "m.onnx", tmp_path / "r.json"
    cfg = ROOT / "assets" / "configs" / "w8a8_digits_cnn.json"
    assert main(["export", "--config", str(cfg), "--output", str(out), "--report", str(report), "--quiet"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.count("\n") == 0 and "integer kernel(s)" in line and "KiB" in line
    assert out.stat().st_size == json.loads(report.read_text())["onnx_bytes"]
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"model": "digits_mlp", "activations": {"mode": "dynamic", "scheme": "symmetric"}}))
    assert main(["export", "--config", str(bad), "--output", str(tmp_path / "x.onnx"), "--quiet"]) == 2
    assert "error: activation point 'x'" in capsys.readouterr().err


def test_asymmetric_zero_padding_folds_into_the_integer_convolution(tmp_path: Path) -> None:
    """TF-SAME padding (EfficientNet's stride-2 layers): ZeroPad2d -> Conv becomes one Conv with asymmetric pads."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.ZeroPad2d((0, 1, 0, 1)), nn.Conv2d(3, 8, 3, stride=2), nn.ReLU6(), nn.Flatten(), nn.Linear(8 * 8 * 8, 4))
    x = torch.randn(32, 3, 16, 16)
    prepared = prepare(model.eval(), x[:1])
    stats = collect_stats(prepared, torch.utils.data.TensorDataset(x, torch.zeros(32)), list(range(32)), batch_size=32)
    plan = make_plan(prepared, _cfg(), stats)
    report = export_onnx(prepared, plan, tmp_path / "pad.onnx")
    onnx_model = onnx.load(str(tmp_path / "pad.onnx"))
    assert "Pad" not in {n.op_type for n in onnx_model.graph.node}
    conv = next(n for n in onnx_model.graph.node if n.op_type == "Conv")
    assert {a.name: helper.get_attribute_value(a) for a in conv.attribute}["pads"] == [0, 0, 1, 1]
    assert {r["layer"] for r in report.integer_kernels} == {"1", "4"}
    qgm, _ = build_quantized_model(prepared, plan)
    with torch.no_grad():
        sim = qgm(x)
    ort = make_runtime_session(tmp_path / "pad.onnx", threads=1).run(None, {"input": x.numpy()})[0]
    step = plan.points["4"].scale
    assert step is not None
    # the logits are layer 4's quantized output: at most one code apart (integer codes, so float rounding cannot tip it)
    assert np.abs(np.round(sim.numpy() / step) - np.round(ort / step)).max() <= 1


class _Shuffle(nn.Module):
    """ShuffleNetV2's stride-1 unit in small: chunk the channels, convolve one half, concatenate, shuffle."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.branch = nn.Conv2d(4, 4, 3, padding=1)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.stem(x))
        a, b = x.chunk(2, dim=1)
        y = torch.cat([a, torch.relu(self.branch(b))], dim=1)
        n, c, h, w = y.size()
        y = y.view(n, 2, c // 2, h, w).transpose(1, 2).contiguous().view(n, c, h, w)
        return self.head(y).mean((2, 3))


def test_chunk_parts_carry_their_inputs_qdq_and_run_on_integers(tmp_path: Path) -> None:
    """A chunk is a Split/Slice in ONNX: each part gets the input's own scale and zero point, no new range."""
    torch.manual_seed(0)
    x = torch.randn(32, 3, 8, 8)
    prepared = prepare(_Shuffle().eval(), x[:1])
    stats = collect_stats(prepared, torch.utils.data.TensorDataset(x, torch.zeros(32)), list(range(32)), batch_size=32)
    plan = make_plan(prepared, _cfg(), stats)
    report = export_onnx(prepared, plan, tmp_path / "shuffle.onnx")
    assert report.float_fallback == []
    kernels = {r["layer"]: r["kernel"] for r in report.integer_kernels}
    assert kernels["branch"].startswith("QLinearConv") and kernels["cat"] == "QLinearConcat"
    model = onnx.load(str(tmp_path / "shuffle.onnx"))
    parts = [o for n in model.graph.node if n.op_type in ("Split", "Slice") for o in n.output]
    assert len(parts) == 2
    stem = plan.points["stem"]
    for part in parts:  # every part is requantized with stem's exact qparams: an exact, integer-only Slice
        (q,) = [n for n in model.graph.node if part in n.input]
        assert q.op_type == "QuantizeLinear"
        assert float(_const(model, q.input[1])) == np.float32(stem.scale) and int(_const(model, q.input[2])) == stem.zero_point
    qgm, _ = build_quantized_model(prepared, plan)
    with torch.no_grad():
        sim = qgm(x).numpy()
    ort = make_runtime_session(tmp_path / "shuffle.onnx", threads=1).run(None, {"input": x.numpy()})[0]
    step = plan.points["head"].scale
    # one-step requantization ties, then a mean: not on a grid, so a float bound; 1e-6 absorbs the float32
    # rounding of outputs 2 steps apart (the step is ~9e-3, the outputs' rounding ~1e-7)
    assert step is not None and np.abs(sim - ort).max() <= 2 * step + 1e-6
