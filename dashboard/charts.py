"""Plotly figure builders: pure functions from Result dicts and engine outputs to figures.

No Streamlit and no engine calls here, so every builder is unit-testable. The colour meaning
is fixed once, below, and kept on every page: FP32 is blue, quantized is orange.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from . import labels

FP32_COLOR = "#3B6FB6"  # everything float: FP32 weights, FP32 accuracy, FP32 reference
QUANT_COLOR = "#E8743B"  # everything quantized: dequantized weights, quantized accuracy, the grid
GRID_COLOR = "rgba(232, 116, 59, 0.35)"  # the quantization grid: QUANT_COLOR, translucent
ROUNDING_COLOR = "#F4A261"  # rounding error (inside the clip range)
CLIPPING_COLOR = "#9B2226"  # clipping error (beyond the clip range)
NEUTRAL_COLOR = "#7F7F7F"
METHOD_COLORS = {"minmax": "#555555", "percentile": "#8E44AD", "mse": "#16A085", "kl": "#B7950B"}
SQNR_COLORS = {"weight_sqnr_db": "#F4A261", "input_sqnr_db": "#E76F51", "output_sqnr_db": "#9B2226"}
SQNR_NAMES = {"weight_sqnr_db": "weights", "input_sqnr_db": "input activation", "output_sqnr_db": "output (accumulated)"}
FLAG_COLOR = "#C0392B"

_MARGIN = {"l": 10, "r": 10, "t": 50, "b": 10}


def _layout(fig: go.Figure, title: str, x: str, y: str, height: int = 380, **kwargs: Any) -> go.Figure:
    kwargs.setdefault("legend", {"orientation": "h", "yanchor": "top", "y": -0.22, "x": 0})  # below: clear of labels
    fig.update_layout(title=title, height=height, margin=_MARGIN, xaxis_title=x, yaxis_title=y, **kwargs)
    return fig


def _vlines(xs: Sequence[float], y0: float, y1: float) -> tuple[list[float | None], list[float | None]]:
    """Many vertical segments as ONE trace (None breaks the line): far cheaper than shapes."""
    px: list[float | None] = []
    py: list[float | None] = []
    for x in xs:
        px += [float(x), float(x), None]
        py += [y0, y1, None]
    return px, py


# -- Overview --------------------------------------------------------------------------------------
def pareto_front(sizes: Sequence[float], scores: Sequence[float]) -> list[int]:
    """Indices of the points no other point beats (smaller-or-equal size AND higher-or-equal
    score, one of them strictly), ordered by size. Example: sizes [1, 2, 3], scores [.5, .9, .8] -> [0, 1].
    """
    order = sorted(range(len(sizes)), key=lambda i: (sizes[i], -scores[i]))
    front: list[int] = []
    best = -math.inf
    for i in order:
        if scores[i] > best:
            front.append(i)
            best = scores[i]
    return front


def tradeoff_scatter(
    rows: Sequence[dict[str, Any]], ids: Sequence[int], current_id: int | None, metric: str, fp32: dict[str, Any],
) -> go.Figure:
    """Size vs ``metric`` of every config evaluated, Pareto frontier drawn.

    ``metric``: quant_top1 | agreement (classification), cosine_mean | neighbour_agreement (embeddings, the
    text model: rows of one task only). ``customdata`` of each point is its history id, so a selection event
    names the config.
    """
    metric_name, scale = labels.measure_axis(metric)
    kib = [r["quant_bytes"] / 1024 for r in rows]
    score = [scale * (r[metric] if r.get(metric) is not None else math.nan) for r in rows]
    hover = [f"{r['label']}<br>size {labels.size_bytes(r['quant_bytes'])} ({r['compression_ratio']:.2f}x)<br>"
             + (f"cosine {labels.cosine(r['cosine_mean'])}, neighbour agreement {labels.pct(r['neighbour_agreement'])}"
                if r.get("task") == labels.EMBEDDING else
                f"top-1 {labels.pct(r['quant_top1'])}, agreement {labels.pct(r['agreement'])}") for r in rows]
    fig = go.Figure()
    valid = [i for i, s in enumerate(score) if not math.isnan(s)]
    front = [valid[j] for j in pareto_front([kib[i] for i in valid], [score[i] for i in valid])]
    if len(front) > 1:
        fig.add_trace(go.Scatter(x=[kib[i] for i in front], y=[score[i] for i in front], mode="lines",
                                 line={"color": QUANT_COLOR, "dash": "dot", "shape": "hv"}, name="Pareto frontier",
                                 hoverinfo="skip"))
    sizes = [16 if i_d == current_id else 10 for i_d in ids]
    fig.add_trace(go.Scatter(
        x=kib, y=score, mode="markers", name="quantized configs", customdata=[[i] for i in ids],
        hovertext=hover, hoverinfo="text",
        marker={"color": QUANT_COLOR, "size": sizes, "line": {"width": [3 if i_d == current_id else 0 for i_d in ids],
                                                               "color": "black"}},
    ))
    ref = fp32.get("fp32_top1") if metric == "quant_top1" else 1.0  # FP32 agrees with itself; cosine 1 to itself
    if ref is not None and fp32.get("fp32_bytes"):
        fig.add_trace(go.Scatter(x=[fp32["fp32_bytes"] / 1024], y=[scale * ref], mode="markers", name="FP32",
                                 marker={"color": FP32_COLOR, "size": 14, "symbol": "star"},
                                 hovertext=[f"FP32 {labels.size_bytes(fp32['fp32_bytes'])}"], hoverinfo="text"))
    return _layout(fig, "Accuracy vs size: every configuration of this session (click one to restore it)",
                   "Model size (KiB)", metric_name, height=440, clickmode="event+select")


# -- Weights -----------------------------------------------------------------------------------------
def _qparam(arr: Any, channel: int | None, group: int | None) -> float:
    a = np.asarray(arr)
    if a.ndim == 0:
        return float(a)
    if a.ndim == 1:
        return float(a[channel if channel is not None else 0])
    return float(a[channel if channel is not None else 0, group or 0])


def weight_values(view: dict[str, Any], channel: int | None, group: int | None) -> np.ndarray:
    """The FP32 weights on screen: the whole layer, one output channel, or one group of it."""
    rows = view["rows"]
    if channel is None:
        return rows.reshape(-1)
    row = rows[channel]
    if group is not None and view.get("group_size"):
        gs = view["group_size"]
        return row[group * gs:(group + 1) * gs]
    return row


def weight_histogram(view: dict[str, Any], grid: np.ndarray | None, channel: int | None, group: int | None) -> go.Figure:
    """FP32 weight histogram with the quantization grid (every representable value) and the clip range."""
    values = weight_values(view, channel, group)
    counts, edges = np.histogram(values, bins=80)
    centers = (edges[:-1] + edges[1:]) / 2
    fig = go.Figure(go.Bar(x=centers, y=counts, width=np.diff(edges), name="FP32 weights",
                           marker={"color": FP32_COLOR}, hovertemplate="%{x:.4g}: %{y} weights<extra></extra>"))
    top = float(counts.max()) if counts.size else 1.0
    if grid is not None:
        gx, gy = _vlines(grid, 0, top * 1.05)
        fig.add_trace(go.Scatter(x=gx, y=gy, mode="lines", line={"color": GRID_COLOR, "width": 1},
                                 name=f"{labels.bits(view['bits'])} grid ({len(grid)} values)", hoverinfo="skip"))
    if view.get("quantized"):
        lo, hi = _clip_for(view, channel, group)
        for x, name in ((lo, "clip low"), (hi, "clip high")):
            fig.add_vline(x=x, line={"color": QUANT_COLOR, "width": 2, "dash": "dash"},
                          annotation_text=f"{name} {x:.3g}", annotation_position="top")
    where = "whole layer" if channel is None else f"output channel {channel}" + ("" if group is None else f", group {group}")
    return _layout(fig, f"{view['layer']} weights ({where})", "Weight value", "Count", bargap=0)


def _clip_for(view: dict[str, Any], channel: int | None, group: int | None) -> tuple[float, float]:
    lo, hi = np.asarray(view["lo"]), np.asarray(view["hi"])
    if channel is None or lo.ndim == 0:
        return float(lo.min()), float(hi.max())
    if lo.ndim == 1:
        return float(lo[channel]), float(hi[channel])
    if group is None:
        return float(lo[channel].min()), float(hi[channel].max())
    return float(lo[channel, group]), float(hi[channel, group])


def grid_qparams(view: dict[str, Any], channel: int | None, group: int | None) -> tuple[float, int] | None:
    """(scale, zero_point) of the one grid that applies to what is on screen, or None if several do."""
    if not view.get("quantized"):
        return None
    gran = view["granularity"]
    if gran == "per_tensor" or (gran == "per_channel" and channel is not None) or (
            gran == "per_group" and channel is not None and group is not None):
        return _qparam(view["scale"], channel, group), int(_qparam(view["zero_point"], channel, group))
    return None


def channel_ranges(view: dict[str, Any]) -> go.Figure:
    """Each output channel's min..max as a bar, against the one range per-tensor quantization would use."""
    mins, maxs = np.asarray(view["channel_min"]), np.asarray(view["channel_max"])
    ch = np.arange(mins.size)
    fig = go.Figure(go.Bar(x=ch, y=maxs - mins, base=mins, name="FP32 range of each channel",
                           marker={"color": FP32_COLOR},
                           hovertemplate="channel %{x}: [%{base:.3g}, %{y:.3g} wide]<extra></extra>"))
    if view.get("quantized"):
        lo, hi = np.asarray(view["lo"]), np.asarray(view["hi"])
        if lo.ndim == 1:
            fig.add_trace(go.Scatter(x=ch, y=hi, mode="markers", name="clip range per channel",
                                     marker={"color": QUANT_COLOR, "symbol": "line-ew-open", "size": 12}))
            fig.add_trace(go.Scatter(x=ch, y=lo, mode="markers", showlegend=False,
                                     marker={"color": QUANT_COLOR, "symbol": "line-ew-open", "size": 12}))
        elif lo.ndim == 2:
            g = lo.shape[1]
            xs = np.repeat(ch, g) + np.tile(np.linspace(-0.3, 0.3, g), ch.size)
            fig.add_trace(go.Scatter(x=xs, y=hi.reshape(-1), mode="markers", name=f"clip range per group ({g} per channel)",
                                     marker={"color": QUANT_COLOR, "size": 4}))
            fig.add_trace(go.Scatter(x=xs, y=lo.reshape(-1), mode="markers", showlegend=False,
                                     marker={"color": QUANT_COLOR, "size": 4}))
        pt = view["per_tensor"]
        for y, name in ((pt["hi"], "per-tensor range"), (pt["lo"], None)):
            fig.add_hline(y=y, line={"color": NEUTRAL_COLOR, "dash": "dash"},
                          annotation_text=name or "", annotation_position="top left")
    return _layout(fig, f"{view['layer']}: weight range of every output channel", "Output channel", "Weight value",
                   bargap=0.15)


