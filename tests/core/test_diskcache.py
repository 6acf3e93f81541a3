"""The disk cache: keys follow content, values come back equal, bad entries are misses, the size stays bounded."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from ptq_core.data import TensorSamples, dataset_fingerprint
from ptq_core.data.image_folder import load_image_folder
from ptq_core.diskcache import DiskCache, digest, module_fingerprint
from ptq_core.models.preprocessing import imagenet_transform


def test_digest_follows_content_not_identity() -> None:
    a, b = torch.arange(6.0), torch.arange(6.0)
    assert digest("x", a, 3) == digest("x", b, 3)
    b[5] = 5.000001
    assert digest("x", a, 3) != digest("x", b, 3)
    assert digest(torch.zeros(2, 3)) != digest(torch.zeros(3, 2))  # shape is part of the key
    assert digest(torch.zeros(2)) != digest(torch.zeros(2, dtype=torch.float64))
    assert digest(["ab", "c"]) != digest(["a", "bc"])  # parts are delimited


def test_module_fingerprint_changes_with_one_weight() -> None:
    m = torch.nn.Linear(4, 3)
    before = module_fingerprint(m)
    assert module_fingerprint(m) == before
    with torch.no_grad():
        m.weight[0, 0] += 1e-6
    assert module_fingerprint(m) != before


def test_round_trip_and_misses(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path)
    value = {"logits": torch.randn(5, 10), "labels": torch.arange(5), "seconds": 1.5, "names": ["a", "b"]}
    assert cache.load("fp32", "k1") is None
    cache.save("fp32", "k1", value)
    back = cache.load("fp32", "k1")
    assert torch.equal(back["logits"], value["logits"]) and back["names"] == ["a", "b"] and back["seconds"] == 1.5
    assert cache.load("fp32", "k2") is None and cache.load("stats", "k1") is None


def test_a_corrupt_entry_is_a_miss_and_is_removed(tmp_path: Path) -> None:
    cache = DiskCache(tmp_path)
    cache.save("fp32", "k1", {"x": torch.ones(3)})
    path = next(tmp_path.rglob("*.pt"))
    path.write_bytes(path.read_bytes()[:20])  # truncated, as after a crash mid-copy
    assert cache.load("fp32", "k1") is None
    assert not path.exists()


def test_disabled_and_unwritable_caches_compute_without_failing(tmp_path: Path) -> None:
    off = DiskCache(None)
    off.save("fp32", "k", torch.ones(2))
    assert off.load("fp32", "k") is None and not off.enabled
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    broken = DiskCache(blocker / "cache")  # cannot be created: its parent is a file
    broken.save("fp32", "k", torch.ones(2))  # no exception: the cache switches itself off
    assert not broken.enabled and broken.load("fp32", "k") is None


def test_least_recently_used_entries_go_first(tmp_path: Path) -> None:
    one = 100_000  # bytes of float32 per entry, about
    cache = DiskCache(tmp_path, max_bytes=int(3.5 * one))
    for i in range(3):
        cache.save("x", f"k{i}", torch.zeros(one // 4))
        past = time.time() - 100 + i
        os.utime(next(tmp_path.rglob(f"k{i}.pt")), (past, past))
    assert cache.load("x", "k0") is not None  # used again: now the most recent
    cache.save("x", "k3", torch.zeros(one // 4))  # over the limit: evict down to 80%
    assert cache.load("x", "k1") is None  # the least recently used
    assert cache.load("x", "k0") is not None and cache.load("x", "k3") is not None
    assert sum(f.stat().st_size for f in tmp_path.rglob("*.pt")) <= 3.5 * one


def _folder(tmp_path: Path, n: int = 3) -> Path:
    rng = np.random.default_rng(0)
    root = tmp_path / "images"
    root.mkdir()
    for i in range(n):
        Image.fromarray(rng.integers(0, 255, (40, 50, 3), dtype=np.uint8)).save(root / f"img{i}.png")
    return root


def test_images_are_decoded_once_per_content_and_transform(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    root = _folder(tmp_path)
    monkeypatch.setenv("PTQ_CACHE_DIR", str(tmp_path / "cache"))
    from ptq_core import diskcache

    diskcache.reset_default_cache()
    try:
        first, _, _ = load_image_folder(root, imagenet_transform())
        decoded = [first[i][0] for i in range(3)]
        assert len(list((tmp_path / "cache").rglob("*.pt"))) == 3

        def no_decoding(*args: object, **kwargs: object) -> None:
            raise AssertionError("decoded again although cached")

        again, _, _ = load_image_folder(root, imagenet_transform())
        with monkeypatch.context() as m:
            m.setattr(Image, "open", no_decoding)
            for i in range(3):
                assert torch.equal(again[i][0], decoded[i])  # bit-identical, not re-decoded
        fp = dataset_fingerprint(again, [0, 1, 2])
        Image.fromarray(np.zeros((40, 50, 3), dtype=np.uint8)).save(root / "img1.png")  # new content, same name
        changed, _, _ = load_image_folder(root, imagenet_transform())
        assert dataset_fingerprint(changed, [0, 1, 2]) != fp
        assert float(changed[1][0].std(dim=(1, 2)).max()) == 0.0  # the new, constant image, decoded anew
        assert len(list((tmp_path / "cache").rglob("*.pt"))) == 4
    finally:
        diskcache.reset_default_cache()


def test_tensor_samples_fingerprint_follows_subset_and_values() -> None:
    x, y = torch.randn(10, 1, 4, 4), torch.arange(10)
    data = TensorSamples(x, y)
    sub = torch.utils.data.Subset(data, [2, 3, 4])
    assert dataset_fingerprint(sub, [0, 1]) == dataset_fingerprint(data, [2, 3])
    assert dataset_fingerprint(data, [2, 3]) != dataset_fingerprint(data, [3, 2])
    other = TensorSamples(x.clone(), y.clone())
    other.x[3, 0, 0, 0] += 1.0
    assert dataset_fingerprint(other, [2, 3]) != dataset_fingerprint(data, [2, 3])
    assert dataset_fingerprint(TensorSamples(x, y, transform=lambda t: t), [0]) is None  # unknown transform: no key
