"""Run exported models for real: the integer runtime's logits and latency, checked against the simulation.

What lives here: :func:`fused_ops` and :func:`verify_kernels` (which integer kernels onnxruntime
actually chose, read from its optimized graph), the latency helpers, :class:`RuntimeCache` (the
FP32 export, session and latencies, measured once per model) and :func:`runtime_check`, which
``Explorer.evaluate`` calls with plain data (prepared model, plan, samples, simulated logits):
export FP32 and quantized models to a temporary folder, run the quantized one on the evaluation
samples, compare with the simulated logits, and measure FP32 vs quantized latency at batch 1 and
batch N (plus PyTorch FP32 for reference). Not here: writing the ONNX file
(:mod:`ptq_core.onnx.export`), making sessions (:mod:`ptq_core.onnx.session`), the median timer
(:mod:`ptq_core.timing`).

``runtime_check`` never raises: a failed export or session becomes a warning naming the layer
and the problem, and the Result keeps its simulated latency.

What it adds to a Result (``evaluation.runtime = "onnxruntime"``, the default)::

    metrics.runtime_agreement         fraction of evaluation samples where simulation and onnxruntime pick the same class
    metrics.runtime_matching_samples  that count ("simulation matches onnxruntime on N/M samples", M = num_eval_samples)
    metrics.runtime_max_abs_diff      largest |simulated logit - onnxruntime logit| over all samples and classes
    metrics.runtime_top1              top-1 of the onnxruntime model (labelled data only)
    size.onnx_bytes, size.onnx_fp32_bytes   the exported files on disk, next to the computed quant_bytes
    latency = {"kind": "measured", "runtime": "onnxruntime 1.31.1 CPU", "threads": 2,
               "unit": "milliseconds per batch, median of repeats after warm-up",
               "batches": {"1": {"fp32_ms", "quant_ms", "torch_fp32_ms", "speedup", "repeats"}, "32": {...}},
               "integer_kernels": [{"layer", "kernel", "expected", "verified"}],   # read from onnxruntime's optimized graph
               "float_fallback": [{"layer", "reason"}], "onnx_bytes", "onnx_fp32_bytes", "opset",
               "int8_kernels": how onnxruntime multiplies int8 on this CPU (no VNNI: exact U8U8 kernels),
               "activation_type", "weight_type", "simulated": {the simulated latency block, labelled simulated}}

``fp32_ms`` is the FP32 export in onnxruntime, ``quant_ms`` the quantized export, ``torch_fp32_ms``
the original model in eager PyTorch, all with the same thread count; batch N = min(32, samples).
"""

from __future__ import annotations

import logging
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import onnx
import onnxruntime as ort
import torch
from torch import nn

from ..calibration import batches
from ..errors import ExportError, PTQError
from ..metrics import embedding_metrics
from ..progress import StepFn
from ..timing import LATENCY_BUDGET_S, median_ms
from .export import export_float_onnx, export_onnx
from .report import ExportReport
from .session import input_feed, int8_kernel_note, make_runtime_session, run_logits, runtime_name

if TYPE_CHECKING:
    from ..graph import PreparedModel
    from ..quantize import QuantPlan

log = logging.getLogger(__name__)

MAX_LATENCY_BATCH = 32  # batch N = min(32, evaluation size): large enough to show batching, small enough for big models
# Ops that mean "this unit runs on integers" in onnxruntime's optimized graph.
INTEGER_OPS = {
    "QLinearConv", "QGemm", "QLinearMatMul", "MatMulNBits", "QLinearAdd", "QLinearMul", "QLinearConcat",
    "QLinearAveragePool", "QLinearGlobalAveragePool", "DynamicQuantizeMatMul", "MatMulIntegerToFloat",
    "MatMulInteger", "ConvInteger", "NhwcQLinearConv",
}


def torch_latency_ms(model: nn.Module, x: torch.Tensor, *, budget_s: float = LATENCY_BUDGET_S) -> tuple[float, int]:
    with torch.inference_mode():
        return median_ms(lambda: model(x), budget_s=budget_s)


def session_latency_ms(session: ort.InferenceSession, x: torch.Tensor, *, budget_s: float = LATENCY_BUDGET_S) -> tuple[float, int]:
    feed = input_feed(session, x)
    return median_ms(lambda: session.run(None, feed), budget_s=budget_s)


def fused_ops(optimized_path: str | Path) -> dict[str, str]:
    """Node name -> op type in onnxruntime's optimized graph (``optimized_model_filepath``)."""
    model = onnx.load(str(optimized_path), load_external_data=False)
    return {n.name: n.op_type for n in model.graph.node}


def _find(ops: dict[str, str], node: str) -> str | None:
    """The op onnxruntime made of ``node``: same name, or the name with a fusion/layout suffix."""
    if node in ops:
        return ops[node]
    for name, op in ops.items():
        if name.startswith(node + "_token") or name.startswith(node + "_nchwc") or name.startswith(node + "_quant"):
            return op
    return None


