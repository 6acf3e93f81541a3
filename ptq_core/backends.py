"""What runs the simulated model: one interface, two backends, chosen once by ``evaluation.backend``.

What lives here: the :class:`Backend` protocol (one keyword-only ``evaluate``), what a backend
returns (:class:`SimulatedRun`), the batch schedule both share (:func:`run_batches`),
:class:`TorchBackend` (PyTorch eager, the reference) and :func:`make_backend`, the registry
:class:`ptq_core.pipeline.Explorer` asks by name. The onnxruntime backend lives in
:mod:`ptq_core.onnx.backend` and is imported only when a config names it. Not here: the graph
they both run (:mod:`ptq_core.simulation`), metrics (:mod:`ptq_core.metrics`).

Both backends run the same FX graph of :mod:`ptq_core.simulation`: the quantized model, and
for the per-layer error probe the FP32 model beside it, layer by layer, each tap reduced to two
sums as soon as its tensors exist. So the probe holds a few layers' tensors at a time, never
every tapped tensor of a batch, and a probe batch returns its quantized logits too, so it is not
run twice. Measured on EfficientNet-Lite0 (372 images, 128-image probe, PyTorch, two workers):
the process peaks at 2.2 GB and the evaluation takes 14 s, against 15.5 GB and 106 s for the
former probe, which kept every tapped tensor of a 128-image batch.

Batches (:func:`run_batches`)
    A plan whose quantizers all work per sample (static, weight-only, dynamic per token) runs
    ``min(batch_size, backend.per_sample_batch)`` samples per job; one with a dynamic per-tensor
    range runs in the config's batches, so each range sees the same samples as in the reference.
    Jobs run side by side on one-thread workers (:mod:`ptq_core.parallel`); sums are added in job
    order, so the numbers do not depend on timing or on the number of workers.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
from torch import nn

from .calibration import chunks, load_batch
from .errors import CalibrationError
from .graph import PreparedModel
from .metrics import sqnr_db
from .models.device import device_context
from .parallel import map_ordered
from .progress import StepFn
from .quantize import QuantPlan
from .simulation import INPUT, LOGITS, simulation_graph, static_feeds, structure_key, weight_values
from .timing import SIMULATED_BUDGET_S, median_ms

GRAPH_CACHE_ENTRIES = 4  # simulation graphs kept per Explorer (each holds one copy of the FP32 weights)
# Samples per job when quantizers work per sample. PyTorch's convolutions give bit-identical FP32 logits for
# EfficientNet-Lite0 at batch 16, 32 and 128 (4e-6 apart at 8 and 1; the digits CNN's weight-only logits move by
# about 1e-6 between 16 and 128). Measured on EfficientNet-Lite0, 372 images, two workers: 16 per job peaks at
# 1.5 GB (2.2 GB with the 128-image probe) and takes 7.8 s; 128 per job peaked at 5.4 GB (12.8 GB) and took 15 s.
TORCH_PER_SAMPLE_BATCH = 16


@dataclass
class SimulatedRun:
    """What a backend measured for one plan: logits in the order of the indices, the probe, the cost."""

    logits: torch.Tensor  # float32 [N, ...] on the CPU
    layer_errors: dict[str, dict[str, float]]  # name -> {"output_sqnr_db" | "quantizer_sqnr_db": dB}; {} without probe
    latency: dict[str, Any]  # the simulated latency block of a Result
    timing: dict[str, float] = field(default_factory=dict)  # evaluation_s, layer_error_s, export_s, session_s
    environment: dict[str, Any] = field(default_factory=dict)  # added to Result.environment


class Backend(Protocol):
    """Runs the simulated model of ``plan`` on ``dataset[indices]``; the probe on ``probe_indices`` (may be empty)."""

    name: str
    per_sample_batch: int  # samples per job when every quantizer works per sample

    def evaluate(
        self, *, prepared: PreparedModel, plan: QuantPlan, dataset: torch.utils.data.Dataset, indices: Sequence[int],
        probe_indices: Sequence[int], batch_size: int, model: nn.Module, example: torch.Tensor, device: torch.device,
        on_step: StepFn | None = None,
    ) -> SimulatedRun: ...


@dataclass
class BatchResult:
    """One job's output: the quantized logits of its samples and, with the probe, two sums per tap."""

    logits: torch.Tensor
    sums: list[tuple[float, float]]
    seconds: float


def per_sample(plan: QuantPlan) -> bool:
    """Whether every quantizer of ``plan`` works on each sample alone (no range spans a batch)."""
    return all(pq.quant.mode == "static" or pq.granularity == "per_token" for pq in plan.points.values())