def fp32_vs_dequantized(view: dict[str, Any]) -> go.Figure:
    """A seeded sample of weights: FP32 value vs its dequantized value (on the diagonal = no error)."""
    x, y = np.asarray(view["sample_fp32"]), np.asarray(view["sample_fq"])
    lo, hi = float(min(x.min(), y.min())), float(max(x.max(), y.max()))
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=[lo, hi], y=[lo, hi], mode="lines", line={"color": FP32_COLOR, "dash": "dot"},
                             name="no error (y = x)", hoverinfo="skip"))
    fig.add_trace(go.Scattergl(x=x, y=y, mode="markers", name=f"dequantized ({x.size} sampled weights)",
                               marker={"color": QUANT_COLOR, "size": 4, "opacity": 0.6},
                               hovertemplate="FP32 %{x:.4g} → %{y:.4g}<extra></extra>"))
    return _layout(fig, f"{view['layer']}: FP32 vs dequantized weights", "FP32 weight", "Dequantized weight")


# -- Activations ------------------------------------------------------------------------------------
def activation_histogram(view: dict[str, Any], log_y: bool) -> go.Figure:
    """Calibration histogram with every clipping method's range; the config's method drawn solid."""
    counts, edges = np.asarray(view["counts"]), np.asarray(view["edges"])
    centers = (edges[:-1] + edges[1:]) / 2
    fig = go.Figure(go.Bar(x=centers, y=counts, width=np.diff(edges), name=f"FP32 activations ({view['count']:,} values)",
                           marker={"color": FP32_COLOR}, hovertemplate="%{x:.4g}: %{y} values<extra></extra>"))
    for m in view["methods"]:
        color = METHOD_COLORS[m["method"]]
        style = {"color": color, "width": 3 if m["chosen"] else 1.5, "dash": "solid" if m["chosen"] else "dash"}
        name = labels.CLIPPING[m["method"]] + (" (chosen)" if m["chosen"] else "")
        top = float(counts.max()) * 1.1 if counts.size else 1.0
        xs, ys = _vlines([m["lo"], m["hi"]], 1 if log_y else 0, top)
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", line=style, name=name,
                                 hovertemplate=f"{name}: [{m['lo']:.4g}, {m['hi']:.4g}]<extra></extra>"))
    return _layout(fig, f"{view['point']}: calibration histogram ({view['num_samples']} calibration samples)",
                   "Activation value", "Count" + (" (log scale)" if log_y else ""),
                   yaxis_type="log" if log_y else "linear", bargap=0, height=420)


