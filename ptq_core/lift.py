"""Lift a ``torch.export`` program into a ``torch.fx`` GraphModule that :func:`ptq_core.graph.prepare` reads.

An ExportedProgram (a ``.pt2`` file, or a TorchScript model converted by torch) is an aten-level
graph: ``aten.conv2d(x, p_conv1_weight, ...)`` with the weights as graph inputs. ``graph.prepare``
finds its units as ``call_module`` nodes of real ``nn.Conv1d/Conv2d/Linear`` modules and folds
``nn.BatchNorm`` modules, so this module rebuilds the graph with:

* ``aten.conv1d/conv2d/convolution`` -> an ``nn.Conv1d``/``nn.Conv2d`` holding the weights;
  ``aten.linear`` -> ``nn.Linear``; ``aten.batch_norm`` (and the no-training native form) ->
  ``nn.BatchNorm1d/2d`` with its running statistics. Each module is named after its weight's
  qualified name in the original model (``layer1.0.conv1.weight`` -> ``layer1.0.conv1``), so
  layer names match what the user knows.
* activations, additions and shape ops -> the functional forms graph.py recognises
  (``F.relu``, ``F.hardtanh(x, 0, 6)``, ``operator.add``, ``torch.cat``, ``torch.flatten``,
  ``torch.reshape``, ``F.adaptive_avg_pool2d``, ...); in-place variants become out-of-place
  (export rewires later uses to the in-place op's result, so this is equivalent); dropout in
  eval mode is dropped.
* every other op is kept as it is (an aten call) with its tensors as attributes named after
  their original qualified names: graph.prepare runs it in float, and any weights it holds make
  its parent path appear in ``PreparedModel.unsupported`` (listed, kept in float).

A program exported with a fixed batch size bakes that size into ``view``/``reshape`` targets;
those are rewritten to read the batch size from their input (``x.size(0)``), so the lifted
module runs at any batch size. :func:`lift` never changes the program it is given.
"""

from __future__ import annotations

import logging
import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn
from torch.export import ExportedProgram
from torch.export.graph_signature import InputKind, OutputKind

from .errors import ModelError

__all__ = ["LiftReport", "lift"]

log = logging.getLogger(__name__)


@dataclass
class LiftReport:
    """What :func:`lift` did: modules it created, ops it kept as aten calls, batch sizes it freed."""

    modules: dict[str, str] = field(default_factory=dict)  # module path -> Conv2d | Linear | BatchNorm2d ...
    kept_ops: dict[str, int] = field(default_factory=dict)  # aten op -> count, run as they are (float)
    batch_rewrites: int = 0  # view/reshape targets whose fixed batch size now follows the input


@dataclass
class _TupleResult:
    """An op that returns a tuple, of which the lifted graph only provides element 0."""

    node: torch.fx.Node


def _bind(node: torch.fx.Node) -> dict[str, Any]:
    """The arguments of an aten call by schema name, defaults filled in."""
    schema = node.target._schema  # type: ignore[union-attr]
    out: dict[str, Any] = {}
    for i, arg in enumerate(schema.arguments):
        if i < len(node.args):
            out[arg.name] = node.args[i]
        elif arg.name in node.kwargs:
            out[arg.name] = node.kwargs[arg.name]
        elif arg.has_default_value():
            out[arg.name] = arg.default_value
        else:
            out[arg.name] = None
    return out


def _tuple(value: Any, n: int) -> tuple[int, ...]:
    items = [int(v) for v in (value if isinstance(value, list | tuple) else [value])]
    return tuple(items * n) if len(items) == 1 else tuple(items)


# aten op name (without overload) -> replacement callable taking the mapped (input, *rest) args.
_ACTIVATIONS: dict[str, Callable[..., Any]] = {
    "relu": F.relu, "relu_": F.relu,
    "hardswish": F.hardswish, "hardswish_": F.hardswish,
    "silu": F.silu, "silu_": F.silu,
    "sigmoid": torch.sigmoid, "sigmoid_": torch.sigmoid,
    "hardsigmoid": F.hardsigmoid, "hardsigmoid_": F.hardsigmoid,
    "tanh": torch.tanh, "tanh_": torch.tanh,
    "relu6": F.relu6,
}  # fmt: skip
_BINARY: dict[str, Callable[..., Any]] = {
    "add": operator.add, "add_": operator.add,
    "sub": operator.sub, "sub_": operator.sub,
    "mul": operator.mul, "mul_": operator.mul,
    "div": operator.truediv, "div_": operator.truediv,
}  # fmt: skip
_IDENTITY = {"dropout", "dropout_", "feature_dropout", "alpha_dropout", "detach", "alias", "lift_fresh_copy"}
_DROPPED = {"_assert_scalar", "_assert_tensor_metadata", "sym_constrain_range_for_size", "sym_constrain_range"}
_RESHAPES = {"view", "reshape", "_unsafe_view"}


