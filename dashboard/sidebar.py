"""The sidebar: one control per QuantConfig field (keys ``sb_*``, mapped in :mod:`dashboard.state`).

Controls are always drawn, disabled where they do not apply, so their values survive while
hidden from the config (Streamlit forgets a widget's value in a run it is not drawn). The few
callbacks keep the controls a VALID config when one choice constrains another (a dynamic
quantizer has no clipping method to choose). The model and the data set are chosen in
:mod:`dashboard.sources`, which loads and checks them before the config uses them.
"""

from __future__ import annotations

import json
from typing import Any

import streamlit as st
import torch

from ptq_core.config import (
    ACTIVATION_CLIPPING,
    ARITHMETICS,
    BACKENDS,
    DYNAMIC_ACTIVATION_GRANULARITIES,
    MAX_BITS,
    MAX_GROUP_SIZE,
    MIN_BITS,
    ROUNDINGS,
    RUNTIMES,
    SCHEMES,
    SELECTIONS,
    TARGETS,
    WEIGHT_CLIPPING,
    WEIGHT_GRANULARITIES,
)
from ptq_core.errors import PTQError

from . import labels, presets, resources, sources, state

BITS = list(range(MAX_BITS, MIN_BITS - 1, -1))  # 8, 7, ..., 2: INT8 first
# The config's own bounds of the algorithm settings (ptq_core.config: AdaRound, Finetune), so an imported config
# always fits the boxes; tests/dashboard/test_algorithms_page.py checks they agree with the config's validation.
MAX_ADAROUND_ITERATIONS = 100_000
MAX_FINETUNE_STEPS = 1_000_000
MAX_FINETUNE_BATCH = 4096
MAX_FINETUNE_LR = 1.0
# What each algorithm costs, in the help lines. Measured 2026-12-02 with one torch thread (as the dashboard runs) on
# the 2-core development machine while other work ran on it (load 3-6: an idle machine is faster), EfficientNet-Lite0
# with 128 calibration images, W4 per-channel; digits with 256. AdaRound: 1 and 40 iterations (64 s and 249 s for the
# 50 layers: 4.7 s per iteration, depthwise layers 2-4x the others); GPTQ 75 s; fine-tuning 5-7 s per step of 16 images.
# Measured by benchmarks/bench_int4.py on EfficientNet-Lite0 (128 calibration images, one thread, 2-core AMD EPYC
# shared with other jobs): bias correction 40 s, GPTQ + bias correction 2 min, AdaRound 500 iterations + bias
# correction 6 min, fine-tuning 100 steps of 16 images 4 min.
ADAROUND_COST = ("the slowest: on EfficientNet-Lite0 about 0.7 s per iteration for its 50 layers together, so 500 "
                 "iterations take about 6 minutes and 1000 about 12; on digits 1000 iterations take 20-30 s.")
GPTQ_COST = "about 2 minutes on EfficientNet-Lite0, a second on digits."
# SmoothQuant's second pass (max |x| per channel, then the model prepared anew), measured 2026-12 with one torch thread
# on the same shared 2-core machine: 3 s for all-MiniLM-L6-v2 on its 256 calibration sentences, 0.02 s on digits_mlp.
SMOOTHQUANT_COST = "about 3 s on all-MiniLM-L6-v2 (256 calibration sentences), a blink on digits"
# alpha "auto": 21 quantized matmuls per Linear on the calibration tokens; measured 2026-12-03 (same machine, one
# thread): 20.5-21.6 s of choosing on all-MiniLM-L6-v2's 128 calibration sentences
SMOOTHQUANT_AUTO_COST = "about 20 s on all-MiniLM-L6-v2"
FINETUNE_COST = ("About 2.4 s per step of 16 images on EfficientNet-Lite0 (100 steps: about 4 minutes), 200 steps in "
                 "a few seconds on digits.")
