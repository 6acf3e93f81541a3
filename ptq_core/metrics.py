"""What a run measures: accuracy, agreement, output divergence, SQNR and model size.

Classifiers are compared by their logits (top-1/top-5, agreement, KL); embedding models by
:func:`embedding_metrics` (cosine to FP32, nearest-neighbour agreement, recall@10, k-NN accuracy).

Pure functions of tensors and plans; nothing here runs a model. SQNR (signal-to-quantization-
noise ratio) is ``10 * log10(sum(x**2) / sum((x - x_q)**2))`` in dB: each bit of a uniform
quantizer adds about 6 dB, so INT8 on a well-scaled Gaussian tensor gives roughly 40 dB.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:
    from .graph import PreparedModel
    from .quantize import QuantPlan

FLOAT_BYTES = 4
SCALE_BYTES = 4  # float32 scales, as ONNX QDQ and most runtimes store them


def top_classes(logits: torch.Tensor, k: int = 1) -> torch.Tensor:
    """The ``k`` predicted classes of each sample ``[N, k]``: largest logit first, ties to the LOWER class index.

    The one definition of "top-k" here: column 0 is ``argmax(dim=1)`` (the first maximum), which
    is what agreement, ``Result.predictions`` and the integer runtime's ``runtime_top1`` use, so a
    tied sample counts the same in every top-1 number. ``topk`` breaks ties in no documented order.
    Example: logits ``[[1, 3, 3, 0]]``, k = 2 -> ``[[1, 2]]``.
    """
    k = min(k, logits.shape[1])
    order = torch.sort(logits, dim=1, descending=True, stable=True).indices  # stable: equal logits keep index order
    return order[:, :k]


def topk_accuracy(logits: torch.Tensor, labels: torch.Tensor, k: int = 1) -> float:
    """Fraction of samples whose label is among their :func:`top_classes` (top-1: the first argmax)."""
    if k == 1:
        hits = logits.argmax(dim=1) == labels
    else:
        hits = (top_classes(logits, k) == labels.unsqueeze(1)).any(dim=1)
    return float(hits.float().mean())


def agreement(reference: torch.Tensor, other: torch.Tensor) -> float:
    """Fraction of samples where both logit sets pick the same class (top-1, the first argmax)."""
    return float((reference.argmax(dim=1) == other.argmax(dim=1)).float().mean())


def mean_kl_divergence(reference: torch.Tensor, other: torch.Tensor) -> float:
    """Mean over samples of KL(softmax(reference) || softmax(other)), in nats."""
    p_log = F.log_softmax(reference.double(), dim=1)
    q_log = F.log_softmax(other.double(), dim=1)
    return float((p_log.exp() * (p_log - q_log)).sum(dim=1).mean())


# -- embeddings (a sentence-embedding model's outputs; rows need not be unit length) --------------
# all-MiniLM-L6-v2 was trained with a contrastive loss on cosine similarities scaled by 20 (sentence-
# transformers' MultipleNegativesRankingLoss default): the distributions whose KL is reported.
SIMILARITY_SCALE = 20.0
RECALL_K = 10
KNN_K = 5  # neighbours voting in the k-NN topic accuracy
# A sentence's FP32 nearest neighbour is a near tie when the second nearest is within this cosine of it. On the default
# sentence set all-MiniLM-L6-v2's INT8 per-token quantization moves a pair's cosine by 0.003 on average, so a move
# between two candidates this close says little about the quantization (benchmarks/RESULTS.md, issue 12).
NEAR_TIE_COSINE = 0.005


def _cosines(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Cosine similarity of every row of ``a`` with every row of ``b``, float64 ``[N, M]``."""
    return F.normalize(a.double(), dim=1) @ F.normalize(b.double(), dim=1).T


def _neighbour_similarities(embeddings: torch.Tensor) -> torch.Tensor:
    """Cosines among the rows, with each row's own entry at -inf (a sentence is not its own neighbour)."""
    sims = _cosines(embeddings, embeddings)
    sims.fill_diagonal_(-math.inf)
    return sims


