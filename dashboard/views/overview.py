"""Overview page: FP32 vs quantized headline numbers, and the accuracy-size scatter of this session.

Classification models show top-1 and agreement; the text model (``metrics["task"] == "embedding"``)
shows cosine to FP32, nearest-neighbour agreement, recall and k-NN topic accuracy, with a
plain-words box saying what they mean (:mod:`dashboard.embeddings`).
"""

from __future__ import annotations

from typing import Any

import pandas as pd
import streamlit as st

from dashboard import charts, embeddings, labels, resources, state
from ptq_core.config import QuantConfig
from ptq_core.errors import PTQError


def describe_run(result: dict[str, Any]) -> str:
    """One line saying what was measured on what: model (random weights?), data, calibration subset."""
    model, data, cfg = result["model"], result["dataset"], result["config"]
    weights = "pretrained" if model["pretrained"] else "**random weights**"
    if result["mode"] == "static":
        cal = cfg["calibration"]
        calib = (f"calibrated on **{data['num_calibration_samples']} samples** "
                 f"({labels.SELECTION[cal['selection']]}, seed {cal['seed']}) of a {data['calibration_pool_size']}-sample pool")
    else:
        calib = f"no calibration ({labels.ACT_MODE[result['mode']]})"
    unlabeled = "" if data.get("labeled", True) else " **Unlabeled** data: agreement with FP32 is reported, not accuracy."
    total = data.get("num_eval_samples_config", data["num_eval_samples"])
    if "samples" in result.get("pending", []):
        evaluated = (f"a **first answer on the first {data['num_eval_samples']} of {total}** evaluation samples "
                     "(the complete evaluation is running and replaces it)")
    else:
        evaluated = f"evaluated on {data['num_eval_samples']} samples"
    return (f"**{model['name']}** ({weights}, {model['num_parameters']:,} parameters) on **{data['name']}**: "
            f"{calib}; {evaluated}.{unlabeled}")


def _restore_from_scatter() -> None:
    event = st.session_state.get("ov_scatter")
    points = event.selection.points if event is not None else []
    if not points:
        return
    entry = state.history_entry(int(points[0]["customdata"][0]))
    if entry is not None:
        state.apply_config_to_state(QuantConfig.from_json(entry["config_json"]))
        state.flash("success", f"Restored: {entry['row']['label']}")


def _restore_from_list() -> None:
    entry = state.history_entry(int(st.session_state["ov_restore"]))
    if entry is not None:
        state.apply_config_to_state(QuantConfig.from_json(entry["config_json"]))
        state.flash("success", f"Restored: {entry['row']['label']}")


def _save(result: dict[str, Any]) -> None:
    name = st.session_state["ov_save_name"].strip() or labels.config_label(result["config"])
    state.save(result, name)
    state.flash("success", f"Saved “{name}”: see it on Compare and sweep.")


def run_note(result: dict[str, Any]) -> str:
    """How latency was obtained, what the onnxruntime check found, and what this run cost."""
    lat, m, timing = result["latency"], result["metrics"], result["timing"]
    if lat.get("kind") == "measured":
        kernels = lat.get("integer_kernels", [])
        verified = sum(1 for k in kernels if k.get("verified") == "yes")
        check = labels.runtime_agreement(m) or "simulation vs onnxruntime not compared"
        parts = [f"Latency **measured** on {lat['runtime']} ({lat['threads']} thread(s), median of repeats). "
                 f"Exported model: {check}; {verified} of {len(kernels)} quantized units run on integer kernels."]
        if "no VNNI" in lat.get("int8_kernels", ""):  # why INT8 may be no faster than FP32 on this server
            parts.append(lat["int8_kernels"][0].upper() + lat["int8_kernels"][1:] + ".")
    elif "runtime" in result.get("pending", []):
        parts = [f"Latency is **simulated** for now ({lat.get('runtime', 'PyTorch')}): the integer runtime check is "
                 "**pending**; it runs once the numbers above are complete and replaces it with measured latency."]
    else:
        parts = [f"Latency is **simulated** ({lat.get('runtime', 'PyTorch')}): the cost of simulating quantization "
                 "in float, not integer-kernel speed. Turn on the integer runtime check in the sidebar to measure it."]
    backend = result.get("environment", {}).get("evaluation_backend", "torch")
    parts.append(f"Simulated by **{labels.BACKEND.get(backend, backend)}**.")
    cal = "calibration reused (cached)" if timing["calibration_cached"] else f"calibrated in {timing['calibration_s']:.2f} s"
    parts.append(f"This run: {cal}, evaluated in {timing['evaluation_s']:.2f} s"
                 + (f", runtime check {timing['runtime_s']:.2f} s." if timing.get("runtime_s") else "."))
    return " ".join(parts)


