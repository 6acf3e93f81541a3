"""Typed session-state access: the sidebar <-> QuantConfig mapping, and the session's history.

Every sidebar control is one widget key (``sb_*``) that maps 1:1 onto one QuantConfig field;
the table below is the whole mapping. ``sb_model`` and ``sb_dataset`` are the exception: plain
keys, set only once :mod:`dashboard.sources` has loaded and checked what they name. ``config_from_state()`` builds the config the controls
show; ``apply_config_to_state(config)`` sets every control from a config (import, "restore
from scatter", one-click fixes). Streamlit only lets a widget's value be set before that
widget is drawn in a run, so ``apply_config_to_state`` is called from callbacks (which run
before the script).

Fields without a control of their own (a future engine field, say) are kept from the last
config applied (``cfg_base``: the defaults, an import, a restore), so an imported config
always exports unchanged.

Per-session only: nothing here is shared between browser sessions. The history holds small
summary rows; full Results stay in the shared ``st.cache_data`` keyed by the config JSON.
"""

from __future__ import annotations

import copy
import json
from typing import Any

import streamlit as st

from ptq_core.config import Evaluation, Finetune, QuantConfig, SmoothQuant
from ptq_core.result import Result

from . import labels

# widget key -> dotted QuantConfig field. Sections that may be null (activations) or fields
# that only apply in some settings (group_size) are handled in the two functions below.
WEIGHT_KEYS = {
    "sb_w_bits": "bits", "sb_w_scheme": "scheme", "sb_w_granularity": "granularity",
    "sb_w_clipping": "clipping", "sb_w_percentile": "percentile",
}
ACT_KEYS = {
    "sb_a_bits": "bits", "sb_a_scheme": "scheme", "sb_a_granularity": "granularity",
    "sb_a_clipping": "clipping", "sb_a_percentile": "percentile",
}
CAL_KEYS = {"sb_cal_num_samples": "num_samples", "sb_cal_seed": "seed", "sb_cal_selection": "selection",
            "sb_cal_batch_size": "batch_size"}
EVAL_KEYS = {"sb_eval_batch_size": "batch_size", "sb_eval_layer_error_samples": "layer_error_samples",
             "sb_eval_runtime": "runtime", "sb_eval_backend": "backend", "sb_eval_arithmetic": "arithmetic"}
_TEXT_EVAL_FIELDS = ("runtime", "backend", "arithmetic")  # the other evaluation fields are integers
# Lists: a multiselect's value is a list, the config's field a tuple (kept in the order the user chose them).
EVAL_LIST_KEYS = {"sb_eval_targets": "targets"}
# The algorithms (config.algorithms). Fields without a control (adaround.seed, gptq.*, finetune.seed) come from
# cfg_base, so an imported config keeps them. The fine-tune controls hold their values while fine-tuning is off
# ("finetune": null), as the group size does while granularity is not per_group.
ALG_KEYS = {"sb_alg_cle": "cross_layer_equalization", "sb_alg_bias_correction": "bias_correction",
            "sb_alg_rounding": "rounding"}
ALG_ADAROUND_KEYS = {"sb_alg_adaround_iterations": "iterations"}
ALG_FINETUNE_KEYS = {"sb_alg_ft_steps": "steps", "sb_alg_ft_lr": "lr", "sb_alg_ft_batch_size": "batch_size"}
# SmoothQuant: a checkbox ("smoothquant": null when off), its alpha and an "auto" checkbox (alpha "auto": chosen per
# group of Linears; the slider keeps its number meanwhile), both held while off as the fine-tune controls are.
ALG_SMOOTHQUANT_KEYS = {"sb_alg_sq_alpha": "alpha"}
SQ_AUTO_KEY = "sb_alg_sq_auto"
WEIGHT_ONLY = "weight_only"  # the sb_a_mode value for "activations": null
DEFAULT_GROUP_SIZE = 32  # what the group-size control shows while granularity is not per_group
MAX_HISTORY = 300  # evaluated configs kept per session for the Overview scatter


