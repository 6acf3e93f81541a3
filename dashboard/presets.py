"""Workshop presets: named configurations listed in the sidebar; choosing one sets every control.

Presets are JSON files read from two folders, in file-name order:

    assets/presets/     the exercises shipped with the project (digits models)
    PTQ_PRESETS_DIR     an instructor's own folder (optional), listed after them

One file is one preset::

    {"title": "2. 2-bit weights, one range per tensor: the collapse",
     "description": "What to look at, what to try next.",
     "config": {"model": "digits_cnn", "weights": {"bits": 2, "granularity": "per_tensor"}}}

``config`` is a (partial) QuantConfig: the fields it leaves out take the dashboard's defaults
(:func:`dashboard.sharing.config_from_partial`), so a preset is a known starting point whatever
the controls showed before. Save a config from the Export page and wrap it as above to make one.

A file that cannot be used (not JSON, unknown keys, an invalid config) is listed as unusable with
the reason; choosing a preset whose model does not load, or names a layer it lacks, changes nothing
and says why. Files are re-read on every run, so an instructor can add one during the workshop.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import streamlit as st

from ptq_core.config import QuantConfig
from ptq_core.errors import ConfigError, PTQError

from . import actions, sharing, state

BUILTIN_DIR = Path(__file__).resolve().parents[1] / "assets" / "presets"
PRESETS_DIR_ENV = "PTQ_PRESETS_DIR"
MAX_PRESET_BYTES = 256 * 1024  # a preset is a config and two sentences; anything larger is not one
KEYS = ("title", "description", "config")
PICK_KEY = "preset_pick"  # the picker (reset after each choice: it is an action, not a setting)
APPLIED_KEY = "preset_applied"  # (preset id, config JSON) of the last preset applied
ERROR_KEY = "preset_error"  # why the last choice changed nothing: shown under the picker until the next choice


@dataclass(frozen=True)
class Preset:
    """One preset file: usable (``config`` set) or not (``error`` says why)."""

    id: str  # "<folder label>/<file name>": unique across both folders
    path: Path
    title: str
    description: str = ""
    config: QuantConfig | None = None
    error: str | None = None


def folders() -> list[tuple[str, Path]]:
    """(label, folder) of every preset folder: the built-in one, then ``PTQ_PRESETS_DIR`` when set."""
    found = [("built-in", BUILTIN_DIR)]
    raw = os.environ.get(PRESETS_DIR_ENV, "").strip()
    if raw:
        found.append((PRESETS_DIR_ENV, Path(raw).expanduser()))
    return found


def read_preset(path: Path, label: str, base: QuantConfig) -> Preset:
    """One file as a Preset; anything wrong with it becomes its ``error``, never an exception."""
    pid = f"{label}/{path.name}"
    try:
        size = path.stat().st_size
        if size > MAX_PRESET_BYTES:
            raise ConfigError(f"{size // 1024} KiB; allowed: at most {MAX_PRESET_BYTES // 1024} KiB")
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        return Preset(pid, path, path.name, error=f"cannot be read ({exc.strerror})")
    except UnicodeDecodeError:
        return Preset(pid, path, path.name, error="is not UTF-8 text; allowed: a JSON file")
    except ConfigError as exc:
        return Preset(pid, path, path.name, error=str(exc))
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        return Preset(pid, path, path.name, error=f"is not valid JSON: {exc.msg} at line {exc.lineno} column {exc.colno}")
    if not isinstance(data, dict) or not isinstance(data.get("config"), dict):
        return Preset(pid, path, path.name, error='allowed: a JSON object {"title": ..., "description": ..., "config": {...}}')
    unknown = sorted(set(data) - set(KEYS))
    if unknown:
        return Preset(pid, path, path.name, error=f"{unknown[0]}: unknown key; allowed keys: {', '.join(KEYS)}")
    title, description = data.get("title", path.stem), data.get("description", "")
    if not isinstance(title, str) or not isinstance(description, str):
        return Preset(pid, path, path.name, error="title and description: allowed: strings")
    try:
        config = sharing.config_from_partial(data["config"], base)
    except ConfigError as exc:
        return Preset(pid, path, title or path.name, description, error=str(exc))
    return Preset(pid, path, title or path.stem, description, config)


def load_presets(base: QuantConfig | None = None) -> list[Preset]:
    """Every preset file of :func:`folders`, in folder then file-name order; a missing folder is one unusable entry."""
    base = base if base is not None else state.default_config()
    presets: list[Preset] = []
    for label, folder in folders():
        if not folder.is_dir():
            presets.append(Preset(f"{label}/", folder, str(folder),
                                  error=f"{label}={str(folder)!r} is not a folder; allowed: a folder of .json presets"))
            continue
        for path in sorted(folder.glob("*.json")):
            presets.append(read_preset(path, label, base))
    return presets


# -- the sidebar picker ---------------------------------------------------------------------------
def _on_pick() -> None:
    ss = st.session_state
    chosen = ss.get(PICK_KEY)
    ss[PICK_KEY] = None  # an action: the picker is ready for the next choice
    ss[ERROR_KEY] = None
    preset = next((p for p in load_presets() if p.id == chosen), None)
    if preset is None:
        return
    if preset.config is None:
        ss[ERROR_KEY] = f"Preset {preset.path.name} is unusable, nothing changed: {preset.error}"
        return
    try:
        actions.apply_config(preset.config)
    except PTQError as exc:
        ss[ERROR_KEY] = f"Preset “{preset.title}” could not be applied, nothing changed: {exc}"
        return
    ss[APPLIED_KEY] = (preset.id, preset.config.to_json())
    state.flash("success", f"Preset “{preset.title}” applied: every control shows its settings.")


def render() -> None:
    """The preset picker, the applied preset's description, and the unusable files with their reasons."""
    presets = load_presets()
    if not presets:
        return
    sb = st.sidebar
    by_id = {p.id: p for p in presets}
    sb.selectbox("Workshop preset", list(by_id), index=None, key=PICK_KEY, on_change=_on_pick,
                 placeholder="Choose an exercise…",
                 format_func=lambda pid: by_id[pid].title if by_id[pid].error is None else f"⚠ {by_id[pid].path.name} (unusable)",
                 help="Sets every control to a prepared configuration. Built-in exercises come from assets/presets/; "
                      f"an instructor adds their own with {PRESETS_DIR_ENV}.")
    error = st.session_state.get(ERROR_KEY)
    if error:
        sb.error(error)
    applied = st.session_state.get(APPLIED_KEY)
    if applied is not None and applied[0] in by_id:
        preset = by_id[applied[0]]
        try:
            still = state.config_from_state().to_json() == applied[1]
        except PTQError:
            still = False
        if still and preset.description:
            sb.caption(f"**{preset.title}**: {preset.description}")
    broken = [p for p in presets if p.error is not None]
    if broken:
        with sb.expander(f"Unusable preset files ({len(broken)})"):
            for p in broken:
                st.caption(f"`{p.path.name}` ({p.id.split('/', 1)[0]}): {p.error}")
