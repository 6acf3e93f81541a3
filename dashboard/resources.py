"""The cached wrappers around ptq_core: one shared Explorer per (model, data set), results per config.

* :func:`get_explorer` (``st.cache_resource``): ONE Explorer per (model spec, data-set spec),
  shared by every browser session. The Explorer is thread-safe and caches calibration
  statistics itself; nothing here ever mutates it or anything it returns.
* :func:`evaluate`, :func:`weight_view`, :func:`activation_view`, :func:`calibration_check`
  (``st.cache_data``, bounded): keyed by exactly what they depend on, the config JSON (plus
  the layer or the sizes). ``st.cache_data`` hands every caller its own copy.
* :func:`onnx_export` (``st.cache_data``, :data:`MAX_EXPORTS` entries): the ONNX file of one
  config as bytes plus its export report, written with the shared Explorer's statistics.

Progress: the cached functions draw their own progress bar in a placeholder they create and
empty again before returning. Streamlit replays elements a cached function drew on every
cache hit; because the placeholder ends empty, the replay draws nothing, and no element
created outside the cached function is ever touched from inside it (that cannot be replayed).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import streamlit as st
import torch

from ptq_core.calibration_check import check_calibration
from ptq_core.config import ACTIVATION_CLIPPING, QuantConfig
from ptq_core.errors import ExportError, PTQError
from ptq_core.pipeline import Explorer, weight_details
from ptq_core.primitives import dequantize
from ptq_core.progress import ProgressFn
from ptq_core.quantize import check_names
from ptq_core.ranges import activation_range, range_error, weight_qparams

from . import state, uploads

MAX_RESULTS = 256  # cached Results (about 70 KB each for the digits CNN): a workshop's worth of configs
MAX_VIEWS = 64  # cached per-layer views (weights, activations)
MAX_CHECKS = 16  # cached calibration checks
# Cached ONNX files, shared by every session: ~45 KB for the digits CNN but ~5 MB for
# EfficientNet-Lite0, so only the last few configs (re-exporting one is a fraction of a second
# once its statistics exist).
MAX_EXPORTS = 8
HIST_BINS = 80  # bins of the histograms drawn on the Weights and Activations pages
SCATTER_POINTS = 4000  # weights drawn in the FP32-vs-dequantized scatter (a seeded subsample)

# One torch thread per script run. The server runs every session's script in its own thread;
# torch's intra-op pool (OpenMP workers that spin while waiting) on top of that oversubscribes a
# small machine. Measured on 2 cores with one other busy process: a digits-CNN re-evaluation
# takes 0.07 s with 1 thread and about 4 s with 2. Sessions, not ops, are what runs in parallel
# here. Override with PTQ_DASHBOARD_THREADS (Results record the thread count they ran with).
TORCH_THREADS = int(os.environ.get("PTQ_DASHBOARD_THREADS", "1"))


def configure_torch() -> None:
    """Apply :data:`TORCH_THREADS` to this process (cheap; called on every run of the app)."""
    if torch.get_num_threads() != TORCH_THREADS:
        torch.set_num_threads(TORCH_THREADS)


@st.cache_resource(show_spinner="Loading the model and the data set…", max_entries=4)
def get_explorer(model_spec_json: str, dataset_spec_json: str) -> Explorer:
    """The shared Explorer of one (model, data set); specs as JSON so they hash as strings."""
    return Explorer(json.loads(model_spec_json), json.loads(dataset_spec_json))


def explorer_for(config: QuantConfig) -> Explorer:
    return get_explorer(json.dumps(config.model, sort_keys=True), json.dumps(config.dataset, sort_keys=True))


@contextmanager
def _progress(label: str) -> Iterator[ProgressFn]:
    """A progress bar for engine work inside a cached function; emptied on exit (see module docstring)."""
    slot = st.empty()
    last: list[Any] = [None]

    def update(done: int, total: int, message: str) -> None:
        step = (message, int(20 * done / max(total, 1)))  # at most ~20 redraws per phase
        if step != last[0]:
            last[0] = step
            slot.progress(min(done / max(total, 1), 1.0), text=f"{label}: {message} ({done}/{total})")

    try:
        yield update
    finally:
        slot.empty()


@st.cache_data(max_entries=MAX_RESULTS, show_spinner=False)
def evaluate(config_json: str) -> dict[str, Any]:
    """The Result of one config as a JSON-clean dict (``Result.to_dict()``)."""
    config = QuantConfig.from_json(config_json)
    explorer = explorer_for(config)
    with _progress("Quantizing and evaluating") as on_progress:
        return explorer.evaluate(config, on_progress).to_dict()


def current_config() -> QuantConfig:
    """The sidebar's config; an invalid combination shows its message and stops the page."""
    try:
        return state.config_from_state()
    except PTQError as exc:
        st.error(str(exc))
        st.stop()
        raise  # unreachable: st.stop() raises


