"""A comparison of Results as one self-contained HTML file: configs, metrics, charts, machine and versions.

    python -m ptq_core report --results w8.json w4.json sweep.json --output report.html

``build_report(entries)`` returns the page as a string: a metrics table (one row per Result), the
accuracy-size chart and the per-layer error chart as interactive Plotly figures, each config as
JSON, the warnings each run gave, the versions each Result was measured with and the machine the
report was written on. plotly.js is embedded once, inline, so the file opens offline and can be
mailed or put on a course page (about 4.7 MB, nearly all of it plotly.js).

What is a Result file: the JSON ``python -m ptq_core run --output`` writes (one Result), or the
``.json`` list ``sweep`` writes next to its CSV (several). :func:`load_results` checks every file
before anything is built and raises :class:`~ptq_core.errors.ResultFileError` naming the file.

The dashboard's Compare page calls the same builder with the Results of its saved configurations.
No Streamlit here; plotly is imported when a report is built.
"""

from __future__ import annotations

import html
import json
import os
import platform
import time
from collections.abc import Sequence
from dataclasses import MISSING, dataclass, fields
from importlib import metadata
from pathlib import Path
from typing import Any

from .errors import ResultFileError
from .machine import cpu_name
from .result import Result

__all__ = ["ReportEntry", "build_report", "load_results", "machine"]

REQUIRED = tuple(f.name for f in fields(Result) if f.default is MISSING and f.default_factory is MISSING)
_ALLOWED = "allowed: a Result JSON written by `python -m ptq_core run --output` (or the .json list `sweep` writes)"
MAX_RESULT_FILE_BYTES = 256 * 1024 * 1024  # a digits Result is ~70 KB, EfficientNet-Lite0's ~1 MB; a sweep holds many
VERSIONED = ("torch", "onnxruntime", "onnx", "numpy", "plotly")  # the packages whose versions move the numbers or the page
# One colour per compared config (Plotly's qualitative "D3"); FP32 keeps the dashboard's blue.
PALETTE = ("#1F77B4", "#FF7F0E", "#2CA02C", "#D62728", "#9467BD", "#8C564B", "#E377C2", "#7F7F7F", "#BCBD22", "#17BECF")
FP32_COLOR = "#3B6FB6"


@dataclass(frozen=True)
class ReportEntry:
    """One compared configuration: its name in the report and its Result as a dict (``Result.to_dict()``)."""

    name: str
    result: dict[str, Any]


# -- reading Result files ------------------------------------------------------------------------------
def _check_result(data: Any, where: str) -> dict[str, Any]:
    if not isinstance(data, dict):
        raise ResultFileError(f"{where}: got a JSON {type(data).__name__}, not a Result; {_ALLOWED}")
    missing = [k for k in REQUIRED if k not in data]
    if missing:
        raise ResultFileError(f"{where}: not a Result (missing keys: {', '.join(missing)}); {_ALLOWED}")
    metrics, size = data.get("metrics"), data.get("size")
    if not isinstance(metrics, dict) or not isinstance(metrics.get("agreement"), (int, float)):
        raise ResultFileError(f"{where}: metrics.agreement is missing or not a number; {_ALLOWED}")
    if not isinstance(size, dict) or not all(isinstance(size.get(k), int) for k in ("fp32_bytes", "quant_bytes")):
        raise ResultFileError(f"{where}: size.fp32_bytes / size.quant_bytes are missing or not integers; {_ALLOWED}")
    if not isinstance(data.get("config"), dict) or not isinstance(data.get("layers"), list):
        raise ResultFileError(f"{where}: config must be an object and layers a list; {_ALLOWED}")
    return data


