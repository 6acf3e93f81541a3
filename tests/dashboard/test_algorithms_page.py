"""The INT4 algorithms in the dashboard (issue 10), under AppTest with the real engine on digits.

* Every algorithm control is one ``config.algorithms`` field; the fields without a control (AdaRound's
  seed, GPTQ's settings, the fine-tune seed) survive an import and later control changes.
* A GPTQ + bias-correction run set through the sidebar: the Layer error page shows each layer without
  and with the algorithms, with the engine's numbers; the label on the scatter says what the run used.
* A run stopped while the algorithms run (Streamlit's Stop, or a control change: the same mechanism)
  keeps nothing of it, and the session stays as it was.
* The Learn page's AdaRound lesson, and bad values with a message naming the field.

The controls' config is read from the address bar (``cfg``, written on every run by
:mod:`dashboard.sharing`), so a mapping check needs no evaluation: those run on the Learn page,
which evaluates nothing. AdaRound and fine-tuning stay tiny here (50 iterations, a few steps).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
from streamlit.runtime.scriptrunner_utils.script_run_context import get_script_run_ctx
from streamlit.testing.v1 import AppTest

from dashboard import labels, lessons, resources, sharing, sidebar, state
from ptq_core.config import AdaRound, Algorithms, Finetune, QuantConfig, SmoothQuant
from ptq_core.errors import ConfigError
from ptq_core.pipeline import Explorer
from ptq_core.progress import ProgressFn
from tests.dashboard.helpers import chart_specs, metric, new_app, open_page, problems, values

BASE = state.default_config()
# A cheap evaluation: weight-only, no integer runtime check (GPTQ and bias correction run in seconds on digits).
GPTQ_BC = {"weights": {"bits": 2, "clipping": "mse"}, "activations": None,
           "evaluation": {"runtime": None, "backend": "onnxruntime"},
           "algorithms": {"rounding": "gptq", "bias_correction": True}}


def controls_config(at: AppTest) -> QuantConfig:
    """The config the sidebar's controls show, as the address bar carries it."""
    return sharing.decode(at.query_params[sharing.PARAM], BASE) if sharing.PARAM in at.query_params else BASE


def test_every_control_is_one_algorithms_field() -> None:
    at = open_page(new_app().run(), "learn")  # the Learn page evaluates nothing: only the mapping runs
    at.checkbox(key="sb_alg_cle").check()
    at.checkbox(key="sb_alg_bias_correction").check()
    at.radio(key="sb_alg_rounding").set_value("adaround")
    at.checkbox(key="sb_alg_finetune").check()
    at.run()  # the settings of AdaRound and fine-tuning are enabled once they are chosen, as in a browser
    at.number_input(key="sb_alg_adaround_iterations").set_value(50)
    at.number_input(key="sb_alg_ft_steps").set_value(3)
    at.number_input(key="sb_alg_ft_batch_size").set_value(8)
    at.number_input(key="sb_alg_ft_lr").set_value(1e-4)
    at.run()
    assert not problems(at)
    assert controls_config(at).algorithms == Algorithms(
        cross_layer_equalization=True, bias_correction=True, rounding="adaround", adaround=AdaRound(iterations=50),
        finetune=Finetune(steps=3, lr=1e-4, batch_size=8))
    # what is off keeps its settings in disabled boxes; fine-tuning off is "finetune": null, AdaRound's settings stay
    # in the config as written (the engine reads them only for rounding "adaround")
    at.radio(key="sb_alg_rounding").set_value("nearest")
    at.checkbox(key="sb_alg_finetune").uncheck()
    at.run()
    assert controls_config(at).algorithms == Algorithms(cross_layer_equalization=True, bias_correction=True,
                                                        adaround=AdaRound(iterations=50))
    assert at.number_input(key="sb_alg_adaround_iterations").disabled and at.number_input(key="sb_alg_ft_steps").disabled
    assert at.number_input(key="sb_alg_ft_steps").value == 3
    at.checkbox(key="sb_alg_finetune").check().run()
    assert controls_config(at).algorithms.finetune == Finetune(steps=3, lr=1e-4, batch_size=8)


