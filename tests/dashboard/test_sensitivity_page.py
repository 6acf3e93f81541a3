"""The Sensitivity page: proxy at once, the engine's measured rows on request, a search whose answer applies to the sidebar."""

from __future__ import annotations

import pytest
from streamlit.testing.v1 import AppTest

from dashboard import state
from ptq_core.config import QuantConfig
from ptq_core.pipeline import Explorer
from ptq_core.search import Candidates, Target, search
from ptq_core.sensitivity import sensitivity
from tests.dashboard.helpers import chart_specs, new_app, open_page, problems


def _searched(*checkboxes: str) -> AppTest:
    """The Sensitivity page after a search to agreement >= 99.5% over widths 8 and 4, with ``checkboxes`` ticked."""
    at = open_page(new_app().run(), "sensitivity")
    at.selectbox(key="search_kind").set_value("min_agreement")
    at.number_input(key="search_value").set_value(99.5)
    at.multiselect(key="search_bits").set_value([8, 4])
    for key in checkboxes:
        at.checkbox(key=key).check()
    at.button(key="search_run").click().run()
    assert not problems(at)
    return at


def test_proxy_first_then_the_measured_rows(explorer: Explorer) -> None:
    at = open_page(new_app().run(), "sensitivity")
    assert not problems(at)
    assert any(s["layout"]["title"]["text"].startswith("Proxy (no model run)") for s in chart_specs(at))
    at.button(key="sens_measure").click().run()
    assert not problems(at)
    report = sensitivity(explorer, state.default_config())
    table = at.dataframe[0].value
    assert list(table["layer"]) == [r.name for r in report.layers]  # the engine's ranking
    first = report.layers[0]
    assert table["agreement lost, only this layer (pts)"].iloc[0] == pytest.approx(100 * (1 - first.only.agreement))
    assert any(s["layout"]["title"]["text"].startswith("Agreement lost") for s in chart_specs(at))
    # measured once per config for the whole server: a new session sees the rows at once
    again = open_page(new_app().run(), "sensitivity")
    assert again.dataframe[0].value["layer"].tolist() == table["layer"].tolist()
    assert not [b for b in again.button if b.key == "sens_measure"]


def test_round_with_gptq_sets_the_model_wide_rounding() -> None:
    at = open_page(new_app().run(), "sensitivity")
    if any(b.key == "sens_measure" for b in at.button):  # not yet measured by this server
        at.button(key="sens_measure").click().run()
    button = next(b for b in at.button if b.key.startswith("sens_gptq_"))
    assert not button.disabled
    button.click().run()
    assert not problems(at)
    assert at.session_state["sb_alg_rounding"] == "gptq"
    assert all(b.disabled for b in at.button if b.key.startswith("sens_gptq_"))  # already on: nothing more to do
    open_page(at, "export")
    assert QuantConfig.from_json(at.code[0].value).algorithms.rounding == "gptq"  # what the pages now evaluate


def test_a_search_answer_lands_on_the_scatter_and_applies(explorer: Explorer) -> None:
    at = _searched()
    engine = search(explorer, state.default_config(), Target(min_agreement=99.5), Candidates((8, 4)))
    assert [s.value for s in at.success] == [engine.message]
    assert len(at.session_state["history"]) >= len(engine.points)  # every evaluated point is restorable
    at.button(key="search_apply").click().run()
    assert not problems(at)
    best = QuantConfig.from_dict(engine.best.config)  # the sidebar now holds the answer: it is what the page exports
    open_page(at, "export")
    assert QuantConfig.from_json(at.code[0].value) == best


def test_a_search_may_leave_activations_in_float(explorer: Explorer) -> None:
    """The checkbox hands the config's activation width plus 16 (float) to the engine; the answer applies whole."""
    at = _searched("search_float_acts")
    config = state.default_config()
    assert config.activations is not None
    engine = search(explorer, config, Target(min_agreement=99.5),
                    Candidates((8, 4), activation_bits=(config.activations.bits, 16)))
    assert [s.value for s in at.success] == [engine.message]
    at.button(key="search_apply").click().run()
    assert not problems(at)
    open_page(at, "export")
    applied = QuantConfig.from_json(at.code[0].value)
    assert applied == QuantConfig.from_dict(engine.best.config)
    assert applied.keep_float_activations  # the answer spares some (measured: the input, "x")


def test_a_search_may_take_asymmetric_narrow_widths(explorer: Explorer) -> None:
    at = _searched("search_asymmetric")
    engine = search(explorer, state.default_config(), Target(min_agreement=99.5), Candidates((8, 4), narrow_scheme="asymmetric"))
    assert [s.value for s in at.success] == [engine.message]
    at.button(key="search_apply").click().run()
    open_page(at, "export")
    applied = QuantConfig.from_json(at.code[0].value)
    assert applied == QuantConfig.from_dict(engine.best.config)
    narrow = [ov.weights for ov in applied.overrides.values() if ov.weights.get("bits", 8) < 8]
    assert narrow and all(w["scheme"] == "asymmetric" for w in narrow)


def test_float_activations_are_not_offered_without_static_activations() -> None:
    at = new_app().run()
    at.radio(key="sb_a_mode").set_value(state.WEIGHT_ONLY).run()
    at = open_page(at, "sensitivity")
    assert not problems(at)
    assert at.checkbox(key="search_float_acts").disabled
