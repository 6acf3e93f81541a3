"""Calibration check: is a calibration subset big enough? How ranges and accuracy move with its size and seed.

    check = check_calibration(explorer, config)          # sizes 8, 32, 128, 512 x seeds 0, 1, 2
    check.summary      # per size: top-1 and agreement, mean / std / min / max over seeds
    check.spread       # per activation point and size: the chosen range, its spread over seeds
    check.unstable     # per activation point: relative spread at the config's size, and a flag

What is computed, for the config's activation settings (static mode only):

* for each seed the float model runs ONCE over the largest subset, in batches of
  ``BATCH_SIZE`` whose boundaries also fall on every smaller size. The subsets of one seed are
  nested (``select_calibration`` takes a prefix of one seeded permutation, or of one seeded
  round-robin for ``balanced``), so the statistics of every smaller subset are the running
  :class:`~ptq_core.observers.TensorStats` at its boundary: exact (TensorStats merges exactly),
  with no extra model run. Were some selection not nested, that subset is collected on its own.
* for each (size, seed) the ranges are chosen from those statistics by
  :func:`ptq_core.quantize.make_plan`, exactly as :meth:`Explorer.evaluate` chooses them, and
  the quantized model is evaluated (this re-runs the model, once per pair). So the pair equal
  to the config's own (num_samples, seed) reproduces ``Explorer.evaluate(config)``: ranges to
  float rounding (batches of 8 instead of ``calibration.batch_size`` can change the last bit of
  the float model's batched matmuls), top-1 and agreement unless a value sits on a rounding edge.

Unstable ranges: a point is flagged when the relative standard deviation (std / mean, sample
std over seeds) of its range width ``hi - lo`` exceeds :data:`UNSTABLE_REL_STD` at the
config's calibration size. Why 10 %: the quantization step is proportional to the width, and
rounding noise to the step squared, so a 10 % spread in width is about a 20 % (0.8 dB) spread
in rounding error, as large as the difference between clipping methods on a well-behaved
tensor. Past that, which samples were drawn decides the range more than the method does (a
min-max range set by a few rare outliers is the typical case).

Everything runs on the CPU whatever ``config.device`` says, and the onnxruntime check of
``evaluation.runtime`` is not run: the check compares calibration subsets, not runtimes.
No Streamlit, no pandas: the result is plain lists and dicts (``to_dict`` is JSON-able).
"""

from __future__ import annotations

import dataclasses
import functools
import math
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from .calibration import CalibrationStats, batches
from .config import QuantConfig
from .errors import ConfigError
from .graph import PreparedModel, with_taps
from .metrics import agreement, topk_accuracy
from .observers import TensorStats
from .progress import ProgressFn
from .quantize import build_quantized_model, make_plan

if TYPE_CHECKING:
    from .pipeline import Explorer

DEFAULT_SIZES: tuple[int, ...] = (8, 32, 128, 512)  # log-spaced: each size 4x the previous
DEFAULT_SEEDS: tuple[int, ...] = (0, 1, 2)  # three draws: enough to see a spread, cheap enough to run
BATCH_SIZE = 8  # the smallest size: every boundary of the nested subsets falls on a batch edge
UNSTABLE_REL_STD = 0.10  # see the module docstring: ~0.8 dB of rounding-error spread


@dataclass
class CalibrationCheck:
    """How the chosen ranges, top-1 and agreement move with calibration subset size and seed."""

    config: dict[str, Any]  # the config checked (its calibration fields say which pair it is)
    sizes: list[int]  # effective sizes, ascending, capped at the pool
    seeds: list[int]
    selection: str
    pool_size: int
    config_size: int  # the config's own effective calibration size (always among ``sizes``)
    points: list[str]  # quantized activation points, network order
    fp32_top1: float | None
    runs: list[dict[str, Any]]  # per (size, seed): size, seed, quant_top1, agreement, ranges {point: [lo, hi]}
    summary: list[dict[str, Any]]  # per size: *_mean, *_std, *_min, *_max of quant_top1 and agreement
    spread: list[dict[str, Any]]  # per (point, size): lo/hi/width mean, width_std, rel_std, width_vs_largest
    unstable: list[dict[str, Any]]  # per point: rel_std at config_size, unstable flag
    threshold: float = UNSTABLE_REL_STD
    timing: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _std(values: Sequence[float]) -> float:
    return statistics.stdev(values) if len(values) > 1 else 0.0


