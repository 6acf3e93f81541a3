"""The Deploy page and its sidebar controls (issue 13), under AppTest with the digits CNN; the engine is real.

* The default config: one table with FP32, the simulation and onnxruntime, and how to add targets.
* Deployment targets chosen in the sidebar reach the config, a link and the exported JSON; they run only on
  the Deploy page (the Overview leaves them pending).
* Integer arithmetic switches the simulation to PyTorch; onnxruntime then matches it exactly (max |diff| 0)
  and the page says which units are exact.
* A target that cannot run is a row with its reason, never a traceback.
* The table and chart builders, on hand-made rows.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from typing import Any

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from dashboard import charts, resources, sharing
from dashboard.state import default_config
from dashboard.views import deploy
from tests.dashboard.helpers import chart_specs, new_app, open_page, problems

BASE = default_config()
SIMULATION = "simulation ("


def _table(at: AppTest) -> pd.DataFrame:
    tables = [d.value for d in at.dataframe if "runtime" in d.value.columns]
    assert len(tables) == 1, [list(d.value.columns) for d in at.dataframe]
    return tables[0]


def _row(table: pd.DataFrame, start: str) -> dict[str, Any]:
    found = table[table["runtime"].str.startswith(start)]
    assert len(found) == 1, list(table["runtime"])
    return dict(found.iloc[0])


def test_the_default_config_shows_fp32_the_simulation_and_onnxruntime() -> None:
    at = open_page(new_app().run(), "deploy")
    assert not problems(at)
    table = _table(at)
    assert [n.split(" (")[0] for n in table["runtime"]] == ["FP32", "simulation", "onnxruntime"]
    assert not table["kind"].str.startswith("not available").any()
    ort = _row(table, "onnxruntime")
    assert ort["kind"] == "integer kernels" and ort["fallbacks"] == "0" and ort["file size"].endswith("KiB")
    assert float(ort["top-1 (%)"]) > 95 and float(ort["agreement with simulation (%)"]) > 95  # shown as text
    assert float(ort["latency batch 1 (ms)"]) > 0 and float(ort["latency batch 32 (ms)"]) > 0
    assert _row(table, SIMULATION)["max |logit diff| vs simulation"] == ""  # blank, not "None"
    assert _row(table, SIMULATION)["kind"] == "simulated (float ops)"
    assert any("No deployment targets chosen" in i.value for i in at.info)  # and how to add them
    traces = chart_specs(at)[0]["data"]
    assert {t["name"] for t in traces} >= {"FP32 (PyTorch eager)", "onnxruntime"}
    assert [t["marker"]["symbol"] for t in traces if t["name"].startswith(SIMULATION)] == ["circle-open"]


def test_chosen_targets_reach_the_config_a_link_and_the_export_but_run_only_on_the_deploy_page() -> None:
    at = new_app().run()
    at.multiselect(key="sb_eval_targets").set_value(["litert", "pt2e"]).run()
    assert not problems(at)
    config = BASE.replace(evaluation=dataclasses.replace(BASE.evaluation, targets=("litert", "pt2e")))
    link = at.query_params[sharing.PARAM]
    assert sharing.decode(link, BASE) == config
    assert sharing.config_diff(config, BASE) == {"evaluation": {"targets": ["litert", "pt2e"]}}
    overview = resources.result_store().get(config.to_json(), "runtime")
    assert overview is not None and overview["pending"] == ["layer_errors", "targets"]  # not run for the Overview
    assert resources.result_store().get(config.to_json(), "targets") is None

    opened = new_app()
    opened.query_params[sharing.PARAM] = link
    opened.run()
    assert opened.multiselect(key="sb_eval_targets").value == ["litert", "pt2e"]
    open_page(opened, "export")
    exported = [json.loads(c.value) for c in opened.code if c.value.startswith("{")]
    assert exported and exported[0]["evaluation"]["targets"] == ["litert", "pt2e"]


def test_integer_arithmetic_runs_in_pytorch_and_onnxruntime_matches_it_exactly() -> None:
    at = new_app().run()
    assert at.selectbox(key="sb_eval_backend").value == "onnxruntime"  # the dashboard's default
    at.radio(key="sb_eval_arithmetic").set_value("integer").run()
    assert at.selectbox(key="sb_eval_backend").value == "torch"  # onnxruntime cannot do integer arithmetic
    assert at.selectbox(key="sb_eval_backend").disabled
    assert sharing.decode(at.query_params[sharing.PARAM], BASE).evaluation.arithmetic == "integer"
    open_page(at, "deploy")
    assert not problems(at)
    table = _table(at)
    assert _row(table, SIMULATION)["runtime"] == "simulation (integer arithmetic, PyTorch)"
    ort = _row(table, "onnxruntime")
    assert ort["max |logit diff| vs simulation"] == "0" and ort["agreement with simulation (%)"] == "100.00"
    assert any("equal the integer-exact simulation's on every sample" in s.value for s in at.success)
    report = [m.value for m in at.markdown if m.value.startswith("**Integer-exact simulation**")]
    assert report and "9 of 9 quantized units" in report[0] and "QLinearConv" in report[0]


def test_a_target_that_cannot_run_is_a_row_with_its_reason(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "ptq_core.pt2e", None)  # `from .pt2e import ...` raises ImportError
    config = BASE.replace(weights=dataclasses.replace(BASE.weights, bits=7),
                          evaluation=dataclasses.replace(BASE.evaluation, targets=("pt2e",)))
    assert resources.result_store().get(config.to_json(), "targets") is None  # no other test ran this one
    at = new_app().run()
    at.selectbox(key="sb_w_bits").set_value(7)
    at.multiselect(key="sb_eval_targets").set_value(["pt2e"]).run()
    open_page(at, "deploy")
    assert not problems(at)
    table = _table(at)
    pt2e = _row(table, "PyTorch PT2E")
    assert pt2e["kind"].startswith("not available") and pt2e["top-1 (%)"] == ""
    assert _row(table, "onnxruntime")["kind"] == "integer kernels"  # the other runtimes still ran
    warnings = [w.value for w in at.warning if "PyTorch PT2E" in w.value]
    assert warnings and "could not run" in warnings[0] and "not available on this machine" in warnings[0]
    assert not any("not run yet" in i.value for i in at.info)  # the targets part ran and was merged


# -- the builders, on hand-made rows ------------------------------------------------------------------------
ROWS = [
    {"name": "FP32 (PyTorch eager)", "version": "torch", "kind": "float", "top1": 0.99, "agreement": 1.0,
     "sim_agreement": 1.0, "max_abs_diff": 0.2, "latency_ms": {"1": 0.5, "32": 2.0}, "threads": 1, "file_bytes": None,
     "fallbacks": [], "available": True, "reason": None, "notes": []},
    {"name": "simulation (float fake-quantize, PyTorch)", "version": "torch", "kind": "simulated", "top1": 0.98,
     "agreement": 0.99, "sim_agreement": None, "max_abs_diff": None, "latency_ms": {"1": 0.9}, "threads": 1,
     "file_bytes": None, "fallbacks": [], "available": True, "reason": None, "notes": ["float ops"]},
    {"name": "LiteRT", "version": "ai-edge-litert", "kind": "integer", "top1": 0.98, "agreement": 0.99,
     "sim_agreement": 1.0, "max_abs_diff": 0.1, "latency_ms": {"1": 0.01}, "threads": 1, "file_bytes": 44_000,
     "fallbacks": [{"layer": "fc2", "reason": "kept float"}], "available": True, "reason": None, "notes": []},
    {"name": "PyTorch PT2E", "version": "", "kind": "integer", "top1": None, "agreement": None, "sim_agreement": None,
     "max_abs_diff": None, "latency_ms": {}, "threads": None, "file_bytes": None, "fallbacks": [], "available": False,
     "reason": "not available on this machine", "notes": []},
]


def test_the_table_has_one_line_per_runtime_and_every_batch_size() -> None:
    table = deploy.runtime_table(ROWS, embedding=False)
    assert list(table["runtime"]) == [r["name"] for r in ROWS]
    assert [c for c in table.columns if c.startswith("latency")] == ["latency batch 1 (ms)", "latency batch 32 (ms)"]
    assert table["top-1 (%)"].iloc[0] == pytest.approx(99.0)
    assert list(table["file size"]) == ["", "", "43.0 KiB", ""]
    assert table["fallbacks"].iloc[2] == 1 and pd.isna(table["fallbacks"].iloc[0])  # counted for integer runtimes only
    assert table["kind"].iloc[3].startswith("not available")
    text = deploy.shown(table)
    assert list(text["top-1 (%)"]) == ["99.00", "98.00", "98.00", ""] and list(text["fallbacks"]) == ["", "", "1", ""]
    embedded = deploy.runtime_table(ROWS, embedding=True)
    assert "nearest-neighbour agreement with FP32 (%)" in embedded.columns


def test_the_chart_marks_the_simulation_and_leaves_out_what_did_not_run() -> None:
    fig = charts.runtime_scatter(ROWS, "top1", "top-1")
    names = [t.name for t in fig.data]
    assert names == ["FP32 (PyTorch eager)", "simulation (float fake-quantize, PyTorch): simulated latency", "LiteRT"]
    assert [t.marker.symbol for t in fig.data] == ["star", "circle-open", "square"]
    assert fig.layout.xaxis.type == "log"
    assert list(fig.layout.xaxis.tickvals) == [0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0]  # 1-2-5, labelled in ms
    assert list(fig.data[2].y) == [pytest.approx(98.0)]
    assert fig.layout.yaxis.range[0] < 98.0 and fig.layout.yaxis.range[1] > 99.0  # every point inside, room for labels


def test_labels_of_near_points_sit_outside_the_pair() -> None:
    rows = [{"name": "onnxruntime", "kind": "integer", "available": True, "top1": 0.8737, "latency_ms": {"1": 5.8}},
            {"name": "LiteRT", "kind": "integer", "available": True, "top1": 0.8763, "latency_ms": {"1": 6.3}},
            {"name": "FP32 (PyTorch eager)", "kind": "float", "available": True, "top1": 0.8871, "latency_ms": {"1": 38.0}}]
    fig = charts.runtime_scatter(rows, "top1", "top-1")
    # the lower point's label below it, the higher one's above: they cannot meet between the points
    assert [t.textposition for t in fig.data] == ["bottom center", "top center", "top center"]


def test_the_integer_report_names_every_float_op_with_its_reason() -> None:
    text = deploy.integer_report({"integer": [{"layer": "conv1", "kernel": "QLinearConv (u8s8)"}],
                                  "float_ops": [{"layer": "sigmoid", "reason": "no integer kernel"},
                                                {"layer": "swish", "reason": "no integer kernel"}]})
    assert text.startswith("**Integer-exact simulation**: 1 of 3 quantized units")
    assert "2 run a float op" in text and "- `sigmoid`, `swish`: no integer kernel" in text



# -- the Export page's LiteRT download -------------------------------------------------------------------------
def _download_labels(at: AppTest) -> list[str]:
    return [b.proto.label for b in at.get("download_button")]


@pytest.mark.skipif(resources.tflite_unavailable() is not None, reason="litert-torch / ai-edge-litert not installed")
def test_the_export_page_offers_the_tflite_file_next_to_the_onnx_one() -> None:
    at = open_page(new_app().run(), "export")
    at.button(key="io_tflite_export").click().run()
    assert not problems(at)
    assert any(label.startswith("Download .tflite (") for label in _download_labels(at)), _download_labels(at)
    assert any("ptq_core's own numbers in the file" in m.value for m in at.markdown)


@pytest.mark.skipif(resources.tflite_unavailable() is not None, reason="litert-torch / ai-edge-litert not installed")
def test_a_config_litert_cannot_take_is_a_message_not_a_traceback() -> None:
    at = new_app().run()
    at.radio(key="sb_a_mode").set_value("weight_only").run()  # not full-integer: refused before converting
    open_page(at, "export")
    at.button(key="io_tflite_export").click().run()
    assert not at.exception
    errors = [e.value for e in at.error]
    assert any(e.startswith("The LiteRT export failed") and "weight-only" in e for e in errors), errors
    assert not any(label.startswith("Download .tflite") for label in _download_labels(at))
