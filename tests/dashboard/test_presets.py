"""Workshop presets (``dashboard.presets``): the shipped exercises, an instructor's folder, and the sidebar picker.

* Every file in ``assets/presets/`` loads (its ``config`` with ``QuantConfig.from_dict`` as it stands)
  and tells the story its description tells, measured with the real engine on the digits models.
* A folder named by ``PTQ_PRESETS_DIR`` is listed after the built-in one; each way a file can be
  broken is listed as unusable with the reason.
* Under AppTest: choosing a preset sets every control and shows its description; an unusable or
  inapplicable one changes nothing and says why.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from dashboard import presets, sharing
from dashboard.state import default_config
from ptq_core.config import QuantConfig
from ptq_core.pipeline import Explorer
from tests.dashboard.helpers import new_app, problems

BUILTIN = sorted(presets.BUILTIN_DIR.glob("*.json"))


def _top1(explorer: Explorer, config: QuantConfig, **changes: Any) -> dict[str, float]:
    """Top-1 and agreement of ``config`` with ``changes`` to its sections, simulation only (no runtime check)."""
    data = config.to_dict()
    for section, fields in changes.items():
        data[section] = None if fields is None else {**(data[section] or {}), **fields}
    data["evaluation"] = {**data["evaluation"], "runtime": None}
    m = explorer.evaluate(QuantConfig.from_dict(data), layer_errors=False).metrics
    return {"top1": m["quant_top1"], "fp32": m["fp32_top1"], "agreement": m["agreement"]}


def _preset(stem: str) -> QuantConfig:
    (found,) = [p for p in presets.load_presets() if p.path.stem == stem]
    assert found.config is not None, found.error
    return found.config


# -- the shipped exercises -------------------------------------------------------------------------
def test_there_are_four_to_six_exercises_and_each_loads() -> None:
    assert 4 <= len(BUILTIN) <= 6
    for path in BUILTIN:
        data = json.loads(path.read_text(encoding="utf-8"))
        assert set(data) == {"title", "description", "config"}, path.name
        assert data["title"] and len(data["description"]) > 40, path.name
        QuantConfig.from_dict(data["config"])  # the config part alone is a valid (partial) QuantConfig
    listed = [p for p in presets.load_presets() if p.id.startswith("built-in/")]
    assert [p.path for p in listed] == BUILTIN
    assert all(p.error is None and p.config is not None for p in listed), [p.error for p in listed]
    assert all(p.config.evaluation.backend == "onnxruntime" for p in listed if p.config)  # the dashboard's defaults


def test_the_int8_baseline_matches_fp32(cnn: Explorer) -> None:
    r = _top1(cnn, _preset("01_int8_baseline"))
    assert r["agreement"] >= 0.99 and abs(r["top1"] - r["fp32"]) <= 0.01


def test_two_bit_per_tensor_collapses_and_per_channel_recovers(cnn: Explorer) -> None:
    collapse = _top1(cnn, _preset("02_w2_per_tensor_collapse"))
    fixed = _top1(cnn, _preset("03_w2_per_channel"))
    assert collapse["top1"] < 0.2  # 10 classes: chance is 0.1; the description says "falls to chance"
    assert fixed["top1"] > collapse["top1"] + 0.2  # "climbs from chance to roughly 40%"
    int4 = _top1(cnn, _preset("02_w2_per_tensor_collapse"), weights={"bits": 4})
    assert int4["top1"] > 0.95  # "digits survives INT4 per-tensor"


def test_per_group_mse_rescues_the_two_bit_mlp(mlp: Explorer) -> None:
    config = _preset("04_mlp_w2_per_group_mse")
    best = _top1(mlp, config)
    per_tensor = _top1(mlp, config, weights={"granularity": "per_tensor", "clipping": "minmax"})
    per_channel = _top1(mlp, config, weights={"granularity": "per_channel", "clipping": "minmax"})
    assert per_tensor["top1"] < 0.5 < per_channel["top1"] < best["top1"]
    assert best["fp32"] - best["top1"] <= 0.06  # "within a few points of FP32"


def test_dynamic_activations_agree_with_fp32_and_beat_static_at_four_bits(mlp: Explorer) -> None:
    config = _preset("05_mlp_dynamic")
    assert _top1(mlp, config)["agreement"] >= 0.995
    dynamic4 = _top1(mlp, config, activations={"bits": 4})
    static4 = _top1(mlp, config, activations={"bits": 4, "mode": "static", "granularity": "per_tensor"})
    assert dynamic4["agreement"] > static4["agreement"]


def test_mse_clipping_beats_kl_and_minmax_at_two_bit_activations(cnn: Explorer) -> None:
    config = _preset("06_a2_clipping_methods")
    kl = _top1(cnn, config)
    minmax = _top1(cnn, config, activations={"clipping": "minmax"})
    mse = _top1(cnn, config, activations={"clipping": "mse"})
    assert abs(kl["top1"] - minmax["top1"]) <= 0.02  # "within a point of each other"
    assert mse["top1"] > max(kl["top1"], minmax["top1"]) + 0.02


# -- an instructor's folder ------------------------------------------------------------------------
def _write(folder: Path, name: str, content: str | bytes) -> None:
    (folder / name).write_bytes(content if isinstance(content, bytes) else content.encode("utf-8"))


def test_an_instructors_folder_is_listed_after_the_built_ins_broken_files_with_reasons(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    good = {"title": "Mine", "description": "W6", "config": {"weights": {"bits": 6}}}
    _write(tmp_path, "a_good.json", json.dumps(good))
    _write(tmp_path, "b_not_json.json", "{title: oops")
    _write(tmp_path, "c_array.json", "[1, 2]")
    _write(tmp_path, "d_unknown_key.json", json.dumps({**good, "colour": "red"}))
    _write(tmp_path, "e_bad_bits.json", json.dumps({**good, "config": {"weights": {"bits": 12}}}))
    _write(tmp_path, "f_latin1.json", b'{"title": "caf\xe9", "config": {}}')
    _write(tmp_path, "g_huge.json", " " * (presets.MAX_PRESET_BYTES + 1))
    _write(tmp_path, "h_bad_title.json", json.dumps({**good, "title": 3}))
    _write(tmp_path, "notes.txt", "not a preset: ignored")
    monkeypatch.setenv(presets.PRESETS_DIR_ENV, str(tmp_path))
    mine = {p.path.name: p for p in presets.load_presets() if p.id.startswith(presets.PRESETS_DIR_ENV)}
    assert list(mine) == ["a_good.json", "b_not_json.json", "c_array.json", "d_unknown_key.json", "e_bad_bits.json",
                          "f_latin1.json", "g_huge.json", "h_bad_title.json"]
    assert mine["a_good.json"].config == sharing.config_from_partial(good["config"], default_config())
    assert mine["a_good.json"].error is None
    reasons = {name: p.error or "" for name, p in mine.items()}
    assert "is not valid JSON" in reasons["b_not_json.json"]
    assert '{"title": ..., "description": ..., "config": {...}}' in reasons["c_array.json"]
    assert "colour: unknown key; allowed keys: title, description, config" in reasons["d_unknown_key.json"]
    assert "weights.bits: got 12; allowed: an integer from 2 to 8" in reasons["e_bad_bits.json"]
    assert "not UTF-8" in reasons["f_latin1.json"]
    assert "allowed: at most 256 KiB" in reasons["g_huge.json"]
    assert "allowed: strings" in reasons["h_bad_title.json"]


def test_a_missing_instructors_folder_is_one_unusable_entry(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(presets.PRESETS_DIR_ENV, str(tmp_path / "nowhere"))
    (entry,) = [p for p in presets.load_presets() if p.id.startswith(presets.PRESETS_DIR_ENV)]
    assert entry.config is None and "is not a folder" in (entry.error or "")


# -- the sidebar picker ------------------------------------------------------------------------------
def test_choosing_a_preset_sets_every_control_and_shows_its_description() -> None:
    at = new_app().run()
    preset = next(p for p in presets.load_presets() if p.path.stem == "04_mlp_w2_per_group_mse")
    at.selectbox(key=presets.PICK_KEY).set_value(preset.id).run()
    assert not problems(at)
    assert at.session_state["sb_model"] == "digits_mlp"
    assert at.selectbox(key="sb_w_bits").value == 2
    assert at.selectbox(key="sb_w_granularity").value == "per_group"
    assert at.number_input(key="sb_w_group_size").value == 16
    assert at.selectbox(key="sb_w_clipping").value == "mse"
    assert at.selectbox(key=presets.PICK_KEY).value is None  # ready for the next exercise
    assert any(preset.description in c.value for c in at.sidebar.caption)
    assert sharing.decode(at.query_params[sharing.PARAM], default_config()) == preset.config  # and it is a link

    at.selectbox(key="sb_w_bits").set_value(3).run()  # no longer the preset: its description goes
    assert not any(preset.description in c.value for c in at.sidebar.caption)


def test_an_unusable_or_inapplicable_preset_changes_nothing_and_says_why(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write(tmp_path, "broken.json", "{")
    _write(tmp_path, "ghost_layer.json", json.dumps({"title": "Ghost", "config": {"keep_float": ["no_such_layer"]}}))
    monkeypatch.setenv(presets.PRESETS_DIR_ENV, str(tmp_path))
    at = new_app().run()
    assert not problems(at)
    listed = [c.value for c in at.sidebar.expander[0].caption]
    assert any("broken.json" in c and "is not valid JSON" in c for c in listed), listed
    before = at.session_state["cfg_base"]

    at.selectbox(key=presets.PICK_KEY).set_value(f"{presets.PRESETS_DIR_ENV}/broken.json").run()
    assert not at.exception
    assert any("broken.json is unusable, nothing changed" in e.value for e in at.sidebar.error)

    at.selectbox(key=presets.PICK_KEY).set_value(f"{presets.PRESETS_DIR_ENV}/ghost_layer.json").run()
    assert not at.exception
    assert any("Ghost" in e.value and "no_such_layer" in e.value for e in at.sidebar.error)
    assert at.session_state["cfg_base"] == before
    assert at.multiselect(key="sb_keep_float").value == []
    assert at.selectbox(key="sb_w_bits").value == default_config().weights.bits
