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

import logging
import math
import platform
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.fx
from torch import nn

from .calibration import CalibrationStats, batches, collect_stats
from .config import Calibration, Evaluation, QuantConfig
from .data import Dataset, load_dataset, select_calibration
from .graph import PreparedModel, prepare, with_taps
from .metrics import SqnrAccumulator, agreement, mean_kl_divergence, quantized_size, topk_accuracy
from .models import ModelEntry, get_model_entry
from .models.device import CPU, device_context, moved_copy, resolve_device
from .progress import ProgressFn, StepFn, phase
from .quantize import QuantPlan, build_quantized_model, make_plan
from .ranges import weight_error
from .result import Result
from .timing import SIMULATED_BUDGET_S, median_ms

if TYPE_CHECKING:
    import os

    from .onnx.backend import OrtBackend
    from .onnx.report import ExportReport
    from .onnx.runtime import RuntimeCache

log = logging.getLogger(__name__)

HISTOGRAM_BINS = 64  # bins per histogram in a Result: enough to see a shape, small enough for JSON
STATS_CACHE_ENTRIES = 8  # calibration subsets kept per Explorer
WEIGHT_CACHE_VARIANTS = 8  # weight settings kept per layer (each holds a fake-quantized weight copy)


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
        self._lock = threading.RLock()
        self._prepared: dict[bool, PreparedModel] = {}
        self._stats: OrderedDict[tuple[Any, ...], CalibrationStats] = OrderedDict()
        self._plan_cache: dict[Any, Any] = {}
        self._reference: dict[tuple[Any, ...], FloatReference] = {}
        self._device_copies: dict[tuple[str, str], nn.Module] = {}  # (what, device) -> copy; CPU uses the original
        self._ort_backend: OrtBackend | None = None  # exported graphs and sessions of evaluation.backend onnxruntime
        self._runtime_cache: RuntimeCache | None = None  # FP32 export and latencies of the evaluation.runtime check

    @classmethod
    def for_config(cls, config: QuantConfig) -> Explorer:
        return cls(config.model, config.dataset)

    # -- cached building blocks -----------------------------------------------------------
    def example_input(self) -> torch.Tensor:
        x, _ = self.dataset.calibration_pool[0]
        return x.unsqueeze(0)

    def prepared(self, fold_batchnorm: bool = True) -> PreparedModel:
        with self._lock:
            if fold_batchnorm not in self._prepared:
                self._prepared[fold_batchnorm] = prepare(self.model, self.example_input(), fold_bn=fold_batchnorm)
            return self._prepared[fold_batchnorm]

    def on_device(self, what: str, module: nn.Module, device: torch.device) -> nn.Module:
        """``module`` on CPU; on another device a cached copy, so the shared CPU module is never moved."""
        if device.type == "cpu":
            return module
        with self._lock:
            key = (what, str(device))
            if key not in self._device_copies:
                self._device_copies[key] = moved_copy(module, device)
            return self._device_copies[key]

    def ort_backend(self) -> OrtBackend:
        """The onnxruntime backend's bounded cache of exported graphs and sessions (made on first use)."""
        from .onnx.backend import OrtBackend  # onnxruntime is imported only when a config asks for it

        with self._lock:
            if self._ort_backend is None:
                self._ort_backend = OrtBackend()
            return self._ort_backend

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

    def calibrate(self, config: QuantConfig, on_progress: ProgressFn | None = None) -> CalibrationStats:
        """Statistics of every activation point over the config's calibration subset (cached)."""
        cal = config.calibration
        indices, warnings = self.calibration_indices(cal)
        key = self._stats_key(config, indices)
        with self._lock:
            if key in self._stats:
                self._stats.move_to_end(key)
                return self._stats[key]
            prepared = self.prepared(config.fold_batchnorm)
            stats = collect_stats(
                prepared, self.dataset.calibration_pool, indices, batch_size=cal.batch_size,
                on_progress=phase(on_progress, "calibrating"), device=resolve_device(config.device),
            )
            stats.warnings.extend(warnings)
            self._stats[key] = stats
            while len(self._stats) > STATS_CACHE_ENTRIES:
                self._stats.popitem(last=False)
            return stats

    def _stats_key(self, config: QuantConfig, indices: list[int]) -> tuple[Any, ...]:
        return (config.fold_batchnorm, tuple(indices), config.calibration.batch_size, config.device)

    def is_calibrated(self, config: QuantConfig) -> bool:
        """Whether the statistics ``config`` needs are already cached (a what-if then skips the model)."""
        if config.mode != "static":
            return True
        indices, _ = self.calibration_indices(config.calibration)
        with self._lock:
            return self._stats_key(config, indices) in self._stats

    def plan(self, config: QuantConfig, on_progress: ProgressFn | None = None) -> QuantPlan:
        """Every scale and zero point of ``config`` (calibrating first if needed)."""
        stats = self.calibrate(config, on_progress) if config.mode == "static" else None
        with self._lock:
            prepared = self.prepared(config.fold_batchnorm)
            plan = make_plan(prepared, config, stats, cache=self._plan_cache)
            limit = WEIGHT_CACHE_VARIANTS * max(1, len(prepared.units))
            while len(self._plan_cache) > limit:  # oldest first: dicts keep insertion order
                self._plan_cache.pop(next(iter(self._plan_cache)))
            return plan

    def quantized_model(self, config: QuantConfig) -> torch.fx.GraphModule:
        """A new simulated (fake-quantized) model for ``config``."""
        gm, _ = build_quantized_model(self.prepared(config.fold_batchnorm), self.plan(config))
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
        return export_onnx(self.prepared(config.fold_batchnorm), plan, path, opset=opset)

    def evaluation_indices(self, evaluation: Evaluation) -> list[int]:
        n = len(self.dataset.evaluation)  # type: ignore[arg-type]
        return list(range(n if evaluation.num_samples is None else min(n, evaluation.num_samples)))

    def float_reference(
        self, evaluation: Evaluation, on_progress: ProgressFn | None = None, device: str = "cpu"
    ) -> FloatReference:
        """FP32 logits of the original model on the evaluation subset, computed on ``device`` (cached)."""
        indices = self.evaluation_indices(evaluation)
        key = (len(indices), evaluation.batch_size, device)
        with self._lock:
            if key not in self._reference:
                start = time.perf_counter()
                dev = resolve_device(device)
                logits, labels = _forward_all(self.on_device("model", self.model, dev), self.dataset.evaluation, indices,
                                              evaluation.batch_size, phase(on_progress, "evaluating FP32"), dev)
                has_labels = self.dataset.evaluation_labels is not None
                self._reference[key] = FloatReference(logits, labels if has_labels else None, time.perf_counter() - start)
            return self._reference[key]

    # -- the whole run ---------------------------------------------------------------------
    def evaluate(self, config: QuantConfig, on_progress: ProgressFn | None = None) -> Result:
        """Quantize as ``config`` says, evaluate against FP32 and measure everything a Result holds."""
        t_start = time.perf_counter()
        device = resolve_device(config.device)
        prepared = self.prepared(config.fold_batchnorm)
        stats: CalibrationStats | None = None
        cal_cached = self.is_calibrated(config)
        if config.mode == "static":
            stats = self.calibrate(config, on_progress)
        t_plan = time.perf_counter()
        plan = self.plan(config)
        ev = config.evaluation
        if ev.backend == "torch":
            qgm, visible = build_quantized_model(prepared, plan)
            qgm = qgm.to(device)  # a new model: moving it touches nothing shared
        plan_s = time.perf_counter() - t_plan

        ref = self.float_reference(ev, on_progress, config.device)
        indices = self.evaluation_indices(ev)
        backend_timing = {"export_s": 0.0, "session_s": 0.0}
        if ev.backend == "onnxruntime":  # the same simulated model in onnxruntime (config: CPU only)
            fast = self.ort_backend().evaluate(
                prepared, plan, self.dataset.evaluation, indices, ev.layer_error_samples, ev.batch_size,
                self.example_input(), phase(on_progress, "evaluating quantized (onnxruntime)"),
            )
            q_logits, probe, latency = fast.logits, fast.probe, fast.latency
            # The probe session also returns the logits of its batches, and batches of both run at once:
            # evaluation_s + layer_error_s is their wall time, split in proportion to each one's busy time.
            evaluation_s, probe_s = fast.timing["forward_s"], fast.timing["probe_s"]
            backend_timing = {"export_s": fast.timing["export_s"], "session_s": fast.timing["session_s"]}
        else:
            t_eval = time.perf_counter()
            q_logits, _ = _forward_all(qgm, self.dataset.evaluation, indices, ev.batch_size,
                                       phase(on_progress, "evaluating quantized"), device)
            evaluation_s = time.perf_counter() - t_eval

            t_probe = time.perf_counter()
            probe = self._layer_errors(prepared, qgm, visible, plan, indices[: ev.layer_error_samples], ev.batch_size, device)
            probe_s = time.perf_counter() - t_probe

        metrics: dict[str, Any] = {
            "agreement": agreement(ref.logits, q_logits),
            "kl_divergence": mean_kl_divergence(ref.logits, q_logits),
            "num_eval_samples": len(indices),
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

        warnings = list(stats.warnings) if stats is not None else []
        if ev.backend == "torch":
            latency = _simulated_latency(self.on_device("model", self.model, device), qgm, self.example_input().to(device))
        size = quantized_size(prepared, plan, self.model)
        runtime_s = 0.0
        if config.evaluation.runtime is not None:  # export and run on a real integer runtime (never raises)
            from .onnx.runtime import runtime_check

            check = runtime_check(
                prepared, plan, model=self.model, dataset=self.dataset.evaluation, indices=indices,
                batch_size=ev.batch_size, sim_logits=q_logits, labels=ref.labels, simulated_latency=latency,
                cache=self.runtime_cache(),
            )
            metrics.update(check.metrics)
            size.update(check.size)
            warnings.extend(check.warnings)
            latency = check.latency or latency
            runtime_s = check.seconds
        return Result(
            config=config.to_dict(),
            mode=config.mode,
            model=self._model_info(prepared),
            dataset=self._dataset_info(stats, len(indices)),
            metrics=metrics,
            size=size,
            layers=_layer_rows(prepared, plan, probe),
            activations=_activation_rows(plan),
            histograms=_histograms(prepared, plan, stats),
            timing={
                "calibration_s": stats.seconds if stats is not None else 0.0,
                "calibration_cached": cal_cached,
                "plan_s": plan_s,
                "evaluation_s": evaluation_s,
                "fp32_evaluation_s": ref.seconds,
                "layer_error_s": probe_s,
                **backend_timing,  # onnxruntime backend: exporting the structure, making its sessions (0 when cached)
                "runtime_s": runtime_s,
                "total_s": time.perf_counter() - t_start,
            },
            latency=latency,
            warnings=warnings,
            environment={**environment(), **_backend_info(ev.backend)},
        )

    def _layer_errors(
        self, prepared: PreparedModel, qgm: torch.fx.GraphModule, visible: dict[str, str], plan: QuantPlan,
        indices: list[int], batch_size: int, device: torch.device = CPU,
    ) -> dict[str, dict[str, float]]:
        """Accumulated output SQNR per unit and isolated SQNR per quantizer, on the probe samples."""
        unit_points = [u.name for u in prepared.units if any(p.name == u.name for p in prepared.points)]
        f_taps = {name: prepared.point(name).node for name in unit_points}
        q_taps = {f"out:{name}": visible[name] for name in unit_points}
        for name in plan.points:
            q_taps[f"pre:{name}"] = prepared.point(name).node
            q_taps[f"post:{name}"] = visible[name]
        f_gm = self.on_device(f"prepared:{prepared.fold_batchnorm}", prepared.graph_module, device)
        f_view, q_view = with_taps(f_gm, f_taps), with_taps(qgm, q_taps)  # type: ignore[arg-type]
        out_acc = {name: SqnrAccumulator() for name in unit_points}
        in_acc = {name: SqnrAccumulator() for name in plan.points}
        with torch.inference_mode(), device_context(device):
            for x, _ in batches(self.dataset.evaluation, indices, batch_size):
                x = x.to(device)
                _, f = f_view(x)
                _, q = q_view(x)
                for name in unit_points:
                    out_acc[name].add(f[name], q[f"out:{name}"])
                for name in plan.points:
                    in_acc[name].add(q[f"pre:{name}"], q[f"post:{name}"])
        rows = {name: {"output_sqnr_db": acc.db} for name, acc in out_acc.items()}
        for name, acc in in_acc.items():
            rows.setdefault(name, {})["quantizer_sqnr_db"] = acc.db
        return rows

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


def _forward_all(
    model: nn.Module, dataset: torch.utils.data.Dataset, indices: list[int], batch_size: int,
    on_progress: StepFn | None, device: torch.device = CPU,
) -> tuple[torch.Tensor, torch.Tensor]:
    outs, labels = [], []
    loader = batches(dataset, indices, batch_size)
    with torch.inference_mode(), device_context(device):
        for i, (x, y) in enumerate(loader):
            outs.append(model(x.to(device)).float().cpu())
            labels.append(torch.as_tensor(y))
            if on_progress is not None:
                on_progress(i + 1, len(loader))
    return torch.cat(outs), torch.cat(labels)


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


def _simulated_latency(model: nn.Module, qgm: nn.Module, x: torch.Tensor) -> dict[str, Any]:
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)  # CUDA runs asynchronously: wait for each call

    def ms(m: nn.Module) -> float:
        def call() -> None:
            m(x)
            sync()

        with torch.inference_mode(), device_context(x.device):
            return median_ms(call, budget_s=SIMULATED_BUDGET_S, warmup=1)[0]

    return {
        "kind": "simulated",
        "runtime": f"PyTorch {torch.__version__} eager, FP32 with fake quantization",
        "note": "simulated: the quantized model runs in float with fake-quantize ops; "
                "this is the cost of simulation, not the latency of integer kernels",
        "threads": torch.get_num_threads(),
        "batch_size": int(x.shape[0]),
        "fp32_ms": ms(model),
        "quant_ms": ms(qgm),
    }


def _backend_info(backend: str) -> dict[str, Any]:
    if backend == "onnxruntime":
        import onnxruntime

        return {
            "evaluation_backend": "onnxruntime",
            "onnxruntime": onnxruntime.__version__,
            "evaluation_backend_note": "quantized forward and per-layer errors computed by onnxruntime (CPU) on the same "
                                       "float32 fake-quantize arithmetic as PyTorch; only the convolutions' summation "
                                       "order differs",
        }
    return {"evaluation_backend": "torch"}


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
        explorer.prepared(config.fold_batchnorm).unit(layer)  # raises with the list of layers
        raise AssertionError(layer)
    w = explorer.prepared(config.fold_batchnorm).weight(lq.unit)
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