def method_errors(view: dict[str, Any]) -> go.Figure:
    """Expected quantization MSE of each method's range, split into rounding and clipping error."""
    names = [labels.CLIPPING[m["method"]] + (" ★" if m["chosen"] else "") for m in view["methods"]]
    fig = go.Figure()
    fig.add_trace(go.Bar(x=names, y=[m["rounding_mse"] for m in view["methods"]], name="rounding error",
                         marker={"color": ROUNDING_COLOR}))
    fig.add_trace(go.Bar(x=names, y=[m["clipping_mse"] for m in view["methods"]], name="clipping error",
                         marker={"color": CLIPPING_COLOR}))
    return _layout(fig, f"Expected error at {labels.bits(view['bits'])} (★ chosen)",
                   "Clipping method", "Mean squared error", barmode="stack", height=340)



def channel_outliers(row: dict[str, Any], log_y: bool) -> go.Figure:
    """max |x| per hidden channel at the input of one group of Linears (a row of ``Explorer.channel_outliers``):
    before, and below it after SmoothQuant when ``row`` has ``absmax_smoothed``; a dashed line at each median.

    Stacked, not overlaid: the smoothed input is another tensor on its own scale (and where the engine reads it
    reshaped, another channel count), so each panel has its own y axis; the shape is what compares.
    """
    smoothed_color = "#16A085"  # still float, so not the quantized orange: the smoothed FP32 model
    panels = [("before", row["point"], row["absmax"], row["summary"], FP32_COLOR)]
    if row.get("absmax_smoothed") is not None:
        panels.append(("after SmoothQuant", row["point_smoothed"], row["absmax_smoothed"], row["summary_smoothed"],
                       smoothed_color))
    fig = make_subplots(rows=len(panels), cols=1, vertical_spacing=0.18,
                        subplot_titles=[f"{when}: {point} ({len(values)} channels), largest {s['ratio']:.1f}x the "
                                        "median" for when, point, values, s, _ in panels])
    for i, (when, _, values, s, color) in enumerate(panels, start=1):
        n = len(values)
        fig.add_trace(go.Bar(x=list(range(n)), y=values, name=f"max |x| per channel, {when}", marker={"color": color},
                             hovertemplate="channel %{x}: max |x| %{y:.4g}<extra>" + when + "</extra>"), row=i, col=1)
        fig.add_trace(go.Scatter(x=[-0.5, n - 0.5], y=[s["median"]] * 2, mode="lines", name="median channel",
                                 line={"color": NEUTRAL_COLOR, "dash": "dash"}, showlegend=i == 1,
                                 hovertemplate=f"median channel: {s['median']:.4g}<extra></extra>"), row=i, col=1)
        if s["max"] > 0:  # annotations on a log axis take log10 of the value
            fig.add_annotation(x=s["channel"], y=math.log10(s["max"]) if log_y else s["max"], row=i, col=1,
                               text=f"channel {s['channel']}", showarrow=True, arrowhead=2, ax=30, ay=-20)
        fig.update_yaxes(type="log" if log_y else "linear", title_text="max |x|" + (" (log)" if log_y else ""),
                         row=i, col=1)
        fig.update_xaxes(title_text="hidden channel", row=i, col=1)
    title = f"{', '.join(row['layers'])} reads {row['point']}: max |x| per channel over the calibration samples"
    return _layout(fig, title, "hidden channel", "max |x|", height=300 + 260 * (len(panels) - 1), bargap=0)


