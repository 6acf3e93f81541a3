"""Layer error page: per-layer SQNR in network order, a sortable table, and one-click fixes for the worst layers."""

from __future__ import annotations

import math
from typing import Any

import pandas as pd
import streamlit as st

from dashboard import actions, charts, labels, resources

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


def render() -> None:
    st.title("Layer error")
    config, result = resources.current_result(layers=True)
    layers = result["layers"]
    flagged = worst_layers(layers)
    st.plotly_chart(charts.layer_sqnr(layers, flagged), key="le_bars")
    st.caption("**Weights**: error of the quantized weights alone. **Input activation**: error of the quantizer on "
               "the layer's input. **Output (accumulated)**: the layer's output in the quantized model against "
               f"FP32, all errors before it included, measured on {config.evaluation.layer_error_samples} evaluation "
               "samples. A layer whose own bars are low is where precision is lost.")

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


render()
