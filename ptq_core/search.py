"""Mixed precision to a target: the smallest weights that still meet an accuracy target, and the frontier found.

What lives here: :class:`Target` (top-1 drop, agreement or KL bounds), :class:`Candidates` (weight
widths per layer, the activation width and whether an activation point may stay in float, whether a
layer may stay in float), :func:`search` and what it returns (:class:`SearchResult`, :class:`Point`).
Evaluations go through a :class:`ptq_core.fanout.Runner`.

The method: each layer's damage measured per width, a knapsack over it, then bisection with verification.

1. **Base**: every Conv/Linear layer at the widest candidate width, every activation point at the
   candidate activation width (the config's other settings as they are).

   a. With 16 (float) among the activation candidates: each activation point in float alone, on the
      base, is evaluated; the points that lower the output KL are ordered by it, and the fewest of
      them that recover :data:`ACTIVATION_SHARE` of what all of them recover (and meet the target,
      when the base missed it) are found by bisection and left in float (``keep_float_activations``).
      A float activation costs no weight byte, so it comes first, and it buys the headroom the weight
      steps then spend: on EfficientNet-Lite0 the all-W8A8 model is already 0.81 points below FP32,
      one image of 372 is 0.27 points, and a 1-point budget leaves no image for 4-bit layers otherwise.
   b. If the base still misses the target and float is a weight candidate, layers are kept in float
      in the order that helps most (each layer spared alone, measured), the fewest that meet the
      target found by bisection over that order.
2. **One step at a time**: each narrower width of each large layer (the largest that hold
   :data:`STEP_SHARE` of the bytes), alone on top of the base, is evaluated (one evaluation per layer
   and width, all independent: fanned out; a width below the config's takes its own clip range, MSE by
   default, ``Candidates.narrow_clipping``, and optionally its own scheme, ``Candidates.narrow_scheme``).
   Its damage is the increase in output KL over the base, a smooth measure that ranks layers even where
   top-1 on a few hundred images moves by whole images; with it, the bytes the step saves.
3. **Allocation, then bisection**: with damage taken as additive across layers, choosing one width
   per layer is a multiple-choice knapsack, solved by dynamic programming over bytes saved, exact at a
   resolution of 1/:data:`ALLOCATION_CELLS` of the all-INT8 bytes (:func:`_allocations`): for every
   number of bytes saved, the widths with the least summed damage.
   These allocations, from least to most saved, are bisected for the one saving most that still meets
   the target, each candidate verified by an evaluation. Damage is not exactly additive and top-1 moves
   by whole images, so the next few allocations past the bisection point are then evaluated too
   (:data:`REFINE_STEPS`). The knapsack replaced an earlier greedy order (steps by damage per byte, the
   cheapest taken first): a ratio order cannot trade a 4-bit step on one layer for 5 or 6 bits on a
   sensitive one, which is what a tight byte budget needs. On EfficientNet-Lite0, weight-only, with
   3-6-bit symmetric and asymmetric candidates for its 26 largest layers, the knapsack's allocation at
   59.9% of the all-INT8 bytes predicted KL 0.0144 and measured 0.0141 (top-1 0.27 points below FP32);
   the 12 largest layers at 4 bits (59.4%) measure KL 0.040 and 2.4 points below.
4. **Answer**: the smallest-weight evaluated configuration that meets every bound (of equal size,
   the one with fewer float activations), as an ordinary config (``overrides``, ``keep_float``,
   ``keep_float_activations`` and the config's ``algorithms``), reproducible by ``python -m ptq_core
   run`` and exportable to ONNX. When no evaluated configuration meets the target, the one closest
   to it, and ``met`` False.

The INT4 algorithms: every evaluation runs the config's ``algorithms`` as they are, so the answer
reproduces with the same field. GPTQ in its sequential mode (``algorithms.gptq.inputs =
"quantized"``, the default) rounds each layer from its input in the quantized model, every layer
before it already rounded: a layer's codes depend on every other layer's width and on the
activation quantizers, so nothing carries over from one evaluation to the next and each of a
search's hundred evaluations would run GPTQ over the whole model (about a minute on
EfficientNet-Lite0). With ``inputs = "float"`` each layer's Hessian comes from its FP32 input: its
codes depend on its own weights and grid only, so the Explorer computes every Hessian in one FP32
forward and each layer's rounding once per width, and every later evaluation reuses them
(:func:`ptq_core.algorithms.improve`'s ``layer_cache``; on EfficientNet-Lite0 the first evaluation
takes ~30 s more, a layer at a new width ~1 s). That is the mode to search with, and the answer
carries it, so ``run`` computes exactly the same codes from scratch. It gives up the sequential
mode's compensation of upstream error; at 8 bits it is still better than rounding to nearest
(EfficientNet-Lite0 W8A8: 88.44% top-1 against 87.90%, FP32 88.71%; its 8 largest layers at 4 bits:
87.37% against 85.75%).

Why this and not HAWQ-style Hessian traces: one evaluation per layer and width measures the real
damage through the real quantizers (clipping, activation quantizers after it), costs what a
sensitivity run costs, and parallelizes; the bisection then needs about log2(allocations) sequential
evaluations. The allocation itself is HAWQ-V3's (Yao et al. 2021: an integer program over per-layer
sensitivities under a size budget), with measured damage in place of a Hessian-trace estimate.
The frontier is every evaluated point's (weight bytes, accuracy), Pareto-filtered.

Weight bytes follow :func:`ptq_core.sensitivity.weight_bytes` (codes, scales, zero points); a
layer in float counts 4 bytes per weight. The all-INT8 model is every Conv/Linear at 8 bits with
the config's granularity.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from .config import MAX_BITS, MIN_BITS, SCHEMES, WEIGHT_CLIPPING, LayerOverride, QuantConfig
from .errors import ConfigError
from .fanout import Runner, SerialRunner
from .progress import ProgressFn
from .quantize import active_points
from .result import Result
from .sensitivity import weight_bytes

REFINE_STEPS = 8  # allocations tried one by one after the bisection, each one evaluation
# Steps are measured for the largest layers that together hold this share of the base's weight bytes; the rest (on
# EfficientNet-Lite0 the 30 smallest of 60 layers, 2% of the bytes) stay at the widest width. Each layer's steps cost
# as many evaluations as the classifier's; these could save at most 1-1.5% of the bytes.
STEP_SHARE = 0.98
# Byte resolution of the allocation (the knapsack's table): the all-INT8 model's bytes over this many cells.
ALLOCATION_CELLS = 4000
FLOAT = 32  # a layer kept in float, as a width
FLOAT_ACTIVATION = 16  # an activation point left in float, as a width (the "16 = float")
# When the base meets the target, activation points are spared until this share of what sparing every helpful one
# recovers (output KL) is recovered: the headroom the weight steps then spend, bought with as few float points as
# possible.
ACTIVATION_SHARE = 0.9


@dataclass(frozen=True)
class Target:
    """What the answer must meet; at least one bound. Drop in top-1 points, agreement in percent, KL in nats."""

    max_drop: float | None = None
    min_agreement: float | None = None
    max_kl: float | None = None

    def validate(self, labeled: bool = True) -> None:
        if self.max_drop is None and self.min_agreement is None and self.max_kl is None:
            raise ConfigError("target: none given; allowed: --max-drop POINTS (0-100), --min-agreement PERCENT (0-100) "
                              "or --max-kl NATS (>= 0)")
        for name, value, lo, hi in (("max-drop", self.max_drop, 0.0, 100.0), ("min-agreement", self.min_agreement, 0.0, 100.0),
                                    ("max-kl", self.max_kl, 0.0, math.inf)):
            if value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not lo <= value <= hi:
                allowed = f"a number from {lo:g} to {hi:g}" if math.isfinite(hi) else f"a number >= {lo:g}"
                raise ConfigError(f"{name}: got {value!r}; allowed: {allowed}")
        if self.max_drop is not None and not labeled:
            raise ConfigError("max-drop: the data set is unlabeled, so there is no top-1 to drop; allowed: "
                              "--min-agreement or --max-kl")

    def meets(self, m: dict[str, Any]) -> bool:
        return self.shortfall(m) <= 0.0

    def shortfall(self, m: dict[str, Any]) -> float:
        """How far ``m`` is from meeting every bound, each in its own unit (0 or less: met)."""
        gaps = []
        if self.max_drop is not None:
            gaps.append(100 * (m["fp32_top1"] - m["quant_top1"]) - self.max_drop)
        if self.min_agreement is not None:
            gaps.append(self.min_agreement - 100 * m["agreement"])
        if self.max_kl is not None:
            gaps.append(m["kl_divergence"] - self.max_kl)
        return max(gaps)

    def describe(self) -> str:
        parts = []
        if self.max_drop is not None:
            parts.append(f"top-1 drop <= {self.max_drop:g} points")
        if self.min_agreement is not None:
            parts.append(f"agreement >= {self.min_agreement:g}%")
        if self.max_kl is not None:
            parts.append(f"KL <= {self.max_kl:g}")
        return " and ".join(parts)


@dataclass(frozen=True)
class Candidates:
    """Widths a layer's weights may take, and whether a layer may stay in float (to reach the target)."""

    weight_bits: tuple[int, ...] = (8, 4)
    allow_float: bool = False
    # Clipping of a width narrower than the layer's own in the config ("keep": the config's). A clip range chosen
    # for 8 bits (min-max, a 99.99th percentile) wastes a 4-bit grid on outliers; MSE picks the range for the width.
    # EfficientNet-Lite0, its 8 largest layers at 4 bits: 84.68% top-1 with the config's percentile 99.99,
    # 85.48% with MSE (FP32 88.71%, all-W8 87.90%); the classifier alone: 87.10% vs 87.63%.
    narrow_clipping: str = "mse"
    # Widths of the activation quantizers: one integer width (every point's, in the base) and optionally
    # FLOAT_ACTIVATION, which lets the search spare the points that hurt most (keep_float_activations). A spared point
    # costs no weight byte, only integer kernels (its readers run in float), so only the fewest that help are spared.
    # None: the config's own activation widths, no point in float.
    activation_bits: tuple[int, ...] | None = None
    # Scheme of a width narrower than the layer's own ("keep": the config's). Asymmetric narrow weights (a zero point
    # per channel) lose less: on EfficientNet-Lite0 each large layer alone at 4 bits gives an output KL 12-24% lower
    # (benchmarks/RESULTS.md). LiteRT/TFLite takes symmetric weights only: "keep" (symmetric configs) for a model bound
    # for it.
    narrow_scheme: str = "keep"

    def validate(self) -> None:
        if self.narrow_scheme != "keep" and self.narrow_scheme not in SCHEMES:
            raise ConfigError(f"narrow-scheme: got {self.narrow_scheme!r}; allowed: {', '.join(SCHEMES)} or keep (the "
                              "config's own scheme)")
        if self.narrow_clipping != "keep" and self.narrow_clipping not in WEIGHT_CLIPPING:
            raise ConfigError(f"narrow-clipping: got {self.narrow_clipping!r}; allowed: {', '.join(WEIGHT_CLIPPING)} "
                              "or keep (the config's own clipping)")
        if not self.weight_bits:
            raise ConfigError(f"weight-bits: got an empty set; allowed: one or more widths from {MIN_BITS} to {MAX_BITS}, "
                              "e.g. 8,6,4")
        for bits in self.weight_bits:
            if isinstance(bits, bool) or not isinstance(bits, int) or not MIN_BITS <= bits <= MAX_BITS:
                raise ConfigError(f"weight-bits: got {bits!r}; allowed: widths from {MIN_BITS} to {MAX_BITS}, e.g. 8,6,4")
        if self.activation_bits is None:
            return
        allowed = (f"one width from {MIN_BITS} to {MAX_BITS}, optionally with {FLOAT_ACTIVATION} (the activation may "
                   "stay in float), e.g. 8,16")
        if not self.activation_bits:
            raise ConfigError(f"activation-bits: got an empty set; allowed: {allowed}")
        for bits in self.activation_bits:
            if (isinstance(bits, bool) or not isinstance(bits, int)
                    or not (MIN_BITS <= bits <= MAX_BITS or bits == FLOAT_ACTIVATION)):
                raise ConfigError(f"activation-bits: got {bits!r}; allowed: {allowed}")
        integer = sorted({b for b in self.activation_bits if b != FLOAT_ACTIVATION}, reverse=True)
        if len(integer) != 1:
            got = ",".join(map(str, self.activation_bits))
            why = ("no integer width (for float activations everywhere, set \"activations\": null in the config)"
                   if not integer else "a narrower activation saves no weight byte, so the search would never take it")
            raise ConfigError(f"activation-bits: got {got}; allowed: {allowed}: {why}")

    @property
    def activation_width(self) -> int | None:
        """The integer width of every activation point in the base (None: the config's own)."""
        if self.activation_bits is None:
            return None
        return max(b for b in self.activation_bits if b != FLOAT_ACTIVATION)