# -- Layer error --------------------------------------------------------------------------------------
def layer_sqnr(layers: Sequence[dict[str, Any]], flagged: Sequence[str] = ()) -> go.Figure:
    """Per-layer SQNR bars in network order; a missing bar is a layer with no quantization there."""
    names = [r["name"] for r in layers]
    ticks = [f"<span style='color:{FLAG_COLOR}'><b>⚠ {n}</b></span>" if n in flagged else n for n in names]
    fig = go.Figure()
    for key, color in SQNR_COLORS.items():
        ys = [r.get(key) for r in layers]
        fig.add_trace(go.Bar(x=names, y=ys, name=SQNR_NAMES[key], marker={"color": color},
                             hovertemplate="%{x}: %{y:.1f} dB<extra>" + SQNR_NAMES[key] + "</extra>"))
    fig.update_xaxes(tickmode="array", tickvals=names, ticktext=ticks)
    return _layout(fig, "Signal-to-quantization-noise ratio per layer (higher is better; +6 dB ≈ one more bit)",
                   "Layer (network order)", "SQNR (dB)", barmode="group", height=420)


# -- Compare ------------------------------------------------------------------------------------------
def compare_bars(names: Sequence[str], rows: Sequence[dict[str, Any]]) -> go.Figure:
    """Top-1 (FP32 and quantized), agreement and size of saved configurations side by side.

    Bars are labeled #1, #2, ... (the table's ``#`` column); the full name is in the hover.
    """
    full = list(names)
    names = [f"#{i + 1}" for i in range(len(full))]
    fp32_name, quant_name, agreement_name = _accuracy_names(rows)
    fig = make_subplots(rows=1, cols=2, subplot_titles=("Accuracy (%)", "Model size (KiB)"))
    fig.add_trace(go.Bar(x=names, y=[100 * (r["fp32_top1"] or 0) for r in rows], name=fp32_name,
                         marker={"color": FP32_COLOR}), row=1, col=1)
    fig.add_trace(go.Bar(x=names, y=[100 * (r["quant_top1"] or 0) for r in rows], name=quant_name,
                         marker={"color": QUANT_COLOR}), row=1, col=1)
    fig.add_trace(go.Scatter(x=names, y=[100 * r["agreement"] for r in rows], mode="markers", name=agreement_name,
                             marker={"color": "black", "symbol": "diamond", "size": 10}), row=1, col=1)
    fig.add_trace(go.Bar(x=names, y=[r["fp32_bytes"] / 1024 for r in rows], name="FP32 size",
                         marker={"color": FP32_COLOR}, showlegend=False), row=1, col=2)
    fig.add_trace(go.Bar(x=names, y=[r["quant_bytes"] / 1024 for r in rows], name="quantized size",
                         marker={"color": QUANT_COLOR}, showlegend=False), row=1, col=2)
    low = min([100 * min(r["quant_top1"] or 1, r["agreement"]) for r in rows] + [100.0])
    fig.update_yaxes(range=[max(0.0, low - 5), 100.5], row=1, col=1)
    fig.update_yaxes(title_text="%", row=1, col=1)
    fig.update_yaxes(title_text="KiB", row=1, col=2)
    fig.update_traces(customdata=full, hovertemplate="%{customdata}: %{y:.4g}<extra>%{fullData.name}</extra>")
    fig.update_layout(height=420, margin=_MARGIN, barmode="group",
                      legend={"orientation": "h", "yanchor": "bottom", "y": 1.08, "x": 0})
    return fig


def _accuracy_names(rows: Sequence[dict[str, Any]]) -> tuple[str, str, str]:
    """The legend names of the accuracy bars: top-1 for classifiers, k-NN topic accuracy for embeddings."""
    task = labels.rows_task(rows)
    if task == "classification":
        return "FP32 top-1", "quantized top-1", "agreement with FP32"
    if task == labels.EMBEDDING:
        return "FP32 k-NN topic accuracy", "quantized k-NN topic accuracy", "nearest-neighbour agreement"
    return "FP32 top-1 or k-NN accuracy", "quantized top-1 or k-NN accuracy", "top-1 or nearest-neighbour agreement"


