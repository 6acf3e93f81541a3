"""ptq_core.lift: torch.export programs become GraphModules that graph.prepare quantizes like the original."""

from __future__ import annotations

import collections

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from ptq_core.errors import ModelError
from ptq_core.graph import prepare
from ptq_core.lift import lift
from ptq_core.models import load_model


def _export(model: nn.Module, *shape: int) -> torch.export.ExportedProgram:
    return torch.export.export(model.eval(), (torch.randn(*shape),))


class _Mixed(nn.Module):
    """Conv-BN-ReLU6, a hardswish, a SiLU, a residual add, a LayerNorm (not liftable) and a static view."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(8)
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.pw = nn.Conv2d(8, 8, 1)
        self.norm = nn.LayerNorm(8)
        self.fc = nn.Linear(8 * 4 * 4, 5)
        with torch.no_grad():
            self.bn.running_mean.uniform_(-0.5, 0.5)
            self.bn.running_var.uniform_(0.5, 2.0)
            self.norm.weight.uniform_(0.5, 1.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu6(self.bn(self.conv(x)))
        y = y + F.hardswish(self.dw(y))
        y = F.silu(self.pw(y))
        y = self.norm(y.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)
        y = F.adaptive_avg_pool2d(y, 4)
        return self.fc(y.reshape(x.shape[0], -1))  # exported at batch 1: the 1 is baked in


@pytest.fixture(scope="module")
def mixed() -> nn.Module:
    torch.manual_seed(0)
    return _Mixed().eval()


def test_digits_cnn_lifts_to_the_same_layers_and_outputs() -> None:
    model = load_model("digits_cnn")
    ep = _export(model, 2, 1, 8, 8)
    nodes_before = len(ep.graph.nodes)
    gm, report = lift(ep)
    assert len(ep.graph.nodes) == nodes_before  # the program is not touched
    x = torch.rand(7, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(gm(x), model(x), rtol=0, atol=1e-6)
    assert report.kept_ops == {}
    assert report.modules["conv1"] == "Conv2d" and report.modules["bn1"] == "BatchNorm2d"
    lifted, native = prepare(gm, x[:1]), prepare(model, x[:1])
    # Same units, same folding and fused activations; Conv/Linear keep their original module names
    # (functional units such as the pooling are named after their aten op instead).
    assert [(u.kind, u.fused_activation, u.folded_batchnorm) for u in lifted.units] == [
        (u.kind, u.fused_activation, u.folded_batchnorm) for u in native.units
    ]
    assert lifted.layer_names() == native.layer_names()


def test_activations_adds_and_unliftable_ops(mixed: nn.Module) -> None:
    gm, report = lift(_export(mixed, 1, 3, 8, 8))
    x = torch.randn(4, 3, 8, 8)  # batch 4 runs although the program was exported at batch 1
    with torch.no_grad():
        torch.testing.assert_close(gm(x), mixed(x), rtol=1e-5, atol=1e-5)
    assert report.batch_rewrites == 1
    assert report.kept_ops == {"aten.layer_norm.default": 1}
    prepared = prepare(gm, x[:1])
    units = {u.name: u for u in prepared.units}
    assert units["conv"].fused_activation == "relu6" and units["conv"].folded_batchnorm == "bn"
    assert {"dw", "pw", "fc"} <= set(units) and any(u.kind == "add" for u in prepared.units)
    floats = collections.Counter(p.producer.split(":")[1] for p in prepared.points if p.producer.startswith("float:"))
    assert floats["hardswish"] == 1 and floats["silu"] == 1
    assert prepared.unsupported == ["norm"]  # LayerNorm's weights stay in float, and are listed


def test_static_batch_rewrite_only_touches_input_dependent_views() -> None:
    class Head(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(6, 2)
            self.register_buffer("offset", torch.arange(6.0))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(x.reshape(1, 6) + self.offset.reshape(1, 6))

    gm, report = lift(_export(Head(), 1, 2, 3))
    assert report.batch_rewrites == 1  # the input's reshape, not the buffer's
    with torch.no_grad():
        assert gm(torch.randn(3, 2, 3)).shape == (3, 2)


def test_training_mode_batchnorm_is_refused() -> None:
    model = nn.Sequential(nn.Conv2d(1, 2, 3), nn.BatchNorm2d(2)).train()
    ep = torch.export.export(model, (torch.randn(2, 1, 5, 5),))
    with pytest.raises(ModelError, match=r"training mode.*model\.eval\(\)"):
        lift(ep)


def test_two_inputs_are_refused() -> None:
    class Two(nn.Module):
        def forward(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
            return a + b

    ep = torch.export.export(Two(), (torch.randn(2), torch.randn(2)))
    with pytest.raises(ModelError, match="2 tensor inputs; allowed: exactly one"):
        lift(ep)
