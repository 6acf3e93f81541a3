"""One row per runtime a quantized model was run on: the Result's ``runtimes`` table.

What lives here: :class:`RuntimeRow` (the row's fields and its JSON form) and :func:`compare`,
which turns one runtime's outputs into the row's accuracy numbers the same way for every runtime
(FP32, the simulation, onnxruntime, LiteRT, PyTorch's own PTQ). Not here: running any of them
(:mod:`ptq_core.onnx.runtime`, :mod:`ptq_core.tflite`, :mod:`ptq_core.pt2e`).

A row, as written into ``Result.runtimes``::

    name           "onnxruntime", "LiteRT", "PyTorch PT2E (X86InductorQuantizer)", "simulation", "FP32 (PyTorch)"
    version        the package version that ran it ("onnxruntime 1.31.1", "ai-edge-litert 2.3.0")
    kind           "integer" (integer kernels ran), "simulated" (float fake-quantize), "float" (no quantization)
    top1           accuracy on the evaluation samples (labelled data; k-NN topic accuracy for embeddings), else None
    agreement      same top-1 as FP32 (embeddings: same nearest neighbour as FP32)
    sim_agreement  same top-1 as ptq_core's simulation (embeddings: same nearest neighbour); None for the simulation
    max_abs_diff   largest |output - simulation output| over all samples and classes; None for the simulation
    latency_ms     {"1": ms, "32": ms}: median milliseconds per batch of that size, after warm-up ({} when not timed)
    threads        intra-op threads the latency was measured with
    file_bytes     size of the file the runtime loads (None when nothing is written)
    fallbacks      [{"layer", "reason"}]: what this runtime could not run as ptq_core planned it
    available      False when the runtime could not run at all (its package missing, the conversion failed)
    reason         why not, in plain words (None when it ran)
    notes          plain-words findings a user should read next to the numbers (e.g. why the framework default loses accuracy)
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any, TypedDict

import torch

from .metrics import agreement as top1_agreement
from .metrics import embedding_metrics, topk_accuracy

KINDS = ("integer", "simulated", "float")


class Accuracy(TypedDict):
    """What :func:`compare` measures: the accuracy fields of a :class:`RuntimeRow` (``RuntimeRow(..., **acc)``)."""

    top1: float | None
    agreement: float | None
    sim_agreement: float | None
    max_abs_diff: float | None


@dataclass
class RuntimeRow:
    name: str
    version: str
    kind: str
    top1: float | None = None
    agreement: float | None = None
    sim_agreement: float | None = None
    max_abs_diff: float | None = None
    latency_ms: dict[str, float] = field(default_factory=dict)
    threads: int | None = None
    file_bytes: int | None = None
    fallbacks: list[dict[str, str]] = field(default_factory=list)
    available: bool = True
    reason: str | None = None
    notes: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"RuntimeRow.kind: got {self.kind!r}; allowed: {', '.join(KINDS)}")

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def unavailable(cls, name: str, version: str, kind: str, reason: str) -> RuntimeRow:
        """A runtime that could not run (package missing, conversion failed): shown with ``reason``, never raised."""
        return cls(name=name, version=version, kind=kind, available=False, reason=reason)


def compare(
    outputs: torch.Tensor, *, fp32: torch.Tensor, simulated: torch.Tensor | None, labels: torch.Tensor | None,
    task: str = "classification",
) -> Accuracy:
    """``top1``, ``agreement``, ``sim_agreement`` and ``max_abs_diff`` of one runtime's ``outputs`` ([N, C] each).

    ``fp32`` the FP32 model's outputs on the same samples, ``simulated`` the simulation's (None when
    ``outputs`` are the simulation's own), ``labels`` the samples' labels or None. ``task``
    "embedding": agreement is nearest-neighbour agreement and top-1 the k-NN topic accuracy
    (:func:`ptq_core.metrics.embedding_metrics`).
    """
    outputs = outputs.float()
    if task == "embedding":
        em = embedding_metrics(fp32, outputs, labels)
        top1, agree = em.get("quant_top1"), em["neighbour_agreement"]
        sim_agree = embedding_metrics(simulated, outputs)["neighbour_agreement"] if simulated is not None else None
    else:
        top1 = topk_accuracy(outputs, labels) if labels is not None else None
        agree = top1_agreement(fp32, outputs)
        sim_agree = top1_agreement(simulated, outputs) if simulated is not None else None
    diff = float((outputs - simulated.float()).abs().max()) if simulated is not None else None
    return Accuracy(top1=top1, agreement=agree, sim_agreement=sim_agree, max_abs_diff=diff)
