"""Small models the tests build themselves (as opposed to the registered digits models in ``assets/``)."""

from __future__ import annotations

import torch
from torch import nn


class TinyImageNet(nn.Module):
    """A 3-class image classifier of any input size, small enough to run on 224x224 in milliseconds."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 8, stride=8)
        self.fc = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.conv(x))
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))
