"""The cached wrappers around ptq_core: one shared Explorer per (model, data set), results per config.

* :func:`get_explorer` (``st.cache_resource``): ONE Explorer per (model spec, data-set spec),
  shared by every browser session. The Explorer is thread-safe and caches calibration
  statistics itself; nothing here ever mutates it or anything it returns.
* :class:`ResultStore` (one per server): Results keyed by the config JSON and the *part* asked
  for. A page pays only for what it shows (issue 9):

  - ``quick``: the first answer, on the first :func:`quick_samples` evaluation samples, when the
    whole evaluation would take longer than :data:`FIRST_ANSWER_S`; shown labelled "on N of M";
  - ``main``: every evaluation sample, no per-layer probe, no integer runtime check;
  - ``layers``: ``main`` plus the per-layer error probe (the Layer error page);
  - ``runtime``: ``main`` plus the integer runtime check (run once the numbers on screen are
    complete, i.e. after the user stopped changing things);
  - ``targets``: ``runtime`` plus ``evaluation.targets`` (LiteRT, PyTorch PT2E), only for the Deploy
    page: converting a large model for them takes a minute or more;
  - ``reference``: the PyTorch reference simulation of an onnxruntime-backend config, on request.

  :func:`current_result` returns the most complete answer there is and registers what is still
  missing; :func:`finish_pending`, called by ``app.py`` after the page is drawn, computes it
  (progress in the page's status line) and reruns the page. A newer control change makes
  Streamlit stop the run at the next progress update: nobody waits for a result they no longer
  want, and the parts computed so far stay cached.
* :func:`weight_view`, :func:`activation_view`, :func:`channel_outliers`, :func:`calibration_check`
  (``st.cache_data``, bounded): keyed by exactly what they depend on, the config JSON (plus the layer
  or the sizes).
* :func:`onnx_export` (``st.cache_data``, :data:`MAX_EXPORTS` entries): the ONNX file of one
  config as bytes plus its export report, written with the shared Explorer's statistics;
  :func:`tflite_export` likewise for the LiteRT ``.tflite`` file.
* :class:`Activity` (one per server): how many evaluations are running now. A session whose
  evaluation starts while others run says so, with a rough time (:func:`busy_note`), instead of
  looking frozen: the CPUs are shared, so N running evaluations make each about N times slower.
  What-ifs come first: the integer runtime check (background work, and a latency measurement
  that means nothing on a saturated server) runs one at a time on the server, and only once no
  other session's what-if has run for :data:`QUIET_S`.

Progress: the cached functions draw their own progress bar in a placeholder they create and
empty again before returning. Streamlit replays elements a cached function drew on every
cache hit; because the placeholder ends empty, the replay draws nothing, and no element
created outside the cached function is ever touched from inside it (that cannot be replayed).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import os
import tempfile
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import streamlit as st
import torch
from streamlit.runtime.scriptrunner import get_script_run_ctx

from ptq_core import binning, models
from ptq_core.allocator import tune_malloc
from ptq_core.calibration_check import check_calibration
from ptq_core.config import ACTIVATION_CLIPPING, QuantConfig
from ptq_core.errors import ExportError, PTQError
from ptq_core.fanout import SerialRunner
from ptq_core.pipeline import Explorer, weight_details
from ptq_core.primitives import dequantize
from ptq_core.progress import ProgressFn
from ptq_core.quantize import check_names
from ptq_core.ranges import activation_range, range_error, weight_qparams
from ptq_core.search import FLOAT_ACTIVATION, Candidates, Target, search
from ptq_core.sensitivity import proxy, sensitivity

from . import labels, state, uploads

MAX_RESULTS = 256  # cached Results (about 70 KB each for the digits CNN): a workshop's worth of configs
# The first answer to a control change should be on screen within about this long (issue 9: 2 s, goal 1 s);
# when the whole evaluation is expected to take longer, the first answer comes from the first samples only.
FIRST_ANSWER_S = 1.0
MIN_QUICK_SAMPLES = 32  # fewer samples than this say too little to be worth showing
LARGE_MODEL_PARAMETERS = 1_000_000  # before anything is measured: above this, answer on a subset first
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
    """Apply :data:`TORCH_THREADS`, the allocator tuning and one ONNX export at a time to this process.

    Cheap; called on every run of the app.
    """
    tune_malloc()  # once per process: see ptq_core.allocator
    if torch.get_num_threads() != TORCH_THREADS:
        torch.set_num_threads(TORCH_THREADS)
    serialize_onnx_exports()


_WARM_UP = threading.Lock()
_warm_up_started = False


def warm_up_in_background() -> None:
    """Load, in one background thread, once per process (idempotent), what a real model's first load would wait for.

    The statistics' compiled histogram pass (:func:`ptq_core.binning.warm_up`: about half a second in a new process,
    about 5 s to compile after an install) and torchvision (:func:`ptq_core.models.warm_up`: 1.4-2 s, which was most
    of a warm "Load model and data" of EfficientNet-Lite0 after a server restart). The digits default needs neither,
    so they load while the user looks around: ``app.py`` calls this once a page is drawn, because importing holds
    the interpreter lock and slowed the first digits page by about a second when it ran alongside it.
    """
    global _warm_up_started
    with _WARM_UP:
        if _warm_up_started:
            return
        _warm_up_started = True
    threading.Thread(target=_warm_up, name="ptq_warm_up", daemon=True).start()


def _warm_up() -> None:
    binning.warm_up()
    models.warm_up()


_EXPORT_LOCK = threading.Lock()


def serialize_onnx_exports() -> None:
    """Make ``torch.onnx.export`` run one call at a time in this process (idempotent).

    torch's TorchScript exporter keeps process-wide state (``GLOBALS.in_onnx_export``): a second
    export started while another thread exports fails with ``AssertionError: GLOBALS.in_onnx_export
    must be False``. The dashboard is the one place where sessions' threads export at once (the
    onnxruntime simulation of a new structure, the integer runtime check); benchmarks/bench_room.py
    hit it with two sessions. Exports take milliseconds on digits, so waiting costs little. The
    engine's own export sites (``ptq_core.onnx``) are the better home for this lock; until they hold
    one, the dashboard wraps the function they call.
    """
    export = torch.onnx.export
    if getattr(export, "_ptq_serialized", False):
        return

    def serialized(*args: Any, **kwargs: Any) -> Any:
        with _EXPORT_LOCK:
            return export(*args, **kwargs)

    serialized._ptq_serialized = True  # type: ignore[attr-defined]
    serialized.__wrapped__ = export  # type: ignore[attr-defined]
    torch.onnx.export = serialized  # type: ignore[assignment]


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
        # Every update draws, even an unchanged one: drawing is where Streamlit notices a newer control change
        # and stops this run, so a long evaluation nobody wants any more ends at its next batch.
        step = (message, done, total)
        if step != last[0]:
            last[0] = step
            slot.progress(min(done / max(total, 1), 1.0), text=f"{label}: {message} ({done}/{total})")

    try:
        yield update
    finally:
        slot.empty()


# -- results, progressively --------------------------------------------------------------------------
PARTS = ("quick", "main", "layers", "runtime", "targets", "reference")


class ResultStore:
    """Results of every session, keyed by (config JSON, part), least recently used dropped past ``max_entries``.

    ``lock(key)`` is held while a result is computed, so two sessions asking for the same one
    compute it once; the other waits and then finds it. ``seconds_per_sample`` remembers, per
    (model, data set, backend), how fast the last complete evaluation went, as if alone (its time
    divided by the average number of evaluations running beside it): what :func:`quick_samples`
    plans the first answer with.
    """

    def __init__(self, max_entries: int = MAX_RESULTS) -> None:
        self.max_entries = max_entries
        self._results: OrderedDict[tuple[str, str], dict[str, Any]] = OrderedDict()
        self._locks: dict[tuple[str, str], threading.Lock] = {}
        self._guard = threading.Lock()
        self.seconds_per_sample: dict[tuple[str, str, str], float] = {}

    def get(self, config_json: str, part: str, *, copy_result: bool = True) -> dict[str, Any] | None:
        """The stored Result, as a copy the caller may change (``copy_result=False``: read it, never change it)."""
        with self._guard:
            found = self._results.get((config_json, part))
            if found is not None:
                self._results.move_to_end((config_json, part))
        return copy.deepcopy(found) if found is not None and copy_result else found

    def put(self, config_json: str, part: str, result: dict[str, Any]) -> None:
        with self._guard:
            self._results[(config_json, part)] = copy.deepcopy(result)
            while len(self._results) > self.max_entries:
                self._results.popitem(last=False)

    def lock(self, config_json: str, part: str) -> threading.Lock:
        with self._guard:
            return self._locks.setdefault((config_json, part), threading.Lock())


@st.cache_resource
def result_store() -> ResultStore:
    return ResultStore()


# A background part starts only after this long without another session's what-if. With thirty sessions a
# what-if ends every second or so: the checks then wait (their latency would be measured under load anyway),
# and each what-if keeps the CPU to itself. Measured by bench_room: checks in every gap cost 0.7 CPU-s per change.
# A session's own what-if does not count: alone on the server, its check starts as soon as its numbers are drawn.
QUIET_S = 2.0


class Activity:
    """Evaluations running on this server now (every session), and how long each part takes when alone.

    ``solo_s`` holds, per (model, data set, backend, part), the last duration divided by the
    average number of evaluations that ran beside it (at its start and end): what it would take
    alone, so an estimate under load is not inflated twice. ``peak`` is the most that ran at once.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.running = 0
        self.foreground = 0  # of which what-ifs a user waits for (not the background runtime check)
        self.waiting = 0  # background parts holding back while what-ifs run
        self._background = threading.Lock()  # one background part at a time on the whole server
        self._ended: dict[str, float] = {}  # session -> time.monotonic() when its last what-if ended
        self.peak = 0
        self.solo_s: dict[tuple[str, ...], float] = {}

    @contextmanager
    def evaluation(self, *, background: bool = False, session: str = "") -> Iterator[int]:
        """Count one evaluation (of ``session``) as running while the block runs; yields how many others were
        running at its start."""
        with self._lock:
            others = self.running
            self.running += 1
            self.foreground += not background
            self.peak = max(self.peak, self.running)
        try:
            yield others
        finally:
            with self._lock:
                self.running -= 1
                self.foreground -= not background
                if not background:
                    now = time.monotonic()
                    self._ended = {k: t for k, t in self._ended.items() if now - t < 60}  # bounded: recent only
                    self._ended[session] = now

    @contextmanager
    def quiet(self, on_wait: Callable[[int], None], poll_s: float = 0.5, quiet_s: float | None = None,
              session: str = "") -> Iterator[None]:
        """Run the block once no what-if runs, none of another session ended in the last ``quiet_s``, and no
        other background part runs.

        ``on_wait(n)`` is called every ``poll_s`` while waiting, ``n`` the what-ifs running (0: another
        session's what-if ended less than ``quiet_s`` ago, or another background part holds the slot).
        It must touch Streamlit: that is where a control change stops the waiting run.
        """
        quiet_s = QUIET_S if quiet_s is None else quiet_s
        with self._lock:
            self.waiting += 1
        try:
            while True:
                n = self.foreground
                now = time.monotonic()
                with self._lock:
                    settled = all(now - t >= quiet_s for k, t in self._ended.items() if k != session)
                if n == 0 and settled and self._background.acquire(blocking=False):
                    break
                on_wait(n)
                time.sleep(poll_s)
        finally:
            with self._lock:
                self.waiting -= 1
        try:
            yield
        finally:
            self._background.release()

    def others(self) -> int:
        """Evaluations running now besides the caller's own (call inside :meth:`evaluation`)."""
        with self._lock:
            return max(0, self.running - 1)

    def record(self, key: tuple[str, ...], seconds: float, others_at_start: int, others_at_end: int) -> None:
        self.solo_s[key] = seconds / (1 + (others_at_start + others_at_end) / 2)

    def estimate_s(self, key: tuple[str, ...], others: int) -> float | None:
        """Roughly how long ``key`` takes with ``others`` running beside it (None before its first measurement)."""
        solo = self.solo_s.get(key)
        return None if solo is None else solo * (others + 1)


