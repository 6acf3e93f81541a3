"""Per-layer sensitivity: what quantizing each layer costs the model's output, alone and in company.

What lives here: :func:`proxy` (a cheap ranking from what is already known: the plan's weight
error and the expected error of the layer's output quantizer on the calibration statistics, plus
"why" hints), :func:`sensitivity` (the measured ranking) and :class:`SensitivityReport`. Not
here: fanning the evaluations out (:mod:`ptq_core.fanout`), choosing bits (:mod:`ptq_core.search`).

For each unit of the model (a Conv/Linear with its fused activation, or an add / concat /
average-pool that requantizes), with the config's settings for everything else:

* **only this layer** quantized: every other unit is kept in float (``keep_float``), so the
  model runs this unit as an integer runtime would run it alone (its input and output quantized,
  its weights quantized): the damage the layer does by itself;
* **all but this layer**: the config's model with this unit kept in float: how much of the
  whole model's damage goes away when this one layer is spared.

Each is one evaluation (agreement with FP32, mean KL, top-1 when labelled): 2 x units of them,
120 for EfficientNet-Lite0. Layers are ranked by the damage "only this layer" does: agreement lost,
then KL. The proxy ranks the same layers without running the model: the lower of the layer's
weight SQNR and its output quantizer's expected SQNR (calibration histogram), in dB.

Weight bytes at each candidate width (the search's size model, :func:`weight_bytes`): packed codes
plus one float32 scale per channel or group (and a zero point for asymmetric weights), as
:func:`ptq_core.metrics.quantized_size` counts them.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import torch

from .config import MAX_BITS, MIN_BITS, QuantConfig
from .errors import ConfigError
from .fanout import Runner, SerialRunner
from .metrics import SCALE_BYTES, packed_bytes
from .progress import ProgressFn
from .result import Result

# Hints: a layer's weights have outliers when the largest magnitude is this many times the 99.9th percentile of
# magnitudes (then min-max clipping wastes most of the grid); an activation range is wide when its maximum is
# this many times its 99.99th percentile.
WEIGHT_OUTLIER_RATIO = 3.0
ACTIVATION_OUTLIER_RATIO = 4.0
LOW_SQNR_DB = 25.0  # below this the layer's own error is large at these bits (~4 effective bits)


@dataclass
class Damage:
    """What one evaluation measured against FP32."""

    agreement: float
    kl_divergence: float
    quant_top1: float | None = None

    @classmethod
    def of(cls, result: Result) -> Damage:
        m = result.metrics
        return cls(float(m["agreement"]), float(m["kl_divergence"]), m.get("quant_top1"))


@dataclass
class LayerSensitivity:
    """One unit's row: what it is, what it weighs, the proxy and what was measured."""

    name: str
    kind: str
    parameters: int
    weight_bytes: dict[int, int]  # bits -> bytes of this layer's weights at that width (empty: no weights)
    proxy_db: float | None  # the lower of weight SQNR and expected output SQNR at the config's bits (None: none)
    hints: list[str] = field(default_factory=list)
    only: Damage | None = None  # only this layer quantized
    all_but: Damage | None = None  # every layer but this one quantized


@dataclass
class SensitivityReport:
    config: dict[str, Any]
    fp32_top1: float | None
    quantized: Damage  # the config as it is: every layer quantized
    layers: list[LayerSensitivity]  # ranked, most damaging first
    runner: str
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        return _clean(asdict(self))


def _clean(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_clean(v) for v in value]
    return value


def weight_bytes(weight: torch.Tensor, bits: int, config_weights: Any, out_channels: int) -> int:
    """Bytes of ``weight`` at ``bits`` with the config's granularity: packed codes, scales, zero points."""
    n = weight.numel()
    if config_weights.granularity == "per_tensor":
        scales = 1
    elif config_weights.granularity == "per_channel":
        scales = out_channels
    else:
        per_row = n // max(out_channels, 1)
        scales = out_channels * math.ceil(per_row / max(config_weights.group_size or per_row, 1))
    zero_points = 0 if config_weights.scheme == "symmetric" else packed_bytes(scales, bits)
    return packed_bytes(n, bits) + scales * SCALE_BYTES + zero_points


def _hints(explorer: Any, config: QuantConfig, name: str, weight: torch.Tensor | None, groups: int,
           proxy_db: float | None) -> list[str]:
    hints = []
    if weight is not None:
        mags = weight.abs().flatten().float()
        if mags.numel() >= 16:
            p999 = float(torch.quantile(mags[: 1 << 20], 0.999))
            ratio = float(mags.max()) / p999 if p999 > 0 else math.inf
            if ratio >= WEIGHT_OUTLIER_RATIO:
                hints.append(f"weight outliers: the largest weight is {ratio:.1f}x the 99.9th percentile "
                             "(min-max clipping spends most of the grid on them; try percentile or MSE clipping)")
        if groups > 1 and groups == weight.shape[0]:
            per = weight[0].numel()
            hints.append(f"depthwise: {per} weights per channel, so few that a coarse grid cannot represent them")
    if config.mode == "static":
        stats = explorer.calibrate(config).points.get(name)
        if stats is not None and stats.count:
            from .ranges import activation_range

            _, hi = activation_range(stats, method="percentile", bits=8, scheme="asymmetric", percentile=99.99)
            top = max(abs(stats.max), abs(stats.min))
            if hi > 0 and top / hi >= ACTIVATION_OUTLIER_RATIO:
                hints.append(f"wide activation range: the output's maximum is {top / hi:.0f}x its 99.99th percentile "
                             "(percentile, MSE or KL clipping keeps resolution for the bulk)")
    if proxy_db is not None and proxy_db < LOW_SQNR_DB:
        hints.append(f"low SQNR at these bits ({proxy_db:.1f} dB): more bits, or keep it in float")
    return hints