def test_an_import_keeps_the_fields_without_a_control() -> None:
    imported = QuantConfig.from_dict({
        "evaluation": {"runtime": None, "backend": "onnxruntime"},
        "algorithms": {"adaround": {"iterations": 50, "seed": 7}, "gptq": {"damping": 0.05, "act_order": False},
                       "finetune": {"steps": 2, "lr": 2e-5, "batch_size": 8, "seed": 3}},
    })
    at = open_page(new_app().run(), "export")
    at.file_uploader(key="io_upload").set_value(("algorithms.json", imported.to_json().encode(), "application/json")).run()
    assert not problems(at)
    assert QuantConfig.from_json(at.code[0].value) == imported  # exported unchanged
    ss = at.session_state
    assert (ss["sb_alg_rounding"], ss["sb_alg_adaround_iterations"], ss["sb_alg_finetune"]) == ("nearest", 50, True)
    assert (ss["sb_alg_ft_steps"], ss["sb_alg_ft_lr"], ss["sb_alg_ft_batch_size"]) == (2, 2e-5, 8)
    open_page(at, "learn")
    at.radio(key="sb_alg_rounding").set_value("gptq")
    at.number_input(key="sb_alg_ft_steps").set_value(4)
    at.run()
    algorithms = controls_config(at).algorithms
    assert algorithms.rounding == "gptq" and algorithms.gptq == imported.algorithms.gptq  # damping 0.05, no act_order
    assert algorithms.adaround.seed == 7
    assert algorithms.finetune == Finetune(steps=4, lr=2e-5, batch_size=8, seed=3)


def test_the_boxes_hold_every_value_the_config_accepts() -> None:
    """The widgets' bounds are the config's (an imported config always fits its box)."""
    for field, top in (("iterations", sidebar.MAX_ADAROUND_ITERATIONS),):
        AdaRound(**{field: top}).validate()
        with pytest.raises(ConfigError, match=f"algorithms.adaround.{field}"):
            AdaRound(**{field: top + 1}).validate()
    for field, top in (("steps", sidebar.MAX_FINETUNE_STEPS), ("batch_size", sidebar.MAX_FINETUNE_BATCH),
                       ("lr", sidebar.MAX_FINETUNE_LR)):
        Finetune(**{field: top}).validate()
        with pytest.raises(ConfigError, match=f"algorithms.finetune.{field}"):
            Finetune(**{field: top * 2}).validate()


def test_labels_say_which_algorithms_a_run_used() -> None:
    assert labels.algorithms_label(None) == labels.algorithms_label(Algorithms().to_dict()) == ""
    everything = Algorithms(cross_layer_equalization=True, bias_correction=True, rounding="adaround",
                            adaround=AdaRound(iterations=1000), finetune=Finetune(steps=200))
    assert labels.algorithms_label(everything.to_dict()) == "+CLE+AdaRound(1000)+BC+FT(200)"
    assert labels.algorithms_label(Algorithms(smoothquant=SmoothQuant(alpha=0.75)).to_dict()) == "+SQ(0.75)"
    config = QuantConfig.from_dict(GPTQ_BC).to_dict()
    assert labels.config_label(config).endswith(" · +GPTQ+BC")
    del config["algorithms"]  # a version-1 history row
    assert "+" not in labels.config_label(config)


def _set_gptq_bc(at: AppTest) -> None:
    """The controls of :data:`GPTQ_BC`, set as a user would (applied by the next run)."""
    at.selectbox(key="sb_w_bits").set_value(2)
    at.selectbox(key="sb_w_clipping").set_value("mse")
    at.radio(key="sb_a_mode").set_value("weight_only")
    at.selectbox(key="sb_eval_runtime").set_value(None)
    at.radio(key="sb_alg_rounding").set_value("gptq")
    at.checkbox(key="sb_alg_bias_correction").check()


def test_gptq_and_bias_correction_through_the_sidebar(explorer: Explorer) -> None:
    at = new_app().run()
    _set_gptq_bc(at)
    open_page(at, "layer_error")
    assert not problems(at)
    config = QuantConfig.from_dict(GPTQ_BC)
    assert controls_config(at) == config
    with_alg = explorer.evaluate(config, layer_errors=True)
    without = explorer.evaluate(config.replace(algorithms=Algorithms()), layer_errors=True)
    assert with_alg.metrics["agreement"] != without.metrics["agreement"]  # the algorithms change the numbers
    spec = next(s for s in chart_specs(at) if s["layout"]["title"]["text"].startswith("Per layer, without and with"))
    bars = {(t["name"], t["yaxis"]): values(t["y"]) for t in spec["data"]}
    names = [r["name"] for r in with_alg.layers if r["quantized"]]
    for series, result in (("round-to-nearest, no algorithms", without), ("with the algorithms", with_alg)):
        rows = {r["name"]: r for r in result.layers}
        assert bars[(series, "y")] == pytest.approx([rows[n]["weight_sqnr_db"] for n in names], rel=1e-6)
        assert bars[(series, "y2")] == pytest.approx([rows[n]["output_sqnr_db"] for n in names], rel=1e-6)
    table = next(d.value for d in at.dataframe if "weight SQNR with (dB)" in d.value.columns)
    assert table["layer"].tolist() == names
    assert {"GPTQ: Hessian-weighted error, GPTQ", "bias correction: mean |bias change|"} <= set(table.columns)
    assert "AdaRound: output MSE, learned" not in table.columns  # only what ran
    gptq = table["GPTQ: Hessian-weighted error, GPTQ"].tolist()
    assert gptq == pytest.approx([with_alg.algorithms["layers"][n]["hessian_error"] for n in names], rel=1e-6)
    assert any("Time the algorithms took" in m.value for m in at.markdown)

    open_page(at, "overview")
    assert not problems(at)
    assert metric(at, "Agreement with FP32") == labels.pct(with_alg.metrics["agreement"])
    assert any(c.value.startswith("**Algorithms** +GPTQ+BC: learned on 256 calibration samples") for c in at.caption)
    row = next(e["row"] for e in at.session_state["history"] if e["config_json"] == config.to_json())
    assert row["label"].endswith("+GPTQ+BC")  # the scatter's hover and the restore list say what the run used


