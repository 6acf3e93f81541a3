"""The facade the dashboard and the CLI call: :class:`Explorer` and :func:`run`.

An ``Explorer`` holds one (model, data set) pair and caches what is expensive to derive from
it: the prepared (traced, BN-folded) model, calibration statistics per calibration subset,
weight qparams per layer and setting, and the FP32 reference outputs. So the first
``evaluate`` of a config runs calibration and evaluation; the next one that changes only
bits, scheme, granularity, clipping or the float layers re-runs evaluation only.

    explorer = Explorer("digits_cnn", "digits")
    result = explorer.evaluate(QuantConfig())            # calibrates, evaluates
    result = explorer.evaluate(config_with_other_clip)  # evaluates only

``evaluation.backend`` picks what runs the simulated model: ``"torch"`` (PyTorch eager, the
reference) or ``"onnxruntime"`` (the same float graph exported once per structure and run by
onnxruntime on the CPU, :mod:`ptq_core.onnx.backend`; its sessions are cached here too). The Result
says which in ``environment["evaluation_backend"]``.

An Explorer is safe to share between threads (the dashboard shares one per model between
all browser sessions): caches are guarded by a lock, and nothing shared is ever mutated.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import platform
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.fx
from torch import nn

from .backends import Backend, SimulatedRun, make_backend, per_sample
from .calibration import CalibrationStats, chunks, collect_stats, load_batch, stats_from_dict, stats_to_dict
from .config import Algorithms, Calibration, Evaluation, QuantConfig
from .data import Dataset, dataset_fingerprint, load_dataset, select_calibration
from .diskcache import default_cache, digest, module_fingerprint
from .errors import CalibrationError, DataError, ExportError
from .graph import PreparedModel, prepare
from .metrics import agreement, embedding_metrics, mean_kl_divergence, quantized_size, topk_accuracy
from .models import ModelEntry, get_model_entry
from .models.device import device_context, moved_copy, resolve_device
from .observers import NUM_BINS
from .outliers import ChannelRanges, channel_absmax
from .parallel import map_ordered
from .progress import ProgressFn, phase
from .quantize import QuantPlan, active_points, build_quantized_model, make_plan
from .ranges import weight_error
from .result import Result

if TYPE_CHECKING:
    import os

    from .onnx.report import ExportReport
    from .onnx.runtime import RuntimeCache, RuntimeCheck
    from .tflite import TfliteReport

log = logging.getLogger(__name__)

HISTOGRAM_BINS = 64  # bins per histogram in a Result: enough to see a shape, small enough for JSON
STATS_CACHE_ENTRIES = 8  # calibration subsets kept per Explorer
WEIGHT_CACHE_VARIANTS = 8  # weight settings kept per layer (each holds a fake-quantized weight copy)
# FP32 reference logits: samples per job. PyTorch gives bit-identical logits for EfficientNet-Lite0 at 16, 32
# and 128 samples per batch (not at 8 or 1), and 16 per job lets a first answer on a few samples pay for those.
FORWARD_BATCH = 16
CACHE_FORMAT = 2  # part of every disk-cache key: bump when what is stored there changes meaning (2: channels-last forwards)
LOGITS_CACHE_ENTRIES = 8  # configs whose quantized logits are kept (1.5 MB each for 372 ImageNet images)
# Below this FP32 agreement of the equalized float model with the original, the Result warns that CLE's
# ReLU6 -> ReLU changed the model itself (EfficientNet-Lite0: 60%, its FP32 top-1 88.7% -> 58.1%).
CLE_FP32_AGREEMENT_WARNING = 0.99
SMOOTHED_CACHE_ENTRIES = 4  # SmoothQuant models kept (alpha x calibration subset; a copy of every weight each)
# Prepared model x calibration subset whose per-layer GPTQ results (float inputs) are kept: on EfficientNet-Lite0 one
# holds every Hessian (~60 MB) and each layer's rounding at each width searched (4 bytes per weight and width).
LAYER_CACHE_SCOPES = 2
IMPROVED_CACHE_ENTRIES = 4  # plans improved by algorithms kept in memory (a copy of every weight each; also on disk)


@dataclass
class FloatReference:
    """FP32 logits of the original model on an evaluation subset."""

    logits: torch.Tensor
    labels: torch.Tensor | None
    seconds: float


class Explorer:
    """One model on one data set, with every expensive intermediate cached."""

    def __init__(self, model: str | dict[str, Any] = "digits_cnn", dataset: str | dict[str, Any] | None = None) -> None:
        self.entry: ModelEntry = get_model_entry(model)
        self.model_spec = model
        self.model: nn.Module = self.entry.build().eval()
        self.dataset_spec = dataset if dataset is not None else self.entry.default_dataset
        self.dataset: Dataset = load_dataset(self.dataset_spec, transform=self.entry.transform)
        if self.dataset.modality != self.entry.modality:
            raise DataError(
                f"dataset: {self.dataset.description} is {self.dataset.modality} data, and the model {self.entry.name} "
                f"reads {self.entry.modality}; allowed: " + (
                    'a text data set ("sentences", or {"kind": "text_file", "path": "FILE"})' if self.entry.modality == "text"
                    else "digits or an image folder (a text data set needs the text model all_minilm_l6_v2)"))
        self._lock = threading.RLock()
        self._prepared: dict[tuple[bool, bool], PreparedModel] = {}  # (fold_batchnorm, equalized) -> model
        # (fold_batchnorm, equalized, variant) -> SmoothQuant's model and report (variant names alpha and samples)
        self._smooth: dict[tuple[bool, bool, str], tuple[PreparedModel, dict[str, Any]]] = {}
        self._outliers: dict[tuple[Any, ...], ChannelRanges] = {}  # per-channel max |x| at Linear inputs (channel_outliers)
        self._cle_reports: dict[bool, dict[str, Any]] = {}
        self._improved: OrderedDict[str, QuantPlan] = OrderedDict()  # algorithm key -> plan (ptq_core.algorithms)
        self._layer_caches: OrderedDict[tuple[Any, ...], dict[Any, Any]] = OrderedDict()  # see _layer_cache_for
        self._stats: OrderedDict[tuple[Any, ...], CalibrationStats] = OrderedDict()
        self._plan_cache: dict[Any, Any] = {}
        self._reference: dict[tuple[Any, ...], torch.Tensor] = {}  # FP32 logits per piece of the evaluation split
        self._device_copies: dict[tuple[str, str], nn.Module] = {}  # (what, device) -> copy; CPU uses the original
        self._backends: dict[str, Backend] = {}  # evaluation.backend name -> its graphs and sessions
        self._runtime_cache: RuntimeCache | None = None  # FP32 export and latencies of the evaluation.runtime check
        self._key_locks: dict[tuple[Any, ...], threading.Lock] = {}  # one computation per key at a time (_once)
        self._fingerprint: str | None = None  # the model's content key (disk cache)
        self._logits: OrderedDict[tuple[str, str], torch.Tensor] = OrderedDict()  # quantized logits per config (prefix reuse)
        # The runtime check per config (its deployment targets aside) and sample count: the Deploy page asks for the
        # check again with the targets, and a config that only adds or removes a target reuses it
        self._checks: OrderedDict[tuple[str, int], RuntimeCheck] = OrderedDict()

    @classmethod
    def for_config(cls, config: QuantConfig) -> Explorer:
        return cls(config.model, config.dataset)

    # -- cached building blocks -----------------------------------------------------------
    def example_input(self) -> torch.Tensor:
        x, _ = self.dataset.calibration_pool[0]
        return x.unsqueeze(0)

    def prepared(self, fold_batchnorm: bool = True, equalized: bool = False) -> PreparedModel:
        """The traced (BN-folded) model; ``equalized``: after cross-layer equalization (:mod:`ptq_core.algorithms.cle`)."""
        with self._lock:
            key = (fold_batchnorm, equalized)
            if key not in self._prepared:
                if equalized:
                    from .algorithms import equalize

                    self._prepared[key], self._cle_reports[fold_batchnorm] = equalize(self.prepared(fold_batchnorm))
                else:
                    self._prepared[key] = prepare(self.model, self.example_input(), fold_bn=fold_batchnorm)
            return self._prepared[key]

    def prepared_for(self, config: QuantConfig) -> PreparedModel:
        """The prepared model ``config`` quantizes: BN folded or not, equalized or not, smoothed or not."""
        smoothed = self._smoothed(config)
        return smoothed[0] if smoothed is not None else self._base_prepared(config)

    def _base_prepared(self, config: QuantConfig) -> PreparedModel:
        return self.prepared(config.fold_batchnorm, config.algorithms.cross_layer_equalization)

    def _smoothed(self, config: QuantConfig) -> tuple[PreparedModel, dict[str, Any]] | None:
        """SmoothQuant's model and report for ``config`` (:mod:`ptq_core.algorithms.smoothquant`), made with its
        calibration samples; None when it asks for none or quantizes no activation."""
        from .algorithms.capture import token_lengths
        from .algorithms.smoothquant import smooth

        sq = config.algorithms.smoothquant
        if sq is None or config.mode == "weight_only":
            return None
        base = self._base_prepared(config)
        indices, _ = self.calibration_indices(config.calibration)
        variant = "+".join(v for v in (base.variant, self._smooth_variant(config, indices)) if v)
        with self._lock:
            key = (config.fold_batchnorm, config.algorithms.cross_layer_equalization, variant)
            if key not in self._smooth:
                pool = self.dataset.calibration_pool
                batches = [load_batch(pool, chunk)[0] for chunk in chunks(indices, config.calibration.batch_size)]
                inputs = set(active_points(base, config.replace(algorithms=Algorithms())))
                self._smooth[key] = smooth(base, inputs, batches, alpha=sq.alpha, example=self.example_input(),
                                           variant=variant, lengths=token_lengths(batches), config=config)
                while len(self._smooth) > SMOOTHED_CACHE_ENTRIES:
                    self._smooth.pop(next(iter(self._smooth)))
            return self._smooth[key]

    def _smooth_variant(self, config: QuantConfig, indices: list[int]) -> str:
        """The name of the SmoothQuant variant ``config`` quantizes ("" for none): alpha, the Linear inputs it smooths
        and the samples it saw.

        Which inputs are smoothed follows from what the config quantizes (a Linear kept in float, an activation
        point spared), so they are part of the name: two configs of one alpha that smooth different Linears are two
        models, not one cached for the first of them. With "auto" the alphas are chosen for the config's weight and
        activation settings, so those are part of it too.
        """
        sq = config.algorithms.smoothquant
        if sq is None or config.mode == "weight_only":
            return ""
        inputs = sorted(active_points(self._base_prepared(config), config.replace(algorithms=Algorithms())))
        if sq.alpha == "auto":  # chosen for how the config quantizes: that is part of the name
            quant = digest(config.weights, config.activations, config.overrides, config.keep_float,
                           config.keep_float_activations)
            alpha = f"auto-{quant[:8]}"
        else:
            alpha = f"{sq.alpha:g}"
        return f"smoothquant:{alpha}:{digest('inputs', inputs)[:8]}:{digest('cal', indices, config.calibration.batch_size)[:12]}"

    def _channel_ranges(self, prepared: PreparedModel, config: QuantConfig) -> ChannelRanges:
        """Per-channel max |x| at the Linear inputs of ``prepared`` on ``config``'s calibration samples, kept."""
        indices, _ = self.calibration_indices(config.calibration)
        key = ("outliers", prepared.variant, config.fold_batchnorm, tuple(indices), config.calibration.batch_size)
        with self._lock:
            ranges = self._outliers.get(key)
        if ranges is None:
            ranges = channel_absmax(prepared, self.dataset.calibration_pool, indices, batch_size=config.calibration.batch_size)
            with self._lock:
                self._outliers[key] = ranges
                while len(self._outliers) > STATS_CACHE_ENTRIES:
                    self._outliers.pop(next(iter(self._outliers)))
        return ranges

    def channel_outliers(self, config: QuantConfig) -> list[dict[str, Any]]:
        """Per Linear input (one row per group of Linears reading it): max |x| per hidden channel on the calibration
        samples, in the model as traced and, when ``config`` asks for SmoothQuant, after it (:mod:`ptq_core.outliers`).

        Rows: ``layers`` (the Linears), ``point`` / ``absmax`` / ``summary`` before, and ``point_smoothed`` /
        ``absmax_smoothed`` / ``summary_smoothed`` when smoothed. Kept per model variant and calibration subset.
        """
        before = self._channel_ranges(self._base_prepared(config), config)
        smoothed = self._smoothed(config)
        after = self._channel_ranges(smoothed[0], config) if smoothed is not None else None
        after_by_layers = {tuple(v): k for k, v in after.consumers.items()} if after is not None else {}
        rows = []
        for point, layers in before.consumers.items():
            row: dict[str, Any] = {"layers": layers, "point": point, "absmax": before.absmax[point],
                                   "summary": before.summary(point)}
            twin = after_by_layers.get(tuple(layers))
            if after is not None and twin is not None:
                row.update(point_smoothed=twin, absmax_smoothed=after.absmax[twin], summary_smoothed=after.summary(twin))
            rows.append(row)
        return rows

    def smoothquant_report(self, config: QuantConfig) -> dict[str, Any]:
        """What SmoothQuant did for ``config`` (empty when it does not apply)."""
        smoothed = self._smoothed(config)
        return smoothed[1] if smoothed is not None else {}

    def on_device(self, what: str, module: nn.Module, device: torch.device) -> nn.Module:
        """``module`` on CPU; on another device a cached copy, so the shared CPU module is never moved."""
        if device.type == "cpu":
            return module
        with self._lock:
            key = (what, str(device))
            if key not in self._device_copies:
                self._device_copies[key] = moved_copy(module, device)
            return self._device_copies[key]

    def runtime_cache(self) -> RuntimeCache:
        """The onnxruntime check's FP32 export, session and latencies of this model (made on first use)."""
        from .onnx.runtime import RuntimeCache  # onnxruntime is imported only when a config asks for the check

        with self._lock:
            if self._runtime_cache is None:
                self._runtime_cache = RuntimeCache()
            return self._runtime_cache

    def calibration_indices(self, calibration: Calibration) -> tuple[list[int], list[str]]:
        pool = self.dataset.calibration_pool
        return select_calibration(
            self.dataset.calibration_labels, len(pool), calibration.num_samples, calibration.seed, calibration.selection  # type: ignore[arg-type]
        )

    def _model_key(self) -> str:
        """The content key of the model (class, structure, every weight), computed once."""
        with self._lock:
            if self._fingerprint is None:
                self._fingerprint = module_fingerprint(self.model)
            return self._fingerprint

    def _disk_key(self, kind: str, data: torch.utils.data.Dataset, indices: Sequence[int], *parts: Any) -> str | None:
        """The disk-cache key of a value computed from the model on ``data[indices]``; None when the data has no key."""
        data_key = dataset_fingerprint(data, indices)
        if data_key is None:
            return None
        return digest(kind, CACHE_FORMAT, self._model_key(), data_key, torch.__version__, torch.get_num_threads(), *parts)

    def _once(self, key: tuple[Any, ...], find: Callable[[], Any], compute: Callable[[], Any]) -> Any:
        """``find()`` or, when it finds nothing, ``compute()`` once per key: other threads asking meanwhile wait for it.

        Only the per-key lock is held while computing, so threads working on other keys (another
        session's what-if on the same model) are not held up.
        """
        found = find()
        if found is not None:
            return found
        with self._lock:
            key_lock = self._key_locks.setdefault(key, threading.Lock())
        with key_lock:
            found = find()
            return found if found is not None else compute()

    def calibrate(self, config: QuantConfig, on_progress: ProgressFn | None = None) -> CalibrationStats:
        """Statistics of every activation point over the config's calibration subset.

        Kept in memory (:data:`STATS_CACHE_ENTRIES` subsets) and in the disk cache
        (:mod:`ptq_core.diskcache`) under the model's and the samples' content, so a restart or
        another process with the same model and images reads them instead of running the model.
        """
        cal = config.calibration
        indices, warnings = self.calibration_indices(cal)
        key = self._stats_key(config, indices)
        prepared = self.prepared_for(config)
        pool = self.dataset.calibration_pool

        def find() -> CalibrationStats | None:
            with self._lock:
                if key in self._stats:
                    self._stats.move_to_end(key)
                    return self._stats[key]
            return None

        def compute() -> CalibrationStats:
            disk = self._disk_key("calibration-stats", pool, indices, cal.batch_size, config.device, prepared.fold_batchnorm,
                                  [p.name for p in prepared.points], NUM_BINS,
                                  *([prepared.variant] if prepared.variant else []))
            stored = default_cache().load("stats", disk) if disk is not None else None
            stats: CalibrationStats | None = None
            if stored is not None:
                try:
                    stats = stats_from_dict(stored)
                    stats.from_disk = True
                except (CalibrationError, KeyError, TypeError, ValueError):
                    log.warning("disk cache: stored calibration statistics are unusable; recomputing")
            if stats is None:
                stats = collect_stats(prepared, pool, indices, batch_size=cal.batch_size,
                                      on_progress=phase(on_progress, "calibrating"), device=resolve_device(config.device))
                if disk is not None:
                    default_cache().save("stats", disk, stats_to_dict(stats))
            stats.warnings.extend(warnings)
            with self._lock:
                self._stats[key] = stats
                while len(self._stats) > STATS_CACHE_ENTRIES:
                    self._stats.popitem(last=False)
            return stats

        return self._once(("stats", *key), find, compute)

    def add_statistics(self, config: QuantConfig, stats: CalibrationStats) -> None:
        """Use ``stats`` as the statistics of ``config``'s calibration subset (computed elsewhere: a Ray worker's
        Explorer gets the driver's, so every worker quantizes with the same ranges without running the model)."""
        indices, warnings = self.calibration_indices(config.calibration)
        if list(stats.indices) != list(indices):
            raise CalibrationError(f"calibration statistics: taken on {len(stats.indices)} samples that are not this "
                                   f"config's calibration subset ({len(indices)} samples); allowed: statistics of the "
                                   "same model, data set and calibration settings")
        stats.warnings = list(warnings)
        with self._lock:
            self._stats[self._stats_key(config, indices)] = stats
            while len(self._stats) > STATS_CACHE_ENTRIES:
                self._stats.popitem(last=False)

    def _stats_key(self, config: QuantConfig, indices: list[int]) -> tuple[Any, ...]:
        return (config.fold_batchnorm, config.algorithms.cross_layer_equalization, self._smooth_variant(config, indices),
                tuple(indices), config.calibration.batch_size, config.device)

    def is_calibrated(self, config: QuantConfig) -> bool:
        """Whether the statistics ``config`` needs are in memory (a what-if then skips the model)."""
        if config.mode != "static":
            return True
        indices, _ = self.calibration_indices(config.calibration)
        with self._lock:
            return self._stats_key(config, indices) in self._stats

    def plan(self, config: QuantConfig, on_progress: ProgressFn | None = None) -> QuantPlan:
        """Every scale and zero point of ``config`` (calibrating first if needed), algorithms applied."""
        stats = self.calibrate(config, on_progress) if config.mode == "static" else None
        with self._lock:
            prepared = self.prepared_for(config)
            plan = make_plan(prepared, config, stats, cache=self._plan_cache)
            limit = WEIGHT_CACHE_VARIANTS * max(1, len(prepared.units))
            while len(self._plan_cache) > limit:  # oldest first: dicts keep insertion order
                self._plan_cache.pop(next(iter(self._plan_cache)))
        if config.algorithms.any:  # refuse or warn once here, whether or not the work below is cached
            from .algorithms import check

            plan.warnings.extend(check(prepared, plan, config))
        if config.algorithms.cross_layer_equalization:
            plan.algorithms = {"cle": dict(self._cle_reports.get(config.fold_batchnorm, {}))}
            plan.algorithm_key = "cle"
        if config.algorithms.smoothquant is not None and config.mode != "weight_only":
            plan.algorithms = {**plan.algorithms, "smoothquant": self.smoothquant_report(config)}
            plan.algorithm_key = prepared.variant
        if config.algorithms.after_rounding:
            plan = self._improve(config, prepared, plan, on_progress)
        return plan

    def is_improved(self, config: QuantConfig) -> bool:
        """Whether ``config`` needs no algorithm run (none asked, or its result is in memory)."""
        if not config.algorithms.after_rounding:
            return True
        with self._lock:
            return self._algorithm_key(config) in self._improved

    def _algorithm_key(self, config: QuantConfig) -> str:
        # Everything the improved weights depend on: the config without its evaluation settings, and the threads
        # the algorithms run with (float sums in another order may round a weight the other way).
        algo = config.algorithms
        used = dataclasses.replace(  # settings nothing reads take their defaults: the same work, one key
            algo, adaround=algo.adaround if algo.rounding == "adaround" else Algorithms().adaround,
            gptq=algo.gptq if algo.rounding == "gptq" else Algorithms().gptq)
        relevant = config.replace(evaluation=Evaluation(), algorithms=used).to_json()
        return digest("algorithms", CACHE_FORMAT, relevant, torch.get_num_threads())

    def _improve(self, config: QuantConfig, prepared: PreparedModel, plan: QuantPlan,
                 on_progress: ProgressFn | None) -> QuantPlan:
        """``plan`` with the config's algorithms applied: kept in memory and in the disk cache (minutes of work)."""
        from .algorithms import improve

        key = self._algorithm_key(config)

        def find() -> QuantPlan | None:
            with self._lock:
                if key in self._improved:
                    self._improved.move_to_end(key)
                    return self._improved[key]
            return None

        def compute() -> QuantPlan:
            indices, _ = self.calibration_indices(config.calibration)
            pool = self.dataset.calibration_pool
            algo = config.algorithms
            # GPTQ from FP32 inputs alone is assembled from per-layer results kept in memory (_layer_cache_for): not
            # written to disk, where a search's hundred configs would push everything else out of the cache.
            per_layer = (algo.rounding == "gptq" and algo.gptq.inputs == "float" and not algo.bias_correction
                         and algo.finetune is None)
            disk = None if per_layer else self._disk_key("algorithms", pool, indices, key)
            stored = default_cache().load("algorithms", disk) if disk is not None else None
            improved = _restore_improved(plan, stored, key) if stored is not None else None
            if improved is None:
                computed.append(True)
                batches = [load_batch(pool, chunk)[0] for chunk in chunks(indices, config.calibration.batch_size)]
                teacher = None
                if config.algorithms.finetune is not None:
                    with torch.no_grad():
                        teacher = torch.cat([self.model(x).float() for x in batches])
                improved = improve(prepared, plan, config, batches=batches, teacher_logits=teacher, key=key,
                                   on_progress=on_progress, layer_cache=self._layer_cache_for(config, prepared, indices))
                if disk is not None:
                    default_cache().save("algorithms", disk, _stored_improved(improved))
            with self._lock:
                self._improved[key] = improved
                while len(self._improved) > IMPROVED_CACHE_ENTRIES:
                    self._improved.popitem(last=False)
            return improved

        start = time.perf_counter()
        computed: list[bool] = []  # whether the algorithms ran now (not found in memory or on disk)
        found = self._once(("algorithms", key), find, compute)
        # the cached plan's warnings are those of the config that made it; this config's own are ``plan``'s
        return dataclasses.replace(found, warnings=list(plan.warnings),
                                   algorithms={**found.algorithms,
                                               "seconds_now": time.perf_counter() - start if computed else 0.0})

    def _layer_cache_for(self, config: QuantConfig, prepared: PreparedModel, indices: list[int]) -> dict[Any, Any]:
        """The per-layer algorithm results (ptq_core.algorithms, ``layer_cache``) of this prepared model and calibration
        subset: what they depend on besides the layer and its grid. The last LAYER_CACHE_SCOPES are kept."""
        scope = (prepared.fold_batchnorm, prepared.variant, tuple(indices), config.calibration.batch_size, config.device,
                 torch.get_num_threads())
        with self._lock:
            if scope not in self._layer_caches:
                self._layer_caches[scope] = {}
                while len(self._layer_caches) > LAYER_CACHE_SCOPES:
                    self._layer_caches.popitem(last=False)
            self._layer_caches.move_to_end(scope)
            return self._layer_caches[scope]

    def quantized_model(self, config: QuantConfig) -> torch.fx.GraphModule:
        """A new simulated (fake-quantized) model for ``config``."""
        gm, _ = build_quantized_model(self.prepared_for(config), self.plan(config))
        return gm

    def export_onnx(
        self, config: QuantConfig, path: str | os.PathLike[str], *, opset: int | None = None,
        on_progress: ProgressFn | None = None,
    ) -> ExportReport:
        """Plan ``config`` (calibrating if needed) and write it as an ONNX QDQ model at ``path``.

        What the CLI's ``export`` command and the dashboard's Export page call; the statistics
        this Explorer has cached are reused. ``opset`` and the errors raised:
        :func:`ptq_core.onnx.export.export_onnx`.
        """
        from .onnx.export import export_onnx  # onnx is imported only when a model is exported

        plan = self.plan(config, on_progress)
        return export_onnx(self.prepared_for(config), plan, path, opset=opset)

    def export_tflite(self, config: QuantConfig, path: str | os.PathLike[str], *,
                      on_progress: ProgressFn | None = None) -> TfliteReport:
        """Plan ``config`` and write it as a full-integer LiteRT (``.tflite``) model carrying the plan's scales.

        What ``export --format tflite`` and the dashboard's Export page call. Raises
        :class:`~ptq_core.errors.ExportError` naming the setting or layer LiteRT cannot take, and when
        litert-torch is not installed (:func:`ptq_core.tflite.export_tflite`).
        """
        from .tflite import export_tflite, litert_unavailable  # litert-torch (and JAX) are imported only here

        missing = litert_unavailable()
        if missing is not None:
            raise ExportError(f"LiteRT export is not available: {missing}")
        plan = self.plan(config, on_progress)
        return export_tflite(self.prepared_for(config), plan, path, example=self.example_input())

    def evaluation_indices(self, evaluation: Evaluation) -> list[int]:
        n = len(self.dataset.evaluation)  # type: ignore[arg-type]
        return list(range(n if evaluation.num_samples is None else min(n, evaluation.num_samples)))

    def float_reference(
        self, evaluation: Evaluation, on_progress: ProgressFn | None = None, device: str = "cpu", *,
        samples: int | None = None,
    ) -> FloatReference:
        """FP32 logits of the original model on the evaluation subset (its first ``samples``), computed on ``device``.

        Computed once per piece of :data:`FORWARD_BATCH` samples and kept in memory and in the disk
        cache, so a first answer on a few samples pays only for those, and a restart pays nothing.
        ``seconds`` is the time spent computing now (0.0 when everything was cached).
        """
        indices = self.evaluation_indices(evaluation)
        if samples is not None:
            indices = indices[:samples]
        bs = min(evaluation.batch_size, FORWARD_BATCH)
        pieces = chunks(indices, bs)
        data = self.dataset.evaluation
        layout = self.prepared().layout  # the traced graph's check stands for the model it was traced from
        start = time.perf_counter()

        def piece_key(piece: list[int]) -> tuple[Any, ...]:
            return ("fp32", piece[0], len(piece), bs, device)

        def compute(piece: list[int]) -> torch.Tensor:
            def find() -> torch.Tensor | None:
                with self._lock:
                    return self._reference.get(piece_key(piece))

            def run() -> torch.Tensor:
                disk = self._disk_key("fp32-logits", data, piece, bs, device)
                logits = default_cache().load("fp32", disk) if disk is not None else None
                if not isinstance(logits, torch.Tensor) or logits.shape[0] != len(piece):
                    dev = resolve_device(device)
                    x, _ = load_batch(data, piece)
                    with torch.inference_mode(), device_context(dev):
                        logits = self.on_device("model", self.model, dev)(layout(x.to(dev))).float().cpu()
                    if disk is not None:
                        default_cache().save("fp32", disk, logits)
                with self._lock:
                    self._reference[piece_key(piece)] = logits
                return logits

            return self._once(piece_key(piece), find, run)

        todo = [p for p in pieces if piece_key(p) not in self._reference]
        workers = None if resolve_device(device).type == "cpu" else 1
        map_ordered(compute, todo, max_workers=workers, on_step=phase(on_progress, "evaluating FP32"))
        with self._lock:
            parts = [self._reference[piece_key(p)] for p in pieces]
        logits = torch.cat(parts) if parts else torch.zeros((0,))
        labels = self.dataset.evaluation_labels
        return FloatReference(logits, labels[indices] if labels is not None else None,
                              time.perf_counter() - start if todo else 0.0)

    def backend(self, name: str) -> Backend:
        """The backend ``evaluation.backend`` names (made on first use; onnxruntime is imported only then)."""
        with self._lock:
            if name not in self._backends:
                self._backends[name] = make_backend(name)
            return self._backends[name]

    # -- the whole run ---------------------------------------------------------------------
    def evaluate(
        self, config: QuantConfig, on_progress: ProgressFn | None = None, *, samples: int | None = None,
        layer_errors: bool = True, runtime_check: bool = True, targets: bool = True,
    ) -> Result:
        """Quantize as ``config`` says, evaluate against FP32 and measure everything a Result holds.

        The dashboard asks for less first and fills in the rest when it is on screen:
        ``samples`` evaluates only the first N samples of the evaluation subset; ``layer_errors``
        False skips the per-layer error probe; ``runtime_check`` False skips the integer runtime
        check the config asks for; ``targets`` False skips ``evaluation.targets`` (LiteRT, PT2E: they
        run with the runtime check only). What was skipped is listed in ``Result.pending``
        (``"samples"``, ``"layer_errors"``, ``"runtime"``, ``"targets"``); the numbers that are there are the
        ones the full run gives for them. The CLI always runs everything.
        """
        t_start = time.perf_counter()
        device = resolve_device(config.device)
        prepared = self.prepared_for(config)
        ev = config.evaluation
        all_indices = self.evaluation_indices(ev)
        indices = all_indices if samples is None else all_indices[:max(1, samples)]
        stats: CalibrationStats | None = None
        cal_in_memory = self.is_calibrated(config)
        if config.mode == "static":
            stats = self.calibrate(config, on_progress)
        t_plan = time.perf_counter()
        plan = self.plan(config, on_progress)
        plan_s = time.perf_counter() - t_plan

        ref = self.float_reference(ev, on_progress, config.device, samples=len(indices))
        backend = self.backend("integer" if ev.arithmetic == "integer" else ev.backend)
        # A first answer's logits (its first samples, whole batches of a per-sample plan) are the same logits a
        # whole run computes for them: an evaluation without the probe continues from them instead of redoing them.
        logits_key = (_without(config, runtime=None), ev.backend)
        done = self._known_logits(logits_key, backend, plan, len(indices)) if not layer_errors else None
        start = done.shape[0] if done is not None else 0
        run = backend.evaluate(
            prepared=prepared, plan=plan, dataset=self.dataset.evaluation, indices=indices[start:],
            probe_indices=indices[:ev.layer_error_samples] if layer_errors else [], batch_size=ev.batch_size,
            model=self.on_device("model", self.model, device), example=self.example_input(), device=device,
            on_step=phase(on_progress, f"evaluating quantized ({backend.name})"),
        )
        if done is not None:
            run.logits = torch.cat([done, run.logits])
        self._remember_logits(logits_key, run.logits)
        metrics = self._metrics(ref, run.logits, len(indices))
        warnings = [*self.entry.warnings, *self.dataset.warnings, *plan.warnings, *(stats.warnings if stats is not None else [])]
        latency = run.latency
        size = quantized_size(prepared, plan, self.model)
        runtime_s = 0.0
        checked = ev.runtime is not None and runtime_check
        if checked:  # export and run on a real integer runtime (never raises)
            from .onnx.runtime import runtime_check as check_runtime

            check_key = (_without(config), len(indices))
            with self._lock:
                known_check = self._checks.get(check_key)
            if known_check is None:
                check = check_runtime(
                    prepared, plan, model=self.model, dataset=self.dataset.evaluation, indices=indices,
                    batch_size=ev.batch_size, sim_logits=run.logits, labels=ref.labels, simulated_latency=latency,
                    cache=self.runtime_cache(), on_step=phase(on_progress, "integer runtime check"), task=self.entry.task,
                )
                with self._lock:
                    self._checks[check_key] = check
                    while len(self._checks) > LOGITS_CACHE_ENTRIES:
                        self._checks.popitem(last=False)
            else:  # only read below (metrics, size and warnings are copied into this Result)
                check = dataclasses.replace(known_check, seconds=0.0)
            metrics.update(check.metrics)
            size.update(check.size)
            warnings.extend(check.warnings)
            latency = check.latency or latency
            runtime_s = check.seconds
        runtimes, targets_s = self._runtimes(config, prepared, plan, ref, run, latency, size, indices,
                                             check.logits if checked else None, targets=runtime_check and targets,
                                             on_progress=on_progress)
        algorithms = self._algorithms_info(config, plan, prepared, ref, indices)
        cle = algorithms.get("cle", {})
        if cle.get("relu6_replaced") and cle.get("fp32_agreement_after", 1.0) < CLE_FP32_AGREEMENT_WARNING:
            warnings.append(
                f"algorithms.cross_layer_equalization: ReLU6 became ReLU after {len(cle['relu6_replaced'])} layer(s) "
                f"(ReLU6 is not scale-equivariant), and that changed the FP32 model itself: it agrees with the original "
                f"on {100 * cle['fp32_agreement_after']:.1f}% of the samples. Equalization does not suit this network; "
                "switch it off (per-channel weights already absorb most range differences)")
        pending = [name for name, skipped in (("samples", len(indices) < len(all_indices)),
                                              ("layer_errors", not layer_errors),
                                              ("runtime", ev.runtime is not None and not checked),
                                              ("targets", bool(ev.targets) and not (runtime_check and targets))) if skipped]
        return Result(
            config=config.to_dict(),
            mode=config.mode,
            model=self._model_info(prepared),
            dataset={**self._dataset_info(stats, len(indices)), "num_eval_samples_config": len(all_indices)},
            metrics=metrics,
            size=size,
            layers=_layer_rows(prepared, plan, run.layer_errors),
            activations=_activation_rows(plan),
            histograms=_histograms(prepared, plan, stats),
            timing={
                "calibration_s": stats.seconds if stats is not None else 0.0,
                "calibration_cached": cal_in_memory or (stats is not None and stats.from_disk),
                "calibration_from_disk": stats is not None and stats.from_disk and not cal_in_memory,
                "plan_s": plan_s,
                "evaluation_s": run.timing["evaluation_s"],
                "reused_samples": start,  # quantized logits of a first answer on these samples, not recomputed
                "fp32_evaluation_s": ref.seconds,
                "layer_error_s": run.timing["layer_error_s"],
                # onnxruntime backend: exporting the structure, making its sessions (0 when cached)
                "export_s": run.timing.get("export_s", 0.0),
                "session_s": run.timing.get("session_s", 0.0),
                "runtime_s": runtime_s,
                "targets_s": targets_s,  # evaluation.targets: LiteRT, PyTorch PT2E (export, run, latency)
                # the algorithms' run (0 when their result was cached): included in plan_s
                "algorithms_s": plan.algorithms.get("seconds_now", 0.0),
                "total_s": time.perf_counter() - t_start,
            },
            latency=latency,
            warnings=warnings,
            environment={**environment(), **run.environment},
            pending=pending,
            predictions=run.logits.argmax(dim=1).tolist() if run.logits.ndim == 2 and self.entry.task == "classification" else [],
            algorithms=algorithms,
            runtimes=runtimes,
        )

    def _runtimes(self, config: QuantConfig, prepared: PreparedModel, plan: QuantPlan, ref: FloatReference, run: SimulatedRun,
                  latency: dict[str, Any], size: dict[str, Any], indices: list[int], ort_logits: torch.Tensor | None, *,
                  targets: bool, on_progress: ProgressFn | None) -> tuple[list[dict[str, Any]], float]:
        """The Result's ``runtimes`` rows (:mod:`ptq_core.targets`) and the seconds ``evaluation.targets`` took."""
        from .targets import Measured, base_rows, target_row

        ev = config.evaluation
        arithmetic = "integer arithmetic" if ev.arithmetic == "integer" else "float fake-quantize"
        engine = "onnxruntime" if ev.backend == "onnxruntime" else "PyTorch"
        m = Measured(fp32_logits=ref.logits, sim_logits=run.logits, labels=ref.labels, task=self.entry.task, latency=latency,
                     size=size, simulation_name=f"simulation ({arithmetic}, {engine})", ort_logits=ort_logits)
        rows = base_rows(m)
        start = time.perf_counter()
        if targets and ev.targets:
            calib, _ = self.calibration_indices(config.calibration)
            step = phase(on_progress, "deployment targets")
            for k, target in enumerate(ev.targets):
                rows.append(target_row(
                    target, prepared=prepared, plan=plan, model=self.model, example=self.example_input(),
                    calib_dataset=self.dataset.calibration_pool, calib_indices=calib, dataset=self.dataset.evaluation,
                    indices=indices, batch_size=ev.batch_size, m=m))
                if step is not None:
                    step(k + 1, len(ev.targets))
        return [r.to_dict() for r in rows], time.perf_counter() - start

    def _algorithms_info(self, config: QuantConfig, plan: QuantPlan, prepared: PreparedModel, ref: FloatReference,
                         indices: list[int]) -> dict[str, Any]:
        """What the algorithms did, and for cross-layer equalization what it changed in the float model."""
        info = {k: v for k, v in plan.algorithms.items() if k != "warnings"}
        if config.algorithms.cross_layer_equalization:
            cle = dict(info.get("cle", self._cle_reports.get(config.fold_batchnorm, {})))
            logits = self._equalized_float_logits(prepared, indices)
            cle["fp32_agreement_after"] = agreement(ref.logits, logits)
            if ref.labels is not None and self.entry.pretrained:
                cle["fp32_top1_after"] = topk_accuracy(logits, ref.labels, 1)
            info["cle"] = cle
        return info

    def _equalized_float_logits(self, prepared: PreparedModel, indices: list[int]) -> torch.Tensor:
        """The equalized float model's logits (ReLU6 -> ReLU changes them a little), once per subset."""
        key = ("cle-fp32", prepared.fold_batchnorm, tuple(indices))

        def find() -> torch.Tensor | None:
            with self._lock:
                return self._reference.get(key)

        def compute() -> torch.Tensor:
            data = self.dataset.evaluation
            outs = []
            with torch.inference_mode():
                for piece in chunks(indices, FORWARD_BATCH):
                    outs.append(prepared.graph_module(load_batch(data, piece)[0]).float())
            logits = torch.cat(outs)
            with self._lock:
                self._reference[key] = logits
            return logits

        return self._once(key, find, compute)

    def _known_logits(self, key: tuple[str, str], backend: Backend, plan: QuantPlan, n: int) -> torch.Tensor | None:
        """The quantized logits already computed for the first samples of ``key``, when a run may continue from them.

        Only for per-sample plans and whole batches of the backend's per-sample batch size: then the batches
        of the continued run are the batches a whole run would have, and so are the logits.
        """
        with self._lock:
            known = self._logits.get(key)
        if known is None or not per_sample(plan) or known.shape[0] >= n or known.shape[0] % backend.per_sample_batch:
            return None
        return known

    def _remember_logits(self, key: tuple[str, str], logits: torch.Tensor) -> None:
        with self._lock:
            known = self._logits.get(key)
            if known is None or known.shape[0] < logits.shape[0]:
                self._logits[key] = logits
            self._logits.move_to_end(key)
            while len(self._logits) > LOGITS_CACHE_ENTRIES:
                self._logits.popitem(last=False)

    def _metrics(self, ref: FloatReference, q_logits: torch.Tensor, num_eval: int) -> dict[str, Any]:
        if self.entry.task == "embedding":
            return self._embedding_metrics(ref, q_logits, num_eval)
        metrics: dict[str, Any] = {
            "agreement": agreement(ref.logits, q_logits),
            "kl_divergence": mean_kl_divergence(ref.logits, q_logits),
            "num_eval_samples": num_eval,
            "labeled": ref.labels is not None,
        }
        if ref.labels is not None and self.entry.pretrained:  # random weights: never reported as accuracy
            metrics["fp32_top1"] = topk_accuracy(ref.logits, ref.labels, 1)
            metrics["quant_top1"] = topk_accuracy(q_logits, ref.labels, 1)
            if self.dataset.num_classes > 5:
                metrics["fp32_top5"] = topk_accuracy(ref.logits, ref.labels, 5)
                metrics["quant_top5"] = topk_accuracy(q_logits, ref.labels, 5)
        if not self.entry.pretrained:
            metrics["note"] = "random weights: accuracy is not reported (meaningless); agreement with FP32 and KL are"
        return metrics

    def _embedding_metrics(self, ref: FloatReference, q: torch.Tensor, num_eval: int) -> dict[str, Any]:
        labels = ref.labels if self.entry.pretrained else None
        metrics: dict[str, Any] = {**embedding_metrics(ref.logits, q, labels), "num_eval_samples": num_eval,
                                   "labeled": ref.labels is not None, "task": "embedding"}
        if not self.entry.pretrained:
            metrics["note"] = "random weights: k-NN topic accuracy is not reported (meaningless); cosine and neighbours are"
        return metrics

    def _model_info(self, prepared: PreparedModel) -> dict[str, Any]:
        return {
            "name": self.entry.name,
            "description": self.entry.description,
            "pretrained": self.entry.pretrained,
            "weights": "pretrained" if self.entry.pretrained else "random weights",
            "num_parameters": sum(p.numel() for p in self.model.parameters()),
            "layers": prepared.layer_names(),
            "unsupported_layers": prepared.unsupported,
        }

    def _dataset_info(self, stats: CalibrationStats | None, num_eval: int) -> dict[str, Any]:
        return {
            "name": self.dataset.name,
            "calibration_pool_size": len(self.dataset.calibration_pool),  # type: ignore[arg-type]
            "evaluation_size": len(self.dataset.evaluation),  # type: ignore[arg-type]
            "num_calibration_samples": stats.num_samples if stats is not None else 0,
            "calibration_indices": stats.indices if stats is not None else [],
            "num_eval_samples": num_eval,
            "labeled": self.dataset.evaluation_labels is not None,
            "num_classes": self.dataset.num_classes,
        }


