"""The onnxruntime evaluation backend gives the simulation's numbers: same top-1 decisions, same logits
to within one output step, same per-layer SQNRs; and a clipping change costs no export.

The bounds. Both backends run the same float32 fake-quantize ops; only the convolutions' summation
order differs (onnxruntime's blocked kernels vs PyTorch's), so a value within float rounding of a
rounding tie may land one quantization step apart and carry that step on. On the digits models the
logits come out bit-identical for every static, weight-only and dynamic per-tensor config below
(max |diff| 0.0) and within 3e-6 for dynamic per-token; the asserted bound is one step of the output
quantizer (or 1e-4 where the logits are float), which a real disagreement would exceed. Where the
logits are quantized the bound is checked on their integer codes (``round(logits / step)``, at
most 1 apart), not on floats: two values one step apart differ by the step only up to float
rounding (measured on an AMD EPYC: 0.13157421 for a step of 0.13157418). SQNRs differ
by summation order only: asserted within 0.1 dB where the noise is quantization noise (< 100 dB; a
quantizer whose input is already on its grid shows ~170 dB, float rounding, where the order matters).
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch
from torch import nn

from ptq_core.calibration import batches
from ptq_core.config import QuantConfig
from ptq_core.errors import CalibrationError, ConfigError
from ptq_core.models import ModelEntry, register_model
from ptq_core.onnx.session import infer_shapes, make_simulation_session
from ptq_core.onnx.simulate import export_structure, with_initializers
from ptq_core.pipeline import Explorer
from ptq_core.simulation import INPUT, LOGITS, static_feeds, weight_values

CONFIGS = {
    "w8a8 static": {},
    "w4 weight-only per-group": {"weights": {"bits": 4, "granularity": "per_group", "group_size": 16, "clipping": "mse"},
                                 "activations": None},
    "w8a4 kl": {"activations": {"bits": 4, "clipping": "kl"}},
    "w8a8 symmetric activations": {"activations": {"scheme": "symmetric", "clipping": "percentile"}},
    "dynamic per-tensor": {"activations": {"mode": "dynamic"}},
    "dynamic per-token": {"activations": {"mode": "dynamic", "granularity": "per_token"}},
    "keep_float + override": {"keep_float": ["fc2"], "overrides": {"conv1": {"weights": {"bits": 4}}, "conv2": {"activations": {"bits": 6}}}},
}


def _cfg(backend: str, **sections: object) -> QuantConfig:
    evaluation = {"runtime": None, "backend": backend}
    return QuantConfig.from_dict({**sections, "evaluation": evaluation})


pytestmark = pytest.mark.usefixtures("one_torch_thread")  # both backends on one thread, as the dashboard runs them


def _torch_logits(explorer: Explorer, config: QuantConfig) -> torch.Tensor:
    qgm = explorer.quantized_model(config)
    indices = explorer.evaluation_indices(config.evaluation)
    with torch.inference_mode():
        return torch.cat([qgm(x) for x, _ in batches(explorer.dataset.evaluation, indices, config.evaluation.batch_size)])


FLOAT_LOGITS_TOL = 1e-4  # float logits (no output quantizer): summation order only, measured within 5e-6
# Where the summation order puts a value on the other side of a rounding tie, one intermediate code moves one step
# and carries on to the logits of that sample. Measured on digits: none on AVX-512 machines, 1 to 4 of the 360
# samples on an AVX2 AMD EPYC, by at most 0.15 (1% of the largest logit). A real disagreement (a wrong scale,
# zero point or placement) moves most samples, and by far more.
MAX_MOVED_SAMPLES = 0.02  # share of samples whose logits may differ beyond float rounding
MAX_MOVED_DIFF = 0.05  # ... by at most this share of the largest logit


def _output_step(explorer: Explorer, config: QuantConfig) -> float | None:
    """One step of the quantizer on the logits, or None when the logits are not quantized."""
    plan = explorer.plan(config)
    out = explorer.prepared().points[-1].name  # digits_cnn: fc2, the last point in network order
    pq = plan.points.get(out)
    return pq.scale if pq is not None and pq.scale is not None else None


@pytest.mark.parametrize("name", list(CONFIGS))
def test_same_numbers_as_the_torch_backend(cnn: Explorer, name: str) -> None:
    ref = cnn.evaluate(_cfg("torch", **CONFIGS[name]))
    fast = cnn.evaluate(_cfg("onnxruntime", **CONFIGS[name]))
    config = _cfg("onnxruntime", **CONFIGS[name])
    plan = cnn.plan(config)
    indices = cnn.evaluation_indices(config.evaluation)
    run = cnn.backend("onnxruntime").evaluate(
        prepared=cnn.prepared(), plan=plan, dataset=cnn.dataset.evaluation, indices=indices, probe_indices=indices[:1],
        batch_size=config.evaluation.batch_size, model=cnn.model, example=cnn.example_input(), device=torch.device("cpu"))
    t_logits = _torch_logits(cnn, config)
    diff = float((run.logits - t_logits).abs().max())
    step = _output_step(cnn, config)
    assert len(indices) == 360
    assert torch.equal(run.logits.argmax(1), t_logits.argmax(1))  # every top-1 decision
    if step is not None:  # integer codes, not floats: a one-step difference may exceed the step by an ulp
        codes_apart = int((torch.round(run.logits / step) - torch.round(t_logits / step)).abs().max())
        assert codes_apart <= 1, (name, codes_apart, diff, step)
    else:
        per_sample = (run.logits - t_logits).abs().amax(dim=1)
        moved = per_sample > FLOAT_LOGITS_TOL
        assert int(moved.sum()) <= MAX_MOVED_SAMPLES * len(indices), (name, int(moved.sum()))
        assert diff <= MAX_MOVED_DIFF * float(t_logits.abs().max()), (name, diff)
    for key in ("quant_top1", "agreement", "fp32_top1"):
        assert fast.metrics[key] == ref.metrics[key]
    # The few moved samples (above) may shift the mean KL by ~1e-5 nats (measured on AVX2: 2.80e-5 vs 3.80e-5).
    assert fast.metrics["kl_divergence"] == pytest.approx(ref.metrics["kl_divergence"], rel=1e-3, abs=5e-5)
    for a, b in zip(ref.layers, fast.layers, strict=True):
        for key in ("output_sqnr_db", "input_sqnr_db"):
            x, y = a[key], b[key]
            if x is None or not math.isfinite(x) or x > 100:  # no quantization noise: float rounding only
                assert y is None or not math.isfinite(y) or y > 100, (a["name"], key, x, y)
            else:
                assert abs(x - y) < 0.1, (a["name"], key, x, y)
    assert fast.environment["evaluation_backend"] == "onnxruntime" and ref.environment["evaluation_backend"] == "torch"
    assert fast.latency["kind"] == "simulated" and "onnxruntime" in fast.latency["runtime"]


def test_a_clipping_bits_or_scheme_change_costs_no_export_and_no_session(cnn: Explorer) -> None:
    cnn.evaluate(_cfg("onnxruntime", activations={"clipping": "minmax"}))
    r = cnn.evaluate(_cfg("onnxruntime", activations={"clipping": "percentile", "percentile": 99.9}))
    assert r.timing["export_s"] == 0.0 and r.timing["session_s"] == 0.0  # new feeds only
    r = cnn.evaluate(_cfg("onnxruntime", weights={"clipping": "mse"}, activations={"clipping": "percentile", "percentile": 99.9}))
    assert r.timing["export_s"] == 0.0 and r.timing["session_s"] > 0.0  # new weights: a session, no export
    for activations in ({"bits": 6}, {"scheme": "symmetric"}, {"bits": 4, "scheme": "symmetric"}):
        r = cnn.evaluate(_cfg("onnxruntime", activations=activations))
        assert r.timing["export_s"] == 0.0 and r.timing["session_s"] == 0.0, activations  # bits and scheme are fed too
        torch_side = cnn.evaluate(_cfg("torch", activations=activations))
        assert r.metrics["agreement"] == torch_side.metrics["agreement"], activations
    r = cnn.evaluate(_cfg("onnxruntime", activations=None))
    assert r.timing["export_s"] > 0.0  # weight-only: no activation quantizers, another structure


def test_threads_share_one_backend() -> None:
    """The dashboard shares one Explorer between sessions: concurrent first evaluations (exporting and
    building sessions at the same time) give the numbers of later sequential ones."""
    explorer = Explorer("digits_cnn", "digits")
    configs = [_cfg("onnxruntime", activations={"clipping": clip}) for clip in ("minmax", "percentile", "mse", "kl")]
    configs += [_cfg("onnxruntime", weights={"bits": 4, "clipping": "mse"}), _cfg("onnxruntime", activations=None)]
    with ThreadPoolExecutor(max_workers=len(configs)) as pool:
        parallel = list(pool.map(lambda c: explorer.evaluate(c).metrics, configs))
    assert [explorer.evaluate(c).metrics for c in configs] == parallel


def test_dynamic_nan_names_the_point_as_in_torch() -> None:
    from ptq_core.data import Dataset, TensorSamples, load_dataset, register_dataset

    digits = load_dataset("digits")
    x = digits.evaluation.x.clone()  # type: ignore[attr-defined]
    x[7, 0, 2, 2] = float("nan")

    def loader(**_: object) -> Dataset:
        return Dataset(
            name="digits_eval_nan", description="digits with one NaN evaluation pixel (test only)",
            calibration_pool=digits.calibration_pool, evaluation=TensorSamples(x, digits.evaluation.y),  # type: ignore[attr-defined]
            calibration_labels=digits.calibration_labels, evaluation_labels=digits.evaluation_labels,
            num_classes=10, class_names=digits.class_names, input_shape=digits.input_shape, info={},
        )

    register_dataset("digits_eval_nan", loader, "digits with one NaN evaluation pixel (test only)")
    explorer = Explorer("digits_cnn", "digits_eval_nan")
    for backend in ("torch", "onnxruntime"):
        with pytest.raises(CalibrationError, match=r"^x: activation contains NaN or Inf"):
            explorer.evaluate(_cfg(backend, dataset="digits_eval_nan", activations={"mode": "dynamic"}))


class _OddChannels(nn.Module):
    """Channel counts that are not multiples of onnxruntime's NCHWc block (8 or 16): padded channels."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv1, self.bn1, self.act1 = nn.Conv2d(1, 12, 3, padding=1), nn.BatchNorm2d(12), nn.ReLU6()
        self.conv2, self.act2 = nn.Conv2d(12, 24, 3, padding=1), nn.ReLU()
        self.dw = nn.Conv2d(24, 24, 3, padding=1, groups=24)
        self.pw = nn.Conv2d(24, 24, 1)
        self.pool, self.fc = nn.AdaptiveAvgPool2d(1), nn.Linear(24, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.act2(self.conv2(self.act1(self.bn1(self.conv1(x)))))
        h = h + self.pw(self.dw(h))
        return self.fc(torch.flatten(self.pool(h), 1))


def test_blocked_layout_rewrite_is_bit_identical() -> None:
    register_model(ModelEntry("test_odd_channels", "odd channel counts (test only)", "digits",
                              build=lambda: _OddChannels().eval(), pretrained=False))
    explorer = Explorer("test_odd_channels", "digits")
    config = QuantConfig.from_dict({"model": "test_odd_channels", "evaluation": {"runtime": None, "backend": "onnxruntime"}})
    prepared, plan = explorer.prepared(), explorer.plan(config)
    structure = export_structure(prepared, plan, probe=True)
    structure.shapes = infer_shapes(structure.model)
    weights = weight_values(structure.weight_inputs, prepared, plan)
    feeds = {INPUT: next(iter(batches(explorer.dataset.evaluation, range(64), 64)))[0].numpy(),
             **static_feeds(structure.static_inputs, plan)}
    taps = [n for _, _, s, z in structure.taps for n in (s, z)]
    outs = {}
    for layout in (False, True):
        session, removed = make_simulation_session(with_initializers(structure.model, weights), structure.shapes, 1, outputs=taps, layout=layout)
        assert (removed > 0) == layout
        outs[layout] = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds), strict=True))
    assert np.array_equal(outs[True][LOGITS], outs[False][LOGITS])
    for name in taps:  # sums over the blocked tensors: other order, padded zeros included
        np.testing.assert_allclose(outs[True][name], outs[False][name], rtol=1e-4)
    # and against the simulation in PyTorch
    t_logits = _torch_logits(explorer, config)[:64].numpy()
    assert np.array_equal(outs[True][LOGITS].argmax(1), t_logits.argmax(1))


