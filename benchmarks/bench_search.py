"""Sensitivity of every layer and a mixed-precision search to "top-1 drop <= 1 point", timed, on digits and EfficientNet-Lite0.

    .venv/bin/python benchmarks/bench_search.py [--models digits,efficientnet] [--runner serial|ray] [--weight-bits 8,6,4]
        [--activation-bits 8,16] [--rounding gptq|nearest]

For each model: a sensitivity run over every unit (each quantized alone and spared: two
evaluations per unit), then :func:`ptq_core.search.search` to a top-1 drop of at most one point,
whose answer is written as a config and verified by ``python -m ptq_core run`` in a fresh process
on the same images. Prints the time of each, the number of evaluations, the answer's weight bytes
against the all-INT8 model's, its verified drop, the ten most sensitive layers and the frontier.

EfficientNet-Lite0 needs ../shared/data/imagenet-samples (skipped with a message when absent):
calibrate on the 128-image pool, evaluate the other 372, onnxruntime backend, per-channel
symmetric weights clipped at the 99.99th percentile, activations at the 99.999th (the W8A8
configuration that meets the 1-point bar, benchmarks/RESULTS.md); by default with GPTQ rounding from FP32 inputs
(``algorithms.gptq.inputs = "float"``: each layer's rounding computed once per width and reused by every
evaluation) and activation points allowed to stay in float (``--activation-bits 8,16``). Goals (issue 11): sensitivity
<= 10 min, search <= 20 min end to end with weights <= 60% of all-INT8 (goal 45%); digits under a
minute each.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
SAMPLES = ROOT.parent / "shared" / "data" / "imagenet-samples"

import torch  # noqa: E402

from ptq_core.allocator import tune_malloc  # noqa: E402
from ptq_core.config import QuantConfig  # noqa: E402
from ptq_core.fanout import make_runner  # noqa: E402
from ptq_core.pipeline import Explorer  # noqa: E402
from ptq_core.search import Candidates, Target, search  # noqa: E402
from ptq_core.sensitivity import sensitivity  # noqa: E402


def _config(model: str, rounding: str = "nearest") -> QuantConfig:
    algorithms = {"rounding": rounding, "gptq": {"inputs": "float"}}
    if model == "efficientnet":
        data = {"kind": "image_folder", "path": str(SAMPLES), "num_calibration": 128, "seed": 0, "max_images": None}
        return QuantConfig.from_dict({
            "model": "efficientnet_lite0", "dataset": data, "calibration": {"num_samples": 128},
            "weights": {"clipping": "percentile", "percentile": 99.99},
            "activations": {"clipping": "percentile", "percentile": 99.999},
            "evaluation": {"runtime": None, "backend": "onnxruntime"}, "algorithms": algorithms,
        })
    return QuantConfig.from_dict({"evaluation": {"runtime": None, "backend": "onnxruntime"}, "algorithms": algorithms})


def _verify(best: dict[str, Any]) -> dict[str, Any]:
    """The answer run from scratch by the CLI (a fresh process, as a user would)."""
    with tempfile.TemporaryDirectory(prefix="ptq_bench_search_") as tmp:
        cfg, out = Path(tmp) / "best.json", Path(tmp) / "result.json"
        cfg.write_text(json.dumps(best))
        proc = subprocess.run([sys.executable, "-m", "ptq_core", "run", "--config", str(cfg), "--output", str(out), "--quiet"],
                              cwd=ROOT, capture_output=True, text=True, timeout=1800)
        if proc.returncode != 0:
            raise SystemExit(f"the CLI could not run the answer: {proc.stderr[-2000:]}")
        return json.loads(out.read_text())


def bench(model: str, runner_name: str, widths: tuple[int, ...], acts: tuple[int, ...], rounding: str,
          narrow_scheme: str) -> list[str]:
    config = _config(model, rounding)
    explorer = Explorer(config.model, config.dataset)
    runner = make_runner(explorer, runner_name)
    explorer.evaluate(config, layer_errors=False, runtime_check=False)  # calibration and FP32 reference, as a session has
    start = time.perf_counter()
    report = sensitivity(explorer, config, runner=runner, candidate_bits=widths)
    sens_s = time.perf_counter() - start
    measured = sum(1 for r in report.layers if r.only is not None)
    lines = [f"### {'EfficientNet-Lite0' if model == 'efficientnet' else 'digits CNN'} ({runner_name} runner)", "",
             f"Sensitivity: {measured} units, {2 * measured + 1} evaluations in {sens_s:.0f} s "
             f"({'ok' if sens_s <= (600 if model == 'efficientnet' else 60) else 'over'}: goal "
             f"{'10 min' if model == 'efficientnet' else '1 min'}). Whole model quantized: agreement "
             f"{100 * report.quantized.agreement:.2f}%, top-1 {100 * (report.quantized.quant_top1 or 0):.2f}% "
             f"(FP32 {100 * (report.fp32_top1 or 0):.2f}%).", "",
             "| rank | layer | kind | weights | only this layer: agreement / KL | all but this layer: agreement / KL | proxy dB | hints |",
             "|---|---|---|---:|---|---|---:|---|"]
    for i, r in enumerate(report.layers[:10], start=1):
        only = f"{100 * r.only.agreement:.2f}% / {r.only.kl_divergence:.4f}" if r.only else "–"
        spared = f"{100 * r.all_but.agreement:.2f}% / {r.all_but.kl_divergence:.4f}" if r.all_but else "–"
        hint = "; ".join(h.split(":")[0] for h in r.hints) or ""
        proxy = f"{r.proxy_db:.1f}" if r.proxy_db is not None else "–"
        lines.append(f"| {i} | {r.name} | {r.kind} | {r.parameters:,} | {only} | {spared} | {proxy} | {hint} |")

    start = time.perf_counter()
    result = search(explorer, config, Target(max_drop=1.0), Candidates(widths, activation_bits=acts, narrow_scheme=narrow_scheme),
                    runner=runner)
    search_s = time.perf_counter() - start
    start = time.perf_counter()
    cli = _verify(result.best.config)
    verify_s = time.perf_counter() - start
    m = cli["metrics"]
    drop = 100 * (m["fp32_top1"] - m["quant_top1"])
    share = result.best.weight_bytes / result.int8_weight_bytes
    total = sens_s + search_s + verify_s
    lines += ["", f"Search to top-1 drop <= 1 point, widths {','.join(map(str, widths))}, activations "
              f"{','.join(map(str, acts))}, rounding {rounding}, narrow widths {narrow_scheme}: {len(result.points)} evaluations in "
              f"{search_s:.0f} s; {result.message}.", "",
              f"Verified by `python -m ptq_core run` in a fresh process ({verify_s:.0f} s): top-1 {100 * m['quant_top1']:.2f}% "
              f"vs FP32 {100 * m['fp32_top1']:.2f}% = drop {drop:.2f} points ({'met' if drop <= 1.0 else 'NOT met'}); weights "
              f"{result.best.weight_bytes:,} bytes = {100 * share:.1f}% of all-INT8 "
              f"({'goal met' if share <= 0.45 else 'ok' if share <= 0.60 else 'over'}: <= 60%, goal 45%); "
              f"{len(result.best.config['keep_float_activations'])} activation points in float. Sensitivity + "
              f"search + verification {total / 60:.1f} min ({'ok' if total <= 1200 else 'over'}: <= 20 min).", "",
              "Frontier (every evaluated point no other beats on both size and agreement):", "",
              "| configuration | weight bytes | % of all-INT8 | agreement | top-1 | meets |", "|---|---:|---:|---:|---:|---|"]
    for p in sorted(result.frontier, key=lambda p: p.weight_bytes):
        top1 = f"{100 * p.quant_top1:.2f}%" if p.quant_top1 is not None else "–"
        lines.append(f"| {p.label} | {p.weight_bytes:,} | {100 * p.weight_bytes / result.int8_weight_bytes:.1f}% | "
                     f"{100 * p.agreement:.2f}% | {top1} | {'yes' if p.meets else 'no'} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="digits,efficientnet")
    parser.add_argument("--runner", default="serial", choices=["serial", "ray"])
    parser.add_argument("--weight-bits", default="8,6,5,4")
    parser.add_argument("--narrow-scheme", default="asymmetric", choices=["asymmetric", "symmetric", "keep"],
                        help="scheme of the widths below 8 (asymmetric: onnxruntime; keep (symmetric): LiteRT/TFLite too)")
    parser.add_argument("--activation-bits", default="8,16", help="16: an activation point may stay in float")
    parser.add_argument("--rounding", default="gptq", choices=["gptq", "nearest"],
                        help="gptq: GPTQ from FP32 inputs (algorithms.gptq.inputs float) on every quantized layer")
    args = parser.parse_args()
    tune_malloc()
    torch.set_num_threads(1)
    widths = tuple(int(b) for b in args.weight_bits.split(","))
    models = [m for m in args.models.split(",") if m]
    if "efficientnet" in models and not SAMPLES.is_dir():
        print(f"skipping EfficientNet-Lite0: {SAMPLES} is absent", file=sys.stderr)
        models.remove("efficientnet")
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    print(f"Machine: {cpu}, {os.cpu_count()} cores; load average {os.getloadavg()[0]:.2f}; {time.strftime('%Y-%m-%d %H:%M')}\n")
    for model in models:
        acts = tuple(int(b) for b in args.activation_bits.split(","))
        print("\n".join(bench(model, args.runner, widths, acts, args.rounding, args.narrow_scheme)) + "\n", flush=True)


if __name__ == "__main__":
    main()
