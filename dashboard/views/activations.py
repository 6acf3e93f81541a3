"""Activations page: one activation's calibration histogram with the range each clipping method picks (static
activations), and the outlier channels at the inputs of Linear layers, before and after SmoothQuant (every mode).
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st

from dashboard import charts, labels, resources
from ptq_core.config import QuantConfig
from ptq_core.errors import PTQError

OUTLIER_TITLE = "Outlier channels (per hidden channel)"
DEFAULT_ACT_BITS = 8  # the grid the outlier sentence speaks of while activations are not quantized


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


def layers_label(layers: list[str]) -> str:
    """Linears of one group, siblings shortened: ``a.query, a.key, a.value`` -> ``a.query/key/value``."""
    parents = {name.rpartition(".")[0] for name in layers}
    if len(layers) > 1 and len(parents) == 1 and "" not in parents:
        return f"{parents.pop()}." + "/".join(name.rpartition(".")[2] for name in layers)
    return ", ".join(layers)


def group_label(row: dict[str, Any]) -> str:
    return f"{layers_label(row['layers'])} reads {row['point']}"


def ratio_text(ratio: float) -> str:
    return f"{ratio:.2f}x" if ratio != float("inf") else "unbounded (median 0)"


def outlier_table(rows: list[dict[str, Any]]) -> pd.DataFrame:
    """Every Linear group, the most lopsided input first: max/median before and, when smoothed, after."""
    ranked = sorted(rows, key=lambda r: r["summary"]["ratio"], reverse=True)
    smoothed = any("summary_smoothed" in r for r in rows)
    records = []
    for r in ranked:
        s = r["summary"]
        record = {"Linear layers": layers_label(r["layers"]), "reads": r["point"], "channels": len(r["absmax"]),
                  "largest channel": s["channel"], "max |x|": s["max"], "median": s["median"], "max / median": s["ratio"]}
        if smoothed:
            t = r.get("summary_smoothed") or {}
            record.update({"after: largest channel": t.get("channel"), "after: max |x|": t.get("max"),
                           "after: median": t.get("median"), "after: max / median": t.get("ratio")})
        records.append(record)
    return pd.DataFrame(records)


def render() -> None:
    st.title("Activations")
    config, result = resources.current_result(complete=False)
    _histogram(config, result)
    if any(r["kind"] == "linear" for r in result["layers"]):
        st.divider()
        _outliers(config)


def _histogram(config: QuantConfig, result: dict[str, Any]) -> None:
    """The calibration histogram of one activation (static mode only: the other modes calibrate nothing)."""
    if result["mode"] != "static":
        st.info(f"This config quantizes activations **{labels.ACT_MODE[result['mode']]}**: there is no calibration, so "
                "no calibrated ranges to show. Choose *static* activation quantization in the sidebar. The outlier "
                "channels below are a property of the FP32 model and show in every mode.")
        return
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


def _outliers(config: QuantConfig) -> None:
    """max |x| per hidden channel at each Linear input, measured only once the toggle asks for it."""
    ss = st.session_state
    st.subheader(OUTLIER_TITLE)
    st.caption("A few hidden channels of a transformer carry values 10-100x the others', on every token. One "
               "FP32 pass over the calibration samples measures each channel's largest |x| at the input of every "
               "Linear layer (a few seconds on the text model).")
    if not st.toggle("Measure the channels", key="act_outliers"):
        return
    if config.activations is None:
        st.info("Activations are not quantized in this config (weight-only), so outlier channels cost nothing "
                "yet: they matter once activations are quantized (static or dynamic). Shown anyway: they are a "
                "property of the FP32 model.")
    try:
        rows = resources.channel_outliers(config.to_json())
    except PTQError as exc:
        st.error(f"The per-channel ranges could not be measured: {exc}")
        return
    if not rows:
        st.info("No Linear layer reads a measurable input in this model.")
        return
    by_point = {r["point"]: r for r in rows}
    if ss.get("act_out_group") not in by_point:  # first visit, or another model: the most lopsided input
        ss["act_out_group"] = max(rows, key=lambda r: r["summary"]["ratio"])["point"]
    c1, c2 = st.columns([4, 1])
    point = c1.selectbox("Linear group (the layers reading one input)", list(by_point), key="act_out_group",
                         format_func=lambda p: group_label(by_point[p]))
    ss.setdefault("act_out_log", False)
    log_y = c2.toggle("Log scale", key="act_out_log",
                      help="Shows the small channels too; the outliers stand out on a linear scale.")
    row = by_point[point]
    st.plotly_chart(charts.channel_outliers(row, log_y), key="act_out_chart")
    st.caption(_outlier_caption(config, row))
    st.dataframe(outlier_table(rows), hide_index=True, key="act_out_table",
                 column_config={k: st.column_config.NumberColumn(format="%.4g") for k in
                                ("max |x|", "median", "after: max |x|", "after: median")}
                 | {k: st.column_config.NumberColumn(format="%.2f") for k in ("max / median", "after: max / median")})
    st.caption("Every group of Linear layers reading one input, the most lopsided first.")


def _outlier_caption(config: QuantConfig, row: dict[str, Any]) -> str:
    s = row["summary"]
    parts = [f"**Before:** the largest channel is **{s['channel']}** with max |x| {s['max']:.4g}; the median channel "
             f"reaches {s['median']:.4g}, so the ratio is **{ratio_text(s['ratio'])}**."]
    sq = config.algorithms.smoothquant
    t = row.get("summary_smoothed")
    if t is not None and sq is not None:
        alpha = "chosen per group" if sq.alpha == "auto" else f"{sq.alpha:g}"
        parts.append(f"**After SmoothQuant** (alpha {alpha}): the largest channel is **{t['channel']}** with "
                     f"max |x| {t['max']:.4g}, the median {t['median']:.4g}: ratio **{ratio_text(t['ratio'])}**.")
    elif sq is not None and config.activations is None:
        parts.append("SmoothQuant is on but does nothing here: it applies only while activations are quantized.")
    elif sq is not None:
        parts.append("SmoothQuant leaves this group as it is (its input is not quantized in this config).")
    else:
        parts.append("Turn on **SmoothQuant** in the sidebar to see these channels after smoothing.")
    bits = config.activations.bits if config.activations is not None else DEFAULT_ACT_BITS
    steps = 2**bits - 1
    ratio = s["ratio"]
    if 1 < ratio < float("inf"):
        parts.append(f"Why it matters: a {bits}-bit grid shared by all channels (per tensor, or per token) has {steps} "
                     f"steps, spaced to reach the largest channel; a channel at the median spans about "
                     f"{steps}/{ratio:.3g} ≈ {steps / ratio:.0f} of them. With one channel 20x the median, every "
                     "other channel is rounded to about a dozen values while most of the grid waits for that one.")
    return " ".join(parts)


render()
