"""The ONNX / onnxruntime wing of ptq_core: exporting quantized models and running them.

Two questions are answered here. What does a deployed integer model do (the integer QDQ export
and the check on onnxruntime's integer kernels), and how fast can the simulation run (the same
fake-quantized model in onnxruntime, ``evaluation.backend = "onnxruntime"``).

Integer QDQ export (``python -m ptq_core export``, the dashboard's Export page)
    :mod:`~ptq_core.onnx.export`   entry points: :func:`export_onnx`, :func:`export_float_onnx`; opsets, plan checks
    :mod:`~ptq_core.onnx.qdq`      torch-side Q/DQ modules and the TorchScript export
    :mod:`~ptq_core.onnx.rewrite`  edits of the exported graph: integer weights, MatMulNBits, integer pads
    :mod:`~ptq_core.onnx.report`   :class:`ExportReport`: what was written, which kernels, which fallbacks
    :mod:`~ptq_core.onnx.runtime`  ``evaluation.runtime``: run the export, compare with the simulation, latency

The simulation in onnxruntime
    :mod:`~ptq_core.onnx.simulate` the simulation graph (:mod:`ptq_core.simulation`) as ONNX, per structure
    :mod:`~ptq_core.onnx.layout`   rewrites of onnxruntime's optimized graph: blocked layout, schedule
    :mod:`~ptq_core.onnx.backend`  :class:`OrtBackend`: exported graphs and sessions, evaluation, probe

Shared: :mod:`~ptq_core.onnx.session` (every onnxruntime session is made there).

Modules here may import the core (graph, quantize, ranges, simulation, ...) but never
:mod:`ptq_core.pipeline`: the facade calls down into this package, never the other way. This
file imports nothing, so ``import ptq_core.onnx`` does not load onnx or onnxruntime.
"""
