"""The Result's ``runtimes`` table: FP32, the simulation, onnxruntime and the deployment targets a config asks for.

What lives here: :class:`Measured` (what the evaluation measured, as plain data), :func:`base_rows`
(the rows for FP32, the simulation and onnxruntime, from it) and :func:`target_row`, which runs one
of ``evaluation.targets``; ``Explorer.evaluate`` calls them once the simulation (and, when the config
asks for it, the onnxruntime check) has run. The targets:
``"litert"`` (:mod:`ptq_core.tflite`: ptq_core's plan as a full-integer ``.tflite`` in the LiteRT
interpreter) and ``"pt2e"`` (:mod:`ptq_core.pt2e`: PyTorch's own PTQ on the same calibration images).
Each target is imported only when asked for, and never raises: a missing package or a failed
conversion is a row with ``available: false`` and the reason, and the other targets still run.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .graph import PreparedModel
from .quantize import QuantPlan
from .runtimes import RuntimeRow, compare

log = logging.getLogger(__name__)

TARGET_NAMES = {"litert": "LiteRT", "pt2e": "PyTorch PT2E"}


@dataclass
class Measured:
    """What the evaluation already measured, handed over as plain data."""

    fp32_logits: torch.Tensor
    sim_logits: torch.Tensor
    labels: torch.Tensor | None
    task: str
    latency: dict[str, Any]  # the Result's latency block (measured by onnxruntime, or the simulated one)
    size: dict[str, Any]
    simulation_name: str  # e.g. "simulation (float fake-quantize, PyTorch)"
    ort_logits: torch.Tensor | None = None


def _simulated(latency: dict[str, Any]) -> dict[str, Any]:
    return latency.get("simulated", latency) if latency.get("kind") == "measured" else latency


def base_rows(m: Measured) -> list[RuntimeRow]:
    """FP32, the simulation and (when it ran) onnxruntime, from what the evaluation measured."""
    sim_lat = _simulated(m.latency)
    measured = m.latency.get("kind") == "measured"
    batches = m.latency.get("batches", {}) if measured else {}
    fp32 = RuntimeRow(name="FP32 (PyTorch eager)", version=f"torch {torch.__version__}", kind="float",
                      threads=m.latency.get("threads"),
                      **compare(m.fp32_logits, fp32=m.fp32_logits, simulated=m.sim_logits, labels=m.labels, task=m.task))
    if measured:
        fp32.latency_ms = {bs: row["torch_fp32_ms"] for bs, row in batches.items()}
    elif sim_lat.get("fp32_ms") is not None:
        fp32.latency_ms = {str(sim_lat.get("batch_size", 1)): sim_lat["fp32_ms"]}
    sim = RuntimeRow(name=m.simulation_name, version=str(sim_lat.get("runtime", "")), kind="simulated",
                     threads=sim_lat.get("threads"),
                     **compare(m.sim_logits, fp32=m.fp32_logits, simulated=None, labels=m.labels, task=m.task))
    if sim_lat.get("quant_ms") is not None:
        sim.latency_ms = {str(sim_lat.get("batch_size", 1)): sim_lat["quant_ms"]}
        sim.notes.append("latency of the simulation itself (float ops), not of integer kernels")
    rows = [fp32, sim]
    if measured and m.ort_logits is not None:
        kernels = m.latency.get("integer_kernels", [])
        ort = RuntimeRow(name="onnxruntime", version=str(m.latency.get("runtime", "")),
                         kind="integer" if kernels else "float", threads=m.latency.get("threads"),
                         latency_ms={bs: row["quant_ms"] for bs, row in batches.items()},
                         file_bytes=m.size.get("onnx_bytes"), fallbacks=list(m.latency.get("float_fallback", [])),
                         **compare(m.ort_logits, fp32=m.fp32_logits, simulated=m.sim_logits, labels=m.labels, task=m.task))
        if m.latency.get("int8_kernels"):
            ort.notes.append(str(m.latency["int8_kernels"]))
        rows.append(ort)
    return rows


def target_row(
    target: str, *, prepared: PreparedModel, plan: QuantPlan, model: nn.Module, example: torch.Tensor,
    calib_dataset: torch.utils.data.Dataset, calib_indices: list[int], dataset: torch.utils.data.Dataset,
    indices: list[int], batch_size: int, m: Measured,
) -> RuntimeRow:
    """Run one of ``evaluation.targets``; never raises (a failure is an unavailable row with the reason)."""
    name = TARGET_NAMES[target]
    try:
        if target == "litert":
            from .tflite import tflite_target

            return tflite_target(prepared, plan, dataset=dataset, indices=indices, batch_size=batch_size,
                                 fp32_logits=m.fp32_logits, sim_logits=m.sim_logits, labels=m.labels, task=m.task)
        from .pt2e import pt2e_target

        return pt2e_target(model, example=example, calib_dataset=calib_dataset, calib_indices=calib_indices,
                           dataset=dataset, indices=indices, batch_size=batch_size, fp32_logits=m.fp32_logits,
                           sim_logits=m.sim_logits, labels=m.labels, task=m.task)
    except ImportError as exc:
        return RuntimeRow.unavailable(name, "", "integer", f"not available on this machine: {exc} (its packages are in "
                                      "requirements.txt; `make venv` installs them)")
    except Exception as exc:  # a target must never lose the run: say what failed
        log.exception("target %s failed", target)
        first = str(exc).splitlines()[0][:300] if str(exc) else ""
        return RuntimeRow.unavailable(name, "", "integer", f"{type(exc).__name__}: {first}")
