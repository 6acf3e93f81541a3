"""PyTorch's own post-training quantization as a comparison target: PT2E with torchao's X86InductorQuantizer.

What lives here: :func:`pt2e_unavailable` (None when the API imports, else why not),
:func:`quantize_pt2e` (export, prepare, calibrate, convert; an :class:`~ptq_core.errors.ExportError`
in plain words when a step fails), :func:`findings` (what the converted graph quantizes, in plain
words) and :func:`pt2e_target`, which does all of it on the user's FP32 model with the calibration
images ptq_core used and returns one :class:`~ptq_core.runtimes.RuntimeRow`: accuracy, agreement
with FP32 and with ptq_core's simulation, latency, and the findings as notes. Not here: ptq_core's
own simulation, the onnxruntime/LiteRT targets, the row type (:mod:`ptq_core.runtimes`).

Which API. torch 2.14 no longer ships ``torch.ao.quantization.quantize_pt2e``; the maintained PT2E
flow is torchao's (``torchao.quantization.pt2e.quantize_pt2e.prepare_pt2e``/``convert_pt2e`` and
``torchao.quantization.pt2e.quantizer.x86_inductor_quantizer``). The steps::

    torch.export.export(model, (example,))              the original FP32 module, batch dimension dynamic
    prepare_pt2e(exported, X86InductorQuantizer())       folds BatchNorm, inserts observers
      with get_default_x86_inductor_quantization_config()  static, uint8 per-tensor activations (HistogramObserver),
                                                           int8 per-channel symmetric weights (PerChannelMinMaxObserver)
    run the calibration images through it               exactly ptq_core's calibration subset
    convert_pt2e(prepared)                              quantize/dequantize pairs with the observed scales

The converted model run eagerly computes every quantize/dequantize in float around float
convolutions: its accuracy is PT2E's, its latency is not what PT2E deploys. The int8 kernels
(oneDNN qconv/qlinear) come only from ``torch.compile`` with Inductor's ``freezing`` on. Measured
on EfficientNet-Lite0, 2-core AMD EPYC (AVX512-VNNI) shared with other jobs (load average 3-6, so
every figure is rough): compiling took 40-60 s for the first batch shape and 14-16 s for the next;
the eager model needs ~110 s for the 372 evaluation images, the compiled one ~11 s; one thread,
batch 1: eager PT2E 138 ms, FP32 38-52 ms, compiled PT2E 13-17 ms. Compiling costs less than the
eager evaluation it replaces, so ``compile_latency=True`` (the default) evaluates and times the
compiled model (kind "integer"). Shapes are static: one compile at batch min(32, N), in which the
evaluation runs (the last batch padded), and one at batch 1; Inductor's dynamic-shape int8
convolution fails on a one-channel input (the digits CNN: a stride assertion in its qconv
lowering). ``compile_latency=False``, or a compile that fails, gives the eager model's numbers,
kind "simulated", with a note saying its latency is the eager reference.

Never raises: a model that torch.export cannot capture, an op the quantizer or Inductor cannot
handle, a missing package, each becomes an unavailable row whose reason names the step, the layer
where it can be found, and the error's first line.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import time
import traceback
import warnings
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .calibration import batches, load_batch
from .errors import ExportError
from .progress import ProgressFn
from .runtimes import RuntimeRow, compare
from .timing import median_ms

log = logging.getLogger(__name__)

NAME = "PyTorch PT2E (X86InductorQuantizer)"
LATENCY_BATCH = 32  # the "batch N" of every runtime row: min(32, samples)
_QUANTIZE = "quantized_decomposed.quantize_per_tensor"
_DEQUANTIZE = "quantized_decomposed.dequantize_per_tensor"
_DEQUANTIZE_CHANNEL = "quantized_decomposed.dequantize_per_channel"
_COMPUTE = ("aten.conv1d", "aten.conv2d", "aten.conv3d", "aten.linear", "aten.matmul", "aten.bmm")
_CLAMPS = ("aten.relu.", "aten.relu_.", "aten.hardtanh.", "aten.hardtanh_.", "aten.relu6.", "aten.clamp.")
_ELEMENTWISE = ("aten.add.Tensor", "aten.add_.Tensor", "aten.mul.Tensor", "aten.mul_.Tensor")


def pt2e_unavailable() -> str | None:
    """None when torchao's PT2E API and the X86 Inductor quantizer import; otherwise why not, in plain words."""
    try:
        importlib.import_module("torchao.quantization.pt2e.quantize_pt2e")
        importlib.import_module("torchao.quantization.pt2e.quantizer.x86_inductor_quantizer")
    except ImportError as exc:
        return (f"PyTorch's PT2E quantization needs the torchao package (pip install torchao), which did not import "
                f"here: {exc}")
    except Exception as exc:  # a torchao built for another torch fails with anything; say so instead of raising
        return f"torchao is installed but its PT2E API failed to import ({type(exc).__name__}: {_first_line(exc)})"
    return None


