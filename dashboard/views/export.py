"""Export / import page: the config as QuantConfig JSON, the results as JSON and CSV, and config upload."""

from __future__ import annotations

import json
from typing import Any

import pandas as pd
import streamlit as st

from dashboard import resources, state
from ptq_core.config import QuantConfig
from ptq_core.errors import PTQError


def import_config(text: str) -> QuantConfig:
    """Parse and check an uploaded config against its model; apply it to every control. PTQError changes nothing."""
    config = QuantConfig.from_json(text)
    resources.validate_for_model(config)
    state.apply_config_to_state(config)
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


def render() -> None:
    st.title("Export / import")
    config, result = resources.current_result()

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
        st.download_button("Download result (JSON)", json.dumps(result, indent=1, allow_nan=False) + "\n",
                           file_name="ptq_result.json", mime="application/json", key="io_dl_result", width="stretch")
        st.download_button("Download per-layer errors (CSV)", layers_csv(result), file_name="ptq_layers.csv",
                           mime="text/csv", key="io_dl_layers", width="stretch")
        rows = [e["row"] for e in state.history()]
        st.download_button(f"Download session history (CSV, {len(rows)} config{'s' if len(rows) != 1 else ''})", summary_csv(rows),
                           file_name="ptq_session.csv", mime="text/csv", key="io_dl_session", width="stretch")

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