# -- Calibration check -----------------------------------------------------------------------------
def calibration_accuracy(check: dict[str, Any]) -> go.Figure:
    """Top-1 and agreement vs calibration size: each seed as a dot, the mean as a line, min..max as a band."""
    fig = make_subplots(rows=1, cols=2, subplot_titles=("Quantized top-1 (%)", "Agreement with FP32 (%)"))
    for col, key in ((1, "quant_top1"), (2, "agreement")):
        rows = check["summary"]
        if rows[0][f"{key}_mean"] is None:
            continue
        xs = [r["size"] for r in rows]
        fig.add_trace(go.Scatter(x=xs + xs[::-1], y=[100 * r[f"{key}_max"] for r in rows] + [100 * r[f"{key}_min"] for r in rows][::-1],
                                 fill="toself", fillcolor="rgba(232, 116, 59, 0.18)", line={"width": 0},
                                 name="min..max over seeds", showlegend=col == 1, hoverinfo="skip"), row=1, col=col)
        fig.add_trace(go.Scatter(x=xs, y=[100 * r[f"{key}_mean"] for r in rows], mode="lines+markers",
                                 line={"color": QUANT_COLOR}, name="mean over seeds", showlegend=col == 1), row=1, col=col)
        runs = check["runs"]
        fig.add_trace(go.Scatter(x=[r["size"] for r in runs], y=[100 * r[key] for r in runs], mode="markers",
                                 marker={"color": "black", "size": 5, "opacity": 0.6}, name="one seed",
                                 showlegend=col == 1, customdata=[r["seed"] for r in runs],
                                 hovertemplate="size %{x}, seed %{customdata}: %{y:.2f} %<extra></extra>"), row=1, col=col)
        ref = check["fp32_top1"] if key == "quant_top1" else 1.0
        if ref is not None:
            fig.add_hline(y=100 * ref, line={"color": FP32_COLOR, "dash": "dash"}, row=1, col=col,
                          annotation_text="FP32", annotation_position="bottom right")
        lo = min(100 * r[key] for r in runs)
        fig.add_trace(go.Scatter(x=[check["config_size"]] * 2, y=[lo, 100 * max(r[key] for r in runs + [{key: ref or 0}])],
                                 mode="lines", line={"color": NEUTRAL_COLOR, "dash": "dot"}, name="this config's size",
                                 showlegend=col == 1, hoverinfo="skip"), row=1, col=col)
    # log axis with the sizes as ticks (shapes such as add_vline would need log10 positions on a log axis)
    fig.update_xaxes(type="log", title_text="Calibration samples (log scale)", tickvals=check["sizes"],
                     ticktext=[str(n) for n in check["sizes"]])
    fig.update_layout(height=400, margin=_MARGIN, legend={"orientation": "h", "yanchor": "bottom", "y": 1.08, "x": 0})
    return fig


def calibration_ranges(check: dict[str, Any], unstable: Sequence[str]) -> go.Figure:
    """Each activation's chosen range width vs calibration size, relative to the largest size; error bars = std over seeds."""
    fig = go.Figure()
    for point in check["points"]:
        rows = [r for r in check["spread"] if r["point"] == point]
        flagged = point in unstable
        ref = rows[-1]["width_mean"] or 1.0
        fig.add_trace(go.Scatter(
            x=[r["size"] for r in rows], y=[r["width_vs_largest"] for r in rows], mode="lines+markers",
            name=point + (" ⚠ unstable" if flagged else ""),
            error_y={"type": "data", "array": [r["width_std"] / ref for r in rows], "visible": True},
            line={"width": 3 if flagged else 1.5, "dash": "solid" if flagged else "dot",
                  **({"color": FLAG_COLOR} if flagged else {})},
            hovertemplate=point + ": size %{x}, width %{y:.3f}× the largest size's<extra></extra>",
        ))
    ys = [r["width_vs_largest"] for r in check["spread"]]
    fig.add_trace(go.Scatter(x=[check["config_size"]] * 2, y=[min(ys), max(ys)], mode="lines",
                             line={"color": NEUTRAL_COLOR, "dash": "dot"}, name="this config's size", hoverinfo="skip"))
    fig.update_xaxes(tickvals=check["sizes"], ticktext=[str(n) for n in check["sizes"]])
    return _layout(fig, "Chosen activation range width vs calibration size (1.0 = the largest size)",
                   "Calibration samples (log scale)", "Range width / width at the largest size",
                   xaxis_type="log", height=440, legend={"orientation": "v"})