def _stats_at_boundaries(
    prepared: PreparedModel, pool: torch.utils.data.Dataset, indices: list[int], sizes: list[int],
    points: list[str], on_batch: Callable[[], None],
) -> dict[int, dict[str, TensorStats]]:
    """Run ``pool[indices]`` once; snapshot every point's running statistics at each size in ``sizes``."""
    view = with_taps(prepared.graph_module, {name: prepared.point(name).node for name in points})
    running = {name: TensorStats() for name in points}
    snapshots: dict[int, dict[str, TensorStats]] = {}
    start = 0
    with torch.inference_mode():
        for size in sizes:
            for x, _ in batches(pool, indices[start:size], BATCH_SIZE):
                _, taps = view(x)
                for name in points:
                    running[name].update(taps[name].detach(), name)
                on_batch()
            snapshots[size] = {name: ts.copy() for name, ts in running.items()}
            start = size
    return snapshots


def _num_batches(sizes: list[int]) -> int:
    edges = [0, *sizes]
    return sum(-(-(b - a) // BATCH_SIZE) for a, b in zip(edges, edges[1:], strict=False))


def check_calibration(
    explorer: Explorer,
    config: QuantConfig,
    *,
    sizes: Sequence[int] = DEFAULT_SIZES,
    seeds: Sequence[int] = DEFAULT_SEEDS,
    on_progress: ProgressFn | None = None,
) -> CalibrationCheck:
    """Ranges, top-1 and agreement of ``config`` at every calibration size x seed (see the module docstring).

    The config's own size is always added to ``sizes``. Sizes above the calibration pool are
    capped at it (and merged). Raises ConfigError unless activations are static: dynamic and
    weight-only configs have no calibration to check.
    """
    if config.mode != "static":
        raise ConfigError(
            f"activations.mode: got {config.mode!r}; allowed: static (only static activation ranges come "
            "from calibration, so only they can be checked)"
        )
    if not seeds or any(isinstance(s, bool) or not isinstance(s, int) or s < 0 for s in seeds):
        raise ConfigError(f"seeds: got {list(seeds)!r}; allowed: a non-empty list of integers >= 0")
    if not sizes or any(isinstance(n, bool) or not isinstance(n, int) or n < 1 for n in sizes):
        raise ConfigError(f"sizes: got {list(sizes)!r}; allowed: a non-empty list of integers >= 1")
    pool = explorer.dataset.calibration_pool
    pool_size = len(pool)  # type: ignore[arg-type]
    cal = config.calibration
    config_size = min(cal.num_samples, pool_size)
    eff_sizes = sorted({min(n, pool_size) for n in sizes} | {config_size})
    seed_list = list(dict.fromkeys(seeds))
    notes: list[str] = []
    if max(sizes) > pool_size:
        notes.append(f"the calibration pool holds {pool_size} samples: larger sizes are capped at {pool_size}")
    if cal.selection == "first":
        notes.append("selection 'first' ignores the seed: every seed draws the same samples, so there is no spread")
    if eff_sizes[-1] == pool_size and len(seed_list) > 1 and cal.selection != "first":
        notes.append(f"at {pool_size} samples (the whole pool) every seed draws the same samples, in another order")

    prepared = explorer.prepared(config.fold_batchnorm)
    points = _active_static_points(prepared, config)
    ref = explorer.float_reference(config.evaluation)
    labels = ref.labels if explorer.entry.pretrained else None  # random weights: accuracy is never reported
    eval_indices = explorer.evaluation_indices(config.evaluation)

    total = len(seed_list) * (_num_batches(eff_sizes) + len(eff_sizes))
    done = 0

    def tick(message: str) -> None:
        nonlocal done
        done += 1
        if on_progress is not None:
            on_progress(done, total, message)

    runs: list[dict[str, Any]] = []
    plan_cache: dict[Any, Any] = {}
    t_stats = t_eval = 0.0
    for seed in seed_list:
        t0 = time.perf_counter()
        subsets = {n: _subset(explorer, cal, n, seed) for n in eff_sizes}
        largest = subsets[eff_sizes[-1]]
        nested = [n for n in eff_sizes if subsets[n] == largest[:n]]
        snapshots = _stats_at_boundaries(prepared, pool, largest, nested, points,
                                         functools.partial(tick, f"calibrating (seed {seed})"))
        for n in eff_sizes:
            if n not in snapshots:  # not a prefix of the largest subset: collect it on its own
                snapshots[n] = _stats_at_boundaries(prepared, pool, subsets[n], [n], points, lambda: None)[n]
        t_stats += time.perf_counter() - t0
        for n in eff_sizes:
            t1 = time.perf_counter()
            cfg = config.replace(calibration=dataclasses.replace(cal, num_samples=n, seed=seed))
            stats = CalibrationStats(points=snapshots[n], batch_ranges={}, indices=subsets[n], batch_size=BATCH_SIZE,
                                     seconds=0.0)
            plan = make_plan(prepared, cfg, stats, cache=plan_cache)
            qgm, _ = build_quantized_model(prepared, plan)
            logits = _forward(qgm, explorer.dataset.evaluation, eval_indices, config.evaluation.batch_size)
            runs.append({
                "size": n,
                "seed": seed,
                "quant_top1": topk_accuracy(logits, labels, 1) if labels is not None else None,
                "agreement": agreement(ref.logits, logits),
                "ranges": {name: [plan.points[name].lo, plan.points[name].hi] for name in points},
            })
            t_eval += time.perf_counter() - t1
            tick(f"evaluating size {n} (seed {seed})")

    spread = _spread(runs, eff_sizes, points)
    return CalibrationCheck(
        config=config.to_dict(),
        sizes=eff_sizes,
        seeds=seed_list,
        selection=cal.selection,
        pool_size=pool_size,
        config_size=config_size,
        points=points,
        fp32_top1=topk_accuracy(ref.logits, labels, 1) if labels is not None else None,
        runs=runs,
        summary=_summary(runs, eff_sizes),
        spread=spread,
        unstable=_unstable(spread, points, config_size),
        timing={"statistics_s": t_stats, "evaluation_s": t_eval},
        notes=notes,
    )


def _subset(explorer: Explorer, cal: Any, n: int, seed: int) -> list[int]:
    return explorer.calibration_indices(dataclasses.replace(cal, num_samples=n, seed=seed))[0]


def _active_static_points(prepared: PreparedModel, config: QuantConfig) -> list[str]:
    from .quantize import active_points

    return [name for name, aq in active_points(prepared, config).items() if aq.mode == "static"]


def _forward(model: torch.nn.Module, dataset: torch.utils.data.Dataset, indices: list[int], batch_size: int) -> torch.Tensor:
    outs = []
    with torch.inference_mode():
        for x, _ in batches(dataset, indices, batch_size):
            outs.append(model(x).float())
    return torch.cat(outs)


def _summary(runs: list[dict[str, Any]], sizes: list[int]) -> list[dict[str, Any]]:
    rows = []
    for n in sizes:
        at = [r for r in runs if r["size"] == n]
        row: dict[str, Any] = {"size": n, "num_seeds": len(at)}
        for key in ("quant_top1", "agreement"):
            vals = [r[key] for r in at if r[key] is not None]
            if vals:
                row.update({f"{key}_mean": statistics.fmean(vals), f"{key}_std": _std(vals),
                            f"{key}_min": min(vals), f"{key}_max": max(vals)})
            else:
                row.update({f"{key}_mean": None, f"{key}_std": None, f"{key}_min": None, f"{key}_max": None})
        rows.append(row)
    return rows


def _spread(runs: list[dict[str, Any]], sizes: list[int], points: list[str]) -> list[dict[str, Any]]:
    rows = []
    largest = sizes[-1]
    for name in points:
        widths_at_largest = [r["ranges"][name][1] - r["ranges"][name][0] for r in runs if r["size"] == largest]
        ref_width = statistics.fmean(widths_at_largest)
        for n in sizes:
            los = [r["ranges"][name][0] for r in runs if r["size"] == n]
            his = [r["ranges"][name][1] for r in runs if r["size"] == n]
            widths = [h - lo for lo, h in zip(los, his, strict=True)]
            mean_w = statistics.fmean(widths)
            rows.append({
                "point": name,
                "size": n,
                "lo_mean": statistics.fmean(los), "lo_min": min(los), "lo_max": max(los),
                "hi_mean": statistics.fmean(his), "hi_min": min(his), "hi_max": max(his),
                "width_mean": mean_w,
                "width_std": _std(widths),
                "rel_std": _std(widths) / mean_w if mean_w > 0 else 0.0,
                # how far this size's (seed-averaged) width is from the largest size's: < 1 means ranges still grow
                "width_vs_largest": mean_w / ref_width if ref_width > 0 else math.nan,
            })
    return rows


def _unstable(spread: list[dict[str, Any]], points: list[str], config_size: int) -> list[dict[str, Any]]:
    rows = []
    for name in points:
        row = next(r for r in spread if r["point"] == name and r["size"] == config_size)
        rows.append({
            "point": name,
            "size": config_size,
            "rel_std": row["rel_std"],
            "width_mean": row["width_mean"],
            "unstable": row["rel_std"] > UNSTABLE_REL_STD,
        })
    return rows
