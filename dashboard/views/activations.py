"""Activations page: one activation's calibration histogram with the range each clipping method picks."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from dashboard import charts, labels, resources


def method_table(view: dict) -> pd.DataFrame:
    return pd.DataFrame([{
        "method": labels.CLIPPING[m["method"]] + (" (chosen)" if m["chosen"] else ""),
        "clip low": m["lo"],
        "clip high": m["hi"],
        "expected MSE": m["mse"],
        "rounding MSE": m["rounding_mse"],
        "clipping MSE": m["clipping_mse"],
        "values clipped (%)": 100 * m["clip_fraction"],
        "SQNR (dB)": m["sqnr_db"],
    } for m in view["methods"]])


def render() -> None:
    st.title("Activations")
    config, result = resources.current_result(complete=False)
    if result["mode"] != "static":
        st.info(f"This config quantizes activations **{labels.ACT_MODE[result['mode']]}**: there is no calibration, so "
                "no calibrated ranges to show. Choose *static* activation quantization in the sidebar.")
        st.stop()
    points = [a["name"] for a in result["activations"] if a["mode"] == "static"]
    if st.session_state.get("act_point") not in points:  # first visit: the activation quantized worst
        rows = [a for a in result["activations"] if a["mode"] == "static"]
        worst = min(rows, key=lambda a: a["expected_sqnr_db"] if a["expected_sqnr_db"] is not None else float("inf"))
        st.session_state["act_point"] = worst["name"]
    c1, c2, c3 = st.columns([2, 1, 3])
    point = c1.selectbox("Activation (the tensor a layer outputs; x is the model input)", points, key="act_point")
    st.session_state.setdefault("act_log", True)
    log_y = c2.toggle("Log scale", key="act_log", help="Rare large values (outliers) are invisible on a linear scale.")
    view = resources.activation_view(config.to_json(), point)
    c3.markdown(f"**{labels.bits(view['bits'])}** {labels.SCHEME[view['scheme']]} · chosen: "
                f"**{labels.CLIPPING[view['chosen']]}** · {view['count']:,} values from "
                f"**{view['num_samples']} calibration samples** · observed [{view['min']:.4g}, {view['max']:.4g}]")
    st.plotly_chart(charts.activation_histogram(view, log_y), key="act_hist")
    st.caption("Each pair of lines is the range one clipping method would choose from the same calibration "
               "statistics. Values outside a range are clipped to its edge; inside, they are rounded to one of "
               f"{2 ** view['bits']} levels, so a wider range means a coarser step.")
    left, right = st.columns([3, 2])
    with left:
        st.dataframe(method_table(view), hide_index=True, key="act_table",
                     column_config={"expected MSE": st.column_config.NumberColumn(format="%.3e"),
                                    "rounding MSE": st.column_config.NumberColumn(format="%.3e"),
                                    "clipping MSE": st.column_config.NumberColumn(format="%.3e"),
                                    "values clipped (%)": st.column_config.NumberColumn(format="%.4f"),
                                    "SQNR (dB)": st.column_config.NumberColumn(format="%.1f"),
                                    "clip low": st.column_config.NumberColumn(format="%.4g"),
                                    "clip high": st.column_config.NumberColumn(format="%.4g")})
        st.caption("Expected error on the calibration data, from its histogram (no model run): rounding error "
                   "inside the range plus clipping error beyond it.")
    with right:
        st.plotly_chart(charts.method_errors(view), key="act_errors")


render()
