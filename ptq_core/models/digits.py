"""The embedded default models for the digits data set: a small CNN and an MLP.

Both take float32 input of shape (N, 1, 8, 8) (see :mod:`ptq_core.data.digits`) and return
logits (N, 10). Their trained weights ship in ``assets/digits_cnn.pt`` and
``assets/digits_mlp.pt`` (state dicts, loaded with ``weights_only=True``) and are produced by
``python -m ptq_core.models.train_digits``.

:class:`DigitsCNN` is small but deliberately covers what the quantizer must handle:
Conv -> BatchNorm -> ReLU chains (BN folding, fused activations), a max-pool, a depthwise
conv (groups = channels, per-channel ranges matter most there), ReLU6 (a bounded
activation), a 1x1 pointwise conv, a residual add followed by ReLU (two branches meeting),
global average pooling, flatten, dropout (identity in eval) and Linear layers. Its forward
has no data-dependent control flow, so ``torch.fx.symbolic_trace`` captures it whole.

The registry entries are in :mod:`ptq_core.models`; this module only has the architectures
and the builders that load the weights.
"""

from __future__ import annotations

import pickle
from pathlib import Path

import torch
from torch import nn

from ptq_core.errors import ModelError

ASSETS_DIR = Path(__file__).resolve().parents[2] / "assets"
CNN_WEIGHTS = ASSETS_DIR / "digits_cnn.pt"
MLP_WEIGHTS = ASSETS_DIR / "digits_mlp.pt"
REGENERATE_COMMAND = "python -m ptq_core.models.train_digits"
NUM_CLASSES = 10


class DepthwiseSeparableResidual(nn.Module):
    """``relu(x + bn_pw(pw(relu6(bn_dw(dw(x))))))``: a MobileNet-style block with a skip."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.dw = nn.Conv2d(channels, channels, 3, padding=1, groups=channels)
        self.bn_dw = nn.BatchNorm2d(channels)
        self.act_dw = nn.ReLU6()
        self.pw = nn.Conv2d(channels, channels, 1)
        self.bn_pw = nn.BatchNorm2d(channels)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        branch = self.bn_pw(self.pw(self.act_dw(self.bn_dw(self.dw(x)))))
        return self.relu(x + branch)


class DigitsCNN(nn.Module):
    """(N, 1, 8, 8) -> (N, 10). 8x8 -> conv1, conv2 -> pool 4x4 -> conv3 -> block -> GAP -> fc1, fc2."""

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, 16, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(16)
        self.relu1 = nn.ReLU()
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.bn2 = nn.BatchNorm2d(32)
        self.relu2 = nn.ReLU()
        self.pool = nn.MaxPool2d(2)
        self.conv3 = nn.Conv2d(32, 64, 3, padding=1)
        self.bn3 = nn.BatchNorm2d(64)
        self.relu3 = nn.ReLU()
        self.block = DepthwiseSeparableResidual(64)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(64, 32)
        self.relu_fc1 = nn.ReLU()
        self.dropout = nn.Dropout(0.1)
        self.fc2 = nn.Linear(32, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu1(self.bn1(self.conv1(x)))
        x = self.relu2(self.bn2(self.conv2(x)))
        x = self.pool(x)
        x = self.relu3(self.bn3(self.conv3(x)))
        x = self.block(x)
        x = self.flatten(self.avgpool(x))
        x = self.dropout(self.relu_fc1(self.fc1(x)))
        return self.fc2(x)


class DigitsMLP(nn.Module):
    """(N, 1, 8, 8) -> flatten 64 -> fc1 128 -> fc2 64 -> fc3 10, ReLU between."""

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.flatten = nn.Flatten()
        self.fc1 = nn.Linear(64, 128)
        self.relu1 = nn.ReLU()
        self.fc2 = nn.Linear(128, 64)
        self.relu2 = nn.ReLU()
        self.fc3 = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu1(self.fc1(self.flatten(x)))
        x = self.relu2(self.fc2(x))
        return self.fc3(x)


def load_weights(model: nn.Module, path: Path, model_name: str) -> nn.Module:
    """Load the state dict at ``path`` into ``model`` (strictly) and return it in eval mode."""
    if not path.is_file():
        raise ModelError(
            f"model {model_name!r}: weights file {path} is missing; regenerate it with `{REGENERATE_COMMAND}` "
            "from the repository root"
        )
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(state, strict=True)
    except (RuntimeError, pickle.UnpicklingError, EOFError, OSError) as exc:
        raise ModelError(
            f"model {model_name!r}: weights file {path} cannot be loaded ({exc.__class__.__name__}: {str(exc)[:200]}); "
            f"regenerate it with `{REGENERATE_COMMAND}`"
        ) from None
    return model.eval()


def build_digits_cnn() -> nn.Module:
    """A new :class:`DigitsCNN` with the trained weights, in eval mode."""
    return load_weights(DigitsCNN(), CNN_WEIGHTS, "digits_cnn")


def build_digits_mlp() -> nn.Module:
    """A new :class:`DigitsMLP` with the trained weights, in eval mode."""
    return load_weights(DigitsMLP(), MLP_WEIGHTS, "digits_mlp")