def run_batches(
    run_batch: Callable[[list[int], bool], BatchResult], *, indices: Sequence[int], probe_indices: Sequence[int],
    batch_size: int, taps: Sequence[tuple[str, str]], on_step: StepFn | None = None, max_workers: int | None = None,
) -> tuple[torch.Tensor, dict[str, dict[str, float]], dict[str, float]]:
    """Run every batch once, probe batches first; return logits, the probe rows and the time of each part.

    ``taps``: (kind ``"output"`` | ``"quantizer"``, name) in the order of a probe batch's sums. A probe
    batch that is also an evaluation batch runs once, with the probe, and gives that batch's logits.
    The wall time of all jobs is split between ``evaluation_s`` and ``layer_error_s`` in proportion
    to each kind's busy time (jobs overlap).
    """
    main, probe = chunks(indices, batch_size), chunks(probe_indices, batch_size)
    # (batch index or None, indices, with probe): probe batches first, they take longest
    jobs: list[tuple[int | None, list[int], bool]] = [
        (i, chunk, True) for i, chunk in enumerate(main) if i < len(probe) and probe[i] == chunk
    ]
    jobs += [(None, chunk, True) for i, chunk in enumerate(probe) if not (i < len(main) and main[i] == chunk)]
    jobs += [(i, chunk, False) for i, chunk in enumerate(main) if not (i < len(probe) and probe[i] == chunk)]
    start = time.perf_counter()
    results = map_ordered(lambda job: run_batch(job[1], job[2]), jobs, max_workers=max_workers, on_step=on_step)
    wall = time.perf_counter() - start

    sums = [[0.0, 0.0] for _ in taps]
    busy = {True: 0.0, False: 0.0}
    logits: list[torch.Tensor | None] = [None] * len(main)
    for (i, _, with_probe), out in zip(jobs, results, strict=True):  # in job order: the same sums whatever ran first
        busy[with_probe] += out.seconds
        for acc, (signal, noise) in zip(sums, out.sums, strict=False):
            acc[0] += signal
            acc[1] += noise
        if i is not None:
            logits[i] = out.logits
    rows: dict[str, dict[str, float]] = {}
    if probe:
        for (kind, name), (signal, noise) in zip(taps, sums, strict=True):
            rows.setdefault(name, {})["output_sqnr_db" if kind == "output" else "quantizer_sqnr_db"] = sqnr_db(signal, noise)
    probe_share = busy[True] / max(busy[True] + busy[False], 1e-9)
    timing = {"evaluation_s": wall * (1 - probe_share), "layer_error_s": wall * probe_share}
    assert all(lg is not None for lg in logits)
    empty = torch.zeros((0,))
    return (torch.cat(logits) if logits else empty), rows, timing  # type: ignore[arg-type]


# -- PyTorch ------------------------------------------------------------------------------------------
@dataclass
class _TorchGraph:
    module: torch.fx.GraphModule
    inputs: list[str]  # the graph's inputs, in order
    outputs: list[str]
    info: dict[str, Any]  # weight_inputs, static_inputs, dynamic_checks, taps
    quant_ms: float | None = None  # simulated latency at batch 1, measured once


