"""Tests for ptq_core.data: the digits splits, the data-set registry and calibration selection."""

from __future__ import annotations

import pytest
import torch

from ptq_core.data import Dataset, TensorSamples, available_datasets, load_dataset, register_dataset, select_calibration
from ptq_core.data.digits import digits_splits, split_indices
from ptq_core.errors import ConfigError, DataError


@pytest.fixture(scope="module")
def digits() -> Dataset:
    return load_dataset("digits")


def test_digits_split_sizes_and_shapes(digits: Dataset) -> None:
    splits = digits_splits()
    assert (len(splits.train), len(splits.calibration), len(splits.evaluation)) == (1078, 359, 360)
    assert len(digits.calibration_pool) == 359 and len(digits.evaluation) == 360  # type: ignore[arg-type]
    assert digits.info["samples"] == {"train": 1078, "calibration": 359, "evaluation": 360}
    x, y = digits.evaluation[0]
    assert x.dtype == torch.float32 and tuple(x.shape) == digits.input_shape == (1, 8, 8)
    assert isinstance(y, int) and y == int(digits.evaluation_labels[0])  # type: ignore[index]
    assert digits.num_classes == 10 and digits.class_names == [str(d) for d in range(10)]
    assert float(splits.train.x.min()) == 0.0 and float(splits.train.x.max()) == 1.0  # pixel / 16


def test_digits_splits_are_disjoint_and_cover_everything() -> None:
    idx = split_indices()
    parts = [set(idx[k].tolist()) for k in ("train", "calibration", "evaluation")]
    assert sum(len(p) for p in parts) == 1797
    assert set().union(*parts) == set(range(1797))
    # every class appears in the pool and the evaluation split
    splits = digits_splits()
    assert torch.unique(splits.calibration.y).tolist() == list(range(10))
    assert torch.unique(splits.evaluation.y).tolist() == list(range(10))


def test_digits_splits_are_fixed() -> None:
    torch.manual_seed(123)  # global state must not matter
    a = digits_splits()
    torch.manual_seed(456)
    b = digits_splits()
    assert torch.equal(a.evaluation.x, b.evaluation.x) and torch.equal(a.calibration.y, b.calibration.y)
    # pinned: the split is a fixed RandomState(0) permutation, so these never change
    assert split_indices()["evaluation"][:5].tolist() == [1442, 455, 584, 147, 160]
    assert a.evaluation.y[:8].tolist() == [7, 9, 4, 7, 0, 2, 6, 1]
    assert float(a.evaluation.x.sum()) == pytest.approx(7020.75)


def test_labels_match_items(digits: Dataset) -> None:
    assert digits.calibration_labels is not None
    assert [digits.calibration_pool[i][1] for i in range(20)] == digits.calibration_labels[:20].tolist()


def test_dict_spec_and_transform() -> None:
    plain = load_dataset({"kind": "digits"})
    doubled = load_dataset("digits", transform=lambda x: x * 2)
    assert torch.equal(doubled.evaluation[3][0], plain.evaluation[3][0] * 2)
    assert doubled.evaluation[3][1] == plain.evaluation[3][1]


@pytest.mark.parametrize("spec", ["cifar", {"kind": "cifar"}])
def test_unknown_dataset_lists_available(spec: str | dict) -> None:
    with pytest.raises(DataError, match="'cifar'.*available: digits"):
        load_dataset(spec)


def test_bad_spec_and_unknown_option() -> None:
    with pytest.raises(DataError, match="registered name"):
        load_dataset(42)  # type: ignore[arg-type]
    with pytest.raises(DataError, match=r"\['root'\].*'digits'"):
        load_dataset({"kind": "digits", "root": "/data"})


def test_register_dataset_with_options() -> None:
    def loader(*, size: int, transform: object = None) -> Dataset:
        x = torch.zeros(size, 1, 2, 2)
        return Dataset("tiny", "zeros", TensorSamples(x), TensorSamples(x), None, None, 1, None, (1, 2, 2), {})

    register_dataset("tiny_test", loader, "zeros for tests")
    assert "tiny_test" in available_datasets()
    data = load_dataset({"kind": "tiny_test", "size": 3})
    assert len(data.evaluation) == 3  # type: ignore[arg-type]
    assert data.evaluation[0][1] == -1  # unlabeled


@pytest.mark.parametrize("selection", ["first", "random", "balanced"])
def test_select_calibration_is_deterministic(digits: Dataset, selection: str) -> None:
    labels = digits.calibration_labels
    torch.manual_seed(1)
    a, _ = select_calibration(labels, 359, 64, 7, selection)
    torch.manual_seed(2)
    b, _ = select_calibration(labels, 359, 64, 7, selection)
    assert a == b and len(a) == 64 and len(set(a)) == 64
    assert all(0 <= i < 359 for i in a)


def test_select_calibration_first_and_random(digits: Dataset) -> None:
    assert select_calibration(None, 359, 5, 0, "first") == ([0, 1, 2, 3, 4], [])
    expected = torch.randperm(359, generator=torch.Generator().manual_seed(3))[:10].tolist()
    assert select_calibration(None, 359, 10, 3, "random")[0] == expected
    assert select_calibration(None, 359, 10, 4, "random")[0] != expected  # the seed matters


@pytest.mark.parametrize("num_samples", [10, 37, 256])
def test_balanced_counts_differ_by_at_most_one(digits: Dataset, num_samples: int) -> None:
    labels = digits.calibration_labels
    assert labels is not None
    chosen, warnings = select_calibration(labels, 359, num_samples, 0, "balanced")
    counts = torch.bincount(labels[chosen], minlength=10)
    assert int(counts.sum()) == num_samples and int(counts.max() - counts.min()) <= 1
    assert warnings == []
    # round-robin: the first ten picks are one of each class, in sorted class order
    assert labels[chosen[:10]].tolist() == list(range(10))


def test_balanced_worked_example_and_run_out_warning() -> None:
    labels = torch.tensor([0, 0, 1, 1, 1, 2])
    chosen, warnings = select_calibration(labels, 6, 4, 0, "balanced")
    assert labels[chosen].tolist() == [0, 1, 2, 0] and warnings == []
    chosen, warnings = select_calibration(labels, 6, 6, 0, "balanced")
    assert sorted(chosen) == list(range(6))
    # counts 2, 3, 1: classes 0 (2 samples) and 2 (1 sample) ran out
    assert len(warnings) == 1 and "class(es) 0 (2), 2 (1) have fewer than 3 samples" in warnings[0]


def test_cap_warning(digits: Dataset) -> None:
    for selection in ("first", "random", "balanced"):
        chosen, warnings = select_calibration(digits.calibration_labels, 359, 5000, 0, selection)
        assert sorted(chosen) == list(range(359))
        assert warnings[0] == "calibration.num_samples=5000 exceeds the calibration pool (359 samples); using 359"


def test_select_calibration_errors() -> None:
    with pytest.raises(ConfigError, match="'stratified'.*random, first, balanced"):
        select_calibration(None, 10, 5, 0, "stratified")
    with pytest.raises(DataError, match="unlabeled"):
        select_calibration(None, 10, 5, 0, "balanced")
    with pytest.raises(ConfigError, match="num_samples"):
        select_calibration(None, 10, 0, 0, "first")
