"""Interactivity of the dashboard on real models: load, and what-ifs from control change to numbers on screen.

    .venv/bin/python benchmarks/bench_interactive.py [--models digits,efficientnet] [--repeats 2]

Drives the real app (``dashboard/app.py``) with Streamlit's AppTest, so every number goes through
the code path a browser session uses: the sidebar, ``dashboard.resources`` (result store, first
answer on a subset, the rest when idle) and the engine. Each scenario runs in a fresh process
(``--child``): a cold load starts with an empty disk cache, a warm load with the cache the cold
one left (a server restart), what-ifs on a loaded model.

What is timed, from the control change (or the Load button):

* **first answer**: the page is drawn with numbers for the new config (a first answer on a
  subset when the whole evaluation would take longer than ``FIRST_ANSWER_S``);
* **complete**: the page is drawn with the whole evaluation;
* **runtime check**: the integer runtime check, which runs after that, when the user is idle.

All three are read from ``dashboard.resources.finish_pending``, which the app calls once a page
is drawn. Also printed: time and peak memory of one evaluation with the per-layer probe (what the
Layer error page asks for) on each backend, the engine alone in a fresh process, and statistics
collection against a plain FP32 forward over the calibration images. EfficientNet-Lite0 needs ../shared/data/imagenet-samples (skipped with a message when
absent): calibrate 128, evaluate 372, dashboard defaults (onnxruntime backend, runtime check on).
Prints markdown tables; the machine, load average and date go with them.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from ptq_core.machine import machine_line  # noqa: E402

SAMPLES = ROOT.parent / "shared" / "data" / "imagenet-samples"
APP = ROOT / "dashboard" / "app.py"
GOALS = {"first": (2.0, 1.0), "complete": (5.0, 3.0), "cold": (30.0, 15.0), "warm": (5.0, 5.0)}  # (must, goal) seconds
DIGITS_GOAL_S = 1.0
STATS_ROUNDS = 5  # interleaved pairs (plain forward, statistics) for the statistics ratio


# -- one scenario, in a child process --------------------------------------------------------------
class _Clock:
    """Records when the app finished drawing a page, and what it was still waiting for then."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.marks: list[tuple[float, list[str]]] = []

    def reset(self) -> None:
        self.start = time.perf_counter()
        self.marks = []

    def install(self) -> None:
        from dashboard import resources

        original = resources.finish_pending

        def finish_pending() -> None:
            self.marks.append((time.perf_counter() - self.start, resources.pending_parts()))
            original()

        resources.finish_pending = finish_pending  # type: ignore[assignment]

    def times(self, total: float) -> dict[str, float | None]:
        """first answer drawn, complete numbers drawn, and (when it was pending) the runtime check drawn."""
        marks = self.marks or [(total, [])]
        first = marks[0][0]
        complete = next((t for t, parts in marks if "main" not in parts), total)
        checked = any("runtime" in parts for _, parts in marks)
        runtime = next((t for t, parts in marks if not parts), None) if checked else None
        return {"first": first, "complete": complete, "runtime": runtime, "total": total}


def _app(clock: _Clock) -> Any:
    from streamlit.testing.v1 import AppTest

    clock.install()
    return AppTest.from_file(str(APP), default_timeout=600)


def _run(at: Any, clock: _Clock) -> dict[str, float | None]:
    clock.reset()
    at.run()
    total = time.perf_counter() - clock.start
    problems = [str(e.value) for e in at.exception] + [str(e.value) for e in at.error]
    if problems:
        raise SystemExit(f"the app showed a problem: {problems[:2]}")
    return clock.times(total)


def _load_efficientnet(at: Any) -> None:
    at.radio(key="src_m_from").set_value("registered")
    at.selectbox(key="src_m_name").set_value("efficientnet_lite0")
    at.radio(key="src_d_from").set_value("path")
    at.text_input(key="src_d_path").set_value(str(SAMPLES))
    at.button(key="src_load").click()


def _what_ifs(model: str) -> list[tuple[str, Any]]:
    """(what changes, how): each to a value not seen before in this process."""
    layer = "_blocks.3._project_conv" if model == "efficientnet" else "conv2"
    ov_layer = "_blocks.5._expand_conv" if model == "efficientnet" else "conv3"

    def keep_float(at: Any) -> None:
        at.multiselect(key="sb_keep_float").select(layer)

    def override(at: Any) -> None:
        at.selectbox(key="sb_ov_layer").set_value(ov_layer)
        at.selectbox(key="sb_ov_w_bits").set_value(6)
        at.button(key="sb_ov_set").click()

    return [
        ("activation clipping min-max -> percentile", lambda at: at.selectbox(key="sb_a_clipping").set_value("percentile")),
        ("percentile 99.99 -> 99.9", lambda at: at.number_input(key="sb_a_percentile").set_value(99.9)),
        ("weight bits 8 -> 4", lambda at: at.selectbox(key="sb_w_bits").set_value(4)),
        ("weight granularity per-channel -> per-tensor", lambda at: at.selectbox(key="sb_w_granularity").set_value("per_tensor")),
        ("activation scheme asymmetric -> symmetric", lambda at: at.radio(key="sb_a_scheme").set_value("symmetric")),
        ("activation bits 8 -> 6", lambda at: at.selectbox(key="sb_a_bits").set_value(6)),
        (f"keep {layer} in float", keep_float),
        (f"override: {ov_layer} weights at 6 bits", override),
    ]


