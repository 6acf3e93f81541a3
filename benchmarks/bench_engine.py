"""Engine speed: calibration once, then what-ifs from stored statistics.

    .venv/bin/python benchmarks/bench_engine.py [--quick]

For the digits CNN (real data) and torchvision's resnet18 (RANDOM weights on RANDOM images:
only the timings mean anything) it prints, in a markdown table:
  * the plain FP32 forward time over the calibration subset (the reference cost),
  * calibration time (one pass collecting statistics on every activation point),
  * the first evaluate (calibration + evaluation),
  * re-evaluations after changing only the clipping method or the bit width (no calibration),
    split into plan time (ranges from statistics) and evaluation time (the model re-runs).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from ptq_core.calibration import batches  # noqa: E402
from ptq_core.config import QuantConfig, set_field  # noqa: E402
from ptq_core.data import Dataset, register_dataset  # noqa: E402
from ptq_core.models import ModelEntry, register_model  # noqa: E402
from ptq_core.pipeline import Explorer  # noqa: E402


def _random_images(n_cal: int, n_eval: int) -> Dataset:
    g = torch.Generator().manual_seed(0)
    cal = torch.randn(n_cal, 3, 224, 224, generator=g)
    ev = torch.randn(n_eval, 3, 224, 224, generator=g)
    cal_y = torch.randint(0, 1000, (n_cal,), generator=g)
    ev_y = torch.randint(0, 1000, (n_eval,), generator=g)
    return Dataset(
        name="random_images", description="random N(0,1) images: timings only",
        calibration_pool=torch.utils.data.TensorDataset(cal, cal_y),
        evaluation=torch.utils.data.TensorDataset(ev, ev_y),
        calibration_labels=cal_y, evaluation_labels=ev_y, num_classes=1000, class_names=None,
        input_shape=(3, 224, 224), info={"random": True},
    )


def _fp32_forward_s(explorer: Explorer, config: QuantConfig) -> float:
    indices, _ = explorer.calibration_indices(config.calibration)
    start = time.perf_counter()
    with torch.inference_mode():
        for x, _ in batches(explorer.dataset.calibration_pool, indices, config.calibration.batch_size):
            explorer.model(x)
    return time.perf_counter() - start


def bench(label: str, explorer: Explorer, config: QuantConfig) -> list[str]:
    rows = []
    fp32_s = _fp32_forward_s(explorer, config)
    first = explorer.evaluate(config)
    cal_s = first.timing["calibration_s"]
    rows.append(f"| {label} | FP32 forward over {first.dataset['num_calibration_samples']} calibration samples | {fp32_s:.3f} | |")
    rows.append(f"| {label} | calibration (statistics on every activation point) | {cal_s:.3f} | {cal_s / fp32_s:.2f}x FP32 forward |")
    rows.append(f"| {label} | first evaluate, total | {first.timing['total_s']:.3f} | calibration + evaluation |")
    rows.append(f"| {label} | evaluation of {first.metrics['num_eval_samples']} samples | {first.timing['evaluation_s']:.3f} | |")
    for field, value in (("activations.clipping", "percentile"), ("activations.clipping", "mse"),
                         ("activations.clipping", "kl"), ("weights.bits", 4), ("weights.clipping", "mse")):
        cfg = set_field(config, field, value)
        r = explorer.evaluate(cfg)
        assert r.timing["calibration_cached"], "a what-if must not recalibrate"
        rows.append(
            f"| {label} | re-evaluate after {field}={value} | {r.timing['total_s']:.3f} | "
            f"plan {r.timing['plan_s'] * 1e3:.0f} ms from stored statistics, no calibration |"
        )
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer resnet18 images")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    rows = ["| model | step | seconds | note |", "|---|---|---|---|"]
    digits = QuantConfig()
    rows += bench("digits_cnn", Explorer("digits_cnn", "digits"), digits)

    import torchvision

    n_cal, n_eval = (16, 16) if args.quick else (64, 64)
    register_dataset("random_images_224", lambda **_: _random_images(n_cal, n_eval), "random images (benchmark only)")
    register_model(ModelEntry(
        name="resnet18_random", description="torchvision resnet18, RANDOM weights (benchmark only)",
        default_dataset="random_images_224", build=lambda: torchvision.models.resnet18().eval(), pretrained=False,
    ))
    cfg = QuantConfig.from_dict({
        "model": "resnet18_random", "dataset": "random_images_224",
        "calibration": {"num_samples": n_cal, "batch_size": 16},
        "evaluation": {"batch_size": 16, "layer_error_samples": 16},
    })
    rows += bench("resnet18 (random weights, random images)", Explorer("resnet18_random", "random_images_224"), cfg)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    print("\n".join(rows))


if __name__ == "__main__":
    main()