MODES = ["static", "dynamic", state.WEIGHT_ONLY]
# What the integer-exact simulation costs, measured 2026-12 on the shared 2-core machine (one torch thread): about
# 2x the float simulation in PyTorch (ptq_core.onnx.integer sums in float32 where no partial sum can reach 2**24);
# on digits W8A8 its logits equal onnxruntime's on every sample (tests/core: the integer backend's tests).
ARITHMETIC = {"float": "float fake-quantize (fast)", "integer": "integer-exact, as onnxruntime computes"}
TARGET_LABELS = {"litert": "LiteRT (TFLite)", "pt2e": "PT2E (PyTorch's own PTQ)"}  # short: the chips cut at ~20 characters
INHERIT = "same as global"


def _bits_label(n: int) -> str:
    return f"INT{n} ({2**n} levels)"


def _on_mode_change() -> None:
    """Dynamic quantizers take each input's own min/max: no clipping choice; per-token is dynamic-only."""
    mode = st.session_state["sb_a_mode"]
    if mode == "dynamic":
        st.session_state["sb_a_clipping"] = "minmax"
    elif st.session_state["sb_a_granularity"] != "per_tensor":
        st.session_state["sb_a_granularity"] = "per_tensor"


def _on_device_change() -> None:
    """The onnxruntime backend runs on the CPU: a GPU device switches the simulation to PyTorch."""
    if st.session_state["sb_device"] != "cpu" and st.session_state.get("sb_eval_backend") == "onnxruntime":
        st.session_state["sb_eval_backend"] = "torch"


def _on_arithmetic_change() -> None:
    """Integer arithmetic is emulated in PyTorch: the onnxruntime backend cannot do it, so choosing it switches there."""
    if st.session_state["sb_eval_arithmetic"] == "integer" and st.session_state.get("sb_eval_backend") == "onnxruntime":
        st.session_state["sb_eval_backend"] = "torch"


