"""The LiteRT (TFLite) target: a full-integer .tflite carrying ptq_core's own scales, run in the LiteRT interpreter.

    from ptq_core.tflite import export_tflite, litert_unavailable, tflite_target

    litert_unavailable()                                     # None, or why not ("litert-torch is not installed ...")
    report = export_tflite(prepared, plan, "model.tflite", example=x[:1])   # TfliteReport; ExportError naming the layer
    row = tflite_target(prepared, plan, dataset=ds, indices=idx, batch_size=64,
                        fp32_logits=f, sim_logits=s, labels=y, threads=1)    # a RuntimeRow; never raises

Modules, one concept each: :mod:`~ptq_core.tflite.availability` (the two packages),
:mod:`~ptq_core.tflite.qdq` (the plan as PT2E quantize/dequantize ops), :mod:`~ptq_core.tflite.export`
(converting with litert-torch; what is carried and what falls back, and why),
:mod:`~ptq_core.tflite.contents` (the written file read back and checked),
:mod:`~ptq_core.tflite.runtime` (the interpreter, the runtimes-table row). Importing this package
imports neither litert-torch (~8 s: it loads JAX) nor the interpreter; the functions do, when called.
"""

from __future__ import annotations

from .availability import litert_unavailable, versions
from .export import TfliteReport, check_plan, export_tflite
from .runtime import TfliteRunner, tflite_target

__all__ = [
    "TfliteReport", "TfliteRunner", "check_plan", "export_tflite", "litert_unavailable", "tflite_target", "versions",
]