def current_result() -> tuple[QuantConfig, dict[str, Any]]:
    """The sidebar's config and its Result (evaluated with a progress bar on a cache miss)."""
    config = current_config()
    try:
        result = evaluate(config.to_json())
    except PTQError as exc:
        st.error(str(exc))
        st.stop()
    state.remember(result)
    return config, result


def validate_for_model(config: QuantConfig) -> None:
    """Raise PTQError unless the model and data set load and every layer name ``config`` uses exists.

    Paths the config names must lie under the data roots or in the upload folder: an imported
    config is as much user input as a typed path.
    """
    uploads.check_spec_paths(config.model, config.dataset)
    explorer = explorer_for(config)
    check_names(explorer.prepared(config.fold_batchnorm), config)


@st.cache_data(max_entries=MAX_VIEWS, show_spinner=False)
def weight_view(config_json: str, layer: str) -> dict[str, Any]:
    """Everything the Weights page draws for one layer, as numpy arrays and floats."""
    config = QuantConfig.from_json(config_json)
    explorer = explorer_for(config)
    d = weight_details(explorer, config, layer)
    w = d["weights"].detach().float()
    fq = d["fq_weights"].detach().float()
    out_ch = w.shape[0]
    rows, fq_rows = w.reshape(out_ch, -1), fq.reshape(out_ch, -1)
    g = torch.Generator().manual_seed(0)
    pick = torch.randperm(w.numel(), generator=g)[:SCATTER_POINTS]
    view: dict[str, Any] = {
        "layer": layer,
        "shape": list(w.shape),
        "rows": rows.numpy(),
        "fq_rows": fq_rows.numpy(),
        "channel_min": d["channel_min"].numpy(),
        "channel_max": d["channel_max"].numpy(),
        "sample_fp32": w.flatten()[pick].numpy(),
        "sample_fq": fq.flatten()[pick].numpy(),
        "quantized": "qparams" in d,
    }
    wq = config.weight_quant_for(layer)
    if "qparams" in d and wq is not None:
        qp = d["qparams"]
        view.update({
            "bits": wq.bits, "scheme": wq.scheme, "granularity": qp.granularity, "group_size": qp.group_size,
            "clipping": wq.clipping,
            "scale": qp.scale.numpy(), "zero_point": qp.zero_point.numpy(), "lo": qp.lo.numpy(), "hi": qp.hi.numpy(),
            "qmin": qp.qmin, "qmax": qp.qmax, "error": dict(d["error"]),
        })
        # One range for the whole tensor, for comparison: what per-tensor quantization would use.
        pt = weight_qparams(w, bits=wq.bits, scheme=wq.scheme, granularity="per_tensor", clipping=wq.clipping,
                            percentile=wq.percentile)
        view["per_tensor"] = {"lo": float(pt.lo), "hi": float(pt.hi), "scale": float(pt.scale)}
    return view


