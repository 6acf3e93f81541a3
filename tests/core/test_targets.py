"""``Result.runtimes``: one row per runtime, consistent with the Result's own metrics; targets that fail are rows too."""

from __future__ import annotations

import sys

import pytest

from ptq_core.config import QuantConfig
from ptq_core.pipeline import Explorer


def _rows(result_runtimes: list[dict[str, object]]) -> dict[str, dict[str, object]]:
    return {str(row["name"]): row for row in result_runtimes}


def test_rows_for_fp32_the_simulation_and_onnxruntime_agree_with_the_metrics(cnn: Explorer) -> None:
    r = cnn.evaluate(QuantConfig())
    rows = _rows(r.runtimes)
    fp32, sim, ort = rows["FP32 (PyTorch eager)"], rows["simulation (float fake-quantize, PyTorch)"], rows["onnxruntime"]
    assert [fp32["kind"], sim["kind"], ort["kind"]] == ["float", "simulated", "integer"]
    assert fp32["top1"] == r.metrics["fp32_top1"] and fp32["agreement"] == 1.0
    assert sim["top1"] == r.metrics["quant_top1"] and sim["agreement"] == r.metrics["agreement"]
    assert sim["sim_agreement"] is None and sim["max_abs_diff"] is None  # the simulation is the reference of those
    assert ort["sim_agreement"] == r.metrics["runtime_agreement"] and ort["top1"] == r.metrics["runtime_top1"]
    assert ort["max_abs_diff"] == r.metrics["runtime_max_abs_diff"]
    assert ort["file_bytes"] == r.size["onnx_bytes"] and set(ort["latency_ms"]) == {"1", "32"}  # type: ignore[arg-type]
    assert all(row["available"] for row in r.runtimes)


def test_integer_arithmetic_names_itself_and_matches_onnxruntime_exactly(cnn: Explorer) -> None:
    rows = _rows(cnn.evaluate(QuantConfig.from_dict({"evaluation": {"arithmetic": "integer"}})).runtimes)
    assert rows["onnxruntime"]["max_abs_diff"] == 0.0 and rows["onnxruntime"]["sim_agreement"] == 1.0
    assert "simulation (integer arithmetic, PyTorch)" in rows


def test_a_target_whose_package_is_missing_is_a_row_with_the_reason(cnn: Explorer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ptq_core.pt2e", None)  # import fails as if torchao were not installed
    r = cnn.evaluate(QuantConfig.from_dict({"evaluation": {"targets": ["pt2e"]}}))
    row = _rows(r.runtimes)["PyTorch PT2E"]
    assert row["available"] is False and str(row["reason"]).startswith("not available on this machine")
    assert _rows(r.runtimes)["onnxruntime"]["available"] is True  # the others still ran


def test_targets_wait_with_the_runtime_check(cnn: Explorer) -> None:
    r = cnn.evaluate(QuantConfig.from_dict({"evaluation": {"targets": ["pt2e"], "runtime": None}}), runtime_check=False)
    assert "targets" in r.pending
    assert [row["name"] for row in r.runtimes] == ["FP32 (PyTorch eager)", "simulation (float fake-quantize, PyTorch)"]


def test_targets_can_wait_for_the_page_that_shows_them(cnn: Explorer) -> None:
    r = cnn.evaluate(QuantConfig.from_dict({"evaluation": {"targets": ["pt2e"]}}), targets=False)
    assert r.pending == ["targets"] and "onnxruntime" in _rows(r.runtimes)


def test_adding_a_target_reuses_the_runtime_check(cnn: Explorer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ptq_core.tflite", None)  # the target's own cost is not what this is about
    first = cnn.evaluate(QuantConfig.from_dict({"weights": {"clipping": "mse"}}))
    again = cnn.evaluate(QuantConfig.from_dict({"weights": {"clipping": "mse"}, "evaluation": {"targets": ["litert"]}}))
    assert again.timing["runtime_s"] == 0.0 < first.timing["runtime_s"]
    assert again.metrics["runtime_max_abs_diff"] == first.metrics["runtime_max_abs_diff"]
    assert _rows(again.runtimes)["onnxruntime"] == _rows(first.runtimes)["onnxruntime"]
