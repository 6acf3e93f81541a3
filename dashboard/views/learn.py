"""Learn page (workshops): quantization step by step on a small tensor, grids, schemes, the clipping tradeoff, AdaRound."""

from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from dashboard import charts, labels, lessons

DEFAULT_VALUES = "-1.17, -0.52, 0.0, 0.31, 0.83, 1.46, 2.6"


def _randomize() -> None:
    seed = int(st.session_state.get("learn_seed", 0)) + 1
    st.session_state["learn_seed"] = seed
    st.session_state["learn_values"] = ", ".join(f"{v:g}" for v in lessons.random_values(seed))


def _relu_example() -> None:
    st.session_state["learn_values"] = "0.0, 0.05, 0.2, 0.45, 0.9, 1.3, 2.4"


def f(v: float) -> str:
    return f"{v:.4g}"


def step_table(s: dict) -> pd.DataFrame:
    return pd.DataFrame({
        "x (FP32)": s["x"],
        "x / s": s["scaled"],
        "round(x / s) + z": s["unclamped"],
        "q (clamped)": s["q"],
        "x̂ = (q − z)·s": s["x_hat"],
        "error x̂ − x": s["error"],
    })


def steps_section(x: np.ndarray, bits: int, scheme: str, shrink: float) -> None:
    s = lessons.quantize_steps(x, bits, scheme, shrink)
    st.markdown("#### Step 1 — the range")
    st.markdown("Find the smallest and the largest value to represent. The range is stretched to include 0, "
                "so that zero (very common: padding, ReLU outputs) is stored exactly."
                + ("" if shrink == 1 else f" Here the range is shrunk to {100 * shrink:.0f} % of min–max, "
                                          "so the outer values will be **clipped**."))
    st.latex(rf"lo = \min(x) = {f(s['lo'])},\qquad hi = \max(x) = {f(s['hi'])}"
             if shrink == 1 else rf"lo = {100 * shrink:.0f}\%\cdot\min(x) = {f(s['lo'])},\qquad "
                                 rf"hi = {100 * shrink:.0f}\%\cdot\max(x) = {f(s['hi'])}")
    if (s["lo0"], s["hi0"]) != (s["lo"], s["hi"]):
        st.latex(rf"\text{{with 0 included:}}\quad [lo, hi] = [{f(s['lo0'])},\ {f(s['hi0'])}]")
    st.markdown(f"#### Step 2 — the integers available\n{bits} bits can hold {2 ** bits} different integers. "
                + ("**Asymmetric** uses unsigned integers from 0 up." if scheme == "asymmetric" else
                   "**Symmetric** uses signed integers, the same distance below and above 0 (one code is left "
                   "unused so that +max and −max both exist)."))
    st.latex(rf"q_{{min}} = {s['qmin']},\qquad q_{{max}} = {s['qmax']}")
    st.markdown("#### Step 3 — the scale *s*: how much one integer step is worth\nSpread the range over the "
                "integers. A bigger range or fewer bits give a bigger step, so a coarser grid.")
    if scheme == "asymmetric":
        st.latex(rf"s = \frac{{hi - lo}}{{q_{{max}} - q_{{min}}}} = \frac{{{f(s['hi0'])} - ({f(s['lo0'])})}}"
                 rf"{{{s['qmax']} - {s['qmin']}}} = {f(s['scale'])}")
    else:
        st.latex(rf"s = \frac{{\max(|lo|, |hi|)}}{{q_{{max}}}} = \frac{{{f(max(-s['lo0'], s['hi0']))}}}{{{s['qmax']}}}"
                 rf" = {f(s['scale'])}")
    st.markdown("#### Step 4 — the zero point *z*: which integer stands for the real number 0")
    if scheme == "asymmetric":
        st.markdown("The integers start at 0, but the data may start below 0. The zero point shifts the grid so "
                    "that *lo* lands on the first integer. Real 0 is then stored as the integer *z*.")
        st.latex(rf"z = q_{{min}} - \mathrm{{round}}\!\left(\frac{{lo}}{{s}}\right) = {s['qmin']} - "
                 rf"\mathrm{{round}}\!\left(\frac{{{f(s['lo0'])}}}{{{f(s['scale'])}}}\right) = {s['zero_point']}")
    else:
        st.markdown("Symmetric integers are already centred on 0, so real 0 is the integer 0: no shift needed.")
        st.latex(r"z = 0")
    st.markdown("#### Step 5 — round, Step 6 — clamp\nDivide by the step, round to the nearest integer and shift by "
                "*z*. Anything that lands outside the integers available is **clamped** to the nearest end: that "
                "is *clipping*.")
    st.latex(r"q = \mathrm{clamp}\!\left(\mathrm{round}\!\left(\frac{x}{s}\right) + z,\; q_{min},\; q_{max}\right)")
    st.markdown("#### Step 7 — dequantize and measure the error\nTo compute with it (or to check it), turn the integer "
                "back into a real number. The difference is the quantization error: at most *s*/2 inside the range, "
                "more for clipped values.")
    st.latex(r"\hat{x} = (q - z)\cdot s")
    st.dataframe(step_table(s), hide_index=True, key="learn_table",
                 column_config={c: st.column_config.NumberColumn(format="%.4f")
                                for c in ("x (FP32)", "x / s", "x̂ = (q − z)·s", "error x̂ − x")})
    inside = np.abs(s["error"]) <= s["scale"] / 2 + 1e-7
    st.caption(f"Step s = {f(s['scale'])}, half a step = {f(s['scale'] / 2)}. {int(inside.sum())} of {len(x)} values "
               f"are within half a step; {s['clamped']} value(s) were clamped.")
    st.plotly_chart(charts.number_line(s["x"], s["x_hat"], s["levels"], s["lo"], s["hi"],
                                       f"{labels.bits(bits)} {scheme}: each value moves to the nearest grid line"),
                    key="learn_line")


