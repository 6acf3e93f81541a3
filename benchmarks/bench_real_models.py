"""Real models: EfficientNet-Lite0 accuracy under PTQ and the cost of each step, torchvision graphs.

    .venv/bin/python benchmarks/bench_real_models.py [--quick] [--no-accuracy] [--no-torchvision] [--no-backends]

Needs the shared ImageNet samples (../shared/data/imagenet-samples, 500 images with labels.csv) for
the EfficientNet-Lite0 parts, which are skipped with a message when absent. The protocol of the
issue: the folder is split once (seed 0) into a 128-image calibration pool and 372 evaluation
images; calibration uses all 128, evaluation all 372. Everything runs in PyTorch eager on the CPU
(``evaluation.runtime`` off where that field exists), so the numbers are the simulation's.

Prints four markdown tables:

1. accuracy: FP32 top-1, then W8A8 (per-channel weights) per activation clipping method, W4A8,
   and W4 weight-only per-channel and per-group 32/64/128: top-1, drop in points, agreement with
   FP32 (top-1 decisions), mean KL(FP32 || quantized) and the number of flipped decisions;
2. timing: the first evaluate (calibration + evaluation) and a re-evaluation after changing only
   the clipping method (no recalibration), split into what each takes, with and without the
   per-layer error probe;
3. backends: the same evaluations with ``evaluation.backend`` torch and onnxruntime (ptq_core.onnx.backend),
   probe on 128 images: the first evaluate, then re-evaluations after a clipping change, torch and
   onnxruntime interleaved, split into export / session / quantized forward / probe, medians of the
   re-evaluations; then top-1 of both side by side with the decisions and logits that differ, next to
   the same comparison between PyTorch and PyTorch with its other convolution kernel (oneDNN off),
   the yardstick for "the same numbers" when only the float summation order changes;
4. torchvision: every listed classifier with RANDOM weights on random 64x64 inputs (graph checks
   only: prepare time, units, BN left unfolded, one W8A8 evaluate).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ptq_core.calibration import batches  # noqa: E402
from ptq_core.config import ActivationQuant, Calibration, Evaluation, QuantConfig, WeightQuant  # noqa: E402
from ptq_core.data import Dataset, TensorSamples, register_dataset  # noqa: E402
from ptq_core.models.torchvision_models import CLASSIFIERS  # noqa: E402
from ptq_core.pipeline import Explorer  # noqa: E402
from ptq_core.result import Result  # noqa: E402

SAMPLES = Path(__file__).resolve().parents[2] / "shared/data/imagenet-samples"
DATASET = {"kind": "image_folder", "path": str(SAMPLES), "num_calibration": 128, "seed": 0, "max_images": None}
# Simulation only: the onnxruntime check (ptq_core.onnx.runtime) is measured by its own benchmark.
_NO_RUNTIME = {"runtime": None} if "runtime" in Evaluation.__dataclass_fields__ else {}


def _config(**changes: Any) -> QuantConfig:
    base = QuantConfig(
        model="efficientnet_lite0",
        dataset=DATASET,
        calibration=Calibration(num_samples=128, batch_size=32),
        evaluation=Evaluation(batch_size=64, layer_error_samples=1, **_NO_RUNTIME),
    )
    return base.replace(**changes)


def _accuracy_rows(explorer: Explorer, quick: bool) -> list[str]:
    w8 = WeightQuant(bits=8, granularity="per_channel")
    w4 = WeightQuant(bits=4, granularity="per_channel", clipping="mse")
    runs: list[tuple[str, QuantConfig]] = [
        (f"W8A8 per-channel, activations {clip}", _config(weights=w8, activations=ActivationQuant(clipping=clip)))
        for clip in ("minmax", "percentile", "mse", "kl")
    ]
    a999 = ActivationQuant(clipping="percentile", percentile=99.999)
    runs += [
        ("W8A8 per-channel, activations percentile 99.999", _config(weights=w8, activations=a999)),
        ("W8A8 per-channel weights mse, activations minmax", _config(weights=WeightQuant(clipping="mse"))),
        (
            "W8A8 per-channel weights mse, activations percentile 99.999",
            _config(weights=WeightQuant(clipping="mse"), activations=a999),
        ),
        (
            "W8A8 per-channel weights percentile 99.99, activations percentile 99.999",
            _config(weights=WeightQuant(clipping="percentile"), activations=a999),
        ),
        ("W8A8 per-channel asymmetric weights, activations minmax", _config(weights=WeightQuant(scheme="asymmetric"))),
        ("W8 weight-only per-channel", _config(weights=w8, activations=None)),
        ("W4A8 per-channel (weights mse), activations minmax", _config(weights=w4)),
        (
            "W4A8 per-channel (weights mse), activations mse",
            _config(weights=w4, activations=ActivationQuant(clipping="mse")),
        ),
        ("W4 weight-only per-channel (mse)", _config(weights=w4, activations=None)),
        ("W4 weight-only per-channel (minmax)", _config(weights=WeightQuant(bits=4), activations=None)),
    ]
    for group in (32, 64, 128):
        gq = WeightQuant(bits=4, granularity="per_group", group_size=group, clipping="mse")
        runs.append((f"W4 weight-only per-group {group} (mse)", _config(weights=gq, activations=None)))
    # Diagnostic: the 3x3/5x5 depthwise kernels (9 or 25 weights per channel) are what 4 bits break.
    depthwise = tuple(name for name in explorer.prepared().layer_names() if "depthwise" in name)
    g32 = WeightQuant(bits=4, granularity="per_group", group_size=32, clipping="mse")
    runs.append(
        (
            "W4 weight-only per-group 32 (mse), depthwise convs kept in float (diagnostic)",
            _config(weights=g32, activations=None, keep_float=depthwise),
        )
    )
    if quick:
        runs = runs[:1]
    rows = [
        "| config | top-1 | drop (points) | agreement | KL | flipped |",
        "|---|---|---|---|---|---|",
    ]
    fp32_done = False
    for label, config in runs:
        r = explorer.evaluate(config)
        m = r.metrics
        n = m["num_eval_samples"]
        if not fp32_done:
            rows.append(f"| FP32 | {m['fp32_top1']:.2%} ({round(m['fp32_top1'] * n)}/{n}) | - | - | - | - |")
            fp32_done = True
        drop = 100 * (m["fp32_top1"] - m["quant_top1"])
        flipped = round((1 - m["agreement"]) * n)
        rows.append(
            f"| {label} | {m['quant_top1']:.2%} | {drop:+.2f} | {m['agreement']:.2%} | {m['kl_divergence']:.4f} | {flipped} |"
        )
        print(f"  {label}: done in {r.timing['total_s']:.1f} s", file=sys.stderr, flush=True)
    return rows


def _fp32_ms_per_image(explorer: Explorer, n: int = 64) -> float:
    indices = list(range(min(n, len(explorer.dataset.evaluation))))  # type: ignore[arg-type]
    for _batch in batches(explorer.dataset.evaluation, indices, 64):  # decode and cache the images first
        pass
    start = time.perf_counter()
    with torch.inference_mode():
        for x, _ in batches(explorer.dataset.evaluation, indices, 64):
            explorer.model(x)
    return (time.perf_counter() - start) * 1e3 / len(indices)


def _timing_row(label: str, r: Result) -> str:
    t = r.timing
    known = t["calibration_s"] * (not t["calibration_cached"]) + t["plan_s"] + t["evaluation_s"] + t["layer_error_s"]
    fp32 = t["fp32_evaluation_s"]
    other = t["total_s"] - known - (fp32 if label.startswith("first") else 0.0)
    cal = "cached" if t["calibration_cached"] else f"{t['calibration_s']:.1f}"
    fp32_cell = f"{fp32:.1f}" if label.startswith("first") else "cached"
    return (
        f"| {label} | {cal} | {fp32_cell} | {t['plan_s']:.2f} | {t['evaluation_s']:.1f} | {t['layer_error_s']:.1f} "
        f"| {other:.1f} | {t['total_s']:.1f} |"
    )


def _timing_rows() -> list[str]:
    explorer = Explorer("efficientnet_lite0", DATASET)  # fresh: nothing cached
    probe = Evaluation(batch_size=64, layer_error_samples=128, **_NO_RUNTIME)
    no_probe = Evaluation(batch_size=64, layer_error_samples=1, **_NO_RUNTIME)
    rows = [
        "| step | calibration (128) s | FP32 eval (372) s | plan s | quantized eval (372) s | layer-error probe s "
        "| other (latency sim.) s | total s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    first = explorer.evaluate(_config(evaluation=probe))
    rows.append(_timing_row("first evaluate, W8A8 minmax (includes JPEG decoding)", first))
    rows.append(
        _timing_row(
            "clipping -> percentile, probe 128 images",
            explorer.evaluate(_config(evaluation=probe, activations=ActivationQuant(clipping="percentile"))),
        )
    )
    rows.append(
        _timing_row(
            "clipping -> minmax, probe 1 image",
            explorer.evaluate(_config(evaluation=no_probe)),
        )
    )
    rows.append(
        _timing_row(
            "clipping -> mse, probe 1 image",
            explorer.evaluate(_config(evaluation=no_probe, activations=ActivationQuant(clipping="mse"))),
        )
    )
    rows.append("")
    rows.append(
        f"FP32 eager forward, decoded images, batch 64: {_fp32_ms_per_image(explorer):.1f} ms/image "
        f"({torch.get_num_threads()} threads)"
    )
    return rows


CLIPS = ("percentile", "mse", "kl", "minmax")


def _backend_config(backend: str, **changes: Any) -> QuantConfig:
    return _config(evaluation=Evaluation(batch_size=64, layer_error_samples=128, backend=backend, **_NO_RUNTIME), **changes)


def _backend_row(label: str, r: Result, first: bool) -> str:
    t, m = r.timing, r.metrics
    cal_fp32 = (t["calibration_s"] if not t["calibration_cached"] else 0.0) + (t["fp32_evaluation_s"] if first else 0.0)
    known = cal_fp32 + t["plan_s"] + t["export_s"] + t["session_s"] + t["evaluation_s"] + t["layer_error_s"]
    return (
        f"| {label} | {r.environment['evaluation_backend']} | {cal_fp32:.1f} | {t['plan_s']:.2f} | {t['export_s']:.2f} "
        f"| {t['session_s']:.2f} | {t['evaluation_s']:.2f} | {t['layer_error_s']:.2f} | {t['total_s'] - known:.2f} "
        f"| **{t['total_s']:.2f}** | {m['quant_top1']:.2%} | {m['agreement']:.2%} |"
    )


def _backend_rows(rounds: int = 2) -> list[str]:
    """First evaluate and re-evaluations after a clipping change with both backends, on one fresh Explorer."""
    explorer = Explorer("efficientnet_lite0", DATASET)
    rows = [
        f"Load average at start: {os.getloadavg()[0]:.2f}. Probe (per-layer SQNR) on 128 images; evaluation on 372.",
        "",
        "| step | backend | calibration + FP32 s | plan s | export s | session s | quantized forward s | probe s "
        "| other s | total s | top-1 | agreement |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    first = explorer.evaluate(_backend_config("torch"))  # calibration and the FP32 reference, shared by both backends
    rows.append(_backend_row("first evaluate, W8A8 minmax (calibrates, decodes JPEGs)", first, True))
    r = explorer.evaluate(_backend_config("onnxruntime"))
    rows.append(_backend_row("first onnxruntime evaluate, W8A8 minmax (export + sessions)", r, False))
    totals: dict[str, list[float]] = {"torch": [], "onnxruntime": []}
    for round_ in range(rounds):
        for clip in CLIPS:
            for backend in ("torch", "onnxruntime") if round_ == 0 else ("onnxruntime",):
                r = explorer.evaluate(_backend_config(backend, activations=ActivationQuant(clipping=clip)))
                totals[backend].append(r.timing["total_s"])
                rows.append(_backend_row(f"clipping -> {clip} (round {round_ + 1})", r, False))
                print(f"  backends: {clip} {backend} {r.timing['total_s']:.1f} s", file=sys.stderr, flush=True)
    r = explorer.evaluate(_backend_config("onnxruntime", weights=WeightQuant(clipping="mse")))
    rows.append(_backend_row("weight clipping -> mse (new weights: a session, no export)", r, False))
    rows += [
        "",
        f"Re-evaluation after an activation clipping change, median: torch {statistics.median(totals['torch']):.1f} s "
        f"(n={len(totals['torch'])}), onnxruntime {statistics.median(totals['onnxruntime']):.2f} s "
        f"(n={len(totals['onnxruntime'])}, min {min(totals['onnxruntime']):.2f}, max {max(totals['onnxruntime']):.2f}). "
        f"Load average at end: {os.getloadavg()[0]:.2f}.",
        "",
        *_same_numbers_rows(explorer),
    ]
    return rows


def _quantized_logits(explorer: Explorer, config: QuantConfig, onednn: bool = True) -> torch.Tensor:
    indices = explorer.evaluation_indices(config.evaluation)
    if config.evaluation.backend == "onnxruntime":
        run = explorer.backend("onnxruntime").evaluate(
            prepared=explorer.prepared(), plan=explorer.plan(config), dataset=explorer.dataset.evaluation, indices=indices,
            probe_indices=[], batch_size=config.evaluation.batch_size, model=explorer.model,
            example=explorer.example_input(), device=torch.device("cpu"))
        return run.logits
    qgm = explorer.quantized_model(config)
    torch.backends.mkldnn.enabled = onednn
    try:
        with torch.inference_mode():
            return torch.cat([qgm(x) for x, _ in batches(explorer.dataset.evaluation, indices, config.evaluation.batch_size)])
    finally:
        torch.backends.mkldnn.enabled = True


def _same_numbers_rows(explorer: Explorer) -> list[str]:
    """Top-1 and logits of torch vs onnxruntime, next to torch vs torch with its other convolution kernel.

    Both backends run the same float32 fake-quantize ops; the convolutions sum in another order.
    PyTorch's own native convolution (oneDNN off) sums in yet another order: how far that moves the
    numbers is the yardstick for how far onnxruntime may.
    """
    labels = explorer.float_reference(_backend_config("torch").evaluation).labels
    assert labels is not None
    rows = [
        "| activation clipping | top-1 torch | top-1 onnxruntime | top-1 torch, native conv (oneDNN off) "
        "| decisions differing: torch vs onnxruntime | torch vs torch native conv | max abs logit diff: torch vs onnxruntime "
        "| torch vs torch native conv |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for clip in CLIPS:
        config = _backend_config("torch", activations=ActivationQuant(clipping=clip))
        ref = _quantized_logits(explorer, config)
        native = _quantized_logits(explorer, config, onednn=False)
        fast = _quantized_logits(explorer, _backend_config("onnxruntime", activations=ActivationQuant(clipping=clip)))

        top1 = [f"{float((lg.argmax(1) == labels).float().mean()):.2%}" for lg in (ref, fast, native)]
        flips = [int((ref.argmax(1) != lg.argmax(1)).sum()) for lg in (fast, native)]
        rows.append(
            f"| {clip} | {' | '.join(top1)} | {flips[0]} | {flips[1]} "
            f"| {float((ref - fast).abs().max()):.3f} | {float((ref - native).abs().max()):.3f} |"
        )
    return rows


def _random_rgb(*, transform: Any = None) -> Dataset:
    del transform
    x = torch.randn(16, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    return Dataset(
        name="bench_random_rgb",
        description="random 64x64 RGB tensors",
        calibration_pool=TensorSamples(x[:8]),
        evaluation=TensorSamples(x[8:]),
        calibration_labels=None,
        evaluation_labels=None,
        num_classes=0,
        class_names=None,
        input_shape=(3, 64, 64),
    )


def _torchvision_rows() -> list[str]:
    register_dataset("bench_random_rgb", _random_rgb, "random 64x64 RGB tensors")
    rows = [
        "| model (random weights) | prepare s | conv+linear | other units | float ops | BN left | evaluate s | agreement |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in CLASSIFIERS:
        spec = {"kind": "torchvision", "name": name, "weights": "random"}
        explorer = Explorer(spec, "bench_random_rgb")
        start = time.perf_counter()
        prepared = explorer.prepared()
        prepare_s = time.perf_counter() - start
        weights = len(prepared.layer_names())
        kinds: dict[str, int] = {}
        for u in prepared.units:
            if not u.has_weights:
                kinds[u.kind] = kinds.get(u.kind, 0) + 1
        floats: dict[str, int] = {}
        for p in prepared.points:
            if p.producer.startswith("float:"):
                op = p.producer.split(":", 1)[1]
                floats[op] = floats.get(op, 0) + 1
        bn_left = sum(isinstance(m, torch.nn.BatchNorm2d) for m in prepared.graph_module.modules())
        config = QuantConfig(
            model=spec,
            dataset="bench_random_rgb",
            calibration=Calibration(num_samples=8, batch_size=8),
            evaluation=Evaluation(batch_size=8, layer_error_samples=2, **_NO_RUNTIME),
        )
        start = time.perf_counter()
        r = explorer.evaluate(config)
        rows.append(
            f"| {name} | {prepare_s:.2f} | {weights} | {kinds} | {floats or '-'} | {bn_left} "
            f"| {time.perf_counter() - start:.1f} | {r.metrics['agreement']:.0%} |"
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one accuracy row only")
    parser.add_argument("--no-accuracy", action="store_true", help="skip the accuracy table")
    parser.add_argument("--no-torchvision", action="store_true", help="skip the torchvision table")
    parser.add_argument("--no-backends", action="store_true", help="skip the torch vs onnxruntime backend table")
    parser.add_argument("--no-timing", action="store_true", help="skip the PyTorch timing table")
    args = parser.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU\n")
    if not SAMPLES.is_dir():
        print(f"EfficientNet-Lite0: skipped, {SAMPLES} not present (the shared ImageNet samples)\n")
    else:
        if not args.no_accuracy:
            print("## EfficientNet-Lite0 on the shared ImageNet samples: calibrate 128, evaluate 372\n")
            explorer = Explorer("efficientnet_lite0", DATASET)
            print("\n".join(_accuracy_rows(explorer, args.quick)) + "\n")
        if not args.no_timing:
            print("## EfficientNet-Lite0: where the time goes (PyTorch eager, CPU)\n")
            print("\n".join(_timing_rows()) + "\n")
        if not args.no_backends and "backend" in Evaluation.__dataclass_fields__:
            print("## EfficientNet-Lite0: evaluation.backend torch vs onnxruntime (same simulated model, CPU)\n")
            print("\n".join(_backend_rows()) + "\n")
    if not args.no_torchvision:
        print("## torchvision classifiers, random weights, random 64x64 inputs (graph checks only)\n")
        print("\n".join(_torchvision_rows()))


if __name__ == "__main__":
    main()
