"""Calibration: run the float model over the calibration subset ONCE and keep activation statistics.

Statistics are collected on every candidate activation point of a prepared model (not only
the ones the current config quantizes), so keeping a layer in float, changing bits, scheme or
clipping method never needs the model again: :func:`ptq_core.quantize.make_plan` derives all
ranges from the :class:`CalibrationStats` kept here. Per-batch min/max are kept too, to show
how stable each range is.

Collectors are inserted into a view of the prepared graph that shares its modules; the view is
dropped when calibration ends, so the prepared model is never changed.
"""

from __future__ import annotations

import copy
import dataclasses
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.fx
from torch import nn
from torch.utils.data import DataLoader, Subset

from .graph import PreparedModel
from .models.device import CPU, device_context, moved_copy
from .observers import TensorStats
from .parallel import map_ordered
from .progress import StepFn


class StatsCollector(nn.Module):
    """Identity module that adds every tensor passing through it to running statistics.

    ``batch`` is the index of the batch being run (set before each forward), so the per-batch
    ranges of several collectors of one point (one per worker) can be put back in batch order.
    """

    def __init__(self, point: str) -> None:
        super().__init__()
        self.point = point
        self.stats: TensorStats | None = None
        self.batch = 0
        self.batch_ranges: list[tuple[int, float, float]] = []  # (batch, min, max)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch = TensorStats()
        batch.update(x.detach(), self.point)
        self.batch_ranges.append((self.batch, float(batch.min), float(batch.max)))
        self.stats = batch if self.stats is None else self.stats.merge(batch)
        return x


@dataclass
class CalibrationStats:
    """Statistics of every candidate activation point over one calibration subset."""

    points: dict[str, TensorStats]
    batch_ranges: dict[str, list[tuple[float, float]]]
    indices: list[int]  # indices into the data set's calibration pool, in the order they were run
    batch_size: int
    seconds: float
    warnings: list[str] = field(default_factory=list)
    # Activation ranges derived from these statistics, memoized per (point, method, bits, ...):
    # kept here so they are dropped together with the statistics they came from.
    ranges: dict[tuple[object, ...], Any] = field(default_factory=dict, repr=False, compare=False)
    from_disk: bool = False  # read from the disk cache instead of running the model (ptq_core.diskcache)

    @property
    def num_samples(self) -> int:
        return len(self.indices)


def instrument(prepared: PreparedModel) -> tuple[torch.fx.GraphModule, dict[str, StatsCollector]]:
    """A view of the prepared model with a collector after every candidate point."""
    gm = torch.fx.GraphModule(prepared.graph_module, copy.deepcopy(prepared.graph_module.graph))
    nodes = {n.name: n for n in gm.graph.nodes}
    collectors: dict[str, StatsCollector] = {}
    for i, p in enumerate(prepared.points):
        c = StatsCollector(p.name)
        mod_name = f"ptq_stats_{i}"
        gm.add_submodule(mod_name, c)
        node = nodes[p.node]
        with gm.graph.inserting_after(node):
            new = gm.graph.call_module(mod_name, (node,))
        node.replace_all_uses_with(new, delete_user_cb=lambda user, new=new: user is not new)
        collectors[p.name] = c
    gm.recompile()
    return gm, collectors


def batches(dataset: torch.utils.data.Dataset, indices: Sequence[int], batch_size: int) -> DataLoader:
    """Deterministic, in-order batches of ``dataset[indices]`` (no shuffling, no worker processes).

    A data set with a ``collate`` method collates its own batches (text: trimmed to the batch's longest text).
    """
    return DataLoader(Subset(dataset, list(indices)), batch_size=batch_size, shuffle=False, num_workers=0,
                      collate_fn=getattr(dataset, "collate", None))


def load_batch(dataset: torch.utils.data.Dataset, indices: Sequence[int]) -> tuple[torch.Tensor, torch.Tensor]:
    """``dataset[indices]`` as one batch ``(x, y)``, collated as :func:`batches` collates it."""
    return next(iter(batches(dataset, indices, len(indices))))


def chunks(indices: Sequence[int], size: int) -> list[list[int]]:
    """``indices`` in consecutive pieces of ``size`` (the last one shorter): the batches of a run."""
    return [list(indices[i:i + size]) for i in range(0, len(indices), size)]


def collect_stats(
    prepared: PreparedModel,
    dataset: torch.utils.data.Dataset,
    indices: Sequence[int],
    *,
    batch_size: int = 32,
    on_progress: StepFn | None = None,
    device: torch.device = CPU,
) -> CalibrationStats:
    """Run the float model over ``dataset[indices]`` once, on ``device``, and return every point's statistics.

    Batches run side by side on CPU (:func:`ptq_core.parallel.map_ordered`), each worker with an
    instrumented view of its own; the statistics merge exactly in any order
    (:meth:`TensorStats.merge_all`) and the per-batch ranges are put back in batch order, so the
    result does not depend on the number of workers.
    """
    start = time.perf_counter()
    if device.type != "cpu":  # a moved copy: the shared prepared model stays on the CPU
        prepared = dataclasses.replace(prepared, graph_module=moved_copy(prepared.graph_module, device))
    local = threading.local()
    views: list[dict[str, StatsCollector]] = []
    views_lock = threading.Lock()

    def run(job: tuple[int, list[int]]) -> None:
        k, chunk = job
        if not hasattr(local, "view"):  # one instrumented view per worker: collectors are not shared
            local.view, local.collectors = instrument(prepared)  # shares the prepared model's modules, unchanged
            with views_lock:
                views.append(local.collectors)
        for collector in local.collectors.values():
            collector.batch = k
        x, _ = load_batch(dataset, chunk)
        with torch.inference_mode(), device_context(device):
            local.view(prepared.layout(x.to(device)))

    jobs = list(enumerate(chunks(indices, batch_size)))
    map_ordered(run, jobs, max_workers=None if device.type == "cpu" else 1, on_step=on_progress)
    points: dict[str, TensorStats] = {}
    ranges: dict[str, list[tuple[float, float]]] = {}
    for p in prepared.points:
        parts = [v[p.name] for v in views]
        seen = [c.stats for c in parts if c.stats is not None]
        if seen:
            points[p.name] = seen[0] if len(seen) == 1 else TensorStats.merge_all(seen)
        ranges[p.name] = [(lo, hi) for _, lo, hi in sorted(r for c in parts for r in c.batch_ranges)]
    return CalibrationStats(
        points=points,
        batch_ranges=ranges,
        indices=list(indices),
        batch_size=batch_size,
        seconds=time.perf_counter() - start,
    )


def stats_to_dict(stats: CalibrationStats) -> dict[str, Any]:
    """``stats`` as plain data (tensors, numbers, lists) for the disk cache; the inverse is :func:`stats_from_dict`."""
    return {
        "points": {name: ts.to_dict() for name, ts in stats.points.items()},
        "batch_ranges": {name: [list(r) for r in rs] for name, rs in stats.batch_ranges.items()},
        "indices": list(stats.indices),
        "batch_size": stats.batch_size,
        "seconds": stats.seconds,
    }


def stats_from_dict(data: dict[str, Any]) -> CalibrationStats:
    """The statistics :func:`stats_to_dict` wrote (CalibrationError if they are malformed)."""
    return CalibrationStats(
        points={name: TensorStats.from_dict(d) for name, d in data["points"].items()},
        batch_ranges={name: [(float(lo), float(hi)) for lo, hi in rs] for name, rs in data["batch_ranges"].items()},
        indices=[int(i) for i in data["indices"]],
        batch_size=int(data["batch_size"]),
        seconds=float(data["seconds"]),
    )