def algorithms_note(result: dict[str, Any]) -> str | None:
    """What the config's algorithms cost, once per configuration (None when it has none)."""
    cfg = result["config"]
    label = labels.algorithms_label(cfg.get("algorithms"))
    if not label:
        return None
    info = result.get("algorithms") or {}
    seconds = sum(info.get("seconds", {}).values())
    algorithms = cfg["algorithms"]
    if not (algorithms["bias_correction"] or algorithms["rounding"] != "nearest" or algorithms["finetune"]):
        return f"**Algorithms** {label}: data-free (cross-layer equalization), nothing learned."
    images = min(cfg["calibration"]["num_samples"], result["dataset"]["calibration_pool_size"])
    return (f"**Algorithms** {label}: learned on {images} calibration samples in {seconds:.1f} s, once for this "
            "configuration (every later evaluation of it reuses them); each layer before and after on *Layer error*.")


def _ask_reference(config_json: str) -> None:
    st.session_state["ov_reference_for"] = config_json


def reference_section(config: QuantConfig, result: dict[str, Any]) -> None:
    """The PyTorch reference, one click away from an onnxruntime-backend result: how many decisions differ."""
    if config.evaluation.backend == "torch" or "samples" in result["pending"]:
        return
    key = config.to_json()
    if st.session_state.get("ov_reference_for") != key:
        c1, c2 = st.columns([1, 3], vertical_alignment="center")
        c1.button("Compare with the PyTorch reference", key="ov_reference", on_click=_ask_reference, args=(key,))
        if labels.is_embedding(result["metrics"]):
            c2.caption("Runs the same simulation in PyTorch eager, the reference implementation, and compares the "
                       "two backends' cosine to FP32 and nearest-neighbour agreement.")
        else:
            c2.caption("Runs the same simulation in PyTorch eager, the reference implementation, and counts the "
                       "top-1 decisions on which the two backends differ (a few near-ties at a rounding boundary are "
                       "expected on large models).")
        return
    try:
        ref = resources.compute(key, "reference")
    except PTQError as exc:
        st.error(f"The PyTorch reference could not be computed: {exc}")
        return
    st.info(labels.backend_comparison(result, ref))


def _card(col: Any, label: str, value: str, **kwargs: Any) -> None:
    col.metric(label, value, border=True, **kwargs)


def _subset(result: dict[str, Any]) -> str:
    """What a first answer on a subset says on every number measured on it ("" for the whole evaluation)."""
    data = result["dataset"]
    return (f" · first {data['num_eval_samples']} of {data.get('num_eval_samples_config', '?')}"
            if "samples" in result.get("pending", []) else "")


def _size_card(col: Any, size: dict[str, Any]) -> None:
    saved = size["fp32_bytes"] - size["quant_bytes"]
    _card(col, "Size", labels.size_bytes(size["quant_bytes"]),
          delta=f"{size['compression_ratio']:.2f}x smaller (−{labels.size_bytes(saved)})", delta_color="off",
          delta_arrow="off", help=f"{size['quant_bytes']:,} bytes quantized vs {size['fp32_bytes']:,} bytes FP32.")


