"""Configurations in links: the ``cfg`` query parameter, written on every run and read once per session.

A link carries only what differs from the dashboard's defaults (:func:`config_diff` against
:func:`dashboard.state.default_config`), as compact JSON, raw-deflate compressed and URL-safe
base64 (no padding). The default config has no ``cfg`` at all; a typical exercise is a few dozen
characters::

    W4 per-group 32, MSE weights:  {"weights":{"bits":4,"clipping":"mse","granularity":"per_group","group_size":32}}
    -> ?cfg=q1YqT81MzygpVrKqVkrKBNEmOkrJOZkFBZl56UpWSrnFqUo6SulFiXmlOYlFmSWVQLGC1KL49KL80gKwDJCOL86sSlWyMjaqrQUA

Reading a link is the same path as importing a file (:func:`dashboard.actions.apply_config`):
the config is checked against its model, then every control is set; a garbled, truncated or
invalid ``cfg`` changes nothing and says what is wrong (:class:`~ptq_core.errors.ConfigError`).
Fields a link leaves out take the dashboard's defaults, so links stay valid when the config gains
fields. :func:`config_from_partial` is also how workshop presets (:mod:`dashboard.presets`) are
read: a partial config over the same defaults.
"""

from __future__ import annotations

import base64
import binascii
import copy
import json
import zlib
from typing import Any

import streamlit as st

from ptq_core.config import QuantConfig
from ptq_core.errors import ConfigError, PTQError

from . import actions, state

PARAM = "cfg"
# A link made here is a few hundred characters even with many per-layer overrides; browsers and
# proxies cope with about 8,000. Longer values, and JSON that inflates past MAX_JSON_BYTES, are not
# links this dashboard wrote, so they are refused before anything is parsed.
MAX_PARAM_CHARS = 8000
MAX_JSON_BYTES = 64 * 1024
# Sections merged key by key (a link or preset may name one field of them); everything else replaces whole.
SECTIONS = ("weights", "activations", "calibration", "evaluation")
RESTORED_KEY = "url_restored"  # session-state flag: the link of this session was read (once)
ERROR_KEY = "url_error"  # why the link could not be used: shown until the controls leave the defaults


# -- pure: diff, merge, encode, decode ------------------------------------------------------------
def config_diff(config: QuantConfig, base: QuantConfig) -> dict[str, Any]:
    """The fields of ``config`` that differ from ``base``, sections key by key. ``{}`` when equal.

    Example: W4 weights over the defaults -> ``{"weights": {"bits": 4}}``.
    """
    new, old = config.to_dict(), base.to_dict()
    diff: dict[str, Any] = {}
    for key, value in new.items():
        before = old.get(key)
        if key in SECTIONS and isinstance(value, dict) and isinstance(before, dict):
            sub = {k: v for k, v in value.items() if before.get(k) != v}
            if sub:
                diff[key] = sub
        elif value != before:
            diff[key] = value
    return diff


def config_from_partial(partial: Any, base: QuantConfig, *, what: str = "config") -> QuantConfig:
    """``base`` with the fields ``partial`` names (sections merged key by key), validated.

    Raises ConfigError naming the field (prefixed by ``what``) for anything ``QuantConfig.from_dict``
    refuses, e.g. ``{"weights": {"bits": 12}}`` -> "weights.bits: got 12; allowed: an integer from 2 to 8".
    """
    if not isinstance(partial, dict):
        kind = "a JSON array" if isinstance(partial, list) else f"{type(partial).__name__}"
        raise ConfigError(f"{what}: got {kind}; allowed: a JSON object of config fields")
    data = copy.deepcopy(base.to_dict())
    for key, value in partial.items():
        if key in SECTIONS and isinstance(value, dict) and isinstance(data.get(key), dict):
            data[key] = {**data[key], **value}
        else:
            data[key] = value
    try:
        return QuantConfig.from_dict(data)
    except ConfigError as exc:
        raise ConfigError(f"{what}: {exc}") from None


def encode(config: QuantConfig, base: QuantConfig) -> str:
    """The ``cfg`` value of ``config`` (its difference from ``base``); ``""`` for ``base`` itself."""
    diff = config_diff(config, base)
    if not diff:
        return ""
    raw = json.dumps(diff, separators=(",", ":"), sort_keys=True).encode("utf-8")
    return base64.urlsafe_b64encode(zlib.compress(raw, 9, wbits=-15)).decode("ascii").rstrip("=")


