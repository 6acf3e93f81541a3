"""Export / import page: the config as QuantConfig JSON, the results as JSON and CSV, the quantized model as
ONNX QDQ (with its export report) and as a LiteRT .tflite, and config upload."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pandas as pd
import streamlit as st

from dashboard import actions, labels, resources, sharing, state, uploads
from ptq_core.config import QuantConfig
from ptq_core.errors import PTQError
from ptq_core.onnx.session import int8_kernel_note


def import_config(text: str) -> QuantConfig:
    """Parse and check an uploaded config against its model; apply it to every control. PTQError changes nothing."""
    config = QuantConfig.from_json(text)
    actions.apply_config(config)
    return config


def _on_upload() -> None:
    uploaded = st.session_state.get("io_upload")
    if uploaded is None:
        return
    _import(uploaded.getvalue().decode("utf-8", errors="replace"), uploaded.name)


def _on_paste() -> None:
    _import(st.session_state.get("io_paste", ""), "the pasted text")


def _import(text: str, source: str) -> None:
    try:
        import_config(text)
    except PTQError as exc:
        st.session_state["io_error"] = f"{source} was not imported, nothing changed: {exc}"
        return
    st.session_state["io_error"] = None
    state.flash("success", f"Imported {source}: every control now shows its settings.")


def layers_csv(result: dict[str, Any]) -> str:
    keep = ["name", "kind", "quantized", "weight_bits", "weight_granularity", "weight_clipping", "weight_sqnr_db",
            "weight_mse", "weight_clip_fraction", "input_bits", "input_sqnr_db", "output_sqnr_db", "num_weights"]
    return pd.DataFrame([{k: r.get(k) for k in keep} for r in result["layers"]]).to_csv(index=False)


def summary_csv(rows: list[dict[str, Any]]) -> str:
    return pd.DataFrame(rows).to_csv(index=False)


CLI_EXPORT = "python -m ptq_core export --config ptq_config.json --output model.onnx"


def types_note(report: dict[str, Any]) -> str:
    """The activation and weight integer types of an export, and why they are what they are."""
    act, wt = report["activation_type"], report["weight_type"]
    if act is None and wt is None:
        return "No integer types: nothing in this model is quantized, the file is FP32."
    parts = [f"Activations **{act or 'float'}**, weights **{wt or 'float'}**."]
    if act == "uint8" and wt == "int8":
        parts.append("Unsigned 8-bit activations with signed 8-bit weights (U8S8) is onnxruntime's fast integer "
                     "path on x86 CPUs (VNNI/AMX kernels): asymmetric activations map to uint8, symmetric weights "
                     "to int8 with zero point 0. On this server: " + int8_kernel_note() + ".")
    elif act is not None and "int8" in act and "uint8" not in act:
        parts.append("Symmetric activations are stored as int8 (S8S8), which onnxruntime runs more slowly than "
                     "U8S8 on x86; choose *asymmetric* activations for its fast path (uint8 activations, int8 weights).")
    if act is None:
        parts.append("Weight-only: activations stay float, weights are integer codes dequantized on the fly.")
    elif "dynamic" in act:
        parts.append("Dynamic: each input's range is measured at inference (DynamicQuantizeLinear, uint8).")
    if wt is not None and "uint8" in wt:
        parts.append("Asymmetric weights are stored as uint8 with a zero point; onnxruntime's integer kernels "
                     "prefer symmetric int8 weights.")
    formats = {w["format"] for w in report["weights"].values()}
    if "nbits" in formats:
        parts.append("Linear layers with 2-, 4- or 8-bit weights use onnxruntime's MatMulNBits: unsigned codes packed "
                     "in blocks, float activations.")
    if formats & {"int4", "blocked"}:
        parts.append("Other weights below 5 bits, and per-group weights, are stored packed (INT4 two per byte, "
                     "block-wise scales; opset 21) and dequantized to float.")
    return " ".join(parts)


def fallback_groups(report: dict[str, Any]) -> list[tuple[str, list[str]]]:
    """The float fallbacks grouped by reason, in the model's order: [(reason, [layer, ...]), ...]."""
    groups: dict[str, list[str]] = {}
    for row in report["float_fallback"]:
        groups.setdefault(row["reason"], []).append(row["layer"])
    return list(groups.items())


def runtime_check_note(config: QuantConfig, result: dict[str, Any]) -> tuple[str, str]:
    """(kind, text): what the Result's onnxruntime check found, or how to turn it on."""
    line = labels.runtime_agreement(result["metrics"])
    if line is not None:  # a sample or two apart is expected near rounding ties (see ptq_core.onnx.export)
        m = result["metrics"]
        kind = "success" if m["runtime_matching_samples"] == m["num_eval_samples"] else "info"
        return kind, f"Integer runtime check: {line}."
    if "runtime" in result.get("pending", []):
        return "info", ("Integer runtime check: **pending**. It runs once the numbers of this configuration are "
                        "complete (it exports the model and runs it on every evaluation sample); this page updates "
                        "then.")
    if config.evaluation.runtime is None:
        return "info", ("The integer runtime check is off, so this file has not been run against the simulation. "
                        "Turn it on in the sidebar (*Evaluation → Integer runtime check → onnxruntime*) to run the "
                        "exported model on every evaluation sample and compare it with the simulation.")
    why = next((w for w in result["warnings"] if w.startswith("onnxruntime check")), "see the warnings on the Overview")
    return "warning", f"The integer runtime check did not run: {why}"


