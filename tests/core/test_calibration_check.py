"""calibration_check: nested-subset statistics are exact, the config's own pair reproduces evaluate().

Small sizes on the digits CNN keep it under a few seconds.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import pytest
import torch

from ptq_core.calibration_check import UNSTABLE_REL_STD, check_calibration
from ptq_core.config import QuantConfig, set_field
from ptq_core.errors import ConfigError
from ptq_core.pipeline import Explorer


@pytest.fixture(scope="module")
def cnn() -> Iterator[Explorer]:
    # One torch thread: these runs are tiny, and a 2-thread OpenMP pool on a busy 2-core machine
    # spends most of its time spin-waiting (10-50x slower). The numbers do not depend on it.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield Explorer("digits_cnn", "digits")
    torch.set_num_threads(before)


def _config(num_samples: int = 32, act_bits: int = 8, clipping: str = "minmax") -> QuantConfig:
    cfg = set_field(QuantConfig(), "evaluation.runtime", None)  # simulation only: the check never exports
    cfg = set_field(cfg, "calibration.num_samples", num_samples)
    cfg = set_field(cfg, "activations.bits", act_bits)
    return set_field(cfg, "activations.clipping", clipping)


@pytest.mark.parametrize("clipping", ["minmax", "percentile"])
def test_the_configs_own_pair_reproduces_evaluate(cnn: Explorer, clipping: str) -> None:
    # Statistics recombined from batches of 8 equal a plain calibration in batches of 32 up to the
    # last bit of the float model's batched matmuls (batch size changes their blocking), so the
    # ranges match to float rounding and, on these 360 samples, top-1 and agreement exactly.
    cfg = _config(num_samples=40, act_bits=4, clipping=clipping)
    check = check_calibration(cnn, cfg, sizes=[8, 16], seeds=[0, 1])
    result = cnn.evaluate(cfg)
    own = next(r for r in check.runs if r["size"] == 40 and r["seed"] == 0)
    assert own["quant_top1"] == result.metrics["quant_top1"]
    assert own["agreement"] == result.metrics["agreement"]
    expected = {a["name"]: [a["lo"], a["hi"]] for a in result.activations}
    assert own["ranges"].keys() == expected.keys()
    for name, (lo, hi) in expected.items():
        assert own["ranges"][name] == pytest.approx([lo, hi], rel=1e-5, abs=1e-6), name
    assert check.fp32_top1 == result.metrics["fp32_top1"]


def test_nested_snapshot_equals_a_separate_calibration(cnn: Explorer) -> None:
    # The size-8 ranges come from a snapshot of the seed's single pass; they must equal a
    # calibration of that 8-sample subset on its own (a prefix of the same permutation).
    cfg = _config(num_samples=32)
    check = check_calibration(cnn, cfg, sizes=[8], seeds=[2])
    small = set_field(set_field(cfg, "calibration.num_samples", 8), "calibration.seed", 2)
    expected = {a["name"]: [a["lo"], a["hi"]] for a in cnn.evaluate(small).activations}
    got = next(r for r in check.runs if r["size"] == 8 and r["seed"] == 2)["ranges"]
    assert got == expected


def test_tables_cover_every_size_seed_and_point(cnn: Explorer) -> None:
    progress: list[tuple[int, int]] = []
    check = check_calibration(cnn, _config(num_samples=16), sizes=[8, 1000], seeds=[0, 1, 2],
                              on_progress=lambda d, t, m: progress.append((d, t)))
    pool = check.pool_size
    assert check.sizes == [8, 16, pool]  # 1000 capped at the pool, the config's 16 added
    assert check.config_size == 16
    assert len(check.runs) == 3 * 3
    assert {(r["size"], r["seed"]) for r in check.runs} == {(n, s) for n in check.sizes for s in (0, 1, 2)}
    assert len(check.spread) == len(check.points) * 3
    assert [r["point"] for r in check.unstable] == check.points
    assert all(r["unstable"] == (r["rel_std"] > UNSTABLE_REL_STD) for r in check.unstable)
    assert any("capped" in n for n in check.notes)
    assert progress[-1][0] == progress[-1][1] and len(progress) == progress[-1][1]
    for row in check.summary:
        assert row["quant_top1_min"] <= row["quant_top1_mean"] <= row["quant_top1_max"]
    largest = [r for r in check.spread if r["size"] == pool]
    assert all(abs(r["width_vs_largest"] - 1.0) < 1e-12 for r in largest)
    json.dumps(check.to_dict())  # plain data


def test_small_subsets_spread_more_than_the_whole_pool(cnn: Explorer) -> None:
    check = check_calibration(cnn, _config(num_samples=8), sizes=[8, 1000], seeds=[0, 1, 2])
    at = {(r["point"], r["size"]): r["rel_std"] for r in check.spread}
    pool = check.pool_size
    # Every seed draws the whole pool at the largest size: identical statistics, zero spread.
    assert all(at[(p, pool)] == 0.0 for p in check.points)
    assert sum(at[(p, 8)] for p in check.points) > 0.0


def test_first_selection_has_no_seed_spread(cnn: Explorer) -> None:
    cfg = set_field(_config(num_samples=8), "calibration.selection", "first")
    check = check_calibration(cnn, cfg, sizes=[8], seeds=[0, 1])
    assert all(r["rel_std"] == 0.0 for r in check.spread)
    assert any("ignores the seed" in n for n in check.notes)


@pytest.mark.parametrize("activations", [None, {"mode": "dynamic"}])
def test_only_static_configs_can_be_checked(cnn: Explorer, activations: object) -> None:
    cfg = QuantConfig.from_dict({"activations": activations, "evaluation": {"runtime": None}})
    with pytest.raises(ConfigError, match="activations.mode"):
        check_calibration(cnn, cfg)


def test_bad_sizes_and_seeds_are_rejected(cnn: Explorer) -> None:
    with pytest.raises(ConfigError, match="sizes"):
        check_calibration(cnn, _config(), sizes=[0])
    with pytest.raises(ConfigError, match="seeds"):
        check_calibration(cnn, _config(), seeds=[])