class _Lifter:
    def __init__(self, ep: ExportedProgram) -> None:
        self.ep = ep
        self.graph = torch.fx.Graph()
        self.root = nn.Module()
        self.env: dict[str, Any] = {}
        self.tensors: dict[str, torch.Tensor] = {}  # placeholder name -> parameter/buffer/constant value
        self.fqn: dict[str, str] = {}  # placeholder name -> qualified name in the original model
        self.attr_nodes: dict[str, torch.fx.Node] = {}
        self.used_paths: set[str] = set()
        self.depends_on_input: set[str] = set()
        self.static_batch: int | None = None
        self.report = LiftReport()

    # -- module tree ------------------------------------------------------------------------
    def _unique_path(self, path: str) -> str:
        path = path.strip(".") or "module"
        base, i = path, 1
        while path in self.used_paths or self._path_taken(path):
            path, i = f"{base}_{i}", i + 1
        self.used_paths.add(path)
        return path

    def _path_taken(self, path: str) -> bool:
        try:
            self.root.get_submodule(path)
            return True
        except AttributeError:
            pass
        parent, _, leaf = path.rpartition(".")
        try:
            owner = self.root.get_submodule(parent) if parent else self.root
        except AttributeError:
            return False
        return hasattr(owner, leaf)

    def _container(self, path: str) -> nn.Module:
        module = self.root
        for part in [p for p in path.split(".") if p]:
            child = module._modules.get(part)
            if child is None:
                child = nn.Module()
                module.add_module(part, child)
            module = child
        return module

    def _add_module(self, path: str, module: nn.Module) -> str:
        path = self._unique_path(path)
        parent, _, leaf = path.rpartition(".")
        self._container(parent).add_module(leaf, module)
        self.report.modules[path] = type(module).__name__
        return path

    def _attr(self, placeholder: str) -> torch.fx.Node:
        """A get_attr node for a parameter/buffer/constant placeholder (created once)."""
        if placeholder not in self.attr_nodes:
            value = self.tensors[placeholder]
            path = self._unique_path(self.fqn[placeholder].replace("/", "_"))
            parent, _, leaf = path.rpartition(".")
            owner = self._container(parent)
            if isinstance(value, nn.Parameter) or self.fqn[placeholder] in self.ep.graph_signature.parameters:
                owner.register_parameter(leaf, nn.Parameter(value.detach().clone(), requires_grad=False))
            else:
                owner.register_buffer(leaf, value.detach().clone())
            self.attr_nodes[placeholder] = self.graph.get_attr(path)
        return self.attr_nodes[placeholder]

    # -- argument mapping --------------------------------------------------------------------
    def _is_weight(self, value: Any) -> bool:
        return isinstance(value, torch.fx.Node) and value.name in self.tensors

    def _weight(self, value: Any) -> torch.Tensor | None:
        return None if value is None else self.tensors[value.name].detach().clone()

    def _map(self, value: Any) -> Any:
        """Old-graph argument -> new-graph argument (nodes mapped, weights as get_attr)."""
        if isinstance(value, torch.fx.Node):
            if value.name in self.tensors:
                return self._attr(value.name)
            mapped = self.env[value.name]
            if isinstance(mapped, _TupleResult):
                raise ModelError(
                    f"the program uses the whole tuple result of {value.name}; allowed: programs that use only element "
                    "0 of an op returning several tensors (e.g. the values of max(dim), not the indices)"
                )
            return mapped
        if isinstance(value, list | tuple):
            return type(value)(self._map(v) for v in value)
        if isinstance(value, dict):
            return {k: self._map(v) for k, v in value.items()}
        return value

    def _call(self, target: Callable[..., Any], *args: Any, **kwargs: Any) -> torch.fx.Node:
        return self.graph.call_function(target, args, kwargs)

    # -- ops ---------------------------------------------------------------------------------
    def _conv(self, node: torch.fx.Node, a: dict[str, Any], name: str) -> torch.fx.Node | None:
        weight = a["weight"]
        if not self._is_weight(weight) or (a["bias"] is not None and not self._is_weight(a["bias"])):
            return None
        if name in ("convolution", "_convolution") and (a.get("transposed") or False):
            return None
        w = self._weight(weight)
        assert w is not None
        dims = w.dim() - 2
        if dims not in (1, 2):
            return None
        groups = int(a["groups"])
        padding: Any = a["padding"]
        padding = padding if isinstance(padding, str) else _tuple(padding, dims)
        cls: Any = nn.Conv1d if dims == 1 else nn.Conv2d
        conv = cls(
            w.shape[1] * groups,
            w.shape[0],
            tuple(w.shape[2:]),
            stride=_tuple(a["stride"], dims),
            padding=padding,
            dilation=_tuple(a["dilation"], dims),
            groups=groups,
            bias=a["bias"] is not None,
        )
        conv.weight = nn.Parameter(w, requires_grad=False)
        bias = self._weight(a["bias"])
        if bias is not None:
            conv.bias = nn.Parameter(bias, requires_grad=False)
        path = self._add_module(self.fqn[weight.name].removesuffix(".weight"), conv.eval())
        return self.graph.call_module(path, (self._map(a["input"]),))

    def _linear(self, a: dict[str, Any]) -> torch.fx.Node | None:
        weight = a["weight"]
        if not self._is_weight(weight) or (a["bias"] is not None and not self._is_weight(a["bias"])):
            return None
        w = self._weight(weight)
        assert w is not None and w.dim() == 2
        linear = nn.Linear(w.shape[1], w.shape[0], bias=a["bias"] is not None)
        linear.weight = nn.Parameter(w, requires_grad=False)
        bias = self._weight(a["bias"])
        if bias is not None:
            linear.bias = nn.Parameter(bias, requires_grad=False)
        path = self._add_module(self.fqn[weight.name].removesuffix(".weight"), linear.eval())
        return self.graph.call_module(path, (self._map(a["input"]),))

    def _batch_norm(self, a: dict[str, Any]) -> torch.fx.Node | None:
        if a.get("training"):
            return None
        stats = (a["running_mean"], a["running_var"])
        if not all(self._is_weight(s) for s in stats):
            return None
        if any(p is not None and not self._is_weight(p) for p in (a["weight"], a["bias"])):
            return None
        source = a["input"]
        val = source.meta.get("val") if isinstance(source, torch.fx.Node) else None
        rank = val.dim() if isinstance(val, torch.Tensor) else None
        if rank not in (2, 3, 4):
            return None
        mean = self._weight(stats[0])
        var = self._weight(stats[1])
        assert mean is not None and var is not None
        affine = a["weight"] is not None
        cls = nn.BatchNorm2d if rank == 4 else nn.BatchNorm1d
        bn = cls(mean.shape[0], eps=float(a["eps"]), affine=affine)
        with torch.no_grad():
            bn.running_mean.copy_(mean)  # type: ignore[union-attr]
            bn.running_var.copy_(var)  # type: ignore[union-attr]
            if affine:
                bn.weight.copy_(self._weight(a["weight"]))  # type: ignore[arg-type]
                if a["bias"] is not None:
                    bn.bias.copy_(self._weight(a["bias"]))  # type: ignore[arg-type]
                else:
                    bn.bias.zero_()
        owner = stats[0] if a["weight"] is None else a["weight"]
        suffix = ".running_mean" if a["weight"] is None else ".weight"
        path = self._add_module(self.fqn[owner.name].removesuffix(suffix), bn.eval())
        return self.graph.call_module(path, (self._map(source),))

    def _reshape(self, node: torch.fx.Node, a: dict[str, Any]) -> torch.fx.Node:
        source = a["self"]
        size = list(a["size"] if "size" in a else a["shape"])
        x = self._map(source)
        val = source.meta.get("val") if isinstance(source, torch.fx.Node) else None
        if (
            self.static_batch is not None
            and isinstance(source, torch.fx.Node)
            and source.name in self.depends_on_input
            and isinstance(val, torch.Tensor)
            and val.dim() > 0
            and isinstance(val.shape[0], int)
            and val.shape[0] == self.static_batch
            and size
            and isinstance(size[0], int)
            and size[0] == self.static_batch
        ):
            size[0] = self.graph.call_method("size", (x, 0))
            self.report.batch_rewrites += 1
        else:
            size = self._map(size)
        return self._call(torch.reshape, x, size)

    def _lift_call(self, node: torch.fx.Node) -> Any:
        target = node.target
        if not isinstance(target, torch._ops.OpOverload):  # Python operators on sizes, getitem, ...
            source = self.env.get(getattr(node.args[0], "name", ""))
            if target is operator.getitem and isinstance(source, _TupleResult):
                if node.args[1] != 0:
                    raise ModelError(
                        f"the program uses element {node.args[1]} of {node.args[0]}; allowed: programs that use only "
                        "element 0 of an op returning several tensors (e.g. the values of max(dim), not the indices)"
                    )
                return source.node
            return self.graph.call_function(target, self._map(node.args), self._map(node.kwargs))  # type: ignore[arg-type]
        name = target._schema.name.split("::")[-1]
        overload = target._overloadname
        a = _bind(node)
        first = next(iter(a.values()), None)
        mapped: Any = None
        if name in _DROPPED:
            return None
        if a.get("training") is True or (name in _IDENTITY and a.get("train") is True):
            raise ModelError(f"the exported program runs {name} in training mode; allowed: a model exported after model.eval()")
        if name in _IDENTITY:
            return self._map(first)
        if name in ("conv1d", "conv2d", "convolution", "_convolution"):
            mapped = self._conv(node, a, name)
        elif name == "linear":
            mapped = self._linear(a)
        elif name == "batch_norm":
            mapped = self._batch_norm(a)
        elif name == "_native_batch_norm_legit_no_training":
            bn = self._batch_norm({**a, "training": False})
            mapped = _TupleResult(bn) if bn is not None else None
        elif name in _ACTIVATIONS:
            mapped = self._call(_ACTIVATIONS[name], self._map(first))
        elif name in ("hardtanh", "hardtanh_"):
            mapped = self._call(F.hardtanh, self._map(first), float(a["min_val"]), float(a["max_val"]))
        elif name in ("clamp", "clamp_") and overload == "default":
            mapped = self._call(torch.clamp, self._map(first), a["min"], a["max"])
        elif name == "gelu":
            mapped = self._call(F.gelu, self._map(first), approximate=a["approximate"])
        elif name in _BINARY and a.get("alpha", 1) == 1:
            mapped = self._call(_BINARY[name], self._map(first), self._map(a["other"]))
        elif name == "cat":
            mapped = self._call(torch.cat, self._map(list(a["tensors"])), int(a["dim"]))
        elif name == "flatten" and overload == "using_ints":
            mapped = self._call(torch.flatten, self._map(first), int(a["start_dim"]), int(a["end_dim"]))
        elif name in _RESHAPES:
            mapped = self._reshape(node, a)
        elif name == "transpose" and overload == "int":
            mapped = self._call(torch.transpose, self._map(first), int(a["dim0"]), int(a["dim1"]))
        elif name == "permute":
            mapped = self._call(torch.permute, self._map(first), list(a["dims"]))
        elif name == "contiguous":
            mapped = self.graph.call_method("contiguous", (self._map(first),))
        elif name == "chunk":
            mapped = self._call(torch.chunk, self._map(first), int(a["chunks"]), int(a["dim"]))
        elif name == "sym_size" and overload == "int":
            mapped = self.graph.call_method("size", (self._map(first), int(a["dim"])))
        elif name == "adaptive_avg_pool2d":
            mapped = self._call(F.adaptive_avg_pool2d, self._map(first), list(a["output_size"]))
        elif name == "adaptive_avg_pool1d":
            mapped = self._call(F.adaptive_avg_pool1d, self._map(first), list(a["output_size"]))
        elif name == "avg_pool2d":
            mapped = self._call(
                F.avg_pool2d,
                self._map(first),
                list(a["kernel_size"]),
                stride=list(a["stride"]) or None,
                padding=list(a["padding"]),
                ceil_mode=bool(a["ceil_mode"]),
                count_include_pad=bool(a["count_include_pad"]),
                divisor_override=a["divisor_override"],
            )
        elif name == "max_pool2d":
            mapped = self._call(
                F.max_pool2d,
                self._map(first),
                list(a["kernel_size"]),
                stride=list(a["stride"]) or None,
                padding=list(a["padding"]),
                dilation=list(a["dilation"]),
                ceil_mode=bool(a["ceil_mode"]),
            )
        elif name == "mean" and overload == "dim" and a.get("dtype") is None:
            mapped = self._call(torch.mean, self._map(first), list(a["dim"]), keepdim=bool(a["keepdim"]))
        elif name == "constant_pad_nd":
            mapped = self._call(F.pad, self._map(first), list(a["pad"]), "constant", float(a["value"]))
        if mapped is None:
            key = f"aten.{name}.{overload}"
            self.report.kept_ops[key] = self.report.kept_ops.get(key, 0) + 1
            mapped = self.graph.call_function(target, self._map(node.args), self._map(node.kwargs))
        return mapped

    # -- the whole graph ---------------------------------------------------------------------
    def run(self) -> tuple[torch.fx.GraphModule, LiftReport]:
        sig = self.ep.graph_signature
        for spec in sig.output_specs:
            if spec.kind not in (OutputKind.USER_OUTPUT,):
                raise ModelError(
                    f"the exported program mutates state ({spec.kind.name} of {spec.target!r}); "
                    "export the model in eval mode (model.eval()) without buffer updates"
                )
        user_inputs: list[str] = []
        for spec in sig.input_specs:
            arg_name = getattr(spec.arg, "name", None)
            if spec.kind == InputKind.USER_INPUT:
                user_inputs.append(str(arg_name))
                continue
            if (
                spec.kind not in (InputKind.PARAMETER, InputKind.BUFFER, InputKind.CONSTANT_TENSOR)
                or spec.target is None
            ):
                raise ModelError(
                    f"the exported program takes a {spec.kind.name} input ({spec.target}); allowed: parameters, "
                    "buffers, constants and one tensor input"
                )
            store = self.ep.state_dict if spec.target in self.ep.state_dict else self.ep.constants
            value = store.get(spec.target)
            if not isinstance(value, torch.Tensor):
                raise ModelError(
                    f"the exported program's {spec.target!r} is a {type(value).__name__}; allowed: tensors only"
                )
            self.tensors[str(arg_name)] = value
            self.fqn[str(arg_name)] = spec.target
        if len(user_inputs) != 1:
            raise ModelError(
                f"the model takes {len(user_inputs)} tensor inputs; allowed: exactly one (the image batch)"
            )

        output_value: Any = None
        for node in self.ep.graph_module.graph.nodes:
            if node.op == "placeholder":
                if node.name in self.tensors:
                    continue
                self.env[node.name] = self.graph.placeholder("x")
                self.depends_on_input.add(node.name)
                val = node.meta.get("val")
                if isinstance(val, torch.Tensor) and val.dim() > 0 and isinstance(val.shape[0], int):
                    self.static_batch = int(val.shape[0])
            elif node.op == "call_function":
                if any(getattr(n, "name", None) in self.depends_on_input for n in node.all_input_nodes):
                    self.depends_on_input.add(node.name)
                self.env[node.name] = self._lift_call(node)
            elif node.op == "output":
                outs = node.args[0]
                user = [
                    o for o, spec in zip(outs, sig.output_specs, strict=True) if spec.kind == OutputKind.USER_OUTPUT
                ]
                if len(user) != 1:
                    raise ModelError(f"the model returns {len(user)} outputs; allowed: exactly one (the logits)")
                output_value = self._map(user[0])
            else:
                raise ModelError(
                    f"the exported program holds a {node.op} node ({node.name}); allowed: placeholders, calls of "
                    "functions and one output"
                )
        self.graph.output(output_value)
        gm = torch.fx.GraphModule(self.root, self.graph, class_name="LiftedModel")
        gm.graph.eliminate_dead_code()
        gm.graph.lint()
        gm.delete_all_unused_submodules()
        gm.recompile()
        return gm.eval(), self.report


def lift(ep: ExportedProgram) -> tuple[torch.fx.GraphModule, LiftReport]:
    """A GraphModule equivalent to ``ep`` with Conv/Linear/BatchNorm as modules (see module docstring).

    Raises:
        ModelError: the program mutates buffers, takes other than one tensor input, returns other
            than one output, or holds nodes this lifting does not understand (e.g. control flow).
    """
    gm, report = _Lifter(ep).run()
    if report.kept_ops:
        log.info("ops kept as aten calls (run in float): %s", report.kept_ops)
    return gm, report
