"""The Activations page's outlier channels and the sidebar's SmoothQuant control, under AppTest with the real engine.

* The SmoothQuant checkbox and alpha slider are ``config.algorithms.smoothquant`` (null when off; alpha kept
  while off, as the fine-tune controls keep theirs); the "auto" checkbox is ``alpha: "auto"``; a shared link
  restores them.
* The outlier section measures only when its toggle is on; it draws the chart and the ranking table with
  the numbers of a fresh ``Explorer.channel_outliers`` of the same config, before and after SmoothQuant,
  in static, dynamic and weight-only modes (the histogram part keeps its static-only message).

digits_mlp (three Linears, 8 to 128 channels) keeps these to seconds; one test runs the text model on 32
calibration sentences, where channel 99 of the LayerNorm outputs is the outlier the section is for.
"""

from __future__ import annotations

import math
from typing import Any

import pandas as pd
import pytest
from streamlit.testing.v1 import AppTest

from dashboard import labels, sharing, state
from ptq_core.config import QuantConfig, SmoothQuant
from ptq_core.models import MINILM
from ptq_core.pipeline import Explorer
from tests.dashboard.helpers import chart_specs, new_app, open_page, problems, values

BASE = state.default_config()
MLP = {"model": "digits_mlp", "dataset": "digits", "evaluation": {"runtime": None, "backend": "torch"}}
REL_TOL = 1e-6  # the app and the reference run the same FP32 pass on one thread: equal up to float noise


@pytest.fixture(scope="module")
def mlp() -> Explorer:
    """The reference: a fresh Explorer, not the app's shared one."""
    return Explorer("digits_mlp", "digits")


def controls_config(at: AppTest) -> QuantConfig:
    """The config the sidebar's controls show, as the address bar carries it."""
    return sharing.decode(at.query_params[sharing.PARAM], BASE) if sharing.PARAM in at.query_params else BASE


def linked(partial: dict[str, Any], page: str = "activations") -> AppTest:
    """A session opened from a link carrying ``partial`` over the defaults, on ``page``."""
    at = new_app()
    at.query_params[sharing.PARAM] = sharing.encode(sharing.config_from_partial(partial, BASE), BASE)
    return open_page(at.run(), page)


def measure(at: AppTest) -> AppTest:
    at.toggle(key="act_outliers").set_value(True).run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def outlier_chart(at: AppTest) -> dict[str, Any]:
    (spec,) = [s for s in chart_specs(at) if "max |x| per channel" in s["layout"]["title"]["text"]]
    return spec


def outlier_caption(at: AppTest) -> str:
    (text,) = [c.value for c in at.main.caption if c.value.startswith("**Before:**")]
    return text


def ranking(at: AppTest) -> pd.DataFrame:
    (df,) = [d.value for d in at.dataframe if "max / median" in d.value.columns]
    return df


def ratio_text(ratio: float) -> str:
    return f"{ratio:.2f}x"


def check_table(df: pd.DataFrame, rows: list[dict[str, Any]], smoothed: bool) -> None:
    ranked = sorted(rows, key=lambda r: r["summary"]["ratio"], reverse=True)
    assert list(df["reads"]) == [r["point"] for r in ranked]
    assert list(df["largest channel"]) == [r["summary"]["channel"] for r in ranked]
    for got, r in zip(df["max / median"], ranked, strict=True):
        assert math.isclose(got, r["summary"]["ratio"], rel_tol=REL_TOL)
    assert ("after: max / median" in df.columns) == smoothed
    if smoothed:
        for got, r in zip(df["after: max / median"], ranked, strict=True):
            assert math.isclose(got, r["summary_smoothed"]["ratio"], rel_tol=REL_TOL)


# -- the sidebar control ---------------------------------------------------------------------------------------
def test_the_smoothquant_control_is_algorithms_smoothquant() -> None:
    at = open_page(new_app().run(), "learn")  # the Learn page evaluates nothing: only the mapping runs
    assert controls_config(at).algorithms.smoothquant is None
    assert at.slider(key="sb_alg_sq_alpha").disabled and at.slider(key="sb_alg_sq_alpha").value == 0.5
    at.checkbox(key="sb_alg_smoothquant").check().run()
    assert controls_config(at).algorithms.smoothquant == SmoothQuant(alpha=0.5)
    at.slider(key="sb_alg_sq_alpha").set_value(0.75).run()
    assert not problems(at)
    assert controls_config(at).algorithms.smoothquant == SmoothQuant(alpha=0.75)
    at.checkbox(key="sb_alg_smoothquant").uncheck().run()  # off is null; the slider keeps its value, disabled
    assert controls_config(at).algorithms.smoothquant is None
    assert at.slider(key="sb_alg_sq_alpha").disabled and at.slider(key="sb_alg_sq_alpha").value == 0.75
    at.checkbox(key="sb_alg_smoothquant").check().run()
    assert controls_config(at).algorithms.smoothquant == SmoothQuant(alpha=0.75)


