"""Where quantization happens in a model: tracing, BatchNorm folding, fusion, quantizer placement.

A model is traced once with ``torch.fx`` into a :class:`PreparedModel`: BatchNorm folded into
the convolution or Linear before it (``fold_batchnorm``), the graph's *units* found, and every
tensor that could carry an activation quantizer listed as a *point*. Nothing here quantizes;
:mod:`ptq_core.quantize` builds the simulated model from a prepared one.

Placement, chosen to be what an integer runtime (onnxruntime QDQ, TFLite, TensorRT) executes,
and what the ONNX export reproduces one for one:

1. A *compute unit* is a Conv1d/Conv2d/Linear call, with the BatchNorm that alone consumes it
   folded in, and a following ReLU/ReLU6 (module, functional or method form, Hardtanh(0, 6))
   fused. Its output point is the tensor AFTER the fused activation: a runtime computes
   conv+bias+ReLU6 in int32 and requantizes once, so clipping at 6 is part of the range
   instead of a wasted third of it (the torch.ao FX x86 backend does not fuse ReLU6 and loses
   16-18 top-1 points on EfficientNet-Lite0 for it).
2. A residual addition (tensor + tensor) is a unit too, with a following ReLU fused; so are
   concatenation, elementwise multiplication and average pooling: a runtime requantizes their
   outputs (QLinearAdd, QLinearConcat, QLinearMul, QLinearAveragePool), so each gets its own
   quantizer. So is a matrix product of two activations (``torch.matmul``/``@``/``bmm``: a
   transformer's Q·Kᵀ and attention·V): both operands are quantized and the product requantized,
   as onnxruntime runs a MatMul between QDQ pairs (QLinearMatMul). A transformer's LayerNorm,
   softmax and GELU are rule 5: float between a dequantize and a quantize.
3. Static mode: one quantizer on every tensor that a quantized unit produces or consumes
   (the model input included). Units listed in ``keep_float`` run in float: their input is
   dequantized, their output is float unless a quantized unit consumes it. Points listed in
   ``keep_float_activations`` get no quantizer whoever reads them.
4. Value-preserving ops (flatten, reshape, view, permute, max pooling, dropout, identity,
   zero padding, slicing, stochastic depth in eval mode) pass a quantized tensor through with
   no new quantizer: their output lies on the same integer grid. So do ``chunk``, ``split``,
   ``tensor_split`` and ``unbind`` (a runtime's Split) and ``getitem`` on their tuple of parts:
   each part keeps its input's scale and zero point, and in dynamic mode a Conv/Linear reading a
   part is quantized at the split tensor's point. ``getitem`` on another op's tuple (``max``
   with a dim, ``topk``, an LSTM) is that op's float output (rule 5).
5. Any other op (unfolded BatchNorm, hardswish, SiLU, sigmoid, ...) runs in float between a
   dequantize and a quantize: its output gets a quantizer only when a quantized unit reads it.
6. Dynamic mode: only the inputs of quantized Conv/Linear units are quantized, from each
   input's own range at inference; outputs stay float (``quantize_dynamic`` semantics). The
   quantized tensor feeds those layers (and the value-preserving ops on the way to them) only:
   another reader of the same tensor, a residual add or a LayerNorm, reads it in float
   (:func:`reads_for_weights`).
   Weight-only mode: no activation quantizers at all.
7. Only floating-point tensors are points. Integer and boolean tensors (token ids, an attention
   mask, the comparisons made from it) are never quantized; a model whose mask must stay exact
   applies it with ``masked_fill``/``where`` (float ops), not with an add or a multiply, which
   would be quantized units (see :mod:`ptq_core.models.minilm`).
"""

from __future__ import annotations

import copy
import logging
import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn
from torch.fx.passes.shape_prop import ShapeProp

from .errors import ModelError
from .models.device import fast_layout, takes_channels_last

log = logging.getLogger(__name__)

COMPUTE_MODULES = (nn.Conv1d, nn.Conv2d, nn.Linear)
_BN_MODULES = (nn.BatchNorm1d, nn.BatchNorm2d)