def knn_accuracy(embeddings: torch.Tensor, labels: torch.Tensor, k: int = KNN_K) -> float:
    """Leave-one-out k-NN classification accuracy: each sample's label voted by its ``k`` nearest others.

    Votes are weighted by cosine similarity, so ties go to the closer neighbours. Example: labels
    [0, 0, 1], k = 1: each sample takes the label of its single nearest other sample.
    """
    n = embeddings.shape[0]
    if n < 2:
        return float("nan")
    k = min(k, n - 1)
    sims = _neighbour_similarities(embeddings)
    top = sims.topk(k, dim=1)
    votes = torch.zeros((n, int(labels.max()) + 1), dtype=torch.float64)
    votes.scatter_add_(1, labels[top.indices], top.values.clamp(min=0) + 1e-9)
    return float((votes.argmax(dim=1) == labels).double().mean())


def embedding_metrics(reference: torch.Tensor, other: torch.Tensor, labels: torch.Tensor | None = None) -> dict[str, float]:
    """How far quantized embeddings ``other`` are from the FP32 ``reference`` (``[N, D]`` each).

    ``cosine_mean``/``cosine_min``: cosine of each sample's two embeddings. ``neighbour_agreement``:
    share of samples whose nearest other sample is the same under both (each model searched among
    its own embeddings), the embedding counterpart of top-1 agreement and returned as ``agreement``
    too; ``neighbours_moved`` counts the samples whose nearest neighbour changed, and
    ``neighbours_moved_near_ties`` those of them whose two nearest FP32 neighbours were within
    :data:`NEAR_TIE_COSINE` of each other (a move between near-equals, which any small perturbation
    makes). ``recall_at_10``: mean share of the FP32 10 nearest neighbours that the quantized model also
    ranks in its 10 nearest. ``kl_divergence``: mean KL between the two models' softmax over scaled
    cosine similarities to the other samples (scale :data:`SIMILARITY_SCALE`, the model's training
    temperature). With ``labels``: ``fp32_top1``/``quant_top1``, leave-one-out k-NN topic accuracy.
    """
    pair = (F.normalize(reference.double(), dim=1) * F.normalize(other.double(), dim=1)).sum(dim=1)
    out: dict[str, float] = {"cosine_mean": float(pair.mean()), "cosine_min": float(pair.min())}
    n = reference.shape[0]
    if n >= 2:
        ref_sims, q_sims = _neighbour_similarities(reference), _neighbour_similarities(other)
        moved = ref_sims.argmax(dim=1) != q_sims.argmax(dim=1)
        out["neighbour_agreement"] = float((~moved).double().mean())
        out["neighbours_moved"] = float(moved.sum())
        if n >= 3:
            top2 = ref_sims.topk(2, dim=1).values
            near_tie = (top2[:, 0] - top2[:, 1]) < NEAR_TIE_COSINE
            out["neighbours_moved_near_ties"] = float((moved & near_tie).sum())
        else:
            out["neighbours_moved_near_ties"] = 0.0
        k = min(RECALL_K, n - 1)
        ref_top, q_top = ref_sims.topk(k, dim=1).indices, q_sims.topk(k, dim=1).indices
        hits = (ref_top.unsqueeze(2) == q_top.unsqueeze(1)).any(dim=2).double().sum(dim=1) / k
        out["recall_at_10"] = float(hits.mean())
        eye = torch.eye(n, dtype=torch.bool)
        p_log = F.log_softmax((SIMILARITY_SCALE * ref_sims).masked_fill(eye, -math.inf), dim=1).masked_fill(eye, 0.0)
        q_log = F.log_softmax((SIMILARITY_SCALE * q_sims).masked_fill(eye, -math.inf), dim=1).masked_fill(eye, 0.0)
        out["kl_divergence"] = float((p_log.exp() * (p_log - q_log)).sum(dim=1).mean())
    else:  # one sample has no neighbours: agreement is about the embedding itself
        out.update(neighbour_agreement=1.0, recall_at_10=1.0, kl_divergence=0.0, neighbours_moved=0.0,
                   neighbours_moved_near_ties=0.0)
    out["agreement"] = out["neighbour_agreement"]
    if labels is not None and n >= 2:
        out["fp32_top1"] = knn_accuracy(reference, labels)
        out["quant_top1"] = knn_accuracy(other, labels)
    return out


def sqnr_db(signal_power: float, noise_power: float) -> float:
    """10*log10(signal/noise); +inf when there is no noise (e.g. a tensor kept in float)."""
    if noise_power <= 0.0:
        return math.inf
    if signal_power <= 0.0:
        return -math.inf
    return 10.0 * math.log10(signal_power / noise_power)


