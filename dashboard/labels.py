"""Human-readable names for config values and numbers, so every page words them the same way.

Only formatting lives here: no Streamlit, no engine calls.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Sequence
from typing import Any

SCHEME = {"symmetric": "symmetric", "asymmetric": "asymmetric"}
GRANULARITY = {"per_tensor": "per-tensor", "per_channel": "per-channel", "per_group": "per-group", "per_token": "per-token"}
CLIPPING = {"minmax": "min-max", "percentile": "percentile", "mse": "MSE search", "kl": "KL (entropy)"}
ACT_MODE = {"static": "static (calibrated)", "dynamic": "dynamic (per input)", "weight_only": "weight-only"}
SELECTION = {"random": "random", "first": "first N", "balanced": "class-balanced"}
ROUNDING = {"nearest": "nearest", "adaround": "AdaRound", "gptq": "GPTQ"}


def bits(n: int | None) -> str:
    return "float" if n is None else f"INT{n}"


def spec(value: str | dict[str, Any]) -> str:
    """A model or data-set spec as one string: the registry name, or compact JSON for an object."""
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def config_label(config: dict[str, Any]) -> str:
    """A short name such as ``W4 per-group(32) MSE-optimal · A8 static min-max · cal 256``."""
    w = config["weights"]
    gran = GRANULARITY[w["granularity"]]
    if w["granularity"] == "per_group":
        gran += f"({w['group_size']})"
    parts = [f"W{w['bits']} {gran} {CLIPPING[w['clipping']]}"]
    a = config["activations"]
    if a is None:
        parts.append("weight-only")
    elif a["mode"] == "dynamic":
        parts.append(f"A{a['bits']} dynamic")
    else:
        parts.append(f"A{a['bits']} {CLIPPING[a['clipping']]} · cal {config['calibration']['num_samples']}")
    extras = []
    if config["keep_float"]:
        extras.append(f"{len(config['keep_float'])} float")
    if config.get("keep_float_activations"):  # absent from configs stored before the field existed
        extras.append(f"{len(config['keep_float_activations'])} float activations")
    if config["overrides"]:
        extras.append(f"{len(config['overrides'])} overrides")
    if not config["fold_batchnorm"]:
        extras.append("BN unfolded")
    algorithms = algorithms_label(config.get("algorithms"))  # version-1 configs have none
    return " · ".join(parts + ([", ".join(extras)] if extras else []) + ([algorithms] if algorithms else []))


def algorithms_label(algorithms: dict[str, Any] | None) -> str:
    """What a config's ``algorithms`` add to round-to-nearest, e.g. ``+CLE+AdaRound(1000)+BC+FT(200)``,
    ``+SQ(0.5)`` for SmoothQuant; "" for none."""
    if not algorithms:
        return ""
    parts = []
    if algorithms.get("smoothquant"):
        alpha = algorithms["smoothquant"]["alpha"]
        parts.append(f"SQ({alpha if isinstance(alpha, str) else format(alpha, 'g')})")  # a number, or "auto"
    if algorithms.get("cross_layer_equalization"):
        parts.append("CLE")
    rounding = algorithms.get("rounding", "nearest")
    if rounding == "adaround":
        parts.append(f"AdaRound({algorithms['adaround']['iterations']})")
    elif rounding != "nearest":
        float_inputs = rounding == "gptq" and (algorithms.get("gptq") or {}).get("inputs") == "float"
        parts.append(ROUNDING.get(rounding, rounding) + ("(FP32 inputs)" if float_inputs else ""))
    if algorithms.get("bias_correction"):
        parts.append("BC")
    if algorithms.get("finetune"):
        parts.append(f"FT({algorithms['finetune']['steps']})")
    return "".join(f"+{p}" for p in parts)


def pct(x: float | None, digits: int = 2) -> str:
    return "n/a" if x is None else f"{100 * x:.{digits}f} %"


def cosine(x: float | None) -> str:
    """A cosine similarity with four decimals (0.9986): the differences that matter are in the third."""
    return "n/a" if x is None else f"{x:.4f}"



def neighbours_moved(metrics: dict[str, Any]) -> str | None:
    """"20 moved (18 ties)": how many samples' nearest neighbour changed, and how many of those were FP32 near ties
    (short: it sits under a card's value). None for a Result from before the counts were kept."""
    moved, near = metrics.get("neighbours_moved"), metrics.get("neighbours_moved_near_ties")
    if moved is None or near is None:
        return None
    return "none moved" if moved == 0 else f"{moved:.0f} moved ({near:.0f} {'tie' if near == 1 else 'ties'})"


# -- tasks: what a Result's numbers mean ----------------------------------------------------------------
EMBEDDING = "embedding"  # metrics["task"] of the text model; classification Results have no "task" key


def task(metrics: dict[str, Any]) -> str:
    """``"embedding"`` (the text model: cosine, neighbours, k-NN topic accuracy) or ``"classification"``."""
    return str(metrics.get("task", "classification"))


def is_embedding(metrics: dict[str, Any]) -> bool:
    return task(metrics) == EMBEDDING


# How each task's numbers are called where a page names them (sensitivity, search, layer error).
WORDS: dict[str, dict[str, str]] = {
    "classification": {"accuracy": "top-1", "agreement": "agreement", "kl": "output KL"},
    EMBEDDING: {"accuracy": "k-NN topic accuracy", "agreement": "nearest-neighbour agreement",
                "kl": "neighbour-similarity KL"},
}


def words(metrics: dict[str, Any]) -> dict[str, str]:
    """The names of a Result's accuracy, agreement and KL, by its task."""
    return WORDS[EMBEDDING if is_embedding(metrics) else "classification"]


# The accuracy measures of the accuracy-size scatter, per task: row key -> (axis title, scale to the axis).
# Cosine stays a cosine (0.99 is not "99 %"); the rest are shares shown in percent.
ACCURACY_MEASURES: dict[str, dict[str, tuple[str, float]]] = {
    "classification": {"quant_top1": ("Quantized top-1 accuracy (%)", 100.0),
                       "agreement": ("Top-1 agreement with FP32 (%)", 100.0)},
    EMBEDDING: {"cosine_mean": ("Cosine to FP32 (mean)", 1.0),
                "neighbour_agreement": ("Nearest-neighbour agreement with FP32 (%)", 100.0)},
}


def measure_axis(metric: str) -> tuple[str, float]:
    """(axis title, scale) of a scatter measure of any task."""
    return next(measures[metric] for measures in ACCURACY_MEASURES.values() if metric in measures)


def rows_task(rows: Sequence[dict[str, Any]]) -> str:
    """What a set of summary rows measured: "classification", "embedding", or "mixed" (tables and bars name it)."""
    tasks = {row.get("task", "classification") for row in rows}
    return tasks.pop() if len(tasks) == 1 else ("classification" if not tasks else "mixed")


MEASURE_CHOICES = {"quant_top1": "top-1 accuracy", "agreement": "agreement with FP32",
                   "cosine_mean": "cosine to FP32 (mean)", "neighbour_agreement": "nearest-neighbour agreement"}


def db(x: float | None) -> str:
    """SQNR in dB; None (no quantization noise) reads as 'exact'."""
    if x is None or (isinstance(x, float) and math.isinf(x)):
        return "exact"
    return f"{x:.1f} dB"


def size_bytes(n: int | float) -> str:
    if n >= 1 << 20:
        return f"{n / (1 << 20):.2f} MiB"
    if n >= 1 << 10:
        return f"{n / (1 << 10):.1f} KiB"
    return f"{int(n)} B"


BACKEND = {"torch": "PyTorch (reference)", "onnxruntime": "onnxruntime (float32 fake-quantize, CPU)"}


def backend_comparison(result: dict[str, Any], reference: dict[str, Any]) -> str:
    """One paragraph: how the onnxruntime-backend numbers compare with the PyTorch reference's, decision by decision."""
    m, r = result["metrics"], reference["metrics"]
    if is_embedding(m):  # no decisions to count: the two backends' embeddings, each against FP32
        return (f"**PyTorch reference**: cosine to FP32 {cosine(m['cosine_mean'])} here, {cosine(r['cosine_mean'])} in "
                f"PyTorch; nearest-neighbour agreement {pct(m['neighbour_agreement'])} here, "
                f"{pct(r['neighbour_agreement'])} in PyTorch. Both run the same float32 fake-quantize arithmetic; "
                "the exported JSON names the backend, and `python -m ptq_core run` reproduces its numbers exactly.")
    ours, theirs = result["predictions"], reference["predictions"]
    differ = sum(a != b for a, b in zip(ours, theirs, strict=True))
    n = len(ours)
    acc = ""
    if "quant_top1" in m and "quant_top1" in r:
        acc = f" Top-1: {pct(m['quant_top1'])} here, {pct(r['quant_top1'])} in PyTorch."
    if differ == 0:
        return f"**PyTorch reference**: the same top-1 decision on all {n} evaluation samples.{acc}"
    return (f"**PyTorch reference**: the two backends differ on **{differ} of {n}** top-1 decisions.{acc} Both run the "
            "same float32 fake-quantize arithmetic; only the convolutions' summation order differs, which moves a "
            "value sitting on a rounding boundary by one step. The exported JSON names the backend it was computed "
            "with, and `python -m ptq_core run` reproduces that backend's numbers exactly.")


def latency(block: dict[str, Any]) -> dict[str, Any]:
    """The headline latency of a Result's ``latency`` block, honest about how it was obtained.

    ``measured`` blocks (the onnxruntime check) give batch-1 milliseconds on real integer
    kernels; ``simulated`` ones the cost of fake quantization in PyTorch, which is NOT what an
    integer runtime would take. Returns kind, fp32_ms, quant_ms, title and a one-line note.
    """
    if block.get("kind") == "measured" and block.get("batches"):
        batch = block["batches"].get("1") or next(iter(block["batches"].values()))
        return {
            "kind": "measured", "fp32_ms": batch["fp32_ms"], "quant_ms": batch["quant_ms"],
            "title": "Latency (measured)",
            "note": f"batch 1, measured on {block['runtime']} with {block['threads']} thread(s), {block['unit']}; "
                    f"FP32 is the same model exported without quantization",
        }
    return {
        "kind": "simulated", "fp32_ms": block.get("fp32_ms"), "quant_ms": block.get("quant_ms"),
        "title": "Latency (simulated)",
        "note": block.get("note", "simulated: the cost of fake quantization, not of integer kernels"),
    }


def file_stem(*parts: str) -> str:
    """A safe, readable file name stem: ``file_stem("digits_cnn", "W8 per-channel · A8")`` -> ``digits_cnn_W8_per-channel_A8``."""
    return "_".join(filter(None, (re.sub(r"[^A-Za-z0-9.+-]+", "_", p).strip("_.") for p in parts))) or "model"


def runtime_agreement(metrics: dict[str, Any]) -> str | None:
    """``simulation matches onnxruntime on N/M samples (max |Δ logit| X)``; None when the check did not run."""
    if "runtime_agreement" not in metrics:
        return None
    if is_embedding(metrics):  # the runtime's embeddings against the simulation's
        low = metrics.get("runtime_cosine_min")
        detail = ([f"cosine at least {cosine(low)}"] if low is not None else []) + [
            f"max |Δ| {metrics['runtime_max_abs_diff']:.3g}"]
        return (f"simulation and onnxruntime give the same nearest neighbour on {metrics['runtime_matching_samples']}/"
                f"{metrics['num_eval_samples']} sentences ({', '.join(detail)})")
    return (f"simulation matches onnxruntime on {metrics['runtime_matching_samples']}/{metrics['num_eval_samples']} "
            f"samples (max |Δ logit| {metrics['runtime_max_abs_diff']:.3g})")
