"""The text model (all-MiniLM-L6-v2) at INT8 and INT4: embeddings against FP32, onnxruntime against the simulation, latency.

    .venv/bin/python benchmarks/bench_text.py [--rows all|"NAME;NAME"] [--json out.json] [--latency-only]

On the default sentence set (assets/text/sentences.csv: 750 sentences, 15 topics; 128 calibrate,
622 evaluate), one torch thread, each row a full evaluation (``Explorer.evaluate``: the simulation,
then the config exported to ONNX and run in onnxruntime). Columns: mean and lowest cosine of each
quantized embedding with its FP32 embedding; nearest-neighbour agreement and recall@10 (FP32's
neighbours among the evaluation sentences); leave-one-out 5-NN topic accuracy; the simulation
against onnxruntime (mean and lowest cosine of the two embeddings of each sentence); onnxruntime
latency per batch at batch 1 and 32 with the FP32 model's beside it (the batch of 32 is the first 32
evaluation sentences, padded to their longest; its sequence length is printed; measured while the
rows run, so load on the machine shows in them). Then every exported model timed round-robin, one
table, for ratios that load cannot skew (``--latency-only`` runs just that). Per-token dynamic
activations have no onnxruntime integer operator (DynamicQuantizeLinear is per tensor): they are
exported as the simulation's fake quantization in float ops, so their runtime columns check the
numbers, not integer speed; the per-tensor row shows what onnxruntime runs on integers.

Goals (issue 12): W8A8 dynamic per-token mean cosine >= 0.995 and neighbour agreement >= 97%;
W4 weight-only group 32 mean cosine >= 0.98 with the best rounding (goal 0.99); static W8A8 with
SmoothQuant better than without; simulation vs runtime cosine >= 0.999.

Rows marked "integer arithmetic" evaluate with ``"evaluation": {"arithmetic": "integer"}``: the simulation
computes what onnxruntime's integer kernels compute (QGemm, QLinearMatMul, QLinearAdd, DynamicQuantizeLinear
+ DynamicQuantizeMatMul), so their metrics are the runtime's and their sim-vs-ORT column checks the emulation.
The float rows' sim-vs-ORT column shows how far float fake-quantization can follow integer kernels on this
network (see RESULTS.md: a quantized BERT carries float32-ulp differences on from one quantizer to the next).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import onnxruntime as ort  # noqa: E402
import torch  # noqa: E402

from ptq_core.calibration import chunks, load_batch  # noqa: E402
from ptq_core.config import QuantConfig  # noqa: E402
from ptq_core.machine import machine_line  # noqa: E402
from ptq_core.models.minilm import TextTokenizer  # noqa: E402
from ptq_core.onnx.export import export_float_onnx  # noqa: E402
from ptq_core.onnx.session import input_feed, make_runtime_session  # noqa: E402
from ptq_core.pipeline import Explorer  # noqa: E402

W4G32 = {"bits": 4, "granularity": "per_group", "group_size": 32}
# 8-bit weights, one range per N inputs of an output row: less weight error than one per row (exported as MatMulNBits)
W8G32, W8G64, W8G128 = ({"granularity": "per_group", "group_size": g} for g in (32, 64, 128))
DYN_TOKEN = {"mode": "dynamic", "granularity": "per_token"}
DYN_TENSOR = {"mode": "dynamic", "granularity": "per_tensor"}
STATIC = {"mode": "static", "clipping": "mse"}
SQ = {"smoothquant": {"alpha": 0.5}}
SQ_AUTO = {"smoothquant": {"alpha": "auto"}}  # alpha chosen per Linear group on the calibration sentences
INTEGER = {"arithmetic": "integer"}  # onnxruntime's integer kernels emulated exactly (ptq_core.onnx.integer)


def rows(explorer: Explorer) -> dict[str, dict[str, Any]]:
    units = explorer.prepared().units
    residual = [u.name for u in units if u.kind == "add"] + [u.name for u in units if u.name.endswith(".output")]
    return {
        "W8A8 dynamic per-token": {"activations": DYN_TOKEN},
        "W8A8 dynamic per-token, weights MSE": {"activations": DYN_TOKEN, "weights": {"clipping": "mse"}},
        "W8A8 dynamic per-token + SmoothQuant 0.5": {"activations": DYN_TOKEN, "algorithms": SQ},
        "W8A8 dynamic per-token + SmoothQuant auto": {"activations": DYN_TOKEN, "algorithms": SQ_AUTO},
        "W8A8 dynamic per-token, weights per-group 64": {"activations": DYN_TOKEN, "weights": W8G64},
        "W8A8 dynamic per-token, weights per-group 128 + SmoothQuant 0.5": {"activations": DYN_TOKEN, "weights": W8G128,
                                                                           "algorithms": SQ},
        "W8A8 dynamic per-token, weights per-group 64 + SmoothQuant 0.5": {"activations": DYN_TOKEN, "weights": W8G64,
                                                                          "algorithms": SQ},
        "W8A8 dynamic per-token, weights per-group 32 + SmoothQuant 0.5": {"activations": DYN_TOKEN, "weights": W8G32,
                                                                          "algorithms": SQ},
        "W8A8 dynamic per-tensor": {"activations": DYN_TENSOR},
        "W8A8 dynamic per-tensor + SmoothQuant 0.5": {"activations": DYN_TENSOR, "algorithms": SQ},
        "W8A8 dynamic per-tensor, integer arithmetic": {"activations": DYN_TENSOR, "evaluation": INTEGER},
        "W8A8 dynamic per-tensor + SmoothQuant 0.5, integer arithmetic": {"activations": DYN_TENSOR, "algorithms": SQ,
                                                                          "evaluation": INTEGER},
        "W8 weight-only": {"activations": None},
        "W4 g32 weight-only, nearest": {"activations": None, "weights": W4G32},
        "W4 g32 weight-only, GPTQ": {"activations": None, "weights": W4G32, "algorithms": {"rounding": "gptq"}},
        "W4 g32 MSE weight-only, GPTQ": {"activations": None, "weights": {**W4G32, "clipping": "mse"},
                                        "algorithms": {"rounding": "gptq"}},
        "W8A8 static": {"activations": STATIC},
        "W8A8 static + SmoothQuant 0.5": {"activations": STATIC, "algorithms": SQ},
        "W8A8 static + SmoothQuant auto": {"activations": STATIC, "algorithms": SQ_AUTO},
        "W8A8 static, integer arithmetic": {"activations": STATIC, "evaluation": INTEGER},
        "W8A8 static + SmoothQuant 0.5, integer arithmetic": {"activations": STATIC, "algorithms": SQ,
                                                              "evaluation": INTEGER},
        "W8A8 static, residual stream float": {"activations": STATIC, "keep_float": residual},
        "W8A8 static, residual stream float, integer arithmetic": {"activations": STATIC, "keep_float": residual,
                                                                   "evaluation": INTEGER},
        "W8A8 static, residual stream float + SmoothQuant 0.5": {"activations": STATIC, "keep_float": residual,
                                                                 "algorithms": SQ},
        "W8A8 static, residual stream float + SmoothQuant auto": {"activations": STATIC, "keep_float": residual,
                                                                  "algorithms": SQ_AUTO},
        "W8A8 static, residual stream float + SmoothQuant 0.5, integer arithmetic": {
            "activations": STATIC, "keep_float": residual, "algorithms": SQ, "evaluation": INTEGER},
    }


def throughput(explorer: Explorer, texts: list[str], batch: int = 32) -> dict[str, float]:
    """Sentences per second, tokenizing included, FP32 in PyTorch and in onnxruntime (one thread each)."""
    tok = TextTokenizer()
    model = explorer.model
    out: dict[str, float] = {}
    start = time.perf_counter()
    with torch.inference_mode():
        for piece in chunks(list(range(len(texts))), batch):
            model(tok.tokenize([texts[i] for i in piece]).tokens)
    out["pytorch"] = len(texts) / (time.perf_counter() - start)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "fp32.onnx"
        export_float_onnx(explorer.prepared(), path)
        options = ort.SessionOptions()
        options.intra_op_num_threads, options.inter_op_num_threads = 1, 1
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        start = time.perf_counter()
        for piece in chunks(list(range(len(texts))), batch):
            session.run(None, input_feed(session, tok.tokenize([texts[i] for i in piece]).tokens))
        out["onnxruntime"] = len(texts) / (time.perf_counter() - start)
    return out


LATENCY_ROWS = ("W8A8 dynamic per-tensor", "W8 weight-only", "W4 g32 weight-only, nearest", "W8A8 static",
                "W8A8 static, residual stream float + SmoothQuant 0.5")


def interleaved_latency(explorer: Explorer, table: dict[str, dict[str, Any]], rounds: int = 7) -> list[tuple[str, float, float]]:
    """onnxruntime ms at batch 1 and 32 for FP32 and each of LATENCY_ROWS, measured round-robin so load hits all alike.

    Batch 32 = the 32 evaluation sentences closest to the median length (one sequence length, printed); batch 1 =
    the first of them. Each round runs every model 5 times per batch; the median over rounds is reported.
    """
    data = explorer.dataset.evaluation
    lengths = data.x[:, 1].sum(dim=1)  # type: ignore[attr-defined]
    order = (lengths - lengths.median()).abs().argsort()[:32].tolist()
    x32, _ = load_batch(data, order)
    x1 = x32[:1, :, : int(x32[0, 1].sum())]
    sessions: dict[str, ort.InferenceSession] = {}
    with tempfile.TemporaryDirectory() as tmp:
        export_float_onnx(explorer.prepared(), Path(tmp) / "fp32.onnx")
        sessions["FP32"] = make_runtime_session(Path(tmp) / "fp32.onnx", threads=1)
        for name in LATENCY_ROWS:
            path = Path(tmp) / f"{len(sessions)}.onnx"
            explorer.export_onnx(QuantConfig.from_dict({"model": "all_minilm_l6_v2", **table[name]}), path)
            sessions[name] = make_runtime_session(path, threads=1)
        times: dict[tuple[str, int], list[float]] = {}
        for _ in range(rounds):
            for name, session in sessions.items():
                for bs, x in ((1, x1), (32, x32)):
                    feed = input_feed(session, x)
                    session.run(None, feed)
                    runs = []
                    for _ in range(5):
                        start = time.perf_counter()
                        session.run(None, feed)
                        runs.append(1000 * (time.perf_counter() - start))
                    times.setdefault((name, bs), []).append(statistics.median(runs))
    print(f"onnxruntime latency, interleaved ({rounds} rounds), 1 thread; batch 32 = 32 sentences of "
          f"{x32.shape[-1]} tokens, batch 1 = one of {x1.shape[-1]} tokens")
    print()
    print("| model | ms batch 1 | ms batch 32 | vs FP32 (b1 / b32) |")
    print("|---|---|---|---|")
    rows = []
    base = (statistics.median(times[("FP32", 1)]), statistics.median(times[("FP32", 32)]))
    for name in sessions:
        b1, b32 = statistics.median(times[(name, 1)]), statistics.median(times[(name, 32)])
        rows.append((name, b1, b32))
        print(f"| {name} | {b1:.2f} | {b32:.1f} | {base[0] / b1:.2f}x / {base[1] / b32:.2f}x |")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", default="all", help='"all", or row names separated by ";"')
    parser.add_argument("--json", default=None)
    parser.add_argument("--latency-only", action="store_true", help="only the interleaved latency table")
    args = parser.parse_args()
    torch.set_num_threads(1)
    explorer = Explorer("all_minilm_l6_v2")
    data = explorer.dataset
    x32, _ = load_batch(data.evaluation, list(range(32)))
    lengths = data.info["tokens"]
    table = rows(explorer)
    if args.latency_only:
        print(f"machine: {machine_line()}, onnxruntime {ort.__version__}")
        interleaved_latency(explorer, table)
        return
    chosen = list(table) if args.rows == "all" else [r.strip() for r in args.rows.split(";")]  # names hold commas
    print(f"machine: {machine_line()}, 1 torch thread, torch {torch.__version__}, onnxruntime {ort.__version__}")
    print(f"data: {data.description}; tokens per sentence min {lengths['min']}, mean {lengths['mean']:.1f}, "
          f"max {lengths['max']}; latency batch 32 = the first 32 evaluation sentences, sequence length {x32.shape[-1]}; "
          "batch 1 = the first sentence")
    print()
    print("| row | cosine mean | cosine min | NN agreement | recall@10 | 5-NN topic acc. | sim vs ORT cosine mean / min "
          "| ORT ms b1 (FP32) | ORT ms b32 (FP32) | wall s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    out: list[dict[str, Any]] = []
    fp32_top1 = None
    for name in chosen:
        spec = table[name]
        config = QuantConfig.from_dict({"model": "all_minilm_l6_v2", **spec})
        start = time.perf_counter()
        result = explorer.evaluate(config)
        wall = time.perf_counter() - start
        m = result.metrics
        fp32_top1 = m.get("fp32_top1", fp32_top1)
        lat = result.latency.get("batches", {}) if result.latency.get("kind") == "measured" else {}
        b1, b32 = lat.get("1", {}), lat.get("32", {})

        def ms(row: dict[str, Any]) -> str:
            return f"{row['quant_ms']:.1f} ({row['fp32_ms']:.1f})" if row else "—"

        runtime = (f"{m['runtime_cosine_mean']:.5f} / {m['runtime_cosine_min']:.4f}" if "runtime_cosine_mean" in m
                   else "—")
        print(f"| {name} | {m['cosine_mean']:.4f} | {m['cosine_min']:.4f} | {100 * m['neighbour_agreement']:.1f}% | "
              f"{100 * m['recall_at_10']:.1f}% | {100 * m['quant_top1']:.1f}% | {runtime} | {ms(b1)} | {ms(b32)} | {wall:.0f} |",
              flush=True)
        out.append({"row": name, "config": spec, "metrics": {k: v for k, v in m.items() if isinstance(v, int | float)},
                    "latency": lat, "wall_s": wall, "warnings": result.warnings})
    print()
    if fp32_top1 is not None:
        print(f"FP32 5-NN topic accuracy: {100 * fp32_top1:.1f}%")
    texts = data.info["texts"]["calibration"] + data.info["texts"]["evaluation"]
    tp = throughput(explorer, texts)
    print(f"FP32 tokenize + embed, {len(texts)} sentences in batches of 32, 1 thread: PyTorch {tp['pytorch']:.0f} "
          f"sentences/s, onnxruntime {tp['onnxruntime']:.0f} sentences/s")
    med = statistics.median(r["wall_s"] for r in out) if out else 0.0
    print(f"median wall time per row: {med:.0f} s")
    print()
    latency = interleaved_latency(explorer, table) if args.rows == "all" or args.latency_only else []
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": out, "throughput": tp, "latency": latency, "machine": machine_line()},
                                              indent=1))


if __name__ == "__main__":
    main()