def verify_kernels(report: ExportReport, ops: dict[str, str]) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
    """Integer kernels and float fallbacks as onnxruntime actually ran them.

    A unit the export expected on integers but which onnxruntime left in float moves to the
    fallbacks with the op it ran; a unit whose node cannot be found keeps the prediction, marked.
    """
    kernels: list[dict[str, str]] = []
    fallback = list(report.float_fallback)
    for row in report.integer_kernels:
        layer = row["layer"]
        node = report.nodes.get(layer)
        op = _find(ops, node) if node is not None else None
        if op is None:
            kernels.append({**row, "verified": "no (node renamed by onnxruntime)"})
        elif op in INTEGER_OPS:
            kernels.append({"layer": layer, "kernel": op, "expected": row["kernel"], "verified": "yes"})
        else:
            fallback.append({"layer": layer, "reason": f"onnxruntime did not fuse it into an integer kernel (ran {op} in float)"})
    return kernels, fallback


# -- the check Explorer.evaluate runs ----------------------------------------------------------------------
@dataclass
class RuntimeCheck:
    """What the runtime adds to a Result: metrics, a measured latency block, sizes, warnings."""

    metrics: dict[str, Any] = field(default_factory=dict)
    latency: dict[str, Any] | None = None  # None: keep the simulated latency
    size: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0
    logits: torch.Tensor | None = None  # onnxruntime's outputs on the evaluation samples (None when it did not run)


@dataclass
class _FloatReference:
    """The FP32 export of one prepared model, its session and its latencies (they do not depend on the config)."""

    folder: tempfile.TemporaryDirectory[str]
    onnx_bytes: int
    session: ort.InferenceSession
    ms: dict[tuple[str, int], tuple[float, int]] = field(default_factory=dict)  # (runtime, batch) -> (ms, repeats)