@dataclass
class Point:
    """One evaluated configuration: its widths, its weight bytes, what it measured, whether it meets the target."""

    label: str
    weight_bytes: int
    agreement: float
    kl_divergence: float
    quant_top1: float | None
    meets: bool
    config: dict[str, Any]
    frontier: bool = False


@dataclass
class SearchResult:
    target: dict[str, Any]
    met: bool
    message: str  # one line: met or not, and how close
    best: Point
    int8_weight_bytes: int
    fp32_top1: float | None
    points: list[Point] = field(default_factory=list)  # every evaluated configuration, in order
    runner: str = "serial"
    seconds: float = 0.0

    @property
    def frontier(self) -> list[Point]:
        return [p for p in self.points if p.frontier]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _with_bits(config: QuantConfig, widths: dict[str, int], narrow_clipping: str = "keep",
               float_activations: Sequence[str] = (), narrow_scheme: str = "keep") -> QuantConfig:
    """``config`` with each named layer's weights at its width (FLOAT: kept in float), and the activation points
    ``float_activations`` in float too.

    A width below the layer's own in ``config`` takes ``narrow_clipping`` and ``narrow_scheme`` (unless "keep").
    """
    overrides = dict(config.overrides)
    keep = list(config.keep_float)
    for name, bits in widths.items():
        if bits == FLOAT:
            keep.append(name)
            continue
        old = overrides.get(name, LayerOverride())
        own = config.weight_quant_for(name) or config.weights
        weights: dict[str, Any] = {**old.weights, "bits": bits}
        if narrow_clipping != "keep" and bits < own.bits and own.clipping != narrow_clipping:
            weights["clipping"] = narrow_clipping
        if narrow_scheme != "keep" and bits < own.bits and own.scheme != narrow_scheme:
            weights["scheme"] = narrow_scheme
        overrides[name] = LayerOverride(weights=weights, activations=old.activations)
    return config.replace(overrides=overrides, keep_float=tuple(dict.fromkeys(keep)),
                          keep_float_activations=tuple(dict.fromkeys([*config.keep_float_activations, *float_activations])))


