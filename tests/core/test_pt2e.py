"""ptq_core.pt2e: PyTorch's own PT2E quantization (torchao's X86InductorQuantizer) as a runtime row.

On the digits CNN: the row agrees with FP32, the converted graph holds uint8 activations and int8
per-channel weights, the compiled model runs, and every failure (a model torch.export cannot
capture, torch.compile failing, torchao missing) is a row with a reason, never an exception.
"""

from __future__ import annotations

import sys
from collections import Counter
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from ptq_core.calibration import batches
from ptq_core.config import QuantConfig
from ptq_core.pipeline import Explorer
from ptq_core.pt2e import NAME, findings, pt2e_target, pt2e_unavailable, quantize_pt2e
from ptq_core.runtimes import RuntimeRow

# Measured on the digits CNN (256 calibration images, 360 evaluation images, 2 threads): PT2E agrees
# with FP32 on 360/360 eager and compiled, and with ptq_core's W8A8 simulation on 360/360. 0.98 leaves
# room for 7 flipped samples (another CPU's kernels, another torch build), and catches a broken recipe
# (reduce_range, unfused activations or a lost BatchNorm fold cost far more than that on this model).
MIN_AGREEMENT = 0.98


@pytest.fixture(scope="module")
def digits(cnn: Explorer) -> dict[str, Any]:
    config = QuantConfig()
    indices = cnn.evaluation_indices(config.evaluation)
    ref = cnn.float_reference(config.evaluation)
    sim = cnn.quantized_model(config)
    with torch.no_grad():
        sim_logits = torch.cat([sim(x) for x, _ in batches(cnn.dataset.evaluation, indices, 128)])
    return {"model": cnn.model, "example": cnn.example_input(), "calib_dataset": cnn.dataset.calibration_pool,
            "calib_indices": cnn.calibration_indices(config.calibration)[0], "dataset": cnn.dataset.evaluation,
            "indices": indices, "batch_size": 64, "fp32_logits": ref.logits, "sim_logits": sim_logits,
            "labels": ref.labels}


@pytest.fixture(scope="module")
def eager_row(digits: dict[str, Any]) -> RuntimeRow:
    return pt2e_target(**digits, compile_latency=False)


def _first(digits: dict[str, Any], n: int) -> dict[str, Any]:
    """The same inputs on the first ``n`` evaluation samples only."""
    return {**digits, **{k: digits[k][:n] for k in ("indices", "fp32_logits", "sim_logits", "labels")}}


def _fp32_top1(digits: dict[str, Any]) -> float:
    return float((digits["fp32_logits"].argmax(1) == digits["labels"]).float().mean())


def test_eager_row_agrees_with_fp32_and_the_simulation(eager_row: RuntimeRow, digits: dict[str, Any]) -> None:
    assert eager_row.available, eager_row.reason
    assert eager_row.name == NAME and "torchao" in eager_row.version and eager_row.kind == "simulated"
    assert eager_row.agreement is not None and eager_row.agreement >= MIN_AGREEMENT
    assert eager_row.sim_agreement is not None and eager_row.sim_agreement >= MIN_AGREEMENT
    assert eager_row.top1 is not None and abs(eager_row.top1 - _fp32_top1(digits)) <= 1 - MIN_AGREEMENT
    assert set(eager_row.latency_ms) == {"1", "32"} and all(ms > 0 for ms in eager_row.latency_ms.values())
    assert any(note.startswith("Eager reference") for note in eager_row.notes)  # not sold as int8 speed


def test_notes_say_what_the_recipe_quantizes(eager_row: RuntimeRow) -> None:
    text = " ".join(eager_row.notes)
    assert "HistogramObserver" in text and "PerChannelMinMaxObserver" in text
    assert "reduce_range off" in text and "uint8 0..255" in text
    assert "7 of 7 conv/linear layers int8 per output channel (symmetric)" in text
    assert "All 5 ReLU/ReLU6 are fused" in text  # conv->ReLU6 in block.act_dw included: no quantize before the clamp
    assert "1 of 1 elementwise adds (block) read an input that is never quantized (conv2d output)" in text
    assert eager_row.fallbacks == []


def test_notes_find_a_quantize_between_conv_and_relu6() -> None:
    """The placement torch.ao FX's x86 recipe has: conv -> quantize -> dequantize -> ReLU6 (hardtanh 0..6)."""
    import torchao.quantization.pt2e  # noqa: F401  (registers the quantized_decomposed ops)

    qd, aten = torch.ops.quantized_decomposed, torch.ops.aten
    g = torch.fx.Graph()
    x, w = g.placeholder("x"), g.placeholder("w")
    conv = g.call_function(aten.conv2d.default, (x, w))
    conv.meta["nn_module_stack"] = {"k": ("features.0", "torch.nn.Conv2d")}
    q = g.call_function(qd.quantize_per_tensor.default, (conv, 0.05, 128, 0, 255, torch.uint8))
    dq = g.call_function(qd.dequantize_per_tensor.default, (q, 0.05, 128, 0, 255, torch.uint8))
    act = g.call_function(aten.hardtanh.default, (dq, 0.0, 6.0))
    act.meta["nn_module_stack"] = {"k": ("features.1", "torch.nn.ReLU6")}
    g.output(act)
    notes, fallbacks = findings(torch.fx.GraphModule(nn.Module(), g), {"weights": Counter(), "activations": Counter()})
    text = " ".join(notes)
    assert "1 ReLU/ReLU6 are not fused with the conv before them (features.1)" in text
    assert "uint8 0..255" in text and "reduce_range off" in text
    assert fallbacks == [{"layer": "features.0", "reason": "conv2d runs in float: X86InductorQuantizer's default recipe "
                          "does not quantize its input or weight"}]