def _version() -> str:
    try:
        return f"torch {torch.__version__.split('+')[0]}, torchao {importlib.import_module('torchao').__version__}"
    except Exception:  # torchao missing: the row still says which torch would have run it
        return f"torch {torch.__version__.split('+')[0]}, torchao not installed"


def pt2e_target(
    model: nn.Module, *, example: torch.Tensor, calib_dataset: torch.utils.data.Dataset, calib_indices: Sequence[int],
    dataset: torch.utils.data.Dataset, indices: Sequence[int], batch_size: int, fp32_logits: torch.Tensor,
    sim_logits: torch.Tensor | None, labels: torch.Tensor | None, task: str = "classification",
    threads: int | None = None, compile_latency: bool = True, on_progress: ProgressFn | None = None,
) -> RuntimeRow:
    """``model`` (the user's FP32 module) quantized by PT2E's X86 default, as one runtime row; never raises.

    ``example`` one input (batch 1) for torch.export; ``calib_dataset[calib_indices]`` the calibration
    images ptq_core used; ``dataset[indices]`` the evaluation samples, whose FP32 and simulated
    outputs are ``fp32_logits`` and ``sim_logits`` and labels ``labels`` (see :func:`compare`).
    ``threads`` intra-op threads for everything here (None: torch's current setting).
    ``compile_latency``: evaluate and time the Inductor-compiled int8 model (see the module docstring).
    """
    version = _version()
    kind = "integer" if compile_latency else "simulated"
    missing = pt2e_unavailable()
    if missing is not None:
        return RuntimeRow.unavailable(NAME, version, kind, missing)

    def progress(done: int, message: str) -> None:
        if on_progress is not None:
            on_progress(done, 5, message)

    step = "quantize it"
    try:
        with _threads(threads):
            progress(0, "PT2E: exporting and calibrating")
            quantized = quantize_pt2e(model, example=example, calib_dataset=calib_dataset, calib_indices=calib_indices,
                                      batch_size=batch_size)
            notes, fallbacks = findings(quantized.graph_module, quantized.observers)
            step = "run the converted model on the evaluation samples"
            progress(2, "PT2E: compiling" if compile_latency else "PT2E: evaluating")
            lat_batch = min(LATENCY_BATCH, len(indices))
            x_n = load_batch(dataset, list(indices)[:lat_batch])[0]
            run: Callable[[torch.Tensor], torch.Tensor] = quantized.graph_module
            compile_s, compiled_note = 0.0, None
            if compile_latency:
                run, compile_s, compiled_note = _compiled(quantized.graph_module, example, x_n)
                if compiled_note is not None:  # failed: the eager reference, said so
                    kind = "simulated"
            with _freezing(kind == "integer"):
                outputs = _outputs(run, dataset, indices, lat_batch if kind == "integer" else batch_size,
                                   pad=kind == "integer")
                progress(3, "PT2E: timing")
                step = "time it"
                with torch.no_grad():
                    latency = {"1": median_ms(lambda: run(example))[0],
                               str(lat_batch): median_ms(lambda: run(x_n))[0]}
    except ExportError as exc:  # export, prepare, calibrate or convert failed: already in plain words
        return RuntimeRow.unavailable(NAME, version, kind, str(exc))
    except Exception as exc:  # any failure is this target's, shown next to the others: never a traceback
        log.info("PT2E target failed while trying to %s", step, exc_info=True)
        return RuntimeRow.unavailable(NAME, version, kind, _failure_reason(step, exc, model))
    progress(5, "PT2E: done")
    if kind == "integer":
        notes.append(f"Latency and accuracy are the torch.compile'd model (Inductor, freezing: oneDNN int8 "
                     f"convolutions); compiling took {compile_s:.0f} s on this machine.")
    else:
        notes.append("Eager reference: every quantize/dequantize runs in float around float conv/linear ops, so this "
                     "latency is not PT2E's deployed speed; Inductor's int8 kernels need torch.compile"
                     + (f" ({compiled_note})." if compiled_note else "."))
    metrics = compare(outputs, fp32=fp32_logits, simulated=sim_logits, labels=labels, task=task)
    return RuntimeRow(name=NAME, version=version, kind=kind, top1=metrics["top1"], agreement=metrics["agreement"],
                      sim_agreement=metrics["sim_agreement"], max_abs_diff=metrics["max_abs_diff"], latency_ms=latency,
                      threads=threads or torch.get_num_threads(), fallbacks=fallbacks, notes=notes)


