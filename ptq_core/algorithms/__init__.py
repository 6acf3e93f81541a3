"""Algorithms that repair what round-to-nearest loses at low bit widths, each switchable alone.

One file per algorithm, each with what it needs and what it does:

* :mod:`.cle` cross-layer equalization: rescales consecutive layers of the float model (data-free);
  the Explorer calibrates the equalized model anew (``PreparedModel.variant == "cle"``).
* :mod:`.adaround` AdaRound and :mod:`.gptq` GPTQ: choose each weight's integer code, layer by
  layer, from the layer's inputs in the quantized model (:mod:`.capture`). GPTQ with ``inputs:
  "float"`` reads them in the FP32 model instead: each layer's result then depends on that layer
  alone, and is computed once per layer and grid (``layer_cache``; what the search reuses).
* :mod:`.bias_correction`: removes the mean shift of each layer's output.
* :mod:`.finetune`: quantization-aware fine-tuning by distillation from the FP32 model.

:func:`improve` runs what a config asks for on a round-to-nearest :class:`~ptq_core.quantize.QuantPlan`
(from the stored statistics, as ever) and returns a new plan: the same scales and zero points
(activation scales too, except after fine-tuning), other integer weight codes and biases. So
everything downstream (simulation, both backends, the ONNX export and the integer runtime check)
uses them unchanged. Order: rounding and bias correction layer by layer in network order (each
layer sees the layers before it already repaired), then fine-tuning of the whole model.

Not here: caching (the Explorer keeps improved plans in memory and on disk), the statistics.
"""

from __future__ import annotations

import copy
import dataclasses
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F

from ..config import Algorithms, QuantConfig
from ..errors import ConfigError
from ..graph import PreparedModel, is_tokens
from ..progress import ProgressFn
from ..quantize import FakeQuantize, LayerQuant, QuantPlan, build_quantized_model, set_layer_weights
from ..ranges import _broadcast_qparams, weight_error
from .adaround import adaround_layer
from .bias_correction import corrected_bias, corrected_bias_through
from .capture import LayerData, layer_data, read_fp32, read_fp32_hessians, token_lengths, walk_quantized
from .cle import equalize, find_pairs
from .finetune import LearnableFakeQuantize, QATWeight, finetune
from .geometry import LayerGeometry, activation_fn
from .gptq import gptq_layer

__all__ = ["equalize", "find_pairs", "improve", "check"]


def check(prepared: PreparedModel, plan: QuantPlan, config: QuantConfig) -> list[str]:
    """Refuse what cannot apply (ConfigError naming the field); return warnings for what applies only in part."""
    algo = config.algorithms
    warnings: list[str] = []
    quantized = [name for name, lq in plan.layers.items() if lq.quant is not None]
    if algo.after_rounding and not quantized:
        field = "algorithms.rounding" if algo.rounding != "nearest" else (
            "algorithms.bias_correction" if algo.bias_correction else "algorithms.finetune")
        raise ConfigError(f"{field}: no Conv/Linear layer of this model is quantized (all are in keep_float); allowed: "
                          "quantize at least one layer, or switch the algorithm off")
    if algo.cross_layer_equalization and prepared.variant == "cle" and not find_pairs(prepared):
        warnings.append("algorithms.cross_layer_equalization: this model has no pair of consecutive Conv/Linear layers "
                        "(joined by nothing, ReLU or ReLU6) to equalize; nothing changed")
    if algo.smoothquant is not None and config.mode == "weight_only":
        warnings.append("algorithms.smoothquant: applies when activations are quantized (static or dynamic); this "
                        "config quantizes weights only, so there is no activation outlier to move; nothing changed")
    if algo.finetune is not None and config.mode == "dynamic":
        warnings.append("algorithms.finetune: dynamic activations have no scale to train; weights and biases train, the "
                        "activation ranges stay dynamic")
    return warnings


def _layer_view(prepared: PreparedModel, lq: LayerQuant) -> tuple[LayerGeometry, torch.Tensor, torch.Tensor, torch.Tensor]:
    assert lq.unit.module is not None and lq.qparams is not None
    module = prepared.weight_module(lq.unit)
    geo = LayerGeometry.of(lq.unit.name, module)
    w = prepared.weight(lq.unit).float()
    scale, zp = _broadcast_qparams(w, lq.qparams)
    return geo, geo.matrix(w), geo.matrix(scale.expand_as(w).contiguous()), geo.matrix(zp.expand_as(w).float().contiguous())


