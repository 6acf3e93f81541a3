"""The onnxruntime evaluation backend: the SAME simulated (fake-quantized) model, run by onnxruntime.

``evaluation.backend = "onnxruntime"`` makes :meth:`ptq_core.pipeline.Explorer.evaluate` run the
quantized forward, the per-layer error probe and the simulated latency here instead of in PyTorch
eager; calibration, the plan, the FP32 reference and every metric stay as they are. What lives
here: :class:`OrtBackend` (one Explorer's exported structures and sessions, bounded, and the
evaluation itself) and :class:`OrtRun` (what it measured). Not here: the graph and why its
numbers are the simulation's (:mod:`ptq_core.simulation`), its export
(:mod:`ptq_core.onnx.simulate`), sessions (:mod:`ptq_core.onnx.session`), and the integer QDQ
export and the check on a real integer runtime (:mod:`ptq_core.onnx.export`,
:mod:`ptq_core.onnx.runtime`), which answer another question (what a deployed INT8 model does).
Measured on EfficientNet-Lite0 (2 cores, quiet): a re-evaluation after a clipping change, 372
images plus the 128-image probe, takes 4.0 s against 38 s in PyTorch (both about twice that
when other jobs share the cores; ``benchmarks/bench_real_models.py``).

One export per structure, values fed per config (:mod:`ptq_core.onnx.simulate`)
    The structure is the prepared model plus which activation points carry a quantizer and of
    what kind (static signed/unsigned and narrower than 8 bits or not; dynamic settings). It is
    traced once into one ONNX graph holding the FP32 and the quantized graph side by side. What
    a config changes is a value:

    * static quantizer values are graph INPUTS (``1/scale``, ``scale``, zero point): a new
      clipping method, percentile or calibration subset costs new feeds, no export, no session;
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
    images. Probe batches that are also evaluation batches run once, in the probe session, which
    returns their logits too. Sessions use one intra-op thread and ``torch.get_num_threads()``
    batches run at once (:data:`SESSION_THREADS`), put together in batch order afterwards, so the
    numbers do not depend on timing. Every probe tap is reduced inside the graph (``ReduceSumSquare`` of
    ``f - q`` and of ``f``): two scalars per tap and batch leave onnxruntime (the PyTorch probe
    holds every tapped tensor of a batch). Measured on EfficientNet-Lite0: peak 2.1 GB for the
    process against 10.7 GB with the PyTorch probe. Sessions are cached per weight setting,
    :data:`SESSION_CACHE_ENTRIES` of them.

CPU only: a config asking for CUDA with this backend is rejected by the config.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

from ..calibration import batches
from ..errors import CalibrationError
from ..graph import PreparedModel
from ..metrics import sqnr_db
from ..progress import StepFn
from ..quantize import QuantPlan
from ..simulation import INPUT, LOGITS, static_feeds, structure_key, weight_key, weight_values
from ..timing import SIMULATED_BUDGET_S, median_ms
from .session import infer_shapes, make_simulation_session, runtime_name
from .simulate import Structure, export_structure, with_initializers

log = logging.getLogger(__name__)

STRUCTURE_CACHE_ENTRIES = 4  # exported graphs kept per Explorer (each holds one FP32 weight copy)
SESSION_CACHE_ENTRIES = 2  # weight settings kept per Explorer: a forward and a probe session each (~0.6 GB on EfficientNet-Lite0)
# Images per onnxruntime run when every quantizer is per sample (static, weight-only, dynamic per token):
# measured on EfficientNet-Lite0, 8 runs faster than 64 (its tensors stay in cache: 8 vs 10.6 ms/image
# forward, 22 vs 30 with the probe), needs a third of the memory, and gives bit-identical logits.
# Dynamic per-tensor ranges span a batch, so those plans run in the simulation's own batches.
PER_SAMPLE_BATCH = 8
# Intra-op threads per session; torch.get_num_threads() batches run at once instead. Measured on
# EfficientNet-Lite0 (2 cores): 3.9 s against 4.8 s for the same batches one at a time on two
# threads (elementwise ops and reductions keep two threads of one run less busy). Same logits.
SESSION_THREADS = 1


@dataclass
class _Sessions:
    forward: ort.InferenceSession
    probe: ort.InferenceSession
    reorders_removed: int
    quant_ms: float | None = None  # simulated latency at batch 1, measured on first use


# -- evaluation ---------------------------------------------------------------------------------------
@dataclass
class OrtRun:
    """What the backend measured for one config."""

    logits: torch.Tensor
    probe: dict[str, dict[str, float]]  # as Explorer._layer_errors returns it
    latency: dict[str, Any]
    # export_s, session_s (0.0 when cached), forward_s and probe_s (batches overlap: the wall time of all
    # batches split in proportion to each session's busy time), latency_s
    timing: dict[str, float] = field(default_factory=dict)
    reorders_removed: int = 0


def _chunks(indices: Sequence[int], size: int) -> list[list[int]]:
    return [list(indices[i:i + size]) for i in range(0, len(indices), size)]


class OrtBackend:
    """The exported structures and sessions of one Explorer, bounded, behind one lock.

    Sessions are shared: ``InferenceSession.run`` may be called from many threads at once. The
    lock covers only building (so two sessions asking for the same structure export it once).
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._structures: OrderedDict[tuple[Any, ...], Structure] = OrderedDict()
        self._sessions: OrderedDict[tuple[Any, ...], _Sessions] = OrderedDict()
        self._fp32_ms: dict[tuple[Any, ...], float] = {}

    def structure(self, prepared: PreparedModel, plan: QuantPlan) -> tuple[Structure, float]:
        """The exported structure of ``plan`` and the seconds spent exporting it now (0.0: cached)."""
        key = structure_key(prepared, plan)
        with self._lock:
            if key in self._structures:
                self._structures.move_to_end(key)
                return self._structures[key], 0.0
            start = time.perf_counter()
            structure = export_structure(prepared, plan)
            structure.shapes = infer_shapes(structure.probe)  # not shared yet: filled before it is cached
            structure.export_s = time.perf_counter() - start
            self._structures[key] = structure
            while len(self._structures) > STRUCTURE_CACHE_ENTRIES:
                self._structures.popitem(last=False)
            return structure, structure.export_s

    def sessions(self, structure: Structure, prepared: PreparedModel, plan: QuantPlan) -> tuple[_Sessions, float]:
        threads = SESSION_THREADS
        key = (structure.key, weight_key(plan))
        with self._lock:
            if key in self._sessions:
                self._sessions.move_to_end(key)
                return self._sessions[key], 0.0
            start = time.perf_counter()
            weights = weight_values(structure, prepared, plan)
            forward, removed = make_simulation_session(with_initializers(structure.forward, weights), structure.shapes, threads)
            taps = [name for _, _, signal, noise in structure.taps for name in (signal, noise)]
            probe, _ = make_simulation_session(with_initializers(structure.probe, weights), structure.shapes, threads, outputs=taps)
            sessions = _Sessions(forward, probe, removed)
            self._sessions[key] = sessions
            while len(self._sessions) > SESSION_CACHE_ENTRIES:
                self._sessions.popitem(last=False)
            return sessions, time.perf_counter() - start

    def fp32_ms(self, structure: Structure, x: np.ndarray) -> float:
        """Median ms of the FP32 graph on ``x`` (measured once per prepared model and batch size)."""
        key = (structure.key[0], x.shape)
        with self._lock:
            if key not in self._fp32_ms:
                session, _ = make_simulation_session(structure.float_model, structure.shapes, SESSION_THREADS)
                self._fp32_ms[key] = median_ms(lambda: session.run(None, {INPUT: x}), budget_s=SIMULATED_BUDGET_S, warmup=1)[0]
            return self._fp32_ms[key]

    def evaluate(
        self, prepared: PreparedModel, plan: QuantPlan, dataset: torch.utils.data.Dataset, indices: Sequence[int],
        probe_samples: int, batch_size: int, example: torch.Tensor, on_progress: StepFn | None = None,
    ) -> OrtRun:
        """Quantized logits on ``dataset[indices]`` and the per-layer errors on the first ``probe_samples``.

        A plan whose quantizers all work per sample runs in batches of :data:`PER_SAMPLE_BATCH`
        (same logits); one with a dynamic per-tensor range runs in the simulation's batches
        (``batch_size``, in order), so each range sees the same images. A probe batch that is also
        an evaluation batch runs once, in the probe session, which returns its logits too.
        Batches run ``torch.get_num_threads()`` at a time on one-thread sessions, probe batches
        first; results are put together in batch order, so the numbers do not depend on timing.
        ``on_progress`` is called from the calling thread only.
        """
        per_sample = all(pq.quant.mode == "static" or pq.granularity == "per_token" for pq in plan.points.values())
        batch_size = min(batch_size, PER_SAMPLE_BATCH) if per_sample else batch_size
        structure, export_s = self.structure(prepared, plan)
        sessions, session_s = self.sessions(structure, prepared, plan)
        feeds = static_feeds(structure, plan)
        main, probe = _chunks(indices, batch_size), _chunks(indices[:probe_samples], batch_size)
        # (batch index or None, indices, with probe): probe batches first, they take longest
        jobs: list[tuple[int | None, list[int], bool]] = [
            (i, chunk, True) for i, chunk in enumerate(main) if i < len(probe) and probe[i] == chunk
        ]
        jobs += [(None, chunk, True) for i, chunk in enumerate(probe) if not (i < len(main) and main[i] == chunk)]
        jobs += [(i, chunk, False) for i, chunk in enumerate(main) if not (i < len(probe) and probe[i] == chunk)]

        def run(chunk: list[int], with_probe: bool) -> tuple[np.ndarray, list[tuple[float, float]], float]:
            start = time.perf_counter()
            x = next(iter(batches(dataset, chunk, len(chunk))))[0]
            session = sessions.probe if with_probe else sessions.forward
            outs = dict(zip([o.name for o in session.get_outputs()], session.run(None, {INPUT: x.numpy(), **feeds}), strict=True))
            for point, check in structure.dynamic_checks:  # what DynamicFakeQuantize checks, in network order
                if not np.isfinite(outs[check]):
                    raise CalibrationError(f"{point}: activation contains NaN or Inf")
            sums = [(float(outs[s]), float(outs[n])) for _, _, s, n in structure.taps] if with_probe else []
            return outs[LOGITS], sums, time.perf_counter() - start

        start = time.perf_counter()
        results: dict[int, tuple[np.ndarray, list[tuple[float, float]], float]] = {}
        errors: dict[int, BaseException] = {}
        with ThreadPoolExecutor(max_workers=max(1, torch.get_num_threads()), thread_name_prefix="ptq_ort_backend") as pool:
            futures = {pool.submit(run, chunk, with_probe): k for k, (_, chunk, with_probe) in enumerate(jobs)}
            for done, future in enumerate(as_completed(futures), start=1):
                if future.cancelled():
                    continue
                k, error = futures[future], future.exception()
                if error is not None:
                    errors[k] = error
                    for other in futures:  # stop what has not started; the first error in batch order is raised
                        other.cancel()
                    continue
                results[k] = future.result()
                if on_progress is not None:
                    on_progress(done, len(jobs))
        if errors:  # as PyTorch would: the first evaluation batch that fails, in order
            position = {k: len(main) if i is None else i for k, (i, _, _) in enumerate(jobs)}
            raise errors[min(errors, key=position.__getitem__)]
        wall = time.perf_counter() - start

        sums = [[0.0, 0.0] for _ in structure.taps]
        busy = {True: 0.0, False: 0.0}
        logits: list[torch.Tensor | None] = [None] * len(main)
        for k, (i, _, with_probe) in enumerate(jobs):  # in job order: the same float sums whatever ran first
            out, batch_sums, seconds = results[k]
            busy[with_probe] += seconds
            for acc, (signal, noise) in zip(sums, batch_sums, strict=False):
                acc[0] += signal
                acc[1] += noise
            if i is not None:
                logits[i] = torch.from_numpy(out).float()
        rows: dict[str, dict[str, float]] = {}
        for (kind, name, _, _), (signal, noise) in zip(structure.taps, sums, strict=True):
            key = "output_sqnr_db" if kind == "output" else "quantizer_sqnr_db"
            rows.setdefault(name, {})[key] = sqnr_db(signal, noise)

        t = time.perf_counter()
        latency = self.latency(structure, sessions, feeds, example.numpy())
        probe_share = busy[True] / max(busy[True] + busy[False], 1e-9)  # batches overlap: wall time split by busy time
        timing = {"export_s": export_s, "session_s": session_s, "forward_s": wall * (1 - probe_share),
                  "probe_s": wall * probe_share, "latency_s": time.perf_counter() - t}
        assert all(lg is not None for lg in logits)
        return OrtRun(torch.cat(logits), rows, latency, timing, sessions.reorders_removed)  # type: ignore[arg-type]

    def latency(self, structure: Structure, sessions: _Sessions, feeds: dict[str, np.ndarray], x1: np.ndarray) -> dict[str, Any]:
        """The simulated latency block: FP32 and quantized graphs at batch 1, one thread, measured once per session."""
        with self._lock:
            if sessions.quant_ms is None:
                sessions.quant_ms = median_ms(lambda: sessions.forward.run(None, {INPUT: x1, **feeds}), budget_s=SIMULATED_BUDGET_S,
                                               warmup=1)[0]
            quant_ms = sessions.quant_ms
        return {
            "kind": "simulated",
            "runtime": f"{runtime_name()}, FP32 with fake quantization",
            "note": "simulated: the quantized model runs in float with fake-quantize ops (evaluation.backend onnxruntime); "
                    "this is the cost of simulation, not the latency of integer kernels. One intra-op thread per run "
                    "(evaluation runs that many batches at once); measured once per weight setting",
            "threads": SESSION_THREADS,
            "batch_size": int(x1.shape[0]),
            "fp32_ms": self.fp32_ms(structure, x1),
            "quant_ms": quant_ms,
        }
