"""Pure pieces of the dashboard: figure builders, labels, the sidebar <-> config mapping, the Learn lessons."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from dashboard import charts, labels, lessons
from ptq_core.config import QuantConfig


def test_pareto_front_keeps_only_undominated_points() -> None:
    assert charts.pareto_front([1, 2, 3], [0.5, 0.9, 0.8]) == [0, 1]
    assert charts.pareto_front([3, 1, 2, 2], [0.9, 0.5, 0.7, 0.6]) == [1, 2, 0]
    assert charts.pareto_front([], []) == []


def test_tradeoff_scatter_carries_history_ids_and_draws_the_frontier() -> None:
    rows = [{"quant_bytes": 1024 * b, "quant_top1": t, "agreement": a, "compression_ratio": 4.0, "label": f"c{b}"}
            for b, t, a in ((8, 0.90, 0.95), (16, 0.95, 0.99), (32, 0.94, 1.0))]
    fig = charts.tradeoff_scatter(rows, [11, 12, 13], 12, "quant_top1", {"fp32_top1": 0.96, "fp32_bytes": 4 * 32 * 1024})
    names = [t.name for t in fig.data]
    assert names == ["Pareto frontier", "quantized configs", "FP32"]
    points = fig.data[1]
    assert [c[0] for c in points.customdata] == [11, 12, 13]
    assert list(fig.data[0].x) == [8, 16]  # 32 KiB at 94 % is beaten by 16 KiB at 95 %
    assert list(points.marker.size) == [10, 16, 10]  # the current config stands out


def test_one_colour_per_meaning() -> None:
    assert charts.FP32_COLOR != charts.QUANT_COLOR
    fig = charts.compare_bars(["a"], [{"fp32_top1": 0.9, "quant_top1": 0.8, "agreement": 0.85,
                                       "fp32_bytes": 4096, "quant_bytes": 1024}])
    by_name = {t.name: t.marker.color for t in fig.data}
    assert by_name["FP32 top-1"] == by_name["FP32 size"] == charts.FP32_COLOR
    assert by_name["quantized top-1"] == by_name["quantized size"] == charts.QUANT_COLOR


def test_labels_are_honest() -> None:
    simulated = {"kind": "simulated", "fp32_ms": 1.0, "quant_ms": 2.0, "note": "simulated: ..."}
    assert labels.latency(simulated)["title"] == "Latency (simulated)"
    measured = {"kind": "measured", "runtime": "onnxruntime", "threads": 1, "unit": "ms",
                "batches": {"1": {"fp32_ms": 1.0, "quant_ms": 0.5}}}
    assert "measured" in labels.latency(measured)["title"] and labels.latency(measured)["quant_ms"] == 0.5
    assert labels.db(None) == labels.db(math.inf) == "exact"
    assert labels.config_label(QuantConfig().to_dict()).startswith("W8 per-channel min-max · A8 min-max · cal 256")
    assert "weight-only" in labels.config_label(QuantConfig(activations=None).to_dict())


def test_quantize_steps_match_torch_fake_quantize() -> None:
    x = np.array([-1.17, -0.52, 0.0, 0.31, 0.83, 1.46, 2.6], dtype=np.float32)
    for bits, scheme in ((8, "asymmetric"), (4, "asymmetric"), (4, "symmetric"), (2, "symmetric")):
        s = lessons.quantize_steps(x, bits, scheme)
        ref = torch.fake_quantize_per_tensor_affine(torch.tensor(x), s["scale"], s["zero_point"], s["qmin"], s["qmax"])
        assert np.array_equal(s["x_hat"], ref.numpy())
        assert np.all(np.abs(s["error"]) <= s["scale"] / 2 + 1e-6)  # min-max range: nothing clipped
        assert s["clamped"] == 0 and len(s["levels"]) == s["qmax"] - s["qmin"] + 1


def test_shrinking_the_range_clamps_the_outer_values() -> None:
    s = lessons.quantize_steps(np.array([-1.0, 0.0, 0.5, 2.0], dtype=np.float32), 8, "asymmetric", shrink=0.5)
    assert s["clamped"] == 2
    assert s["q"].min() == s["qmin"] and s["q"].max() == s["qmax"]
    assert list(s["unclamped"]) != list(s["q"])


@pytest.mark.parametrize("text, message", [("", "type a few numbers"), ("1, x", "'x' is not a number"),
                                           ("1, inf", "finite"), (",".join(["1"] * 40), "at most")])
def test_parse_values_says_what_is_wrong(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        lessons.parse_values(text)


def test_clipping_lesson_marks_every_method_and_an_interior_optimum() -> None:
    values = lessons.sample("relu_outliers", 20000, seed=0)
    assert values.min() >= 0 and values.max() > 5
    lesson = lessons.clipping_lesson(values, 4, "asymmetric")
    assert [m["method"] for m in lesson["methods"]] == ["minmax", "percentile", "mse", "kl"]
    curve = lesson["curve"]
    best = int(np.argmin(curve["mse"]))
    assert 0 < best < len(curve["mse"]) - 1  # with outliers at 4 bits, clipping some of them pays
    minmax = lesson["methods"][0]
    assert minmax["clipping_mse"] == 0.0 and minmax["threshold"] == pytest.approx(float(values.max()))
    fig = charts.clipping_tradeoff(curve, lesson["methods"], float(curve["hi"][-1]))
    assert {"rounding error", "clipping error", "total error"} <= {t.name for t in fig.data}