def _widget_values(config: QuantConfig) -> dict[str, Any]:
    """Every control's value for ``config`` (controls a config leaves unset are omitted)."""
    values: dict[str, Any] = {
        "sb_model": labels.spec(config.model),
        "sb_dataset": labels.spec(config.dataset),
        "sb_fold_bn": config.fold_batchnorm,
        "sb_keep_float": list(config.keep_float),
        "sb_eval_num_samples": config.evaluation.num_samples or 0,  # 0: the whole split
        "cfg_overrides": config.to_dict()["overrides"],
        "cfg_base": config.to_dict(),
    }
    if hasattr(config, "device"):
        values["sb_device"] = config.device
    w = config.weights
    values.update({key: getattr(w, f) for key, f in WEIGHT_KEYS.items()})
    if w.group_size is not None:
        values["sb_w_group_size"] = w.group_size
    if config.activations is None:
        values["sb_a_mode"] = WEIGHT_ONLY
    else:
        values["sb_a_mode"] = config.activations.mode
        values.update({key: getattr(config.activations, f) for key, f in ACT_KEYS.items()})
    values.update({key: getattr(config.calibration, f) for key, f in CAL_KEYS.items()})
    values.update({key: getattr(config.evaluation, f) for key, f in EVAL_KEYS.items() if hasattr(config.evaluation, f)})
    values.update({key: list(getattr(config.evaluation, f)) for key, f in EVAL_LIST_KEYS.items()
                   if hasattr(config.evaluation, f)})
    alg = config.algorithms
    values.update({key: getattr(alg, f) for key, f in ALG_KEYS.items()})
    values.update({key: getattr(alg.adaround, f) for key, f in ALG_ADAROUND_KEYS.items()})
    values["sb_alg_finetune"] = alg.finetune is not None
    if alg.finetune is not None:
        values.update({key: getattr(alg.finetune, f) for key, f in ALG_FINETUNE_KEYS.items()})
    values["sb_alg_smoothquant"] = alg.smoothquant is not None
    if alg.smoothquant is not None:
        values[SQ_AUTO_KEY] = alg.smoothquant.alpha == "auto"
        if not values[SQ_AUTO_KEY]:
            values.update({key: float(getattr(alg.smoothquant, f)) for key, f in ALG_SMOOTHQUANT_KEYS.items()})
    return values


def default_config() -> QuantConfig:
    """The config a new session starts with: the engine's defaults, simulated by onnxruntime.

    The onnxruntime backend answers a what-if on EfficientNet-Lite0 about 5x faster than PyTorch
    eager (issue 9); the exported JSON says ``"backend": "onnxruntime"``, so ``python -m ptq_core run``
    reproduces the same numbers, and the PyTorch reference is one click away on the Overview.
    """
    return QuantConfig(evaluation=Evaluation(backend="onnxruntime"))


def init_state() -> None:
    """Defaults for every control and session list, set once per session."""
    defaults = _widget_values(default_config())
    defaults["sb_w_group_size"] = DEFAULT_GROUP_SIZE
    defaults.update({key: getattr(Finetune(), f) for key, f in ALG_FINETUNE_KEYS.items()})  # shown while off
    defaults.update({key: float(getattr(SmoothQuant(), f)) for key, f in ALG_SMOOTHQUANT_KEYS.items()})  # likewise
    defaults[SQ_AUTO_KEY] = False
    for key, value in defaults.items():
        st.session_state.setdefault(key, value)
    st.session_state.setdefault("history", [])  # list of history entries, oldest first
    st.session_state.setdefault("saved", [])  # named configurations for the Compare page
    st.session_state.setdefault("next_id", 1)
    st.session_state.setdefault("flash", None)  # one message shown once after a callback
    st.session_state.setdefault("last_good", None)  # (config JSON, Result) last shown complete: kept when a config fails


def spec_value(value: str) -> str | dict[str, Any]:
    """A model/data-set control's value as a spec: a registry name, or the object its JSON holds."""
    return json.loads(value) if value.startswith("{") else value


def config_from_state() -> QuantConfig:
    """The QuantConfig the sidebar shows. Raises ConfigError for an invalid combination."""
    ss = st.session_state
    weights = {f: ss[key] for key, f in WEIGHT_KEYS.items()}
    weights["group_size"] = int(ss["sb_w_group_size"]) if ss["sb_w_granularity"] == "per_group" else None
    activations = None
    if ss["sb_a_mode"] != WEIGHT_ONLY:
        activations = {"mode": ss["sb_a_mode"], **{f: ss[key] for key, f in ACT_KEYS.items()}}
    data = copy.deepcopy(ss["cfg_base"])
    data.update({
        "model": spec_value(ss["sb_model"]),
        "dataset": spec_value(ss["sb_dataset"]),
        "weights": weights,
        "activations": activations,
        "calibration": {f: ss[key] for key, f in CAL_KEYS.items()},
        "fold_batchnorm": bool(ss["sb_fold_bn"]),
        "keep_float": list(ss["sb_keep_float"]),
        "overrides": ss["cfg_overrides"],
    })
    for key, f in EVAL_KEYS.items():
        if key in ss:
            data["evaluation"][f] = ss[key] if f in _TEXT_EVAL_FIELDS else int(ss[key])
    for key, f in EVAL_LIST_KEYS.items():
        if key in ss:
            data["evaluation"][f] = list(ss[key])
    data["evaluation"]["num_samples"] = int(ss["sb_eval_num_samples"]) or None
    if "sb_device" in ss:
        data["device"] = ss["sb_device"]
    data["algorithms"] = _algorithms_from_state(data.get("algorithms") or {})
    return QuantConfig.from_dict(data)


