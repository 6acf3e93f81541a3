"""Text data sets: one sample a line, tokenized once by the text model's tokenizer.

A spec::

    {"kind": "text_file", "path": "PATH", "num_calibration": null, "seed": 0, "max_lines": null}

``PATH`` is a ``.txt`` file (one text a line, unlabeled; blank lines skipped) or a ``.csv`` with a
``text`` column and, optionally, a ``label`` column (any strings; classes are the sorted distinct
labels). The file is split once by a seeded permutation into a calibration pool and a disjoint
evaluation split, as image folders are (:func:`~ptq_core.data.image_folder.split_calibration_evaluation`);
``num_calibration`` defaults to a quarter of the lines, at most 128, so a 72-line file gives 18
and 54. ``"sentences"`` is the default set in ``assets/text/sentences.csv`` (topics as labels).

Every text is tokenized at load by the model's :class:`TextTransform` into ``[2, L]`` (ids and
attention mask, see :mod:`ptq_core.models.minilm`), ``L`` the longest text of the file (at most
the model's maximum; longer lines are truncated, and the data set's ``warnings`` say which).
Each batch is cut to its own longest text (:class:`TextSamples`): padding never changes an
embedding, and a batch of short sentences does not pay for the file's longest line.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import torch

from ptq_core.errors import DataError

from . import Dataset, TensorSamples, register_dataset
from .image_folder import split_calibration_evaluation

KIND = "text_file"
SENTENCES = "sentences"
SENTENCES_PATH = Path(__file__).resolve().parents[2] / "assets" / "text" / "sentences.csv"
DEFAULT_NUM_CALIBRATION = 128  # as image folders: plenty for per-tensor ranges
SUFFIXES = (".txt", ".csv")


class Tokenize(Protocol):
    """What a text model's transform offers: texts -> tokens [N, 2, L], and which were truncated."""

    max_tokens: int

    def tokenize(self, texts: Sequence[str], length: int | None = None) -> Any: ...


class TextSamples(TensorSamples):
    """Tokenized texts ``[N, 2, L]``; a batch is cut to its longest text, so short texts do not pay for long ones."""

    @staticmethod
    def collate(items: list[tuple[torch.Tensor, int]]) -> tuple[torch.Tensor, torch.Tensor]:
        tokens = torch.stack([x for x, _ in items])
        width = max(int(tokens[:, 1].sum(dim=1).max()), 1)
        return tokens[:, :, :width].contiguous(), torch.tensor([y for _, y in items], dtype=torch.int64)


