"""onnxruntime sessions: the one place that sets their options and makes them.

What lives here: :data:`PROVIDER`, :func:`session_options` (one builder for both kinds; the
integer kind with exact kernels on CPUs without VNNI, see :func:`int8_kernel_note`),
:func:`make_runtime_session` (the integer runtime: every graph optimization, QDQ fusion
included, so QuantizeLinear/DequantizeLinear pairs become integer kernels),
:func:`make_simulation_session` (the simulated model: QDQ fusion off, float arithmetic only,
onnxruntime's optimized graph rewritten by :mod:`ptq_core.onnx.layout` and scheduled),
:func:`infer_shapes` (what the layout rewrite needs), :func:`run_logits` and
:func:`runtime_name`.

Not here: the models a session runs (:mod:`ptq_core.onnx.export`, :mod:`ptq_core.onnx.simulate`),
the rewrite itself (:mod:`ptq_core.onnx.layout`), timing (:mod:`ptq_core.timing`).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch

from ..calibration import chunks, load_batch
from ..parallel import map_ordered
from ..progress import StepFn
from .layout import elide_reorders, schedule

PROVIDER = "CPUExecutionProvider"
X64_PRECISION = "session.x64quantprecision"
_VNNI_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")


def cpu_flags() -> set[str]:
    """The CPU's feature flags as Linux reports them (empty elsewhere)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def int8_kernel_note(flags: set[str] | None = None) -> str:
    """How onnxruntime multiplies 8-bit integers on this CPU, in one sentence for the Result and the export report."""
    flags = cpu_flags() if flags is None else flags
    if not flags:
        return "integer kernels chosen by onnxruntime for this CPU (its features could not be read)"
    if any(f in flags for f in _VNNI_FLAGS):
        return "this CPU has VNNI/AMX: onnxruntime's fast U8S8 integer kernels are exact here"
    return (f"this CPU has no VNNI ({'AVX-512' if 'avx512f' in flags else 'AVX2' if 'avx2' in flags else 'SSE'}): "
            f"onnxruntime's default U8S8 kernels can saturate here, so the check runs with {X64_PRECISION}=1 "
            "(exact U8U8 kernels, slower); deploy with that session option or on a CPU with VNNI")


def runtime_name() -> str:
    return f"onnxruntime {ort.__version__} CPU"


def needs_exact_kernels(flags: set[str] | None = None) -> bool:
    """Whether onnxruntime's default U8S8 kernels may saturate on this CPU (no VNNI/AMX, or flags unknown)."""
    flags = cpu_flags() if flags is None else flags
    return not any(f in flags for f in _VNNI_FLAGS)


def session_options(
    threads: int, *, level: ort.GraphOptimizationLevel = ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    qdq_fusion: bool = True, optimized_path: str | Path | None = None,
) -> ort.SessionOptions:
    """``threads`` intra-op threads, one inter-op thread, sequential execution, optimizations at ``level``.

    ``qdq_fusion=False`` keeps every QuantizeLinear/DequantizeLinear pair a float op (the
    simulation); ``optimized_path`` is where onnxruntime writes the graph it optimized.
    """
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = level
    so.log_severity_level = 3  # the NCHWc "hardware specific" notice when saving the optimized graph is expected
    if not qdq_fusion:
        so.add_session_config_entry("session.disable_quant_qdq", "1")  # no QDQ -> integer-kernel fusion: float arithmetic only
    elif needs_exact_kernels():
        # x86 CPUs without VNNI (AVX2, AVX-512 without VNNI) sum pairs of U8xS8 products in saturating int16 in
        # onnxruntime's default kernels: on an AVX2 AMD EPYC the exported digits CNN came out 20 codes and 2.6
        # logits from the simulation. This option selects exact U8U8 kernels there. Not set where VNNI or AMX
        # make the default kernels exact: it is not free there (EfficientNet-Lite0, AVX512-VNNI AMD EPYC, one
        # thread, batch 1: 10.8 ms with it, 5.4 ms without, outputs bit-identical).
        so.add_session_config_entry(X64_PRECISION, "1")
    if optimized_path is not None:
        so.optimized_model_filepath = str(optimized_path)
    return so


# -- the integer runtime ------------------------------------------------------------------------------
def make_runtime_session(path: str | Path, *, threads: int, optimized_path: str | Path | None = None) -> ort.InferenceSession:
    """A CPU session with every graph optimization on (QDQ fusion included) and ``threads`` intra-op threads."""
    return ort.InferenceSession(str(path), session_options(threads, optimized_path=optimized_path), providers=[PROVIDER])