def load_results(paths: Sequence[str | os.PathLike[str]]) -> list[ReportEntry]:
    """Every Result in ``paths``, named after its file (``stem[i]`` for the entries of a list). Checks all first.

    Raises:
        ResultFileError: no paths, or a file that is missing, unreadable, not JSON or not a Result.
    """
    if not paths:
        raise ResultFileError(f"--results: got no files; {_ALLOWED}")
    entries: list[ReportEntry] = []
    for raw in paths:
        path = Path(raw)
        where = f"result file {str(raw)!r}"
        try:
            if path.is_dir():
                raise ResultFileError(f"{where} is a folder; {_ALLOWED}")
            size = path.stat().st_size
            if size > MAX_RESULT_FILE_BYTES:
                raise ResultFileError(f"{where}: {size / 2**20:.0f} MiB; allowed: at most "
                                      f"{MAX_RESULT_FILE_BYTES // 2**20} MiB")
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ResultFileError(f"{where} does not exist; {_ALLOWED}") from None
        except OSError as exc:
            raise ResultFileError(f"{where} cannot be read ({exc.strerror}); {_ALLOWED}") from None
        except UnicodeDecodeError:
            raise ResultFileError(f"{where} is not UTF-8 text; {_ALLOWED}") from None
        try:
            data = json.loads(text)
        except json.JSONDecodeError as exc:
            raise ResultFileError(f"{where} is not valid JSON ({exc.msg} at line {exc.lineno} column {exc.colno}); "
                                  f"{_ALLOWED}") from None
        if isinstance(data, list):
            if not data:
                raise ResultFileError(f"{where} is an empty list; {_ALLOWED}")
            entries += [ReportEntry(f"{path.stem}[{i}]", _check_result(item, f"{where}, entry {i}"))
                        for i, item in enumerate(data)]
        else:
            entries.append(ReportEntry(path.stem, _check_result(data, where)))
    return entries


# -- what goes on the page ---------------------------------------------------------------------------
def machine() -> dict[str, Any]:
    """The machine and package versions the report is written with (not necessarily the Results')."""
    cpu = cpu_name()
    versions = {}
    for name in VERSIONED:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return {"cpu": cpu, "cores": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version(),
            "versions": versions}


def config_label(config: dict[str, Any]) -> str:
    """A short name such as ``W4 per_group(32) mse · A8 static minmax`` (the dashboard words it more kindly)."""
    w = config.get("weights") or {}
    gran = w.get("granularity", "?") + (f"({w.get('group_size')})" if w.get("granularity") == "per_group" else "")
    parts = [f"W{w.get('bits', '?')} {gran} {w.get('clipping', '')}".strip()]
    a = config.get("activations")
    parts.append("weight-only" if a is None else f"A{a.get('bits')} {a.get('mode')}"
                 + (f" {a.get('clipping')}" if a.get("mode") == "static" else ""))
    if config.get("keep_float"):
        parts.append(f"{len(config['keep_float'])} float")
    if config.get("keep_float_activations"):
        parts.append(f"{len(config['keep_float_activations'])} float activations")
    if config.get("overrides"):
        parts.append(f"{len(config['overrides'])} overrides")
    return " · ".join(parts)


def _pct(x: Any) -> str:
    return "n/a" if x is None else f"{100 * x:.2f}"


def _spec(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value, sort_keys=True)


def _rows(entries: Sequence[ReportEntry]) -> list[dict[str, str]]:
    rows = []
    for i, e in enumerate(entries):
        r, m, size = e.result, e.result["metrics"], e.result["size"]
        delta = (None if m.get("quant_top1") is None or m.get("fp32_top1") is None
                 else 100 * (m["quant_top1"] - m["fp32_top1"]))
        lat_ms, lat_kind = _latency_ms(r.get("latency") or {})
        env = r.get("environment") or {}
        rows.append({
            "#": str(i + 1), "name": e.name, "config": config_label(r["config"]),
            "model": _spec(r["config"].get("model")), "data": _spec(r["config"].get("dataset")),
            "FP32 top-1 (%)": _pct(m.get("fp32_top1")), "quantized top-1 (%)": _pct(m.get("quant_top1")),
            "Δ top-1 (pp)": "n/a" if delta is None else f"{delta:+.2f}",
            "agreement (%)": _pct(m.get("agreement")), "KL (nats)": f"{m.get('kl_divergence', float('nan')):.4f}",
            "size (bytes)": f"{size['quant_bytes']:,}", "compression": f"{size.get('compression_ratio', 0):.2f}x",
            "latency (ms)": "n/a" if lat_ms is None else f"{lat_ms:.3g} ({lat_kind})",
            "evaluated on": f"{r['dataset'].get('num_eval_samples', '?')} samples"
                            + (" (first answer)" if "samples" in r.get("pending", []) else ""),
            "measured with": ", ".join(f"{label} {env[k]}" for k, label in
                                       (("torch", "torch"), ("evaluation_backend", "backend"), ("threads", "threads"))
                                       if k in env),
        })
    return rows