def test_the_auto_checkbox_is_alpha_auto_and_a_link_restores_it() -> None:
    at = open_page(new_app().run(), "learn")
    assert at.checkbox(key="sb_alg_sq_auto").disabled and not at.checkbox(key="sb_alg_sq_auto").value
    at.checkbox(key="sb_alg_smoothquant").check().run()
    at.checkbox(key="sb_alg_sq_auto").check().run()
    assert not problems(at)
    assert controls_config(at).algorithms.smoothquant == SmoothQuant(alpha="auto")
    assert at.slider(key="sb_alg_sq_alpha").disabled and at.slider(key="sb_alg_sq_alpha").value == 0.5  # kept for "off"
    at.checkbox(key="sb_alg_sq_auto").uncheck().run()
    assert controls_config(at).algorithms.smoothquant == SmoothQuant(alpha=0.5)
    at = linked({"algorithms": {"smoothquant": {"alpha": "auto"}}}, "learn")
    assert not problems(at)
    assert at.checkbox(key="sb_alg_sq_auto").value and not at.checkbox(key="sb_alg_sq_auto").disabled
    assert controls_config(at).algorithms.smoothquant == SmoothQuant(alpha="auto")
    assert labels.algorithms_label(controls_config(at).algorithms.to_dict()) == "+SQ(auto)"


def test_a_link_restores_smoothquant_and_weight_only_says_it_does_nothing() -> None:
    at = linked({"algorithms": {"smoothquant": {"alpha": 0.3}}, "activations": None}, "learn")
    assert not problems(at)
    assert at.checkbox(key="sb_alg_smoothquant").value and at.slider(key="sb_alg_sq_alpha").value == 0.3
    assert controls_config(at).algorithms.smoothquant == SmoothQuant(alpha=0.3)
    assert any("SmoothQuant does nothing" in c.value for c in at.sidebar.caption)


# -- the outlier section ---------------------------------------------------------------------------------------
def test_outliers_are_measured_only_when_asked_and_show_the_engines_numbers(mlp: Explorer) -> None:
    at = linked({**MLP, "activations": {"mode": "static"}})
    assert not problems(at)
    assert at.toggle(key="act_outliers").value is False
    assert not [s for s in chart_specs(at) if "max |x| per channel" in s["layout"]["title"]["text"]]
    assert [s for s in chart_specs(at) if "calibration histogram" in s["layout"]["title"]["text"]]  # static mode
    measure(at)
    config = controls_config(at)
    assert config.algorithms.smoothquant is None
    rows = mlp.channel_outliers(config)
    worst = max(rows, key=lambda r: r["summary"]["ratio"])
    assert at.selectbox(key="act_out_group").value == worst["point"]  # the most lopsided input first
    assert at.selectbox(key="act_out_group").format_func(worst["point"]).endswith(f" reads {worst['point']}")
    caption = outlier_caption(at)
    s = worst["summary"]
    assert f"largest channel is **{s['channel']}**" in caption and ratio_text(s["ratio"]) in caption
    assert f"255/{s['ratio']:.3g}" in caption  # the 8-bit grid sentence, with this input's ratio
    assert "Turn on **SmoothQuant**" in caption
    spec = outlier_chart(at)
    (bars,) = [t for t in spec["data"] if t["type"] == "bar"]
    assert values(bars["y"]) == pytest.approx(worst["absmax"], rel=REL_TOL)
    check_table(ranking(at), rows, smoothed=False)

    # another group, on a log axis
    other = next(r for r in rows if r["point"] != worst["point"])
    at.selectbox(key="act_out_group").set_value(other["point"])
    at.toggle(key="act_out_log").set_value(True).run()
    assert not problems(at)
    assert ratio_text(other["summary"]["ratio"]) in outlier_caption(at)
    assert outlier_chart(at)["layout"]["yaxis"]["type"] == "log"


