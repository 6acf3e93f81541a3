"""Tracing, BatchNorm folding, fusion and activation-point placement (ptq_core.graph)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
import torchvision
from torch import nn
from torchvision.ops import stochastic_depth

from ptq_core.config import QuantConfig
from ptq_core.errors import ModelError
from ptq_core.graph import PreparedModel, is_pass_through, is_split, prepare
from ptq_core.models import load_model
from ptq_core.quantize import DynamicFakeQuantize, active_points, build_quantized_model, make_plan

# torchvision wraps stochastic_depth for torch.fx in its own module only (StochasticDepth, hence
# EfficientNet, records one call); wrapped here too, so a direct call is one node as well instead
# of being traced through (to nothing in eval, to bernoulli/div in training).
torch.fx.wrap("stochastic_depth")


class _Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.bn_dw = nn.BatchNorm2d(8)
        self.act = nn.ReLU6()
        self.pw = nn.Conv2d(8, 8, 1)
        self.bn_pw = nn.BatchNorm2d(8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(x + self.bn_pw(self.pw(self.act(self.bn_dw(self.dw(x))))))


class _Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(8)
        self.pool = nn.MaxPool2d(2)
        self.block = _Block()
        self.hs = nn.Hardswish()
        self.conv2 = nn.Conv2d(8, 8, 1)
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(8, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(F.relu(self.bn1(self.conv1(x))))
        x = self.conv2(self.hs(self.block(x)))
        return self.fc(torch.flatten(self.gap(x), 1))


def _net() -> nn.Module:
    torch.manual_seed(0)
    net = _Net().eval()
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):  # non-trivial statistics, so folding is really tested
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2.0)
            m.weight.data.uniform_(0.5, 2.0)
            m.bias.data.uniform_(-1, 1)
    return net


def test_folding_preserves_outputs_and_leaves_input_untouched() -> None:
    net = _net()
    before = {k: v.clone() for k, v in net.state_dict().items()}
    x = torch.randn(5, 3, 16, 16)
    prepared = prepare(net, x[:1], fold_bn=True)
    assert torch.allclose(prepared.graph_module(x), net(x), atol=1e-5)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in prepared.graph_module.modules())
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in before.items())  # never mutates its input


def test_units_fuse_bn_and_relu_like_an_integer_runtime() -> None:
    prepared = prepare(_net(), torch.randn(1, 3, 16, 16))
    units = {u.name: u for u in prepared.units}
    assert units["conv1"].folded_batchnorm == "bn1" and units["conv1"].fused_activation == "relu"
    assert units["block.dw"].fused_activation == "relu6"
    assert units["block.pw"].fused_activation is None
    assert units["add"].kind == "add" and units["add"].fused_activation == "relu"
    assert units["gap"].kind == "avgpool"
    assert prepared.layer_names() == ["conv1", "block.dw", "block.pw", "conv2", "fc"]
    # max pooling passes the quantized tensor through: block.dw reads conv1's (fused) output
    assert units["block.dw"].inputs == ("conv1",)
    assert set(units["add"].inputs) == {"conv1", "block.pw"}
    # hardswish is not fusable: it is a float op whose output feeds conv2
    assert units["conv2"].inputs == ("hs",)
    assert prepared.point("hs").producer == "float:Hardswish"
    # flatten passes through: the Linear reads the pooled tensor
    assert units["fc"].inputs == ("gap",)


def test_without_folding_batchnorm_is_a_float_op() -> None:
    net = _net()
    x = torch.randn(2, 3, 16, 16)
    prepared = prepare(net, x[:1], fold_bn=False)
    assert torch.equal(prepared.graph_module(x), net(x))
    units = {u.name: u for u in prepared.units}
    assert units["conv1"].fused_activation is None and units["conv1"].folded_batchnorm is None
    assert prepared.point("bn1").producer == "float:BatchNorm2d"


def test_torchvision_resnet18_adds_and_downsample() -> None:
    torchvision = pytest.importorskip("torchvision")
    prepared = prepare(torchvision.models.resnet18(), torch.randn(1, 3, 64, 64))  # random weights, no download
    kinds = [u.kind for u in prepared.units]
    assert kinds.count("conv") == 20 and kinds.count("add") == 8 and kinds.count("linear") == 1
    assert all(u.fused_activation == "relu" for u in prepared.units if u.kind == "add")


def test_non_finite_weights_and_buffers_are_named() -> None:
    net = _net()
    with torch.no_grad():
        net.conv2.weight[0, 0, 0, 0] = float("nan")
    with pytest.raises(ModelError, match=r"^model: conv2\.weight contains NaN or Inf"):
        prepare(net, torch.randn(1, 3, 16, 16))
    net = _net()
    with torch.no_grad():
        net.bn1.running_var[0] = float("nan")  # the weights are finite: the buffer is named, not conv1
    with pytest.raises(ModelError, match=r"^model: bn1\.running_var contains NaN or Inf"):
        prepare(net, torch.randn(1, 3, 16, 16))
    net = _net()
    with torch.no_grad():
        net.bn1.running_var[0] = -1.0  # finite, but folding takes its square root
    with pytest.raises(ModelError, match=r"^layer conv1: weight contains NaN or Inf once its BatchNorm is folded in"):
        prepare(net, torch.randn(1, 3, 16, 16))


def test_untraceable_model_gives_a_clear_error() -> None:
    class Branchy(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 4)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            if x.sum() > 0:  # data-dependent control flow
                return self.fc(x)
            return x

    with pytest.raises(ModelError, match="cannot be traced by torch.fx"):
        prepare(Branchy(), torch.randn(1, 4))


def test_unsupported_layers_are_listed() -> None:
    class WithEmbedding(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.emb = nn.Embedding(10, 4)
            self.fc = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(self.emb(x))

    prepared = prepare(WithEmbedding(), torch.tensor([[1, 2]]))
    assert prepared.unsupported == ["emb"]
    assert prepared.layer_names() == ["fc"]


# -- split-like and identity ops keep their input's quantization -----------------------------------------
def _parts(x: torch.Tensor, how: str) -> tuple[torch.Tensor, torch.Tensor]:
    if how == "chunk_method":
        a, b = x.chunk(2, dim=1)  # torchvision's ShuffleNetV2 InvertedResidual
    elif how == "torch_chunk":
        a, b = torch.chunk(x, 2, dim=1)
    elif how == "torch_split":
        a, b = torch.split(x, 4, dim=1)
    elif how == "split_method":
        a, b = x.split([4, 4], dim=1)
    elif how == "tensor_split":
        a, b = torch.tensor_split(x, 2, dim=1)
    else:  # unbind: the two halves as a new dimension, then taken apart
        n, _, h, w = x.shape
        a, b = x.reshape(n, 2, 4, h, w).unbind(1)
    return a, b


class _ShuffleUnit(nn.Module):
    """ShuffleNetV2's stride-1 unit: split the channels, convolve one half, concatenate, shuffle."""

    def __init__(self, how: str) -> None:
        super().__init__()
        self.how = how
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.branch = nn.Conv2d(4, 4, 3, padding=1)
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem(x))
        a, b = _parts(x, self.how)
        y = torch.cat([a, F.relu(self.branch(b))], dim=1)
        n, c, h, w = y.size()
        y = y.view(n, 2, c // 2, h, w).transpose(1, 2).contiguous().view(n, c, h, w)  # channel shuffle
        return self.head(y)


def _active(prepared: PreparedModel, mode: str) -> list[str]:
    return list(active_points(prepared, QuantConfig.from_dict({"activations": {"mode": mode}})))


@pytest.mark.parametrize("how", ["chunk_method", "torch_chunk", "torch_split", "split_method", "tensor_split", "unbind"])
def test_split_parts_inherit_their_inputs_point(how: str) -> None:
    """A runtime's Split/Slice outputs keep the input's scale and zero point: no quantizer of their own."""
    prepared = prepare(_ShuffleUnit(how).eval(), torch.randn(1, 3, 8, 8))
    units = {u.name: u for u in prepared.units}
    # both halves are read through the split: the branch conv and the concatenation read stem's point
    assert units["branch"].inputs == ("stem",)
    assert units["cat"].inputs == ("stem", "branch")
    assert [p.name for p in prepared.points] == ["x", "stem", "branch", "cat", "head"]  # no point on a part
    assert _active(prepared, "static") == ["x", "stem", "branch", "cat", "head"]
    # dynamic: the inputs of the three convolutions, the branch's through the split
    assert _active(prepared, "dynamic") == ["x", "stem", "cat"]
    gm, _ = build_quantized_model(prepared, make_plan(prepared, QuantConfig.from_dict({"activations": {"mode": "dynamic"}}), None))
    assert sum(isinstance(m, DynamicFakeQuantize) for m in gm.modules()) == 3


def test_an_item_of_another_ops_tuple_is_a_float_output() -> None:
    """getitem passes through only a tensor slice or a split part; max(dim)'s values are a new float tensor."""

    class MaxThenLinear(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(4, 2)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.fc(torch.max(x, dim=1)[0])

    prepared = prepare(MaxThenLinear(), torch.randn(1, 3, 4))
    (point,) = [p for p in prepared.points if p.producer.startswith("float:")]
    assert prepared.unit("fc").inputs == (point.name,)


class _ResidualWithStochasticDepth(nn.Module):
    """EfficientNet's MBConv tail: project conv + BN, stochastic depth (identity in eval), residual add."""

    def __init__(self, form: str) -> None:
        super().__init__()
        self.form = form
        self.stem = nn.Conv2d(3, 8, 3, padding=1)
        self.project = nn.Conv2d(8, 8, 1)
        self.bn = nn.BatchNorm2d(8)
        self.sd = torchvision.ops.StochasticDepth(0.2, "row")
        self.head = nn.Conv2d(8, 4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem(x))
        y = self.bn(self.project(x))
        if self.form == "module":
            y = self.sd(y)  # EfficientNet's path: stochastic_depth(y, p, mode, self.training), traced in eval
        elif self.form == "function":
            y = stochastic_depth(y, 0.2, "row", training=False)
        else:  # "training": drops rows at random and rescales the rest, not the identity
            y = stochastic_depth(y, 0.2, "row", training=True)
        return self.head(y + x)


@pytest.mark.parametrize("form", ["module", "function"])
def test_stochastic_depth_in_eval_adds_no_quantizer(form: str) -> None:
    prepared = prepare(_ResidualWithStochasticDepth(form), torch.randn(1, 3, 8, 8))
    assert any(n.op == "call_function" and n.target is stochastic_depth for n in prepared.graph_module.graph.nodes)
    assert prepared.unit("add").inputs == ("project", "stem")  # the add reads the projection's point directly
    assert [p.name for p in prepared.points] == ["x", "stem", "project", "add", "head"]
    assert _active(prepared, "static") == ["x", "stem", "project", "add", "head"]


def test_stochastic_depth_in_training_is_a_float_op() -> None:
    prepared = prepare(_ResidualWithStochasticDepth("training"), torch.randn(1, 3, 8, 8))
    assert [p.producer for p in prepared.points] == ["input", "stem", "project", "float:stochastic_depth", "add", "head"]


# Real architectures (random weights; counts do not depend on the weights or the image size).
# What a runtime places: one quantized tensor per model input, per unit output (conv+BN+ReLU,
# add, concat, mul, average pool) and per float op read by a unit; nothing on a tensor a
# pass-through op (split part, view, stochastic depth) makes from one of those.
#  shufflenet_v2_x1_0: 56 convs + 16 concats + fc = 73 units; + input + the float x.mean([2, 3]) the
#    fc reads = 75 points, all quantized in static mode. Dynamic: the Conv/Linear inputs = input,
#    conv1, the 16 concats (13 read only through a chunk), 35 branch convs read by the next conv, mean = 54.
#  efficientnet_b0: 81 convs + classifier + 17 average pools + 16 SE muls + 9 residual adds = 124 units;
#    + input + 49 SiLU + 16 sigmoid outputs = 190 points (static). Dynamic: 82 Conv/Linear inputs
#    (stochastic depth feeds only the adds).
REAL_POINTS = {"shufflenet_v2_x1_0": (75, 54), "efficientnet_b0": (190, 82)}


@pytest.mark.parametrize("name", list(REAL_POINTS))
def test_real_architectures_place_points_where_a_runtime_would(name: str) -> None:
    torch.manual_seed(0)
    model = load_model({"kind": "torchvision", "name": name, "weights": "random"})
    prepared = prepare(model, torch.randn(1, 3, 64, 64))
    nodes = {n.name: n for n in prepared.graph_module.graph.nodes}
    modules = dict(prepared.graph_module.named_modules())
    for p in prepared.points:  # no point on a split, its parts, a view or stochastic depth
        assert not is_pass_through(nodes[p.node], modules) and not is_split(nodes[p.node]), p
        assert p.producer.split(":")[-1] not in ("chunk", "getitem", "stochastic_depth"), p
    assert all(u.inputs for u in prepared.units), "every unit reads a quantizable point"
    assert all(len(u.inputs) == 2 for u in prepared.units if u.kind in ("cat", "add"))
    static, dynamic = REAL_POINTS[name]
    assert (len(_active(prepared, "static")), len(_active(prepared, "dynamic"))) == (static, dynamic)
