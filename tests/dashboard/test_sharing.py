"""Configurations in links (``dashboard.sharing``): the codec, and the app opened from a link under AppTest.

* Any valid config survives a link exactly (hypothesis, the config strategy of the property tests);
  the defaults have no ``cfg`` at all, and a typical exercise stays short.
* Every way a ``cfg`` value can be wrong (empty, not base64, not deflate, cut short, a zip bomb, no
  JSON, not an object, a bad field) is a ConfigError naming the parameter and what is wrong.
* Opening the app with a link sets every control; a bad link says why and leaves the defaults; the
  address bar follows the controls; the Export page shows the link.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import zlib
from typing import Any

import pytest
from hypothesis import given, settings

from dashboard import sharing
from dashboard.state import default_config
from ptq_core.config import QuantConfig
from ptq_core.errors import ConfigError
from tests.core.test_properties import configs
from tests.dashboard.helpers import new_app, open_page, problems

BASE = default_config()


def _w4g32() -> QuantConfig:
    return BASE.replace(weights=dataclasses.replace(BASE.weights, bits=4, granularity="per_group", group_size=32,
                                                    clipping="mse"))


def _pack(raw: bytes) -> str:
    return base64.urlsafe_b64encode(zlib.compress(raw, 9, wbits=-15)).decode("ascii").rstrip("=")


# -- the codec -------------------------------------------------------------------------------------
@settings(max_examples=100, deadline=None)
@given(configs())
def test_every_valid_config_survives_a_link(data: dict[str, Any]) -> None:
    config = QuantConfig.from_dict(data)
    assert sharing.decode(sharing.encode(config, BASE), BASE) == config


def test_the_defaults_have_no_link_and_an_exercise_a_short_one() -> None:
    assert sharing.encode(BASE, BASE) == ""
    assert sharing.config_diff(_w4g32(), BASE) == {"weights": {"bits": 4, "clipping": "mse", "granularity": "per_group",
                                                               "group_size": 32}}
    value = sharing.encode(_w4g32(), BASE)
    assert len(value) <= 120  # 100 characters today: short enough to read aloud in a room, or put on a slide
    assert set(value) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")  # nothing to escape


def test_a_partial_config_takes_the_rest_from_the_base() -> None:
    config = sharing.config_from_partial({"activations": {"bits": 4}, "keep_float": ["fc2"]}, BASE)
    assert config.activations is not None and config.activations.bits == 4
    assert config.activations.scheme == BASE.activations.scheme  # type: ignore[union-attr]
    assert config.evaluation.backend == "onnxruntime"  # the dashboard's default, not the engine's
    assert config.keep_float == ("fc2",)
    assert sharing.config_from_partial({"activations": None}, BASE).activations is None


@pytest.mark.parametrize(("value", "says"), [
    ("", "got an empty value"),
    ("a" * (sharing.MAX_PARAM_CHARS + 1), f"at most {sharing.MAX_PARAM_CHARS}"),
    ("not base64!", "not URL-safe base64"),
    ("____", "does not decompress"),  # 0xff bytes: deflate block type 3, which does not exist
    (_pack(b'{"weights": {"bits": 4}}')[:-6], "ends early"),
    (_pack(b" " * (sharing.MAX_JSON_BYTES + 10)), "expands past 64 KiB"),
    (_pack(b"\xff\xfe not json"), "holds no JSON"),
    (_pack(b"[1, 2]"), "got a JSON array; allowed: a JSON object of config fields"),
    (_pack(b'{"weights": {"bits": 12}}'), "weights.bits: got 12; allowed: an integer from 2 to 8"),
    (_pack(b'{"wieghts": {}}'), "wieghts: unknown key"),
])
def test_a_bad_link_names_the_parameter_and_what_is_wrong(value: str, says: str) -> None:
    with pytest.raises(ConfigError) as info:
        sharing.decode(value, BASE)
    assert str(info.value).startswith("link parameter cfg: ")
    assert says in str(info.value)


# -- the app -----------------------------------------------------------------------------------------
def test_a_link_restores_every_control_and_stays_in_the_address_bar() -> None:
    config = _w4g32().replace(keep_float=("fc2",))
    value = sharing.encode(config, BASE)
    at = new_app()
    at.query_params[sharing.PARAM] = value
    at.run()
    assert not problems(at)
    assert at.selectbox(key="sb_w_bits").value == 4
    assert at.selectbox(key="sb_w_granularity").value == "per_group"
    assert at.number_input(key="sb_w_group_size").value == 32
    assert at.selectbox(key="sb_w_clipping").value == "mse"
    assert at.multiselect(key="sb_keep_float").value == ["fc2"]
    assert at.query_params[sharing.PARAM] == value
    assert at.session_state["cfg_base"] == config.to_dict()

    at.selectbox(key="sb_w_bits").set_value(6).run()  # the address bar follows the controls
    assert sharing.decode(at.query_params[sharing.PARAM], BASE).weights.bits == 6
    at.selectbox(key="sb_w_bits").set_value(4).run()
    assert at.query_params[sharing.PARAM] == value


@pytest.mark.parametrize(("value", "says"), [
    ("garbled%%", "not URL-safe base64"),
    (_pack(json.dumps({"keep_float": ["no_such_layer"]}).encode()), "no_such_layer"),
    (_pack(json.dumps({"activations": {"bits": 1}}).encode()), "activations.bits: got 1"),
])
def test_a_bad_link_says_why_and_leaves_the_defaults(value: str, says: str) -> None:
    at = new_app()
    at.query_params[sharing.PARAM] = value
    at.run()
    assert not at.exception
    errors = [e.value for e in at.error]
    assert any("could not be used" in e and says in e for e in errors), errors
    assert at.session_state["cfg_base"] == BASE.to_dict()
    assert at.selectbox(key="sb_w_bits").value == BASE.weights.bits
    assert sharing.PARAM not in at.query_params  # the address bar shows the defaults the session is on


def test_the_export_page_shows_the_link_of_the_controls() -> None:
    at = new_app().run()
    at.selectbox(key="sb_a_bits").set_value(6).run()
    open_page(at, "export")
    assert not problems(at)
    codes = [c.value for c in at.code if c.value.startswith("?")]
    assert len(codes) == 1
    link = codes[0]
    assert link.startswith(f"?{sharing.PARAM}=")
    assert sharing.decode(link.split("=", 1)[1], BASE) == BASE.replace(
        activations=dataclasses.replace(BASE.activations, bits=6))