def child(scenario: str, model: str) -> dict[str, Any]:
    import torch

    from dashboard.resources import configure_torch

    # The dashboard's process settings (one torch thread, so batches run on one-thread workers side by side; the tuned
    # allocator), which the app applies on its first run: the probe and stats children never run it.
    configure_torch()
    clock = _Clock()
    at = _app(clock)
    out: dict[str, Any] = {"scenario": scenario, "model": model}
    if scenario in ("cold", "warm"):
        first = _run(at, clock)  # the default page: digits
        if model == "digits":
            out["load"] = first
        else:
            _load_efficientnet(at)
            out["load"] = _run(at, clock)
    elif scenario == "what-ifs":
        _run(at, clock)
        if model == "efficientnet":
            _load_efficientnet(at)
            _run(at, clock)
        rows = []
        for name, change in _what_ifs(model):
            change(at)
            rows.append({"change": name, **_run(at, clock)})
        out["what_ifs"] = rows
    elif scenario.startswith("probe-"):  # the engine alone, in a fresh process: what one evaluation with the probe costs
        from ptq_core.config import QuantConfig
        from ptq_core.pipeline import Explorer

        backend = scenario.split("-", 1)[1]
        model_spec, data_spec = _specs(model)
        explorer = Explorer(model_spec, data_spec)
        config = QuantConfig.from_dict({"model": model_spec, "dataset": data_spec, "calibration": {"num_samples": 128},
                                        "evaluation": {"backend": backend, "runtime": None}})
        explorer.evaluate(config, layer_errors=False)  # the what-if before: calibration, FP32 reference, sessions
        t = time.perf_counter()
        result = explorer.evaluate(config.replace(weights=dataclasses.replace(config.weights, bits=6)))
        out["probe"] = {"total": time.perf_counter() - t, "layer_error_s": result.timing["layer_error_s"]}
        out["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6
    elif scenario == "stats":
        out.update(_stats_vs_forward(model))
    out["threads"] = torch.get_num_threads()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    out["cpu"] = {"user_s": usage.ru_utime, "system_s": usage.ru_stime}
    return out


def _specs(model: str) -> tuple[str, Any]:
    if model == "efficientnet":
        return "efficientnet_lite0", {"kind": "image_folder", "path": str(SAMPLES), "num_calibration": 128, "seed": 0,
                                      "max_images": None}
    return "digits_cnn", "digits"


def _stats_vs_forward(model: str) -> dict[str, float]:
    """Statistics collection against a plain FP32 forward over the same calibration images, same workers."""
    import torch

    from ptq_core.calibration import chunks, collect_stats, load_batch
    from ptq_core.models.device import fast_layout
    from ptq_core.parallel import map_ordered
    from ptq_core.pipeline import Explorer

    explorer = Explorer(*_specs(model))
    prepared, pool = explorer.prepared(), explorer.dataset.calibration_pool
    indices = list(range(min(128, len(pool))))  # type: ignore[arg-type]
    for i in indices:
        pool[i]  # decoded once, as in the dashboard: neither side pays for JPEG decoding

    def forward(layout: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[list[int]], None]:
        def run(chunk: list[int]) -> None:
            x, _ = load_batch(pool, chunk)
            with torch.inference_mode():
                prepared.graph_module(layout(x))
        return run

    # Interleaved rounds, the ratios taken within each round: a busy moment of the machine slows a round's runs
    # alike (one script saw the plain forward take 4.9 s and 6.6 s three rounds apart). Two forwards: the model as
    # PyTorch runs it (NCHW), and the same channels-last, as the engine runs its own FP32 passes and the statistics.
    fwd, fast, stats = [], [], []
    for _ in range(STATS_ROUNDS):
        for layout, times in ((lambda x: x, fwd), (fast_layout, fast)):
            t = time.perf_counter()
            map_ordered(forward(layout), chunks(indices, 32))
            times.append(time.perf_counter() - t)
        t = time.perf_counter()
        collect_stats(prepared, pool, indices, batch_size=32)
        stats.append(time.perf_counter() - t)
    return {"forward_s": statistics.median(fwd), "forward_fast_s": statistics.median(fast),
            "stats_s": statistics.median(stats),
            "ratio": statistics.median(s / f for s, f in zip(stats, fwd, strict=True)),
            "ratio_fast": statistics.median(s / f for s, f in zip(stats, fast, strict=True))}


# -- the orchestration -----------------------------------------------------------------------------
def _spawn(scenario: str, model: str, cache: str) -> dict[str, Any]:
    env = {**os.environ, "PTQ_CACHE_DIR": cache, "PTQ_DATA_ROOTS": os.pathsep.join([str(ROOT / "assets"), str(SAMPLES.parent)]),
           "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, __file__, "--child", scenario, "--model", model], env=env, capture_output=True,
                          text=True, timeout=1800)
    if proc.returncode != 0:
        raise SystemExit(f"{scenario} on {model} failed:\n{proc.stderr[-3000:]}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


def _s(v: float | None) -> str:
    return "–" if v is None else f"{v:.2f}"


def _verdict(value: float | None, kind: str) -> str:
    if value is None:
        return "–"
    must, goal = GOALS[kind]
    return "goal met" if value <= goal else ("ok" if value <= must else "over")




def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="digits,efficientnet", help="comma-separated: digits, efficientnet")
    parser.add_argument("--repeats", type=int, default=2, help="runs of each what-if scenario (fresh processes)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--model", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.model)))
        return
    models = [m for m in args.models.split(",") if m]
    if "efficientnet" in models and not SAMPLES.is_dir():
        print(f"skipping EfficientNet-Lite0: {SAMPLES} is absent", file=sys.stderr)
        models.remove("efficientnet")
    print(f"Machine: {machine_line()}; load average at start {os.getloadavg()[0]:.2f}; {time.strftime('%Y-%m-%d %H:%M')}\n")
    for model in models:
        with tempfile.TemporaryDirectory(prefix="ptq_bench_cache_") as cache:
            cold = _spawn("cold", model, cache)
            warm = _spawn("warm", model, cache)  # a restarted server: the disk cache of the cold run
            what_ifs = [_spawn("what-ifs", model, cache) for _ in range(args.repeats)]
            probes = [_spawn(f"probe-{b}", model, cache) for b in ("onnxruntime", "torch")]
            stats = _spawn("stats", model, cache)
        name = "EfficientNet-Lite0 (128 calibration / 372 evaluation images)" if model == "efficientnet" else "digits CNN"
        print(f"### {name}\n")
        print("| step | first answer (s) | complete (s) | integer runtime check done (s) | verdict |")
        print("|---|---:|---:|---:|---|")
        for label, run, kind in (("Load model and data, cold (empty disk cache)", cold["load"], "cold"),
                                 ("Load model and data, warm (server restarted)", warm["load"], "warm")):
            verdict = _verdict(run["first"], kind) if model == "efficientnet" else "–"
            print(f"| {label} | {_s(run['first'])} | {_s(run['complete'])} | {_s(run['runtime'])} | {verdict} |")
        rows: dict[str, list[dict[str, Any]]] = {}
        for repeat in what_ifs:
            for row in repeat["what_ifs"]:
                rows.setdefault(row["change"], []).append(row)
        for change, runs in rows.items():
            first = statistics.median(r["first"] for r in runs)
            complete = statistics.median(r["complete"] for r in runs)
            done = [r["runtime"] for r in runs if r["runtime"] is not None]
            if model == "efficientnet":
                verdict = f"first {_verdict(first, 'first')}, complete {_verdict(complete, 'complete')}"
            else:
                verdict = "ok" if complete < DIGITS_GOAL_S else "over"
            print(f"| {change} | {_s(first)} | {_s(complete)} | {_s(statistics.median(done) if done else None)} | {verdict} |")
        user = sum(r["cpu"]["user_s"] for r in what_ifs)
        system = sum(r["cpu"]["system_s"] for r in what_ifs)
        print(f"\nMedians of {args.repeats} fresh processes per what-if; their CPU time: user {user:.0f} s, system "
              f"{system:.0f} s. One evaluation with the per-layer probe (128 "
              "probe samples; a weight-bits change after a first evaluation), the engine alone in a fresh process:\n")
        print("| backend | evaluation with probe (s) | of which probe (s) | process peak memory (GB) | verdict (4 GB, goal 2 GB) |")
        print("|---|---:|---:|---:|---|")
        for b, p in zip(("onnxruntime", "torch"), probes, strict=True):
            gb = p["peak_rss_gb"]
            verdict = "goal met" if gb <= 2.0 else ("ok" if gb <= 4.0 else "over")
            print(f"| {b} | {_s(p['probe']['total'])} | {_s(p['probe']['layer_error_s'])} | {gb:.2f} | {verdict} |")
        ratio = stats["ratio"]
        print(f"\nStatistics collection {stats['stats_s']:.2f} s vs plain FP32 forward {stats['forward_s']:.2f} s over the "
              f"same calibration images (the model as PyTorch runs it, NCHW; all on one-thread workers; medians of "
              f"{STATS_ROUNDS} interleaved rounds, the ratio within each round): {ratio:.2f}x (target 1.2x). Against "
              f"the same forward channels-last ({stats['forward_fast_s']:.2f} s), as the statistics run: "
              f"{stats['ratio_fast']:.2f}x: the histograms' own share\n")
    print(f"Load average at end {os.getloadavg()[0]:.2f}.")


if __name__ == "__main__":
    main()