def render() -> None:
    """Draw every control. Must run before any page reads the config."""
    ss = st.session_state
    sb = st.sidebar
    sb.title("PTQ Explorer")
    sb.caption("Every control is one field of the config you can export.")
    presets.render()  # workshop exercises: choosing one sets every control below

    sb.subheader("Model and data")
    sources.render()

    sb.subheader("Weights")
    sb.selectbox("Weight bits", BITS, key="sb_w_bits", format_func=_bits_label)
    sb.radio("Weight scheme", list(SCHEMES), key="sb_w_scheme", horizontal=True,
             help="symmetric: zero point 0, range ±max. asymmetric: a zero point shifts the grid to fit [min, max].")
    c1, c2 = sb.columns([3, 2])
    c1.selectbox("Granularity", list(WEIGHT_GRANULARITIES), key="sb_w_granularity",
                 format_func=labels.GRANULARITY.get, help="How many weights share one scale.")
    # The config's own bound, so an imported config always fits the box; what fits the loaded model (its
    # longest row) is checked when the plan is made, and a larger group is refused there with that layer's name.
    c2.number_input("Group size", min_value=1, max_value=MAX_GROUP_SIZE, step=16, key="sb_w_group_size",
                    disabled=ss["sb_w_granularity"] != "per_group",
                    help=f"Weights per range (per-group only), 1 to {MAX_GROUP_SIZE}, and at most the longest row of "
                         "the model's layers (a longer group would be per-channel).")
    c1, c2 = sb.columns([3, 2])
    c1.selectbox("Weight clipping", list(WEIGHT_CLIPPING), key="sb_w_clipping", format_func=labels.CLIPPING.get)
    c2.number_input("Percentile", min_value=50.001, max_value=99.99999, step=0.01, format="%.3f", key="sb_w_percentile",
                    disabled=ss["sb_w_clipping"] != "percentile")

    sb.subheader("Activations")
    sb.radio("Activation quantization", MODES, key="sb_a_mode", format_func=labels.ACT_MODE.get,
             on_change=_on_mode_change, horizontal=True)
    off = ss["sb_a_mode"] == state.WEIGHT_ONLY
    static = ss["sb_a_mode"] == "static"
    # Bias correction, AdaRound, GPTQ and fine-tuning learn from the calibration images in every activation mode.
    calibrated = static or state.algorithms_learn()
    c1, c2 = sb.columns(2)
    c1.selectbox("Activation bits", BITS, key="sb_a_bits", format_func=_bits_label, disabled=off)
    c2.selectbox("Activation granularity", list(DYNAMIC_ACTIVATION_GRANULARITIES), key="sb_a_granularity",
                 format_func=labels.GRANULARITY.get, disabled=ss["sb_a_mode"] != "dynamic")
    sb.radio("Activation scheme", list(SCHEMES), key="sb_a_scheme", horizontal=True, disabled=off)
    c1, c2 = sb.columns([3, 2])
    c1.selectbox("Activation clipping", list(ACTIVATION_CLIPPING), key="sb_a_clipping",
                 format_func=labels.CLIPPING.get, disabled=not static)
    c2.number_input("Percentile", min_value=50.001, max_value=99.99999, step=0.01, format="%.3f", key="sb_a_percentile",
                    disabled=not static or ss["sb_a_clipping"] != "percentile")

    sb.subheader("Calibration subset")
    c1, c2 = sb.columns(2)
    c1.number_input("Samples", min_value=1, step=32, key="sb_cal_num_samples", disabled=not calibrated,
                    help="How many samples of the calibration pool the activation ranges are measured on (static "
                         "activations) and the algorithms below learn from (bias correction, AdaRound, GPTQ, "
                         "fine-tuning).")
    c2.number_input("Seed", min_value=0, step=1, key="sb_cal_seed", disabled=not calibrated)
    sb.selectbox("Selection", list(SELECTIONS), key="sb_cal_selection", format_func=labels.SELECTION.get,
                 disabled=not calibrated)

    sb.subheader("Layers")
    sb.checkbox("Fold BatchNorm into the preceding conv", key="sb_fold_bn")
    units, names = _layer_names()
    sb.multiselect("Keep in float", _options_with_all(ss["sb_keep_float"], units), key="sb_keep_float",
                   help="These layers are not quantized (weights and their output).")
    with sb.expander(f"Per-layer overrides ({len(ss['cfg_overrides'])})"):
        _overrides(names)
    _algorithms()
    if "sb_eval_runtime" in ss:
        sb.subheader("Evaluation")
        sb.selectbox("Integer runtime check", [None, *RUNTIMES], key="sb_eval_runtime",
                     format_func=lambda v: "off: simulation only" if v is None else f"{v}: export and run it",
                     help="Also export the quantized model to ONNX and run it on real integer kernels: measured "
                          "latency and a check that the simulation matches. It runs once the numbers on screen are "
                          "complete, so it never delays a what-if (a second on digits, 6-15 s on EfficientNet-Lite0).")
    integer = ss.get("sb_eval_arithmetic") == "integer"
    if "sb_eval_arithmetic" in ss:
        sb.radio("Arithmetic", list(ARITHMETICS), key="sb_eval_arithmetic", format_func=ARITHMETIC.get,
                 on_change=_on_arithmetic_change,
                 help="How the quantized model is simulated. **Float fake-quantize**: every value is rounded to its "
                      "grid and computed in float32, the fast default; a value on a rounding tie can land one step "
                      "away from what an integer runtime computes. **Integer-exact**: integer sums, int32 biases "
                      "and the requantization of onnxruntime's integer kernels, op for op, so the numbers equal "
                      "onnxruntime's on every sample (W8A8); the Deploy page lists the few ops that still run in "
                      "float. Costs about 2x the float simulation, and runs in PyTorch (it switches *Simulation "
                      "runs on* there).")
    if "sb_eval_backend" in ss:
        sb.selectbox("Simulation runs on", list(BACKENDS), key="sb_eval_backend", disabled=integer,
                     format_func=lambda v: "PyTorch (reference)" if v == "torch" else "onnxruntime (fast, CPU)",
                     help="What runs the simulated (fake-quantized) model. onnxruntime runs the same float32 "
                          "graph several times faster on large models. Only the convolutions' summation order "
                          "differs: a value on a rounding boundary can move one step, so a few near-tie "
                          "decisions may differ (a handful of 372 images on EfficientNet-Lite0, as between two "
                          "PyTorch convolution kernels; the Overview counts them on request). The exported JSON "
                          "names the backend, so the command line reproduces these numbers exactly. CPU only. "
                          "Integer-exact arithmetic always runs in PyTorch.")
    if "sb_eval_targets" in ss:
        sb.multiselect("Deployment targets", list(TARGETS), key="sb_eval_targets", format_func=TARGET_LABELS.get,
                       placeholder="none: FP32, simulation, onnxruntime",
                       help="More runtimes to run the quantized model on, each a row of the **Deploy** page next to "
                            "onnxruntime. **LiteRT (TFLite)**: this plan converted to a full-integer .tflite with "
                            "ptq_core's scales, run in the LiteRT interpreter (what phones run). **PyTorch's own "
                            "PTQ (PT2E)**: PyTorch quantizes the FP32 model itself (torchao's X86InductorQuantizer, "
                            "its default recipe) on the same calibration images: the framework default to compare "
                            "this plan with. They run only while the Deploy page is open (converting a large model "
                            "can take a minute or more; digits about half a minute).")
    with sb.expander("Advanced: device, batch sizes, evaluation subset"):
        if "sb_device" in ss:
            st.selectbox("Device", _devices(ss["sb_device"]), key="sb_device", on_change=_on_device_change,
                         help="Where calibration and evaluation run; the numbers agree within float tolerance. "
                              "A GPU runs the simulation in PyTorch (the onnxruntime backend is CPU only).")
        st.number_input("Calibration batch size", min_value=1, step=8, key="sb_cal_batch_size")
        st.number_input("Evaluation samples (0 = the whole split)", min_value=0, step=50, key="sb_eval_num_samples")
        st.number_input("Evaluation batch size", min_value=1, step=32, key="sb_eval_batch_size")
        st.number_input("Samples for per-layer error", min_value=1, step=32, key="sb_eval_layer_error_samples")

    try:
        state.config_from_state()
    except PTQError as exc:
        sb.error(str(exc))


