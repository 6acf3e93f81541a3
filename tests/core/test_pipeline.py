"""End-to-end engine behaviour on the digits models: what a Result must show.

Thresholds come from the issue's acceptance list; where a comparison could flip on one of the
360 evaluation samples, the assertion is on a quantity that cannot (weight MSE, output KL).
"""

from __future__ import annotations

import math

import pytest
import torch

from ptq_core.config import QuantConfig, set_field
from ptq_core.errors import CalibrationError, ConfigError, ModelError
from ptq_core.pipeline import Explorer, weight_details


def _cfg(**sections: object) -> QuantConfig:
    """A config from partial sections. These tests check the simulation; the onnxruntime check
    (evaluation.runtime, on by default) is tested in test_onnx_export.py / test_onnx_runtime.py."""
    sections.setdefault("evaluation", {"runtime": None})
    return QuantConfig.from_dict(dict(sections))


def test_w8a8_per_channel_minmax_within_half_a_point(cnn: Explorer) -> None:
    r = cnn.evaluate(_cfg())
    m = r.metrics
    assert m["fp32_top1"] >= 0.97
    assert m["fp32_top1"] - m["quant_top1"] <= 0.005
    assert m["agreement"] >= 0.99
    assert "fp32_top5" in m and m["quant_top5"] >= m["quant_top1"]
    assert r.mode == "static"
    # per-layer rows in network order, with the error measures the dashboard plots
    assert [layer["name"] for layer in r.layers] == ["conv1", "conv2", "conv3", "block.dw", "block.pw", "fc1", "fc2"]
    for layer in r.layers:
        assert layer["weight_sqnr_db"] > 30  # 8-bit per-channel weights: ~6 dB/bit minus the range's peak factor
        assert layer["output_sqnr_db"] is not None and layer["output_sqnr_db"] > 10
        assert layer["input_sqnr_db"] is not None
    # accumulated error grows along the network: the last layer is noisier than the first
    assert r.layers[-1]["output_sqnr_db"] < r.layers[0]["output_sqnr_db"]


def test_result_json_has_the_documented_fields(cnn: Explorer) -> None:
    r = cnn.evaluate(_cfg())
    d = r.to_dict()
    for key in ("fp32_top1", "quant_top1", "agreement", "kl_divergence"):
        assert isinstance(d["metrics"][key], float)
    assert d["size"]["fp32_bytes"] > d["size"]["quant_bytes"] > 0
    assert d["timing"]["calibration_s"] >= 0 and d["timing"]["evaluation_s"] > 0
    assert d["config"] == _cfg().to_dict()
    assert d["latency"]["kind"] == "simulated" and "simulated" in d["latency"]["note"]
    # by default latency is measured on onnxruntime; the fake-quant timing stays, labeled simulated
    measured = cnn.evaluate(QuantConfig()).to_dict()
    assert measured["latency"]["kind"] == "measured" and measured["latency"]["runtime"].startswith("onnxruntime")
    assert measured["latency"]["simulated"]["kind"] == "simulated"
    for name in ("conv1", "fc2"):
        h = d["histograms"]["weights"][name]
        assert len(h["counts"]) == len(h["edges"]) - 1 <= 128
    act = d["histograms"]["activations"]["conv1"]
    assert act["clip_range"][0] <= act["clip_range"][1] and len(act["counts"]) <= 128
    assert r.to_json()  # strict JSON (no NaN/Infinity)


def test_size_counts_packed_int4(cnn: Explorer) -> None:
    r8 = cnn.evaluate(_cfg())
    r4 = cnn.evaluate(_cfg(weights={"bits": 4}))
    assert 3.0 < r8.size["fp32_bytes"] / r8.size["quant_bytes"] < 4.0  # int8 weights plus scales and float biases
    assert r4.size["quant_bytes"] < r8.size["quant_bytes"]
    # conv3: 64x32x3x3 = 18432 weights, two INT4 per byte, 64 float32 scales, 64 float32 biases
    conv3 = next(layer for layer in r4.size["layers"] if layer["name"] == "conv3")
    assert conv3["quant_bytes"] == 18432 // 2 + 64 * 4 + 64 * 4
    assert conv3["fp32_bytes"] == (18432 + 64) * 4


def test_what_ifs_do_not_recalibrate(cnn: Explorer) -> None:
    base = _cfg()
    stats = cnn.calibrate(base)
    for field, value in (("activations.clipping", "kl"), ("weights.bits", 4), ("activations.bits", 6),
                         ("weights.granularity", "per_tensor"), ("activations.scheme", "symmetric")):
        cfg = set_field(base, field, value)
        r = cnn.evaluate(cfg)
        assert r.timing["calibration_cached"], field
        assert cnn.calibrate(cfg) is stats
    keep = cnn.evaluate(base.replace(keep_float=("conv1",)))
    assert keep.timing["calibration_cached"]
    assert keep.layer("conv1")["quantized"] is False