# -- the steps ------------------------------------------------------------------------------------------------
@dataclass
class PT2EModel:
    """A model quantized by PT2E: the converted graph and the observers that chose its ranges."""

    graph_module: torch.fx.GraphModule  # after convert_pt2e: quantize/dequantize ops, int8 weights as constants
    observers: dict[str, Counter[str]]  # "weights"/"activations" -> observer class name -> how many
    seconds: float  # export + prepare + calibration + convert


def quantize_pt2e(
    model: nn.Module, *, example: torch.Tensor, calib_dataset: torch.utils.data.Dataset,
    calib_indices: Sequence[int], batch_size: int,
) -> PT2EModel:
    """``model`` exported, prepared with the X86 default recipe, calibrated on ``calib_dataset[calib_indices]``, converted.

    ``model`` is not changed (torch.export copies what it captures). Raises :class:`ExportError`
    naming the step that failed, the layer where it can be found and the error's first line.
    """
    start = time.perf_counter()
    step = "export the model with torch.export"
    try:
        first_batch = load_batch(calib_dataset, list(calib_indices)[:1])[0]
        exported = _export(model, example, first_batch)
        step = "prepare it with X86InductorQuantizer (BatchNorm folding, observers)"
        prepared = _prepare(exported)
        step = "calibrate it on the calibration images"
        with torch.no_grad():
            for x, _ in batches(calib_dataset, calib_indices, batch_size):
                prepared(x)
        observers = _observers(prepared)
        step = "convert it (convert_pt2e)"
        converted = _convert(prepared)
    except Exception as exc:  # torch.export and torchao raise many types; one plain message for all of them
        log.info("PT2E failed while trying to %s", step, exc_info=True)
        raise ExportError(_failure_reason(step, exc, model)) from exc
    return PT2EModel(converted, observers, time.perf_counter() - start)


def _export(model: nn.Module, example: torch.Tensor, sample_batch: torch.Tensor) -> torch.fx.GraphModule:
    """``model`` exported with a dynamic batch dimension (and any other dimension the data varies in, e.g. text width).

    The example is doubled to batch 2: torch.export specializes a dimension of size 1.
    """
    from torch.export import Dim

    example2 = torch.cat([example[:1], example[:1]])
    dims = {0: Dim.AUTO}
    for d in range(1, example.dim()):
        if sample_batch.dim() == example.dim() and sample_batch.shape[d] != example.shape[d]:
            dims[d] = Dim.AUTO
    return torch.export.export(model, (example2,), dynamic_shapes=(dims,)).module()


def _prepare(exported: torch.fx.GraphModule) -> torch.fx.GraphModule:
    from torchao.quantization.pt2e.quantize_pt2e import prepare_pt2e
    from torchao.quantization.pt2e.quantizer.x86_inductor_quantizer import (
        X86InductorQuantizer,
        get_default_x86_inductor_quantization_config,
    )

    quantizer = X86InductorQuantizer()
    quantizer.set_global(get_default_x86_inductor_quantization_config())  # static, per-channel weights: the default
    return prepare_pt2e(exported, quantizer)


def _convert(prepared: torch.fx.GraphModule) -> torch.fx.GraphModule:
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e

    return convert_pt2e(prepared)


def _observers(prepared: torch.fx.GraphModule) -> dict[str, Counter[str]]:
    """Observer class names, split into those on weights (a constant input) and on activations."""
    found: dict[str, Counter[str]] = {"weights": Counter(), "activations": Counter()}
    for node in prepared.graph.nodes:
        if node.op == "call_module" and "activation_post_process" in str(node.target):
            role = "weights" if node.args and getattr(node.args[0], "op", None) == "get_attr" else "activations"
            found[role][type(prepared.get_submodule(str(node.target))).__name__] += 1
    return found


def _outputs(run: Callable[[torch.Tensor], torch.Tensor], dataset: torch.utils.data.Dataset, indices: Sequence[int],
             batch_size: int, *, pad: bool) -> torch.Tensor:
    """Outputs on ``dataset[indices]``; ``pad`` repeats the last sample so every batch has the compiled shape."""
    parts = []
    with torch.no_grad():
        for x, _ in batches(dataset, indices, batch_size):
            n = x.shape[0]
            if pad and n < batch_size:
                x = torch.cat([x, x[-1:].expand(batch_size - n, *x.shape[1:])])
            parts.append(run(x)[:n].float())
    return torch.cat(parts)