def _algorithms() -> None:
    """What repairs low-bit rounding (``config.algorithms``): one control per field, each saying what it costs."""
    ss = st.session_state
    sb = st.sidebar
    sb.subheader("Algorithms (INT4 and below)")
    sb.checkbox("Cross-layer equalization", key="sb_alg_cle",
                help="Rescales each pair of consecutive layers (channel c of the first divided by a factor, the "
                     "weights reading it in the second multiplied by it) so their per-channel weight ranges even "
                     "out: the same float function, easier to quantize per tensor or at 4 bits. No data needed; "
                     "a second or less, then the model is calibrated anew. ReLU6 between an equalized pair becomes "
                     "ReLU (its clamp at 6 does not survive the rescaling), which changes the FP32 model a "
                     "little: the Layer error page reports that FP32 model's top-1 and agreement.")
    sb.checkbox("SmoothQuant", key="sb_alg_smoothquant",
                help="For activations with a few huge channels (transformers: one hidden channel 20-40x the "
                     "others). Divides each input channel of a Linear by a factor and multiplies that Linear's "
                     "weights by the same factor: the same float function, but the outlier channel no longer "
                     "stretches the activation grid and the other channels get more of its steps; the weights, "
                     "whose channels are even, take on part of that range instead. Costs one float multiply per group of "
                     "Linears reading one input, and a second pass over the calibration samples to measure the "
                     f"channels: {SMOOTHQUANT_COST}. Applies when activations are quantized (static or dynamic); "
                     "the Activations page shows each channel before and after.")
    sb.checkbox("SmoothQuant alpha: auto", key=state.SQ_AUTO_KEY, disabled=not ss["sb_alg_smoothquant"],
                help="Chooses alpha per group of Linears reading one input (0 to 1 in steps of 0.05): the one "
                     "whose quantized outputs, with this config's weight and activation settings, come closest to "
                     "FP32 on the calibration samples (Intel Neural Compressor's alpha=\"auto\"). The Result's "
                     f"algorithms list the chosen alphas. Costs {SMOOTHQUANT_AUTO_COST} more.")
    sb.slider("SmoothQuant alpha", min_value=0.0, max_value=1.0, step=0.05, key="sb_alg_sq_alpha",
              disabled=not ss["sb_alg_smoothquant"] or ss[state.SQ_AUTO_KEY],
              help="How much of each channel's range moves into the weights. 1: every activation channel "
                   "ends with the same max (flat) and the weights take the whole outlier; 0: the weights end "
                   "flat and the activations take their spread. 0.5 (the paper's default) meets halfway: both "
                   "become sqrt(max|x| · max|w|) per channel.")
    if ss["sb_alg_smoothquant"] and ss["sb_a_mode"] == state.WEIGHT_ONLY:
        sb.caption("SmoothQuant does nothing while activations are not quantized (weight-only): no grid to spare.")
    sb.checkbox("Bias correction", key="sb_alg_bias_correction",
                help="Rounding shifts the average output of a layer; this measures the shift on the calibration "
                     "images and subtracts it from the layer's bias. Costs one pass per layer over the "
                     "calibration images: about 40 s on EfficientNet-Lite0, a second on digits.")
    sb.radio("Rounding", list(ROUNDINGS), key="sb_alg_rounding", format_func=labels.ROUNDING.get, horizontal=True,
             help="**nearest**: every weight to its nearest grid point (free). **AdaRound**: learns for each weight "
                  "whether to round up or down so the layer's output matches FP32 on the calibration images; "
                  f"{ADAROUND_COST} **GPTQ**: rounds column by column and pushes each rounding error onto the "
                  "weights not yet rounded, using the layer's input statistics; "
                  f"{GPTQ_COST} Both keep the grid (scales): only which integer each weight gets changes.")
    sb.number_input("AdaRound iterations per layer", min_value=1, max_value=MAX_ADAROUND_ITERATIONS, step=100,
                    key="sb_alg_adaround_iterations", disabled=ss["sb_alg_rounding"] != "adaround",
                    help="Optimisation steps per layer; the time grows in proportion. 1000 recovers most of what "
                         "AdaRound can (the paper uses 10,000-20,000); 50-200 already show the effect on digits.")
    sb.checkbox("Fine-tune (quantization-aware)", key="sb_alg_finetune",
                help="A short training of the quantized model to imitate the FP32 one on the calibration images "
                     "(no labels: the FP32 model's outputs are the target); weights, biases and activation "
                     f"scales learn, the weight grid stays. {FINETUNE_COST}")
    off = not ss["sb_alg_finetune"]
    c1, c2 = sb.columns(2)
    c1.number_input("Steps", min_value=1, max_value=MAX_FINETUNE_STEPS, step=50, key="sb_alg_ft_steps", disabled=off,
                    help="Training steps; each is a forward and a backward pass of one batch.")
    c2.number_input("Batch size", min_value=1, max_value=MAX_FINETUNE_BATCH, step=8, key="sb_alg_ft_batch_size",
                    disabled=off, help="Calibration images per step.")
    sb.number_input("Learning rate", min_value=0.0, max_value=MAX_FINETUNE_LR, step=1e-4, format="%.1e",
                    key="sb_alg_ft_lr", disabled=off,
                    help="Adam's learning rate, a positive number up to 1. The default 1e-4 moves 4-bit weights "
                         "across rounding boundaries within a few hundred steps; 1e-5 (usual for long QAT runs) "
                         "barely changes them in a short one.")
    sb.caption("Each configuration runs these once, when first evaluated; the result is kept (in memory and in the "
               "disk cache), so changing only the evaluation settings (backend, runtime check, evaluation samples "
               "or batch size) reuses it. Progress shows at the top of the page. To cancel, press Streamlit's "
               "**Stop** (top right) or change any control: the run ends at the next layer, step or 50 AdaRound "
               "iterations, nothing of it "
               "is kept, and the session stays as it was. Times in the help lines: one thread on a busy 2-core "
               "machine.")


