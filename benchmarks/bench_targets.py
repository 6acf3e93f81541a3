"""Deployment targets side by side: onnxruntime, LiteRT and PyTorch's own PTQ against ptq_core's simulation.

    .venv/bin/python benchmarks/bench_targets.py [--model digits_cnn] [--threads 1] [--rounds 15] [--json out.json]

EfficientNet-Lite0 on ../shared/data/imagenet-samples (128 calibration, 372 evaluation images; digits
with ``--model digits_cnn``), W8A8 per-channel weights, min-max activations. Three tables:

1. Runtimes: ``Explorer.evaluate`` with ``evaluation.targets = ["litert", "pt2e"]``, the Result's
   ``runtimes`` rows: top-1, agreement with FP32, agreement and largest logit difference with the
   simulation, file size, fallbacks.
2. Exactness: the float simulation and the integer-exact simulation (``evaluation.arithmetic =
   "integer"``) against onnxruntime on every evaluation sample.
3. Latency at batch 1, FP32 and INT8 in all three runtimes in one interleaved run (each round times
   every model in turn, so load on the machine hits them alike; median over rounds): PyTorch eager FP32
   and PT2E INT8 compiled by Inductor (freezing, oneDNN int8), onnxruntime FP32 and the QDQ export,
   LiteRT FP32 and the full-integer export (XNNPACK). Same thread count everywhere.

Goals (issue 13): LiteRT top-1 within 0.5 points of the simulation and simulation-vs-LiteRT agreement
>= 99%; integer-exact simulation vs onnxruntime on 100% of samples with max |logit diff| 0.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from ptq_core.calibration import load_batch  # noqa: E402
from ptq_core.config import QuantConfig  # noqa: E402
from ptq_core.machine import machine_line  # noqa: E402
from ptq_core.onnx.export import export_float_onnx, export_onnx  # noqa: E402
from ptq_core.onnx.session import input_feed, make_runtime_session  # noqa: E402
from ptq_core.pipeline import Explorer  # noqa: E402

SAMPLES = ROOT.parent / "shared/data/imagenet-samples"
DATASET = {"kind": "image_folder", "path": str(SAMPLES), "num_calibration": 128, "seed": 0}


def config(model: str, **evaluation: Any) -> QuantConfig:
    spec: dict[str, Any] = {"model": model, "weights": {"bits": 8, "granularity": "per_channel"},
                            "evaluation": {"batch_size": 64, "layer_error_samples": 1, **evaluation}}
    if model == "efficientnet_lite0":
        spec["dataset"] = DATASET
    return QuantConfig.from_dict(spec)


def pct(v: float | None) -> str:
    return "—" if v is None else f"{100 * v:.2f}%"


def runtimes_table(explorer: Explorer, model: str) -> list[dict[str, Any]]:
    start = time.perf_counter()
    result = explorer.evaluate(config(model, targets=["litert", "pt2e"]), layer_errors=False)
    print(f"### Runtimes (one `Explorer.evaluate` with both targets, {time.perf_counter() - start:.0f} s wall)\n")
    print("| runtime | version | kind | top-1 | agreement with FP32 | with the simulation | max abs logit diff | file bytes "
          "| fallbacks | batch-1 ms (threads) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for row in result.runtimes:
        if not row["available"]:
            print(f"| {row['name']} | {row['version']} | not run | {row['reason']} ||||||")
            continue
        diff = "—" if row["max_abs_diff"] is None else f"{row['max_abs_diff']:.3g}"
        ms = row["latency_ms"].get("1")
        lat = "—" if ms is None else f"{ms:.2f} ({row['threads']})" + (" simulated" if row["kind"] == "simulated" else "")
        print(f"| {row['name']} | {row['version']} | {row['kind']} | {pct(row['top1'])} | {pct(row['agreement'])} | "
              f"{pct(row['sim_agreement'])} | {diff} | {row['file_bytes'] or '—'} | {len(row['fallbacks'])} | {lat} |")
    print()
    for row in result.runtimes:
        for note in row["notes"]:
            print(f"- {row['name']}: {note}")
    print()
    return list(result.runtimes)


def exactness_table(explorer: Explorer, model: str) -> list[dict[str, Any]]:
    print("### Simulation against onnxruntime, every evaluation sample\n")
    print("| arithmetic | top-1 simulation | top-1 onnxruntime | same top-1 | max abs logit diff | evaluation s |")
    print("|---|---|---|---|---|---|")
    out = []
    units = explorer.prepared().units
    # where exactness ends: layers onnxruntime runs in float (kept in float here) sit between DQ and Q
    kept = [units[0].name, units[-1].name]
    cases = [("float", "float", {}), ("integer", "integer", {}),
             (f"integer, {' and '.join(kept)} kept in float", "integer", {"keep_float": kept})]
    for label, arithmetic, extra in cases:
        r = explorer.evaluate(config(model, arithmetic=arithmetic).replace(**{"keep_float": tuple(extra.get("keep_float", ()))}),
                              layer_errors=False)
        m = r.metrics
        print(f"| {label} | {pct(m['quant_top1'])} | {pct(m['runtime_top1'])} | "
              f"{m['runtime_matching_samples']}/{m['num_eval_samples']} | {m['runtime_max_abs_diff']:.4g} | "
              f"{r.timing['evaluation_s']:.1f} |")
        out.append({"arithmetic": label, **{k: m[k] for k in ("quant_top1", "runtime_top1", "runtime_matching_samples",
                                                                   "num_eval_samples", "runtime_max_abs_diff")}})
    print()
    return out


def latency_table(explorer: Explorer, model: str, threads: int, rounds: int) -> dict[str, float]:
    """Batch-1 latency of six models, interleaved round by round."""
    from ptq_core.pt2e import quantize_pt2e
    from ptq_core.tflite import TfliteRunner, export_tflite

    cfg = config(model)
    prepared, plan = explorer.prepared_for(cfg), explorer.plan(cfg)
    x, _ = load_batch(explorer.dataset.evaluation, [0])
    calib, _ = explorer.calibration_indices(cfg.calibration)
    torch.set_num_threads(threads)
    folder = Path(tempfile.mkdtemp(prefix="bench_targets_"))
    export_onnx(prepared, plan, folder / "q.onnx")
    export_float_onnx(prepared, folder / "f.onnx")
    export_tflite(prepared, plan, folder / "q.tflite", example=x)
    os.environ.setdefault("LITERT_TORCH_SHOW_PROGRESS", "n")
    import litert_torch

    litert_torch.convert(explorer.model.eval(), (x,)).export(str(folder / "f.tflite"))
    ort_q, ort_f = (make_runtime_session(folder / n, threads=threads) for n in ("q.onnx", "f.onnx"))
    lite_q, lite_f = (TfliteRunner(folder / n, threads=threads) for n in ("q.tflite", "f.tflite"))
    xq, xf = lite_q.encode(x), lite_f.encode(x)
    start = time.perf_counter()
    pt2e = quantize_pt2e(explorer.model, example=x, calib_dataset=explorer.dataset.calibration_pool,
                         calib_indices=calib, batch_size=32)
    import torch._inductor.config as inductor_config

    with inductor_config.patch(freezing=True), torch.no_grad():
        compiled = torch.compile(pt2e.graph_module, dynamic=False)
        compiled(x)
    pt2e_s = time.perf_counter() - start
    model_fp32 = explorer.model.eval()
    feed_q, feed_f = input_feed(ort_q, x), input_feed(ort_f, x)
    runs: dict[str, Callable[[], Any]] = {
        "PyTorch eager FP32": lambda: model_fp32(x),
        "PyTorch PT2E INT8 (Inductor)": lambda: compiled(x),
        "onnxruntime FP32": lambda: ort_f.run(None, feed_f),
        "onnxruntime INT8 (QDQ export)": lambda: ort_q.run(None, feed_q),
        "LiteRT FP32 (XNNPACK)": lambda: lite_f.invoke(xf),
        "LiteRT INT8 (ptq_core's scales)": lambda: lite_q.invoke(xq),
    }
    times: dict[str, list[float]] = {name: [] for name in runs}
    with inductor_config.patch(freezing=True), torch.no_grad():
        for fn in runs.values():  # warm-up
            for _ in range(3):
                fn()
        for _ in range(rounds):
            for name, fn in runs.items():
                t = time.perf_counter()
                for _ in range(5):
                    fn()
                times[name].append((time.perf_counter() - t) / 5 * 1e3)
    load = os.getloadavg()[0]
    print(f"### Latency, batch 1, {threads} thread(s), {rounds} interleaved rounds of 5 calls "
          f"(load average {load:.1f} at the end; PT2E export + calibration + compile {pt2e_s:.0f} s)\n")
    print("| model | median ms | min ms | vs its runtime's FP32 |")
    print("|---|---|---|---|")
    med = {name: statistics.median(v) for name, v in times.items()}
    base = {"PyTorch": "PyTorch eager FP32", "onnxruntime": "onnxruntime FP32", "LiteRT": "LiteRT FP32 (XNNPACK)"}
    for name, v in times.items():
        ref = med[base[name.split()[0]]]
        print(f"| {name} | {med[name]:.2f} | {min(v):.2f} | {ref / med[name]:.2f}x |")
    print()
    return med


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="efficientnet_lite0", choices=("efficientnet_lite0", "digits_cnn"))
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--no-latency", action="store_true")
    parser.add_argument("--json", default=None)
    args = parser.parse_args()
    if args.model == "efficientnet_lite0" and not SAMPLES.is_dir():
        sys.exit(f"{SAMPLES} not found: run with --model digits_cnn")
    torch.set_num_threads(args.threads)
    print(f"machine: {machine_line()}; torch {torch.__version__}; {args.threads} thread(s); "
          f"{time.strftime('%Y-%m-%d')}; load average {os.getloadavg()[0]:.1f}\n")
    explorer = Explorer.for_config(config(args.model))
    out: dict[str, Any] = {"runtimes": runtimes_table(explorer, args.model),
                           "exactness": exactness_table(explorer, args.model)}
    if not args.no_latency:
        out["latency_ms"] = latency_table(explorer, args.model, args.threads, args.rounds)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