def grids_section(x: np.ndarray, scheme: str) -> None:
    st.subheader("INT8 vs INT4: the same values on two grids")
    st.markdown("Each bit removed halves the number of grid lines, so it doubles the step and the typical error.")
    cols = st.columns(2)
    for col, bits in zip(cols, (8, 4), strict=True):
        s = lessons.quantize_steps(x, bits, scheme)
        with col:
            st.plotly_chart(charts.number_line(s["x"], s["x_hat"], s["levels"], s["lo"], s["hi"],
                                               f"{labels.bits(bits)}: {len(s['levels'])} values, step {f(s['scale'])}"),
                            key=f"learn_grid_{bits}")
            st.metric(f"{labels.bits(bits)} mean |error|", f(float(np.abs(s["error"]).mean())),
                      help="Average distance between a value and where it lands on the grid.")


def schemes_section(x: np.ndarray, bits: int) -> None:
    st.subheader("Symmetric vs asymmetric")
    st.markdown("Symmetric keeps 0 in the middle of the grid (no zero point): simple and fast, ideal for weights, "
                "which are spread around 0. For data that is all positive, like a ReLU output, half of the symmetric "
                "grid covers negative numbers that never occur: asymmetric moves the grid onto the data instead.")
    st.button("Try a ReLU output (all values ≥ 0)", key="learn_relu", on_click=_relu_example)
    cols = st.columns(2)
    for col, scheme in zip(cols, ("symmetric", "asymmetric"), strict=True):
        s = lessons.quantize_steps(x, bits, scheme)
        used = int(((s["levels"] >= s["x"].min() - 1e-9) & (s["levels"] <= s["x"].max() + 1e-9)).sum())
        with col:
            st.plotly_chart(charts.number_line(s["x"], s["x_hat"], s["levels"], s["lo"], s["hi"],
                                               f"{scheme}: step {f(s['scale'])}, zero point {s['zero_point']}"),
                            key=f"learn_scheme_{scheme}")
            st.metric(f"{scheme}: grid values inside the data", f"{used} of {len(s['levels'])}",
                      delta=f"mean |error| {f(float(np.abs(s['error']).mean()))}", delta_color="off", delta_arrow="off")