def improve(
    prepared: PreparedModel, plan: QuantPlan, config: QuantConfig, *, batches: Sequence[torch.Tensor],
    teacher_logits: torch.Tensor | None = None, key: str, on_progress: ProgressFn | None = None,
    layer_cache: dict[Any, Any] | None = None,
) -> QuantPlan:
    """A new plan with ``config.algorithms`` applied (after cross-layer equalization, done on ``prepared`` already).

    ``batches``: the calibration images (the same subset as the statistics); ``teacher_logits``: the FP32 model's
    logits on them, in the same order (needed for fine-tuning); ``key`` identifies the result in caches.
    ``layer_cache``: per-layer results that depend on nothing but the layer, its grid and the FP32 model on these
    ``batches`` (GPTQ with ``inputs: "float"``: the Hessians and each layer's rounding), kept by the caller for the
    next config of the same prepared model and calibration subset (a search evaluates a hundred).
    """
    flush = torch.set_flush_denormal(True)  # Adam's second moments and h(V) near 0 or 1 go denormal: 3-10x slower
    try:
        return _improve(prepared, plan, config, batches=batches, teacher_logits=teacher_logits, key=key,
                        on_progress=on_progress, layer_cache={} if layer_cache is None else layer_cache)
    finally:
        if flush:
            torch.set_flush_denormal(False)


def _joined(batches: Sequence[torch.Tensor]) -> torch.Tensor:
    """The batches as one tensor; token batches of different lengths padded at the end (id 0, mask 0)."""
    if batches and is_tokens(batches[0]):
        width = max(int(b.shape[-1]) for b in batches)
        return torch.cat([F.pad(b, (0, width - int(b.shape[-1]))) for b in batches])
    return torch.cat(list(batches))


