"""Sensitivity page: which layers hurt (proxy at once, measured on request), and mixed precision to a target.

For the text model the same measures are its embedding counterparts (``metrics["agreement"]`` is
nearest-neighbour agreement, top-1 is k-NN topic accuracy, KL is over neighbour similarities), and
the page names them so.
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st

from dashboard import actions, charts, labels, resources, state
from ptq_core.config import MAX_BITS, MIN_BITS, QuantConfig
from ptq_core.errors import PTQError

NUM_ACTIONS = 5  # most sensitive layers offered one-click fixes
TARGETS = {"max_drop": "top-1 drop at most (points)", "min_agreement": "agreement at least (%)", "max_kl": "output KL at most"}
EMBEDDING_TARGETS = {"max_drop": "k-NN topic accuracy drop at most (points)",
                     "min_agreement": "nearest-neighbour agreement at least (%)",
                     "max_kl": "neighbour-similarity KL at most"}
TARGET_DEFAULTS = {"max_drop": 1.0, "min_agreement": 99.0, "max_kl": 0.01}


def _measure(config_json: str) -> None:
    st.session_state["sens_run_for"] = config_json


def _search(config_json: str) -> None:
    st.session_state["search_run_for"] = config_json
    st.session_state["search_points"] = []  # a new search: its points arrive as they are measured


def _apply(config_json: str) -> None:
    state.apply_config_to_state(QuantConfig.from_json(config_json))
    state.flash("success", "The search's answer is now the configuration in the sidebar.")


def row_table(rows: list[dict[str, Any]], agreement: str = "agreement") -> pd.DataFrame:
    def pts(d: dict[str, Any] | None) -> float | None:
        return 100 * (1 - d["agreement"]) if d else None

    return pd.DataFrame([{
        "layer": r["name"], "kind": r["kind"], "weights": r["parameters"],
        f"{agreement} lost, only this layer (pts)": pts(r.get("only")),
        f"{agreement} lost, all but this layer (pts)": pts(r.get("all_but")),
        "KL, only this layer": (r.get("only") or {}).get("kl_divergence"),
        "proxy SQNR (dB)": r.get("proxy_db"),
        "why": "; ".join(r.get("hints", [])),
    } for r in rows])


def sensitivity_section(config: QuantConfig, result: dict[str, Any]) -> None:
    st.subheader("Which layers hurt")
    said = labels.words(result["metrics"])
    key = config.to_json()
    try:
        proxy_rows = resources.sensitivity_proxy(key)
    except PTQError as exc:
        st.error(str(exc))
        return
    report = resources.stored_sensitivity(key)
    if report is None and st.session_state.get("sens_run_for") == key:
        report = resources.measure_sensitivity(key)  # progress here; rows kept if a control change stops it
    n = sum(1 for r in proxy_rows if r["weight_bytes"] or config.mode == "static")
    if report is None:
        seconds = resources.seconds_per_evaluation(config)
        cost = f", about {2 * n * seconds / 60:.0f} min here" if seconds else ""
        c1, c2 = st.columns([1, 3], vertical_alignment="center")
        c1.button(f"Measure every layer ({2 * n + 1} evaluations{cost})", key="sens_measure", on_click=_measure,
                  args=(key,), type="primary")
        c2.caption("Each layer is evaluated quantized **alone** (every other layer in float) and **spared** (every other "
                   "layer quantized): what it costs by itself, and how much of the whole model's loss goes away without "
                   "it. Until then, the proxy below ranks layers from what is already known, with no model run.")
        partial = resources.partial_sensitivity(key)
        rows = partial or proxy_rows
        st.plotly_chart(charts.sensitivity_bars(partial, said["agreement"]) if partial else charts.proxy_bars(proxy_rows),
                        key="sens_chart")
        if partial:
            st.caption(f"Stopped after {len(partial)} of {n} layers: the rows measured so far. Press the button to "
                       "measure them all.")
    else:
        rows = report["layers"]
        q = report["quantized"]
        st.caption(f"The whole model quantized: {said['agreement']} {labels.pct(q['agreement'])}, KL {q['kl_divergence']:.4g}"
                   + (f", {said['accuracy']} {labels.pct(q['quant_top1'])} against FP32 {labels.pct(report['fp32_top1'])}"
                      if q.get("quant_top1") is not None and report.get("fp32_top1") is not None else "")
                   + f". Measured in {report['seconds']:.0f} s.")
        st.plotly_chart(charts.sensitivity_bars([r for r in rows if r.get("only")], said["agreement"]), key="sens_chart")
    st.dataframe(row_table(rows, said["agreement"]), hide_index=True, key="sens_table",
                 column_config={c: st.column_config.NumberColumn(format="%.2f") for c in (
                     f"{said['agreement']} lost, only this layer (pts)", f"{said['agreement']} lost, all but this layer (pts)",
                     "proxy SQNR (dB)")})
    st.markdown("**Most sensitive layers**")
    rounding = config.algorithms.rounding
    for r in rows[:NUM_ACTIONS]:
        c1, c2, c3, c4 = st.columns([4, 1, 1, 1])
        why = "; ".join(r.get("hints", [])) or "no single obvious cause"
        c1.markdown(f"**{r['name']}** ({r['kind']}): {why}")
        c2.button("Keep in float", key=f"sens_float_{r['name']}", on_click=actions.keep_float, args=(r["name"],),
                  width="stretch")
        layer = next((x for x in result["layers"] if x["name"] == r["name"]), None)
        if layer is not None and r["weight_bytes"]:
            point = layer["input_points"][0] if layer.get("input_bits") is not None else None
            c3.button("Give it 8 bits", key=f"sens_8bit_{r['name']}", on_click=actions.give_8_bits,
                      args=(r["name"], point), width="stretch")
            c4.button("Round with GPTQ", key=f"sens_gptq_{r['name']}", on_click=actions.round_with_gptq,
                      args=(r["name"],), width="stretch", disabled=rounding != "nearest",
                      help="GPTQ rounds each weight column and spreads its error over the columns not yet rounded: "
                           "the fix for a layer that loses at a narrow width without more bits. It applies to every "
                           "quantized layer (the algorithms are model-wide)." if rounding == "nearest" else
                           f"Rounding is {labels.ROUNDING.get(rounding, rounding)} already (sidebar, Algorithms).")
    st.caption("More bits or float spend bytes; GPTQ or AdaRound rounding (and bias correction, fine-tuning: the "
               "sidebar's Algorithms section) repair a narrow layer without them.")


def search_section(config: QuantConfig, result: dict[str, Any]) -> None:
    st.subheader("Mixed precision to a target")
    st.caption("The smallest weights that still meet a target: every layer at the widest width first, then each layer "
               "one width narrower alone (its damage and the bytes it saves), then, for each size, the widths with the "
               "least summed damage (a knapsack), bisected and verified by evaluation. The answer is an ordinary configuration you can apply, export and reproduce.")
    ss = st.session_state
    ss.setdefault("search_kind", "max_drop" if "quant_top1" in (resources.result_store().get(config.to_json(), "main") or
                                                               {"metrics": {"quant_top1": 1}})["metrics"] else "min_agreement")
    ss.setdefault("search_value", TARGET_DEFAULTS[ss["search_kind"]])
    ss.setdefault("search_bits", [8, 6, 4])
    ss.setdefault("search_float", False)
    ss.setdefault("search_float_acts", False)
    ss.setdefault("search_asymmetric", False)
    c1, c2, c3 = st.columns([2, 1, 3], vertical_alignment="bottom")
    said = labels.words(result["metrics"])
    targets = EMBEDDING_TARGETS if labels.is_embedding(result["metrics"]) else TARGETS
    c1.selectbox("Target", list(targets), key="search_kind", format_func=targets.get)
    c2.number_input("Value", min_value=0.0, step=0.1, key="search_value", format="%.4g")
    c3.multiselect("Weight widths per layer", list(range(MAX_BITS, MIN_BITS - 1, -1)), key="search_bits",
                   format_func=labels.bits)
    d1, d2, d3 = st.columns(3)
    d1.checkbox("Layers may stay in float", key="search_float",
                help="When even the widest width misses the target, keep the layers that help most in float.")
    static = config.activations is not None and config.activations.mode == "static"
    d2.checkbox("Activations may stay in float", key="search_float_acts", disabled=not static,
                help="Before narrowing any weight, leave in float the fewest activation points that recover most of "
                     "the accuracy: a float activation costs no weight byte (its readers run in float on an integer "
                     "runtime), and buys the room 4-bit layers need." if static else
                     "Only for static activation quantizers (this configuration has none to spare).")
    symmetric = config.weights is None or config.weights.scheme == "symmetric"
    d3.checkbox("Asymmetric narrow widths", key="search_asymmetric", disabled=not symmetric,
                help="Widths below the configuration's take a zero point per channel: less damage at 4-5 bits "
                     "(onnxruntime runs them), but LiteRT/TFLite takes symmetric weights only." if symmetric else
                     "The configuration's weights are asymmetric already; narrower widths keep that.")
    key = config.to_json()
    c1, c2 = st.columns([1, 3], vertical_alignment="center")
    c1.button("Search", key="search_run", on_click=_search, args=(key,), type="primary")
    c2.caption("Stops when you change a control; the points measured so far stay on the chart below and on the "
               "Overview's scatter.")
    outcome = None
    if ss.get("search_run_for") == key:
        outcome = resources.run_search(key, ss["search_kind"], float(ss["search_value"]), tuple(ss["search_bits"]),
                                       bool(ss["search_float"]), float_activations=static and bool(ss["search_float_acts"]),
                                       narrow_scheme="asymmetric" if symmetric and ss["search_asymmetric"] else "keep")
        ss["search_run_for"] = None
        ss["search_outcome"] = outcome
    outcome = ss.get("search_outcome") if outcome is None else outcome
    points = ss.get("search_points", [])
    if outcome is not None and outcome.get("error"):
        st.error(outcome["error"])
    if points:
        best = outcome["best"]["label"] if outcome and outcome.get("best") else None
        int8 = outcome["int8_weight_bytes"] if outcome and outcome.get("int8_weight_bytes") else ss.get("search_int8", 1)
        st.plotly_chart(charts.search_scatter(points, int8, best, said["agreement"]), key="search_chart")
    if outcome is not None and outcome.get("best"):
        (st.success if outcome["met"] else st.warning)(outcome["message"])
        st.button("Apply the answer to the sidebar", key="search_apply", on_click=_apply,
                  args=(QuantConfig.from_dict(outcome["best"]["config"]).to_json(),))
        frontier = [p for p in outcome["points"] if p["frontier"]]
        st.dataframe(pd.DataFrame([{
            "configuration": p["label"], "weight bytes": p["weight_bytes"],
            "% of all-INT8": 100 * p["weight_bytes"] / outcome["int8_weight_bytes"],
            f"{said['agreement']} (%)": 100 * p["agreement"],
            f"{said['accuracy']} (%)": 100 * p["quant_top1"] if p["quant_top1"] is not None else None,
            "meets": p["meets"],
        } for p in sorted(frontier, key=lambda p: p["weight_bytes"])]), hide_index=True, key="search_frontier",
            column_config={c: st.column_config.NumberColumn(format="%.2f")
                           for c in ("% of all-INT8", f"{said['agreement']} (%)", f"{said['accuracy']} (%)")})


def render() -> None:
    st.title("Sensitivity")
    config, result = resources.current_result(complete=False)
    st.markdown(f"For the configuration in the sidebar: **{labels.config_label(result['config'])}** on "
                f"{result['dataset']['num_eval_samples_config'] if 'num_eval_samples_config' in result['dataset'] else result['dataset']['num_eval_samples']} "
                "evaluation samples.")
    sensitivity_section(config, result)
    search_section(config, result)


render()