def clipping_section() -> None:
    st.subheader("The clipping tradeoff")
    st.markdown("With a fixed number of grid values, a **narrower range** gives a finer step (less *rounding* "
                "error) but cuts off the values beyond it (more *clipping* error). Somewhere in between the total "
                "error is lowest. Calibration methods differ in how they pick that point: **min–max** keeps every "
                "value, **percentile** drops the rarest, **MSE** searches for the lowest total error, **KL** keeps "
                "the histogram's shape.")
    ss = st.session_state
    ss.setdefault("learn_dist", "relu_outliers")
    ss.setdefault("learn_clip_bits", 4)
    ss.setdefault("learn_clip_pct", 70)  # start with both errors visible
    c1, c2, c3 = st.columns([3, 1, 3])
    dist = c1.selectbox("Data", list(lessons.DISTRIBUTIONS), key="learn_dist", format_func=lessons.DISTRIBUTIONS.get)
    bits = c2.selectbox("Bits", [8, 6, 4, 3, 2], key="learn_clip_bits", format_func=labels.bits)
    pct = c3.slider("Your clip range (% of min–max)", min_value=1, max_value=100, key="learn_clip_pct")
    values = lessons.sample(dist, 20000, seed=0)
    scheme = "asymmetric" if dist == "relu_outliers" else "symmetric"
    lesson = lessons.clipping_lesson(values, bits, scheme)
    curve = lesson["curve"]
    i = int(round(pct / 100 * len(curve["alpha"]))) - 1
    i = min(max(i, 0), len(curve["alpha"]) - 1)
    lo, hi = float(curve["lo"][i]), float(curve["hi"][i])
    best = int(np.argmin(curve["mse"]))
    cols = st.columns(4)
    cols[0].metric("Your clip range", f"[{f(lo)}, {f(hi)}]")
    cols[1].metric("Rounding error (MSE)", f"{curve['rounding_mse'][i]:.3g}")
    cols[2].metric("Clipping error (MSE)", f"{curve['clipping_mse'][i]:.3g}",
                   delta=f"{100 * curve['clip_fraction'][i]:.3f} % of values clipped", delta_color="off",
                   delta_arrow="off")
    cols[3].metric("Total error (MSE)", f"{curve['mse'][i]:.3g}",
                   delta=f"{curve['mse'][i] / curve['mse'][best]:.2f}× the lowest possible", delta_color="off",
                   delta_arrow="off")
    st.plotly_chart(charts.clipping_tradeoff(curve, lesson["methods"], max(abs(lo), abs(hi))), key="learn_tradeoff")
    st.plotly_chart(charts.histogram_with_clip(values, lo, hi), key="learn_clip_hist")
    table = pd.DataFrame([{"method": labels.CLIPPING[m["method"]], "clip range": f"[{f(m['lo'])}, {f(m['hi'])}]",
                           "total MSE": m["mse"], "rounding MSE": m["rounding_mse"], "clipping MSE": m["clipping_mse"],
                           "values clipped (%)": 100 * m["clip_fraction"]} for m in lesson["methods"]])
    st.dataframe(table, hide_index=True, key="learn_methods",
                 column_config={c: st.column_config.NumberColumn(format="%.3e")
                                for c in ("total MSE", "rounding MSE", "clipping MSE")})
    st.caption(f"{lesson['count']:,} {scheme} {labels.bits(bits)} values; percentile = {lessons.CLIP_PERCENTILE}. "
               "The same functions calibrate the real model's activations on the Activations page.")


@st.cache_data(max_entries=16, show_spinner="Running AdaRound on a small layer…")
def _adaround_lesson(seed: int) -> dict:
    return lessons.adaround_lesson(seed)


def _another_layer() -> None:
    st.session_state["learn_ada_seed"] = int(st.session_state.get("learn_ada_seed", 0)) + 1


