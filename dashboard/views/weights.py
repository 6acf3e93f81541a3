"""Weights page: one layer's FP32 weights against the quantization grid, per-channel ranges, FP32 vs dequantized."""

from __future__ import annotations

import streamlit as st

from dashboard import charts, labels, resources


def render() -> None:
    st.title("Weights")
    config, result = resources.current_result(complete=False)
    layers = [r for r in result["layers"] if r["kind"] in ("conv", "linear")]
    names = [r["name"] for r in layers]
    if not names:
        st.info("This model has no Conv or Linear layers to quantize.")
        st.stop()
    if st.session_state.get("w_layer") not in names:  # first visit: the layer whose weights lose the most
        quantized = [r for r in layers if r.get("weight_sqnr_db") is not None] or layers
        st.session_state["w_layer"] = min(quantized, key=lambda r: r.get("weight_sqnr_db") or 0.0)["name"]
    c1, c2 = st.columns([2, 3])
    layer = c1.selectbox("Layer", names, key="w_layer")
    row = next(r for r in layers if r["name"] == layer)
    view = resources.weight_view(config.to_json(), layer)
    if not view["quantized"]:
        st.info(f"**{layer}** is kept in float: its weights are not quantized. The histogram shows them as they are.")
        st.plotly_chart(charts.weight_histogram(view, None, None, None), key="w_hist")
        st.stop()

    err = view["error"]
    gran = labels.GRANULARITY[view["granularity"]] + (f" ({view['group_size']})" if view["group_size"] else "")
    c2.markdown(f"**{labels.bits(view['bits'])}**, {labels.SCHEME[view['scheme']]}, {gran}, "
                f"{labels.CLIPPING[view['clipping']]} clipping · shape {view['shape']} · "
                f"{row['num_scales']} scale(s)")
    cols = st.columns(4)
    cols[0].metric("Weight SQNR", labels.db(row["weight_sqnr_db"]), help="10·log10(mean w² / mean error²): higher is better.")
    cols[1].metric("Mean squared error", f"{err['mse']:.3g}")
    cols[2].metric("Rounding / clipping share",
                   f"{100 * err['rounding_mse'] / err['mse']:.0f} % / {100 * err['clipping_mse'] / err['mse']:.0f} %"
                   if err["mse"] > 0 else "no error")
    cols[3].metric("Weights clipped", labels.pct(err["clip_fraction"], 3))

    out_ch = view["shape"][0]
    c1, c2, c3 = st.columns([2, 2, 3])
    ss = st.session_state
    ss.setdefault("w_one_channel", True)  # one channel shows its grid
    one = c1.toggle("One output channel", key="w_one_channel",
                    help="Per-channel and per-group quantization give each channel (or group) its own grid.")
    channel = group = None
    if one:
        if not 0 <= ss.get("w_channel", 0) < out_ch:  # the layer changed under a channel number
            ss["w_channel"] = 0
        channel = int(c2.number_input("Channel", min_value=0, max_value=out_ch - 1, key="w_channel"))
        if view["granularity"] == "per_group":
            num_groups = len(view["scale"][channel])
            if not 0 <= ss.get("w_group", 0) < num_groups:
                ss["w_group"] = 0
            group = int(c3.number_input("Group", min_value=0, max_value=num_groups - 1, key="w_group"))
    qp = charts.grid_qparams(view, channel, group)
    grid = resources.grid_levels(qp[0], qp[1], view["qmin"], view["qmax"]) if qp is not None else None
    st.plotly_chart(charts.weight_histogram(view, grid, channel, group), key="w_hist")
    if grid is None:
        st.caption("Each channel (or group) has its own grid here: pick one output channel to see its grid. "
                   "The dashed lines show the outermost clip range.")
    else:
        st.caption(f"Orange lines: the {len(grid)} values the {labels.bits(view['bits'])} integers can represent "
                   f"(step {qp[0]:.3g}); every weight is moved to the nearest one. Dashed: the clip range; weights "
                   "beyond it are clamped to its edge.")

    left, right = st.columns(2)
    with left:
        st.plotly_chart(charts.channel_ranges(view), key="w_ranges")
        pt = view["per_tensor"]
        widths = view["channel_max"] - view["channel_min"]
        share = float((widths / max(pt["hi"] - pt["lo"], 1e-12)).mean())
        st.caption(f"Why per-channel helps: with one range for the whole tensor (grey), the average channel "
                   f"spans only {100 * share:.0f} % of it, so it uses only about {share * (view['qmax'] - view['qmin']):.0f} "
                   f"of the {view['qmax'] - view['qmin'] + 1} integer levels. Per-channel gives each channel its own range.")
    with right:
        st.plotly_chart(charts.fp32_vs_dequantized(view), key="w_scatter")
        st.caption("Each dot is one weight: its FP32 value against the value after quantize → dequantize. "
                   "Horizontal steps are the grid; a flat tail at either end is clipping.")


render()
