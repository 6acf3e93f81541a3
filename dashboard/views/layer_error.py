"""Layer error page: per-layer SQNR in network order, a sortable table, one-click fixes for the worst layers, and
with algorithms on (config.algorithms), every layer before and after them."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd
import streamlit as st

from dashboard import actions, charts, labels, resources
from ptq_core.config import Algorithms, QuantConfig
from ptq_core.errors import PTQError

NUM_WORST = 3  # layers flagged: enough to act on, few enough to read


def own_sqnr(row: dict[str, Any]) -> float:
    """The error a layer adds itself: the worse of its weight and input-activation SQNR (inf when neither is quantized)."""
    vals = [v for v in (row.get("weight_sqnr_db"), row.get("input_sqnr_db")) if v is not None]
    return min(vals) if vals else math.inf


def worst_layers(layers: list[dict[str, Any]], n: int = NUM_WORST) -> list[str]:
    quantized = [r for r in layers if r["quantized"] and math.isfinite(own_sqnr(r))]
    return [r["name"] for r in sorted(quantized, key=own_sqnr)[:n]]


def layer_table(layers: list[dict[str, Any]], flagged: list[str]) -> pd.DataFrame:
    return pd.DataFrame([{
        "#": i,
        "layer": r["name"],
        "kind": r["kind"],
        "weights": labels.bits(r.get("weight_bits")),
        "input": labels.bits(r.get("input_bits")),
        "weight SQNR (dB)": r.get("weight_sqnr_db"),
        "input SQNR (dB)": r.get("input_sqnr_db"),
        "output SQNR (dB)": r.get("output_sqnr_db"),
        "weights clipped (%)": 100 * (r.get("weight_clip_fraction") or 0.0),
        "flag": "⚠ worst" if r["name"] in flagged else "",
    } for i, r in enumerate(layers)])


def before_after_table(layers: list[dict[str, Any]], baseline: dict[str, dict[str, Any]],
                       algorithm_rows: dict[str, dict[str, Any]]) -> pd.DataFrame:
    """One row per quantized layer: weight and output SQNR without and with the algorithms, and what each algorithm
    reported for the layer (only the columns some layer has)."""
    rows = []
    for r in layers:
        if not r["quantized"]:
            continue
        b, a = baseline.get(r["name"], {}), algorithm_rows.get(r["name"], {})
        row: dict[str, Any] = {
            "layer": r["name"],
            "weight SQNR without (dB)": b.get("weight_sqnr_db"),
            "weight SQNR with (dB)": r.get("weight_sqnr_db"),
            "output SQNR without (dB)": b.get("output_sqnr_db"),
            "output SQNR with (dB)": r.get("output_sqnr_db"),
        }
        for key, name, scale in ALGORITHM_COLUMNS:
            if key in a and a[key] is not None:
                row[name] = scale * a[key]
        rows.append(row)
    return pd.DataFrame(rows)


# (key in result["algorithms"]["layers"][layer], column, factor): what each algorithm measured on the layer
ALGORITHM_COLUMNS = (
    ("output_mse_nearest", "AdaRound: output MSE, nearest", 1.0),
    ("output_mse", "AdaRound: output MSE, learned", 1.0),
    ("flipped_fraction", "AdaRound: weights rounded the other way (%)", 100.0),
    ("hessian_error_nearest", "GPTQ: Hessian-weighted error, nearest", 1.0),
    ("hessian_error", "GPTQ: Hessian-weighted error, GPTQ", 1.0),
    ("bias_shift_mean_abs", "bias correction: mean |bias change|", 1.0),
)


def timing_note(info: dict[str, Any]) -> str:
    """How long the algorithms took when they ran (once per configuration; every later run reuses their result)."""
    seconds = info.get("seconds", {})
    parts = [f"{what} {seconds[key]:.1f} s" for key, what in (("layerwise", "layer by layer (rounding, bias correction)"),
                                                               ("finetune", "fine-tuning")) if key in seconds]
    if not parts:
        return "**Time**: nothing was learned (cross-layer equalization alone is data-free and takes about a second)."
    return f"**Time the algorithms took** (once for this configuration; later runs reuse the result): {', '.join(parts)}."


def algorithm_names(algorithms: Algorithms) -> str:
    """``cross-layer equalization, GPTQ rounding, bias correction`` for a caption."""
    names = ["cross-layer equalization"] if algorithms.cross_layer_equalization else []
    if algorithms.rounding == "adaround":
        names.append(f"AdaRound rounding ({algorithms.adaround.iterations} iterations per layer)")
    elif algorithms.rounding != "nearest":
        names.append(f"{labels.ROUNDING[algorithms.rounding]} rounding")
    if algorithms.bias_correction:
        names.append("bias correction")
    if algorithms.finetune is not None:
        names.append(f"fine-tuning ({algorithms.finetune.steps} steps)")
    return ", ".join(names)


def cle_section(cle: dict[str, Any], result: dict[str, Any]) -> None:
    st.markdown("**Cross-layer equalization**")
    pairs = cle.get("pairs", [])
    n = result["dataset"]["num_eval_samples"]
    lines = [f"{len(pairs)} pair(s) equalized: " + (", ".join(f"{a} → {b}" for a, b in pairs) or "none") + "."]
    if cle.get("relu6_replaced"):
        lines.append("ReLU6 replaced by ReLU after: " + ", ".join(cle["relu6_replaced"]) + ".")
    if "range_spread_before" in cle:
        lines.append(f"Per-channel weight ranges of a pair's first layer, largest over smallest (median over the "
                     f"pairs): {cle['range_spread_before']:.2f} before, {cle['range_spread_after']:.2f} after.")
    m = result["metrics"]
    if "fp32_agreement_after" in cle and not labels.is_embedding(m):  # a top-1 decision: classifiers only
        top1 = ""
        if "fp32_top1_after" in cle and "fp32_top1" in m:
            top1 = f" Top-1 {labels.pct(cle['fp32_top1_after'])} (original FP32 {labels.pct(m['fp32_top1'])})."
        lines.append(f"**FP32 model after equalization** (no quantization): same top-1 decision as the original FP32 "
                     f"model on {labels.pct(cle['fp32_agreement_after'])} of {n} evaluation samples.{top1}")
    st.markdown("  \n".join(lines))


def algorithms_section(config: QuantConfig, result: dict[str, Any]) -> None:
    """Each layer without the algorithms (the same config, round-to-nearest) and with them, and what each one did."""
    st.subheader("Before and after the algorithms")
    baseline_config = config.replace(algorithms=Algorithms())
    try:
        baseline = resources.compute(baseline_config.to_json(), "layers")  # round-to-nearest: no algorithm to run
    except PTQError as exc:
        st.error(f"The same configuration without the algorithms could not be evaluated: {exc}")
        return
    info = result.get("algorithms") or {}
    by_name = {r["name"]: r for r in baseline["layers"]}
    shown = [r for r in result["layers"] if r["quantized"]]
    st.plotly_chart(charts.algorithm_before_after([r["name"] for r in shown], [by_name.get(r["name"], {}) for r in shown],
                                                  shown), key="le_algorithms")
    bm, m = baseline["metrics"], result["metrics"]
    said = labels.words(m)
    top1 = (f"{said['accuracy']} {labels.pct(bm['quant_top1'])} without, {labels.pct(m['quant_top1'])} with; "
            if "quant_top1" in m and "quant_top1" in bm else "")
    summary = (f"{top1}{said['agreement']} with FP32 {labels.pct(bm['agreement'])} without, "
               f"{labels.pct(m['agreement'])} with ({m['num_eval_samples']} evaluation samples)")
    st.caption(f"Grey: the same configuration with every algorithm off (round-to-nearest); orange: with "
               f"{algorithm_names(config.algorithms)}. {summary[0].upper()}{summary[1:]}. AdaRound and "
               "GPTQ move weights off their nearest grid point on purpose, so the weight SQNR may fall while the "
               f"output SQNR rises: the output is what they optimise. Output SQNR on "
               f"{config.evaluation.layer_error_samples} evaluation samples."
               + (" With cross-layer equalization the orange bars are measured on the equalized model, against the "
                  "equalized FP32 model, whose channels are rescaled: compare the last layer's output, where the "
                  "scales cancel, for the effect on the network's output." if config.algorithms.cross_layer_equalization
                  else ""))
    table = before_after_table(result["layers"], by_name, info.get("layers", {}))
    st.dataframe(table, hide_index=True, key="le_algorithms_table",
                 column_config={c: st.column_config.NumberColumn(format="%.1f" if c.endswith("(dB)") else "%.3g")
                                for c in table.columns if c != "layer"})
    notes = [timing_note(info)]
    ft = info.get("finetune")
    if ft:
        notes.append(f"**Fine-tuning**: KL(FP32 ‖ quantized) on the calibration images {ft['kl_start']:.3g} at the start, "
                     f"{ft['kl_end']:.3g} at the end.")
    st.markdown("  \n".join(notes))
    if info.get("cle"):
        cle_section(info["cle"], result)


def render() -> None:
    st.title("Layer error")
    config, result = resources.current_result(layers=True)
    layers = result["layers"]
    flagged = worst_layers(layers)
    st.plotly_chart(charts.layer_sqnr(layers, flagged), key="le_bars")
    st.caption("**Weights**: error of the quantized weights alone. **Input activation**: error of the quantizer on "
               "the layer's input. **Output (accumulated)**: the layer's output in the quantized model against "
               f"FP32, all errors before it included, measured on {config.evaluation.layer_error_samples} evaluation "
               "samples. A layer whose own bars are low is where precision is lost."
               + (" *Before and after the algorithms*, below, compares every layer with the same configuration "
                  "rounded to nearest." if config.algorithms.any else ""))

    st.subheader("Worst layers")
    if not flagged:
        st.info("No quantized layer left: everything is in float.")
    for name in flagged:
        row = next(r for r in layers if r["name"] == name)
        c1, c2, c3 = st.columns([3, 1, 1])
        c1.markdown(f"⚠ **{name}** ({row['kind']}): weights {labels.db(row.get('weight_sqnr_db'))} at "
                    f"{labels.bits(row.get('weight_bits'))}, input {labels.db(row.get('input_sqnr_db'))} at "
                    f"{labels.bits(row.get('input_bits'))}, output {labels.db(row.get('output_sqnr_db'))}")
        c2.button("Keep in float", key=f"le_float_{name}", on_click=actions.keep_float, args=(name,), width="stretch")
        at_8 = row.get("weight_bits") == 8 and row.get("input_bits") in (8, None)
        input_point = row["input_points"][0] if row.get("input_bits") is not None else None
        c3.button("Give it 8 bits", key=f"le_8bit_{name}", on_click=actions.give_8_bits, args=(name, input_point),
                  disabled=at_8, width="stretch", help="Already 8 bits" if at_8 else "8-bit weights and input")

    st.subheader("All layers (click a column to sort)")
    st.dataframe(layer_table(layers, flagged), hide_index=True, key="le_table",
                 column_config={k: st.column_config.NumberColumn(format="%.1f")
                                for k in ("weight SQNR (dB)", "input SQNR (dB)", "output SQNR (dB)")})

    if config.algorithms.any:
        algorithms_section(config, result)


render()
