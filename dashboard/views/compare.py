"""Compare page: saved configurations side by side (rename, delete, restore, an HTML report) and a sweep runner.

The accuracy columns are named for what the rows measured: top-1 for classifiers, k-NN topic accuracy,
nearest-neighbour agreement, cosine and recall for the text model's embeddings (both, said so, when mixed).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import pandas as pd
import streamlit as st

from dashboard import charts, labels, resources, state
from ptq_core.config import (
    ACTIVATION_CLIPPING,
    MAX_BITS,
    MIN_BITS,
    WEIGHT_CLIPPING,
    WEIGHT_GRANULARITIES,
    QuantConfig,
)
from ptq_core.errors import PTQError
from ptq_core.report import ReportEntry, build_report
from ptq_core.sweep import expand_grid

BITS = list(range(MAX_BITS, MIN_BITS - 1, -1))
# The accuracy columns' names (fp32, quant, delta, agreement), by the tasks of the rows shown.
CLASSIFICATION_COLUMNS = ("FP32 top-1 (%)", "quantized top-1 (%)", "Δ top-1 (pp)", "agreement (%)")
EMBEDDING_COLUMNS = ("FP32 k-NN topic accuracy (%)", "quantized k-NN topic accuracy (%)", "Δ k-NN topic accuracy (pp)",
                     "nearest-neighbour agreement (%)")
MIXED_COLUMNS = ("FP32 top-1 or k-NN accuracy (%)", "quantized top-1 or k-NN accuracy (%)", "Δ accuracy (pp)",
                 "top-1 or nearest-neighbour agreement (%)")
COSINE, RECALL = "cosine to FP32 (mean)", "recall@10 (%)"  # embeddings only
NUMBER_FORMATS = {c: st.column_config.NumberColumn(format="%.2f")
                  for c in (*CLASSIFICATION_COLUMNS, *EMBEDDING_COLUMNS, *MIXED_COLUMNS, RECALL, "compression",
                            "latency (ms)")} | {COSINE: st.column_config.NumberColumn(format="%.4f")}
MAX_SWEEP = 64  # configurations per sweep: about a minute for the digits CNN on 2 cores


def accuracy_columns(rows: list[dict[str, Any]]) -> tuple[str, ...]:
    """The four accuracy columns' names for these rows: top-1, k-NN (embeddings), or both named when mixed."""
    return {"classification": CLASSIFICATION_COLUMNS, labels.EMBEDDING: EMBEDDING_COLUMNS,
            "mixed": MIXED_COLUMNS}[labels.rows_task(rows)]


def comparison_table(entries: list[dict[str, Any]]) -> pd.DataFrame:
    fp32_col, quant_col, delta_col, agreement_col = accuracy_columns([e["row"] for e in entries])
    embedding = any(e["row"].get("task") == labels.EMBEDDING for e in entries)
    rows = []
    for i, e in enumerate(entries):
        r = e["row"]
        rows.append({
            "#": i + 1,
            "name": e["name"],
            "weights": f"W{r['weight_bits']} {labels.GRANULARITY[r['weight_granularity']]} {labels.CLIPPING[r['weight_clipping']]}",
            "activations": "float" if r["act_bits"] is None else f"A{r['act_bits']} {labels.CLIPPING.get(r['act_clipping'] or '', 'dynamic')}",
            "calibration samples": r["calibration_samples"] if r["mode"] == "static" else None,
            fp32_col: None if r["fp32_top1"] is None else 100 * r["fp32_top1"],
            quant_col: None if r["quant_top1"] is None else 100 * r["quant_top1"],
            delta_col: None if r["quant_top1"] is None else 100 * (r["quant_top1"] - r["fp32_top1"]),
            agreement_col: 100 * r["agreement"],
            **({COSINE: r.get("cosine_mean"),
                RECALL: None if r.get("recall_at_10") is None else 100 * r["recall_at_10"]} if embedding else {}),
            "size (bytes)": r["quant_bytes"],
            "compression": r["compression_ratio"],
            "latency (ms)": r["quant_ms"],
            "latency is": r.get("latency_kind", "simulated"),
            "keep in float": r["keep_float"],
        })
    return pd.DataFrame(rows)