def test_int4_weights_granularity_ordering(cnn: Explorer) -> None:
    """Per-channel beats per-tensor, per-group(32) is at least as good as per-channel.

    Measured where the claim lives: each layer's weight SQNR, the accumulated SQNR of the
    logits, and top-1. (Output KL at INT4 is within noise on this well-separated model: 0.003
    vs 0.004; at INT3 per-channel halves it, asserted below.)
    """

    def run(bits: int, **weights: object):  # type: ignore[no-untyped-def]
        return cnn.evaluate(_cfg(weights={"bits": bits, **weights}, activations=None))

    per_tensor = run(4, granularity="per_tensor")
    per_channel = run(4, granularity="per_channel")
    per_group = run(4, granularity="per_group", group_size=32)
    for t, c, g in zip(per_tensor.layers, per_channel.layers, per_group.layers, strict=True):
        assert t["weight_sqnr_db"] < c["weight_sqnr_db"] <= g["weight_sqnr_db"] + 1e-9, t["name"]
    assert per_channel.layers[-1]["output_sqnr_db"] > per_tensor.layers[-1]["output_sqnr_db"]
    assert per_group.metrics["quant_top1"] >= per_channel.metrics["quant_top1"]
    assert per_group.metrics["agreement"] >= per_channel.metrics["agreement"]
    t3, c3 = run(3, granularity="per_tensor"), run(3, granularity="per_channel")
    assert c3.metrics["kl_divergence"] < t3.metrics["kl_divergence"]
    assert c3.metrics["quant_top1"] > t3.metrics["quant_top1"]


def test_four_bit_activations_mse_or_percentile_beat_minmax(cnn: Explorer) -> None:
    results = {
        method: cnn.evaluate(_cfg(activations={"bits": 4, "clipping": method, "percentile": 99.9}))
        for method in ("minmax", "percentile", "mse", "kl")
    }
    best = min(results["mse"].metrics["kl_divergence"], results["percentile"].metrics["kl_divergence"])
    assert best < results["minmax"].metrics["kl_divergence"]
    best_top1 = max(results["mse"].metrics["quant_top1"], results["percentile"].metrics["quant_top1"])
    assert best_top1 >= results["minmax"].metrics["quant_top1"]


def test_more_bits_less_weight_error(cnn: Explorer) -> None:
    errors = []
    for bits in range(2, 9):
        r = cnn.evaluate(_cfg(weights={"bits": bits}, activations=None))
        errors.append([layer["weight_mse"] for layer in r.layers])
    for lower, higher in zip(errors, errors[1:], strict=False):
        assert all(h < lo for lo, h in zip(lower, higher, strict=True))


def test_modes_dynamic_and_weight_only(mlp: Explorer) -> None:
    static = mlp.evaluate(_cfg(model="digits_mlp"))
    dynamic = mlp.evaluate(_cfg(model="digits_mlp", activations={"mode": "dynamic", "granularity": "per_token"}))
    weight_only = mlp.evaluate(_cfg(model="digits_mlp", activations=None))
    assert (static.mode, dynamic.mode, weight_only.mode) == ("static", "dynamic", "weight_only")
    assert dynamic.timing["calibration_s"] == 0.0 and dynamic.dataset["num_calibration_samples"] == 0
    assert {a["granularity"] for a in dynamic.activations} == {"per_token"}
    assert weight_only.activations == []
    for r in (static, dynamic, weight_only):
        assert r.metrics["agreement"] > 0.97
    # weight-only INT8 is the smallest perturbation of the three
    assert weight_only.metrics["kl_divergence"] <= static.metrics["kl_divergence"]


def test_overrides_give_mixed_precision(cnn: Explorer) -> None:
    cfg = _cfg(weights={"bits": 4}, overrides={"conv1": {"weights": {"bits": 8}}, "conv2": {"activations": {"bits": 6}}})
    r = cnn.evaluate(cfg)
    assert r.layer("conv1")["weight_bits"] == 8 and r.layer("conv2")["weight_bits"] == 4
    acts = {a["name"]: a for a in r.activations}
    assert acts["conv2"]["bits"] == 6 and acts["conv1"]["bits"] == 8
    with pytest.raises(ConfigError, match="no Conv/Linear layer named 'conv9'"):
        cnn.evaluate(_cfg(overrides={"conv9": {"weights": {"bits": 8}}}))
    with pytest.raises(ConfigError, match="keep_float"):
        cnn.evaluate(_cfg(keep_float=["nope"]))


def test_float_activations_have_no_quantizer_while_the_weights_stay_quantized(cnn: Explorer) -> None:
    cfg = _cfg(keep_float_activations=["conv2"], overrides={"conv2": {"activations": {"bits": 6}}})
    r = cnn.evaluate(cfg, runtime_check=False)
    assert "conv2" not in {a["name"] for a in r.activations} and "conv1" in {a["name"] for a in r.activations}
    assert r.layer("conv2")["weight_bits"] == 8  # only the tensor it outputs stays float
    assert any("overrides.conv2.activations: conv2 has no activation quantizer (conv2 is in keep_float_activations)" in w
               for w in r.warnings)
    with pytest.raises(ConfigError, match=r"keep_float_activations\[0\]: no activation point named 'nope'; allowed: "):
        cnn.evaluate(_cfg(keep_float_activations=["nope"]))


