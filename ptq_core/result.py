"""Result: everything one PTQ run measured, as plain JSON-able data.

Top-level keys (all always present):
  ``config``      the QuantConfig as a dict, defaults filled in (feed it back to reproduce the run)
  ``mode``        static | dynamic | weight_only
  ``model``       name, description, pretrained (false = random weights), parameter count
  ``dataset``     name, split sizes, calibration indices, whether it is labeled
  ``metrics``     fp32_top1, quant_top1 (and top-5 when there are more than 5 classes),
                  agreement (top-1 agreement with FP32), kl_divergence (mean, nats)
  ``size``        fp32_bytes (the BN-folded FP32 model), fp32_unfolded_bytes, quant_bytes, compression_ratio,
                  per-layer breakdown
  ``layers``      per Conv/Linear layer in network order: weight_mse, weight_sqnr_db,
                  input_sqnr_db, output_sqnr_db (accumulated, vs FP32), ranges, clip fractions
  ``activations`` per activation quantizer: range, scale, zero point, expected error
  ``histograms``  bounded histograms of weights and activations for plotting
  ``timing``      calibration_s, evaluation_s, ... (wall clock)
  ``latency``     simulated latency, labeled as such
  ``warnings``    anything the user should know (e.g. a capped calibration size)
  ``environment`` versions and threads the numbers were measured with, and the evaluation backend
  ``predictions`` the quantized model's top-1 class per evaluated sample (argmax), in evaluation order
  ``algorithms``  what the INT4 algorithms did (ptq_core.algorithms): times, per-layer before/after, CLE's FP32 change
  ``runtimes``    one row per runtime: FP32, the simulation, onnxruntime, LiteRT, PyTorch PT2E (see
                  ptq_core.runtimes: name, version, kind, top1, agreement, sim_agreement, max_abs_diff,
                  latency_ms, threads, file_bytes, fallbacks); ``latency``/``metrics.runtime_*`` stay as well
  ``pending``     what this Result leaves out for now (``samples``, ``layer_errors``, ``runtime``, ``targets``): the
                  dashboard asks for the rest when it is on screen; the CLI always runs everything

Non-finite floats (the SQNR of a layer with no quantization noise) are written as null.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any


def _clean(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {str(k): _clean(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value]
    return value


@dataclass
class Result:
    config: dict[str, Any]
    mode: str
    model: dict[str, Any]
    dataset: dict[str, Any]
    metrics: dict[str, Any]
    size: dict[str, Any]
    layers: list[dict[str, Any]]
    activations: list[dict[str, Any]]
    histograms: dict[str, Any]
    timing: dict[str, float]
    latency: dict[str, Any]
    warnings: list[str] = field(default_factory=list)
    environment: dict[str, Any] = field(default_factory=dict)
    # Parts this Result does not have yet (the dashboard fills them in when they are on screen):
    # "samples" (evaluated on the first dataset.num_eval_samples of num_eval_samples_config),
    # "layer_errors" (no per-layer probe: SQNRs measured on the model are None), "runtime" (no integer check).
    pending: list[str] = field(default_factory=list)
    # The quantized model's top-1 class (argmax) per evaluated sample, in evaluation order: what two backends,
    # runtimes or configs are compared on, sample by sample.
    predictions: list[int] = field(default_factory=list)
    # What config.algorithms did (ptq_core.algorithms): seconds per algorithm, per-layer numbers before/after
    # (weight SQNR at round-to-nearest and now, AdaRound's output MSE, GPTQ's Hessian error, bias shifts),
    # cross-layer equalization's pairs and what it changed in the FP32 model; {} when none ran.
    algorithms: dict[str, Any] = field(default_factory=dict)
    # One row per runtime the model ran on (ptq_core.runtimes.RuntimeRow): FP32, the simulation, onnxruntime,
    # and evaluation.targets (LiteRT, PyTorch PT2E); accuracy, agreement, latency, file size, fallbacks.
    runtimes: list[dict[str, Any]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return _clean(asdict(self))

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent, allow_nan=False)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Result:
        return cls(**data)

    def layer(self, name: str) -> dict[str, Any]:
        for layer in self.layers:
            if layer["name"] == name:
                return layer
        raise KeyError(name)

    def summary_row(self) -> dict[str, Any]:
        """One flat row for tables, sweeps and CSV: the config's main fields and the headline numbers."""
        cfg = self.config
        w, a = cfg["weights"], cfg["activations"]
        return {
            "model": cfg["model"] if isinstance(cfg["model"], str) else json.dumps(cfg["model"]),
            "mode": self.mode,
            "weight_bits": w["bits"],
            "weight_scheme": w["scheme"],
            "weight_granularity": w["granularity"],
            "group_size": w["group_size"],
            "weight_clipping": w["clipping"],
            "act_bits": a["bits"] if a else None,
            "act_scheme": a["scheme"] if a else None,
            "act_clipping": a["clipping"] if a else None,
            "calibration_samples": cfg["calibration"]["num_samples"],
            "keep_float": ";".join(cfg["keep_float"]),
            "fp32_top1": self.metrics.get("fp32_top1"),
            "quant_top1": self.metrics.get("quant_top1"),
            "agreement": self.metrics["agreement"],
            "kl_divergence": self.metrics["kl_divergence"],
            "fp32_bytes": self.size["fp32_bytes"],
            "quant_bytes": self.size["quant_bytes"],
            "compression_ratio": self.size["compression_ratio"],
            "calibration_s": self.timing.get("calibration_s"),
            "evaluation_s": self.timing.get("evaluation_s"),
        }
