"""The mixed-precision search: its answer is an ordinary config that meets the target when it says so, and reproduces."""

from __future__ import annotations

import dataclasses
import itertools
import random

import pytest
import torch

from ptq_core.config import GPTQ, QuantConfig
from ptq_core.errors import ConfigError
from ptq_core.pipeline import Explorer
from ptq_core.quantize import active_points
from ptq_core.search import (
    ACTIVATION_SHARE,
    FLOAT,
    STEP_SHARE,
    Candidates,
    Target,
    _allocations,
    _largest_layers,
    _with_bits,
    search,
)
from ptq_core.sensitivity import weight_bytes

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


def test_narrower_widths_take_the_narrow_scheme_unless_kept() -> None:
    config = QuantConfig.from_dict({})  # symmetric weights
    out = _with_bits(config, {"conv1": 4, "conv2": 8}, "keep", (), "asymmetric")
    assert dict(out.overrides["conv1"].weights) == {"bits": 4, "scheme": "asymmetric"}
    assert dict(out.overrides["conv2"].weights) == {"bits": 8}
    assert dict(_with_bits(config, {"conv1": 4}, "keep", (), "keep").overrides["conv1"].weights) == {"bits": 4}


def test_allocations_are_the_least_damaging_for_their_bytes_where_a_ratio_order_is_not() -> None:
    # Ratio order (damage per byte): b@4 0.25, a@6 0.33, c@4 0.45, a@4 0.5. Its first prefix saving >= 6 bytes is
    # b@4 + a@6 (7 bytes, damage 2.0); b@4 + c@4 saves 6 for 1.9, and a@4 alone 6 for 3.0.
    steps = {"a": [(6, 3, 1.0), (4, 6, 3.0)], "b": [(4, 4, 1.0)], "c": [(4, 2, 0.9)]}
    allocations = _allocations(steps, 1)
    assert allocations[0] == (0, 0.0, {})
    assert [a[0] for a in allocations] == sorted(a[0] for a in allocations)
    assert [a[1] for a in allocations] == sorted(a[1] for a in allocations)  # saving more never costs less
    six = min((a for a in allocations if a[0] >= 6), key=lambda a: a[1])
    assert six[2] == {"b": 4, "c": 4} and six[1] == pytest.approx(1.9)
    # whatever the bytes, no choice of one width per layer saves at least as much with less damage (brute force)
    rng = random.Random(0)
    for _ in range(30):
        steps = {f"l{i}": [(b, rng.randint(1, 50), rng.random()) for b in (6, 4)] for i in range(5)}
        for i in range(5):  # a narrower width saves more
            (b6, s6, d6), (b4, s4, d4) = steps[f"l{i}"]
            steps[f"l{i}"] = [(b6, s6, d6), (b4, s6 + s4, d6 + d4)]
        found = _allocations(steps, 1)
        for picks in itertools.product(*[[None, *opts] for opts in steps.values()]):
            s_ = sum(p[1] for p in picks if p is not None)
            d_ = sum(p[2] for p in picks if p is not None)
            assert any(a[0] >= s_ and a[1] <= d_ + 1e-12 for a in found)
        for saved_, damage, widths in found:  # and each allocation is what it says
            assert saved_ == sum(next(o[1] for o in steps[n] if o[0] == b) for n, b in widths.items())
            assert damage == pytest.approx(sum(next(o[2] for o in steps[n] if o[0] == b) for n, b in widths.items()))


def test_only_the_largest_layers_are_stepped() -> None:
    nbytes = {"stem": 10, "big": 900, "mid": 80, "tail": 10}
    assert _largest_layers(list(nbytes), nbytes, 0.98) == ["big", "mid"]  # 980 of 1000 bytes
    assert _largest_layers(list(nbytes), nbytes, 0.99) == ["stem", "big", "mid"]  # network order kept
    assert _largest_layers(list(nbytes), nbytes, 0.5) == ["big"]
    assert _largest_layers(["tail"], nbytes, STEP_SHARE) == ["tail"]


