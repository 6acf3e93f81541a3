"""The onnxruntime evaluation backend: the SAME simulated (fake-quantized) model, run by onnxruntime.

``evaluation.backend = "onnxruntime"`` makes :meth:`ptq_core.pipeline.Explorer.evaluate` run the
quantized forward, the per-layer error probe and the simulated latency here instead of in PyTorch
eager; calibration, the plan, the FP32 reference and every metric stay as they are. What lives
here: :class:`OrtBackend` (one Explorer's exported structures and sessions, bounded, and the
evaluation itself, behind the :class:`ptq_core.backends.Backend` interface). Not here: the
batch schedule it shares with PyTorch (:func:`ptq_core.backends.run_batches`), the graph and why its
numbers are the simulation's (:mod:`ptq_core.simulation`), its export
(:mod:`ptq_core.onnx.simulate`), sessions (:mod:`ptq_core.onnx.session`), and the integer QDQ
export and the check on a real integer runtime (:mod:`ptq_core.onnx.export`,
:mod:`ptq_core.onnx.runtime`), which answer another question (what a deployed INT8 model does).
Measured on EfficientNet-Lite0 (2 cores, quiet): a re-evaluation after a clipping change, 372
images plus the 128-image probe, takes 4.0 s against 38 s in PyTorch (both about twice that
when other jobs share the cores; ``benchmarks/bench_real_models.py``).

One export per structure, values fed per config (:mod:`ptq_core.onnx.simulate`)
    The structure is the prepared model plus which activation points carry a quantizer and of
    what kind (static, or dynamic with its settings). It is
    traced once into an ONNX graph of the quantized model, and into one holding the FP32 and the
    quantized graph side by side only when the per-layer errors are asked for (the probe; its
    session is made then too). What a config changes is a value:

    * static quantizer values are graph INPUTS (``1/scale``, ``scale``, zero point, code range):
      a new clipping method, percentile, bit width, scheme or calibration subset costs new
      feeds, no export, no session;
    * weights are initializers, set per weight setting (a session per setting, no export). As
      graph inputs onnxruntime can neither prepack them nor run its blocked NCHWc convolutions:
      measured 15.3 ms/image for the quantized EfficientNet-Lite0 against 9.9 ms as initializers
      (8.2 ms with the layout pass below).

Arithmetic (:mod:`ptq_core.simulation`)
    The simulation's, op for op, hence its numbers; :mod:`ptq_core.simulation` says how, and by
    how much the convolutions' summation order moves them. A dynamic input's NaN/Inf check
    (``sum(x * 0)``, one scalar per dynamic point) is checked after each batch, in network
    order, and raises the same :class:`CalibrationError` as PyTorch.

Layout and schedule (:mod:`ptq_core.onnx.layout`)
    onnxruntime converts back and forth between its blocked layout and NCHW around every
    quantizer, a third of the quantized forward; the layout pass keeps the quantizer chains on
    the blocked tensors (bit-identical, tested). The probe graph is scheduled layer by layer, so
    FP32 and quantized tensors are freed as it goes (onnxruntime's own order ran one whole graph
    first: 11.5 GB at batch 64, against 3.4 GB scheduled).

Batches and memory
    Plans whose quantizers work per sample (static, weight-only, dynamic per token) run 8 images
    at a time (:data:`PER_SAMPLE_BATCH`; same logits, faster, a fraction of the memory); a plan
    with a dynamic per-tensor range runs in the simulation's batches, so ranges see the same
    images (:func:`ptq_core.backends.run_batches`). Sessions use one intra-op thread
    (:data:`SESSION_THREADS`) and :func:`ptq_core.parallel.workers` batches run at once, put
    together in batch order afterwards, so the numbers do not depend on timing. Every probe tap
    is reduced inside the graph (``ReduceSumSquare`` of
    ``f - q`` and of ``f``): two scalars per tap and batch leave onnxruntime (the PyTorch probe
    holds every tapped tensor of a batch). Measured on EfficientNet-Lite0: peak 2.1 GB for the
    process against 10.7 GB with the PyTorch probe. Sessions are cached per weight setting,
    :data:`SESSION_CACHE_ENTRIES` of them.

CPU only: a config asking for CUDA with this backend is rejected by the config.
"""

from __future__ import annotations

