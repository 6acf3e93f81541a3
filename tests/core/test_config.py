"""QuantConfig: JSON round trips, defaults, and one error test per validation rule."""

from __future__ import annotations

import json

import pytest

from ptq_core.config import QuantConfig, set_field
from ptq_core.errors import ConfigError

ISSUE_EXAMPLE = {
    "schema_version": 1,
    "model": "digits_cnn",
    "dataset": "digits",
    "weights": {"bits": 4, "scheme": "symmetric", "granularity": "per_group", "group_size": 32, "clipping": "mse"},
    "activations": {"bits": 8, "scheme": "asymmetric", "granularity": "per_tensor", "clipping": "percentile", "percentile": 99.99},
    "calibration": {"num_samples": 256, "seed": 0, "selection": "random"},
    "fold_batchnorm": True,
    "keep_float": ["fc2"],
    "overrides": {"conv1": {"weights": {"bits": 8}}},
}


def test_issue_example_parses_and_round_trips() -> None:
    cfg = QuantConfig.from_dict(ISSUE_EXAMPLE)
    assert cfg.weights.group_size == 32 and cfg.activations is not None and cfg.activations.percentile == 99.99
    full = cfg.to_dict()
    assert QuantConfig.from_dict(full) == cfg
    assert QuantConfig.from_dict(full).to_dict() == full
    assert QuantConfig.from_json(cfg.to_json()) == cfg
    # every key the user gave survives with its value
    for key, value in ISSUE_EXAMPLE.items():
        if isinstance(value, dict) and key != "overrides":
            assert {k: full[key][k] for k in value} == value
    assert full["overrides"] == {"conv1": {"weights": {"bits": 8}}}


def test_defaults_fill_in_and_are_stable() -> None:
    full = QuantConfig().to_dict()
    assert full["weights"] == {"bits": 8, "scheme": "symmetric", "granularity": "per_channel", "group_size": None,
                               "clipping": "minmax", "percentile": 99.99}
    assert full["activations"]["mode"] == "static"
    assert QuantConfig.from_dict({}) == QuantConfig()
    assert json.loads(QuantConfig().to_json()) == full


def test_float_activations_and_gptq_inputs_round_trip() -> None:
    cfg = QuantConfig.from_dict({"keep_float_activations": ["conv1", "add"],
                                 "algorithms": {"rounding": "gptq", "gptq": {"inputs": "float"}}})
    assert cfg.keep_float_activations == ("conv1", "add") and cfg.algorithms.gptq.inputs == "float"
    assert QuantConfig.from_json(cfg.to_json()) == cfg
    assert QuantConfig().to_dict()["keep_float_activations"] == [] and QuantConfig().algorithms.gptq.inputs == "quantized"


def test_modes() -> None:
    assert QuantConfig.from_dict({"activations": None}).mode == "weight_only"
    assert QuantConfig.from_dict({"activations": {"mode": "dynamic"}}).mode == "dynamic"
    assert QuantConfig().mode == "static"


def test_per_layer_resolution() -> None:
    cfg = QuantConfig.from_dict(ISSUE_EXAMPLE)
    assert cfg.weight_quant_for("fc2") is None
    conv1 = cfg.weight_quant_for("conv1")
    assert conv1 is not None and conv1.bits == 8 and conv1.granularity == "per_group"
    other = cfg.weight_quant_for("conv2")
    assert other is not None and other.bits == 4


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        ({"weights": {"bits": 9}}, "weights.bits: got 9; allowed: an integer from 2 to 8"),
        ({"weights": {"bits": True}}, "weights.bits"),
        ({"weights": {"bitz": 8}}, "weights.bitz: unknown key"),
        ({"weights": {"clipping": "kl"}}, "weights.clipping: got 'kl'; allowed: minmax, percentile, mse"),
        ({"activations": {"clipping": "entropy"}}, "allowed: minmax, percentile, mse, kl"),
        ({"weights": {"granularity": "per_group"}}, "weights.group_size: required"),
        ({"weights": {"granularity": "per_row"}}, "per_tensor, per_channel, per_group"),
        ({"weights": {"group_size": 0, "granularity": "per_group"}}, "weights.group_size"),
        ({"activations": {"mode": "dynamic", "clipping": "mse"}}, "activations.clipping"),
        ({"activations": {"granularity": "per_token"}}, "activations.granularity"),
        ({"activations": {"percentile": 100}}, "activations.percentile"),
        ({"calibration": {"selection": "best"}}, "random, first, balanced"),
        ({"calibration": {"num_samples": 0}}, "calibration.num_samples"),
        ({"fold_batchnorm": "yes"}, "fold_batchnorm"),
        ({"keep_float": "fc2"}, "keep_float"),
        ({"keep_float_activations": "conv1"}, "keep_float_activations: got 'conv1'; allowed: a list of activation point names"),
        ({"keep_float_activations": [""]}, "keep_float_activations[0]: got ''; allowed: an activation point name"),
        ({"algorithms": {"gptq": {"inputs": "fp32"}}}, "algorithms.gptq.inputs: got 'fp32'; allowed: quantized, float"),
        ({"overrides": {"conv1": {"weigths": {}}}}, "overrides.conv1.weigths: unknown key"),
        ({"overrides": {"conv1": {"weights": {"bits": 1}}}}, "overrides.conv1.weights.bits"),
        ({"activations": None, "overrides": {"conv1": {"activations": {"bits": 4}}}}, "activations are not quantized"),
        ({"schema_version": 3}, "schema_version"),
        ({"model": 3}, "model"),
        ({"colour": "red"}, "colour: unknown key"),
        ({"weights": None}, "weights"),
    ],
)
def test_validation_names_field_and_allowed_values(data: dict, needle: str) -> None:
    with pytest.raises(ConfigError) as info:
        QuantConfig.from_dict(data)
    assert needle in str(info.value)


def test_bad_json_text() -> None:
    with pytest.raises(ConfigError, match="not valid JSON"):
        QuantConfig.from_json("{")


def test_set_field_for_sweeps() -> None:
    cfg = set_field(QuantConfig(), "weights.bits", 4)
    assert cfg.weights.bits == 4
    cfg = set_field(cfg, "activations.clipping", "kl")
    assert cfg.activations is not None and cfg.activations.clipping == "kl"
    with pytest.raises(ConfigError, match="no such config field"):
        set_field(cfg, "weights.nbits", 4)
    with pytest.raises(ConfigError, match="weights.bits"):
        set_field(cfg, "weights.bits", 12)


def test_config_is_hashable_by_value() -> None:
    a = QuantConfig.from_dict(ISSUE_EXAMPLE)
    b = QuantConfig.from_dict(json.loads(json.dumps(ISSUE_EXAMPLE)))
    assert a == b and hash(a) == hash(b)
