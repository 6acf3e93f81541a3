"""SmoothQuant (ptq_core.algorithms.smoothquant): the same float function, smaller activation ranges, config rules."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ptq_core.algorithms.smoothquant import ALPHA_GRID
from ptq_core.calibration import load_batch
from ptq_core.cli import main
from ptq_core.config import ActivationQuant, Algorithms, QuantConfig, SmoothQuant
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


# -- alpha "auto": one alpha per group of Linears, chosen on the calibration samples ---------------------------------
def test_auto_is_a_valid_alpha_and_round_trips_through_json() -> None:
    config = QuantConfig.from_dict({"model": "all_minilm_l6_v2", "activations": {"mode": "dynamic", "granularity": "per_token"},
                                    "algorithms": {"smoothquant": {"alpha": "auto"}}})
    assert config.algorithms.smoothquant == SmoothQuant(alpha="auto")
    data = json.loads(json.dumps(config.to_dict()))
    assert data["algorithms"]["smoothquant"] == {"alpha": "auto"}  # written as the string, not a number
    assert QuantConfig.from_dict(data) == config


@pytest.mark.parametrize("alpha", ["Auto", "AUTO", "", None, [0.5]])
def test_anything_but_a_number_or_auto_is_refused_naming_both_forms(alpha: object) -> None:
    with pytest.raises(ConfigError, match=r'algorithms.smoothquant.alpha: got .*; allowed: a number from 0 to 1, '
                                          r'e.g. 0.5, or "auto"'):
        QuantConfig.from_dict({"algorithms": {"smoothquant": {"alpha": alpha}}})


def _fp32_group_input(explorer: Explorer, config: QuantConfig, path: str) -> torch.Tensor:
    """The FP32 input of Linear ``path`` on the calibration samples, real tokens only, as rows ``[N, K]``."""
    indices, _ = explorer.calibration_indices(config.calibration)
    x, _ = load_batch(explorer.dataset.calibration_pool, indices)
    gm = explorer.prepared_for(config.replace(algorithms=Algorithms())).graph_module
    rows: list[torch.Tensor] = []

    def keep(_m: torch.nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        for i, n in enumerate(x[:, 1].sum(dim=1).tolist()):  # channel 1 is the attention mask
            rows.append(args[0][i, : int(n)].detach().float())

    handle = gm.get_submodule(path).register_forward_pre_hook(keep)
    try:
        with torch.no_grad():
            gm(x)
    finally:
        handle.remove()
    return torch.cat(rows)


def _per_token_w8a8_error(x: torch.Tensor, weights: list[torch.Tensor], alpha: float) -> float:
    """Output MSE of one group smoothed with ``alpha`` under W8 per-channel symmetric / A8 per-token asymmetric,
    written with torch's own fake quantizers (not the engine's): scale and zero point as onnxruntime's
    DynamicQuantizeLinear per row, weights on [-127, 127]."""
    x_max = x.abs().amax(dim=0).clamp(min=1e-5)
    w_max = torch.stack([w.abs().amax(dim=0) for w in weights]).amax(dim=0).clamp(min=1e-5)
    s = (x_max.pow(alpha) / w_max.pow(1 - alpha)).clamp(min=1e-5)
    xs = x / s
    lo, hi = xs.amin(dim=1).clamp(max=0), xs.amax(dim=1).clamp(min=0)
    scale = (hi - lo) / 255
    zp = (-torch.round(lo / scale)).clamp(0, 255).int()
    xq = torch.fake_quantize_per_channel_affine(xs, scale, zp, 0, 0, 255)
    total, count = 0.0, 0
    for w in weights:
        ws = w * s
        w_scale = ws.abs().amax(dim=1) / 127
        wq = torch.fake_quantize_per_channel_affine(ws, w_scale, torch.zeros_like(w_scale, dtype=torch.int32), 0, -127, 127)
        diff = (xq @ wq.t() - x @ w.t()).double()
        total += float(diff.square().sum())
        count += diff.numel()
    return total / count


def test_auto_picks_per_group_alphas_of_the_grid_that_beat_0_5_on_the_calibration_samples(explorer: Explorer) -> None:
    config = QuantConfig.from_dict({"model": "all_minilm_l6_v2", "activations": {"mode": "dynamic", "granularity": "per_token"},
                                    "algorithms": {"smoothquant": {"alpha": "auto"}}, "evaluation": {"runtime": None}})
    base = explorer.prepared_for(config.replace(algorithms=Algorithms()))
    smoothed = explorer.prepared_for(config)
    assert smoothed.variant.startswith("smoothquant:auto-")
    report = explorer.smoothquant_report(config)
    assert report["alpha"] == "auto" and report["alpha_grid"] == list(ALPHA_GRID) and len(report["alphas"]) == 24
    assert all(a in ALPHA_GRID for a in report["alphas"])
    assert report["alphas"] == [g["alpha"] for g in report["groups"]] and report["alpha_seconds"] > 0
    assert len(set(report["alphas"])) > 1  # one alpha does not suit every input of this network
    x, _ = load_batch(explorer.dataset.evaluation, [0, 1])
    with torch.no_grad():  # whatever alpha each group got, the float function is the same
        assert torch.allclose(base.graph_module(x), smoothed.graph_module(x), atol=1e-5)
    moved = [g for g in report["groups"] if g["alpha"] != 0.5]
    assert len(moved) >= 2
    for group in moved[:2]:
        paths = group["layers"]
        xin = _fp32_group_input(explorer, config, paths[0])
        weights = [base.graph_module.get_submodule(p).weight.detach().float() for p in paths]
        chosen, half = _per_token_w8a8_error(xin, weights, group["alpha"]), _per_token_w8a8_error(xin, weights, 0.5)
        # the engine's quantizers and torch's agree to float32 rounding: relative 1e-4 on an error of ~1e-4
        assert chosen <= half * (1 + 1e-4)
        assert chosen == pytest.approx(group["output_mse"], rel=1e-3)
        assert half == pytest.approx(group["output_mse_by_alpha"]["0.5"], rel=1e-3)


def test_auto_is_chosen_for_the_config_quantization(explorer: Explorer) -> None:
    dynamic = QuantConfig.from_dict({"model": "all_minilm_l6_v2", "activations": {"mode": "dynamic", "granularity": "per_token"},
                                     "algorithms": {"smoothquant": {"alpha": "auto"}}, "evaluation": {"runtime": None}})
    static = dynamic.replace(activations=ActivationQuant(mode="static"))
    a, b = explorer.prepared_for(dynamic).variant, explorer.prepared_for(static).variant
    assert a != b  # a per-tensor grid wants other alphas than a per-token one: not one cached model for both
    assert explorer.smoothquant_report(static)["alphas"] != explorer.smoothquant_report(dynamic)["alphas"]
    assert explorer.smoothquant_report(static)["alphas"] == explorer.smoothquant_report(static)["alphas"]  # cached


def test_auto_runs_from_the_cli_and_reproduces(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    lines = tmp_path / "lines.txt"
    lines.write_text("\n".join(LINES[:6]) + "\n", encoding="utf-8")
    config = {"model": "all_minilm_l6_v2", "dataset": {"kind": "text_file", "path": str(lines), "num_calibration": 3},
              "activations": {"mode": "dynamic", "granularity": "per_token"},
              "algorithms": {"smoothquant": {"alpha": "auto"}}, "evaluation": {"runtime": None}}
    cfg_path = tmp_path / "c.json"
    cfg_path.write_text(json.dumps(config))
    first, second = tmp_path / "a.json", tmp_path / "b.json"
    assert main(["run", "--config", str(cfg_path), "--output", str(first), "--quiet"]) == 0
    assert main(["run", "--config", str(cfg_path), "--output", str(second), "--quiet"]) == 0
    a, b = json.loads(first.read_text()), json.loads(second.read_text())
    assert a["algorithms"]["smoothquant"]["alpha"] == "auto" and a["config"]["algorithms"]["smoothquant"]["alpha"] == "auto"
    assert a["algorithms"]["smoothquant"]["alphas"] == b["algorithms"]["smoothquant"]["alphas"]  # deterministic
    assert a["metrics"] == b["metrics"]


def test_configs_of_one_alpha_that_smooth_different_linears_are_different_models(explorer: Explorer) -> None:
    point = explorer.prepared_for(_config(None)).unit("layers.0.attention.query").inputs[0]
    spared = _config(0.5).replace(keep_float_activations=(point,))  # Q/K/V of layer 0 read it in float: no grid to help
    full, partial = explorer.smoothquant_report(_config(0.5)), explorer.smoothquant_report(spared)
    assert explorer.prepared_for(spared).variant != explorer.prepared_for(_config(0.5)).variant
    assert full["layers"] == 36 and partial["layers"] == 33
    assert ["layers.0.attention.query", "layers.0.attention.key", "layers.0.attention.value"] not in \
        [g["layers"] for g in partial["groups"]]