def test_smoothquant_from_the_sidebar_adds_the_after_numbers(mlp: Explorer) -> None:
    at = measure(linked({**MLP, "activations": {"mode": "static"}}))
    at.checkbox(key="sb_alg_smoothquant").check().run()
    at.slider(key="sb_alg_sq_alpha").set_value(0.8).run()
    assert not problems(at)
    config = controls_config(at)
    assert config.algorithms.smoothquant == SmoothQuant(alpha=0.8)
    rows = mlp.channel_outliers(config)
    row = next(r for r in rows if r["point"] == at.selectbox(key="act_out_group").value)
    caption = outlier_caption(at)
    t = row["summary_smoothed"]
    assert "**After SmoothQuant** (alpha 0.8)" in caption
    assert f"largest channel is **{t['channel']}**" in caption and ratio_text(t["ratio"]) in caption
    bars = [t for t in outlier_chart(at)["data"] if t["type"] == "bar"]
    assert [values(b["y"]) for b in bars] == [pytest.approx(row["absmax"], rel=REL_TOL),
                                             pytest.approx(row["absmax_smoothed"], rel=REL_TOL)]
    check_table(ranking(at), rows, smoothed=True)


def test_dynamic_mode_keeps_the_histogram_message_and_shows_the_outliers(mlp: Explorer) -> None:
    at = measure(linked({**MLP, "activations": {"mode": "dynamic", "clipping": "minmax"},
                         "algorithms": {"smoothquant": {"alpha": 0.5}}}))
    assert not problems(at)
    assert any("no calibrated ranges to show" in i.value for i in at.main.info)
    rows = mlp.channel_outliers(controls_config(at))
    row = next(r for r in rows if r["point"] == at.selectbox(key="act_out_group").value)
    assert ratio_text(row["summary_smoothed"]["ratio"]) in outlier_caption(at)  # SmoothQuant applies in dynamic mode
    check_table(ranking(at), rows, smoothed=True)


def test_weight_only_says_when_outliers_matter_and_still_shows_them(mlp: Explorer) -> None:
    at = measure(linked({**MLP, "activations": None, "algorithms": {"smoothquant": {"alpha": 0.5}}}))
    assert not problems(at)
    assert any("matter once activations are quantized" in i.value for i in at.main.info)
    rows = mlp.channel_outliers(controls_config(at))
    assert all("summary_smoothed" not in r for r in rows)  # nothing to smooth without an activation grid
    assert "SmoothQuant is on but does nothing here" in outlier_caption(at)
    assert outlier_chart(at)
    check_table(ranking(at), rows, smoothed=False)


def test_the_text_models_outlier_channel_and_what_smoothquant_makes_of_it() -> None:
    """all-MiniLM-L6-v2 on 32 calibration sentences: channel 99 of the LayerNorm before the FFN is the outlier, and
    SmoothQuant shrinks its ratio (the most lopsided input overall is a GELU output, which the page opens on)."""
    at = measure(linked({"model": MINILM, "dataset": "sentences", "activations": {"mode": "dynamic", "clipping": "minmax"},
                         "calibration": {"num_samples": 32},
                         "evaluation": {"runtime": None, "backend": "torch", "num_samples": 32},
                         "algorithms": {"smoothquant": {"alpha": 0.5}}}))
    assert not problems(at)
    config = controls_config(at)
    rows = Explorer(MINILM).channel_outliers(config)
    assert at.selectbox(key="act_out_group").value == max(rows, key=lambda r: r["summary"]["ratio"])["point"]
    ffn = next(r for r in rows if r["layers"] == ["layers.0.intermediate"])
    assert ffn["point"] == "layers.0.attention_norm" and len(ffn["absmax"]) == 384
    assert ffn["summary"]["channel"] == 99 and ffn["summary"]["ratio"] > 10  # the known outlier of this model
    assert ffn["summary_smoothed"]["ratio"] < ffn["summary"]["ratio"] / 2
    at.selectbox(key="act_out_group").set_value(ffn["point"]).run()
    assert not problems(at)
    assert at.selectbox(key="act_out_group").format_func(ffn["point"]) == "layers.0.intermediate reads layers.0.attention_norm"
    caption = outlier_caption(at)
    assert "largest channel is **99**" in caption
    assert ratio_text(ffn["summary"]["ratio"]) in caption and ratio_text(ffn["summary_smoothed"]["ratio"]) in caption
    check_table(ranking(at), rows, smoothed=True)