def test_backend_field_is_validated_and_round_trips() -> None:
    config = _cfg("onnxruntime")
    assert QuantConfig.from_dict(config.to_dict()) == config and config.to_dict()["evaluation"]["backend"] == "onnxruntime"
    assert QuantConfig().evaluation.backend == "torch"
    with pytest.raises(ConfigError, match=r"^evaluation\.backend: got 'tensorrt'; allowed: torch, onnxruntime"):
        QuantConfig.from_dict({"evaluation": {"backend": "tensorrt"}})
    with pytest.raises(ConfigError, match=r"^evaluation\.backend: got 'onnxruntime' with device 'cuda'.*device cpu"):
        QuantConfig.from_dict({"device": "cuda", "evaluation": {"backend": "onnxruntime"}})


def test_numbers_do_not_depend_on_how_many_batches_run_at_once(cnn: Explorer) -> None:
    """torch.get_num_threads() batches run at once on one-thread sessions, put together in batch order."""
    config = _cfg("onnxruntime", activations={"clipping": "mse"})
    one = cnn.evaluate(config)
    torch.set_num_threads(3)
    try:
        three = cnn.evaluate(config)
    finally:
        torch.set_num_threads(1)
    assert three.metrics == one.metrics and three.layers == one.layers
    assert one.latency["threads"] == three.latency["threads"] == 1  # per run; batches overlap