def _improve(
    prepared: PreparedModel, plan: QuantPlan, config: QuantConfig, *, batches: Sequence[torch.Tensor],
    teacher_logits: torch.Tensor | None, key: str, on_progress: ProgressFn | None, layer_cache: dict[Any, Any],
) -> QuantPlan:
    algo = config.algorithms
    warnings = check(prepared, plan, config)
    layers = {name: dataclasses.replace(lq) for name, lq in plan.layers.items()}
    points = {name: dataclasses.replace(pq) for name, pq in plan.points.items()}
    report: dict[str, Any] = {"seconds": {}, "layers": {}, "warnings": warnings}
    quantized = [name for name, lq in layers.items() if lq.quant is not None]
    layerwise = algo.rounding != "nearest" or algo.bias_correction
    # A text model's batches are [N, 2, L] tokens, each batch as long as its longest text: the algorithms see
    # every sample's real tokens only (padding is computed by the model but never used).
    lengths = token_lengths(batches)
    float_gptq = algo.rounding == "gptq" and algo.gptq.inputs == "float"
    if layerwise and float_gptq and not algo.bias_correction:
        # Each layer alone, from the FP32 model's inputs: no quantized forward, and every result is reused.
        start = time.perf_counter()
        hessians = _float_hessians(prepared, batches, lengths, layer_cache, on_progress)
        for k, name in enumerate(quantized):
            if on_progress is not None:
                on_progress(k, len(quantized), f"GPTQ (float inputs): layer {k + 1} of {len(quantized)} ({name})")
            report["layers"][name] = _float_gptq_layer(prepared, layers[name], hessians[str(layers[name].unit.module)],
                                                       algo, layer_cache)
        if on_progress is not None:
            on_progress(len(quantized), len(quantized), "GPTQ: done")
        report["seconds"]["layerwise"] = time.perf_counter() - start
    elif layerwise:
        start = time.perf_counter()
        q_gm, _ = build_quantized_model(prepared, plan)
        what = {"adaround": "AdaRound", "gptq": "GPTQ"}.get(algo.rounding, "bias correction")
        views = {name: _layer_view(prepared, layers[name]) for name in quantized}
        paths = {name: str(layers[name].unit.module) for name in quantized}
        hessians = _float_hessians(prepared, batches, lengths, layer_cache, on_progress) if float_gptq else {}
        sampled = {paths[name] for name in quantized
                   if algo.rounding == "adaround" or (algo.bias_correction and layers[name].unit.fused_activation)}
        fp32 = None
        if algo.rounding == "adaround" or algo.bias_correction:
            if on_progress is not None:
                on_progress(0, len(quantized), f"{what}: FP32 outputs of every layer")
            fp32 = read_fp32(copy.deepcopy(prepared.graph_module),
                             {paths[n]: (views[n][0], views[n][1].shape[2]) for n in quantized}, batches,
                             sample=sampled, seed=algo.adaround.seed, lengths=lengths)
        done = [0]

        def repair(name: str) -> Callable[[torch.Tensor], None]:
            def callback(x: torch.Tensor) -> None:
                if on_progress is not None:
                    on_progress(done[0], len(quantized), f"{what}: layer {done[0] + 1} of {len(quantized)} ({name})")
                lq = layers[name]
                geo, w, scale, zp = views[name]
                data = layer_data(x, geo, fp32[paths[name]] if fp32 is not None else None,
                                  hessian=algo.rounding == "gptq" and not float_gptq, lengths=lengths)
                if float_gptq:
                    data.hessian = hessians[paths[name]]
                step = None
                if on_progress is not None:
                    k = done[0]

                    def step(it: int, total: int) -> None:  # within a layer: AdaRound reports every few iterations
                        on_progress(k, len(quantized), f"{what}: layer {k + 1} of {len(quantized)} ({name}), "
                                                       f"iteration {it} of {total}")

                report["layers"][name] = _repair_layer(prepared, lq, geo, w, scale, zp, data, algo, seed_offset=done[0],
                                                       on_step=step)
                set_layer_weights(q_gm, lq)  # the forward goes on through the repaired layer
                done[0] += 1

            return callback

        walk_quantized(q_gm, _joined(batches), {paths[name]: repair(name) for name in quantized})
        if on_progress is not None:
            on_progress(len(quantized), len(quantized), f"{what}: done")
        report["seconds"]["layerwise"] = time.perf_counter() - start
    if algo.finetune is not None and quantized:
        if teacher_logits is None:
            raise ConfigError("algorithms.finetune: needs the FP32 model's logits on the calibration images")
        start = time.perf_counter()
        gm, _ = build_quantized_model(prepared, QuantPlan(plan.mode, layers, points))
        qat_layers = {}
        for name in quantized:
            lq = layers[name]
            assert lq.qparams is not None and lq.unit.module is not None and lq.fq_weight is not None
            w = prepared.weight(lq.unit).float()
            scale, zp = _broadcast_qparams(w, lq.qparams)
            start_w = lq.fq_weight if algo.rounding != "nearest" else w
            bias = lq.bias if lq.bias is not None else prepared.bias(lq.unit)
            b = bias if bias is not None else torch.zeros(w.shape[0])
            qat_layers[name] = (lq.unit.module, QATWeight(gm.get_submodule(lq.unit.module), start_w, scale.expand_as(w),
                                                          zp.float().expand_as(w), lq.qparams.qmin, lq.qparams.qmax, b))
        qat_points = {}
        for mod_path, mod in gm.named_modules():
            if isinstance(mod, FakeQuantize):  # static quantizers; dynamic ones have no scale to train
                pq = points[mod.point]
                assert pq.scale is not None and pq.zero_point is not None
                qat_points[mod.point] = (mod_path, LearnableFakeQuantize(pq.scale, pq.zero_point, pq.qmin, pq.qmax))
        ft = algo.finetune
        images = _joined(batches)
        step = (lambda d, t: on_progress(d, t, f"fine-tuning: step {d} of {t}")) if on_progress is not None else None
        new_weights, scales, summary = finetune(gm, qat_layers, qat_points, images, teacher_logits, steps=ft.steps, lr=ft.lr,
                                                batch_size=ft.batch_size, seed=ft.seed, on_step=step)
        for name, (w_new, b_new) in new_weights.items():
            lq = layers[name]
            assert lq.qparams is not None
            lq.fq_weight = w_new.to(prepared.weight(lq.unit).dtype)
            lq.bias = b_new
            lq.error = _weight_error(prepared.weight(lq.unit), lq)
            report["layers"].setdefault(name, {"weight_sqnr_db_nearest": plan.layers[name].error.get("sqnr_db")})
            report["layers"][name]["weight_sqnr_db"] = lq.error["sqnr_db"]
        for name, new_scale in scales.items():
            points[name] = points[name].with_scale(new_scale)
        report["finetune"] = summary
        report["seconds"]["finetune"] = time.perf_counter() - start
    return QuantPlan(plan.mode, layers, points, list(plan.warnings) + [w for w in warnings if w not in plan.warnings],
                     algorithm_key=key,
                     algorithms={**plan.algorithms, **report})