def _latency_ms(block: dict[str, Any]) -> tuple[float | None, str]:
    """Batch-1 milliseconds of the quantized model and how they were obtained (measured on onnxruntime, or simulated)."""
    if block.get("kind") == "measured" and block.get("batches"):
        batch = block["batches"].get("1") or next(iter(block["batches"].values()))
        return batch.get("quant_ms"), "measured"
    value = block.get("quant_ms")
    return (float(value) if isinstance(value, (int, float)) else None), "simulated"


def _figure_html(fig: Any, div_id: str) -> str:
    import plotly.io as pio

    return str(pio.to_html(fig, include_plotlyjs=False, full_html=False, div_id=div_id,
                           config={"displaylogo": False, "responsive": True}))


def accuracy_size_figure(entries: Sequence[ReportEntry]) -> Any:
    """Quantized size (KiB) against top-1 (or agreement when any Result has no top-1), one point per config, FP32 stars."""
    import plotly.graph_objects as go

    top1 = all(e.result["metrics"].get("quant_top1") is not None for e in entries)
    key, axis = ("quant_top1", "quantized top-1 (%)") if top1 else ("agreement", "agreement with FP32 (%)")
    fig = go.Figure()
    for i, e in enumerate(entries):
        r = e.result
        fig.add_trace(go.Scatter(
            x=[r["size"]["quant_bytes"] / 1024], y=[100 * r["metrics"][key]], mode="markers+text", text=[f"#{i + 1}"],
            textposition="top center", name=f"#{i + 1} {e.name}", marker={"size": 12, "color": PALETTE[i % len(PALETTE)]},
            hovertemplate=f"#{i + 1} {html.escape(e.name)}<br>{html.escape(config_label(r['config']))}"
                          "<br>%{x:.1f} KiB, %{y:.2f} %<extra></extra>"))
    fp32: dict[str, tuple[float, float]] = {}
    for e in entries:
        ref = e.result["metrics"].get("fp32_top1") if top1 else 1.0
        if ref is not None:
            fp32.setdefault(_spec(e.result["config"].get("model")), (e.result["size"]["fp32_bytes"] / 1024, 100 * ref))
    for model, (x, y) in fp32.items():
        fig.add_trace(go.Scatter(x=[x], y=[y], mode="markers", name=f"FP32 {model}",
                                 marker={"symbol": "star", "size": 16, "color": FP32_COLOR},
                                 hovertemplate=f"FP32 {html.escape(model)}: %{{x:.1f}} KiB, %{{y:.2f}} %<extra></extra>"))
    fig.update_layout(title="Accuracy against size", xaxis_title="model size (KiB)", yaxis_title=axis, height=460,
                      margin={"l": 10, "r": 10, "t": 50, "b": 10}, legend={"orientation": "v"})
    return fig


