"""The evaluation path behind every backend: the PyTorch backend is the reference simulation, streamed.

* Its logits are the reference model's (:func:`ptq_core.quantize.build_quantized_model`), bit for bit:
  the same fake-quantize function on the same tensors, only run from the one simulation graph.
* Its per-layer probe gives the SQNRs the former probe gave (both models tapped whole, in float64),
  while holding a few layers' tensors at a time.
* Subsets, skipped parts and the number of workers change no number that is there; what is skipped
  is listed in ``Result.pending``.
"""

from __future__ import annotations

import pytest
import torch

from ptq_core.backends import TORCH_PER_SAMPLE_BATCH, per_sample
from ptq_core.calibration import batches
from ptq_core.config import QuantConfig
from ptq_core.errors import CalibrationError
from ptq_core.graph import with_taps
from ptq_core.metrics import SqnrAccumulator
from ptq_core.pipeline import Explorer

CONFIGS = {
    "w8a8 static": {},
    "w4 weight-only per-group": {"weights": {"bits": 4, "granularity": "per_group", "group_size": 16, "clipping": "mse"},
                                 "activations": None},
    "w8a4 kl": {"activations": {"bits": 4, "clipping": "kl"}},
    "dynamic per-tensor": {"activations": {"mode": "dynamic"}},
    "dynamic per-token": {"activations": {"mode": "dynamic", "granularity": "per_token"}},
    "keep_float + override": {"keep_float": ["fc2"], "overrides": {"conv1": {"weights": {"bits": 4}}, "conv2": {"activations": {"bits": 6}}}},
}


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _cfg(**sections: object) -> QuantConfig:
    return QuantConfig.from_dict({**sections, "evaluation": {"runtime": None, "backend": "torch"}})


def _reference_logits(explorer: Explorer, config: QuantConfig) -> torch.Tensor:
    """The reference model on the same batches (per-sample plans run in pieces of TORCH_PER_SAMPLE_BATCH)."""
    qgm = explorer.quantized_model(config)
    indices = explorer.evaluation_indices(config.evaluation)
    bs = config.evaluation.batch_size
    if per_sample(explorer.plan(config)):
        bs = min(bs, TORCH_PER_SAMPLE_BATCH)
    with torch.inference_mode():
        return torch.cat([qgm(x) for x, _ in batches(explorer.dataset.evaluation, indices, bs)])


def _reference_probe(explorer: Explorer, config: QuantConfig, samples: int) -> dict[str, dict[str, float]]:
    """The former PyTorch probe: both models run whole with every tap returned, SQNR summed in float64."""
    from ptq_core.quantize import build_quantized_model

    prepared, plan = explorer.prepared(), explorer.plan(config)
    qgm, visible = build_quantized_model(prepared, plan)
    unit_points = [u.name for u in prepared.units if any(p.name == u.name for p in prepared.points)]
    # a unit's output as its readers see it: after a static quantizer; a dynamic one feeds only Conv/Linear (rule 6)
    dynamic = {n for n, pq in plan.points.items() if pq.quant.mode == "dynamic"}
    q_taps = {f"out:{n}": prepared.point(n).node if n in dynamic else visible[n] for n in unit_points}
    for name in plan.points:
        q_taps[f"pre:{name}"], q_taps[f"post:{name}"] = prepared.point(name).node, visible[name]
    f_view = with_taps(prepared.graph_module, {n: prepared.point(n).node for n in unit_points})
    q_view = with_taps(qgm, q_taps)
    out = {n: SqnrAccumulator() for n in unit_points}
    inp = {n: SqnrAccumulator() for n in plan.points}
    with torch.inference_mode():
        for x, _ in batches(explorer.dataset.evaluation, list(range(samples)), samples):
            _, f = f_view(x)
            _, q = q_view(x)
            for n in unit_points:
                out[n].add(f[n], q[f"out:{n}"])
            for n in plan.points:
                inp[n].add(q[f"pre:{n}"], q[f"post:{n}"])
    rows = {n: {"output_sqnr_db": acc.db} for n, acc in out.items()}
    for n, acc in inp.items():
        rows.setdefault(n, {})["quantizer_sqnr_db"] = acc.db
    return rows


@pytest.mark.parametrize("name", list(CONFIGS))
def test_torch_backend_is_the_reference_model_bit_for_bit(cnn: Explorer, name: str) -> None:
    config = _cfg(**CONFIGS[name])
    indices = cnn.evaluation_indices(config.evaluation)
    run = cnn.backend("torch").evaluate(
        prepared=cnn.prepared(), plan=cnn.plan(config), dataset=cnn.dataset.evaluation, indices=indices,
        probe_indices=indices[:64], batch_size=config.evaluation.batch_size, model=cnn.model,
        example=cnn.example_input(), device=torch.device("cpu"))
    assert torch.equal(run.logits, _reference_logits(cnn, config))
    reference = _reference_probe(cnn, config, 64)
    assert run.layer_errors.keys() == reference.keys()
    for layer, row in reference.items():
        for key, db in row.items():
            # float32 squares summed in float64 against float64 squares, other batch groupings: within 1e-5 dB;
            # inf (no noise at all) exactly
            assert run.layer_errors[layer][key] == pytest.approx(db, rel=1e-6, abs=1e-5), (layer, key)