def _float_hessians(prepared: PreparedModel, batches: Sequence[torch.Tensor], lengths: list[int] | None,
                    cache: dict[Any, Any], on_progress: ProgressFn | None) -> dict[str, torch.Tensor]:
    """Every Conv/Linear layer's Hessian from its FP32 input (module path -> ``[G, I, I]``): one FP32 forward for all,
    whichever layers this config quantizes, so the next config (another layer quantized) finds its own here."""
    units = [u for u in prepared.units if u.has_weights and u.module is not None]
    missing = {str(u.module): LayerGeometry.of(u.name, prepared.weight_module(u)) for u in units
               if ("hessian", str(u.module)) not in cache}
    if missing:
        if on_progress is not None:
            on_progress(0, len(units), "GPTQ (float inputs): FP32 inputs of every layer")
        found = read_fp32_hessians(copy.deepcopy(prepared.graph_module), missing, batches, lengths=lengths)
        cache.update({("hessian", path): h for path, h in found.items()})
    return {str(u.module): cache[("hessian", str(u.module))] for u in units if ("hessian", str(u.module)) in cache}


def _float_gptq_layer(prepared: PreparedModel, lq: LayerQuant, hessian: torch.Tensor, algo: Algorithms,
                      cache: dict[Any, Any]) -> dict[str, Any]:
    """GPTQ of one layer from its FP32 Hessian, in place on ``lq``; computed once per layer, grid and GPTQ setting."""
    assert lq.quant is not None
    key = ("gptq", lq.unit.name, dataclasses.astuple(lq.quant), algo.gptq.damping, algo.gptq.act_order)
    if key not in cache:
        geo, w, scale, zp = _layer_view(prepared, lq)
        data = LayerData(x_mean=torch.zeros(0), y_mean=None, hessian=hessian, x=None, y=None)
        row = _repair_layer(prepared, lq, geo, w, scale, zp, data, algo, seed_offset=0)
        cache[key] = (lq.fq_weight, dict(lq.error), row)
    fq_weight, error, row = cache[key]
    lq.fq_weight, lq.error = fq_weight.clone(), dict(error)  # a copy: fine-tuning starts from it
    return dict(row)


def _repair_layer(prepared: PreparedModel, lq: LayerQuant, geo: LayerGeometry, w: torch.Tensor, scale: torch.Tensor,
                  zp: torch.Tensor, data: LayerData, algo: Algorithms, *, seed_offset: int,
                  on_step: Callable[[int, int], None] | None = None) -> dict[str, Any]:
    """Round (AdaRound/GPTQ/nearest) and correct the bias of one layer, in place on ``lq``; its report row."""
    assert lq.qparams is not None and lq.fq_weight is not None
    bias = prepared.bias(lq.unit)
    b = (bias if bias is not None else torch.zeros(w.shape[0] * w.shape[1])).float().reshape(w.shape[0], w.shape[1])
    row: dict[str, Any] = {"weight_sqnr_db_nearest": lq.error.get("sqnr_db")}
    act = activation_fn(lq.unit.fused_activation)
    wq = geo.matrix(lq.fq_weight.float())
    if algo.rounding == "adaround":
        assert data.x is not None and data.y is not None
        wq, stats = adaround_layer(w, scale, zp, lq.qparams.qmin, lq.qparams.qmax, b, data.x, data.y, act,
                                   iterations=algo.adaround.iterations, seed=algo.adaround.seed * 1_000_003 + seed_offset,
                                   on_step=on_step)
        row.update(stats)
    elif algo.rounding == "gptq":
        assert data.hessian is not None
        wq, stats = gptq_layer(w, scale, zp, lq.qparams.qmin, lq.qparams.qmax, data.hessian,
                               damping=algo.gptq.damping, act_order=algo.gptq.act_order)
        row.update(stats)
    shape, dtype = prepared.weight(lq.unit).shape, prepared.weight(lq.unit).dtype
    lq.fq_weight = wq.reshape(shape).to(dtype)
    lq.error = _weight_error(prepared.weight(lq.unit), lq)
    row["weight_sqnr_db"] = lq.error["sqnr_db"]
    if algo.bias_correction:
        if lq.unit.fused_activation is not None:
            assert data.x is not None and data.y is not None
            new_b = corrected_bias_through(wq, b, data.x, data.y, act)
        else:
            assert data.y_mean is not None
            new_b = corrected_bias(wq, data.x_mean, data.y_mean)
        row["bias_shift_mean_abs"] = float((new_b - b.reshape(-1)).abs().mean())
        lq.bias = new_b
    return row


def _weight_error(w: torch.Tensor, lq: LayerQuant) -> dict[str, float]:
    """``weight_error`` of the layer's grid, with mse and SQNR those of the weights the algorithm placed on it
    (not the grid's nearest points)."""
    from ..metrics import sqnr_db

    assert lq.qparams is not None and lq.fq_weight is not None
    error = dict(weight_error(w, lq.qparams))
    wf = w.double()
    mse = float((wf - lq.fq_weight.double()).square().mean())
    error.update({"mse": mse, "sqnr_db": sqnr_db(float(wf.square().mean()), mse)})
    return error