def test_same_config_same_numbers_across_explorers(cnn: Explorer) -> None:
    cfg = _cfg(weights={"bits": 4, "clipping": "mse"}, activations={"clipping": "kl"}, calibration={"num_samples": 64, "seed": 3})
    a = cnn.evaluate(cfg)
    b = Explorer("digits_cnn", "digits").evaluate(cfg)
    assert a.metrics == b.metrics
    assert a.activations == b.activations
    assert [x["weight_mse"] for x in a.layers] == [x["weight_mse"] for x in b.layers]
    assert a.dataset["calibration_indices"] == b.dataset["calibration_indices"]
    c = cnn.evaluate(cfg.replace(calibration=cfg.calibration.__class__(num_samples=64, seed=4)))
    assert c.dataset["calibration_indices"] != a.dataset["calibration_indices"]


def test_num_samples_above_pool_is_capped_with_warning(cnn: Explorer) -> None:
    r = cnn.evaluate(_cfg(calibration={"num_samples": 100000}))
    assert r.dataset["num_calibration_samples"] == r.dataset["calibration_pool_size"]
    assert any("exceeds" in w for w in r.warnings)


def test_all_zero_channel_quantizes_without_nan(cnn: Explorer) -> None:
    explorer = Explorer("digits_cnn", "digits")
    with torch.no_grad():
        explorer.model.conv2.weight[3].zero_()
    r = explorer.evaluate(_cfg(weights={"bits": 4}))
    assert all(math.isfinite(v) for v in (r.metrics["quant_top1"], r.metrics["kl_divergence"]))
    details = weight_details(explorer, _cfg(weights={"bits": 4}), "conv2")
    assert torch.isfinite(details["fq_weights"]).all()
    assert torch.equal(details["fq_weights"][3], torch.zeros_like(details["fq_weights"][3]))


def test_nan_weights_and_activations_name_the_layer() -> None:
    explorer = Explorer("digits_cnn", "digits")
    with torch.no_grad():
        explorer.model.fc1.weight[0, 0] = float("inf")
    with pytest.raises(ModelError, match="fc1"):
        explorer.evaluate(_cfg())

    explorer = Explorer("digits_cnn", "digits")
    with torch.no_grad():
        explorer.model.bn2.running_var[0] = -1.0  # sqrt of a negative variance: NaN after conv2
    with pytest.raises((CalibrationError, ModelError), match="conv2"):
        explorer.evaluate(_cfg())


def test_nan_in_activations_names_the_point() -> None:
    from ptq_core.data import Dataset, TensorSamples, load_dataset, register_dataset

    digits = load_dataset("digits")
    x = digits.calibration_pool.x.clone()  # type: ignore[attr-defined]
    x[5, 0, 3, 3] = float("nan")
    y = digits.calibration_pool.y  # type: ignore[attr-defined]

    def loader(**_: object) -> Dataset:
        return Dataset(
            name="digits_with_nan", description="digits with one NaN pixel (test only)",
            calibration_pool=TensorSamples(x, y), evaluation=digits.evaluation,
            calibration_labels=digits.calibration_labels, evaluation_labels=digits.evaluation_labels,
            num_classes=10, class_names=digits.class_names, input_shape=digits.input_shape, info={},
        )

    register_dataset("digits_with_nan", loader, "digits with one NaN pixel (test only)")
    explorer = Explorer("digits_cnn", "digits_with_nan")
    with pytest.raises(CalibrationError, match=r"^x: activation contains NaN or Inf"):
        explorer.evaluate(_cfg(dataset="digits_with_nan", calibration={"selection": "first"}))


def test_unlabeled_evaluation_reports_agreement_not_accuracy() -> None:
    from ptq_core.data import Dataset, load_dataset, register_dataset

    digits = load_dataset("digits")

    def loader(**_: object) -> Dataset:
        return Dataset(
            name="digits_unlabeled", description="digits without labels (test only)",
            calibration_pool=digits.calibration_pool, evaluation=digits.evaluation,
            calibration_labels=None, evaluation_labels=None,
            num_classes=10, class_names=None, input_shape=digits.input_shape, info={},
        )

    register_dataset("digits_unlabeled", loader, "digits without labels (test only)")
    r = Explorer("digits_cnn", "digits_unlabeled").evaluate(_cfg(dataset="digits_unlabeled"))
    assert "quant_top1" not in r.metrics and "fp32_top1" not in r.metrics
    assert r.metrics["labeled"] is False and r.metrics["agreement"] > 0.98


def test_four_bit_kl_keeps_the_model_working(cnn: Explorer) -> None:
    r = cnn.evaluate(_cfg(activations={"bits": 4, "clipping": "kl"}))
    assert r.metrics["agreement"] > 0.95