def test_converted_graph_has_uint8_activations_and_int8_per_channel_weights(digits: dict[str, Any]) -> None:
    before = {k: v.clone() for k, v in digits["model"].state_dict().items()}
    quantized = quantize_pt2e(digits["model"], example=digits["example"], calib_dataset=digits["calib_dataset"],
                              calib_indices=digits["calib_indices"], batch_size=32)
    gm = quantized.graph_module
    nodes = [n for n in gm.graph.nodes if n.op == "call_function"]
    quantizes = [n for n in nodes if "quantize_per_tensor" in str(n.target) and "dequantize" not in str(n.target)]
    assert quantizes and all(n.args[3:6] == (0, 255, torch.uint8) for n in quantizes)
    per_channel = [n for n in nodes if "dequantize_per_channel" in str(n.target)]
    layers = [m for m in digits["model"].modules() if isinstance(m, (nn.Conv2d, nn.Linear))]
    assert len(per_channel) == len(layers) == 7
    for n in per_channel:
        weight, scales = (getattr(gm, str(a.target)) for a in n.args[:2])
        assert weight.dtype == torch.int8 and n.args[3] == 0 and scales.numel() == weight.shape[0] > 1
    assert not any("batch_norm" in str(n.target) for n in nodes)  # folded into the convolutions
    assert quantized.observers["activations"]["HistogramObserver"] == len(quantizes)
    after = digits["model"].state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # the user's model is not changed


def test_compiled_row_runs_int8_kernels(digits: dict[str, Any]) -> None:
    row = pt2e_target(**_first(digits, 96), compile_latency=True)
    assert row.available, row.reason
    assert row.kind == "integer", row.notes
    assert row.agreement is not None and row.agreement >= MIN_AGREEMENT
    assert any("compiling took" in note for note in row.notes)


def test_compile_failure_keeps_the_eager_numbers(digits: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    def no_compiler(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("no C++ compiler found")

    monkeypatch.setattr(torch, "compile", no_compiler)
    threads = torch.get_num_threads()
    row = pt2e_target(**{**_first(digits, 64), "calib_indices": digits["calib_indices"][:64]},
                      compile_latency=True, threads=1)
    assert row.available and row.kind == "simulated"
    assert any("torch.compile failed here: RuntimeError: no C++ compiler found" in note for note in row.notes)
    assert row.threads == 1 and torch.get_num_threads() == threads  # the caller's thread count is restored


class _Gate(nn.Module):
    """Picks a branch from the values of its input: torch.export cannot capture that as one graph."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(4, 4), nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.sum() > 0:
            return self.a(x)
        return self.b(x)


class _Branchy(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.stem, self.gate = nn.Linear(4, 4), _Gate()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.gate(self.stem(x))


def _tiny_inputs(model: nn.Module) -> dict[str, Any]:
    x = torch.randn(16, 4, generator=torch.Generator().manual_seed(0))
    data = TensorDataset(x, torch.zeros(16, dtype=torch.long))
    with torch.no_grad():
        fp32 = model(x)
    return {"example": x[:1], "calib_dataset": data, "calib_indices": range(8), "dataset": data, "indices": range(16),
            "batch_size": 4, "fp32_logits": fp32, "sim_logits": None, "labels": None}


def test_a_model_torch_export_cannot_capture_is_unavailable_with_the_layer_named() -> None:
    model = _Branchy().eval()
    row = pt2e_target(model, **_tiny_inputs(model), compile_latency=False)
    assert not row.available and row.reason is not None
    assert "export" in row.reason and "'gate' (_Gate)" in row.reason and "data-dependent" in row.reason


def test_missing_torchao_is_unavailable_with_the_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "torchao.quantization.pt2e.quantize_pt2e", None)  # import now raises ImportError
    reason = pt2e_unavailable()
    assert reason is not None and "torchao" in reason and "pip install torchao" in reason
    model = _Branchy().eval()
    row = pt2e_target(model, **_tiny_inputs(model))
    assert not row.available and row.reason == reason and row.name == NAME


def test_available_here() -> None:
    assert pt2e_unavailable() is None  # torchao is in requirements.txt: the target must run in this environment
