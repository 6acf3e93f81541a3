"""SmoothQuant (ptq_core.algorithms.smoothquant): the same float function, smaller activation ranges, config rules."""

from __future__ import annotations

import pytest
import torch

from ptq_core.calibration import load_batch
from ptq_core.config import QuantConfig
from ptq_core.errors import ConfigError
from ptq_core.pipeline import Explorer

LINES = [f"Sentence {i}: the {w} crossed the river at dawn while the market opened." for i, w in
         enumerate(["ferry", "heron", "courier", "storm", "train", "convoy", "swimmer", "balloon", "fox", "barge"])]


@pytest.fixture(scope="module")
def explorer(tmp_path_factory: pytest.TempPathFactory) -> Explorer:
    path = tmp_path_factory.mktemp("sq") / "lines.txt"
    path.write_text("\n".join(LINES) + "\n", encoding="utf-8")
    return Explorer("all_minilm_l6_v2", {"kind": "text_file", "path": str(path), "num_calibration": 5})


def _config(alpha: float | None, **activations: object) -> QuantConfig:
    return QuantConfig.from_dict({
        "model": "all_minilm_l6_v2", "activations": {"mode": "static", **activations},
        "algorithms": {"smoothquant": None if alpha is None else {"alpha": alpha}}, "evaluation": {"runtime": None}})


def test_smoothing_keeps_the_float_model_and_evens_out_linear_inputs(explorer: Explorer) -> None:
    base = explorer.prepared_for(_config(None))
    smoothed = explorer.prepared_for(_config(0.5))
    assert smoothed.variant.startswith("smoothquant:0.5:") and base.variant == ""
    x, _ = load_batch(explorer.dataset.evaluation, [0, 1, 2])
    with torch.no_grad():  # x/s times W*s is x times W: float32 rounding only
        assert torch.allclose(base.graph_module(x), smoothed.graph_module(x), atol=1e-5)
    report = explorer.smoothquant_report(_config(0.5))
    assert report["alpha"] == 0.5 and report["layers"] == 36  # every Linear of the 6 layers reads a static point
    qkv = report["groups"][0]
    assert qkv["layers"] == ["layers.0.attention.query", "layers.0.attention.key", "layers.0.attention.value"]
    spread = [(g["input_range_spread_before"], g["input_range_spread_after"]) for g in report["groups"]]
    assert sum(a < b for b, a in spread) > len(spread) // 2  # most inputs' per-channel ranges even out
    # the smoothed inputs are new float points (x * 1/s), quantized in place of the LayerNorm output for Q/K/V
    assert smoothed.unit("layers.0.attention.query").inputs == ("smooth_channels",)
    assert smoothed.unsupported == base.unsupported  # the factors are no float weights left unquantized


def test_smoothquant_changes_the_quantized_model_and_is_in_the_result(explorer: Explorer) -> None:
    plain = explorer.evaluate(_config(None), layer_errors=False)
    smooth = explorer.evaluate(_config(0.5), layer_errors=False)
    assert smooth.algorithms["smoothquant"]["alpha"] == 0.5
    assert smooth.metrics["cosine_mean"] != plain.metrics["cosine_mean"]
    assert "smoothquant" not in plain.algorithms


@pytest.mark.parametrize("alpha", [-0.1, 1.5, "half", True])
def test_alpha_outside_0_1_is_refused(alpha: object) -> None:
    with pytest.raises(ConfigError, match="algorithms.smoothquant.alpha: got .*; allowed: a number from 0 to 1"):
        QuantConfig.from_dict({"algorithms": {"smoothquant": {"alpha": alpha}}})


def test_smoothquant_with_weight_only_is_a_warning_and_changes_nothing(explorer: Explorer) -> None:
    config = QuantConfig.from_dict({"model": "all_minilm_l6_v2", "activations": None,
                                    "algorithms": {"smoothquant": {"alpha": 0.5}}, "evaluation": {"runtime": None}})
    assert explorer.prepared_for(config).variant == ""
    result = explorer.evaluate(config, layer_errors=False)
    assert any(w.startswith("algorithms.smoothquant: applies when activations are quantized") for w in result.warnings)


def test_smoothquant_applies_to_dynamic_per_token_inputs(explorer: Explorer) -> None:
    config = QuantConfig.from_dict({"model": "all_minilm_l6_v2", "activations": {"mode": "dynamic", "granularity": "per_token"},
                                    "algorithms": {"smoothquant": {"alpha": 0.5}}, "evaluation": {"runtime": None}})
    assert explorer.prepared_for(config).variant.startswith("smoothquant:0.5:")
    assert explorer.evaluate(config, layer_errors=False).algorithms["smoothquant"]["layers"] == 36


def test_channel_outliers_show_the_hidden_channel_that_smoothquant_tames(explorer: Explorer) -> None:
    rows = explorer.channel_outliers(_config(0.5))
    assert len(rows) == 24  # per layer: Q/K/V (one input), attention output, intermediate, output
    first = rows[0]
    assert first["layers"] == ["layers.0.attention.query", "layers.0.attention.key", "layers.0.attention.value"]
    assert len(first["absmax"]) == 384 and first["point"] == "embed"
    context = next(r for r in rows if r["layers"] == ["layers.0.attention_output"])  # read as [N, L, 384], not per head
    assert len(context["absmax"]) == len(context["absmax_smoothed"]) == 384
    ffn_in = next(r for r in rows if r["layers"] == ["layers.0.intermediate"])  # reads the attention LayerNorm
    # BERT's known outlier dimension: one channel > 10x the median at the LayerNorm output
    assert ffn_in["summary"]["ratio"] > 10 and ffn_in["summary"]["channel"] == 99
    assert ffn_in["summary_smoothed"]["ratio"] < ffn_in["summary"]["ratio"] / 2
    assert explorer.channel_outliers(_config(None))[0].get("absmax_smoothed") is None