def grid_levels(scale: float, zero_point: int, qmin: int, qmax: int) -> np.ndarray:
    """Every value a quantizer can output: ``dequantize(q)`` for q in [qmin, qmax] (the grid)."""
    q = torch.arange(qmin, qmax + 1, dtype=torch.int32)
    return dequantize(q, torch.tensor(scale), torch.tensor(zero_point)).numpy()


@st.cache_data(max_entries=MAX_VIEWS, show_spinner=False)
def activation_view(config_json: str, point: str) -> dict[str, Any]:
    """Histogram of one activation point's calibration data and what each clipping method makes of it."""
    config = QuantConfig.from_json(config_json)
    explorer = explorer_for(config)
    with _progress("Calibrating") as on_progress:
        stats = explorer.calibrate(config, on_progress)
    ts = stats.points[point]
    aq = config.activation_quant_for(point)
    assert aq is not None
    counts, edges = ts.to_plot(HIST_BINS)
    methods = []
    for method in ACTIVATION_CLIPPING:
        lo, hi = activation_range(ts, method=method, bits=aq.bits, scheme=aq.scheme, percentile=aq.percentile)
        err = range_error(ts, lo, hi, bits=aq.bits, scheme=aq.scheme)
        methods.append({
            "method": method, "lo": lo, "hi": hi, "mse": err.mse, "rounding_mse": err.rounding_mse,
            "clipping_mse": err.clipping_mse, "clip_fraction": err.clip_fraction, "sqnr_db": err.sqnr_db,
            "chosen": method == aq.clipping,
        })
    return {
        "point": point, "counts": counts, "edges": edges, "count": ts.count, "min": ts.min, "max": ts.max,
        "bits": aq.bits, "scheme": aq.scheme, "percentile": aq.percentile, "chosen": aq.clipping,
        "num_samples": stats.num_samples, "methods": methods,
    }


@st.cache_data(max_entries=MAX_CHECKS, show_spinner=False)
def calibration_check(config_json: str, sizes: tuple[int, ...], seeds: tuple[int, ...]) -> dict[str, Any]:
    """:func:`ptq_core.calibration_check.check_calibration` of one config, as plain data."""
    config = QuantConfig.from_json(config_json)
    explorer = explorer_for(config)
    with _progress("Calibration check") as on_progress:
        return check_calibration(explorer, config, sizes=sizes, seeds=seeds, on_progress=on_progress).to_dict()


@st.cache_data(max_entries=MAX_EXPORTS, show_spinner=False)
def onnx_export(config_json: str) -> dict[str, Any]:
    """The config as an ONNX QDQ model (:meth:`ptq_core.pipeline.Explorer.export_onnx`), for a download.

    Returns ``{"onnx": the file's bytes, "report": ExportReport.to_dict() without the temporary
    path, "seconds", "calibration_reused"}``. Runs on the shared Explorer, so the statistics the
    Result was computed from are reused (``calibration_reused``), never recalibrated. Raises
    PTQError (ExportError) for a config no runtime can express, and for a temporary folder that
    cannot be created; nothing is cached then.
    """
    config = QuantConfig.from_json(config_json)
    explorer = explorer_for(config)
    reused = explorer.is_calibrated(config)
    start = time.perf_counter()
    try:
        folder = tempfile.TemporaryDirectory(prefix="ptq_dashboard_onnx_")
    except OSError as exc:
        raise ExportError(f"cannot create a temporary folder for the ONNX file in {tempfile.gettempdir()!r}: "
                          f"{exc.strerror}") from None
    with folder as tmp, _progress("Exporting to ONNX") as on_progress:
        on_progress(0, 1, "writing the ONNX file")
        report = explorer.export_onnx(config, Path(tmp) / "model.onnx", on_progress=on_progress)
        data = Path(report.path).read_bytes()
    info = report.to_dict()
    del info["path"]  # a deleted temporary file
    return {"onnx": data, "report": info, "seconds": time.perf_counter() - start, "calibration_reused": reused}