_PASS_THROUGH_MODULES = (
    nn.Flatten, nn.Unflatten, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.AlphaDropout, nn.Identity,
    nn.MaxPool1d, nn.MaxPool2d, nn.AdaptiveMaxPool1d, nn.AdaptiveMaxPool2d, nn.ZeroPad2d, nn.ZeroPad1d,
)
_PASS_THROUGH_FUNCTIONS = {
    torch.flatten, torch.reshape, torch.squeeze, torch.unsqueeze, torch.transpose, torch.permute,
    F.dropout, F.max_pool1d, F.max_pool2d, F.adaptive_max_pool1d, F.adaptive_max_pool2d,
}  # operator.getitem: see is_pass_through
_PASS_THROUGH_METHODS = {
    "view", "reshape", "flatten", "unflatten", "squeeze", "unsqueeze", "permute", "transpose", "contiguous", "expand",
    "__getitem__", "view_as", "reshape_as",
}
# Ops returning a tuple of parts of one tensor (ONNX Split/Slice): the parts stay on its grid.
_SPLIT_FUNCTIONS = {torch.chunk, torch.split, torch.tensor_split, torch.unbind}
_SPLIT_METHODS = {"chunk", "split", "tensor_split", "unbind"}
# torchvision.ops.stochastic_depth(input, p, mode, training=True): torch.fx.wrap keeps it one call
# in the graph; matched by name so that graph.py never imports torchvision.
_STOCHASTIC_DEPTH = ("torchvision.ops.stochastic_depth", "stochastic_depth")
_REQUANT_MODULES = (nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d)
_REQUANT_FUNCTIONS = {F.avg_pool1d, F.avg_pool2d, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, torch.cat, torch.concat}
_ADD_FUNCTIONS = {operator.add, torch.add, operator.iadd}
_MUL_FUNCTIONS = {operator.mul, torch.mul}
_MATMUL_FUNCTIONS = {operator.matmul, torch.matmul, torch.bmm}


@dataclass
class Unit:
    """A quantizable op with its fused activation. ``name`` is the module path for Conv/Linear."""

    name: str
    kind: str  # conv | linear | add | mul | cat | avgpool | matmul
    node: str  # fx node name of the op itself
    output_node: str  # fx node name of the tensor after the fused activation
    module: str | None = None  # module path for conv/linear
    fused_activation: str | None = None  # relu | relu6
    folded_batchnorm: str | None = None  # module path of the folded BN
    inputs: tuple[str, ...] = ()  # point names this unit reads (after skipping pass-through ops)

    @property
    def has_weights(self) -> bool:
        return self.kind in ("conv", "linear")


@dataclass
class Point:
    """A tensor that may carry an activation quantizer; named after the unit (or op) producing it."""

    name: str
    node: str  # fx node name of the tensor
    producer: str  # unit name, "input", or the kind of float op ("float:<op>")
    shape: tuple[int, ...] = ()
    consumers: tuple[str, ...] = ()  # names of units reading it (directly or through pass-through ops)


