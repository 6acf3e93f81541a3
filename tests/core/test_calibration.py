"""Statistics collection: the same statistics whatever the number of workers, and a lossless round trip for the disk cache."""

from __future__ import annotations

import pytest
import torch

from ptq_core.calibration import CalibrationStats, collect_stats, stats_from_dict, stats_to_dict
from ptq_core.config import Calibration, QuantConfig
from ptq_core.pipeline import Explorer


def _same(a: CalibrationStats, b: CalibrationStats) -> None:
    assert a.points.keys() == b.points.keys()
    for name, ts in a.points.items():
        other = b.points[name]
        assert (ts.count, ts.min, ts.max, ts.num_batches, ts.range_exp) == (
            other.count, other.min, other.max, other.num_batches, other.range_exp), name
        assert torch.equal(ts.hist, other.hist), name
    assert a.batch_ranges == b.batch_ranges


def test_workers_change_nothing(cnn: Explorer, monkeypatch: pytest.MonkeyPatch) -> None:
    prepared, pool = cnn.prepared(), cnn.dataset.calibration_pool
    indices = list(range(200))
    monkeypatch.setenv("PTQ_WORKERS", "1")
    one = collect_stats(prepared, pool, indices, batch_size=16)
    monkeypatch.setenv("PTQ_WORKERS", "3")
    steps: list[tuple[int, int]] = []
    three = collect_stats(prepared, pool, indices, batch_size=16, on_progress=lambda d, t: steps.append((d, t)))
    _same(one, three)
    assert len(one.batch_ranges["x"]) == 13  # per batch, in batch order: 12 of 16 and one of 8
    assert steps[-1] == (13, 13)
    assert all(ts.num_batches == 13 for ts in three.points.values())


def test_statistics_round_trip_for_the_disk_cache(cnn: Explorer) -> None:
    stats = cnn.calibrate(QuantConfig(calibration=Calibration(num_samples=64)))
    back = stats_from_dict(stats_to_dict(stats))
    _same(stats, back)
    assert back.indices == stats.indices and back.batch_size == stats.batch_size