def _devices(current: str) -> list[str]:
    found = ["cpu"] + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
    return found if current in found else [*found, current]


def _options_with_all(current: list[str], options: list[str]) -> list[str]:
    return options + [c for c in current if c not in options]


def _layer_names() -> tuple[list[str], list[str]]:
    """Names keep_float may use (the units) and overrides may use (units and activation points)."""
    ss = st.session_state
    try:
        explorer = resources.get_explorer(json.dumps(state.spec_value(ss["sb_model"]), sort_keys=True),
                                          json.dumps(state.spec_value(ss["sb_dataset"]), sort_keys=True))
        prepared = explorer.prepared(bool(ss["sb_fold_bn"]))
    except PTQError as exc:
        st.sidebar.error(str(exc))
        return [], []
    units = [u.name for u in prepared.units]
    return units, units + [p.name for p in prepared.points if p.name not in units]


def _overrides(names: list[str]) -> None:
    ss = st.session_state
    st.caption("Give one layer other settings than the global ones. Weights apply to a Conv/Linear layer, "
               "activation bits to the tensor the layer outputs.")
    if not names:
        st.caption("(no layers: fix the model first)")
        return
    ss.setdefault("sb_ov_layer", names[0])
    if ss["sb_ov_layer"] not in names:
        ss["sb_ov_layer"] = names[0]
    st.selectbox("Layer", names, key="sb_ov_layer")
    c1, c2 = st.columns(2)
    c1.selectbox("Weight bits", [INHERIT, *BITS], key="sb_ov_w_bits",
                 format_func=lambda v: v if v == INHERIT else f"INT{v}")
    c2.selectbox("Granularity", [INHERIT, *WEIGHT_GRANULARITIES], key="sb_ov_w_granularity",
                 format_func=lambda v: labels.GRANULARITY.get(v, v))
    c1.selectbox("Weight clipping", [INHERIT, *WEIGHT_CLIPPING], key="sb_ov_w_clipping",
                 format_func=lambda v: labels.CLIPPING.get(v, v))
    c2.selectbox("Activation bits", [INHERIT, *BITS], key="sb_ov_a_bits",
                 format_func=lambda v: v if v == INHERIT else f"INT{v}")
    st.button("Set override", key="sb_ov_set", on_click=_set_override, width="stretch")
    for name, ov in ss["cfg_overrides"].items():
        c1, c2 = st.columns([5, 1])
        c1.caption(f"**{name}**: {_describe(ov)}")
        c2.button("✕", key=f"sb_ov_del_{name}", on_click=_delete_override, args=(name,), help=f"Remove the override of {name}")