def test_an_asymmetric_narrow_scheme_is_in_the_answer_its_bytes_and_the_rerun(cnn: Explorer) -> None:
    result = search(cnn, QuantConfig.from_dict(BASE), Target(min_agreement=99.0), Candidates((8, 4), narrow_scheme="asymmetric"))
    best = QuantConfig.from_dict(result.best.config)
    narrow = {n: ov.weights for n, ov in best.overrides.items() if ov.weights["bits"] < 8}
    assert narrow and all(w["scheme"] == "asymmetric" for w in narrow.values())
    prepared = cnn.prepared()
    expected = 0
    for u in prepared.units:
        if u.has_weights:
            w = prepared.weight(u)
            expected += weight_bytes(w, best.weight_quant_for(u.name).bits, best.weight_quant_for(u.name), int(w.shape[0]))
    assert result.best.weight_bytes == expected  # zero points counted
    again = Explorer("digits_cnn", "digits").evaluate(best, runtime_check=False)
    assert again.metrics["kl_divergence"] == pytest.approx(result.best.kl_divergence, rel=1e-6)


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
    (Target(max_kl=0.1), Candidates(narrow_scheme="signed"),
     r"^narrow-scheme: got 'signed'; allowed: symmetric, asymmetric or keep"),
])
def test_bad_targets_and_candidates_name_what_is_allowed(cnn: Explorer, target: Target, candidates: Candidates,
                                                       message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        search(cnn, QuantConfig.from_dict(BASE), target, candidates)


def test_float_activations_reach_a_target_the_activation_width_misses_and_reproduce(cnn: Explorer, tmp_path) -> None:
    # 4-bit activations cost the digits CNN more KL than the target allows; 16 lets the search leave the worst in float.
    config = QuantConfig.from_dict(BASE)
    target = Target(max_kl=0.002)
    without = search(cnn, config, target, Candidates((8, 4), activation_bits=(4,)))
    assert not without.met and "or float activations (16)" in without.message
    result = search(cnn, config, target, Candidates((8, 4), activation_bits=(4, 16)))
    assert result.met and "activation points in float" in result.message
    best = QuantConfig.from_dict(result.best.config)
    assert best.activations is not None and best.activations.bits == 4
    assert 0 < len(best.keep_float_activations) < len(active_points(cnn.prepared(), config))  # some, not all
    assert result.points[1].label.startswith("activation ") and result.points[1].label.endswith(" in float")
    fresh = Explorer("digits_cnn", "digits")  # as `python -m ptq_core run` would, from scratch
    again = fresh.evaluate(best, runtime_check=False)
    assert again.metrics["kl_divergence"] == pytest.approx(result.best.kl_divergence, rel=1e-6)
    plan = fresh.plan(best)
    assert not set(best.keep_float_activations) & set(plan.points)  # no quantizer where the answer says float
    fresh.export_onnx(best, tmp_path / "best.onnx")  # an ordinary config: exportable
    assert (tmp_path / "best.onnx").stat().st_size > 0


def test_the_base_spares_only_the_activations_that_recover_most_of_the_kl(cnn: Explorer) -> None:
    config = QuantConfig.from_dict(BASE)
    result = search(cnn, config, Target(min_agreement=50.0), Candidates((8,), activation_bits=(4, 16)))
    by_label = {p.label: p for p in result.points}
    helpful = [p for p in result.points if p.label.startswith("activation ") and p.kl_divergence < result.points[0].kl_divergence]
    every = by_label[f"{len(helpful)} most helpful activations in float"]
    base_kl = result.points[0].kl_divergence
    chosen = next(p for p in result.points if p.label.startswith("every layer at 8 bits,"))  # the new base
    spared = chosen.config["keep_float_activations"]
    assert chosen.kl_divergence <= base_kl - ACTIVATION_SHARE * (base_kl - every.kl_divergence) + 1e-12
    assert 0 < len(spared) <= len(helpful)
    fewer = [p for p in result.points if p.label.endswith("most helpful activations in float") and p is not every
             and len(p.config["keep_float_activations"]) < len(spared)]
    assert all(p.kl_divergence > base_kl - ACTIVATION_SHARE * (base_kl - every.kl_divergence) for p in fewer)
    # every point meets this loose target and none is smaller: of equal size, the answer has the fewest float points
    assert result.best.config["keep_float_activations"] == []


def test_gptq_from_float_inputs_is_searched_layer_by_layer_and_reproduces(cnn: Explorer) -> None:
    config = QuantConfig.from_dict({**BASE, "algorithms": {"rounding": "gptq", "gptq": {"inputs": "float"}}})
    result = search(cnn, config, Target(min_agreement=99.5), Candidates((8, 4, 3)))
    assert result.met
    best = QuantConfig.from_dict(result.best.config)
    assert best.algorithms.rounding == "gptq" and best.algorithms.gptq.inputs == "float"
    assert any(ov.weights.get("bits", 8) < 8 for ov in best.overrides.values())
    again = Explorer("digits_cnn", "digits").evaluate(best, runtime_check=False)  # computed from scratch
    assert again.metrics["kl_divergence"] == pytest.approx(result.best.kl_divergence, rel=1e-6)
    assert again.metrics["agreement"] == pytest.approx(result.best.agreement)


def test_gptq_from_float_inputs_rounds_a_layer_the_same_whatever_the_others_do(cnn: Explorer) -> None:
    gptq = {"rounding": "gptq", "gptq": {"inputs": "float"}}
    a = QuantConfig.from_dict({**BASE, "weights": {"bits": 4}, "algorithms": gptq})
    b = _with_bits(a, {"conv1": 8, "conv2": FLOAT}, "keep", ["conv3"])
    seq_a, seq_b = (c.replace(algorithms=dataclasses.replace(c.algorithms, gptq=GPTQ())) for c in (a, b))
    fresh = Explorer("digits_cnn", "digits")  # nothing shared with the other configs' plans
    fc1 = [explorer.plan(c).layers["fc1"].fq_weight for explorer, c in ((cnn, a), (cnn, b), (fresh, b))]
    assert torch.equal(fc1[0], fc1[1]) and torch.equal(fc1[1], fc1[2])  # depends on fc1, its grid and FP32 only
    nearest = cnn.plan(a.replace(algorithms=QuantConfig().algorithms)).layers["fc1"].fq_weight
    assert not torch.equal(fc1[0], nearest)  # GPTQ did round it
    # the sequential mode reads the quantized model, so fc1 changes with the layers before it
    assert not torch.equal(cnn.plan(seq_a).layers["fc1"].fq_weight, cnn.plan(seq_b).layers["fc1"].fq_weight)


@pytest.mark.parametrize(("candidates", "message"), [
    (Candidates(activation_bits=()), r"^activation-bits: got an empty set; allowed: one width from 2 to 8, optionally "
                                     r"with 16"),
    (Candidates(activation_bits=(8, 17)), r"^activation-bits: got 17; allowed: one width from 2 to 8"),
    (Candidates(activation_bits=(8, 4)), r"^activation-bits: got 8,4; allowed: .*a narrower activation saves no weight "
                                         r"byte"),
    (Candidates(activation_bits=(16,)), r"^activation-bits: got 16; allowed: .*no integer width"),
])
def test_bad_activation_candidates_name_what_is_allowed(cnn: Explorer, candidates: Candidates, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        search(cnn, QuantConfig.from_dict(BASE), Target(max_kl=0.1), candidates)


def test_without_activation_candidates_the_config_keeps_its_activation_widths(cnn: Explorer) -> None:
    config = QuantConfig.from_dict({**BASE, "activations": {"bits": 6}})
    best = QuantConfig.from_dict(search(cnn, config, Target(min_agreement=99.0), Candidates((8, 4))).best.config)
    assert best.activations is not None and best.activations.bits == 6 and best.keep_float_activations == ()


def test_float_activations_need_quantized_activations(cnn: Explorer) -> None:
    with pytest.raises(ConfigError, match=r"^activation-bits: got 8,16 with a weight-only config"):
        search(cnn, QuantConfig.from_dict({**BASE, "activations": None}), Target(max_kl=0.1),
               Candidates(activation_bits=(8, 16)))