def _without(config: QuantConfig, **evaluation: Any) -> str:
    """``config`` as JSON without what does not change its simulated logits or its runtime check (the probe size,
    the deployment targets), with ``evaluation`` fields replaced: a cache key."""
    ev = dataclasses.replace(config.evaluation, targets=(), layer_error_samples=1, **evaluation)
    return config.replace(evaluation=ev).to_json()


def _finite(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


def _layer_rows(prepared: PreparedModel, plan: QuantPlan, probe: dict[str, dict[str, float]]) -> list[dict[str, Any]]:
    rows = []
    for lq in plan.layers.values():
        unit = lq.unit
        w = prepared.weight(unit)
        row: dict[str, Any] = {
            "name": unit.name,
            "kind": unit.kind,
            "weight_shape": list(w.shape),
            "num_weights": w.numel(),
            "fused_activation": unit.fused_activation,
            "folded_batchnorm": unit.folded_batchnorm,
            "quantized": lq.quant is not None,
            "input_points": list(unit.inputs),
            "output_point": unit.name,
            "output_sqnr_db": probe.get(unit.name, {}).get("output_sqnr_db"),
        }
        if lq.quant is not None and lq.qparams is not None:
            qp = lq.qparams
            row.update({
                "weight_bits": lq.quant.bits,
                "weight_scheme": lq.quant.scheme,
                "weight_granularity": lq.quant.granularity,
                "group_size": lq.quant.group_size,
                "weight_clipping": lq.quant.clipping,
                "weight_mse": lq.error["mse"],
                "weight_sqnr_db": lq.error["sqnr_db"],
                "weight_clip_fraction": lq.error["clip_fraction"],
                "weight_range": [float(qp.lo.min()), float(qp.hi.max())],
                "weight_scale_min": float(qp.scale.min()),
                "weight_scale_max": float(qp.scale.max()),
                "num_scales": qp.scale.numel(),
            })
        else:
            row.update({"weight_bits": None, "weight_mse": 0.0, "weight_sqnr_db": math.inf, "weight_clip_fraction": 0.0})
        ins = [plan.points[i] for i in unit.inputs if i in plan.points]
        if ins:
            pq = ins[0]
            row["input_bits"] = pq.quant.bits
            row["input_sqnr_db"] = probe.get(pq.name, {}).get("quantizer_sqnr_db")
            row["input_expected_sqnr_db"] = pq.error.sqnr_db if pq.error is not None else None
            row["input_clip_fraction"] = pq.error.clip_fraction if pq.error is not None else None
        else:
            row.update({"input_bits": None, "input_sqnr_db": None, "input_expected_sqnr_db": None, "input_clip_fraction": None})
        rows.append(row)
    return rows


def _activation_rows(plan: QuantPlan) -> list[dict[str, Any]]:
    rows = []
    for pq in plan.points.values():
        row: dict[str, Any] = {
            "name": pq.name,
            "mode": pq.quant.mode,
            "bits": pq.quant.bits,
            "scheme": pq.quant.scheme,
            "granularity": pq.granularity,
            "clipping": pq.quant.clipping if pq.quant.mode == "static" else "dynamic minmax",
            "qmin": pq.qmin,
            "qmax": pq.qmax,
        }
        if pq.quant.mode == "static":
            assert pq.error is not None
            row.update({
                "lo": pq.lo, "hi": pq.hi, "scale": pq.scale, "zero_point": pq.zero_point,
                "expected_mse": pq.error.mse, "expected_sqnr_db": pq.error.sqnr_db,
                "rounding_mse": pq.error.rounding_mse, "clipping_mse": pq.error.clipping_mse,
                "clip_fraction": pq.error.clip_fraction,
            })
        rows.append(row)
    return rows


def _histograms(prepared: PreparedModel, plan: QuantPlan, stats: CalibrationStats | None) -> dict[str, Any]:
    weights = {}
    for lq in plan.layers.values():
        w = prepared.weight(lq.unit).float()
        lo, hi = float(w.min()), float(w.max())
        counts = torch.histc(w, bins=HISTOGRAM_BINS, min=lo, max=hi if hi > lo else lo + 1e-12)
        entry: dict[str, Any] = {
            "counts": counts.long().tolist(),
            "edges": torch.linspace(lo, hi if hi > lo else lo + 1e-12, HISTOGRAM_BINS + 1).tolist(),
        }
        if lq.qparams is not None:
            entry["clip_range"] = [float(lq.qparams.lo.min()), float(lq.qparams.hi.max())]
        weights[lq.unit.name] = entry
    acts = {}
    if stats is not None:
        for name, ts in stats.points.items():
            counts_np, edges_np = ts.to_plot(HISTOGRAM_BINS)
            entry = {"counts": [float(c) for c in counts_np], "edges": [float(e) for e in edges_np]}
            pq = plan.points.get(name)
            if pq is not None and pq.lo is not None:
                entry["clip_range"] = [pq.lo, pq.hi]
                entry["scale"] = pq.scale
                entry["zero_point"] = pq.zero_point
            acts[name] = entry
    return {"weights": weights, "activations": acts}


def environment() -> dict[str, Any]:
    return {
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "threads": torch.get_num_threads(),
    }


def run(config: QuantConfig, *, on_progress: ProgressFn | None = None, explorer: Explorer | None = None) -> Result:
    """Run one config from scratch (or on a given Explorer) and return its Result."""
    explorer = explorer if explorer is not None else Explorer.for_config(config)
    return explorer.evaluate(config, on_progress)


def weight_details(explorer: Explorer, config: QuantConfig, layer: str) -> dict[str, Any]:
    """FP32 and fake-quantized weights of one layer, with per-channel/group ranges, for plotting."""
    plan = explorer.plan(config)
    lq = plan.layers.get(layer)
    if lq is None:
        explorer.prepared_for(config).unit(layer)  # raises with the list of layers
        raise AssertionError(layer)
    w = explorer.prepared_for(config).weight(lq.unit)
    rows = w.reshape(w.shape[0], -1)
    out: dict[str, Any] = {
        "name": layer,
        "weights": w,
        "fq_weights": lq.fq_weight if lq.fq_weight is not None else w,
        "channel_min": rows.min(dim=1).values,
        "channel_max": rows.max(dim=1).values,
    }
    if lq.qparams is not None:
        out.update({"qparams": lq.qparams, "error": weight_error(w, lq.qparams)})
    return out


def _stored_improved(plan: QuantPlan) -> dict[str, Any]:
    """What the disk cache keeps of an improved plan: the weights, biases and scales the algorithms changed."""
    return {
        "layers": {name: {"fq_weight": lq.fq_weight, "bias": lq.bias, "error": dict(lq.error)}
                   for name, lq in plan.layers.items() if lq.quant is not None},
        "points": {name: pq.scale for name, pq in plan.points.items() if pq.scale is not None},
        "algorithms": plan.algorithms,
    }


def _restore_improved(plan: QuantPlan, stored: Any, key: str) -> QuantPlan | None:
    """``plan`` with the stored weights, biases and scales; None when they do not fit it (then they are recomputed)."""
    try:
        layers = dict(plan.layers)
        for name, entry in stored["layers"].items():
            lq = layers[name]
            w = entry["fq_weight"]
            if lq.fq_weight is None or not isinstance(w, torch.Tensor) or w.shape != lq.fq_weight.shape:
                return None
            layers[name] = dataclasses.replace(lq, fq_weight=w, bias=entry["bias"], error=dict(entry["error"]))
        points = dict(plan.points)
        for name, scale in stored["points"].items():
            if scale != points[name].scale:
                points[name] = points[name].with_scale(scale)
        return QuantPlan(plan.mode, layers, points, list(plan.warnings), algorithm_key=key,
                         algorithms=dict(stored["algorithms"]))
    except (KeyError, TypeError, AttributeError):
        log.warning("disk cache: a stored improved plan does not fit; recomputing")
        return None
