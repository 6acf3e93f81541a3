"""Sensitivity rows measure what each layer does alone and spared; the proxy and the hints come without running the model."""

from __future__ import annotations

import pytest

from ptq_core.config import QuantConfig
from ptq_core.errors import ConfigError
from ptq_core.fanout import SerialRunner
from ptq_core.pipeline import Explorer
from ptq_core.sensitivity import configs_for, proxy, rank, sensitivity

pytestmark = pytest.mark.usefixtures("one_torch_thread")

W4A4 = {"weights": {"bits": 4}, "activations": {"bits": 4}, "evaluation": {"runtime": None, "backend": "onnxruntime"}}


def test_every_row_is_the_evaluation_it_says(cnn: Explorer) -> None:
    config = QuantConfig.from_dict(W4A4)
    report = sensitivity(cnn, config)
    names = [u.name for u in cnn.prepared().units]
    assert sorted(r.name for r in report.layers) == sorted(names)
    for row in report.layers:
        only, all_but = configs_for(config, names, row.name)
        assert set(only.keep_float) == set(names) - {row.name}
        assert all_but.keep_float == (row.name,)
        assert row.only is not None and row.all_but is not None
        assert row.only.agreement == cnn.evaluate(only, layer_errors=False, runtime_check=False).metrics["agreement"]
    whole = cnn.evaluate(config, layer_errors=False, runtime_check=False).metrics
    assert report.quantized.agreement == whole["agreement"] and report.quantized.kl_divergence == whole["kl_divergence"]
    # ranked: the layer that alone loses the most agreement first, then by KL
    keys = [(r.only.agreement, -r.only.kl_divergence) for r in report.layers if r.only is not None]
    assert keys == sorted(keys)
    # sparing a layer never makes the model worse than the whole quantized model by much: KL at most the whole's
    assert min(r.all_but.kl_divergence for r in report.layers if r.all_but) <= report.quantized.kl_divergence


def test_with_gptq_a_unit_without_weights_is_measured_alone_rounding_nothing(cnn: Explorer) -> None:
    config = QuantConfig.from_dict({**W4A4, "algorithms": {"rounding": "gptq", "gptq": {"inputs": "float"}}})
    report = sensitivity(cnn, config, layers=["add", "fc1"])  # "add" alone quantizes no weight for GPTQ to round
    rows = {r.name: r for r in report.layers if r.only is not None}
    assert set(rows) == {"add", "fc1"}
    names = [u.name for u in cnn.prepared().units]
    add_only, add_all_but = configs_for(config, names, "add", has_weights=False)
    assert add_only.algorithms.rounding == "nearest" and add_all_but.algorithms.rounding == "gptq"
    assert rows["add"].only.agreement == cnn.evaluate(add_only, layer_errors=False, runtime_check=False).metrics["agreement"]
    assert configs_for(config, names, "fc1")[0].algorithms.rounding == "gptq"


def test_proxy_weight_bytes_and_hints_need_no_model_run(cnn: Explorer) -> None:
    rows = {r.name: r for r in proxy(cnn, QuantConfig.from_dict(W4A4), candidate_bits=(8, 4))}
    fc1 = rows["fc1"]  # Linear 64 -> 32: 2048 weights, per-channel symmetric: 32 float32 scales, no zero points
    assert fc1.weight_bytes == {8: 2048 + 32 * 4, 4: 1024 + 32 * 4}
    assert rows["add"].weight_bytes == {} and rows["add"].parameters == 0
    assert any(h.startswith("depthwise: 9 weights per channel") for h in rows["block.dw"].hints)
    assert all(r.proxy_db is not None and r.proxy_db < 30 for r in rows.values())  # 4-bit everything: ~20 dB
    assert [r.name for r in rank(list(rows.values()))][0] == min(rows.values(), key=lambda r: r.proxy_db or 0).name


def test_weight_only_configs_measure_only_layers_with_weights(cnn: Explorer) -> None:
    config = QuantConfig.from_dict({"weights": {"bits": 3}, "activations": None, "evaluation": {"runtime": None}})
    report = sensitivity(cnn, config, runner=SerialRunner(cnn))
    measured = {r.name for r in report.layers if r.only is not None}
    assert measured == set(cnn.prepared().layer_names())  # add and avgpool quantize nothing without activations


def test_bad_layers_and_bits_name_what_is_allowed(cnn: Explorer) -> None:
    with pytest.raises(ConfigError, match=r"^layers: no layer named 'conv9'; allowed: conv1, "):
        sensitivity(cnn, QuantConfig.from_dict(W4A4), layers=["conv9"])
    with pytest.raises(ConfigError, match=r"^candidate bits: got 9; allowed: integers from 2 to 8"):
        proxy(cnn, QuantConfig(), candidate_bits=(8, 9))