# -- Learn --------------------------------------------------------------------------------------------
def number_line(x: np.ndarray, x_hat: np.ndarray, levels: np.ndarray, lo: float, hi: float, title: str) -> go.Figure:
    """Values on a number line: FP32 (blue, top), where each lands on the grid (orange, bottom), the grid ticks."""
    fig = go.Figure()
    span = max(hi - lo, 1e-12)
    vis = levels[(levels >= lo - 0.15 * span) & (levels <= hi + 0.15 * span)]
    gx, gy = _vlines(vis, -0.25, 0.25)
    fig.add_trace(go.Scatter(x=gx, y=gy, mode="lines", line={"color": GRID_COLOR, "width": 1.5},
                             name=f"grid ({len(levels)} values)", hoverinfo="skip"))
    for xi, qi in zip(x, x_hat, strict=True):
        fig.add_trace(go.Scatter(x=[xi, qi], y=[1, 0], mode="lines", line={"color": NEUTRAL_COLOR, "width": 1},
                                 showlegend=False, hoverinfo="skip"))
    fig.add_trace(go.Scatter(x=x, y=np.ones_like(x), mode="markers", name="FP32 value x",
                             marker={"color": FP32_COLOR, "size": 11}, hovertemplate="x = %{x:.4g}<extra></extra>"))
    fig.add_trace(go.Scatter(x=x_hat, y=np.zeros_like(x_hat), mode="markers", name="dequantized x̂",
                             marker={"color": QUANT_COLOR, "size": 11, "symbol": "diamond"},
                             hovertemplate="x̂ = %{x:.4g}<extra></extra>"))
    for xv, name in ((lo, "clip low"), (hi, "clip high")):
        fig.add_vline(x=xv, line={"color": QUANT_COLOR, "dash": "dash"}, annotation_text=name,
                      annotation_position="top")
    fig.update_yaxes(tickvals=[0, 1], ticktext=["quantized", "FP32"], range=[-0.6, 1.5])
    return _layout(fig, title, "Value", "", height=320,
                   legend={"orientation": "h", "yanchor": "top", "y": -0.3, "x": 0})


def clipping_tradeoff(curve: dict[str, np.ndarray], methods: Sequence[dict[str, Any]], threshold: float) -> go.Figure:
    """Rounding, clipping and total error as the clip threshold moves, with each method's choice marked."""
    t = np.maximum(np.abs(curve["lo"]), np.abs(curve["hi"]))
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=t, y=curve["rounding_mse"], mode="lines", name="rounding error",
                             line={"color": ROUNDING_COLOR, "width": 2}))
    fig.add_trace(go.Scatter(x=t, y=curve["clipping_mse"], mode="lines", name="clipping error",
                             line={"color": CLIPPING_COLOR, "width": 2}))
    fig.add_trace(go.Scatter(x=t, y=curve["mse"], mode="lines", name="total error", line={"color": "black", "width": 3}))
    best = int(np.argmin(curve["mse"]))
    fig.add_trace(go.Scatter(x=[t[best]], y=[curve["mse"][best]], mode="markers", name="lowest total error",
                             marker={"color": "black", "size": 12, "symbol": "star"}))
    parts = np.concatenate([curve["mse"], curve["rounding_mse"], curve["clipping_mse"]])
    top = float(np.max(curve["mse"])) * 2
    bottom = max(float(np.min(parts[parts > 0])), float(np.min(curve["mse"])) / 100) / 2  # show both parts, not 1e-30
    for m in methods:
        xs, ys = _vlines([m["threshold"]], bottom, top)
        fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", line={"color": METHOD_COLORS[m["method"]], "dash": "dash"},
                                 name=f"{labels.CLIPPING[m['method']]} picks {m['threshold']:.3g}"))
    xs, ys = _vlines([threshold], bottom, top)
    fig.add_trace(go.Scatter(x=xs, y=ys, mode="lines", line={"color": QUANT_COLOR, "width": 4},
                             name=f"your clip {threshold:.3g}"))
    return _layout(fig, "The clipping tradeoff: a smaller range rounds finer but clips more",
                   "Clip threshold (largest value kept)", "Mean squared error (log scale)", yaxis_type="log",
                   height=460, yaxis_range=[math.log10(bottom), math.log10(top)],
                   legend={"orientation": "v", "x": 1.02, "y": 1})


def histogram_with_clip(values: np.ndarray, lo: float, hi: float) -> go.Figure:
    counts, edges = np.histogram(values, bins=120)
    centers = (edges[:-1] + edges[1:]) / 2
    inside = (centers >= lo) & (centers <= hi)
    fig = go.Figure()
    fig.add_trace(go.Bar(x=centers[inside], y=counts[inside], width=np.diff(edges)[inside], name="kept (rounded)",
                         marker={"color": FP32_COLOR}))
    fig.add_trace(go.Bar(x=centers[~inside], y=counts[~inside], width=np.diff(edges)[~inside],
                         name="clipped to the edge", marker={"color": CLIPPING_COLOR}))
    for xv in (lo, hi):
        fig.add_vline(x=xv, line={"color": QUANT_COLOR, "width": 3})
    return _layout(fig, "The data and your clip range", "Value", "Count (log scale)", yaxis_type="log", bargap=0,
                   height=320)


# -- Sensitivity ------------------------------------------------------------------------------------
def sensitivity_bars(rows: Sequence[dict[str, Any]], agreement: str = "agreement") -> go.Figure:
    """Agreement lost when only the layer is quantized (measured), most damaging at the top; unmeasured rows show
    the proxy's shortfall instead, greyed. ``agreement``: what the task calls it (nearest-neighbour agreement for
    embeddings)."""
    names = [r["name"] for r in rows][::-1]
    measured = [100 * (1 - r["only"]["agreement"]) if r.get("only") else None for r in rows][::-1]
    spared = [100 * (1 - r["all_but"]["agreement"]) if r.get("all_but") else None for r in rows][::-1]
    fig = go.Figure()
    fig.add_trace(go.Bar(y=names, x=measured, orientation="h", name="only this layer quantized", marker_color=QUANT_COLOR,
                         hovertemplate=f"%{{y}}: %{{x:.2f}} points of {agreement} lost<extra>only this layer</extra>"))
    fig.add_trace(go.Bar(y=names, x=spared, orientation="h", name="every layer but this one", marker_color=FP32_COLOR,
                         hovertemplate="%{y}: %{x:.2f} points lost with this layer spared<extra>all but this one</extra>"))
    return _layout(fig, f"{agreement[0].upper()}{agreement[1:]} lost (points) when only this layer is quantized, and "
                   "when it alone is spared", f"{agreement} with FP32 lost (points)", "",
                   height=max(320, 18 * len(rows) + 120), barmode="group")