def input_feed(session: ort.InferenceSession, x: torch.Tensor) -> dict[str, np.ndarray]:
    """What ``session`` is fed for the batch ``x``: one float32 input, or a text model's ids and mask (int64)."""
    inputs = [i.name for i in session.get_inputs()]
    if len(inputs) == 2 and not x.is_floating_point():  # tokens [N, 2, L] -> input_ids, attention_mask
        return {inputs[0]: x[:, 0].numpy().astype(np.int64), inputs[1]: x[:, 1].numpy().astype(np.int64)}
    return {inputs[0]: x.numpy() if not x.is_floating_point() else x.numpy().astype(np.float32)}


def run_logits(session: ort.InferenceSession, dataset: torch.utils.data.Dataset, indices: list[int], batch_size: int,
               on_step: StepFn | None = None) -> torch.Tensor:
    """float32 outputs of ``session`` on ``dataset[indices]``, in order, batched like the simulation.

    Batches run side by side (:func:`ptq_core.parallel.map_ordered`: ``InferenceSession.run`` may be
    called from several threads at once); the outputs are put together in batch order.
    """
    def run(chunk: list[int]) -> torch.Tensor:
        x, _ = load_batch(dataset, chunk)
        return torch.from_numpy(session.run(None, input_feed(session, x))[0]).float()

    return torch.cat(map_ordered(run, chunks(indices, batch_size), on_step=on_step))


# -- the simulated model --------------------------------------------------------------------------------
def _optimized(model: onnx.ModelProto, threads: int, level: ort.GraphOptimizationLevel) -> tuple[ort.InferenceSession, onnx.ModelProto]:
    """A session for ``model`` and the graph onnxruntime made of it at ``level`` (its offline-optimization output)."""
    with tempfile.TemporaryDirectory(prefix="ptq_ort_simulation_") as tmp:
        path = os.path.join(tmp, "optimized.onnx")
        options = session_options(threads, level=level, qdq_fusion=False, optimized_path=path)
        session = ort.InferenceSession(model.SerializeToString(), options, providers=[PROVIDER])
        return session, onnx.load(path)


def infer_shapes(model: onnx.ModelProto) -> dict[str, tuple[Any, ...] | None]:
    """Tensor name -> shape, inferred after onnxruntime's constant folding (the exporter computes pads with
    subgraphs that leave spatial sizes unknown to ONNX shape inference until folded)."""
    _, folded = _optimized(model, 1, ort.GraphOptimizationLevel.ORT_ENABLE_BASIC)
    inferred = onnx.shape_inference.infer_shapes(folded)
    shapes: dict[str, tuple[Any, ...] | None] = {}
    for vi in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
        t = vi.type.tensor_type
        shapes[vi.name] = tuple(d.dim_param or d.dim_value for d in t.shape.dim) if t.HasField("shape") else None
    return shapes


def make_simulation_session(model: onnx.ModelProto, shapes: dict[str, Any], threads: int, *, outputs: Sequence[str] = (),
                            layout: bool = True) -> tuple[ort.InferenceSession, int]:
    """An optimized CPU session for the simulated ``model``, rewritten by :mod:`ptq_core.onnx.layout`.

    onnxruntime optimizes the graph (level ALL: folding, fusions, blocked NCHWc convolutions; QDQ
    fusion off) and writes it out; the quantizer chains are moved into the blocked layout, the
    nodes scheduled in ``outputs`` order, and the result loaded with no further optimization.
    Returns the session and the number of layout round trips removed. ``layout=False``:
    onnxruntime's session as is.
    """
    if not layout:
        options = session_options(threads, qdq_fusion=False)
        return ort.InferenceSession(model.SerializeToString(), options, providers=[PROVIDER]), 0
    first, optimized = _optimized(model, threads, ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
    del first
    removed = elide_reorders(optimized, shapes)
    schedule(optimized, [*outputs, *(o.name for o in optimized.graph.output)])
    options = session_options(threads, level=ort.GraphOptimizationLevel.ORT_DISABLE_ALL, qdq_fusion=False)  # optimized already
    options.execution_order = ort.ExecutionOrder.PRIORITY_BASED  # node order as scheduled (lowest index first when ready)
    return ort.InferenceSession(optimized.SerializeToString(), options, providers=[PROVIDER]), removed