@dataclass
class SqnrAccumulator:
    """Streams ``sum(x**2)`` and ``sum((x - y)**2)`` over batches, in float64."""

    signal: float = 0.0
    noise: float = 0.0

    def add(self, reference: torch.Tensor, other: torch.Tensor) -> None:
        r = reference.double()
        self.signal += float(r.square().sum())
        self.noise += float((r - other.double()).square().sum())

    @property
    def db(self) -> float:
        return sqnr_db(self.signal, self.noise)


def float_bytes(model: nn.Module, *, skip_prefix: str | None = None) -> int:
    """Bytes of the model's floating-point parameters and buffers (BatchNorm statistics included).

    ``skip_prefix``: leave out the buffers of submodules whose name starts with it (quantizers).
    """
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    for name, mod in model.named_modules():
        if skip_prefix is not None and name.startswith(skip_prefix):
            continue
        total += sum(b.numel() * b.element_size() for b in mod.buffers(recurse=False) if b.is_floating_point())
    return total


def packed_bytes(num_values: int, bits: int) -> int:
    """Bytes of ``num_values`` integers packed at ``bits`` each (two INT4 per byte)."""
    return math.ceil(num_values * bits / 8)


def quantized_size(prepared: PreparedModel, plan: QuantPlan, original: nn.Module) -> dict[str, Any]:
    """FP32 vs quantized model bytes, with a per-layer breakdown.

    Quantized weights count packed at their bit width; each scale 4 bytes; each zero point
    packed at the weight bit width (symmetric schemes store none); biases stay 32-bit (runtimes
    keep them as int32); layers in float and every other parameter count 4 bytes per value;
    each static activation quantizer adds one scale and one zero point.

    The baseline ``fp32_bytes`` is the PREPARED model in float32: the same graph the quantized
    size counts, so with ``fold_batchnorm`` the BatchNorm statistics are folded away on both sides
    and ``compression_ratio`` measures quantization alone. ``fp32_unfolded_bytes`` is the original
    module (BatchNorm buffers included, what its state dict holds). On digits_cnn W8 per-channel
    folding alone saves about 3% (the ratio against the unfolded size would be about 3% larger).
    """
    fp32 = float_bytes(prepared.graph_module, skip_prefix="ptq_")
    unfolded = float_bytes(original)
    per_layer: list[dict[str, Any]] = []
    quant_total = 0
    counted: set[str] = set()
    for lq in plan.layers.values():
        assert lq.unit.module is not None
        counted.add(lq.unit.module)
        w = prepared.weight(lq.unit)
        bias = prepared.bias(lq.unit)
        bias_bytes = bias.numel() * FLOAT_BYTES if bias is not None else 0
        fp = w.numel() * FLOAT_BYTES + bias_bytes
        if lq.quant is None or lq.qparams is None:
            q = fp
        else:
            n_scales = lq.qparams.scale.numel()
            zp = 0 if lq.quant.scheme == "symmetric" else packed_bytes(n_scales, lq.quant.bits)
            q = packed_bytes(w.numel(), lq.quant.bits) + n_scales * SCALE_BYTES + zp + bias_bytes
        per_layer.append({"name": lq.unit.name, "fp32_bytes": fp, "quant_bytes": q, "bits": lq.quant.bits if lq.quant else 32})
        quant_total += q
    # Everything else the prepared model keeps (unfolded BN, unsupported layers) stays float.
    for name, mod in prepared.graph_module.named_modules():
        if name in counted:
            continue
        for p in mod.parameters(recurse=False):
            quant_total += p.numel() * p.element_size()
        for b in mod.buffers(recurse=False):
            if b.is_floating_point() and not name.startswith("ptq_"):
                quant_total += b.numel() * b.element_size()
    act_bytes = sum(SCALE_BYTES + 1 for p in plan.points.values() if p.quant.mode == "static")
    quant_total += act_bytes
    return {
        "fp32_bytes": fp32,
        "fp32_unfolded_bytes": unfolded,
        "quant_bytes": quant_total,
        "compression_ratio": fp32 / quant_total if quant_total else math.inf,
        "activation_qparams_bytes": act_bytes,
        "layers": per_layer,
    }