import logging
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from ..backends import BatchResult, SimulatedRun, per_sample, run_batches
from ..calibration import load_batch
from ..errors import CalibrationError
from ..graph import PreparedModel
from ..progress import StepFn
from ..quantize import QuantPlan
from ..simulation import INPUT, LOGITS, static_feeds, structure_key, weight_key, weight_values
from ..timing import SIMULATED_BUDGET_S, median_ms
from .export import export_float_onnx
from .session import infer_shapes, input_feed, make_simulation_session, runtime_name
from .simulate import Structure, export_structure, with_initializers

log = logging.getLogger(__name__)

STRUCTURE_CACHE_ENTRIES = 6  # exported graphs kept per Explorer (each holds one FP32 weight copy)
SESSION_CACHE_ENTRIES = 4  # sessions kept per Explorer, one per (graph, weight setting): ~0.3 GB each on EfficientNet-Lite0
# Images per onnxruntime run when every quantizer is per sample (static, weight-only, dynamic per token):
# measured on EfficientNet-Lite0, 8 runs faster than 64 (its tensors stay in cache: 8 vs 10.6 ms/image
# forward, 22 vs 30 with the probe), needs a third of the memory, and gives bit-identical logits.
# Dynamic per-tensor ranges span a batch, so those plans run in the simulation's own batches.
PER_SAMPLE_BATCH = 8
# Intra-op threads per session; ptq_core.parallel.workers() batches run at once instead. Measured on
# EfficientNet-Lite0 (2 cores): 3.9 s against 4.8 s for the same batches one at a time on two
# threads (elementwise ops and reductions keep two threads of one run less busy). Same logits.
SESSION_THREADS = 1


@dataclass
class _Session:
    session: ort.InferenceSession
    outputs: list[str]
    reorders_removed: int
    quant_ms: float | None = None  # simulated latency at batch 1, measured on first use