def _compiled(converted: torch.fx.GraphModule, example: torch.Tensor,
              x_n: torch.Tensor) -> tuple[Callable[[torch.Tensor], torch.Tensor], float, str | None]:
    """The Inductor-compiled model, compiled now at both timed shapes, and the seconds that took.

    If compiling fails: the eager model, and why compiling failed.
    """
    start = time.perf_counter()
    try:
        compiled = torch.compile(converted, dynamic=False)
        with _freezing(True), torch.no_grad(), warnings.catch_warnings():
            # Inductor's own oneDNN lowering copies a tensor the way torch warns about; not the user's to fix
            warnings.filterwarnings("ignore", message="To copy construct from a tensor")
            compiled(x_n)
            compiled(example)
    except Exception as exc:  # Inductor cannot lower something: keep the eager numbers, say why
        log.info("torch.compile of the PT2E model failed", exc_info=True)
        return converted, 0.0, f"torch.compile failed here: {type(exc).__name__}: {_first_line(exc)}"
    return compiled, time.perf_counter() - start, None


@contextlib.contextmanager
def _freezing(on: bool) -> Iterator[None]:
    """Inductor's ``freezing`` (weights as constants, prepacked for oneDNN int8) while compiled code may recompile."""
    if not on:
        yield
        return
    import torch._inductor.config as inductor_config

    with inductor_config.patch(freezing=True):
        yield


@contextlib.contextmanager
def _threads(threads: int | None) -> Iterator[None]:
    before = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(threads)
    try:
        yield
    finally:
        torch.set_num_threads(before)


# -- what the converted graph shows -----------------------------------------------------------------------------
def _target(node: torch.fx.Node) -> str:
    return str(node.target) if node.op == "call_function" else ""


def _layer(node: torch.fx.Node) -> str:
    """The module path a node came from (``block.dw``), else the node's own name."""
    stack = node.meta.get("nn_module_stack") or {}
    return str(list(stack.values())[-1][0]) if stack else node.name


def _arg(node: torch.fx.Node | None, i: int) -> torch.fx.Node | None:
    """``node``'s ``i``-th argument when it is another node."""
    if node is None or len(node.args) <= i:
        return None
    a = node.args[i]
    return a if isinstance(a, torch.fx.Node) else None


def _is_dequantized(node: Any) -> bool:
    return isinstance(node, torch.fx.Node) and _target(node).startswith((_DEQUANTIZE, _DEQUANTIZE_CHANNEL))