def _request(kind: str, config_json: str) -> None:
    st.session_state[f"io_{kind}_for"] = config_json
    st.session_state[f"io_{kind}_error"] = None


def _requested_export(kind: str, name: str, config_json: str, make: Callable[[str], dict[str, Any]],
                      *, primary: bool, file_kind: str = "") -> dict[str, Any] | None:
    """The export of ``kind`` ("onnx", "tflite") once asked for: a button until then, an error with a retry if it failed.

    A failure is remembered per config, so it is not retried on every rerun; the rest of the page is unaffected.
    """
    if st.session_state.get(f"io_{kind}_for") != config_json:
        st.button(f"Export this config to {name}{file_kind}", key=f"io_{kind}_export", on_click=_request, args=(kind, config_json),
                  type="primary" if primary else "secondary")
        return None
    error = st.session_state.get(f"io_{kind}_error")
    if error is None:
        try:
            return make(config_json)
        except PTQError as exc:
            error = st.session_state[f"io_{kind}_error"] = str(exc)
    st.error(f"The {name} export failed, no file was written: {error}")
    st.caption("Nothing else is affected: the config and result downloads above still work. Change the settings "
               "the message names, then export again.")
    st.button("Try again", key=f"io_{kind}_retry", on_click=_request, args=(kind, config_json))
    return None


def onnx_section(config: QuantConfig, result: dict[str, Any]) -> None:
    """Export the current config as ONNX QDQ on request; offer the file and say what was written."""
    st.subheader("Quantized model (ONNX QDQ)")
    config_json = config.to_json()
    st.caption("An ONNX file with Quantize/DequantizeLinear pairs carrying ptq_core's own scales, zero points and "
               "integer weight codes, for onnxruntime (and other QDQ runtimes). The export reuses the calibration "
               "statistics of the numbers above.")
    kind, note = runtime_check_note(config, result)
    {"success": st.success, "info": st.info, "warning": st.warning}[kind](note)
    export = _requested_export("onnx", "ONNX", config_json, resources.onnx_export, primary=True)
    if export is None:
        return
    report = export["report"]
    name = labels.file_stem(result["model"]["name"], labels.config_label(result["config"])) + ".onnx"
    st.download_button(f"Download quantized model (ONNX, {labels.size_bytes(len(export['onnx']))})", export["onnx"],
                       file_name=name, mime="application/octet-stream", key="io_dl_onnx", type="primary",
                       on_click="ignore")
    cal = ("statistics reused, no recalibration" if export["calibration_reused"] else "calibrated first")
    st.markdown(
        f"**{name}**: **{labels.size_bytes(report['onnx_bytes'])}** on disk ({report['onnx_bytes']:,} bytes); "
        f"ptq_core's packed size (the Size card) is **{labels.size_bytes(result['size']['quant_bytes'])}** "
        f"({result['size']['quant_bytes']:,} bytes). ONNX opset **{report['opset']}**, {report['mode']} mode; "
        f"exported in {export['seconds']:.2f} s ({cal})."
    )
    st.caption("The packed size counts each weight at its bit width plus scales and zero points; the file also "
               "holds the graph, float biases and names, and keeps 5–7-bit codes in 8-bit containers.")
    st.markdown(types_note(report))
    kernels, groups = report["integer_kernels"], fallback_groups(report)
    if groups:
        n = sum(len(layers) for _, layers in groups)
        lines = [f"**{n} layer{'s' if n != 1 else ''} fall{'' if n != 1 else 's'} back to float** in onnxruntime:"]
        lines += [f"- {', '.join(f'`{x}`' for x in layers)}: {reason}" for reason, layers in groups]
        st.markdown("\n".join(lines))
    else:
        st.markdown("**No float fallbacks**: every quantized layer has an integer kernel in onnxruntime.")
    if kernels:
        by_kernel: dict[str, list[str]] = {}
        for row in kernels:
            by_kernel.setdefault(row["kernel"], []).append(row["layer"])
        lines = [f"**{len(kernels)} unit{'s' if len(kernels) != 1 else ''} on onnxruntime's integer kernels:**"]
        lines += [f"- {', '.join(f'`{x}`' for x in layers)}: {kernel}" for kernel, layers in by_kernel.items()]
        st.markdown("\n".join(lines))
    for note_text in report["notes"]:
        st.caption(note_text)
    st.caption("The same file from a terminal, with the config downloaded above:")
    st.code(CLI_EXPORT, language="bash", wrap_lines=True)