def adaround_section() -> None:
    st.subheader("AdaRound: rounding for the output, not for each weight")
    ss = st.session_state
    ss.setdefault("learn_ada_seed", 0)
    lesson = _adaround_lesson(int(ss["learn_ada_seed"]))
    rows, cols = lesson["shape"]
    st.markdown(
        "Rounding to nearest makes every weight as close as it can be to its float value, one weight at a time. But "
        "what the network needs is the layer's **output**, a sum of many weights times their inputs, and when "
        "inputs are correlated the rounding errors of different weights can cancel or pile up. **AdaRound** keeps "
        "the same grid and learns, for each weight, whether to round **up or down**, so that the layer's output on "
        "calibration inputs stays as close to FP32 as it can. Each weight ends up a little further from its float "
        "value on average; the output usually ends up closer.")
    c1, c2 = st.columns([3, 1], vertical_alignment="bottom")
    c1.caption(f"A random layer of {rows} outputs × {cols} inputs (seed {ss['learn_ada_seed']}), "
               f"{labels.bits(lesson['bits'])} per-channel symmetric, fitted on {lesson['columns']} correlated "
               f"random input vectors with {lesson['iterations']} AdaRound iterations (the engine's own "
               "`adaround_layer`).")
    c2.button("🎲 Another random layer", key="learn_ada_random", on_click=_another_layer, width="stretch")
    st.plotly_chart(charts.adaround_flips(lesson), key="learn_ada_flips")
    change = lesson["output_mse_adaround"] / lesson["output_mse_nearest"] - 1
    cols3 = st.columns(3)
    cols3[0].metric("Output error (MSE), nearest", f"{lesson['output_mse_nearest']:.3g}")
    cols3[1].metric("Output error (MSE), AdaRound", f"{lesson['output_mse_adaround']:.3g}",
                    delta=f"{100 * change:+.0f} % vs nearest", delta_color="inverse")
    cols3[2].metric("Weight error (MSE), AdaRound", f"{lesson['weight_mse_adaround']:.3g}",
                    delta=f"nearest {lesson['weight_mse_nearest']:.3g}", delta_color="off", delta_arrow="off")
    st.caption("Output error: squared difference from the FP32 output, summed over the outputs and averaged over the "
               "input vectors, on the vectors AdaRound was fitted on. "
               + ("Here AdaRound did **not** beat nearest: it optimises a smoothed version of the problem and rounds "
                  "at the end, which can land slightly worse, more easily on a layer this small. The Layer error "
                  "page shows, layer by layer of a real model, how it did there." if change >= 0 else
                  "The weight error is higher than nearest's (that is what nearest minimises), the output error "
                  "lower: that is the trade AdaRound makes.")
               + " On a model, turn it on in the sidebar (Algorithms → Rounding); the Layer error page shows each "
               "layer's weight and output SQNR with and without it.")


def render() -> None:
    st.title("Learn: how quantization works")
    st.markdown("A network stores its numbers as 32-bit floats. **Quantization** stores them as small integers "
                "instead (8 bits: 256 possible values; 4 bits: only 16) plus one float, the **scale**, that says how "
                "far apart two neighbouring integers are in real units. The model gets 4–8× smaller and can use fast "
                "integer arithmetic; the price is a small error on every number. Here is the whole recipe on a "
                "handful of numbers; every value below is computed by the same engine as the rest of the app.")
    ss = st.session_state
    ss.setdefault("learn_values", DEFAULT_VALUES)
    ss.setdefault("learn_bits", 4)
    ss.setdefault("learn_scheme", "asymmetric")
    ss.setdefault("learn_shrink", 100)
    st.subheader("Your tensor")
    c1, c2 = st.columns([4, 1], vertical_alignment="bottom")
    c1.text_input("Values (edit them, separated by commas)", key="learn_values")
    c2.button("🎲 Random values", key="learn_random", on_click=_randomize, width="stretch")
    c1, c2, c3 = st.columns(3)
    bits = c1.selectbox("Bits", [8, 6, 4, 3, 2], key="learn_bits", format_func=labels.bits)
    scheme = c2.radio("Scheme", ["asymmetric", "symmetric"], key="learn_scheme", horizontal=True)
    shrink = c3.slider("Range (% of min–max)", min_value=10, max_value=100, step=5, key="learn_shrink",
                       help="Below 100 %, the outermost values no longer fit and get clipped.") / 100
    try:
        x = lessons.parse_values(ss["learn_values"])
    except ValueError as exc:
        st.error(f"Cannot read the values: {exc}")
        st.stop()
    steps_section(x, bits, scheme, shrink)
    st.divider()
    grids_section(x, scheme)
    st.divider()
    schemes_section(x, bits)
    st.divider()
    clipping_section()
    st.divider()
    adaround_section()


render()