def findings(converted: torch.fx.GraphModule, observers: dict[str, Counter[str]]) -> tuple[list[str], list[dict[str, str]]]:
    """Plain-words notes on what the converted graph quantizes, and the compute layers it left in float."""
    nodes = list(converted.graph.nodes)
    quantizes = [n for n in nodes if _target(n).startswith(_QUANTIZE)]
    compute = [n for n in nodes if _target(n).startswith(_COMPUTE)]
    weighted = [n for n in compute if _target(n).startswith(("aten.conv", "aten.linear"))]
    per_channel = [w for w in (_arg(n, 1) for n in weighted) if w is not None and _target(w).startswith(_DEQUANTIZE_CHANNEL)]
    per_tensor = [w for w in (_arg(n, 1) for n in weighted) if w is not None and _target(w).startswith(_DEQUANTIZE)]
    zero_points = [getattr(converted, str(zp.target), None) for zp in (_arg(w, 2) for w in per_channel)
                   if zp is not None and zp.op == "get_attr"]
    symmetric = all(isinstance(z, torch.Tensor) and not z.any() for z in zero_points)
    notes = []
    ranges = sorted({(int(q.args[3]), int(q.args[4]), str(q.args[5]).replace("torch.", "")) for q in quantizes
                     if len(q.args) > 5})
    act_obs = ", ".join(sorted(observers["activations"])) or "none"
    w_obs = ", ".join(sorted(observers["weights"])) or "none"
    if ranges:
        lo, hi, dtype = ranges[0]
        reduce = (f"reduce_range on: {hi - lo + 1} levels, 7 bits of 8" if hi - lo + 1 <= 128
                  else "reduce_range off: all 256 levels")
        notes.append(f"Activations: {dtype} {lo}..{hi} per tensor with a zero point ({reduce}), ranges from "
                     f"{act_obs}; {len(quantizes)} quantize points. Weights: {len(per_channel)} of {len(weighted)} "
                     f"conv/linear layers int8 per output channel ({'symmetric' if symmetric else 'with zero points'})"
                     + (f", {len(per_tensor)} per tensor" if per_tensor else "") + f", ranges from {w_obs}.")
    fused, split = [], []
    for n in nodes:
        src = _arg(n, 0)
        if not _target(n).startswith(_CLAMPS) or src is None:
            continue
        if _target(src).startswith(_COMPUTE):
            fused.append(n)
        else:
            behind = _arg(_arg(src, 0), 0) if _target(src).startswith(_DEQUANTIZE) else None
            if behind is not None and _target(behind).startswith(_COMPUTE):
                split.append(n)  # conv -> quantize -> dequantize -> clamp
    if split:
        names = ", ".join(_layer(n) for n in split[:5]) + (" ..." if len(split) > 5 else "")
        notes.append(f"{len(split)} ReLU/ReLU6 are not fused with the conv before them ({names}): the conv output is "
                     "rounded to 8 bits over its whole range before the clamp, so part of the grid is spent on values "
                     "the clamp throws away. ptq_core fuses them and quantizes once, after the clamp.")
    elif fused:
        notes.append(f"All {len(fused)} ReLU/ReLU6 are fused with the conv/linear before them: one quantize after the "
                     "clamp, as ptq_core does (torch.ao's older FX x86 recipe put a quantize between conv and ReLU6 and "
                     "used reduce_range, which is what cost it accuracy on EfficientNet-Lite0).")
    elementwise = [n for n in nodes if _target(n).startswith(_ELEMENTWISE)]
    floaty = [n for n in elementwise
              if sum(isinstance(a, torch.fx.Node) for a in n.args) == 2
              and not all(_is_dequantized(a) for a in n.args if isinstance(a, torch.fx.Node))]
    if floaty:
        names = ", ".join(list(dict.fromkeys(_layer(n) for n in floaty))[:5]) + (" ..." if len(floaty) > 5 else "")
        ops = "adds" if all("add" in _target(n) for n in floaty) else "adds/multiplies"
        sources = sorted({_target(a).split(".")[1] for n in floaty for a in n.args
                          if isinstance(a, torch.fx.Node) and not _is_dequantized(a) and a.op == "call_function"})
        notes.append(f"{len(floaty)} of {len(elementwise)} elementwise {ops} ({names}) read an input that is never "
                     f"quantized ({', '.join(sources) or 'a float'} output) and compute in float; their result is "
                     "quantized only where a conv/linear reads it. ptq_core quantizes both inputs and the result (as "
                     "onnxruntime's QLinearAdd does), so here these tensors keep more precision than in ptq_core's plan.")
    fallbacks = [{"layer": _layer(n), "reason": f"{_target(n).split('.')[1]} runs in float: X86InductorQuantizer's "
                  "default recipe does not quantize its input" + (" or weight" if len(n.args) > 1 else "")}
                 for n in compute if not _is_dequantized(n.args[0])]
    if fallbacks:
        notes.append(f"{len(fallbacks)} conv/linear/matmul layers run in float (listed as fallbacks).")
    bn_left = sum(1 for n in nodes if "batch_norm" in _target(n))
    if bn_left:
        notes.append(f"{bn_left} BatchNorm layers were not folded into a convolution and run in float.")
    return notes, fallbacks


# -- failures in plain words -------------------------------------------------------------------------------------
def _first_line(exc: BaseException) -> str:
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    return (lines[0] if lines else type(exc).__name__)[:300]


def _where(exc: BaseException, model: nn.Module) -> str:
    """The innermost module of ``model`` whose forward was running when ``exc`` was raised, with its source line."""
    names = {id(m): name for name, m in model.named_modules()}
    hit = None
    seen: set[int] = set()
    chain: BaseException | None = exc
    while chain is not None and id(chain) not in seen:
        seen.add(id(chain))
        for frame, lineno in traceback.walk_tb(chain.__traceback__):
            owner = frame.f_locals.get("self")
            if owner is not None and id(owner) in names:
                hit = (names[id(owner)], type(owner).__name__, frame.f_code.co_filename, lineno)
        if hit is not None:
            break
        chain = chain.__cause__ or chain.__context__
    if hit is None:
        return ""
    name, cls, filename, lineno = hit
    layer = f"layer {name!r} ({cls})" if name else f"the model's own forward ({cls})"
    return f"in {layer}, {filename.rsplit('/', 1)[-1]} line {lineno}: "


def _failure_reason(step: str, exc: BaseException, model: nn.Module) -> str:
    text = f"{type(exc).__name__} {exc}"
    plain = ""
    if "data-dependent" in text or "GuardOnDataDependent" in text:
        plain = ("the model branches on the values of a tensor (data-dependent control flow), which torch.export "
                 "cannot capture as one graph; ")
    return f"PT2E could not {step}: {_where(exc, model)}{plain}{type(exc).__name__}: {_first_line(exc)}"