def test_a_stopped_run_keeps_nothing_and_leaves_the_session_as_it_was(monkeypatch: pytest.MonkeyPatch) -> None:
    """Streamlit's Stop (or a control change, which asks for a rerun the same way) while GPTQ runs layer by layer.

    The request is made as the browser makes it, through the script run's request queue; Streamlit raises it at
    the next element drawn, the progress bar's next update (the next layer): the engine is left mid-plan.
    """
    at = new_app().run()
    history = [e["config_json"] for e in at.session_state["history"]]
    last_good = at.session_state["last_good"]
    config = QuantConfig.from_dict({**GPTQ_BC, "calibration": {"seed": 5}})  # evaluated by no other test
    real_progress = resources._progress
    seen: list[str] = []

    @contextmanager
    def stop_at_the_second_layer(label: str) -> Iterator[ProgressFn]:
        with real_progress(label) as update:
            def request_then_draw(done: int, total: int, message: str) -> None:
                seen.append(message)
                if "layer 2 of" in message:
                    ctx = get_script_run_ctx()
                    assert ctx is not None and ctx.script_requests is not None
                    ctx.script_requests.request_stop()  # what the Stop button sends; raised by the draw below
                update(done, total, message)

            yield request_then_draw

    monkeypatch.setattr(resources, "_progress", stop_at_the_second_layer)
    _set_gptq_bc(at)
    at.number_input(key="sb_cal_seed").set_value(5)
    at.run()
    assert not at.exception
    assert "GPTQ: layer 1 of 7 (conv1)" in seen and "layer 2 of" in seen[-1]  # stopped mid-plan, after one layer
    store = resources.result_store()
    assert all(store.get(config.to_json(), part) is None for part in resources.PARTS)
    assert not resources.explorer_for(config).is_improved(config)
    assert [e["config_json"] for e in at.session_state["history"]] == history
    assert at.session_state["last_good"] == last_good

    monkeypatch.setattr(resources, "_progress", real_progress)
    at.run()  # the next run starts over and completes
    assert not problems(at)
    assert controls_config(at) == config
    assert resources.explorer_for(config).is_improved(config)
    assert json.loads(at.session_state["history"][-1]["config_json"]) == config.to_dict()


def test_the_learn_page_shows_adaround_beating_nearest_on_one_layer() -> None:
    at = open_page(new_app().run(), "learn")
    assert not problems(at)
    lesson = lessons.adaround_lesson(0)
    nearest = metric(at, "Output error (MSE), nearest")
    learned = metric(at, "Output error (MSE), AdaRound")
    assert (nearest, learned) == (f"{lesson['output_mse_nearest']:.3g}", f"{lesson['output_mse_adaround']:.3g}")
    assert float(learned) < float(nearest)
    assert lesson["weight_mse_adaround"] > lesson["weight_mse_nearest"]  # each weight further away: the trade
    heatmap = next(s for s in chart_specs(at) if "rounded the other way" in s["layout"]["title"]["text"])
    z = heatmap["data"][0]["z"]  # a 2-D typed array (flat bytes and a shape) or nested lists
    flipped = sum(v != 0 for v in (values(z) if isinstance(z, dict) else [v for row in z for v in row]))
    assert flipped == lesson["flipped"] > 0
    assert heatmap["layout"]["title"]["text"].startswith(f"{lesson['flipped']} of 128 weights")


@pytest.mark.parametrize(("key", "value", "says"), [
    ("sb_alg_ft_lr", 0.0, "algorithms.finetune.lr: got 0.0; allowed: a positive number"),
])
def test_a_bad_value_names_the_field(key: str, value: float, says: str) -> None:
    at = open_page(new_app().run(), "learn")  # evaluates nothing: turning fine-tuning on costs no training here
    at.checkbox(key="sb_alg_finetune").check().run()
    at.number_input(key=key).set_value(value).run()
    assert not at.exception
    assert any(says in e.value for e in at.error), [e.value for e in at.error]  # the sidebar says it
    open_page(at, "overview")
    assert not at.exception
    assert sum(says in e.value for e in at.error) == 2, [e.value for e in at.error]  # ... and the page, instead of numbers
    assert not at.metric