def _algorithms_from_state(base: dict[str, Any]) -> dict[str, Any]:
    """``config.algorithms`` from the controls, over ``base`` (cfg_base's), whose fields without a control survive."""
    ss = st.session_state
    alg = dict(base)
    alg.update({f: ss[key] for key, f in ALG_KEYS.items()})
    alg["adaround"] = {**(base.get("adaround") or {}),
                       **{f: int(ss[key]) for key, f in ALG_ADAROUND_KEYS.items()}}
    if ss["sb_alg_finetune"]:
        alg["finetune"] = {**(base.get("finetune") or {}),
                           **{f: float(ss[key]) if f == "lr" else int(ss[key]) for key, f in ALG_FINETUNE_KEYS.items()}}
    else:
        alg["finetune"] = None
    if ss["sb_alg_smoothquant"]:
        alg["smoothquant"] = {**(base.get("smoothquant") or {}),
                              **{f: float(ss[key]) for key, f in ALG_SMOOTHQUANT_KEYS.items()}}
        if ss[SQ_AUTO_KEY]:
            alg["smoothquant"]["alpha"] = "auto"
    else:
        alg["smoothquant"] = None
    return alg


def algorithms_learn() -> bool:
    """Whether the controls ask for an algorithm that learns from the calibration images (every one but CLE).

    SmoothQuant reads max |x| per channel from them, in dynamic mode too; weight-only it does nothing.
    """
    ss = st.session_state
    smooth = ss["sb_alg_smoothquant"] and ss["sb_a_mode"] != WEIGHT_ONLY
    return bool(ss["sb_alg_bias_correction"] or ss["sb_alg_rounding"] != "nearest" or ss["sb_alg_finetune"] or smooth)


def apply_config_to_state(config: QuantConfig) -> None:
    """Set every control from ``config`` (call from a callback: widgets may not be drawn yet)."""
    for key, value in _widget_values(config).items():
        st.session_state[key] = value


def flash(kind: str, message: str) -> None:
    """Queue one message (kind: success | info | warning | error) for the next run to show."""
    st.session_state["flash"] = (kind, message)


def pop_flash() -> tuple[str, str] | None:
    msg = st.session_state.get("flash")
    st.session_state["flash"] = None
    return msg


# -- history and saved configurations ------------------------------------------------------------
def summary(result: dict[str, Any]) -> dict[str, Any]:
    """One flat row of a Result dict: the engine's summary row plus what the scatter and tables show."""
    row = Result.from_dict(result).summary_row()
    row.update({
        "label": labels.config_label(result["config"]),
        "quant_ms": labels.latency(result["latency"])["quant_ms"],
        "fp32_ms": labels.latency(result["latency"])["fp32_ms"],
        "latency_kind": result["latency"].get("kind", "simulated"),
        "pretrained": result["model"]["pretrained"],
        "dataset": result["dataset"]["name"],
    })
    m = result["metrics"]
    if labels.is_embedding(m):  # what the scatter and tables show for embeddings (classification rows stay as they were)
        row.update({key: m.get(key) for key in ("task", "cosine_mean", "cosine_min", "neighbour_agreement", "recall_at_10")})
    return row


def remember(result: dict[str, Any], source: str = "sidebar") -> None:
    """Add an evaluated config to this session's history (once per config; re-adding moves it last)."""
    key = json.dumps(result["config"], sort_keys=True)
    history: list[dict[str, Any]] = st.session_state["history"]
    for i, entry in enumerate(history):
        if entry["config_json"] == key:
            if i != len(history) - 1:
                history.append(history.pop(i))
            return
    history.append({"id": _next_id(), "config_json": key, "source": source, "row": summary(result)})
    del history[:-MAX_HISTORY]


def set_last_good(config_json: str, result: dict[str, Any]) -> None:
    st.session_state["last_good"] = (config_json, result)


def last_good() -> tuple[str, dict[str, Any]] | None:
    """The last complete Result this session showed, with its config JSON (None before the first)."""
    return st.session_state.get("last_good")


def history() -> list[dict[str, Any]]:
    return st.session_state["history"]


def history_entry(entry_id: int) -> dict[str, Any] | None:
    return next((e for e in st.session_state["history"] if e["id"] == entry_id), None)


def save(result: dict[str, Any], name: str) -> None:
    key = json.dumps(result["config"], sort_keys=True)
    st.session_state["saved"].append({"id": _next_id(), "name": name, "config_json": key, "row": summary(result)})


def saved() -> list[dict[str, Any]]:
    return st.session_state["saved"]


def rename_saved(entry_id: int, name: str) -> None:
    for entry in st.session_state["saved"]:
        if entry["id"] == entry_id:
            entry["name"] = name


def delete_saved(entry_id: int) -> None:
    st.session_state["saved"] = [e for e in st.session_state["saved"] if e["id"] != entry_id]


def _next_id() -> int:
    n = int(st.session_state["next_id"])
    st.session_state["next_id"] = n + 1
    return n