class TorchBackend:
    """PyTorch eager, the reference: the simulation graph run as a ``GraphModule``, one per structure (bounded).

    Shared by every session of an Explorer: graphs are built under a lock and only read afterwards.
    """

    name = "torch"
    per_sample_batch = TORCH_PER_SAMPLE_BATCH

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._graphs: OrderedDict[tuple[Any, ...], _TorchGraph] = OrderedDict()
        self._fp32_ms: dict[tuple[Any, ...], float] = {}

    def graph(self, prepared: PreparedModel, plan: QuantPlan, *, probe: bool, device: torch.device) -> _TorchGraph:
        key = (structure_key(prepared, plan), probe, str(device))
        with self._lock:
            if key in self._graphs:
                self._graphs.move_to_end(key)
                return self._graphs[key]
            gm, inputs, outputs, info = simulation_graph(prepared, plan, probe=probe, ops="torch")
            graph = _TorchGraph(gm.to(device), [name for name, _ in inputs], outputs, info)
            self._graphs[key] = graph
            while len(self._graphs) > GRAPH_CACHE_ENTRIES:
                self._graphs.popitem(last=False)
            return graph

    def evaluate(
        self, *, prepared: PreparedModel, plan: QuantPlan, dataset: torch.utils.data.Dataset, indices: Sequence[int],
        probe_indices: Sequence[int], batch_size: int, model: nn.Module, example: torch.Tensor, device: torch.device,
        on_step: StepFn | None = None,
    ) -> SimulatedRun:
        forward = self.graph(prepared, plan, probe=False, device=device)
        probe = self.graph(prepared, plan, probe=True, device=device) if probe_indices else None

        def feeds(graph: _TorchGraph) -> dict[str, torch.Tensor]:
            values = {**weight_values(graph.info["weight_inputs"], prepared, plan),
                      **static_feeds(graph.info["static_inputs"], plan)}
            return {name: torch.from_numpy(v).to(device) for name, v in values.items()}

        values = {id(g): feeds(g) for g in (forward, probe) if g is not None}

        def run(graph: _TorchGraph, x: torch.Tensor) -> dict[str, torch.Tensor]:
            args = {**values[id(graph)], INPUT: x}
            with torch.inference_mode(), device_context(device):
                outs = graph.module(*[args[name] for name in graph.inputs])
            return dict(zip(graph.outputs, outs, strict=True))

        def run_batch(chunk: list[int], with_probe: bool) -> BatchResult:
            start = time.perf_counter()
            x, _ = load_batch(dataset, chunk)
            graph = probe if with_probe and probe is not None else forward
            outs = run(graph, prepared.layout(x.to(device)))
            for point, check in graph.info["dynamic_checks"]:  # what DynamicFakeQuantize checks, in network order
                if not bool(torch.isfinite(outs[check])):
                    raise CalibrationError(f"{point}: activation contains NaN or Inf")
            sums = [(float(outs[s]), float(outs[n])) for _, _, s, n in graph.info["taps"]] if with_probe else []
            return BatchResult(outs[LOGITS].float().cpu(), sums, time.perf_counter() - start)

        bs = min(batch_size, self.per_sample_batch) if per_sample(plan) else batch_size
        taps = [(kind, name) for kind, name, _, _ in (probe or forward).info["taps"]]
        logits, rows, timing = run_batches(
            run_batch, indices=indices, probe_indices=probe_indices, batch_size=bs, taps=taps, on_step=on_step,
            max_workers=None if device.type == "cpu" else 1,
        )
        t = time.perf_counter()
        latency = self._latency(forward, model, run, prepared.layout(example.to(device)))
        timing.update({"export_s": 0.0, "session_s": 0.0, "latency_s": time.perf_counter() - t})
        return SimulatedRun(logits, rows, latency, timing, {"evaluation_backend": "torch"})

    def _latency(self, graph: _TorchGraph, model: nn.Module, run: Callable[[_TorchGraph, torch.Tensor], Any],
                 x: torch.Tensor) -> dict[str, Any]:
        sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)  # CUDA runs asynchronously

        def timed(fn: Callable[[], Any]) -> float:
            def call() -> None:
                fn()
                sync()

            with torch.inference_mode(), device_context(x.device):
                return median_ms(call, budget_s=SIMULATED_BUDGET_S, warmup=1)[0]

        key = (str(x.device), tuple(x.shape))
        if key not in self._fp32_ms:
            self._fp32_ms[key] = timed(lambda: model(x))
        if graph.quant_ms is None:
            graph.quant_ms = timed(lambda: run(graph, x))
        return {
            "kind": "simulated",
            "runtime": f"PyTorch {torch.__version__} eager, FP32 with fake quantization",
            "note": "simulated: the quantized model runs in float with fake-quantize ops; "
                    "this is the cost of simulation, not the latency of integer kernels",
            "threads": torch.get_num_threads(),
            "batch_size": int(x.shape[0]),
            "fp32_ms": self._fp32_ms[key],
            "quant_ms": graph.quant_ms,
        }


# -- the registry -------------------------------------------------------------------------------------
def _onnxruntime() -> Backend:
    from .onnx.backend import OrtBackend  # onnxruntime is imported only when a config asks for it

    return OrtBackend()


def _integer() -> Backend:
    # evaluation.arithmetic = "integer": onnxruntime's integer kernels, emulated
    from .onnx.integer import IntegerBackend

    return IntegerBackend()


_FACTORIES: dict[str, Callable[[], Backend]] = {"torch": TorchBackend, "onnxruntime": _onnxruntime, "integer": _integer}


def make_backend(name: str) -> Backend:
    """A new backend for ``evaluation.backend`` = ``name`` (the config has checked the name)."""
    return _FACTORIES[name]()


__all__ = ["Backend", "BatchResult", "SimulatedRun", "TorchBackend", "make_backend", "per_sample", "run_batches"]
