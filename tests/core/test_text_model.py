"""all-MiniLM-L6-v2 (ptq_core.models.minilm): the encoder against sentence-transformers, tokenizing, placement.

The reference is sentence-transformers itself reading the same package folder (a test-only use:
ptq_core never imports it). Tolerance 1e-5 on unit-length embeddings: the issue's bar; measured
1.3e-7 (the two differ only in the order of float sums).
"""

from __future__ import annotations

import pytest
import torch

from ptq_core.graph import prepare
from ptq_core.models import get_model_entry, load_model
from ptq_core.models.minilm import MAX_TOKENS, TextTokenizer, model_dir

TEXTS = [
    "The goalkeeper dived to his left and saved the penalty.",
    "Interest rates rose again, and bond prices fell sharply across the market.",
    "hi",
    "Crème brûlée needs a very hot grill for a few seconds.",
]


@pytest.fixture(scope="module")
def model() -> torch.nn.Module:
    return load_model("all_minilm_l6_v2")


def test_embeddings_match_sentence_transformers_on_a_batch_of_mixed_lengths(model: torch.nn.Module) -> None:
    from sentence_transformers import SentenceTransformer

    reference = SentenceTransformer(str(model_dir()), device="cpu").encode(TEXTS, convert_to_tensor=True)
    tokens = TextTokenizer().tokenize(TEXTS).tokens
    assert tokens.shape[0] == 4 and tokens[2, 1].sum() == 3  # [CLS] hi [SEP], the rest padding
    with torch.no_grad():
        ours = model(tokens)
    assert torch.allclose(ours, reference.cpu(), atol=1e-5, rtol=0)
    assert torch.allclose(ours.norm(dim=1), torch.ones(4), atol=1e-6)


def test_padding_does_not_change_an_embedding(model: torch.nn.Module) -> None:
    tok = TextTokenizer()
    short = tok.tokenize(TEXTS[:1]).tokens
    padded = tok.tokenize(TEXTS[:1], length=40).tokens
    assert padded.shape[-1] == 40 and int(padded[0, 1].sum()) == short.shape[-1]
    with torch.no_grad():
        assert torch.allclose(model(short), model(padded), atol=1e-6)


def test_long_text_is_truncated_to_the_model_maximum_and_reported() -> None:
    tokenized = TextTokenizer().tokenize(["word " * 400, "short"])
    assert tokenized.tokens.shape[-1] == MAX_TOKENS
    assert tokenized.truncated == [0]


def test_the_transform_refuses_what_is_not_text() -> None:
    from ptq_core.errors import DataError

    with pytest.raises(DataError, match="the text model reads text, got Tensor"):
        get_model_entry("all_minilm_l6_v2").transform(torch.zeros(1, 8, 8))  # type: ignore[misc]


def test_placement_quantizes_linears_matmuls_and_residual_adds_never_the_mask(model: torch.nn.Module) -> None:
    prepared = prepare(model, TextTokenizer().tokenize(TEXTS[:2]).tokens[:1])
    kinds: dict[str, int] = {}
    for u in prepared.units:
        kinds[u.kind] = kinds.get(u.kind, 0) + 1
    # 6 layers x (query, key, value, attention output, intermediate, output) Linear; Q.K^T and attention.V; two adds
    assert kinds == {"linear": 36, "matmul": 12, "add": 12}
    qk = prepared.unit("matmul")
    assert qk.inputs == ("layers.0.attention.query", "layers.0.attention.key")
    assert prepared.unit("matmul_1").inputs == ("softmax", "layers.0.attention.value")
    graph_nodes = {n.name: n for n in prepared.graph_module.graph.nodes}
    for p in prepared.points:  # rule 7: only float tensors; ids, mask and the comparisons made from it never
        assert graph_nodes[p.node].meta["tensor_meta"].dtype == torch.float32
    assert "input" not in {p.name for p in prepared.points}
    # LayerNorm, softmax, GELU and the embedding block are float ops whose outputs feed quantized units
    producers = {p.name: p.producer for p in prepared.points}
    assert producers["embed"] == "float:embed"
    assert producers["softmax"] == "float:softmax"
    assert producers["gelu"] == "float:gelu"
    assert producers["layers.0.attention_norm"] == "float:LayerNorm"
    assert "embeddings.word_embeddings" in prepared.unsupported  # embeddings stay float