def _latency_card(col: Any, block: dict[str, Any]) -> None:
    lat = labels.latency(block)
    speed = lat["fp32_ms"] / lat["quant_ms"] if lat["quant_ms"] else float("nan")
    _card(col, lat["title"], f"{lat['quant_ms']:.3g} ms", delta=f"FP32 {lat['fp32_ms']:.3g} ms ({speed:.2f}x)",
          delta_color="off", delta_arrow="off", help=lat["note"])


def metric_cards(result: dict[str, Any]) -> None:
    if labels.is_embedding(result["metrics"]):
        embedding_cards(result)
        return
    m = result["metrics"]
    subset = _subset(result)
    cols = st.columns(5)  # FP32 top-1 | quantized top-1 | agreement | size | latency
    if "fp32_top1" in m:
        _card(cols[0], "FP32 top-1" + subset, labels.pct(m["fp32_top1"]))
        delta_pp = 100 * (m["quant_top1"] - m["fp32_top1"])
        if abs(delta_pp) < 0.005:
            _card(cols[1], "Quantized top-1" + subset, labels.pct(m["quant_top1"]), delta="same as FP32",
                  delta_color="off", delta_arrow="off")
        else:
            _card(cols[1], "Quantized top-1" + subset, labels.pct(m["quant_top1"]), delta=f"{delta_pp:+.2f} pp vs FP32")
    else:  # the engine reports no accuracy for random weights or unlabeled data
        why = "random weights" if not result["model"]["pretrained"] else "no labels"
        _card(cols[0], "FP32 top-1", "n/a", help=f"Not reported: {why}. Agreement with FP32 still means something.")
        _card(cols[1], "Quantized top-1", "n/a", help=f"Not reported: {why}.")
    _card(cols[2], "Agreement with FP32" + subset, labels.pct(m["agreement"]),
                   help="Share of evaluation samples whose top-1 class is the same as the FP32 model's.")
    _size_card(cols[3], result["size"])
    _latency_card(cols[4], result["latency"])


def embedding_cards(result: dict[str, Any]) -> None:
    """The text model's cards: how far quantization moved each sentence's embedding, and whether neighbours stayed."""
    m = result["metrics"]
    subset = _subset(result)
    cols = st.columns(5)  # cosine | nearest-neighbour agreement | recall@10 | size | latency
    _card(cols[0], "Cosine to FP32 (mean)" + subset, labels.cosine(m["cosine_mean"]),
          delta=f"min {labels.cosine(m['cosine_min'])}", delta_color="off", delta_arrow="off",
          help=embeddings.COSINE_HELP)
    _card(cols[1], "Nearest-neighbour agreement" + subset, labels.pct(m["neighbour_agreement"]),
          delta=labels.neighbours_moved(m), delta_color="off", delta_arrow="off", help=embeddings.NEIGHBOUR_HELP)
    _card(cols[2], "Recall@10" + subset, labels.pct(m["recall_at_10"]), help=embeddings.RECALL_HELP)
    _size_card(cols[3], result["size"])
    _latency_card(cols[4], result["latency"])
    cols = st.columns(5)
    n = result["dataset"]["num_eval_samples"]
    if "fp32_top1" in m:
        _card(cols[0], "k-NN topic accuracy, FP32" + subset, labels.pct(m["fp32_top1"]), help=embeddings.KNN_HELP)
        delta_pp = 100 * (m["quant_top1"] - m["fp32_top1"])
        same = abs(delta_pp) < 0.005
        _card(cols[1], "k-NN topic accuracy, quantized" + subset, labels.pct(m["quant_top1"]),
              delta="same as FP32" if same else f"{delta_pp:+.2f} pp vs FP32", help=embeddings.KNN_HELP,
              **({"delta_color": "off", "delta_arrow": "off"} if same else {}))
        cols[2].caption(f"k-NN topic accuracy is leave-one-out k-NN (k={embeddings.KNN_K}) on the {n} evaluation "
                        "sentences: each sentence's topic voted by its nearest other sentences.")
    else:  # the engine reports no topic accuracy for random weights or unlabeled texts
        why = "random weights" if not result["model"]["pretrained"] else "the sentences have no topic labels"
        _card(cols[0], "k-NN topic accuracy, FP32", "n/a", help=f"Not reported: {why}. Cosine and neighbours still are.")
        _card(cols[1], "k-NN topic accuracy, quantized", "n/a", help=f"Not reported: {why}.")