def test_a_subset_and_skipped_parts_are_listed_and_change_no_number(cnn: Explorer) -> None:
    config = QuantConfig.from_dict({"evaluation": {"backend": "torch"}})  # asks for the onnxruntime check too
    full = cnn.evaluate(config, runtime_check=False)
    quick = cnn.evaluate(config, samples=64, layer_errors=False, runtime_check=False)
    assert full.pending == ["runtime"]
    assert quick.pending == ["samples", "layer_errors", "runtime"]
    assert quick.dataset["num_eval_samples"] == 64 and quick.dataset["num_eval_samples_config"] == 360
    assert quick.predictions == full.predictions[:64]
    labels = cnn.dataset.evaluation_labels
    assert labels is not None
    assert quick.metrics["quant_top1"] == pytest.approx(sum(p == int(y) for p, y in zip(quick.predictions, labels[:64], strict=True)) / 64)
    assert all(row["output_sqnr_db"] is None for row in quick.layers)
    assert all(row["output_sqnr_db"] is not None for row in full.layers)
    assert quick.size == full.size and quick.activations == full.activations
    checked = cnn.evaluate(config)
    assert checked.pending == [] and "runtime_agreement" in checked.metrics


def test_the_number_of_workers_changes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    results = {}
    for workers in ("1", "3"):
        monkeypatch.setenv("PTQ_WORKERS", workers)
        explorer = Explorer("digits_cnn", "digits")  # fresh: nothing cached in memory
        for backend in ("torch", "onnxruntime"):
            r = explorer.evaluate(QuantConfig.from_dict({"evaluation": {"runtime": None, "backend": backend}}))
            results[(workers, backend)] = (r.metrics, r.predictions, [row["output_sqnr_db"] for row in r.layers])
    for backend in ("torch", "onnxruntime"):
        assert results[("1", backend)] == results[("3", backend)], backend


def test_a_second_explorer_reads_statistics_and_fp32_logits_from_the_disk_cache(monkeypatch: pytest.MonkeyPatch) -> None:
    config = _cfg(calibration={"num_samples": 100, "seed": 7})
    first = Explorer("digits_cnn", "digits").evaluate(config)

    def no_model(*args: object, **kwargs: object) -> None:
        raise AssertionError("statistics were collected again although cached on disk")

    import ptq_core.pipeline as pipeline

    monkeypatch.setattr(pipeline, "collect_stats", no_model)
    second = Explorer("digits_cnn", "digits").evaluate(config)  # a new process would be the same: nothing in memory
    assert second.timing["calibration_from_disk"] and second.timing["calibration_cached"]
    assert second.metrics == first.metrics and second.predictions == first.predictions
    assert second.activations == first.activations


def test_nan_in_a_dynamic_input_names_the_point(cnn: Explorer) -> None:
    from ptq_core.data import Dataset, TensorSamples, load_dataset, register_dataset

    digits = load_dataset("digits")
    x = digits.evaluation.x.clone()  # type: ignore[attr-defined]
    x[200, 0, 3, 3] = float("nan")
    register_dataset("digits_nan_at_200", lambda **_: Dataset(
        name="digits_nan_at_200", description="digits with one NaN (test only)", calibration_pool=digits.calibration_pool,
        evaluation=TensorSamples(x, digits.evaluation.y),  # type: ignore[attr-defined]
        calibration_labels=digits.calibration_labels, evaluation_labels=digits.evaluation_labels, num_classes=10,
        class_names=digits.class_names, input_shape=digits.input_shape), "test only")
    explorer = Explorer("digits_cnn", "digits_nan_at_200")
    with pytest.raises(CalibrationError, match="^x: activation contains NaN or Inf"):
        explorer.evaluate(QuantConfig.from_dict({"dataset": "digits_nan_at_200", "activations": {"mode": "dynamic"},
                                                 "evaluation": {"runtime": None, "backend": "torch"}}))


class _Stopped(BaseException):
    """What the dashboard's progress callback raises when the user has moved on (Streamlit's rerun is a BaseException)."""


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_a_stopped_evaluation_leaves_the_explorer_as_it_was(backend: str) -> None:
    explorer = Explorer("digits_cnn", "digits")
    config = QuantConfig.from_dict({"weights": {"bits": 5}, "evaluation": {"runtime": None, "backend": backend}})
    seen: list[str] = []

    def stop_when_evaluating(done: int, total: int, message: str) -> None:
        seen.append(message)
        if message.startswith("evaluating quantized") and done >= 1:
            raise _Stopped

    with pytest.raises(_Stopped):
        explorer.evaluate(config, stop_when_evaluating)
    assert any(m.startswith("evaluating quantized") for m in seen)
    after = explorer.evaluate(config)  # what was computed before the stop is reused, nothing half-done is
    fresh = Explorer("digits_cnn", "digits").evaluate(config)
    assert after.metrics == fresh.metrics and after.predictions == fresh.predictions


@pytest.mark.parametrize("backend", ["torch", "onnxruntime"])
def test_the_whole_evaluation_continues_from_a_first_answer_with_the_same_numbers(backend: str) -> None:
    config = QuantConfig.from_dict({"weights": {"bits": 6}, "evaluation": {"runtime": None, "backend": backend}})
    explorer = Explorer("digits_cnn", "digits")
    explorer.evaluate(config, samples=48, layer_errors=False)
    continued = explorer.evaluate(config, layer_errors=False)
    assert continued.timing["reused_samples"] == 48  # 48 = whole batches of either backend's per-sample batch
    direct = Explorer("digits_cnn", "digits").evaluate(config, layer_errors=False)
    assert direct.timing["reused_samples"] == 0
    assert continued.predictions == direct.predictions and continued.metrics == direct.metrics
    dynamic = config.replace(activations=QuantConfig.from_dict({"activations": {"mode": "dynamic"}}).activations)
    explorer.evaluate(dynamic, samples=48, layer_errors=False)
    assert explorer.evaluate(dynamic, layer_errors=False).timing["reused_samples"] == 0  # ranges span a batch
