"""Properties that hold for every input, checked on generated ones (hypothesis), plus the metrics' definitions.

* Any valid QuantConfig, built from the config's own allowed values, survives JSON exactly.
* Quantize/dequantize, for random weight shapes, bits 2-8, both schemes and every granularity:
  codes lie in [qmin, qmax], every value within the range comes back within half a step, and 0
  comes back exactly 0.
* Every top-1 number is the first argmax (ties to the lower class), top-k ranks the same way.
* The size baseline is the folded FP32 model: a config that quantizes nothing compresses by 1.0.

Examples are capped (``max_examples``) and have no deadline, so the file runs in a few seconds on
two cores whatever the machine's load.
"""

from __future__ import annotations

import math
import string
from typing import Any

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from ptq_core.config import (
    ACTIVATION_CLIPPING,
    BACKENDS,
    DYNAMIC_ACTIVATION_GRANULARITIES,
    MAX_BITS,
    MAX_GROUP_SIZE,
    MIN_BITS,
    RUNTIMES,
    SCHEMES,
    SELECTIONS,
    STATIC_ACTIVATION_GRANULARITIES,
    WEIGHT_CLIPPING,
    WEIGHT_GRANULARITIES,
    QuantConfig,
)
from ptq_core.metrics import agreement, top_classes, topk_accuracy
from ptq_core.pipeline import Explorer
from ptq_core.primitives import (
    broadcast_to_weight,
    dequantize,
    fake_quantize,
    int_range,
    qparams_from_range,
    quantize,
    weight_minmax,
)

QUICK = settings(max_examples=150, deadline=None)

# -- strategies built from the config's allowed values ------------------------------------------------------
names = st.text(alphabet=string.ascii_letters + string.digits + "._:-", min_size=1, max_size=12)
percentiles = st.floats(min_value=50.0, max_value=100.0, exclude_min=True, exclude_max=True, allow_nan=False)
bits = st.integers(MIN_BITS, MAX_BITS)


@st.composite
def weight_quant(draw: st.DrawFn) -> dict[str, Any]:
    granularity = draw(st.sampled_from(WEIGHT_GRANULARITIES))
    group = st.integers(1, MAX_GROUP_SIZE)
    return {
        "bits": draw(bits), "scheme": draw(st.sampled_from(SCHEMES)), "granularity": granularity,
        # per_group needs a size; the others accept one and ignore it
        "group_size": draw(group) if granularity == "per_group" else draw(st.none() | group),
        "clipping": draw(st.sampled_from(WEIGHT_CLIPPING)), "percentile": draw(percentiles),
    }


@st.composite
def activation_quant(draw: st.DrawFn) -> dict[str, Any]:
    mode = draw(st.sampled_from(("static", "dynamic")))
    static = mode == "static"
    return {
        "mode": mode, "bits": draw(bits), "scheme": draw(st.sampled_from(SCHEMES)),
        "granularity": draw(st.sampled_from(STATIC_ACTIVATION_GRANULARITIES if static else DYNAMIC_ACTIVATION_GRANULARITIES)),
        "clipping": draw(st.sampled_from(ACTIVATION_CLIPPING)) if static else "minmax",
        "percentile": draw(percentiles),
    }


def _subset(draw: st.DrawFn, full: dict[str, Any], keys: tuple[str, ...]) -> dict[str, Any]:
    chosen = draw(st.sets(st.sampled_from(keys)))
    return {k: full[k] for k in keys if k in chosen}