def render() -> None:
    st.title("Overview")
    config, result = resources.current_result(runtime=True)
    st.markdown(describe_run(result))
    if not result["model"]["pretrained"]:
        st.warning("This model has **random weights**: accuracy is not reported (it would mean nothing); agreement "
                   "with FP32 still does.")
    if result["model"].get("unsupported_layers"):
        st.info("Layers with weights ptq_core does not quantize stay in float (their size and error count as FP32): "
                + ", ".join(result["model"]["unsupported_layers"]))
    metric_cards(result)
    if labels.is_embedding(result["metrics"]):
        embeddings.explain()
    st.caption(run_note(result))
    if "targets" in result["pending"]:  # LiteRT / PT2E conversions take a minute on a large model: not on every what-if
        st.caption("The deployment targets you chose run on the **Deploy** page, next to onnxruntime.")
    note = algorithms_note(result)
    if note is not None:
        st.caption(note)
    reference_section(config, result)
    for w in result["warnings"]:
        st.warning(w)

    st.subheader("Accuracy–size tradeoff")
    task = labels.task(result["metrics"])
    entries = state.history()
    # one task's measures on one axis: a cosine and a top-1 are not the same scale (history rows say their task)
    plotted = [e for e in entries if e["row"].get("task", "classification") == task]
    current_id = next((e["id"] for e in plotted if e["config_json"] == config.to_json()), None)
    c1, c2 = st.columns([3, 1])
    if labels.is_embedding(result["metrics"]):
        metric = c2.radio("Accuracy measure", list(labels.ACCURACY_MEASURES[task]), key="ov_metric_embedding",
                          format_func=labels.MEASURE_CHOICES.get,
                          help="Cosine: how far quantization moved the embeddings. Nearest-neighbour agreement: "
                               "whether each sentence's nearest other sentence stayed the same.")
    else:
        metric = c2.radio("Accuracy measure", ["quant_top1", "agreement"], key="ov_metric",
                          format_func={"quant_top1": "top-1 accuracy", "agreement": "agreement with FP32"}.get)
    if "quant_top1" not in result["metrics"] and metric == "quant_top1":
        metric = "agreement"
    fig = charts.tradeoff_scatter([e["row"] for e in plotted], [e["id"] for e in plotted], current_id, metric,
                                  {"fp32_top1": result["metrics"].get("fp32_top1"), "fp32_bytes": result["size"]["fp32_bytes"]})
    with c1:
        st.plotly_chart(fig, key="ov_scatter", on_select=_restore_from_scatter, selection_mode="points")
    c2.caption(f"{len(entries)} configuration(s) evaluated in this session. Change a control, run a sweep on "
               "*Compare and sweep*, or click a point to restore its settings.")
    names = {e["id"]: e["row"]["label"] for e in entries}
    c2.selectbox("Restore a configuration", list(reversed(names)), key="ov_restore", format_func=names.get)
    c2.button("Restore", key="ov_restore_btn", on_click=_restore_from_list, width="stretch")
    c2.text_input("Name", key="ov_save_name", placeholder=labels.config_label(result["config"]))
    c2.button("Save current to Compare", key="ov_save", on_click=_save, args=(result,), width="stretch",
              type="primary")

    with st.expander("Session history as a table"):
        st.dataframe(pd.DataFrame([e["row"] for e in entries]), hide_index=True)


render()