def layer_error_figure(entries: Sequence[ReportEntry]) -> tuple[Any, bool]:
    """Per-layer SQNR of every config (weights; and outputs, accumulated, where the probe measured them).

    Returns the figure and whether any Result had output SQNRs (the dashboard measures them only
    when the Layer error page was opened; ``python -m ptq_core run`` always does).
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    measured = any(layer.get("output_sqnr_db") is not None for e in entries for layer in e.result["layers"])
    keys = [("weight_sqnr_db", "weights")] + ([("output_sqnr_db", "output (accumulated)")] if measured else [])
    fig = make_subplots(rows=len(keys), cols=1, shared_xaxes=True, vertical_spacing=0.08,
                        subplot_titles=[f"SQNR of each layer's {what} (dB, higher is better)" for _, what in keys])
    for row, (key, what) in enumerate(keys, start=1):
        for i, e in enumerate(entries):
            layers = e.result["layers"]
            fig.add_trace(go.Bar(x=[layer["name"] for layer in layers], y=[layer.get(key) for layer in layers],
                                 name=f"#{i + 1} {e.name}", legendgroup=str(i), showlegend=row == 1,
                                 marker={"color": PALETTE[i % len(PALETTE)]},
                                 hovertemplate=f"#{i + 1} %{{x}}: %{{y:.1f}} dB<extra>{what}</extra>"), row=row, col=1)
    fig.update_layout(barmode="group", height=380 * len(keys), margin={"l": 10, "r": 10, "t": 50, "b": 10},
                      legend={"orientation": "h", "y": -0.15})
    return fig, measured


_CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; padding: 0 1em; color: #222; }
table { border-collapse: collapse; font-size: 0.85em; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 0.3em 0.5em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
pre { background: #f7f7f7; padding: 0.6em; overflow-x: auto; font-size: 0.8em; }
.note { color: #555; font-size: 0.9em; }
.warning { color: #8a5a00; }
"""


def _table(rows: Sequence[dict[str, str]]) -> str:
    if not rows:
        return ""
    head = "".join(f"<th>{html.escape(k)}</th>" for k in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(v)}</td>" for v in row.values()) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def build_report(entries: Sequence[ReportEntry], *, title: str = "PTQ Explorer comparison",
                 host: dict[str, Any] | None = None) -> str:
    """The whole report as one HTML string (plotly.js inline, once). ``host`` defaults to :func:`machine`."""
    import plotly.offline

    if not entries:
        raise ResultFileError(f"a report needs at least one Result; {_ALLOWED}")
    host = host if host is not None else machine()
    layer_fig, measured = layer_error_figure(entries)
    configs = "".join(
        f"<details><summary>#{i + 1} {html.escape(e.name)}: {html.escape(config_label(e.result['config']))}</summary>"
        f"<pre>{html.escape(json.dumps(e.result['config'], indent=2))}</pre></details>" for i, e in enumerate(entries))
    warnings = "".join(f"<li><b>#{i + 1} {html.escape(e.name)}</b>: {html.escape(w)}</li>"
                       for i, e in enumerate(entries) for w in e.result.get("warnings", []))
    versions = ", ".join(f"{k} {v}" for k, v in host["versions"].items())
    layer_note = ("" if measured else "<p class='note'>No Result here has per-layer output errors (the dashboard "
                  "measures them when its Layer error page is opened); the chart shows the weights' SQNR only.</p>")
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>{_CSS}</style>
<script type="text/javascript">{plotly.offline.get_plotlyjs()}</script>
</head><body>
<h1>{html.escape(title)}</h1>
<p class="note">{len(entries)} configuration{'s' if len(entries) != 1 else ''}, written
{time.strftime('%Y-%m-%d %H:%M %Z')} by PTQ Explorer. Every number comes from the Results; each config below
reproduces its row with <code>python -m ptq_core run --config CONFIG.json</code>.</p>
<h2>Metrics</h2>
{_table(_rows(entries))}
<h2>Accuracy and size</h2>
{_figure_html(accuracy_size_figure(entries), "accuracy-size")}
<h2>Per-layer error</h2>
{layer_note}
{_figure_html(layer_fig, "layer-error")}
<h2>Configurations</h2>
{configs}
{f"<h2>Warnings</h2><ul class='warning'>{warnings}</ul>" if warnings else ""}
<h2>Machine</h2>
<p>Report written on: {html.escape(str(host['cpu']))}, {host['cores']} cores, {html.escape(str(host['platform']))},
Python {html.escape(str(host['python']))}; {html.escape(versions)}. Each row's <i>measured with</i> column gives the
versions and threads its Result was measured with.</p>
</body></html>
"""