@dataclass
class PreparedModel:
    """A traced float model (BN folded when asked) with its units and candidate points in network order."""

    graph_module: torch.fx.GraphModule
    units: list[Unit]
    points: list[Point]
    fold_batchnorm: bool
    unsupported: list[str] = field(default_factory=list)  # modules with weights that stay in float
    # "" for the model as traced; "cle" after cross-layer equalization (ptq_core.algorithms.cle), whose
    # weights, and possibly activations, differ: part of every key of what is derived from it.
    variant: str = ""
    # The graph gives the same outputs from a channels-last batch as from a contiguous one (checked on the example
    # input): the engine's PyTorch passes then feed it one, which CPU convolutions run faster
    # (ptq_core.models.device.fast_layout). False for a model that cannot take one (a feature map flattened with
    # .view(), say) and for anything that is not a 4-D float CPU batch.
    channels_last: bool = False

    def layout(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` in the memory layout this graph's PyTorch passes take: channels-last when :attr:`channels_last`."""
        return fast_layout(x) if self.channels_last else x

    def unit(self, name: str) -> Unit:
        for u in self.units:
            if u.name == name:
                return u
        raise ModelError(f"no layer named {name!r}; layers: {', '.join(self.layer_names()[:40])}")

    def point(self, name: str) -> Point:
        for p in self.points:
            if p.name == name:
                return p
        raise ModelError(f"no activation point named {name!r}; points: {', '.join(p.name for p in self.points[:40])}")

    def layer_names(self) -> list[str]:
        """Conv/Linear layers, in network order: the names keep_float and overrides take."""
        return [u.name for u in self.units if u.has_weights]

    def weight_module(self, unit: Unit) -> nn.Module:
        assert unit.module is not None
        return self.graph_module.get_submodule(unit.module)

    def weight(self, unit: Unit) -> torch.Tensor:
        """The (BN-folded) float weight of a Conv/Linear unit, detached."""
        w = self.weight_module(unit).weight
        assert isinstance(w, torch.Tensor)
        return w.detach()

    def bias(self, unit: Unit) -> torch.Tensor | None:
        b = getattr(self.weight_module(unit), "bias", None)
        return b.detach() if isinstance(b, torch.Tensor) else None


def _modules(gm: torch.fx.GraphModule) -> dict[str, nn.Module]:
    return dict(gm.named_modules())


def fused_activation_kind(node: torch.fx.Node, modules: dict[str, nn.Module]) -> str | None:
    """'relu' or 'relu6' if ``node`` is an activation an integer runtime fuses into the op before it."""
    if node.op == "call_module":
        m = modules.get(str(node.target))
        if isinstance(m, nn.ReLU):
            return "relu"
        if isinstance(m, nn.Hardtanh) and m.min_val == 0.0 and m.max_val == 6.0:  # ReLU6 is a Hardtanh
            return "relu6"
        return None
    if node.op == "call_function":
        if node.target in (F.relu, torch.relu, torch.relu_, F.relu_):
            return "relu"
        if node.target is F.relu6:
            return "relu6"
        if node.target is F.hardtanh:
            lo = node.args[1] if len(node.args) > 1 else node.kwargs.get("min_val", -1.0)
            hi = node.args[2] if len(node.args) > 2 else node.kwargs.get("max_val", 1.0)
            return "relu6" if (lo, hi) == (0.0, 6.0) else None
        if node.target in (torch.clamp, torch.clip):
            lo = node.args[1] if len(node.args) > 1 else node.kwargs.get("min")
            hi = node.args[2] if len(node.args) > 2 else node.kwargs.get("max")
            if lo == 0 and hi is None:
                return "relu"
            if lo == 0 and hi == 6:
                return "relu6"
        return None
    if node.op == "call_method" and node.target in ("relu", "relu_"):
        return "relu"
    return None


def is_split(node: torch.fx.Node) -> bool:
    """Whether ``node`` splits one tensor into a tuple of parts (chunk, split, tensor_split, unbind)."""
    if node.op == "call_function":
        return node.target in _SPLIT_FUNCTIONS
    return node.op == "call_method" and node.target in _SPLIT_METHODS


def is_stochastic_depth_identity(node: torch.fx.Node) -> bool:
    """Whether ``node`` is torchvision's ``stochastic_depth`` called with training=False (or p=0): the identity."""
    target = node.target
    if node.op != "call_function" or (getattr(target, "__module__", None), getattr(target, "__name__", None)) != _STOCHASTIC_DEPTH:
        return False
    p = node.args[1] if len(node.args) > 1 else node.kwargs.get("p")
    training = node.args[3] if len(node.args) > 3 else node.kwargs.get("training", True)
    return training is False or (isinstance(p, int | float) and p == 0.0)


def is_pass_through(node: torch.fx.Node, modules: dict[str, nn.Module]) -> bool:
    """Whether ``node``'s output lies on its input's integer grid: it keeps the input's quantization."""
    if node.op == "call_module":
        m = modules.get(str(node.target))
        if isinstance(m, nn.ConstantPad2d | nn.ConstantPad1d):
            return bool(m.value == 0.0)
        return isinstance(m, _PASS_THROUGH_MODULES)
    if node.op == "call_function":
        if node.target is F.pad:
            mode = node.kwargs.get("mode", node.args[2] if len(node.args) > 2 else "constant")
            value = node.kwargs.get("value", node.args[3] if len(node.args) > 3 else None)
            return bool(mode == "constant" and value in (None, 0, 0.0))
        if node.target is operator.getitem:  # a slice of a tensor, or a part of a split; not an item of max/topk/LSTM
            src = node.args[0]
            return isinstance(src, torch.fx.Node) and (_is_tensor(src) or is_split(src))
        return node.target in _PASS_THROUGH_FUNCTIONS or is_split(node) or is_stochastic_depth_identity(node)
    if node.op == "call_method":
        return node.target in _PASS_THROUGH_METHODS or is_split(node)
    return False


def pass_through_source(node: torch.fx.Node) -> torch.fx.Node | None:
    """The tensor a pass-through op reads (for a part of a split, the split node), or None."""
    return next((a for a in node.all_input_nodes if _is_tensor(a) or is_split(a)), None)


def _tensor_args(node: torch.fx.Node) -> list[torch.fx.Node]:
    return [a for a in node.all_input_nodes if _is_tensor(a)]


def _is_tensor(node: torch.fx.Node) -> bool:
    return isinstance(node.meta.get("tensor_meta"), torch.fx.passes.shape_prop.TensorMetadata)


def _is_float_tensor(node: torch.fx.Node) -> bool:
    """A floating-point tensor (rule 7: only these carry quantizers)."""
    return _is_tensor(node) and node.meta["tensor_meta"].dtype.is_floating_point


def _requant_kind(node: torch.fx.Node, modules: dict[str, nn.Module]) -> str | None:
    if node.op == "call_module":
        return "avgpool" if isinstance(modules.get(str(node.target)), _REQUANT_MODULES) else None
    if node.op == "call_function":
        if node.target in (F.avg_pool1d, F.avg_pool2d, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d):
            return "avgpool"
        if node.target in (torch.cat, torch.concat):
            return "cat"
        both = len([a for a in node.args[:2] if isinstance(a, torch.fx.Node) and _is_tensor(a)]) == 2
        if node.target in _ADD_FUNCTIONS and both:
            return "add"
        if node.target in _MUL_FUNCTIONS and both:
            return "mul"
        if node.target in _MATMUL_FUNCTIONS and both:
            return "matmul"
    if node.op == "call_method" and node.target in ("matmul", "bmm") and any(
            isinstance(a, torch.fx.Node) and _is_tensor(a) for a in node.args[1:2]):
        return "matmul"
    if node.op == "call_method" and node.target in ("add", "add_", "mul"):
        others = [a for a in node.args[1:2] if isinstance(a, torch.fx.Node) and _is_tensor(a)]
        return ("add" if node.target != "mul" else "mul") if others else None
    return None


def trace(model: nn.Module, example: torch.Tensor) -> torch.fx.GraphModule:
    """Trace a copy of ``model`` (the input is never modified) and record every node's shape."""
    model = copy.deepcopy(model).eval()
    try:
        gm = torch.fx.symbolic_trace(model)
    except Exception as exc:  # torch.fx raises many types; all mean the same thing to a user
        raise ModelError(
            f"the model cannot be traced by torch.fx ({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}); "
            "ptq_core needs a model without data-dependent Python control flow in forward()"
        ) from None
    try:
        with torch.no_grad():
            ShapeProp(gm).propagate(example)
    except Exception as exc:
        raise ModelError(f"the traced model failed on an example input of shape {tuple(example.shape)}: {exc}") from None
    return gm


def _fold_bn_weights(w: torch.Tensor, b: torch.Tensor | None, bn: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    assert isinstance(bn, _BN_MODULES)
    if bn.running_mean is None or bn.running_var is None:
        raise ModelError("BatchNorm without running statistics (track_running_stats=False) cannot be folded; set fold_batchnorm to false")
    gamma = bn.weight if bn.weight is not None else torch.ones_like(bn.running_var)
    beta = bn.bias if bn.bias is not None else torch.zeros_like(bn.running_var)
    inv_std = torch.rsqrt(bn.running_var + bn.eps)
    factor = gamma * inv_std
    w_folded = w * factor.reshape(-1, *([1] * (w.dim() - 1)))
    b0 = b if b is not None else torch.zeros_like(bn.running_mean)
    b_folded = (b0 - bn.running_mean) * factor + beta
    return w_folded.detach(), b_folded.detach()


def fold_batchnorm(gm: torch.fx.GraphModule) -> dict[str, str]:
    """Fold every BatchNorm that alone consumes a Conv/Linear into it, in place. Returns {bn: conv}."""
    modules = _modules(gm)
    folded: dict[str, str] = {}
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or not isinstance(modules.get(str(node.target)), _BN_MODULES):
            continue
        src = node.args[0]
        if not (isinstance(src, torch.fx.Node) and src.op == "call_module" and len(src.users) == 1):
            continue
        conv = modules.get(str(src.target))
        if not isinstance(conv, COMPUTE_MODULES):
            continue
        bn = modules[str(node.target)]
        if conv.weight.shape[0] != bn.num_features:
            continue
        with torch.no_grad():
            w, b = _fold_bn_weights(conv.weight, conv.bias, bn)
            conv.weight = nn.Parameter(w, requires_grad=False)
            conv.bias = nn.Parameter(b, requires_grad=False)
        node.replace_all_uses_with(src)
        gm.graph.erase_node(node)
        folded[str(node.target)] = str(src.target)
    gm.graph.lint()
    gm.delete_all_unused_submodules()  # the folded BatchNorms: they must not count as model size
    gm.recompile()
    return folded


def prepare(model: nn.Module, example: torch.Tensor, *, fold_bn: bool = True) -> PreparedModel:
    """Trace, fold BatchNorm, and find the units and candidate activation points of ``model``."""
    # Checked before folding: a NaN in a BatchNorm buffer would otherwise surface as the conv's folded weight.
    for tname, tensor in [*model.named_parameters(), *model.named_buffers()]:
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            raise ModelError(f"model: {tname} contains NaN or Inf; allowed: finite weights and buffers only")
    gm = trace(model, example)
    folded = fold_batchnorm(gm) if fold_bn else {}
    conv_to_bn = {v: k for k, v in folded.items()}
    modules = _modules(gm)
    nodes = list(gm.graph.nodes)

    for name, mod in modules.items():
        if isinstance(mod, COMPUTE_MODULES):
            for pname, param in mod.named_parameters(recurse=False):
                if not torch.isfinite(param).all():  # finite before folding: a BatchNorm with a negative variance
                    raise ModelError(f"layer {name}: {pname} contains NaN or Inf once its BatchNorm is folded in; "
                                     "allowed: BatchNorm statistics with a positive variance")

    units: list[Unit] = []
    unit_of_output: dict[str, Unit] = {}
    fused_nodes: set[str] = set()
    used_names: set[str] = set()

    def unique(name: str) -> str:
        base, i = name, 1
        while name in used_names:
            name, i = f"{base}#{i}", i + 1
        used_names.add(name)
        return name

    for node in nodes:
        kind: str | None = None
        module_path: str | None = None
        if node.op == "call_module" and isinstance(modules.get(str(node.target)), COMPUTE_MODULES):
            module_path = str(node.target)
            kind = "linear" if isinstance(modules[module_path], nn.Linear) else "conv"
        else:
            kind = _requant_kind(node, modules)
        if kind is None:
            continue
        out = node
        act = None
        if kind in ("conv", "linear", "add") and len(node.users) == 1:
            user = next(iter(node.users))
            act = fused_activation_kind(user, modules)
            if act is not None:
                out = user
                fused_nodes.add(user.name)
        unit = Unit(
            name=unique(module_path if module_path is not None else node.name),
            kind=kind,
            node=node.name,
            output_node=out.name,
            module=module_path,
            fused_activation=act,
            folded_batchnorm=conv_to_bn.get(module_path or ""),
        )
        units.append(unit)
        unit_of_output[out.name] = unit

    # Candidate points: the model inputs, every unit output, and every other non-pass-through tensor.
    points: list[Point] = []
    point_of_node: dict[str, Point] = {}
    for node in nodes:
        if not _is_float_tensor(node) or node.op in ("output", "get_attr"):
            continue
        if node.op == "placeholder":
            producer = "input"
            name = unique(str(node.target))
        elif node.name in unit_of_output:
            producer = unit_of_output[node.name].name
            name = producer
        elif is_pass_through(node, modules):
            continue
        elif any(u.node == node.name for u in units):
            continue  # a unit's op whose output continues into its fused activation
        else:
            op = type(modules[str(node.target)]).__name__ if node.op == "call_module" else getattr(node.target, "__name__", str(node.target))
            producer = f"float:{op}"
            name = unique(str(node.target) if node.op == "call_module" else node.name)
        meta = node.meta["tensor_meta"]
        p = Point(name=name, node=node.name, producer=producer, shape=tuple(meta.shape))
        points.append(p)
        point_of_node[node.name] = p

    def source_point(node: torch.fx.Node) -> Point | None:
        while node.name not in point_of_node:
            src = pass_through_source(node) if is_pass_through(node, modules) else None
            if src is None:
                return None
            node = src
        return point_of_node[node.name]

    node_by_name = {n.name: n for n in nodes}
    consumers: dict[str, list[str]] = {p.name: [] for p in points}
    for unit in units:
        op = node_by_name[unit.node]
        srcs = []
        for arg in _tensor_args(op):
            sp = source_point(arg)
            if sp is not None and sp.name not in srcs:
                srcs.append(sp.name)
                consumers[sp.name].append(unit.name)
        unit.inputs = tuple(srcs)
    for p in points:
        p.consumers = tuple(consumers[p.name])

    # Weights may be parameters or, in a lifted TorchScript program (where they were constants),
    # floating-point buffers; integer buffers (counters, indices) are not weights.
    unsupported = [
        name for name, mod in modules.items()
        if name and not isinstance(mod, COMPUTE_MODULES + _BN_MODULES)
        and any(t.is_floating_point() for t in (*mod.parameters(recurse=False), *mod.buffers(recurse=False)))
    ]
    if unsupported:
        log.info("layers with weights that ptq_core does not quantize (kept in float): %s", ", ".join(unsupported))
    return PreparedModel(graph_module=gm, units=units, points=points, fold_batchnorm=fold_bn, unsupported=unsupported,
                         channels_last=takes_channels_last(gm, example))


def is_tokens(x: torch.Tensor) -> bool:
    """Whether ``x`` is a text model's input: ``[N, 2, L]`` integer token ids and attention mask (:mod:`ptq_core.models.minilm`)."""
    return not x.is_floating_point() and x.dim() == 3 and x.shape[1] == 2


def node_map(gm: torch.fx.GraphModule) -> dict[str, torch.fx.Node]:
    return {n.name: n for n in gm.graph.nodes}


def insert_after(gm: torch.fx.GraphModule, node_name: str, module_name: str, module: nn.Module,
                 only: Callable[[torch.fx.Node], bool] | None = None) -> str:
    """Insert ``module`` on the tensor of ``node_name``: every former consumer (or those ``only`` accepts) reads its output."""
    node = node_map(gm)[node_name]
    gm.add_submodule(module_name, module)
    with gm.graph.inserting_after(node):
        new = gm.graph.call_module(module_name, (node,))
    node.replace_all_uses_with(new, delete_user_cb=lambda user: user is not new and (only is None or only(user)))
    return new.name


def reads_for_weights(gm: torch.fx.GraphModule) -> Callable[[torch.fx.Node], bool]:
    """Rule 6's readers of a dynamic quantizer: Conv/Linear calls and the value-preserving ops on the way to them.

    Every other reader of the tensor (a residual add, a LayerNorm) reads it in float, as ``quantize_dynamic``
    and onnxruntime's dynamic quantization do: only the integer matmul's own input is quantized.
    """
    modules = _modules(gm)

    def reads(user: torch.fx.Node) -> bool:
        if user.op == "call_module" and isinstance(modules.get(str(user.target)), COMPUTE_MODULES):
            return True
        return is_pass_through(user, modules)

    return reads


def with_taps(gm: torch.fx.GraphModule, node_names: dict[str, str]) -> torch.fx.GraphModule:
    """A view of ``gm`` (sharing its modules) that returns ``(output, {tap name: tensor})``."""
    graph = copy.deepcopy(gm.graph)
    nodes = {n.name: n for n in graph.nodes}
    out = next(n for n in graph.nodes if n.op == "output")
    taps: dict[str, Any] = {tap: nodes[n] for tap, n in node_names.items()}
    out.args = ((out.args[0], taps),)
    return torch.fx.GraphModule(gm, graph)
