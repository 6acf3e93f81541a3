"""``evaluation.arithmetic = "integer"``: the simulation computes what onnxruntime's integer kernels compute.

The end-to-end tests export each config, run it in onnxruntime (the Result's runtime check) and require
the integer simulation's logits to equal onnxruntime's exactly, on every evaluation sample; the float
simulation, for contrast, is measurably off. The kernel tests run one onnxruntime op on random codes and
scales and compare with the emulated kernel, covering more scales than the models do.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

from ptq_core.config import QuantConfig
from ptq_core.errors import ConfigError
from ptq_core.onnx.integer import (
    IntegerAdd,
    IntegerGlobalAveragePool,
    IntegerMatMul,
    _Grid,
    build_integer_model,
    dynamic_quantize,
)
from ptq_core.onnx.session import PROVIDER, session_options
from ptq_core.pipeline import Explorer


def _cfg(**sections: object) -> QuantConfig:
    return QuantConfig.from_dict({"evaluation": {"arithmetic": "integer"}, **sections})


@pytest.mark.parametrize("weights", [{"granularity": "per_channel"}, {"granularity": "per_tensor", "clipping": "mse"}])
def test_integer_simulation_equals_onnxruntime_on_every_sample(cnn: Explorer, weights: dict[str, str]) -> None:
    r = cnn.evaluate(_cfg(weights=weights, activations={"clipping": "percentile", "percentile": 99.9}))
    m = r.metrics
    assert m["runtime_max_abs_diff"] == 0.0  # logits equal, not just close
    assert m["runtime_matching_samples"] == m["num_eval_samples"]
    assert r.environment["arithmetic"] == "integer"
    report = r.environment["integer_arithmetic"]
    assert {row["layer"] for row in report["integer"]} == {u.name for u in cnn.prepared().units}
    assert report["float_ops"] == []


def test_float_simulation_is_not_exact_where_integer_is(mlp: Explorer) -> None:
    exact = mlp.evaluate(_cfg(model="digits_mlp"))
    fake = mlp.evaluate(QuantConfig(model="digits_mlp"))
    assert exact.metrics["runtime_max_abs_diff"] == 0.0
    assert fake.metrics["runtime_max_abs_diff"] > 0.01  # one output step or more on some logit
    assert exact.metrics["quant_top1"] == pytest.approx(fake.metrics["quant_top1"], abs=0.01)


def test_units_onnxruntime_runs_in_float_are_named(cnn: Explorer) -> None:
    cfg = _cfg(weights={"bits": 4, "granularity": "per_channel"}, keep_float=["fc2"])
    _, report = build_integer_model(cnn.prepared_for(cfg), cnn.plan(cfg))
    reasons = {row["layer"]: row["reason"] for row in report.float_ops}
    assert "fc2" in reasons and "keep_float" in reasons["fc2"]
    assert "conv1" in reasons and "4-bit" in reasons["conv1"]  # no 4-bit convolution kernel in onnxruntime
    assert {row["layer"] for row in report.integer}.isdisjoint(reasons)


def test_integer_arithmetic_needs_the_torch_backend() -> None:
    with pytest.raises(ConfigError, match=r"evaluation\.arithmetic: got 'integer' with backend 'onnxruntime'"):
        QuantConfig.from_dict({"evaluation": {"arithmetic": "integer", "backend": "onnxruntime"}})
    with pytest.raises(ConfigError, match=r"evaluation\.arithmetic: got 'exact'; allowed: float, integer"):
        QuantConfig.from_dict({"evaluation": {"arithmetic": "exact"}})


def test_targets_are_checked_and_round_trip() -> None:
    cfg = QuantConfig.from_dict({"evaluation": {"targets": ["litert", "pt2e"]}})
    assert cfg.evaluation.targets == ("litert", "pt2e")
    assert QuantConfig.from_json(cfg.to_json()) == cfg
    with pytest.raises(ConfigError, match=r"evaluation\.targets\[0\]: got 'tflite'; allowed: litert, pt2e"):
        QuantConfig.from_dict({"evaluation": {"targets": ["tflite"]}})
    with pytest.raises(ConfigError, match=r"evaluation\.targets: got 'litert'; allowed: a list"):
        QuantConfig.from_dict({"evaluation": {"targets": "litert"}})
    with pytest.raises(ConfigError, match="each runtime at most once"):
        QuantConfig.from_dict({"evaluation": {"targets": ["pt2e", "pt2e"]}})


# -- single kernels against onnxruntime ---------------------------------------------------------------------
def _run_op(node: helper.NodeProto, inputs: dict[str, np.ndarray], out_shape: list[int]) -> np.ndarray:
    def info(name: str, arr: np.ndarray) -> helper.ValueInfoProto:
        dtype = {np.dtype(np.uint8): TensorProto.UINT8, np.dtype(np.float32): TensorProto.FLOAT}[arr.dtype]
        return helper.make_tensor_value_info(name, dtype, list(arr.shape))

    graph = helper.make_graph([node], "one", [info(k, v) for k, v in inputs.items()],
                              [helper.make_tensor_value_info("y", TensorProto.UINT8, out_shape)])
    model = helper.make_model(graph, ir_version=8,
                              opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("com.microsoft", 1)])
    sess = ort.InferenceSession(model.SerializeToString(), session_options(1), providers=[PROVIDER])
    return sess.run(None, inputs)[0]


def _scalar(v: float | int, dtype: type) -> np.ndarray:
    return np.array(v, dtype=dtype)


def test_qlinear_add_matches_onnxruntime_bit_for_bit() -> None:
    rng = np.random.default_rng(0)
    for trial in range(40):
        a = rng.integers(0, 256, size=(1, 8, 9, 7), dtype=np.uint8)  # 504 values: vector body and tail
        b = rng.integers(0, 256, size=a.shape, dtype=np.uint8)
        sa, sb, sc = (np.float32(rng.uniform(0.002, 0.2)) for _ in range(3))
        za, zb, zc = (int(rng.integers(0, 256)) for _ in range(3))
        node = helper.make_node("QLinearAdd", ["a", "sa", "za", "b", "sb", "zb", "sc", "zc"], ["y"], domain="com.microsoft")
        feeds = {"a": a, "sa": _scalar(sa, np.float32), "za": _scalar(za, np.uint8), "b": b, "sb": _scalar(sb, np.float32),
                 "zb": _scalar(zb, np.uint8), "sc": _scalar(sc, np.float32), "zc": _scalar(zc, np.uint8)}
        want = _run_op(node, feeds, list(a.shape))
        grid = [_Grid(torch.tensor(s), z, 0, 255) for s, z in ((sa, za), (sb, zb), (sc, zc))]
        deq = [torch.from_numpy((q.astype(np.float32) - z) * s) for q, s, z in ((a, sa, za), (b, sb, zb))]
        got = IntegerAdd(*grid)(*deq) / grid[2].scale + zc
        np.testing.assert_array_equal(torch.round(got).numpy().astype(np.uint8), want, err_msg=f"trial {trial}")


def test_qlinear_global_average_pool_matches_onnxruntime_bit_for_bit() -> None:
    rng = np.random.default_rng(1)
    for trial in range(20):
        x = rng.integers(0, 256, size=(2, 24, 7, 7), dtype=np.uint8)
        sx, sy = np.float32(rng.uniform(0.01, 0.1)), np.float32(rng.uniform(0.005, 0.05))
        zx, zy = int(rng.integers(0, 128)), int(rng.integers(0, 128))
        node = helper.make_node("QLinearGlobalAveragePool", ["x", "sx", "zx", "sy", "zy"], ["y"], domain="com.microsoft",
                                channels_last=0)
        feeds = {"x": x, "sx": _scalar(sx, np.float32), "zx": _scalar(zx, np.uint8), "sy": _scalar(sy, np.float32),
                 "zy": _scalar(zy, np.uint8)}
        want = _run_op(node, feeds, [2, 24, 1, 1])
        pool = IntegerGlobalAveragePool(_Grid(torch.tensor(sx), zx, 0, 255), _Grid(torch.tensor(sy), zy, 0, 255), keepdim=True)
        got = pool(torch.from_numpy((x.astype(np.float32) - zx) * sx)) / torch.tensor(sy) + zy
        np.testing.assert_array_equal(torch.round(got).numpy().astype(np.uint8), want, err_msg=f"trial {trial}")


def test_qlinear_matmul_matches_onnxruntime_bit_for_bit() -> None:
    rng = np.random.default_rng(2)
    for trial in range(24):
        # a head's width (Q·Kᵀ), a sentence's length and the longest one (attention·V), one past float32-exact sums
        k = (32, 62, 258, 300)[trial % 4]
        a = rng.integers(0, 256, size=(2, 3, 9, k), dtype=np.uint8)
        b = rng.integers(0, 256, size=(2, 3, k, 11), dtype=np.uint8)
        sa, sb = (np.float32(rng.uniform(0.002, 0.2)) for _ in range(2))
        sy = np.float32(sa * sb * rng.uniform(100, 2000) * np.sqrt(k))  # outputs spread over the codes, some saturate
        za, zb, zy = (int(rng.integers(0, 256)) for _ in range(3))
        node = helper.make_node("QLinearMatMul", ["a", "sa", "za", "b", "sb", "zb", "sy", "zy"], ["y"])
        feeds = {"a": a, "sa": _scalar(sa, np.float32), "za": _scalar(za, np.uint8), "b": b, "sb": _scalar(sb, np.float32),
                 "zb": _scalar(zb, np.uint8), "sy": _scalar(sy, np.float32), "zy": _scalar(zy, np.uint8)}
        want = _run_op(node, feeds, [2, 3, 9, 11])
        ga, gb, gy = (_Grid(torch.tensor(s), z, 0, 255) for s, z in ((sa, za), (sb, zb), (sy, zy)))
        deq = [torch.from_numpy((q.astype(np.float32) - z) * s) for q, s, z in ((a, sa, za), (b, sb, zb))]
        got = IntegerMatMul(ga, gb, gy)(*deq) / gy.scale + zy
        np.testing.assert_array_equal(torch.round(got).numpy().astype(np.uint8), want, err_msg=f"trial {trial}, K {k}")


def test_dynamic_quantize_linear_matches_onnxruntime_bit_for_bit() -> None:
    node = helper.make_node("DynamicQuantizeLinear", ["x"], ["y", "s", "z"])
    graph = helper.make_graph([node], "one", [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info(n, t, None) for n, t in
                               (("y", TensorProto.UINT8), ("s", TensorProto.FLOAT), ("z", TensorProto.UINT8))])
    model = helper.make_model(graph, ir_version=8, opset_imports=[helper.make_opsetid("", 17)])
    sess = ort.InferenceSession(model.SerializeToString(), session_options(1), providers=[PROVIDER])
    rng = np.random.default_rng(3)
    cases = [rng.normal(0, 1, (4, 7, 384)), np.abs(rng.normal(0, 3, (5, 1536))) - 0.17,  # LayerNorm-like, GELU-like
             -np.abs(rng.normal(0, 1, (3, 100))), rng.standard_cauchy((6, 384)),  # all negative, heavy outliers
             np.zeros((2, 8))]
    for i, x in enumerate(x.astype(np.float32) for x in cases):
        q, s, z = sess.run(None, {"x": x})
        k, scale = dynamic_quantize(torch.from_numpy(x))
        assert float(scale) == float(s), f"case {i}"
        np.testing.assert_array_equal(k.numpy(), q.astype(np.float32) - np.float32(z), err_msg=f"case {i}")