def _restore(entry_id: int) -> None:
    entry = next(e for e in state.saved() if e["id"] == entry_id)
    state.apply_config_to_state(QuantConfig.from_json(entry["config_json"]))
    state.flash("success", f"Restored “{entry['name']}” into the sidebar.")


def _rename(entry_id: int) -> None:
    name = st.session_state["cmp_new_name"].strip()
    if name:
        state.rename_saved(entry_id, name)
        st.session_state["cmp_new_name"] = ""


def _delete(entry_id: int) -> None:
    state.delete_saved(entry_id)


def _save_sweep() -> None:
    for key in st.session_state.get("cmp_sweep_keys", []):
        result = resources.evaluate(key)
        state.save(result, labels.config_label(result["config"]))
    state.flash("success", "Sweep results saved for comparison.")


def saved_section() -> None:
    entries = state.saved()
    st.subheader(f"Saved configurations ({len(entries)})")
    if not entries:
        st.info("Nothing saved yet: press **Save current to Compare** on the Overview, or run a sweep below and save it.")
        return
    st.dataframe(comparison_table(entries), hide_index=True, key="cmp_table", column_config=NUMBER_FORMATS)
    st.plotly_chart(charts.compare_bars([e["name"] for e in entries], [e["row"] for e in entries]), key="cmp_bars")
    report_button(entries)
    names = {e["id"]: e["name"] for e in entries}
    if st.session_state.get("cmp_pick") not in names:
        st.session_state["cmp_pick"] = entries[-1]["id"]
    c1, c2, c3, c4, c5 = st.columns([3, 3, 1, 1, 1], vertical_alignment="bottom")
    pick = c1.selectbox("Configuration", list(names), key="cmp_pick", format_func=names.get)
    c2.text_input("New name", key="cmp_new_name", placeholder=names[pick])
    c3.button("Rename", key="cmp_rename", on_click=_rename, args=(pick,), width="stretch")
    c4.button("Restore", key="cmp_restore", on_click=_restore, args=(pick,), width="stretch")
    c5.button("Delete", key="cmp_delete", on_click=_delete, args=(pick,), width="stretch")


def report_entries(entries: list[dict[str, Any]]) -> list[ReportEntry]:
    """The saved configurations' most complete Results (per-layer output errors where they were measured)."""
    return [ReportEntry(e["name"], resources.most_complete(e["config_json"])) for e in entries]


def report_button(entries: list[dict[str, Any]]) -> None:
    """Download the comparison as one HTML file (ptq_core.report), built when clicked, not on every run."""
    try:
        report = report_entries(entries)
    except PTQError as exc:
        st.error(f"The report cannot be built: {exc}")
        return
    st.download_button(
        f"Download report (HTML, {len(entries)} configuration{'s' if len(entries) != 1 else ''})",
        lambda: build_report(report, title="PTQ Explorer comparison"), file_name="ptq_report.html", mime="text/html",
        key="cmp_report", on_click="ignore",
        help="One file that opens offline: the configs, this table, the accuracy-size and per-layer error charts "
             "(interactive), machine and versions. Per-layer output errors appear for configurations whose Layer "
             "error page was opened; `python -m ptq_core report --results R1.json R2.json` builds the same from "
             "Result files.")


def sweep_configs(base: QuantConfig, grid: list[tuple[str, list[Any]]], group_size: int) -> list[QuantConfig]:
    """Every combination of ``grid`` on ``base``; per-group entries get ``group_size``, others none."""
    with_group = base.replace(weights=dataclasses.replace(base.weights, group_size=group_size))
    configs = []
    for cfg in expand_grid(with_group, grid):
        if cfg.weights.granularity != "per_group":
            cfg = cfg.replace(weights=dataclasses.replace(cfg.weights, group_size=None))
        configs.append(cfg)
    return list(dict.fromkeys(configs))  # drop duplicates, keep order