def search(
    explorer: Any, config: QuantConfig, target: Target, candidates: Candidates = Candidates(), *,
    runner: Runner | None = None, on_progress: ProgressFn | None = None, on_point: Callable[[Point], None] | None = None,
) -> SearchResult:
    """See the module docstring. ``on_point`` gets every evaluated point as soon as it is measured (the dashboard draws
    them and keeps them if the search is stopped); ``on_progress(done, total, phase)`` after each evaluation."""
    start = time.perf_counter()
    candidates.validate()
    target.validate(labeled=explorer.dataset.evaluation_labels is not None and explorer.entry.pretrained)
    spare_activations = FLOAT_ACTIVATION in (candidates.activation_bits or ())
    if config.activations is None:
        if candidates.activation_bits is not None:
            raise ConfigError(f"activation-bits: got {','.join(map(str, candidates.activation_bits))} with a weight-only "
                              "config (activations is null); allowed: none given, or a config that quantizes activations")
    elif candidates.activation_width is not None and candidates.activation_width != config.activations.bits:
        config = config.replace(activations=dataclasses.replace(config.activations, bits=candidates.activation_width))
    runner = runner if runner is not None else SerialRunner(explorer)
    prepared = explorer.prepared(config.fold_batchnorm)
    layers = [u for u in prepared.units if u.has_weights and u.name not in config.keep_float]
    if not layers:
        raise ConfigError("search: every Conv/Linear layer is kept in float; allowed: a config with quantized layers")
    widths_desc = sorted(set(candidates.weight_bits), reverse=True)
    high = widths_desc[0]

    def layer_bytes(unit: Any, bits: int) -> int:
        w = prepared.weight(unit)
        if bits == FLOAT:
            return 4 * w.numel()
        # the layer's quantization in the config the search evaluates at this width (narrow clipping and scheme too)
        quant = _with_bits(config, {unit.name: bits}, candidates.narrow_clipping, (),
                           candidates.narrow_scheme).weight_quant_for(unit.name)
        assert quant is not None and quant.bits == bits
        return weight_bytes(w, bits, quant, int(w.shape[0]))

    table = {u.name: {b: layer_bytes(u, b) for b in [*widths_desc, 8, FLOAT]} for u in layers}
    int8_bytes = sum(t[8] for t in table.values())
    points: list[Point] = []
    evaluations = [0]
    spared: tuple[str, ...] = ()  # activation points in float, decided in step 1

    def total_bytes(widths: dict[str, int]) -> int:
        return sum(table[n][widths.get(n, high)] for n in table)

    def evaluate(batch: list[tuple[str, dict[str, int]]], phase: str, estimate: int,
                 acts: Sequence[tuple[str, ...]] | None = None) -> list[Result]:
        acts = acts if acts is not None else [spared] * len(batch)
        configs = [_with_bits(config, w, candidates.narrow_clipping, a, candidates.narrow_scheme)
                   for (_, w), a in zip(batch, acts, strict=True)]
        results: list[Result | None] = [None] * len(batch)

        def on_result(i: int, result: Result) -> None:
            results[i] = result
            label, widths = batch[i]
            m = result.metrics
            point = Point(label, total_bytes(widths), float(m["agreement"]), float(m["kl_divergence"]),
                          m.get("quant_top1"), target.meets(m), configs[i].to_dict())
            points.append(point)
            evaluations[0] += 1
            if on_point is not None:
                on_point(point)
            if on_progress is not None:
                on_progress(evaluations[0], max(estimate, evaluations[0]), phase)

        runner.evaluate_many(configs, on_result=on_result)
        return [r for r in results if r is not None]

    names = [u.name for u in layers]
    act_points = list(active_points(prepared, config)) if spare_activations else []
    log2 = 2 * max(1, math.ceil(math.log2(max(2, len(names)))))
    steps_estimate = (len(_largest_layers(names, {n: table[n][high] for n in names}, STEP_SHARE)) * (len(widths_desc) - 1)
                      + math.ceil(math.log2(ALLOCATION_CELLS)) + REFINE_STEPS
                      + (len(act_points) + 1 + log2 if act_points else 0))
    base_widths = {n: high for n in names}
    base = evaluate([(f"every layer at {high} bits", base_widths)], "base", steps_estimate)[0]
    fp32_top1 = base.metrics.get("fp32_top1")

    # 1a. Activation points in float (no weight byte): measured one by one, the fewest of the most helpful kept.
    if act_points:
        alone = evaluate([(f"activation {p} in float", base_widths) for p in act_points], "activations in float",
                         steps_estimate, acts=[(p,) for p in act_points])
        base_kl = float(base.metrics["kl_divergence"])
        helpful = sorted((float(r.metrics["kl_divergence"]), i) for i, r in enumerate(alone)
                         if float(r.metrics["kl_divergence"]) < base_kl)
        order_acts = [act_points[i] for _, i in helpful]
        if order_acts:
            def acts_metrics(k: int) -> dict[str, Any]:
                return evaluate([(f"{k} most helpful activations in float", base_widths)], "activations in float",
                                steps_estimate, acts=[tuple(order_acts[:k])])[0].metrics

            every = acts_metrics(len(order_acts))
            goal_kl = base_kl - ACTIVATION_SHARE * (base_kl - float(every["kl_divergence"]))
            misses = not target.meets(base.metrics)

            def enough(m: dict[str, Any]) -> bool:  # meets the target when the base did not; most of the gain always
                return float(m["kl_divergence"]) <= goal_kl and (not misses or target.meets(m))

            k = _smallest_meeting(len(order_acts), acts_metrics, enough, known=every)
            k = len(order_acts) if k is None else k  # none enough: all of them, the closest
            spared = tuple(order_acts[:k])
            base = evaluate([(f"every layer at {high} bits, {k} activations in float", base_widths)], "base",
                            steps_estimate)[0]

    # 1b. When the widest widths still miss the target: keep the layers that help most in float, the fewest that do it.
    floated: list[str] = []
    if not target.meets(base.metrics) and candidates.allow_float:
        spared_layers = evaluate([(f"{n} in float", {**base_widths, n: FLOAT}) for n in names], "layers in float",
                                 steps_estimate + len(names))
        order = sorted(range(len(names)), key=lambda i: target.shortfall(spared_layers[i].metrics))
        k = _smallest_meeting(len(order), lambda k: evaluate(
            [(f"{k} most helpful layers in float", {**base_widths, **{names[i]: FLOAT for i in order[:k]}})],
            "layers in float", steps_estimate + len(names))[0].metrics, target.meets)
        if k is not None:
            floated = [names[i] for i in order[:k]]
            base_widths.update({n: FLOAT for n in floated})
            base = evaluate([(f"every layer at {high} bits, {k} in float", base_widths)], "base", steps_estimate)[0]

    if target.meets(base.metrics):
        # 2. Each narrower width of each large layer alone, on top of the base: its damage (KL increase) and bytes saved.
        stepped = _largest_layers([n for n in names if n not in floated], {n: table[n][high] for n in names}, STEP_SHARE)
        moves = [(n, b) for n in stepped for b in widths_desc[1:]]
        singles = evaluate([(f"{n} at {b} bits", {**base_widths, n: b}) for n, b in moves], "one layer at a time",
                           steps_estimate)
        base_kl = float(base.metrics["kl_divergence"])
        steps: dict[str, list[tuple[int, int, float]]] = {}
        for (n, b), r in zip(moves, singles, strict=True):
            steps.setdefault(n, []).append((b, table[n][high] - table[n][b],
                                            max(float(r.metrics["kl_divergence"]) - base_kl, 0.0)))

        # 3. The allocations with the least summed damage for each number of bytes saved (a multiple-choice knapsack),
        # bisection over them, verified; then the next few smaller ones tried one by one.
        allocations = _allocations(steps, max(1, int8_bytes // ALLOCATION_CELLS))

        def widths_of(k: int) -> dict[str, int]:
            return {**base_widths, **allocations[k][2]}

        def label_of(k: int) -> str:
            widths = widths_of(k)
            share = 100 * total_bytes(widths) / int8_bytes
            narrow = sum(1 for n in stepped if widths[n] < high)
            return f"allocation {k}: {narrow} layers narrower, {share:.1f}% of all-INT8 (predicted KL +{allocations[k][1]:.4f})"

        measured: dict[int, dict[str, Any]] = {}

        def metrics_after(k: int) -> dict[str, Any]:
            if k not in measured:
                measured[k] = evaluate([(label_of(k), widths_of(k))], "combining steps", steps_estimate)[0].metrics
            return measured[k]

        k_best = _largest_meeting(len(allocations) - 1, metrics_after, target)
        # Damage is not exactly additive and top-1 moves by whole images: the next smaller allocations may still meet.
        for k in [k for k in range(k_best + 1, len(allocations)) if k not in measured][:REFINE_STEPS]:
            measured[k] = evaluate([(label_of(k) + ", tried after the bisection", widths_of(k))], "refining",
                                   steps_estimate)[0].metrics

    _mark_frontier(points)
    meeting = [p for p in points if p.meets]
    if meeting:
        best = min(meeting, key=lambda p: (p.weight_bytes, len(p.config["keep_float_activations"]), -p.agreement))
        floats = len(best.config["keep_float_activations"])
        message = (f"met ({target.describe()}): weights {best.weight_bytes:,} bytes = "
                   f"{100 * best.weight_bytes / int8_bytes:.1f}% of the all-INT8 model ({int8_bytes:,} bytes)"
                   f"{f', {floats} activation points in float' if floats else ''}; {_measured(best, fp32_top1)}")
    else:
        best = min(points, key=lambda p: target.shortfall(_metrics(p, fp32_top1)))
        wider = " or allow float layers" if not candidates.allow_float else ""
        wider += " or float activations (16)" if not spare_activations and config.mode == "static" else ""
        message = (f"NOT met ({target.describe()}): the closest configuration evaluated, {best.label}, falls short by "
                   f"{target.shortfall(_metrics(best, fp32_top1)):.3g} ({_measured(best, fp32_top1)}); "
                   f"try wider widths{wider}")
    return SearchResult(
        target=dataclasses.asdict(target), met=bool(meeting), message=message, best=best, int8_weight_bytes=int8_bytes,
        fp32_top1=fp32_top1, points=points, runner=runner.name, seconds=time.perf_counter() - start,
    )


def _largest_layers(names: Sequence[str], nbytes: dict[str, int], share: float) -> list[str]:
    """The largest of ``names`` that together hold ``share`` of their bytes (at least one), in ``names``' order."""
    total = sum(nbytes[n] for n in names)
    chosen: set[str] = set()
    held = 0
    for n in sorted(names, key=lambda n: -nbytes[n]):
        if chosen and held >= share * total:
            break
        chosen.add(n)
        held += nbytes[n]
    return [n for n in names if n in chosen]


def _allocations(steps: dict[str, list[tuple[int, int, float]]], quantum: int) -> list[tuple[int, float, dict[str, int]]]:
    """Every allocation no other beats on both bytes saved and summed damage, by bytes saved.

    ``steps``: layer -> its narrower widths as ``(bits, bytes saved, damage)``. Each layer takes at most one of them
    (a multiple-choice knapsack), damage adds up across layers; solved exactly by dynamic programming over bytes
    saved in units of ``quantum`` (rounded down, so an allocation saves at least what its cell says). Returns
    ``(bytes saved, summed damage, {layer: bits})``.
    """
    best: dict[int, tuple[float, int, tuple[tuple[str, int], ...]]] = {0: (0.0, 0, ())}
    for name, options in steps.items():
        grown = dict(best)
        for cell, (damage, saved, chosen) in best.items():
            for bits, step_saved, step_damage in options:
                key = cell + step_saved // quantum
                candidate = (damage + step_damage, saved + step_saved, (*chosen, (name, bits)))
                if key not in grown or candidate[0] < grown[key][0]:
                    grown[key] = candidate
        best = {}
        lowest = math.inf
        for cell in sorted(grown, reverse=True):  # keep a cell only if it is less damaging than every larger one
            if grown[cell][0] < lowest:
                best[cell] = grown[cell]
                lowest = grown[cell][0]
    return [(saved, damage, dict(chosen)) for _, (damage, saved, chosen) in sorted(best.items())]


def _metrics(p: Point, fp32_top1: float | None) -> dict[str, Any]:
    return {"agreement": p.agreement, "kl_divergence": p.kl_divergence, "quant_top1": p.quant_top1, "fp32_top1": fp32_top1}


def _measured(p: Point, fp32_top1: float | None) -> str:
    parts = [f"agreement {100 * p.agreement:.2f}%", f"KL {p.kl_divergence:.4g}"]
    if p.quant_top1 is not None and fp32_top1 is not None:
        drop = 100 * (fp32_top1 - p.quant_top1)
        side = f"{drop:.2f} points below" if drop >= 0 else f"{-drop:.2f} points above"
        parts.insert(0, f"top-1 {100 * p.quant_top1:.2f}% ({side} FP32's {100 * fp32_top1:.2f}%)")
    return ", ".join(parts)


def _largest_meeting(n: int, metrics_of: Callable[[int], dict[str, Any]], target: Target) -> int:
    """The largest k in [0, n] whose configuration meets the target, assuming k=0 does (bisection, verified)."""
    lo, hi = 0, n
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if target.meets(metrics_of(mid)):
            lo = mid
        else:
            hi = mid - 1
    return lo


def _smallest_meeting(n: int, metrics_of: Callable[[int], dict[str, Any]], ok: Callable[[dict[str, Any]], bool], *,
                      known: dict[str, Any] | None = None) -> int | None:
    """The smallest k in [1, n] whose configuration is ``ok`` (None: not even n); ``known``: n's metrics, if measured."""
    if not ok(known if known is not None else metrics_of(n)):
        return None
    lo, hi = 1, n
    while lo < hi:
        mid = (lo + hi) // 2
        if ok(metrics_of(mid)):
            hi = mid
        else:
            lo = mid + 1
    return lo


def _mark_frontier(points: Sequence[Point]) -> None:
    """Pareto front: no other point is at most as large and at least as accurate (by agreement, then KL)."""
    for p in points:
        p.frontier = not any(
            q is not p and q.weight_bytes <= p.weight_bytes and (q.agreement, -q.kl_divergence) >= (p.agreement, -p.kl_divergence)
            and (q.weight_bytes < p.weight_bytes or (q.agreement, -q.kl_divergence) > (p.agreement, -p.kl_divergence))
            for q in points
        )