@st.composite
def configs(draw: st.DrawFn) -> dict[str, Any]:
    device = draw(st.sampled_from(("cpu", "cuda", "cuda:1")))
    activations = draw(st.none() | activation_quant())
    overrides = {}
    for name in draw(st.lists(names, max_size=3, unique=True)):
        ov: dict[str, Any] = {}
        if draw(st.booleans()):  # a whole weight setting, or the fields that never need another
            full = draw(weight_quant())
            ov["weights"] = full if draw(st.booleans()) else _subset(draw, full, ("bits", "scheme", "clipping", "percentile"))
        if activations is not None and draw(st.booleans()):
            full = draw(activation_quant())
            ov["activations"] = full if draw(st.booleans()) else _subset(draw, full, ("bits", "scheme"))
        overrides[name] = {k: v for k, v in ov.items() if v}
    spec = names | st.fixed_dictionaries({"kind": st.just("file"), "path": names})
    return {
        "schema_version": 1,
        "model": draw(spec),
        "dataset": draw(names | st.fixed_dictionaries({"kind": st.just("image_folder"), "path": names,
                                                       "seed": st.integers(0, 9)})),
        "weights": draw(weight_quant()),
        "activations": activations,
        "calibration": {"num_samples": draw(st.integers(1, 10**6)), "seed": draw(st.integers(0, 2**31)),
                        "selection": draw(st.sampled_from(SELECTIONS)), "batch_size": draw(st.integers(1, 512))},
        "evaluation": {"num_samples": draw(st.none() | st.integers(1, 10**6)), "batch_size": draw(st.integers(1, 512)),
                       "layer_error_samples": draw(st.integers(1, 512)),
                       "runtime": draw(st.sampled_from((None, *RUNTIMES))),
                       # the onnxruntime backend runs on the CPU only
                       "backend": draw(st.sampled_from(BACKENDS)) if device == "cpu" else "torch"},
        "fold_batchnorm": draw(st.booleans()),
        "device": device,
        "keep_float": draw(st.lists(names, max_size=3)),
        "overrides": overrides,
    }


@QUICK
@given(configs())
def test_every_valid_config_round_trips_through_json(data: dict[str, Any]) -> None:
    config = QuantConfig.from_dict(data)
    assert QuantConfig.from_json(config.to_json()) == config
    assert QuantConfig.from_json(config.to_json(indent=2)).to_dict() == config.to_dict()
    assert QuantConfig.from_dict(config.to_dict()) == config
    assert hash(QuantConfig.from_dict(config.to_dict())) == hash(config)


# -- quantize / dequantize ------------------------------------------------------------------------------------
@st.composite
def weights_and_layout(draw: st.DrawFn) -> tuple[torch.Tensor, str, int | None]:
    shape = (draw(st.integers(1, 6)), *draw(st.lists(st.integers(1, 5), min_size=1, max_size=3)))
    magnitude = draw(st.sampled_from((1e-6, 1e-2, 1.0, 300.0)))
    gen = torch.Generator().manual_seed(draw(st.integers(0, 2**31)))
    w = torch.randn(shape, generator=gen) * magnitude
    if draw(st.booleans()):  # an all-zero channel, or a channel of one sign: the edges of qparams_from_range
        w[0] = 0.0 if draw(st.booleans()) else w[0].abs()
    granularity = draw(st.sampled_from(WEIGHT_GRANULARITIES))
    row = math.prod(shape[1:])
    group = draw(st.integers(1, row + 3)) if granularity == "per_group" else None
    return w, granularity, group


@QUICK
@given(weights_and_layout(), bits, st.sampled_from(SCHEMES))
def test_quantize_dequantize_invariants(layout: tuple[torch.Tensor, str, int | None], n_bits: int, scheme: str) -> None:
    w, granularity, group = layout
    qmin, qmax = int_range(n_bits, scheme)
    lo, hi = weight_minmax(w, granularity, group)
    scale, zero_point = qparams_from_range(lo, hi, n_bits, scheme)
    s = broadcast_to_weight(scale, w.shape, granularity, group)
    zp = broadcast_to_weight(zero_point, w.shape, granularity, group)

    q = quantize(w, s, zp, qmin, qmax)
    assert q.dtype == torch.int32 and int(q.min()) >= qmin and int(q.max()) <= qmax  # codes within the range

    # min-max ranges: every value is inside its range, so each comes back within half a step (a float32
    # rounding of the product |w| / scale is the only slack: a few ulps of |w|)
    x_hat = dequantize(q, s, zp)
    error = (x_hat - w).abs()
    bound = s * 0.5 + 4 * torch.finfo(torch.float32).eps * w.abs() + 1e-30
    assert bool((error <= bound).all()), float((error - bound).max())
    assert torch.equal(x_hat, fake_quantize(w, s, zp, qmin, qmax))  # one arithmetic, two spellings

    zeros = torch.zeros_like(w)
    assert torch.equal(fake_quantize(zeros, s, zp, qmin, qmax), zeros)  # zero exactly representable