def proxy_bars(rows: Sequence[dict[str, Any]]) -> go.Figure:
    """The proxy, before anything is measured: each layer's own SQNR at these bits (lower is worse), worst at the top."""
    ordered = sorted((r for r in rows if r.get("proxy_db") is not None), key=lambda r: r["proxy_db"])
    names = [r["name"] for r in ordered][::-1]
    fig = go.Figure(go.Bar(y=names, x=[r["proxy_db"] for r in ordered][::-1], orientation="h", marker_color=NEUTRAL_COLOR,
                           hovertemplate="%{y}: %{x:.1f} dB<extra>proxy</extra>"))
    return _layout(fig, "Proxy (no model run): the lower of each layer's weight SQNR and its output quantizer's "
                   "expected SQNR", "SQNR (dB), lower is worse", "", height=max(320, 14 * len(ordered) + 120))


def search_scatter(points: Sequence[dict[str, Any]], int8_bytes: int, best_label: str | None,
                   agreement: str = "agreement") -> go.Figure:
    """Every configuration the search evaluated: weight bytes (% of all-INT8) against agreement (``agreement``: what
    the task calls it); frontier joined."""
    xs = [100 * p["weight_bytes"] / max(int8_bytes, 1) for p in points]
    ys = [100 * p["agreement"] for p in points]
    fig = go.Figure()
    fig.add_trace(go.Scatter(x=xs, y=ys, mode="markers", name="evaluated", text=[p["label"] for p in points],
                             marker={"color": [QUANT_COLOR if p["meets"] else NEUTRAL_COLOR for p in points], "size": 8},
                             hovertemplate=f"%{{text}}<br>%{{x:.1f}}% of all-INT8, {agreement} %{{y:.2f}}%<extra></extra>"))
    front = [i for i in pareto_front(xs, ys)]
    fig.add_trace(go.Scatter(x=[xs[i] for i in front], y=[ys[i] for i in front], mode="lines", name="frontier",
                             line={"color": QUANT_COLOR, "dash": "dot"}, hoverinfo="skip"))
    if best_label is not None:
        best = next((i for i, p in enumerate(points) if p["label"] == best_label), None)
        if best is not None:
            fig.add_trace(go.Scatter(x=[xs[best]], y=[ys[best]], mode="markers", name="answer",
                                     marker={"symbol": "star", "size": 16, "color": FLAG_COLOR}, hoverinfo="skip"))
    return _layout(fig, "Mixed-precision search: every configuration evaluated (orange: meets the target)",
                   "weight bytes (% of the all-INT8 model)", f"{agreement} with FP32 (%)")


# -- Algorithms (Layer error page) --------------------------------------------------------------------
BEFORE_COLOR = NEUTRAL_COLOR  # round-to-nearest, no algorithm: the baseline the algorithms are measured against
BEFORE_AFTER_SERIES = ("round-to-nearest, no algorithms", "with the algorithms")


def algorithm_before_after(names: Sequence[str], before: Sequence[dict[str, Any]], after: Sequence[dict[str, Any]]) -> go.Figure:
    """Weight SQNR (top) and output SQNR (bottom) per layer, without and with the algorithms, in network order.

    ``before`` and ``after`` are Result layer rows (``weight_sqnr_db``, ``output_sqnr_db``) in the order of ``names``;
    None (a layer in float, or not measured) leaves a gap.
    """
    fig = make_subplots(rows=2, cols=1, shared_xaxes=True, vertical_spacing=0.08,
                        subplot_titles=("Weight SQNR (dB): the weights alone", "Output SQNR (dB): the layer's output, "
                                        "every error before it included"))
    for rows, name, color in ((before, BEFORE_AFTER_SERIES[0], BEFORE_COLOR), (after, BEFORE_AFTER_SERIES[1], QUANT_COLOR)):
        for i, key in enumerate(("weight_sqnr_db", "output_sqnr_db"), start=1):
            fig.add_trace(go.Bar(x=list(names), y=[r.get(key) for r in rows], name=name, marker_color=color,
                                 legendgroup=name, showlegend=i == 1,
                                 hovertemplate="%{x}: %{y:.1f} dB<extra>" + name + "</extra>"), row=i, col=1)
    fig.update_yaxes(title_text="dB", row=1, col=1)
    fig.update_yaxes(title_text="dB", row=2, col=1)
    return _layout(fig, "Per layer, without and with the algorithms (higher is better)", "", "", height=560,
                   barmode="group")