def _describe(ov: dict[str, Any]) -> str:
    parts = [f"weights {k}={v}" for k, v in ov.get("weights", {}).items()]
    parts += [f"activations {k}={v}" for k, v in ov.get("activations", {}).items()]
    return ", ".join(parts) or "nothing"


def _set_override() -> None:
    ss = st.session_state
    name = ss["sb_ov_layer"]
    weights: dict[str, Any] = {}
    if ss["sb_ov_w_bits"] != INHERIT:
        weights["bits"] = ss["sb_ov_w_bits"]
    if ss["sb_ov_w_granularity"] != INHERIT:
        weights["granularity"] = ss["sb_ov_w_granularity"]
        if ss["sb_ov_w_granularity"] == "per_group":
            weights["group_size"] = int(ss["sb_w_group_size"])
    if ss["sb_ov_w_clipping"] != INHERIT:
        weights["clipping"] = ss["sb_ov_w_clipping"]
    activations = {} if ss["sb_ov_a_bits"] == INHERIT else {"bits": ss["sb_ov_a_bits"]}
    overrides = dict(ss["cfg_overrides"])
    entry = {k: v for k, v in (("weights", weights), ("activations", activations)) if v}
    if entry:
        overrides[name] = entry
    else:
        overrides.pop(name, None)
    ss["cfg_overrides"] = overrides


def _delete_override(name: str) -> None:
    overrides = dict(st.session_state["cfg_overrides"])
    overrides.pop(name, None)
    st.session_state["cfg_overrides"] = overrides