class RuntimeCache:
    """What the runtime check keeps between configs of one model: the FP32 export, its session, FP32 latencies.

    None of it depends on the config, only on the prepared model (BN folded or not) and the
    thread count, so it is exported and measured once. The Explorer makes one on first use and
    owns it; the temporary folder holding the FP32 file goes with it.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()  # two sessions checking at once export the FP32 model once
        self._float: dict[tuple[bool, str, int], _FloatReference] = {}

    def float_reference(self, prepared: PreparedModel, threads: int) -> _FloatReference:
        key = (prepared.fold_batchnorm, prepared.variant, threads)
        with self._lock:
            if key not in self._float:
                folder = tempfile.TemporaryDirectory(prefix="ptq_fp32_")
                path = Path(folder.name) / "fp32.onnx"
                size = export_float_onnx(prepared, path)
                self._float[key] = _FloatReference(folder, size, make_runtime_session(path, threads=threads))
            return self._float[key]


def runtime_check(
    prepared: PreparedModel,
    plan: QuantPlan,
    *,
    model: nn.Module,
    dataset: torch.utils.data.Dataset,
    indices: list[int],
    batch_size: int,
    sim_logits: torch.Tensor,
    labels: torch.Tensor | None,
    simulated_latency: dict[str, Any],
    cache: RuntimeCache,
    on_step: StepFn | None = None,
    task: str = "classification",
) -> RuntimeCheck:
    """Export ``plan`` on ``prepared``, run it in onnxruntime, compare with the simulation, measure latency.

    ``dataset[indices]`` in batches of ``batch_size`` are the evaluation samples the simulation
    gave ``sim_logits`` for (``labels``: their labels, None when unlabelled); ``model`` is the
    original FP32 module, timed in eager PyTorch for reference; ``simulated_latency`` is kept in
    the measured block, labelled simulated; ``cache`` holds the FP32 export and its latencies;
    ``on_step`` is called after each batch run in onnxruntime; ``task`` "embedding": outputs are
    compared by cosine and nearest neighbours (:func:`ptq_core.metrics.embedding_metrics`), not by
    their argmax. Never raises a failure of the export
    or the runtime: it becomes a warning. What ``on_step`` raises to stop the run (a ``BaseException``, as
    Streamlit's rerun is) propagates.
    """
    start = time.perf_counter()
    out = RuntimeCheck()
    try:
        _check(out, prepared, plan, model, dataset, indices, batch_size, sim_logits, labels, simulated_latency, cache, on_step,
               task)
    except PTQError as exc:
        out.warnings.append(f"onnxruntime check skipped: {exc}")
    except Exception as exc:  # a failed export/runtime must never lose the simulated run
        log.exception("onnxruntime check failed")
        out.warnings.append(f"onnxruntime check failed ({type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}); "
                            "latency shown is simulated")
    out.seconds = time.perf_counter() - start
    return out


def _check(
    out: RuntimeCheck, prepared: PreparedModel, plan: QuantPlan, model: nn.Module, dataset: torch.utils.data.Dataset,
    indices: list[int], batch_size: int, sim_logits: torch.Tensor, labels: torch.Tensor | None,
    simulated_latency: dict[str, Any], cache: RuntimeCache, on_step: StepFn | None, task: str,
) -> None:
    threads = torch.get_num_threads()
    n = min(MAX_LATENCY_BATCH, len(indices))
    latency_batches = sorted({1, n})
    # Steps, so a caller that stops on progress (a newer control change) stops between them: export, session,
    # each batch run, each latency measurement.
    run_batches = -(-len(indices) // batch_size)
    total = 2 + run_batches + len(latency_batches)

    def step(done: int) -> None:
        if on_step is not None:
            on_step(done, total)

    with tempfile.TemporaryDirectory(prefix="ptq_export_") as tmp:
        path = Path(tmp) / "quantized.onnx"
        report = export_onnx(prepared, plan, path)
        step(1)
        optimized = Path(tmp) / "quantized.optimized.onnx"
        try:
            session = make_runtime_session(path, threads=threads, optimized_path=optimized)
        except Exception as exc:
            raise ExportError(f"onnxruntime cannot load the exported model: {str(exc).splitlines()[0][:300]}") from None
        step(2)
        kernels, fallback = verify_kernels(report, fused_ops(optimized))
        ort_logits = run_logits(session, dataset, indices, batch_size, lambda done, _: step(2 + done))
        out.logits = ort_logits
        if task == "embedding":  # the runtime's embeddings against the simulation's: cosine and nearest neighbours
            em = embedding_metrics(sim_logits, ort_logits, labels)
            out.metrics = {
                "runtime_cosine_mean": em["cosine_mean"], "runtime_cosine_min": em["cosine_min"],
                "runtime_agreement": em["neighbour_agreement"],
                "runtime_matching_samples": round(em["neighbour_agreement"] * len(indices)),
                "runtime_max_abs_diff": float((ort_logits - sim_logits).abs().max()),
            }
            if "quant_top1" in em:
                out.metrics["runtime_top1"] = em["quant_top1"]  # k-NN topic accuracy of the runtime's embeddings
        else:
            same = ort_logits.argmax(dim=1) == sim_logits.argmax(dim=1)
            out.metrics = {
                "runtime_agreement": float(same.float().mean()),
                "runtime_matching_samples": int(same.sum()),
                "runtime_max_abs_diff": float((ort_logits - sim_logits).abs().max()),
            }
            if labels is not None:
                out.metrics["runtime_top1"] = float((ort_logits.argmax(dim=1) == labels).float().mean())
        fp32 = cache.float_reference(prepared, threads)
        batch_rows: dict[str, dict[str, Any]] = {}
        for k, bs in enumerate(latency_batches):
            x = next(iter(batches(dataset, indices[:bs], bs)))[0]
            if ("ort", bs) not in fp32.ms:
                fp32.ms[("ort", bs)] = session_latency_ms(fp32.session, x)
                fp32.ms[("torch", bs)] = torch_latency_ms(model, x)
            q_ms, q_rep = session_latency_ms(session, x)
            f_ms, f_rep = fp32.ms[("ort", bs)]
            t_ms, _ = fp32.ms[("torch", bs)]
            batch_rows[str(bs)] = {
                "fp32_ms": f_ms, "quant_ms": q_ms, "torch_fp32_ms": t_ms,
                "speedup": f_ms / q_ms if q_ms > 0 else None, "repeats": min(q_rep, f_rep),
            }
            step(3 + run_batches + k)
    out.latency = {
        "kind": "measured",
        "runtime": runtime_name(),
        "threads": threads,
        "unit": "milliseconds per batch, median of repeats after warm-up",
        "batches": batch_rows,
        "integer_kernels": kernels,
        "float_fallback": fallback,
        "onnx_bytes": report.onnx_bytes,
        "onnx_fp32_bytes": fp32.onnx_bytes,
        "opset": report.opset,
        "int8_kernels": int8_kernel_note(),
        "activation_type": report.activation_type,
        "weight_type": report.weight_type,
        "simulated": simulated_latency,
    }
    out.size = {"onnx_bytes": report.onnx_bytes, "onnx_fp32_bytes": fp32.onnx_bytes}
    by_reason: dict[str, list[str]] = {}
    for row in fallback:
        if not row["reason"].startswith("kept in float by the config"):
            by_reason.setdefault(row["reason"], []).append(row["layer"])
    for reason, layers in by_reason.items():
        named = ", ".join(layers[:8]) + (f" and {len(layers) - 8} more" if len(layers) > 8 else "")
        out.warnings.append(f"onnxruntime runs {named} in float: {reason}")
