"""Embedding metrics (ptq_core.metrics.embedding_metrics, knn_accuracy) on hand-made vectors."""

from __future__ import annotations

import math

import torch

from ptq_core.metrics import NEAR_TIE_COSINE, embedding_metrics, knn_accuracy

# Four unit vectors in the plane: 0 and 1 close together, 2 and 3 close together.
REF = torch.tensor([[1.0, 0.0], [0.96, 0.28], [0.0, 1.0], [-0.28, 0.96]])


def test_identical_embeddings_agree_everywhere() -> None:
    m = embedding_metrics(REF, REF.clone())
    assert math.isclose(m["cosine_mean"], 1.0, abs_tol=1e-12) and math.isclose(m["cosine_min"], 1.0, abs_tol=1e-12)
    assert m["neighbour_agreement"] == m["agreement"] == m["recall_at_10"] == 1.0
    assert abs(m["kl_divergence"]) < 1e-12


def test_a_rotated_embedding_has_its_cosine_and_can_change_a_neighbour() -> None:
    other = REF.clone()
    other[1] = torch.tensor([0.0, 1.0])  # sample 1 now sits on sample 2: cosine with its FP32 self is 0.28
    m = embedding_metrics(REF, other)
    assert math.isclose(m["cosine_min"], 0.28, abs_tol=1e-6)
    assert math.isclose(m["cosine_mean"], (3 + 0.28) / 4, abs_tol=1e-6)
    # FP32 neighbours: 0->1, 1->0, 2->3, 3->2. Quantized: 0->1 (cos 0 ties with 2 at 0; 1 comes first), 1->2, 2->1, 3->1/2.
    assert m["neighbour_agreement"] < 1.0
    assert m["kl_divergence"] > 0.0
    assert m["recall_at_10"] == 1.0  # k = n - 1 = 3: every other sample is in both top-3 lists


def test_knn_accuracy_leave_one_out() -> None:
    labels = torch.tensor([0, 0, 1, 1])
    assert knn_accuracy(REF, labels, k=1) == 1.0
    assert knn_accuracy(REF, torch.tensor([0, 1, 0, 1]), k=1) == 0.0  # every nearest other has the other label
    m = embedding_metrics(REF, REF, labels)
    assert m["fp32_top1"] == m["quant_top1"] == 1.0


def _nearest_and_margin(e: torch.Tensor) -> tuple[list[int], list[float]]:
    """Each row's nearest other row and the cosine gap to its second nearest, by plain loops."""
    u = torch.nn.functional.normalize(e.double(), dim=1)
    nearest, margin = [], []
    for i in range(len(u)):
        sims = sorted(((float(u[i] @ u[j]), j) for j in range(len(u)) if j != i), reverse=True)
        nearest.append(sims[0][1])
        margin.append(sims[0][0] - sims[1][0])
    return nearest, margin


def test_moved_neighbours_are_counted_and_near_ties_told_apart() -> None:
    """Sample 0's two nearest FP32 neighbours (1 and 2) are a near tie, sample 3's are not: moving both counts two
    moves, one of them a near tie."""
    ref = torch.tensor([[1.0, 0.0, 0.0], [0.9, 0.1, 0.0], [0.9, 0.0, 0.102], [0.0, 0.0, 1.0], [0.0, 0.6, 0.8],
                        [0.0, 1.0, 0.0]])
    other = ref.clone()
    other[0] = torch.tensor([0.9, -0.05, 0.1])  # now nearer 2 than 1
    other[3] = torch.tensor([0.85, 0.0, 0.5])  # was nearest 4, now nearest 2
    (before, margin), (after, _) = _nearest_and_margin(ref), _nearest_and_margin(other)
    moved = [i for i in range(6) if before[i] != after[i]]
    assert 0 in moved and 3 in moved and margin[0] < NEAR_TIE_COSINE <= margin[3]  # the construction holds
    m = embedding_metrics(ref, other)
    assert m["neighbours_moved"] == len(moved) == round((1 - m["neighbour_agreement"]) * 6)
    assert m["neighbours_moved_near_ties"] == sum(margin[i] < NEAR_TIE_COSINE for i in moved)
    assert 0 < m["neighbours_moved_near_ties"] < m["neighbours_moved"]
    same = embedding_metrics(ref, ref.clone())
    assert same["neighbours_moved"] == same["neighbours_moved_near_ties"] == 0.0