class OrtBackend:
    """The exported structures and sessions of one Explorer, bounded, behind one lock.

    Sessions are shared: ``InferenceSession.run`` may be called from many threads at once. The
    lock covers only building (so two sessions asking for the same structure export it once).
    """

    name = "onnxruntime"
    per_sample_batch = PER_SAMPLE_BATCH

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._structures: OrderedDict[tuple[Any, ...], Structure] = OrderedDict()
        self._sessions: OrderedDict[tuple[Any, ...], _Session] = OrderedDict()
        self._fp32_ms: dict[tuple[Any, ...], float] = {}

    def structure(self, prepared: PreparedModel, plan: QuantPlan, *, probe: bool) -> tuple[Structure, float]:
        """The exported graph of ``plan`` (with or without the probe) and the seconds spent exporting it now (0.0: cached)."""
        key = (structure_key(prepared, plan), probe)
        with self._lock:
            if key in self._structures:
                self._structures.move_to_end(key)
                return self._structures[key], 0.0
            start = time.perf_counter()
            structure = export_structure(prepared, plan, probe=probe)
            structure.shapes = infer_shapes(structure.model)  # not shared yet: filled before it is cached
            structure.export_s = time.perf_counter() - start
            self._structures[key] = structure
            while len(self._structures) > STRUCTURE_CACHE_ENTRIES:
                self._structures.popitem(last=False)
            return structure, structure.export_s

    def session(self, structure: Structure, prepared: PreparedModel, plan: QuantPlan) -> tuple[_Session, float]:
        """The session of ``structure`` with ``plan``'s weights as initializers, and the seconds spent making it now."""
        key = (structure.key, weight_key(plan))
        with self._lock:
            if key in self._sessions:
                self._sessions.move_to_end(key)
                return self._sessions[key], 0.0
            start = time.perf_counter()
            model = with_initializers(structure.model, weight_values(structure.weight_inputs, prepared, plan))
            taps = [name for _, _, signal, noise in structure.taps for name in (signal, noise)]
            session, removed = make_simulation_session(model, structure.shapes, SESSION_THREADS, outputs=taps)
            made = _Session(session, [o.name for o in session.get_outputs()], removed)
            self._sessions[key] = made
            while len(self._sessions) > SESSION_CACHE_ENTRIES:
                self._sessions.popitem(last=False)
            return made, time.perf_counter() - start

    def fp32_ms(self, prepared: PreparedModel, x: np.ndarray) -> float:
        """Median ms of the FP32 (BN-folded) model in onnxruntime on ``x``, measured once per prepared model and shape."""
        key = (prepared.fold_batchnorm, prepared.variant, x.shape)
        with self._lock:
            if key not in self._fp32_ms:
                with tempfile.TemporaryDirectory(prefix="ptq_fp32_") as tmp:
                    path = Path(tmp) / "fp32.onnx"
                    export_float_onnx(prepared, path)
                    options = ort.SessionOptions()
                    options.intra_op_num_threads, options.inter_op_num_threads = SESSION_THREADS, 1
                    options.log_severity_level = 3
                    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
                feed = input_feed(session, torch.from_numpy(x))  # a text model's FP32 export takes ids and mask
                run = lambda: session.run(None, feed)  # noqa: E731
                self._fp32_ms[key] = median_ms(run, budget_s=SIMULATED_BUDGET_S, warmup=1)[0]
            return self._fp32_ms[key]

    def evaluate(
        self, *, prepared: PreparedModel, plan: QuantPlan, dataset: torch.utils.data.Dataset, indices: Sequence[int],
        probe_indices: Sequence[int], batch_size: int, model: nn.Module, example: torch.Tensor, device: torch.device,
        on_step: StepFn | None = None,
    ) -> SimulatedRun:
        """Quantized logits on ``dataset[indices]`` and the per-layer errors on ``probe_indices`` (the probe graph and
        its session are made only when there are any). ``on_step`` is called from the calling thread only."""
        forward, export_s = self.structure(prepared, plan, probe=False)
        fwd_session, session_s = self.session(forward, prepared, plan)
        probe: Structure | None = None
        probe_session: _Session | None = None
        if probe_indices:
            probe, probe_export_s = self.structure(prepared, plan, probe=True)
            probe_session, probe_session_s = self.session(probe, prepared, plan)
            export_s, session_s = export_s + probe_export_s, session_s + probe_session_s
        feeds = static_feeds(forward.static_inputs, plan)

        def run_batch(chunk: list[int], with_probe: bool) -> BatchResult:
            start = time.perf_counter()
            x, _ = load_batch(dataset, chunk)
            graph, made = (probe, probe_session) if with_probe and probe is not None else (forward, fwd_session)
            assert made is not None
            outs = dict(zip(made.outputs, made.session.run(None, {INPUT: x.numpy(), **feeds}), strict=True))
            for point, check in graph.dynamic_checks:  # what DynamicFakeQuantize checks, in network order
                if not np.isfinite(outs[check]):
                    raise CalibrationError(f"{point}: activation contains NaN or Inf")
            sums = [(float(outs[s]), float(outs[n])) for _, _, s, n in graph.taps] if with_probe else []
            return BatchResult(torch.from_numpy(outs[LOGITS]).float(), sums, time.perf_counter() - start)

        bs = min(batch_size, PER_SAMPLE_BATCH) if per_sample(plan) else batch_size
        taps = [(kind, name) for kind, name, _, _ in (probe.taps if probe is not None else [])]
        logits, rows, timing = run_batches(run_batch, indices=indices, probe_indices=probe_indices, batch_size=bs,
                                           taps=taps, on_step=on_step)
        t = time.perf_counter()
        latency = self.latency(prepared, fwd_session, feeds, example.numpy())
        timing.update({"export_s": export_s, "session_s": session_s, "latency_s": time.perf_counter() - t})
        environment = {
            "evaluation_backend": "onnxruntime",
            "onnxruntime": ort.__version__,
            "evaluation_backend_note": "quantized forward and per-layer errors computed by onnxruntime (CPU) on the same "
                                       "float32 fake-quantize arithmetic as PyTorch; only the convolutions' summation "
                                       "order differs",
            "reorders_removed": fwd_session.reorders_removed,
        }
        return SimulatedRun(logits, rows, latency, timing, environment)

    def latency(self, prepared: PreparedModel, made: _Session, feeds: dict[str, np.ndarray], x1: np.ndarray) -> dict[str, Any]:
        """The simulated latency block: FP32 and quantized graphs at batch 1, one thread, measured once per session."""
        with self._lock:
            if made.quant_ms is None:
                made.quant_ms = median_ms(lambda: made.session.run(None, {INPUT: x1, **feeds}), budget_s=SIMULATED_BUDGET_S,
                                          warmup=1)[0]
            quant_ms = made.quant_ms
        return {
            "kind": "simulated",
            "runtime": f"{runtime_name()}, FP32 with fake quantization",
            "note": "simulated: the quantized model runs in float with fake-quantize ops (evaluation.backend onnxruntime); "
                    "this is the cost of simulation, not the latency of integer kernels. One intra-op thread per run "
                    "(evaluation runs that many batches at once); measured once per weight setting",
            "threads": SESSION_THREADS,
            "batch_size": int(x1.shape[0]),
            "fp32_ms": self.fp32_ms(prepared, x1),
            "quant_ms": quant_ms,
        }