@st.cache_resource
def activity() -> Activity:
    return Activity()


def busy_note(others: int, seconds: float | None) -> str:
    """What a session says when its evaluation starts while ``others`` run: ``2 other evaluations ...; about 3 s``."""
    head = f"{others} other evaluation{'s' if others != 1 else ''} running on this server"
    if seconds is None:
        return f"{head}; this may take longer than usual (the server's CPUs are shared)."
    return f"{head}; this may take about {max(1, round(seconds))} s (the server's CPUs are shared)."


def _speed_key(config: QuantConfig) -> tuple[str, str, str]:
    return (json.dumps(config.model, sort_keys=True), json.dumps(config.dataset, sort_keys=True), config.evaluation.backend)


def quick_samples(config: QuantConfig, explorer: Explorer) -> int | None:
    """How many samples the first answer uses, or None when the whole evaluation should come first.

    From the speed of the last complete evaluation of this model, data set and backend: enough
    samples to answer in about half of :data:`FIRST_ANSWER_S` (the rest goes to calibration,
    export and drawing), in whole batches of 16; before any measurement, models over
    :data:`LARGE_MODEL_PARAMETERS` parameters answer on :data:`MIN_QUICK_SAMPLES` first.
    """
    n = len(explorer.evaluation_indices(config.evaluation))
    rate = result_store().seconds_per_sample.get(_speed_key(config))
    if rate is None:
        large = sum(p.numel() for p in explorer.model.parameters()) > LARGE_MODEL_PARAMETERS
        samples = MIN_QUICK_SAMPLES if large else n
    else:
        samples = n if rate * n <= FIRST_ANSWER_S else int(FIRST_ANSWER_S / 2 / max(rate, 1e-9))
    samples = max(MIN_QUICK_SAMPLES, samples // 16 * 16)
    return samples if samples < n // 2 else None


def _options(part: str, config: QuantConfig, explorer: Explorer) -> dict[str, Any]:
    """The :meth:`Explorer.evaluate` options of a part."""
    if part == "quick":
        return {"samples": quick_samples(config, explorer), "layer_errors": False, "runtime_check": False}
    # The deployment targets run with the runtime check only, and only in their own part (the Deploy page's).
    return {"layer_errors": part == "layers", "runtime_check": part in ("runtime", "targets"), "targets": part == "targets"}


# Parts nobody waits for: they run when no what-if is running on the server. The targets are shown on one page, but
# they measure latency too (meaningless on a saturated server) and take far longer than a what-if: they wait as well.
BACKGROUND = ("runtime", "targets")
LABELS = {
    "quick": "First answer", "main": "Evaluating", "layers": "Measuring per-layer errors",
    "runtime": "Integer runtime check", "targets": "Running deployment targets", "reference": "PyTorch reference",
}


def compute(config_json: str, part: str = "main") -> dict[str, Any]:
    """The Result of ``config_json``'s ``part`` (see the module docstring), from the store or computed now."""
    store = result_store()
    found = store.get(config_json, part)
    if found is not None:
        return found
    config = QuantConfig.from_json(config_json)
    if part == "reference":
        config = config.replace(evaluation=dataclasses.replace(config.evaluation, backend="torch"))
    explorer = explorer_for(config)
    lock = store.lock(config_json, part)
    if not lock.acquire(blocking=False):
        with st.spinner("Another session is computing this configuration; using its result when it is done…"):
            lock.acquire()
    try:
        found = store.get(config_json, part)
        if found is not None:
            return found
        busy, timing_key = activity(), (*_speed_key(config), part)
        with busy.evaluation(background=part in BACKGROUND, session=_session_id()) as others:
            notice = st.empty()
            if others:  # say it is waiting, and roughly how long, instead of looking frozen
                notice.info(busy_note(others, busy.estimate_s(timing_key, others)), icon=":material/hourglass_top:")
            start = time.perf_counter()
            try:
                with _progress(LABELS[part]) as on_progress:
                    result = explorer.evaluate(config, on_progress, **_options(part, config, explorer)).to_dict()
            finally:
                notice.empty()
            sharing_cpus = 1 + (others + busy.others()) / 2  # evaluations that ran beside this one, on average
            busy.record(timing_key, time.perf_counter() - start, others, busy.others())
        store.put(config_json, part, result)
        n = result["dataset"]["num_eval_samples"]
        if part in ("main", "layers") and n:
            # The speed of the model, not of the moment: measured under load, a small model would look slow and
            # get a first answer plus a second evaluation and page run, which only adds to the load (bench_room).
            store.seconds_per_sample[_speed_key(config)] = result["timing"]["evaluation_s"] / n / sharing_cpus
        return result
    finally:
        lock.release()


def evaluate(config_json: str) -> dict[str, Any]:
    """The complete simulated Result of one config (every sample; probe and runtime check as pending parts)."""
    return compute(config_json, "main")


def most_complete(config_json: str) -> dict[str, Any]:
    """The most complete Result of a config: with per-layer errors and the runtime check when they were measured.

    Computes the whole evaluation (no probe, no check) when the store no longer holds it; what a
    report of saved configurations is built from.
    """
    found = result_store().get(config_json, "layers")
    return merged(config_json, found if found is not None else evaluate(config_json), owned=True)


def merged(config_json: str, base: dict[str, Any], *, owned: bool = False) -> dict[str, Any]:
    """``base`` with what other parts of the same config have measured: per-layer errors, the runtime check, the
    deployment targets (whose part holds the runtime check too)."""
    store = result_store()
    # A 70 KB Result copied four times per page run was ~15% of a run's time under 30 sessions (bench_room):
    # the other parts are read without a whole copy (only the pieces taken are copied), and a base the caller
    # owns (a copy already) is not copied again.
    out = base if owned else copy.deepcopy(base)
    layers = store.get(config_json, "layers", copy_result=False)
    if layers is not None and "layer_errors" in out["pending"]:
        out["layers"] = copy.deepcopy(layers["layers"])
        out["timing"]["layer_error_s"] = layers["timing"]["layer_error_s"]
        out["pending"] = [p for p in out["pending"] if p != "layer_errors"]
    if "samples" in out["pending"]:  # a first answer on a subset: the checks' numbers are the whole evaluation's
        return out
    targets = store.get(config_json, "targets", copy_result=False)
    runtime = store.get(config_json, "runtime", copy_result=False)
    checked = targets if targets is not None else runtime
    if checked is not None and "runtime" in out["pending"]:
        out["metrics"].update({k: v for k, v in checked["metrics"].items() if k.startswith("runtime_")})
        out["size"] = copy.deepcopy(checked["size"])
        out["latency"] = copy.deepcopy(checked["latency"])
        out["warnings"] = list(checked["warnings"])
        out["timing"]["runtime_s"] = checked["timing"]["runtime_s"]
        out["runtimes"] = copy.deepcopy(checked.get("runtimes", out.get("runtimes", [])))  # with the onnxruntime row
        out["pending"] = [p for p in out["pending"] if p != "runtime"]
    if targets is not None and "targets" in out["pending"]:
        out["runtimes"] = copy.deepcopy(targets.get("runtimes", []))
        out["timing"]["targets_s"] = targets["timing"].get("targets_s", 0.0)
        out["pending"] = [p for p in out["pending"] if p != "targets"]
    return out


@dataclass
class _Pending:
    """What the page on screen still waits for, computed by :func:`finish_pending` after the page is drawn."""

    config_json: str
    parts: list[str] = field(default_factory=list)
    slot: Any = None  # the page's status line


def current_config() -> QuantConfig:
    """The sidebar's config; an invalid combination shows its message and stops the page."""
    try:
        return state.config_from_state()
    except PTQError as exc:
        st.error(str(exc))
        st.stop()
        raise  # unreachable: st.stop() raises


def current_result(*, complete: bool = True, layers: bool = False, runtime: bool = False,
                   targets: bool = False) -> tuple[QuantConfig, dict[str, Any]]:
    """The sidebar's config and the most complete Result there is for it, drawn progressively.

    ``complete``: a first answer on a subset is replaced by the whole evaluation once the page is
    drawn (pages that show accuracy); ``layers``: the page needs the per-layer errors (computed now,
    with a progress bar); ``runtime``: the page shows the integer runtime check, which then runs
    after everything else; ``targets``: the page shows ``evaluation.targets`` (the Deploy page), run
    with the runtime check after everything else. A failure shows its message and the last good Result of this session,
    marked as belonging to the previous configuration.
    """
    config = current_config()
    key = config.to_json()
    slot = st.empty()  # the status line: what is pending, and the progress of computing it
    store = result_store()
    try:
        result = store.get(key, "layers")
        if result is None and layers:
            with slot.container():
                result = compute(key, "layers")
        if result is None:
            result = store.get(key, "main")
        if result is None:
            result = store.get(key, "quick")
            if result is None:
                explorer = explorer_for(config)
                with slot.container():
                    result = compute(key, "quick" if quick_samples(config, explorer) else "main")
    except PTQError as exc:
        return _previous(config, exc)
    result = merged(key, result, owned=True)  # every path above returns a copy of its own
    pending = _Pending(key, slot=slot)
    if "samples" in result["pending"] and complete:
        pending.parts.append("main")
    if targets and "targets" in result["pending"]:
        pending.parts.append("targets")  # its part runs the runtime check too
    elif runtime and "runtime" in result["pending"]:
        pending.parts.append("runtime")
    st.session_state["_pending"] = pending if pending.parts else None
    if "samples" not in result["pending"]:
        state.remember(result)
        state.set_last_good(key, result)
    return config, result


def _previous(config: QuantConfig, exc: PTQError) -> tuple[QuantConfig, dict[str, Any]]:
    """The error, and the last good Result of this session marked as the previous configuration's (or stop)."""
    st.error(f"This configuration could not be evaluated: {exc}")
    last = state.last_good()
    if last is None:
        st.stop()
    key, result = last
    st.warning(f"The numbers below belong to the **previous configuration** ({labels.config_label(result['config'])}), "
               "not to the controls' current settings.")
    st.session_state["_pending"] = None
    return QuantConfig.from_json(key), result


def clear_pending() -> None:
    """Forget what an earlier run left pending (a run stopped by a control change never reached finish_pending)."""
    st.session_state["_pending"] = None


def pending_parts() -> list[str]:
    """What the page on screen is still waiting for (``main``: the whole evaluation, ``runtime``: the check)."""
    pending = st.session_state.get("_pending")
    return list(pending.parts) if pending is not None else []


def finish_pending() -> None:
    """Compute the first thing the page registered as missing, in its status line, then redraw the page with it.

    Called by ``app.py`` after the page is drawn, so the first answer is on screen meanwhile. A
    control change during the computation stops it (Streamlit stops the run at the next progress
    update) and the new run starts over from what is cached. A failure is shown in the status line;
    the numbers on screen stay, still marked as a first answer.
    """
    pending = st.session_state.get("_pending")
    st.session_state["_pending"] = None
    if pending is None or not pending.parts:
        return
    part = pending.parts[0]  # one part per run: the page is redrawn with it before the next one starts
    try:
        with _quiet(pending.slot, part), pending.slot.container():
            compute(pending.config_json, part)
    except PTQError as exc:
        pending.slot.error(f"{LABELS[part]} failed: {exc}. The numbers shown are "
                           + ("the first answer on a subset." if part == "main" else "the simulation's."))
        return
    st.rerun()


@contextmanager
def _quiet(slot: Any, part: str) -> Iterator[None]:
    """A background part waits for a quiet server (see :meth:`Activity.quiet`), saying so in the page's status line."""
    if part not in BACKGROUND:
        yield
        return
    shown: list[int | None] = [None]

    def on_wait(n: int) -> None:
        if n != shown[0]:
            shown[0] = n
            why = (f"while {n} what-if evaluation{'s' if n != 1 else ''} run" if n
                   else f"until other sessions' what-ifs have paused for {QUIET_S:.0f} s and no other check runs")
            slot.info(f"{LABELS[part]}: waits {why}; what-ifs come first, and latency is measured on a quiet "
                      "server. The numbers above are complete.", icon=":material/schedule:")
        st.session_state["_quiet_wait"] = n  # touching session state is where a control change stops this run

    with activity().quiet(on_wait, session=_session_id()):
        yield


def _session_id() -> str:
    """This browser session's id (what tells its own what-ifs from other sessions'); "" outside a script run."""
    ctx = get_script_run_ctx()
    return ctx.session_id if ctx is not None else ""


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


@st.cache_data(max_entries=MAX_VIEWS, show_spinner="Measuring max |x| per channel on the calibration samples…")
def channel_outliers(config_json: str) -> list[dict[str, Any]]:
    """:meth:`ptq_core.pipeline.Explorer.channel_outliers` of one config: per Linear input, max |x| per channel,
    before and (when the config asks for SmoothQuant) after smoothing.

    The engine reports no progress for this one FP32 pass (two with SmoothQuant: 3-4 s on all-MiniLM-L6-v2, one
    thread), so a spinner says what runs. Counted as an evaluation: it competes for the CPUs.
    """
    config = QuantConfig.from_json(config_json)
    explorer = explorer_for(config)
    with activity().evaluation(session=_session_id()):
        return explorer.channel_outliers(config)


@st.cache_data(max_entries=MAX_CHECKS, show_spinner=False)
def calibration_check(config_json: str, sizes: tuple[int, ...], seeds: tuple[int, ...]) -> dict[str, Any]:
    """:func:`ptq_core.calibration_check.check_calibration` of one config, as plain data."""
    config = QuantConfig.from_json(config_json)
    explorer = explorer_for(config)
    with activity().evaluation(), _progress("Calibration check") as on_progress:  # counted: it competes for the CPUs
        return check_calibration(explorer, config, sizes=sizes, seeds=seeds, on_progress=on_progress).to_dict()


def _export_folder(kind: str, what: str) -> tempfile.TemporaryDirectory[str]:
    """A temporary folder for an exported file; ExportError naming ``what`` when none can be created."""
    try:
        return tempfile.TemporaryDirectory(prefix=f"ptq_dashboard_{kind}_")
    except OSError as exc:
        raise ExportError(f"cannot create a temporary folder for {what} in {tempfile.gettempdir()!r}: "
                          f"{exc.strerror}") from None


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
    with _export_folder("onnx", "the ONNX file") as tmp, _progress("Exporting to ONNX") as on_progress:
        on_progress(0, 1, "writing the ONNX file")
        report = explorer.export_onnx(config, Path(tmp) / "model.onnx", on_progress=on_progress)
        data = Path(report.path).read_bytes()
    info = report.to_dict()
    del info["path"]  # a deleted temporary file
    return {"onnx": data, "report": info, "seconds": time.perf_counter() - start, "calibration_reused": reused}


def tflite_unavailable() -> str | None:
    """Why this server cannot write a LiteRT file (litert-torch or the interpreter missing), or None."""
    from ptq_core.tflite import litert_unavailable

    return litert_unavailable()


@st.cache_data(max_entries=MAX_EXPORTS,
               show_spinner="Converting to LiteRT (.tflite): torch.export, then litert-torch's passes…")
def tflite_export(config_json: str) -> dict[str, Any]:
    """The config as a full-integer LiteRT model (:meth:`ptq_core.pipeline.Explorer.export_tflite`), for a download.

    Returns ``{"tflite": the file's bytes, "report": TfliteReport.to_dict() without the temporary path,
    "seconds"}``. The converter reports no progress (6-12 s on digits, a minute or more on EfficientNet-Lite0):
    the spinner says what runs. Raises PTQError (ExportError) for a config LiteRT cannot take, a missing converter
    and a temporary folder that cannot be created; nothing is cached then. Counted as an evaluation: it competes
    for the CPUs.
    """
    config = QuantConfig.from_json(config_json)
    explorer = explorer_for(config)
    start = time.perf_counter()
    with _export_folder("tflite", "the .tflite file") as tmp, activity().evaluation(session=_session_id()):
        report = explorer.export_tflite(config, Path(tmp) / "model.tflite")
        data = Path(report.path).read_bytes()
    info = report.to_dict()
    del info["path"]  # a deleted temporary file
    return {"tflite": data, "report": info, "seconds": time.perf_counter() - start}


# -- sensitivity and mixed-precision search (the Sensitivity page) --------------------------------------
@st.cache_data(max_entries=MAX_VIEWS, show_spinner=False)
def sensitivity_proxy(config_json: str) -> list[dict[str, Any]]:
    """Every unit's proxy SQNR, weight bytes and hints (:func:`ptq_core.sensitivity.proxy`): no model run."""
    config = QuantConfig.from_json(config_json)
    return [dataclasses.asdict(r) for r in proxy(explorer_for(config), config)]


@st.cache_resource
def _sensitivity_store() -> dict[str, dict[str, Any]]:
    return {}  # config JSON -> a complete sensitivity report (server-wide: every session's measurements are shared)


def stored_sensitivity(config_json: str) -> dict[str, Any] | None:
    found = _sensitivity_store().get(config_json)
    return copy.deepcopy(found) if found is not None else None


def partial_sensitivity(config_json: str) -> list[dict[str, Any]] | None:
    """Rows this session measured before a control change stopped the run (most damaging first), or None."""
    rows = st.session_state.get("sens_partial", {}).get(config_json)
    return rank_rows(rows) if rows else None


def rank_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return sorted(rows, key=lambda r: (r["only"]["agreement"], -r["only"]["kl_divergence"]))


def seconds_per_evaluation(config: QuantConfig) -> float | None:
    """How long one whole evaluation of this model takes here, from the last one measured (None: not yet)."""
    rate = result_store().seconds_per_sample.get(_speed_key(config))
    if rate is None:
        return None
    return rate * len(explorer_for(config).evaluation_indices(config.evaluation)) + 0.5  # + export/session, roughly


def measure_sensitivity(config_json: str) -> dict[str, Any] | None:
    """Measure every layer (:func:`ptq_core.sensitivity.sensitivity`), drawing progress; rows are kept as they arrive."""
    config = QuantConfig.from_json(config_json)
    explorer = explorer_for(config)
    partial: dict[str, list[dict[str, Any]]] = st.session_state.setdefault("sens_partial", {})
    partial[config_json] = []
    try:
        with activity().evaluation(), _progress("Sensitivity") as on_progress:
            report = sensitivity(explorer, config, runner=SerialRunner(explorer), on_progress=on_progress,
                                 on_row=lambda row: partial[config_json].append(dataclasses.asdict(row)))
    except PTQError as exc:
        st.error(f"Sensitivity could not be measured: {exc}")
        return None
    data = report.to_dict()
    _sensitivity_store()[config_json] = data
    partial.pop(config_json, None)
    st.session_state["sens_run_for"] = None
    return data


class _Recording:
    """A runner that also puts every Result it gets into this session's history (the Overview scatter)."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.name = inner, inner.name

    def evaluate_many(self, configs: Any, on_result: Any = None) -> list[Any]:
        def record(i: int, result: Any) -> None:
            state.remember(result.to_dict(), source="search")
            if on_result is not None:
                on_result(i, result)

        return self.inner.evaluate_many(configs, on_result=record)  # type: ignore[no-any-return]


def run_search(config_json: str, kind: str, value: float, bits: tuple[int, ...], allow_float: bool, *,
               float_activations: bool = False, narrow_scheme: str = "keep") -> dict[str, Any]:
    """:func:`ptq_core.search.search` for the page: points reach ``search_points`` as measured; a PTQError is returned.

    ``float_activations``: activation points may stay in float (the config's activation width, or 16 = float);
    ``narrow_scheme``: the scheme of widths below the config's (:class:`ptq_core.search.Candidates`).
    """
    config = QuantConfig.from_json(config_json)
    explorer = explorer_for(config)
    activation_bits = None
    if float_activations and config.activations is not None:
        activation_bits = (config.activations.bits, FLOAT_ACTIVATION)
    points: list[dict[str, Any]] = st.session_state.setdefault("search_points", [])
    try:
        with activity().evaluation(), _progress("Search") as on_progress:
            result = search(explorer, config, Target(**{kind: value}),
                            Candidates(tuple(bits), allow_float, activation_bits=activation_bits,
                                       narrow_scheme=narrow_scheme),
                            runner=_Recording(SerialRunner(explorer)), on_progress=on_progress,
                            on_point=lambda p: points.append(dataclasses.asdict(p)))
    except PTQError as exc:
        return {"error": f"The search could not run: {exc}"}
    st.session_state["search_int8"] = result.int8_weight_bytes
    return result.to_dict()
