"""What-ifs answer progressively and pay only for what is on screen (issue 9), under AppTest.

* A large model (or one measured slow) answers on a subset first, labelled, then the whole evaluation
  replaces it in the same run; only complete results reach the session's history.
* The per-layer probe runs only for the Layer error page; the integer runtime check only after the
  numbers on screen are complete, and only where it is shown.
* A what-if that fails shows its message and keeps the last good numbers, marked as the previous
  configuration's.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from dashboard import labels, resources, state
from ptq_core.config import QuantConfig
from ptq_core.errors import ExportError
from ptq_core.pipeline import Explorer
from tests.dashboard.helpers import metric, new_app, open_page, problems


@pytest.fixture
def unmeasured_large_model(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Treat the digits CNN as a large model whose speed is not measured yet: the first answer comes from a subset."""
    monkeypatch.setattr(resources, "LARGE_MODEL_PARAMETERS", 0)
    store = resources.result_store()
    saved = dict(store.seconds_per_sample)
    store.seconds_per_sample.clear()
    yield
    store.seconds_per_sample.clear()
    store.seconds_per_sample.update(saved)


def test_a_subset_answers_first_then_the_whole_evaluation_replaces_it(explorer: Explorer, request: pytest.FixtureRequest) -> None:
    at = new_app().run()
    request.getfixturevalue("unmeasured_large_model")  # after the default config, which measures the speed
    at.selectbox(key="sb_w_bits").set_value(7).run()  # a config nobody evaluated yet
    assert not problems(at)
    config = QuantConfig.from_dict({"weights": {"bits": 7}, "evaluation": {"backend": "onnxruntime"}})
    store = resources.result_store()
    quick = store.get(config.to_json(), "quick")
    assert quick is not None and quick["dataset"]["num_eval_samples"] == resources.MIN_QUICK_SAMPLES
    assert quick["pending"][0] == "samples" and quick["dataset"]["num_eval_samples_config"] == 360
    main = store.get(config.to_json(), "main")
    assert main is not None and "samples" not in main["pending"]  # completed in the same run, after the first answer
    assert quick["predictions"] == main["predictions"][:resources.MIN_QUICK_SAMPLES]  # the subset's numbers are the full run's
    r = explorer.evaluate(config)
    assert metric(at, "Quantized top-1") == labels.pct(r.metrics["quant_top1"])  # the page shows the whole
    assert "first answer" not in at.markdown[0].value
    assert all(json_row["row"]["quant_top1"] is not None for json_row in at.session_state["history"])
    assert [e for e in at.session_state["history"] if '"bits": 7' in e["config_json"]]  # once, complete
    assert store.seconds_per_sample  # measured now: the next what-if plans its first answer with it


def test_quick_samples_follow_the_measured_speed(explorer: Explorer, monkeypatch: pytest.MonkeyPatch) -> None:
    config = state.default_config()
    store = resources.result_store()
    key = resources._speed_key(config)
    monkeypatch.setitem(store.seconds_per_sample, key, 0.1 / 360)  # the whole split in 0.1 s: no subset
    assert resources.quick_samples(config, explorer) is None
    monkeypatch.setitem(store.seconds_per_sample, key, 0.01)  # 3.6 s: a subset that answers in ~0.5 s
    assert resources.quick_samples(config, explorer) == 48
    monkeypatch.setitem(store.seconds_per_sample, key, 1.0)  # very slow: never fewer than the minimum
    assert resources.quick_samples(config, explorer) == resources.MIN_QUICK_SAMPLES


def test_the_probe_runs_for_the_layer_error_page_only() -> None:
    at = new_app().run()
    at.selectbox(key="sb_w_bits").set_value(6).run()
    key = QuantConfig.from_dict({"weights": {"bits": 6}, "evaluation": {"backend": "onnxruntime"}}).to_json()
    store = resources.result_store()
    assert store.get(key, "layers") is None  # Overview: no per-layer probe
    runtime = store.get(key, "runtime")
    assert runtime is not None and "runtime_agreement" in runtime["metrics"]  # run after the numbers were complete
    open_page(at, "layer_error")
    assert not problems(at)
    layers = store.get(key, "layers")
    assert layers is not None and all(row["output_sqnr_db"] is not None for row in layers["layers"])


def test_a_failing_what_if_keeps_the_last_good_numbers_marked(monkeypatch: pytest.MonkeyPatch) -> None:
    at = new_app().run()
    original = Explorer.evaluate

    def fail_for_w3a7(self: Explorer, config: QuantConfig, *args: object, **kwargs: object) -> object:
        if config.weights.bits == 3 and config.activations is not None and config.activations.bits == 7:
            raise ExportError("the onnxruntime backend could not export layer conv2 (test)")
        return original(self, config, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(Explorer, "evaluate", fail_for_w3a7)
    at.selectbox(key="sb_a_bits").set_value(7).run()
    good = metric(at, "Quantized top-1")
    at.selectbox(key="sb_w_bits").set_value(3).run()  # W3A7: a config no other test evaluates
    assert not at.exception
    assert any("could not export layer conv2" in e.value for e in at.error)
    assert any("previous configuration" in w.value for w in at.warning)
    assert metric(at, "Quantized top-1") == good  # still on screen, labelled as the previous config's
    at.selectbox(key="sb_w_bits").set_value(8).run()  # back to a good config: no error, no marker
    assert not problems(at) and not any("previous configuration" in w.value for w in at.warning)