def tflite_section(config: QuantConfig, result: dict[str, Any]) -> None:
    """Export the current config as a full-integer LiteRT .tflite on request; offer the file and say what it carries."""
    st.subheader("Quantized model (LiteRT .tflite)")
    missing = resources.tflite_unavailable()
    if missing is not None:
        st.info(f"LiteRT export is not available on this server: {missing}")
        return
    st.caption("The same plan as a full-integer .tflite for LiteRT (TensorFlow Lite): int8 weights and activations "
               "carrying ptq_core's scales and zero points, converted by litert-torch. Static 8-bit activations only. "
               "Converting takes several seconds on digits and a minute or more on large models; the Deploy page runs "
               "the file in the LiteRT interpreter when *LiteRT* is among the deployment targets.")
    export = _requested_export("tflite", "LiteRT", config.to_json(), resources.tflite_export, primary=False,
                               file_kind=" (.tflite)")
    if export is None:
        return
    report = export["report"]
    name = labels.file_stem(result["model"]["name"], labels.config_label(result["config"])) + ".tflite"
    st.download_button(f"Download .tflite ({labels.size_bytes(len(export['tflite']))})", export["tflite"],
                       file_name=name, mime="application/octet-stream", key="io_dl_tflite", type="primary",
                       on_click="ignore")
    versions = ", ".join(f"{k} {v}" for k, v in report.get("versions", {}).items())
    st.markdown(f"**{name}**: {labels.size_bytes(report['file_bytes'])} ({report['file_bytes']:,} bytes), "
                f"{report['input_dtype']} in, {report['output_dtype']} out; converted in {export['seconds']:.1f} s"
                + (f" ({versions})." if versions else "."))
    st.markdown(f"ptq_core's own numbers in the file: weights of **{len(report['weights_carried'])}** layers, scales of "
                f"**{len(report['activations_carried'])}** activation points.")
    lines = [f"- {row.get('what', '')}: {row.get('how', '')}" for row in report.get("converter_own", [])]
    lines += [f"- `{row.get('layer', '?')}`: {row.get('reason', '')}" for row in report.get("fallbacks", [])]
    if report.get("float_ops"):
        lines.append(f"- ops computing in float32: {', '.join(report['float_ops'])}")
    if lines:
        st.markdown("**Not as ptq_core planned it, or chosen by the converter:**\n" + "\n".join(lines))
    for note_text in report.get("notes", []):
        st.caption(note_text)


def link_section() -> None:
    """The controls' config as a link: relative always, full when the request named its host."""
    st.subheader("Link to this configuration")
    value = sharing.current_param()
    if value is None:
        return
    relative, full = sharing.links(value)
    st.caption("Opening the link sets every control to this configuration (the address bar always holds it too). "
               "It stores only what differs from the defaults, so it stays short; an instructor can prepare one per "
               "exercise." + ("" if value else " These are the defaults: the plain address opens them."))
    if full is not None:
        st.code(full, language=None, wrap_lines=True)
        st.caption("The same link relative to wherever the dashboard is served (append it to the dashboard's address "
                   "if the one above is not what your browser shows, e.g. behind a proxy):")
    st.code(relative, language=None, wrap_lines=True)


def render() -> None:
    st.title("Export / import")
    config, result = resources.current_result(runtime=True)

    st.subheader("Export")
    config_json = config.to_json(indent=2)
    c1, c2 = st.columns([3, 2])
    with c1:
        st.code(config_json, language="json")
    with c2:
        st.download_button("Download config (JSON)", config_json + "\n", file_name="ptq_config.json",
                           mime="application/json", key="io_dl_config", type="primary", width="stretch")
        st.caption("Exactly the QuantConfig schema. Reproduce these numbers from a terminal:")
        st.code("python -m ptq_core run --config ptq_config.json --output result.json", language="bash", wrap_lines=True)
        uploaded = uploads.uploads_in(config.model, config.dataset)
        if uploaded:
            st.warning(f"This config names the {' and the '.join(uploaded)} you uploaded by its path on this server: "
                       "it reproduces here, or elsewhere after you copy the file(s) and edit the path.")
        st.download_button("Download result (JSON)", json.dumps(result, indent=1, allow_nan=False) + "\n",
                           file_name="ptq_result.json", mime="application/json", key="io_dl_result", width="stretch")
        st.download_button("Download per-layer errors (CSV)", layers_csv(result), file_name="ptq_layers.csv",
                           mime="text/csv", key="io_dl_layers", width="stretch")
        rows = [e["row"] for e in state.history()]
        st.download_button(f"Download session history (CSV, {len(rows)} config{'s' if len(rows) != 1 else ''})", summary_csv(rows),
                           file_name="ptq_session.csv", mime="text/csv", key="io_dl_session", width="stretch")

    link_section()
    onnx_section(config, result)
    tflite_section(config, result)

    st.subheader("Import")
    st.caption("Upload a config JSON (from this page or the CLI's assets/configs/): every sidebar control is set "
               "from it. A file that is not a valid config is rejected and nothing changes.")
    error = st.session_state.get("io_error")
    if error:
        st.error(error)
    st.file_uploader("Config JSON", type=["json"], key="io_upload", on_change=_on_upload)
    with st.expander("…or paste JSON"):
        st.text_area("Config JSON", key="io_paste", height=160, placeholder='{"weights": {"bits": 4}}')
        st.button("Apply pasted config", key="io_apply", on_click=_on_paste)


render()
