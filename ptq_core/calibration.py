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
from .progress import StepFn


class StatsCollector(nn.Module):
    """Identity module that adds every tensor passing through it to running statistics."""

    def __init__(self, point: str) -> None:
        super().__init__()
        self.point = point
        self.stats: TensorStats | None = None
        self.batch_ranges: list[tuple[float, float]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch = TensorStats()
        batch.update(x.detach(), self.point)
        self.batch_ranges.append((float(batch.min), float(batch.max)))
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
    """Deterministic, in-order batches of ``dataset[indices]`` (no shuffling, no worker processes)."""
    return DataLoader(Subset(dataset, list(indices)), batch_size=batch_size, shuffle=False, num_workers=0)


def collect_stats(
    prepared: PreparedModel,
    dataset: torch.utils.data.Dataset,
    indices: Sequence[int],
    *,
    batch_size: int = 32,
    on_progress: StepFn | None = None,
    device: torch.device = CPU,
) -> CalibrationStats:
    """Run the float model over ``dataset[indices]`` once, on ``device``, and return every point's statistics."""
    start = time.perf_counter()
    if device.type != "cpu":  # a moved copy: the shared prepared model stays on the CPU
        prepared = dataclasses.replace(prepared, graph_module=moved_copy(prepared.graph_module, device))
    gm, collectors = instrument(prepared)  # shares the prepared model's modules: never moved or changed
    loader = batches(dataset, indices, batch_size)
    total = len(loader)
    with torch.inference_mode(), device_context(device):
        for i, (x, _) in enumerate(loader):
            gm(x.to(device))
            if on_progress is not None:
                on_progress(i + 1, total)
    points = {name: c.stats for name, c in collectors.items() if c.stats is not None}
    return CalibrationStats(
        points=points,
        batch_ranges={name: c.batch_ranges for name, c in collectors.items()},
        indices=list(indices),
        batch_size=batch_size,
        seconds=time.perf_counter() - start,
    )
