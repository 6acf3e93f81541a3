"""Changes to the sidebar's controls shared by pages: apply a whole config, one-click fixes.

``apply_config`` is the one path by which a config from outside the controls (an imported file,
pasted JSON, a shared link, a workshop preset) reaches them: checked against its model first, then
set on every control, or nothing changes. The one-click fixes (keep a layer in float, give it 8
bits, round with GPTQ) are callbacks, so they run before the sidebar is drawn in the next run (Streamlit only lets a
widget's value be set before that widget is drawn). Each says what it did in the next run's flash
message.
"""

from __future__ import annotations

import streamlit as st

from ptq_core.config import QuantConfig

from . import resources, state


def apply_config(config: QuantConfig) -> None:
    """Check ``config`` against its model and data set, then set every control from it.

    Raises PTQError (the model or data set does not load, a path lies outside the data roots, a
    layer name does not exist) and then changes nothing. Call it before the sidebar is drawn: from
    a callback, or from ``app.py`` ahead of the sidebar.
    """
    resources.validate_for_model(config)
    state.apply_config_to_state(config)


def keep_float(name: str) -> None:
    keep = list(st.session_state["sb_keep_float"])
    if name not in keep:
        st.session_state["sb_keep_float"] = [*keep, name]
    state.flash("success", f"{name} is now kept in float; the model was re-run.")


def give_8_bits(name: str, input_point: str | None) -> None:
    """8-bit weights for ``name`` and, when activations are quantized, an 8-bit input (``input_point``)."""
    overrides = {k: dict(v) for k, v in st.session_state["cfg_overrides"].items()}
    entry = overrides.setdefault(name, {})
    entry["weights"] = {**entry.get("weights", {}), "bits": 8}
    if input_point is not None and st.session_state["sb_a_mode"] != state.WEIGHT_ONLY:
        point = overrides.setdefault(input_point, {})
        point["activations"] = {**point.get("activations", {}), "bits": 8}
    st.session_state["cfg_overrides"] = overrides
    state.flash("success", f"{name} now has 8-bit weights" + (f" and an 8-bit input ({input_point})" if input_point else "")
                + "; the model was re-run.")


def round_with_gptq(name: str) -> None:
    """GPTQ rounding (``algorithms.rounding``): model-wide, as every algorithm is, so ``name`` is repaired with the rest."""
    st.session_state["sb_alg_rounding"] = "gptq"
    state.flash("success", f"GPTQ now rounds every quantized layer, {name} included; the model was re-run.")
