"""Helpers of the dashboard tests: the app under AppTest and ways to read what a page shows."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from streamlit.testing.v1 import AppTest

ROOT = Path(__file__).resolve().parents[2]
APP = ROOT / "dashboard" / "app.py"
PAGES = ["overview", "weights", "activations", "layer_error", "compare", "sensitivity", "calibration_check", "deploy", "export", "learn"]
TIMEOUT_S = 60  # first runs load the model and evaluate: generous on a 2-core machine


def new_app() -> AppTest:
    return AppTest.from_file(str(APP), default_timeout=TIMEOUT_S)


def open_page(at: AppTest, page: str) -> AppTest:
    return at.switch_page(f"views/{page}.py").run()


def problems(at: AppTest) -> list[str]:
    """Exceptions and error messages on the page (both mean a failure for valid input)."""
    return [str(e.value) for e in at.exception] + [str(e.value) for e in at.error]


def chart_specs(at: AppTest) -> list[dict[str, Any]]:
    return [json.loads(c.proto.spec) for c in at.get("plotly_chart")]


def metric(at: AppTest, label_start: str) -> str:
    found = [m.value for m in at.metric if m.label.startswith(label_start)]
    assert found, f"no metric starting with {label_start!r}: {[m.label for m in at.metric]}"
    return found[0]


def values(v: Any) -> list[float]:
    """A Plotly JSON array as a list: plain lists stay, typed arrays (``{"dtype", "bdata"}``) are decoded."""
    if isinstance(v, dict) and "bdata" in v:
        import base64

        import numpy as np

        return np.frombuffer(base64.b64decode(v["bdata"]), dtype=np.dtype(v["dtype"])).tolist()
    return list(v)