def sweep_section(base: QuantConfig) -> None:
    st.subheader("Sweep")
    st.caption("Every combination of the values below, on top of the sidebar's settings. Calibration runs once "
               "and is shared by all of them; results land on the Overview scatter.")
    ss = st.session_state
    ss.setdefault("cmp_w_bits", [8, 6, 4])
    ss.setdefault("cmp_w_gran", ["per_tensor", "per_channel"])
    ss.setdefault("cmp_w_clip", [base.weights.clipping])
    ss.setdefault("cmp_a_bits", [base.activations.bits] if base.activations else [])
    ss.setdefault("cmp_a_clip", [base.activations.clipping] if base.activations else [])
    c = st.columns(5)
    c[0].multiselect("Weight bits", BITS, key="cmp_w_bits", format_func=labels.bits)
    c[1].multiselect("Weight granularity", list(WEIGHT_GRANULARITIES), key="cmp_w_gran", format_func=labels.GRANULARITY.get)
    c[2].multiselect("Weight clipping", list(WEIGHT_CLIPPING), key="cmp_w_clip", format_func=labels.CLIPPING.get)
    static = base.mode == "static"
    c[3].multiselect("Activation bits", BITS, key="cmp_a_bits", format_func=labels.bits, disabled=base.activations is None)
    c[4].multiselect("Activation clipping", list(ACTIVATION_CLIPPING), key="cmp_a_clip",
                     format_func=labels.CLIPPING.get, disabled=not static)
    grid = [(f, v) for f, v in (("weights.bits", ss["cmp_w_bits"]), ("weights.granularity", ss["cmp_w_gran"]),
                                ("weights.clipping", ss["cmp_w_clip"])) if v]
    if base.activations is not None and ss["cmp_a_bits"]:
        grid.append(("activations.bits", ss["cmp_a_bits"]))
    if static and ss["cmp_a_clip"]:
        grid.append(("activations.clipping", ss["cmp_a_clip"]))
    try:
        configs = sweep_configs(base, grid, int(ss["sb_w_group_size"]))
    except PTQError as exc:
        st.error(str(exc))
        return
    n = len(configs)
    too_many = n > MAX_SWEEP
    c1, c2 = st.columns([1, 3], vertical_alignment="center")
    run = c1.button(f"Run sweep ({n} configs)", key="cmp_run", type="primary", disabled=too_many or n == 0)
    c2.caption(f"{n} configurations" + (f": more than {MAX_SWEEP}, narrow the grid." if too_many else "."))
    if run:
        keys = []
        with st.status(f"Sweeping {n} configurations…", expanded=True) as status:
            bar = st.progress(0.0, text="starting")
            for i, cfg in enumerate(configs):
                try:
                    result = resources.evaluate(cfg.to_json())
                except PTQError as exc:
                    st.warning(f"{labels.config_label(cfg.to_dict())}: {exc}")
                    continue
                state.remember(result, source="sweep")
                keys.append(cfg.to_json())
                bar.progress((i + 1) / n, text=f"{i + 1}/{n}: {labels.config_label(result['config'])}")
            status.update(label=f"Sweep done: {len(keys)} of {n} configurations evaluated", state="complete",
                          expanded=False)
        ss["cmp_sweep_keys"] = keys
    keys = ss.get("cmp_sweep_keys", [])
    if keys:
        results = [resources.evaluate(k) for k in keys]
        table = comparison_table([{"name": labels.config_label(r["config"]), "row": state.summary(r)} for r in results])
        st.dataframe(table.drop(columns=["name", "#"]).assign(configuration=table["name"]).set_index("configuration"),
                     key="cmp_sweep_table", column_config=NUMBER_FORMATS)
        st.button("Save all sweep results to compare", key="cmp_save_sweep", on_click=_save_sweep)


def render() -> None:
    st.title("Compare and sweep")
    base, _ = resources.current_result(complete=False)
    saved_section()
    sweep_section(base)


render()