def proxy(explorer: Any, config: QuantConfig, *, candidate_bits: Sequence[int] = (8, 6, 4)) -> list[LayerSensitivity]:
    """Every unit with its weight bytes, proxy SQNR and hints, from the plan and the statistics (no model run)."""
    for bits in candidate_bits:
        if isinstance(bits, bool) or not isinstance(bits, int) or not MIN_BITS <= bits <= MAX_BITS:
            raise ConfigError(f"candidate bits: got {bits!r}; allowed: integers from {MIN_BITS} to {MAX_BITS}")
    prepared = explorer.prepared(config.fold_batchnorm)
    plan = explorer.plan(config)
    rows = []
    for unit in prepared.units:
        lq = plan.layers.get(unit.name)
        pq = plan.points.get(unit.name)
        dbs = []
        if lq is not None and lq.quant is not None:
            dbs.append(lq.error["sqnr_db"])
        if pq is not None and pq.error is not None:
            dbs.append(pq.error.sqnr_db)
        proxy_db = min(dbs) if dbs else None
        weight = prepared.weight(unit) if unit.has_weights else None
        module = prepared.weight_module(unit) if unit.has_weights else None
        groups = int(getattr(module, "groups", 1))
        sizes = {}
        if weight is not None:
            wq = config.weight_quant_for(unit.name) or config.weights
            sizes = {b: weight_bytes(weight, b, wq, int(weight.shape[0])) for b in sorted(set(candidate_bits), reverse=True)}
        rows.append(LayerSensitivity(
            name=unit.name, kind=unit.kind, parameters=int(weight.numel()) if weight is not None else 0,
            weight_bytes=sizes, proxy_db=proxy_db, hints=_hints(explorer, config, unit.name, weight, groups, proxy_db),
        ))
    return rows


def configs_for(config: QuantConfig, unit_names: Sequence[str], name: str, *,
                has_weights: bool = True) -> tuple[QuantConfig, QuantConfig]:
    """(only ``name`` quantized, every unit but ``name`` quantized) on top of ``config``.

    A unit without weights (an add, a pooling) quantized alone leaves no weight for the rounding, bias correction
    or fine-tuning of ``config.algorithms`` to act on: they are off in its "only" config.
    """
    only = config.replace(keep_float=tuple(u for u in unit_names if u != name),
                          overrides={k: v for k, v in config.overrides.items() if k == name})
    if not has_weights and config.algorithms.after_rounding:
        only = only.replace(algorithms=dataclasses.replace(config.algorithms, rounding="nearest", bias_correction=False,
                                                           finetune=None))
    all_but = config.replace(keep_float=tuple(dict.fromkeys([*config.keep_float, name])),
                             overrides={k: v for k, v in config.overrides.items() if k != name})
    return only, all_but


def rank(rows: list[LayerSensitivity]) -> list[LayerSensitivity]:
    """Most damaging first: agreement lost when only the layer is quantized, then KL; unmeasured rows by proxy."""
    def key(row: LayerSensitivity) -> tuple[int, float, float]:
        if row.only is not None:
            return (0, row.only.agreement, -row.only.kl_divergence)
        return (1, row.proxy_db if row.proxy_db is not None else math.inf, 0.0)

    return sorted(rows, key=key)


def sensitivity(
    explorer: Any, config: QuantConfig, *, runner: Runner | None = None, layers: Sequence[str] | None = None,
    candidate_bits: Sequence[int] = (8, 6, 4), on_progress: ProgressFn | None = None,
    on_row: Callable[[LayerSensitivity], None] | None = None,
) -> SensitivityReport:
    """Measure every unit (or ``layers``) alone and spared; see the module docstring.

    ``on_row`` is called with each row as soon as both of its evaluations are in (the dashboard
    fills its chart in); ``on_progress(done, total, "sensitivity")`` after each evaluation.
    """
    start = time.perf_counter()
    runner = runner if runner is not None else SerialRunner(explorer)
    rows = {row.name: row for row in proxy(explorer, config, candidate_bits=candidate_bits)}
    names = list(rows)
    # Without static activations an add or a pooling unit quantizes nothing: nothing to measure.
    quantizing = [r.name for r in rows.values() if r.weight_bytes or config.mode == "static"]
    wanted = list(layers) if layers is not None else quantizing
    unknown = [n for n in wanted if n not in rows]
    if unknown:
        raise ConfigError(f"layers: no layer named {unknown[0]!r}; allowed: {', '.join(names[:60])}")
    base = runner.evaluate_many([config])[0]
    configs: list[QuantConfig] = []
    for name in wanted:
        configs.extend(configs_for(config, names, name, has_weights=bool(rows[name].weight_bytes)))
    done = [0]

    def on_result(i: int, result: Result) -> None:
        row = rows[wanted[i // 2]]
        if i % 2 == 0:
            row.only = Damage.of(result)
        else:
            row.all_but = Damage.of(result)
        done[0] += 1
        if on_progress is not None:
            on_progress(done[0], len(configs), "sensitivity")
        if on_row is not None and row.only is not None and row.all_but is not None:
            on_row(row)

    runner.evaluate_many(configs, on_result=on_result)
    return SensitivityReport(
        config=config.to_dict(), fp32_top1=base.metrics.get("fp32_top1"), quantized=Damage.of(base),
        layers=rank([rows[n] for n in names]), runner=runner.name, seconds=time.perf_counter() - start,
    )
