"""onnxruntime in a Result: measured latency, simulation-vs-runtime agreement, fallbacks, and failures.

Runs the real export and onnxruntime on the digits models (a fraction of a second each). Timings
are only checked for presence and sign: speed targets live in benchmarks/compare_peers.py.
"""

from __future__ import annotations

import onnxruntime
import pytest

from ptq_core.config import QuantConfig
from ptq_core.errors import ConfigError
from ptq_core.onnx.report import ExportReport
from ptq_core.onnx.runtime import verify_kernels
from ptq_core.pipeline import Explorer


def _cfg(**sections: object) -> QuantConfig:
    return QuantConfig.from_dict(dict(sections))


def test_result_records_runtime_agreement_and_measured_latency(cnn: Explorer) -> None:
    r = cnn.evaluate(_cfg())
    m = r.metrics
    assert m["runtime_agreement"] >= 0.995
    assert m["runtime_matching_samples"] == round(m["runtime_agreement"] * m["num_eval_samples"])
    assert 0 <= m["runtime_max_abs_diff"] < 1.0, (m["runtime_max_abs_diff"], m["runtime_matching_samples"])
    assert abs(m["runtime_top1"] - m["quant_top1"]) <= 0.005
    lat = r.latency
    assert lat["kind"] == "measured" and lat["runtime"] == f"onnxruntime {onnxruntime.__version__} CPU"
    assert isinstance(lat["threads"], int) and lat["threads"] >= 1
    assert set(lat["batches"]) == {"1", "32"}
    for row in lat["batches"].values():
        assert row["fp32_ms"] > 0 and row["quant_ms"] > 0 and row["torch_fp32_ms"] > 0
    assert lat["simulated"]["kind"] == "simulated"  # the fake-quant timing is kept, labelled
    # every unit verified in onnxruntime's optimized graph, none in float
    assert {k["layer"] for k in lat["integer_kernels"]} == {u.name for u in cnn.prepared().units}
    assert all(k["verified"] == "yes" for k in lat["integer_kernels"]) and lat["float_fallback"] == []
    assert r.size["onnx_bytes"] == lat["onnx_bytes"] and r.size["onnx_bytes"] > r.size["quant_bytes"]
    assert r.timing["runtime_s"] > 0
    assert r.to_json()


def test_int4_convolutions_are_named_as_float_fallbacks(cnn: Explorer) -> None:
    r = cnn.evaluate(_cfg(weights={"bits": 4}))
    fallback = {row["layer"] for row in r.latency["float_fallback"]}
    assert fallback == {"conv1", "conv2", "conv3", "block.dw", "block.pw"}
    warning = next(w for w in r.warnings if w.startswith("onnxruntime runs conv1"))
    assert "no 4-bit convolution kernel" in warning
    assert r.metrics["runtime_agreement"] >= 0.995


def test_failed_export_keeps_the_run_with_a_warning() -> None:
    mlp = Explorer("digits_mlp", "digits")
    r = mlp.evaluate(_cfg(activations={"mode": "dynamic", "bits": 4}))  # no onnxruntime op quantizes 4-bit dynamically
    assert "agreement" in r.metrics and "runtime_agreement" not in r.metrics
    assert r.latency["kind"] == "simulated"
    assert any("onnxruntime check skipped" in w and "activation point" in w and "dynamic 4-bit" in w for w in r.warnings)


def test_runtime_null_is_simulation_only(cnn: Explorer) -> None:
    r = cnn.evaluate(_cfg(evaluation={"runtime": None}))
    assert r.latency["kind"] == "simulated" and "runtime_agreement" not in r.metrics
    assert r.config["evaluation"]["runtime"] is None
    with pytest.raises(ConfigError, match=r"evaluation.runtime: got 'tvm'; allowed: onnxruntime or null"):
        _cfg(evaluation={"runtime": "tvm"})


def test_units_onnxruntime_did_not_fuse_move_to_fallback() -> None:
    report = ExportReport(
        path="m.onnx", onnx_bytes=1, opset=17, mode="static", activation_type="uint8", weight_type="int8",
        integer_kernels=[{"layer": "conv1", "kernel": "QLinearConv (u8s8)"}, {"layer": "add", "kernel": "QLinearAdd"}],
        nodes={"conv1": "/conv1/Conv", "add": "/Add"},
    )
    kernels, fallback = verify_kernels(report, {"/conv1/Conv_token_3": "QLinearConv", "/Add": "Add"})
    assert kernels == [{"layer": "conv1", "kernel": "QLinearConv", "expected": "QLinearConv (u8s8)", "verified": "yes"}]
    assert fallback == [{"layer": "add", "reason": "onnxruntime did not fuse it into an integer kernel (ran Add in float)"}]