def decode(value: str, base: QuantConfig) -> QuantConfig:
    """The config a ``cfg`` value stands for. ConfigError saying what is wrong with it otherwise."""
    allowed = "the value of a link copied from the Export page"
    text = value.strip()
    if not text:
        raise ConfigError(f"link parameter {PARAM}: got an empty value; allowed: {allowed}")
    if len(text) > MAX_PARAM_CHARS:
        raise ConfigError(f"link parameter {PARAM}: got {len(text)} characters; allowed: at most {MAX_PARAM_CHARS} "
                          f"({allowed})")
    try:
        packed = base64.b64decode(text + "=" * (-len(text) % 4), altchars=b"-_", validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(f"link parameter {PARAM}: got {_short(text)}, which is not URL-safe base64 (was the link "
                          f"cut or edited?); allowed: {allowed}") from None
    inflater = zlib.decompressobj(wbits=-15)
    try:
        raw = inflater.decompress(packed, MAX_JSON_BYTES)
    except zlib.error:
        raise ConfigError(f"link parameter {PARAM}: got {_short(text)}, which does not decompress (was the link cut "
                          f"or edited?); allowed: {allowed}") from None
    if not inflater.eof:  # stopped at the size cap, or the stream has no end
        why = "expands past 64 KiB" if len(raw) >= MAX_JSON_BYTES else "ends early (was the link cut?)"
        raise ConfigError(f"link parameter {PARAM}: got {_short(text)}, which {why}; allowed: {allowed}")
    try:
        partial = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        raise ConfigError(f"link parameter {PARAM}: got {_short(text)}, which holds no JSON; allowed: {allowed}") from None
    return config_from_partial(partial, base, what=f"link parameter {PARAM}")


def _short(text: str) -> str:
    return repr(text if len(text) <= 24 else text[:20] + "…")


# -- Streamlit: read once, write on every run ----------------------------------------------------------
def restore_from_url() -> None:
    """Apply the link's ``cfg`` to every control, once per session; call before the sidebar is drawn.

    A value that cannot be used leaves the session on its defaults and says why: :func:`show_error`
    shows the message above every page until the controls leave the defaults.
    """
    if st.session_state.get(RESTORED_KEY):
        return
    st.session_state[RESTORED_KEY] = True
    st.session_state[ERROR_KEY] = None
    value = st.query_params.get(PARAM)
    if value is None:
        return
    try:
        actions.apply_config(decode(value, state.default_config()))
    except PTQError as exc:
        st.session_state[ERROR_KEY] = f"The configuration in this link could not be used; the controls show the defaults. {exc}"
        return
    state.flash("success", "Opened a shared configuration: every control shows its settings.")


def show_error() -> None:
    """The link's error above the page, while the session is still on the defaults it fell back to."""
    error = st.session_state.get(ERROR_KEY)
    if error is None:
        return
    if current_param() != "":  # the user has moved on from the defaults: the message has done its job
        st.session_state[ERROR_KEY] = None
        return
    st.error(error)


def current_param() -> str | None:
    """The ``cfg`` value of the controls' config ("" for the defaults), or None when the controls are invalid."""
    try:
        config = state.config_from_state()
    except PTQError:
        return None
    return encode(config, state.default_config())


def sync_url() -> None:
    """Keep the address bar's ``cfg`` equal to the controls' config (no rerun: the browser only updates its URL)."""
    value = current_param()
    if value is None:  # invalid controls: keep the last good link
        return
    if value and st.query_params.get(PARAM) != value:
        st.query_params[PARAM] = value
    elif not value and PARAM in st.query_params:
        del st.query_params[PARAM]


def links(value: str) -> tuple[str, str | None]:
    """(relative link, full link or None): the full one only when the request's Host header is known.

    The server cannot know for sure how the browser reached it (proxies, ports), so the relative
    form is always shown; the full one is built from ``Host``, ``X-Forwarded-Proto`` and
    ``server.baseUrlPath``.
    """
    relative = f"?{PARAM}={value}" if value else "?"
    headers = st.context.headers
    host = headers.get("Host")
    scheme = headers.get("X-Forwarded-Proto") or "http"
    if not host:
        return relative, None
    base = (st.get_option("server.baseUrlPath") or "").strip("/")
    path = f"/{base}/" if base else "/"
    return relative, f"{scheme}://{host}{path}{relative if value else ''}"