def default_num_calibration(num_lines: int) -> int:
    """A quarter of the lines (at least 1), at most 128."""
    return max(1, min(DEFAULT_NUM_CALIBRATION, num_lines // 4))


def read_text_file(path: Path, max_lines: int | None = None) -> tuple[list[str], list[str] | None]:
    """The texts of a .txt/.csv file and their labels (None when unlabeled). DataError names the file and the fault."""
    if path.suffix.lower() not in SUFFIXES:
        raise DataError(f"dataset.path: {path.name!r} is not a text file; allowed: .txt (one text a line) or .csv "
                        "(columns text and, optionally, label)")
    if not path.is_file():
        raise DataError(f"dataset.path: {str(path)!r} does not exist or is not a file")
    try:
        raw = path.read_bytes().decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(f"dataset.path: {path.name} is not UTF-8 text (byte {exc.start}: {exc.reason}); "
                        "allowed: a UTF-8 encoded .txt or .csv file") from None
    labels: list[str] | None = None
    if path.suffix.lower() == ".txt":
        texts = [line.strip() for line in raw.splitlines() if line.strip()]
    else:
        reader = csv.DictReader(io.StringIO(raw))
        columns = {c.strip().lower(): c for c in reader.fieldnames or []}
        if "text" not in columns:
            raise DataError(f"dataset.path: {path.name} has no 'text' column (columns: {', '.join(reader.fieldnames or []) or 'none'}); "
                            "allowed: a CSV whose header names a text column and, optionally, a label column")
        rows = [r for r in reader if (r.get(columns["text"]) or "").strip()]
        texts = [(r[columns["text"]] or "").strip() for r in rows]
        if "label" in columns:
            labels = [(r.get(columns["label"]) or "").strip() for r in rows]
            if any(not label for label in labels):
                raise DataError(f"dataset.path: {path.name}: {sum(not lb for lb in labels)} row(s) have an empty label; "
                                "allowed: a label on every row, or no label column (unlabeled)")
    if max_lines is not None:
        texts = texts[:max_lines]
        labels = labels[:max_lines] if labels is not None else None
    if len(texts) < 2:
        raise DataError(f"dataset.path: {path.name} holds {len(texts)} text(s); allowed: at least 2 non-empty lines "
                        "(calibration and evaluation)")
    return texts, labels


def _check_int(name: str, value: Any, lo: int, *, optional: bool = False) -> None:
    if optional and value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < lo:
        raise DataError(f"dataset.{name}: got {value!r}; allowed: an integer >= {lo}" + (" or null" if optional else ""))


def load_text_file_dataset(
    *, path: str | None = None, num_calibration: int | None = None, seed: int = 0, max_lines: int | None = None,
    transform: Callable[[Any], Any] | None = None,
) -> Dataset:
    """The data set of a ``text_file`` spec (see the module docstring)."""
    if not isinstance(path, str) or not path:
        raise DataError(f'dataset.path: got {path!r}; allowed: the path of a .txt or .csv file: {{"kind": "{KIND}", "path": "PATH"}}')
    _check_int("num_calibration", num_calibration, 1, optional=True)
    _check_int("seed", seed, 0)
    _check_int("max_lines", max_lines, 2, optional=True)
    tokenize = getattr(transform, "tokenize", None)
    if not callable(tokenize):
        raise DataError("dataset: a text data set needs a text model (all_minilm_l6_v2); this model reads images or "
                        "tensors; allowed: an image folder or digits for it")
    file = Path(path)
    texts, names = read_text_file(file, max_lines)
    n = len(texts)
    k = default_num_calibration(n) if num_calibration is None else num_calibration
    if k > n - 1:
        raise DataError(f"dataset.num_calibration: got {k} for a file of {n} texts; allowed: 1 to {n - 1}, so at least "
                        "one text is left to evaluate on")
    tokenized = tokenize(texts)
    tokens: torch.Tensor = tokenized.tokens
    warnings = []
    if tokenized.truncated:
        lines = ", ".join(str(i + 1) for i in tokenized.truncated[:8]) + (" ..." if len(tokenized.truncated) > 8 else "")
        warnings.append(f"dataset: {len(tokenized.truncated)} text(s) of {file.name} are longer than the model's "
                        f"{transform.max_tokens} tokens and were truncated (text {lines})")  # type: ignore[union-attr]
    classes = sorted(set(names)) if names is not None else None
    labels = torch.tensor([classes.index(x) for x in names], dtype=torch.int64) if names and classes else None
    cal_idx, eval_idx = split_calibration_evaluation(n, k, seed)
    cal, ev = torch.tensor(cal_idx), torch.tensor(eval_idx)
    layout = "csv, labeled" if labels is not None else ("csv, unlabeled" if file.suffix.lower() == ".csv" else "one text a line, unlabeled")
    lengths = tokens[:, 1].sum(dim=1)
    return Dataset(
        name=KIND,
        description=f"Texts in {file.name} ({layout}): {k} calibration / {n - k} evaluation",
        calibration_pool=TextSamples(tokens[cal], labels[cal] if labels is not None else None),
        evaluation=TextSamples(tokens[ev], labels[ev] if labels is not None else None),
        calibration_labels=labels[cal].clone() if labels is not None else None,
        evaluation_labels=labels[ev].clone() if labels is not None else None,
        num_classes=len(classes or []),
        class_names=classes,
        input_shape=tuple(tokens.shape[1:]),
        modality="text",
        info={
            "source": str(file.resolve()),
            "layout": layout,
            "labeled": labels is not None,
            "samples": {"total": n, "calibration": k, "evaluation": n - k},
            "split": f"split_calibration_evaluation({n}, {k}, seed={seed}): seeded permutation, disjoint",
            "seed": seed,
            "max_lines": max_lines,
            "tokens": {"padded_to": int(tokens.shape[-1]), "min": int(lengths.min()), "mean": float(lengths.float().mean()),
                       "max": int(lengths.max())},
            "preprocessing": getattr(transform, "describe", repr(transform)),
            "texts": {"calibration": [texts[i] for i in cal_idx], "evaluation": [texts[i] for i in eval_idx]},
        },
        warnings=warnings,
    )


def _load_sentences(*, num_calibration: int | None = None, seed: int = 0,
                    transform: Callable[[Any], Any] | None = None) -> Dataset:
    data = load_text_file_dataset(path=str(SENTENCES_PATH), num_calibration=num_calibration, seed=seed, transform=transform)
    data.name = SENTENCES
    return data


register_dataset(KIND, load_text_file_dataset, "Text on disk: a .txt file (one text a line) or a .csv with text,label")
register_dataset(SENTENCES, _load_sentences,
                 "Sentences on 15 topics written for PTQ Explorer (assets/text/sentences.csv), the topic as label")
