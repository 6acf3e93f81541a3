"""The mixed-precision search: its answer is an ordinary config that meets the target when it says so, and reproduces."""

from __future__ import annotations

import pytest

from ptq_core.config import QuantConfig
from ptq_core.errors import ConfigError
from ptq_core.pipeline import Explorer
from ptq_core.search import FLOAT, Candidates, Target, _with_bits, search

pytestmark = pytest.mark.usefixtures("one_torch_thread")

BASE = {"evaluation": {"runtime": None, "backend": "onnxruntime"}}


def test_the_answer_meets_the_target_is_smaller_and_reproduces(cnn: Explorer) -> None:
    config = QuantConfig.from_dict(BASE)
    target = Target(min_agreement=99.5)
    result = search(cnn, config, target, Candidates((8, 6, 4, 2)))
    assert result.met and result.message.startswith("met (agreement >= 99.5%)")
    best = QuantConfig.from_dict(result.best.config)  # an ordinary config, overrides and all
    again = Explorer("digits_cnn", "digits").evaluate(best)  # as `python -m ptq_core run` would, from scratch
    assert again.metrics["agreement"] * 100 >= 99.5
    assert again.metrics["agreement"] == pytest.approx(result.best.agreement)
    assert result.best.weight_bytes < result.int8_weight_bytes  # narrower than all-INT8
    assert any(ov.weights.get("bits", 8) < 8 for ov in best.overrides.values())
    # every point is on the record, the frontier is Pareto-optimal among them, and the best is the smallest meeting one
    assert result.points[0].label == "every layer at 8 bits" and len(result.points) > 14
    for p in result.frontier:
        assert not any(q.weight_bytes < p.weight_bytes and q.agreement > p.agreement for q in result.points)
    assert result.best.weight_bytes == min(p.weight_bytes for p in result.points if p.meets)


def test_an_unreachable_target_answers_the_closest_and_says_so(cnn: Explorer) -> None:
    result = search(cnn, QuantConfig.from_dict(BASE), Target(max_kl=1e-9), Candidates((8, 4)))
    assert not result.met and result.message.startswith("NOT met (KL <= 1e-09)")
    assert "allow float layers" in result.message
    assert len(result.points) == 1  # narrowing cannot help once the widest widths miss: nothing more evaluated


def test_float_layers_reach_a_target_the_widest_widths_miss(cnn: Explorer) -> None:
    result = search(cnn, QuantConfig.from_dict(BASE), Target(max_kl=1e-5), Candidates((8, 4), allow_float=True))
    assert result.met
    best = QuantConfig.from_dict(result.best.config)
    assert best.keep_float  # some layers spared
    assert cnn.evaluate(best).metrics["kl_divergence"] <= 1e-5


def test_with_bits_keeps_other_override_fields() -> None:
    config = QuantConfig.from_dict({"overrides": {"conv1": {"weights": {"clipping": "mse"}, "activations": {"bits": 6}}}})
    out = _with_bits(config, {"conv1": 4, "fc2": FLOAT})
    assert dict(out.overrides["conv1"].weights) == {"clipping": "mse", "bits": 4}
    assert dict(out.overrides["conv1"].activations) == {"bits": 6}
    assert out.keep_float == ("fc2",)


def test_narrower_widths_take_their_own_clipping_unless_kept() -> None:
    config = QuantConfig.from_dict({"weights": {"clipping": "percentile", "percentile": 99.99}})
    out = _with_bits(config, {"conv1": 4, "conv2": 8}, "mse")
    assert dict(out.overrides["conv1"].weights) == {"bits": 4, "clipping": "mse"}
    assert dict(out.overrides["conv2"].weights) == {"bits": 8}  # the config's own width keeps the config's clipping
    assert dict(_with_bits(config, {"conv1": 4}, "keep").overrides["conv1"].weights) == {"bits": 4}


def test_the_answer_records_the_narrow_clipping(cnn: Explorer) -> None:
    result = search(cnn, QuantConfig.from_dict(BASE), Target(min_agreement=99.0), Candidates((8, 4)))
    narrow = [ov.weights for ov in QuantConfig.from_dict(result.best.config).overrides.values() if ov.weights["bits"] < 8]
    assert narrow and all(w["clipping"] == "mse" for w in narrow)


@pytest.mark.parametrize(("target", "candidates", "message"), [
    (Target(max_drop=1.0), Candidates(narrow_clipping="kl"),
     r"^narrow-clipping: got 'kl'; allowed: minmax, percentile, mse or keep"),
    (Target(), Candidates(), r"^target: none given; allowed: --max-drop"),
    (Target(max_drop=-1.0), Candidates(), r"^max-drop: got -1.0; allowed: a number from 0 to 100"),
    (Target(min_agreement=101), Candidates(), r"^min-agreement: got 101; allowed: a number from 0 to 100"),
    (Target(max_kl=float("nan")), Candidates(), r"^max-kl: got nan; allowed: a number >= 0"),
    (Target(max_kl=0.1), Candidates(()), r"^weight-bits: got an empty set"),
    (Target(max_kl=0.1), Candidates((8, 1)), r"^weight-bits: got 1; allowed: widths from 2 to 8"),
])
def test_bad_targets_and_candidates_name_what_is_allowed(cnn: Explorer, target: Target, candidates: Candidates,
                                                       message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        search(cnn, QuantConfig.from_dict(BASE), target, candidates)
