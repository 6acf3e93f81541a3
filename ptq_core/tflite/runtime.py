"""Run the exported .tflite in the LiteRT interpreter (XNNPACK on the CPU): the LiteRT row of the runtimes table.

What lives here: :class:`TfliteRunner` (one interpreter: float samples in, float outputs out, with
the file's own input/output quantization applied at the edges) and :func:`tflite_target`, which
exports a plan to a temporary folder, runs the evaluation samples, compares them with FP32 and the
simulation (:func:`ptq_core.runtimes.compare`) and times batch 1. Not here: writing the file
(:mod:`ptq_core.tflite.export`).

``tflite_target`` never raises: a missing package, a plan LiteRT cannot carry, a failed conversion
or a failed run becomes ``RuntimeRow.unavailable`` with the reason (naming the layer where the
converter did).

The file has a fixed batch of 1 (TFLite models are usually run one sample at a time on device), so
samples are run one by one. Its interface is int8 when the model's input and output are quantization
points: a float sample is quantized here exactly as the simulation's input quantizer does it
(``round(x * (1 / s)) + z``, half to even, clamped), and int8 outputs are dequantized with the file's
scale and zero point. Latency is ``set_tensor + invoke`` on an already quantized sample.
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np
import torch

from ..calibration import batches
from ..errors import PTQError
from ..graph import PreparedModel
from ..quantize import QuantPlan
from ..runtimes import RuntimeRow, compare
from ..timing import median_ms
from .availability import RUNTIME, litert_unavailable, versions
from .export import export_tflite

log = logging.getLogger(__name__)

NAME = "LiteRT"


class TfliteRunner:
    """One LiteRT interpreter on a .tflite (XNNPACK, the default CPU delegate, applied), fed float samples."""

    def __init__(self, path: str | Path, *, threads: int) -> None:
        from ai_edge_litert.interpreter import Interpreter

        self.interpreter = Interpreter(model_path=str(path), num_threads=threads)
        self.interpreter.allocate_tensors()
        self.input = self.interpreter.get_input_details()[0]
        self.output = self.interpreter.get_output_details()[0]
        self.threads = threads

    def delegated(self) -> bool:
        """Whether a delegate (XNNPACK here) took over part of the graph."""
        ops = self.interpreter._get_ops_details()  # private but stable; a delegate shows as a DELEGATE node
        return any(op["op_name"] == "DELEGATE" for op in ops)

    def encode(self, x: torch.Tensor) -> np.ndarray:
        """One sample [1, ...] in the file's input type: int8 with the file's scale and zero point, or as is."""
        a = x.detach().to(torch.float32).numpy()
        dtype = np.dtype(self.input["dtype"])
        scale, zp = self.input["quantization"]
        if dtype.kind in "iu" and scale:
            inv = np.float32(1.0) / np.float32(scale)  # the simulation's x * (1 / s), in float32
            info = np.iinfo(dtype)
            return np.clip(np.round(a * inv) + zp, info.min, info.max).astype(dtype)
        return a.astype(dtype)

    def decode(self, q: np.ndarray) -> torch.Tensor:
        scale, zp = self.output["quantization"]
        if np.dtype(self.output["dtype"]).kind in "iu" and scale:
            return torch.from_numpy((q.astype(np.float32) - np.float32(zp)) * np.float32(scale))
        return torch.from_numpy(q.astype(np.float32))

    def invoke(self, encoded: np.ndarray) -> np.ndarray:
        self.interpreter.set_tensor(self.input["index"], encoded)
        self.interpreter.invoke()
        return self.interpreter.get_tensor(self.output["index"])

    def run(self, dataset: torch.utils.data.Dataset, indices: list[int], batch_size: int) -> torch.Tensor:
        """Outputs for ``dataset[indices]``, one sample at a time, concatenated [N, ...]."""
        outs = []
        for x, _y in batches(dataset, indices, batch_size):
            for i in range(x.shape[0]):
                outs.append(self.decode(self.invoke(self.encode(x[i : i + 1]))))
        return torch.cat(outs)


def _version() -> str:
    return f"{RUNTIME} {versions()[RUNTIME]}"


def tflite_target(
    prepared: PreparedModel,
    plan: QuantPlan,
    *,
    dataset: torch.utils.data.Dataset,
    indices: list[int],
    batch_size: int,
    fp32_logits: torch.Tensor,
    sim_logits: torch.Tensor,
    labels: torch.Tensor | None,
    task: str = "classification",
    threads: int | None = None,
) -> RuntimeRow:
    """Export ``plan`` to a temporary .tflite, run ``dataset[indices]`` in LiteRT, compare, time batch 1; never raises.

    ``fp32_logits``/``sim_logits``: the FP32 model's and the simulation's outputs on the same samples;
    ``labels``: theirs or None; ``threads``: the interpreter's (default: torch's intra-op thread count,
    as the onnxruntime check uses).
    """
    reason = litert_unavailable()
    if reason is not None:
        return RuntimeRow.unavailable(NAME, RUNTIME, "integer", reason)
    threads = threads or torch.get_num_threads()
    try:
        return _target(prepared, plan, dataset, indices, batch_size, fp32_logits, sim_logits, labels, task, threads)
    except PTQError as exc:
        return RuntimeRow.unavailable(NAME, _version(), "integer", str(exc))
    except Exception as exc:  # a failed run must become a row, never lose the rest of the table
        log.exception("LiteRT run failed")
        first = str(exc).splitlines()[0][:300] if str(exc) else ""
        return RuntimeRow.unavailable(NAME, _version(), "integer", f"LiteRT could not run the model ({type(exc).__name__}: {first})")


def _target(
    prepared: PreparedModel, plan: QuantPlan, dataset: torch.utils.data.Dataset, indices: list[int], batch_size: int,
    fp32_logits: torch.Tensor, sim_logits: torch.Tensor, labels: torch.Tensor | None, task: str, threads: int,
) -> RuntimeRow:
    example = next(iter(batches(dataset, indices[:1], 1)))[0]
    with tempfile.TemporaryDirectory(prefix="ptq_tflite_") as tmp:
        report = export_tflite(prepared, plan, Path(tmp) / "model.tflite", example=example)
        runner = TfliteRunner(report.path, threads=threads)
        outputs = runner.run(dataset, indices, batch_size)
        encoded = runner.encode(example)
        ms, repeats = median_ms(lambda: runner.invoke(encoded))
        delegated = runner.delegated()
    numbers = compare(outputs, fp32=fp32_logits, simulated=sim_logits, labels=labels, task=task)
    notes = [
        f"converted by litert-torch {report.versions.get('litert-torch', '?')} in {report.seconds:.1f} s; "
        f"{len(report.activations_carried)}/{len(plan.points)} activation points and "
        f"{len(report.weights_carried)}/{len(plan.layers)} layers' weights carry ptq_core's scales",
        f"interface {report.input_dtype} in, {report.output_dtype} out; batch 1 latency: median of {repeats} "
        f"set_tensor+invoke, {'XNNPACK delegate applied' if delegated else 'no delegate applied (builtin kernels)'}",
        *report.notes,
    ]
    if report.float_ops:
        notes.append(f"ops computing in float: {', '.join(report.float_ops[:8])}"
                     + (f" and {len(report.float_ops) - 8} more" if len(report.float_ops) > 8 else ""))
    return RuntimeRow(
        name=NAME, version=_version(), kind="integer", top1=numbers["top1"], agreement=numbers["agreement"],
        sim_agreement=numbers["sim_agreement"], max_abs_diff=numbers["max_abs_diff"], latency_ms={"1": ms},
        threads=threads, file_bytes=report.file_bytes, fallbacks=report.fallbacks, notes=notes,
    )