# -- top-1 and top-k: one definition -------------------------------------------------------------------------
def test_ties_go_to_the_first_maximum_in_every_top1() -> None:
    logits = torch.tensor([[1.0, 3.0, 3.0, 0.0],   # tie between 1 and 2: class 1
                           [2.0, 2.0, 2.0, 2.0],   # all equal: class 0
                           [0.0, 1.0, 5.0, 5.0]])  # tie between 2 and 3: class 2
    assert top_classes(logits, 1).flatten().tolist() == [1, 0, 2]
    assert topk_accuracy(logits, torch.tensor([1, 0, 2])) == 1.0
    assert topk_accuracy(logits, torch.tensor([2, 3, 3])) == 0.0  # the other tied classes never count
    # agreement uses the same rule: another set of logits with the same first maxima agrees fully
    assert agreement(logits, torch.tensor([[0.0, 9.0, 9.0, 9.0], [7.0, 1.0, 1.0, 7.0], [0.0, 0.0, 1.0, 1.0]])) == 1.0


def test_topk_ranks_ties_by_class_index() -> None:
    logits = torch.tensor([[0.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 2.0]])  # six tied after class 7
    assert top_classes(logits, 5).tolist() == [[7, 1, 2, 3, 4]]
    assert topk_accuracy(logits, torch.tensor([4]), k=5) == 1.0
    assert topk_accuracy(logits, torch.tensor([5]), k=5) == 0.0  # tied with class 4, but ranked after it
    assert topk_accuracy(logits, torch.tensor([0]), k=100) == 1.0  # k beyond the classes: all of them


@QUICK
@given(st.integers(1, 40), st.integers(2, 12), st.integers(0, 2**31), st.integers(1, 7))
def test_top_classes_agree_with_argmax_and_nest(n: int, classes: int, seed: int, k: int) -> None:
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randint(0, 3, (n, classes), generator=gen).float()  # few values: many ties
    labels = torch.randint(0, classes, (n,), generator=gen)
    top = top_classes(logits, k)
    assert torch.equal(top[:, 0], logits.argmax(dim=1))
    assert topk_accuracy(logits, labels, 1) == float((logits.argmax(dim=1) == labels).float().mean())
    assert topk_accuracy(logits, labels, k) >= topk_accuracy(logits, labels, 1)
    values = logits.gather(1, top)
    assert bool((values[:, :-1] >= values[:, 1:]).all())  # ranked by value, then by index within a tie


# -- model size: the baseline is the folded FP32 model ---------------------------------------------------------
@pytest.fixture(scope="module")
def sizes(cnn: Explorer) -> dict[str, dict[str, Any]]:
    everything = [u.name for u in cnn.prepared().units if u.has_weights]
    quick = {"activations": None, "evaluation": {"runtime": None, "num_samples": 16}}  # weight-only: no calibration
    runs = {"w8": quick, "float": {**quick, "keep_float": everything}, "unfolded": {**quick, "fold_batchnorm": False}}
    return {k: cnn.evaluate(QuantConfig.from_dict(v), layer_errors=False).size for k, v in runs.items()}


def test_quantizing_nothing_compresses_by_exactly_one(sizes: dict[str, dict[str, Any]]) -> None:
    plain = sizes["float"]
    assert plain["quant_bytes"] == plain["fp32_bytes"] and plain["compression_ratio"] == 1.0


def test_the_unfolded_size_is_kept_beside_the_folded_baseline(cnn: Explorer, sizes: dict[str, dict[str, Any]]) -> None:
    bn_channels = sum(m.num_features for m in cnn.model.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert bn_channels == 240  # bn1..bn3, block.bn_dw, block.bn_pw
    folded, unfolded = sizes["w8"], sizes["unfolded"]
    # folding removes each BatchNorm's weight, bias, running mean and variance (the convs have biases already)
    assert folded["fp32_unfolded_bytes"] - folded["fp32_bytes"] == 4 * 4 * bn_channels
    assert unfolded["fp32_bytes"] == unfolded["fp32_unfolded_bytes"] == folded["fp32_unfolded_bytes"]
    assert folded["compression_ratio"] == folded["fp32_bytes"] / folded["quant_bytes"]