def adaround_flips(lesson: dict[str, Any]) -> go.Figure:
    """Which weights of the Learn page's small layer AdaRound rounded the other way than nearest (one cell per weight)."""
    direction = np.asarray(lesson["direction"])
    w, nearest, learned = (np.asarray(lesson[k]) for k in ("w", "nearest", "adaround"))
    text = [[f"w = {w[i, j]:.3f}<br>nearest {nearest[i, j]:.3f}<br>AdaRound {learned[i, j]:.3f}"
             for j in range(w.shape[1])] for i in range(w.shape[0])]
    fig = go.Figure(go.Heatmap(
        z=direction, zmin=-1, zmax=1, text=text, hovertemplate="row %{y}, column %{x}<br>%{text}<extra></extra>",
        colorscale=[[0.0, FP32_COLOR], [0.5, "#F2F2F2"], [1.0, QUANT_COLOR]], xgap=2, ygap=2,
        colorbar={"tickvals": [-1, 0, 1], "ticktext": ["down instead of up", "same as nearest", "up instead of down"]},
    ))
    fig.update_yaxes(autorange="reversed")
    return _layout(fig, f"{lesson['flipped']} of {direction.size} weights rounded the other way than nearest",
                   "input channel", "output channel", height=340)


# -- Deploy --------------------------------------------------------------------------------------------
# One marker shape per runtime family, so points on the same accuracy stay apart in the legend; colour keeps the rule
# above (FP32 blue, quantized orange). The simulation is an OPEN marker: its time is float ops simulating integers.
RUNTIME_SYMBOLS = {"FP32": "star", "simulation": "circle-open", "onnxruntime": "diamond", "LiteRT": "square",
                   "PyTorch PT2E": "triangle-up"}


def _runtime_symbol(name: str) -> str:
    return next((s for prefix, s in RUNTIME_SYMBOLS.items() if name.startswith(prefix)), "circle")


def _log_ticks(values: Sequence[float]) -> list[float]:
    """1-2-5 ticks covering ``values`` (a log axis's own minor labels read "2 3 4 5 ..." with no unit).

    Example: [0.012, 0.8] -> [0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1].
    """
    if not values:
        return []
    lo, hi = min(values), max(values)
    ticks = [m * 10.0**e for e in range(math.floor(math.log10(lo)), math.ceil(math.log10(hi)) + 1) for m in (1, 2, 5)]
    below = [t for t in ticks if t <= lo]
    above = [t for t in ticks if t >= hi]
    first, last = (below[-1] if below else ticks[0]), (above[0] if above else ticks[-1])
    return [float(f"{t:.3g}") for t in ticks if first <= t <= last]


def _padded(ys: Sequence[float]) -> list[float] | None:
    """A y range around the points with room for their labels; at least 1 point tall (runtimes that agree)."""
    if not ys:
        return None
    lo, hi = min(ys), max(ys)
    pad = max(0.5, (hi - lo) * 0.15)
    return [lo - pad, hi + pad]


def runtime_scatter(rows: Sequence[dict[str, Any]], measure: str, measure_title: str) -> go.Figure:
    """Accuracy (``measure``: "top1" or "agreement", shown in %) vs latency at batch 1, one point per runtime row.

    ``rows`` are ``Result.runtimes`` rows; rows that did not run, or have no batch-1 latency or no ``measure``,
    are left out. ``kind == "simulated"`` rows are drawn open and named "simulated": their latency is the cost of
    simulating the quantized model in float, not of integer kernels. Latency on a log axis (runtimes differ 100x).
    """
    fig = go.Figure()
    drawn: list[float] = []
    for r in rows:
        ms, score = r.get("latency_ms", {}).get("1"), r.get(measure)
        if not r.get("available", True) or ms is None or score is None or ms <= 0:
            continue
        drawn.append(ms)
        simulated = r["kind"] == "simulated"
        name = f"{r['name']}: simulated latency" if simulated else r["name"]
        color = FP32_COLOR if r["kind"] == "float" else QUANT_COLOR
        fig.add_trace(go.Scatter(
            x=[ms], y=[100 * score], mode="markers+text", name=name, text=[r["name"].split(" (")[0]],
            textposition="top center", textfont={"color": color},
            marker={"symbol": _runtime_symbol(r["name"]), "size": 15 if not simulated else 13, "color": color,
                    "line": {"width": 2 if simulated else 1, "color": color if simulated else "white"}},
            hovertemplate=(f"<b>{r['name']}</b><br>{r['kind']}"
                           + (" (float ops: not an integer kernel's latency)" if simulated else "")
                           + "<br>batch 1: %{x:.3g} ms<br>" + measure_title + ": %{y:.2f} %<extra></extra>"),
        ))
    # Of two points closer than a fifth of a decade, the higher one's label goes above it and the lower one's below
    # (labels placed the other way round meet between the points); a point with no near neighbour: above.
    order = sorted(range(len(drawn)), key=lambda i: drawn[i])
    for k, i in enumerate(order):
        fig.data[i].textposition = "top center"
        if k > 0 and math.log10(drawn[i] / drawn[order[k - 1]]) < 0.2:
            prev = order[k - 1]
            higher = fig.data[i].y[0] >= fig.data[prev].y[0]
            fig.data[i].textposition = "top center" if higher else "bottom center"
            fig.data[prev].textposition = "bottom center" if higher else "top center"
    ticks = _log_ticks(drawn)
    fig.update_xaxes(type="log", tickvals=ticks, ticktext=[f"{t:g}" for t in ticks])
    fig.update_yaxes(range=_padded([t.y[0] for t in fig.data]))
    return _layout(fig, "Accuracy vs latency at batch 1, one point per runtime (open: a simulation's time)",
                   "latency at batch 1 (ms, log scale; left is faster)", f"{measure_title} (%)", height=420)
