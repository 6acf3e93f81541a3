"""Text data sets (ptq_core.data.text): files, the seeded split, batches, and every bad input named."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch

from ptq_core.calibration import load_batch
from ptq_core.data import load_dataset
from ptq_core.data.text import SENTENCES_PATH
from ptq_core.errors import DataError
from ptq_core.models import get_model_entry
from ptq_core.pipeline import Explorer

TEXT = get_model_entry("all_minilm_l6_v2").transform


def _txt(tmp_path: Path, lines: list[str], name: str = "t.txt") -> str:
    path = tmp_path / name
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return str(path)


def test_the_default_sentences_have_15_topics_of_50() -> None:
    with SENTENCES_PATH.open(encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    labels = {r["label"] for r in rows}
    assert len(labels) >= 12 and len(rows) >= 600
    assert all(sum(r["label"] == lb for r in rows) == 50 for lb in labels)
    data = load_dataset("sentences", transform=TEXT)
    assert data.modality == "text" and data.num_classes == len(labels)
    assert len(data.calibration_pool) == 128 and len(data.evaluation) == len(rows) - 128  # type: ignore[arg-type]


def test_a_72_line_file_splits_a_quarter_for_calibration_with_the_same_seeded_split(tmp_path: Path) -> None:
    path = _txt(tmp_path, [f"sentence number {i} about something" for i in range(72)])
    a = load_dataset({"kind": "text_file", "path": path}, transform=TEXT)
    b = load_dataset({"kind": "text_file", "path": path}, transform=TEXT)
    assert (len(a.calibration_pool), len(a.evaluation)) == (18, 54)  # type: ignore[arg-type]
    assert a.info["texts"] == b.info["texts"]
    assert a.evaluation_labels is None and not set(a.info["texts"]["calibration"]) & set(a.info["texts"]["evaluation"])


def test_a_batch_is_cut_to_its_longest_text(tmp_path: Path) -> None:
    path = _txt(tmp_path, ["a b", "c d", "e f", "one two three four five six seven eight nine ten eleven", "g h", "i j"])
    data = load_dataset({"kind": "text_file", "path": path, "num_calibration": 1}, transform=TEXT)
    tokens = data.info["tokens"]
    short = [i for i, t in enumerate(data.info["texts"]["evaluation"]) if len(t) < 5]
    x, _ = load_batch(data.evaluation, short[:2])
    assert x.shape == (2, 2, 4) and tokens["padded_to"] == 13  # [CLS] a b [SEP]


def test_csv_labels_become_sorted_classes(tmp_path: Path) -> None:
    path = tmp_path / "l.csv"
    path.write_text('text,label\n"Stocks fell, then rose",finance\nThe striker scored,football\n'
                    "Bonds rallied,finance\nA corner kick,football\n", encoding="utf-8")
    data = load_dataset({"kind": "text_file", "path": str(path), "num_calibration": 2}, transform=TEXT)
    assert data.class_names == ["finance", "football"]
    texts = data.info["texts"]["calibration"] + data.info["texts"]["evaluation"]
    labels = torch.cat([data.calibration_labels, data.evaluation_labels]).tolist()  # type: ignore[list-item]
    assert dict(zip(texts, labels, strict=True))["Stocks fell, then rose"] == 0


@pytest.mark.parametrize("content, name, message", [
    (b"", "empty.txt", "empty.txt holds 0 text(s); allowed: at least 2 non-empty lines"),
    (b"caf\xe9 au lait\nsecond line\n", "latin1.txt", "latin1.txt is not UTF-8 text"),
    (b"sentence,topic\nhello,a\nworld,b\n", "notext.csv", "notext.csv has no 'text' column (columns: sentence, topic)"),
    (b"text,label\nhello,a\nworld,\n", "nolabel.csv", "1 row(s) have an empty label"),
    (b"hello\nworld\n", "words.json", "'words.json' is not a text file; allowed: .txt"),
])
def test_bad_text_files_are_named_with_what_is_expected(tmp_path: Path, content: bytes, name: str, message: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(DataError, match="dataset.path: ") as err:
        load_dataset({"kind": "text_file", "path": str(path)}, transform=TEXT)
    assert message in str(err.value)


def test_a_long_line_is_truncated_and_the_result_says_so(tmp_path: Path) -> None:
    path = _txt(tmp_path, ["short one", "short two", "word " * 300, "short three"])
    data = load_dataset({"kind": "text_file", "path": path, "num_calibration": 1}, transform=TEXT)
    assert data.warnings == ["dataset: 1 text(s) of t.txt are longer than the model's 256 tokens and were truncated (text 3)"]


def test_text_with_an_image_model_and_images_with_the_text_model_are_refused(tmp_path: Path) -> None:
    path = _txt(tmp_path, ["one line", "another line", "a third"])
    with pytest.raises(DataError, match="a text data set needs a text model"):
        Explorer("digits_cnn", {"kind": "text_file", "path": path})
    with pytest.raises(DataError, match="is image data, and the model all_minilm_l6_v2 reads text"):
        Explorer("all_minilm_l6_v2", "digits")
    from PIL import Image

    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(3):
        Image.new("RGB", (8, 8)).save(folder / f"{i}.png")
    with pytest.raises(DataError, match="the text model reads text, got"):
        Explorer("all_minilm_l6_v2", {"kind": "image_folder", "path": str(folder)})
