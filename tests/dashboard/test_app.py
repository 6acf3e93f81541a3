"""The dashboard under AppTest: every page, default and changed controls, numbers checked against the engine.

Reference numbers come from a separate ``Explorer(...).evaluate(config)`` in the test; the
app's metric cards and charts must show exactly those (formatted the way the app formats).
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch

from dashboard import labels, state
from ptq_core.calibration_check import check_calibration
from ptq_core.config import Evaluation, QuantConfig, set_field
from ptq_core.models.digits import DigitsCNN
from ptq_core.models.entry import ModelEntry
from ptq_core.pipeline import Explorer
from ptq_core.primitives import dequantize, qparams_from_range, quantize
from tests.dashboard.helpers import PAGES, ROOT, chart_specs, metric, new_app, open_page, problems, values

# What each page must show with the default config (at least this many charts and metric cards).
EXPECTED = {
    "overview": (1, 5), "weights": (3, 4), "activations": (2, 0), "layer_error": (1, 0),
    "compare": (0, 0), "sensitivity": (1, 0), "calibration_check": (0, 0), "deploy": (1, 0), "export": (0, 0),
    "learn": (7, 8),
}


@pytest.fixture(scope="module")
def default_app() -> object:
    """One app with the default config, evaluated once; tests that only read it share it."""
    return new_app().run()


@pytest.mark.parametrize("page", PAGES)
def test_every_page_renders_with_defaults(default_app, page: str) -> None:  # type: ignore[no-untyped-def]
    at = open_page(default_app, page)
    assert not problems(at)
    charts, metrics = EXPECTED[page]
    assert len(at.get("plotly_chart")) >= charts
    assert len(at.metric) >= metrics


def test_overview_shows_the_engines_numbers(default_app, explorer: Explorer) -> None:  # type: ignore[no-untyped-def]
    at = open_page(default_app, "overview")
    r = explorer.evaluate(state.default_config())
    assert metric(at, "FP32 top-1") == labels.pct(r.metrics["fp32_top1"])
    assert metric(at, "Quantized top-1") == labels.pct(r.metrics["quant_top1"])
    assert metric(at, "Agreement with FP32") == labels.pct(r.metrics["agreement"])
    assert metric(at, "Size") == labels.size_bytes(r.size["quant_bytes"])
    lat = labels.latency(r.latency)
    assert any(m.label == lat["title"] for m in at.metric)  # measured vs simulated is said, not implied
    scatter = next(s for s in chart_specs(at) if s["layout"]["title"]["text"].startswith("Accuracy vs size"))
    points = next(t for t in scatter["data"] if t["name"] == "quantized configs")
    assert points["y"][-1] == pytest.approx(100 * r.metrics["quant_top1"])
    assert points["x"][-1] == pytest.approx(r.size["quant_bytes"] / 1024)
    assert "256 samples" in at.markdown[0].value  # the calibration subset is labeled with its size


def test_changing_bits_reevaluates_without_recalibrating(explorer: Explorer) -> None:
    at = new_app().run()
    at.selectbox(key="sb_w_bits").set_value(4).run()
    at.selectbox(key="sb_w_granularity").set_value("per_tensor").run()
    at.selectbox(key="sb_a_clipping").set_value("mse").run()
    assert not problems(at)
    cfg = QuantConfig.from_dict({"weights": {"bits": 4, "granularity": "per_tensor"}, "activations": {"clipping": "mse"}})
    r = explorer.evaluate(cfg)
    assert metric(at, "Quantized top-1") == labels.pct(r.metrics["quant_top1"])
    assert metric(at, "Agreement with FP32") == labels.pct(r.metrics["agreement"])
    assert metric(at, "Size") == labels.size_bytes(r.size["quant_bytes"])
    assert any("calibration reused (cached)" in c.value for c in at.caption)
    assert len(at.session_state["history"]) == 4  # default + three changes, each on the scatter


def test_backend_is_one_control_and_the_pytorch_reference_is_one_click_away(explorer: Explorer) -> None:
    at = new_app().run()
    assert json.loads(at.session_state["history"][-1]["config_json"])["evaluation"]["backend"] == "onnxruntime"
    assert any("Simulated by **onnxruntime" in c.value for c in at.caption)  # which backend produced the numbers
    at.button(key="ov_reference").click().run()
    assert not problems(at)
    reference = explorer.evaluate(QuantConfig())  # the PyTorch backend
    ort = explorer.evaluate(state.default_config())
    differ = sum(a != b for a, b in zip(ort.predictions, reference.predictions, strict=True))
    note = next(i.value for i in at.info if i.value.startswith("**PyTorch reference**"))
    assert (f"differ on **{differ} of 360**" in note) if differ else ("same top-1 decision on all 360" in note)
    at.selectbox(key="sb_eval_backend").set_value("torch").run()
    assert not problems(at)
    assert json.loads(at.session_state["history"][-1]["config_json"])["evaluation"]["backend"] == "torch"
    assert metric(at, "Quantized top-1") == labels.pct(reference.metrics["quant_top1"])
    assert metric(at, "Agreement with FP32") == labels.pct(reference.metrics["agreement"])
    assert any("Simulated by **PyTorch" in c.value for c in at.caption)


def test_weights_page_shows_the_layers_error(default_app, explorer: Explorer) -> None:  # type: ignore[no-untyped-def]
    at = open_page(default_app, "weights")
    at.selectbox(key="w_layer").set_value("fc1").run()
    r = explorer.evaluate(state.default_config())
    assert metric(at, "Weight SQNR") == labels.db(r.layer("fc1")["weight_sqnr_db"])
    titles = [s["layout"]["title"]["text"] for s in chart_specs(at)]
    assert any("fc1 weights" in t for t in titles) and any("every output channel" in t for t in titles)
    hist = next(s for s in chart_specs(at) if "fc1 weights" in s["layout"]["title"]["text"])
    assert sum(values(hist["data"][0]["y"])) == 64  # one output channel of fc1 [32, 64]: 64 weights
    grid = next(t for t in hist["data"] if t["name"].startswith("INT8 grid"))
    assert "255 values" in grid["name"]  # symmetric INT8: [-127, 127]


def test_activations_page_marks_the_chosen_range(default_app, explorer: Explorer) -> None:  # type: ignore[no-untyped-def]
    at = open_page(default_app, "activations")
    at.selectbox(key="act_point").set_value("conv2").run()
    assert not problems(at)
    r = explorer.evaluate(state.default_config())
    row = next(a for a in r.activations if a["name"] == "conv2")
    hist = next(s for s in chart_specs(at) if s["layout"]["title"]["text"].startswith("conv2"))
    chosen = next(t for t in hist["data"] if t["name"].endswith("(chosen)"))
    xs = [x for x in chosen["x"] if x is not None]
    assert xs == [row["lo"], row["lo"], row["hi"], row["hi"]]
    assert {t["name"].removesuffix(" (chosen)") for t in hist["data"][1:]} == set(labels.CLIPPING.values())
    table = at.dataframe[0].value
    chosen_row = table[table["method"].str.endswith("(chosen)")].iloc[0]
    assert chosen_row["expected MSE"] == pytest.approx(row["expected_mse"], rel=1e-9)


def test_layer_error_one_click_keep_in_float_reruns(explorer: Explorer) -> None:
    at = open_page(new_app().run(), "layer_error")
    flagged = [b.key.removeprefix("le_float_") for b in at.button if b.key and b.key.startswith("le_float_")]
    assert len(flagged) == 3
    bars = chart_specs(at)[0]
    r = explorer.evaluate(state.default_config())
    weight_bars = next(t for t in bars["data"] if t["name"] == "weights")
    assert values(weight_bars["y"]) == pytest.approx([row["weight_sqnr_db"] for row in r.layers])
    at.button(key=f"le_float_{flagged[0]}").click().run()
    assert not problems(at)
    assert at.session_state["sb_keep_float"] == [flagged[0]]
    r2 = explorer.evaluate(QuantConfig(keep_float=(flagged[0],)))
    table = at.dataframe[0].value
    assert table.loc[table["layer"] == flagged[0], "weights"].item() == "float"
    assert table["output SQNR (dB)"].tolist() == pytest.approx([row["output_sqnr_db"] for row in r2.layers], nan_ok=True)


def test_give_it_8_bits_overrides_weights_and_input(explorer: Explorer) -> None:
    at = new_app().run()
    at.selectbox(key="sb_w_bits").set_value(4).run()
    at.selectbox(key="sb_a_bits").set_value(4).run()
    open_page(at, "layer_error")
    key = next(b.key for b in at.button if b.key and b.key.startswith("le_8bit_"))
    layer = key.removeprefix("le_8bit_")
    at.button(key=key).click().run()
    assert not problems(at)
    overrides = at.session_state["cfg_overrides"]
    assert overrides[layer]["weights"] == {"bits": 8}
    assert any(ov.get("activations") == {"bits": 8} for ov in overrides.values())
    table = at.dataframe[0].value
    row = table[table["layer"] == layer].iloc[0]
    assert (row["weights"], row["input"]) == ("INT8", "INT8")


def test_compare_save_rename_delete_and_sweep(explorer: Explorer) -> None:
    at = new_app().run()
    at.text_input(key="ov_save_name").input("baseline").run()
    at.button(key="ov_save").click().run()
    open_page(at, "compare")
    assert at.dataframe[0].value["name"].tolist() == ["baseline"]
    at.text_input(key="cmp_new_name").input("W8 per-channel").run()
    at.button(key="cmp_rename").click().run()
    assert at.dataframe[0].value["name"].tolist() == ["W8 per-channel"]
    # a 2 x 1 sweep: both configs land in the history (the Overview scatter) with the engine's numbers
    at.multiselect(key="cmp_w_bits").set_value([8, 4]).run()
    at.multiselect(key="cmp_w_gran").set_value(["per_channel"]).run()
    at.button(key="cmp_run").click().run()
    assert not problems(at)
    rows = {json.loads(e["config_json"])["weights"]["bits"]: e["row"] for e in at.session_state["history"]}
    r4 = explorer.evaluate(QuantConfig.from_dict({"weights": {"bits": 4}}))
    assert rows[4]["quant_top1"] == r4.metrics["quant_top1"] and rows[4]["quant_bytes"] == r4.size["quant_bytes"]
    at.button(key="cmp_save_sweep").click().run()
    assert len(at.session_state["saved"]) == 3
    at.button(key="cmp_delete").click().run()
    assert len(at.session_state["saved"]) == 2
    open_page(at, "overview")
    scatter = chart_specs(at)[0]
    assert len(next(t for t in scatter["data"] if t["name"] == "quantized configs")["x"]) == 2


def test_restore_from_history_sets_every_control() -> None:
    at = new_app().run()
    first = at.session_state["history"][0]["id"]
    at.selectbox(key="sb_w_bits").set_value(3).run()
    at.selectbox(key="ov_restore").set_value(first).run()
    at.button(key="ov_restore_btn").click().run()
    assert at.session_state["sb_w_bits"] == 8
    assert metric(at, "Quantized top-1") == metric(new_app().run(), "Quantized top-1")


def test_export_is_the_config_in_the_controls_and_the_cli_reproduces_it(tmp_path, explorer: Explorer) -> None:  # type: ignore[no-untyped-def]
    at = new_app().run()
    at.selectbox(key="sb_w_bits").set_value(4).run()
    at.selectbox(key="sb_w_granularity").set_value("per_group").run()
    at.number_input(key="sb_w_group_size").set_value(16).run()
    at.selectbox(key="sb_a_clipping").set_value("percentile").run()
    at.selectbox(key="sb_eval_runtime").set_value(None).run()
    open_page(at, "export")
    assert not problems(at)
    exported = QuantConfig.from_json(at.code[0].value)
    expected = QuantConfig.from_dict({
        "weights": {"bits": 4, "granularity": "per_group", "group_size": 16},
        "activations": {"clipping": "percentile"}, "evaluation": {"runtime": None, "backend": "onnxruntime"},
    })
    assert exported == expected
    path = tmp_path / "ptq_config.json"
    path.write_text(at.code[0].value)
    out = tmp_path / "result.json"
    proc = subprocess.run([sys.executable, "-m", "ptq_core", "run", "--config", str(path), "--output", str(out), "--quiet"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    cli = json.loads(out.read_text())
    app = explorer.evaluate(expected).to_dict()
    for key in ("fp32_top1", "quant_top1", "agreement"):
        assert cli["metrics"][key] == app["metrics"][key]
    assert cli["size"]["quant_bytes"] == app["size"]["quant_bytes"]
    # per-layer SQNR: same to float rounding (the CLI may use another torch thread count)
    for a, b in zip(cli["layers"], app["layers"], strict=True):
        assert a["output_sqnr_db"] == pytest.approx(b["output_sqnr_db"], rel=1e-6)
    open_page(at, "overview")
    assert metric(at, "Quantized top-1") == labels.pct(cli["metrics"]["quant_top1"])


def test_upload_restores_every_control() -> None:
    at = open_page(new_app().run(), "export")
    config_text = (ROOT / "assets" / "configs" / "w4g32a8_digits_cnn.json").read_text()
    at.file_uploader(key="io_upload").set_value(("w4g32a8.json", config_text.encode(), "application/json")).run()
    assert not problems(at)
    assert QuantConfig.from_json(at.code[0].value) == QuantConfig.from_json(config_text)
    assert at.session_state["sb_w_bits"] == 4 and at.session_state["sb_w_group_size"] == 32
    assert at.session_state["sb_keep_float"] == ["fc2"]
    assert at.session_state["cfg_overrides"] == {"conv1": {"weights": {"bits": 8}}}


@pytest.mark.parametrize("text, message", [
    ("{not json", "not valid JSON"),
    ('{"weights": {"bits": 99}}', "weights.bits"),
    ('{"keep_float": ["no_such_layer"]}', "keep_float[0]"),
    ('{"model": "no_such_model"}', "no_such_model"),
])
def test_broken_upload_shows_an_error_and_changes_nothing(text: str, message: str) -> None:
    at = open_page(new_app().run(), "export")
    at.selectbox(key="sb_w_bits").set_value(6).run()
    before = at.code[0].value
    at.file_uploader(key="io_upload").set_value(("broken.json", text.encode(), "application/json")).run()
    assert not at.exception
    assert any(message in e.value for e in at.error), [e.value for e in at.error]
    assert at.code[0].value == before
    assert at.session_state["sb_w_bits"] == 6


def test_an_invalid_combination_shows_an_error_not_a_traceback() -> None:
    at = new_app().run()
    at.session_state["sb_a_mode"] = "dynamic"  # set behind the callback's back: clipping stays mse
    at.session_state["sb_a_clipping"] = "mse"
    at.run()
    assert not at.exception
    assert any("activations.clipping" in e.value for e in at.error)


def test_calibration_check_page_shows_the_engines_check(explorer: Explorer) -> None:
    at = open_page(new_app().run(), "calibration_check")
    at.multiselect(key="cc_sizes").set_value([8, 32]).run()
    at.number_input(key="cc_num_seeds").set_value(2).run()
    at.toggle(key="cc_run").set_value(True).run()
    assert not problems(at)
    check = check_calibration(explorer, QuantConfig(), sizes=[8, 32], seeds=[0, 1])
    own = next(r for r in check.summary if r["size"] == 256)
    assert metric(at, "Top-1 at 256 samples") == labels.pct(own["quant_top1_mean"])
    assert metric(at, "Unstable activation ranges") == f"{sum(r['unstable'] for r in check.unstable)} of {len(check.points)}"
    assert len(at.get("plotly_chart")) == 2


def test_calibration_check_explains_when_there_is_nothing_to_check() -> None:
    at = new_app().run()
    at.radio(key="sb_a_mode").set_value("weight_only").run()
    open_page(at, "calibration_check")
    assert not problems(at)
    assert any("no calibration" in i.value for i in at.info)


def test_learn_page_steps_follow_the_controls() -> None:
    at = open_page(new_app().run(), "learn")
    at.text_input(key="learn_values").input("-1, 0.3, 2").run()
    at.selectbox(key="learn_bits").set_value(8).run()
    assert not problems(at)
    scale, zp = qparams_from_range(torch.tensor(-1.0), torch.tensor(2.0), 8, "asymmetric")
    x = torch.tensor([-1.0, 0.3, 2.0])
    q = quantize(x, scale, zp, 0, 255)
    table = at.dataframe[0].value
    assert table["q (clamped)"].tolist() == q.tolist() == [0, 111, 255]  # the worked example of primitives.py
    assert table["x̂ = (q − z)·s"].tolist() == pytest.approx(dequantize(q, scale, zp).tolist())
    at.text_input(key="learn_values").input("1, two, 3").run()
    assert any("'two' is not a number" in e.value for e in at.error) and not at.exception


def test_random_weights_are_labeled(registry) -> None:  # type: ignore[no-untyped-def]
    def build() -> torch.nn.Module:
        torch.manual_seed(0)
        return DigitsCNN().eval()

    registry.model(ModelEntry(name="test_random_cnn", description="digits CNN, untrained", default_dataset="digits",
                              build=build, pretrained=False))
    at = new_app().run()
    at.selectbox(key="src_m_name").set_value("test_random_cnn").run()
    at.button(key="src_load").click().run()  # the model picker applies on Load, once the model loads
    assert not at.exception
    assert any("random weights" in w.value for w in at.warning)
    assert "random weights" in at.markdown[0].value
    assert "random weights" in at.selectbox(key="src_m_name").format_func("test_random_cnn")


def test_two_sessions_do_not_share_state() -> None:
    a, b = new_app().run(), new_app().run()
    a.selectbox(key="sb_w_bits").set_value(4).run()
    a.text_input(key="ov_save_name").input("only in a").run()
    a.button(key="ov_save").click().run()
    b.run()
    assert b.session_state["sb_w_bits"] == 8
    assert b.session_state["saved"] == [] and len(b.session_state["history"]) == 1
    assert metric(a, "Size") != metric(b, "Size")


def test_sqnr_of_float_layers_is_not_a_number_error(explorer: Explorer) -> None:
    # keep_float layers have no weight error: the engine writes inf (null in JSON), shown as "exact"
    r = explorer.evaluate(QuantConfig(keep_float=("fc2",))).to_dict()
    row = next(x for x in r["layers"] if x["name"] == "fc2")
    assert row["weight_sqnr_db"] is None and labels.db(row["weight_sqnr_db"]) == "exact"
    assert not math.isnan(labels.latency(r["latency"])["quant_ms"])


def test_group_size_survives_a_detour_through_other_granularities() -> None:
    at = new_app().run()
    at.selectbox(key="sb_w_granularity").set_value("per_group").run()
    at.number_input(key="sb_w_group_size").set_value(8).run()
    at.selectbox(key="sb_w_granularity").set_value("per_channel").run()
    at.selectbox(key="sb_w_granularity").set_value("per_group").run()
    open_page(at, "export")
    assert QuantConfig.from_json(at.code[0].value).weights.group_size == 8


def test_set_field_keeps_dashboard_and_engine_in_step() -> None:
    # the sidebar builds configs through the same schema: a default app exports the dashboard's default config,
    # the engine's defaults simulated by onnxruntime
    at = open_page(new_app().run(), "export")
    assert QuantConfig.from_json(at.code[0].value) == state.default_config()
    assert state.default_config() == QuantConfig(evaluation=Evaluation(backend="onnxruntime"))
    assert set_field(QuantConfig(), "weights.bits", 8) == QuantConfig()
