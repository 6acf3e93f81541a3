"""Evaluations fanned out on Ray give the serial path's numbers; a cluster that is not there is a clear error.

The Ray test starts a Ray inside the test process (loopback only, two actors): about 20 s on two
cores, most of it Ray and the actors starting (each builds its own Explorer). It is the test CI runs
to exercise the Ray path.
"""

from __future__ import annotations

import socket

import pytest

from ptq_core.config import QuantConfig
from ptq_core.errors import ConfigError
from ptq_core.fanout import RayRunner, SerialRunner, make_runner
from ptq_core.pipeline import Explorer
from ptq_core.sensitivity import sensitivity

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _rows(report: object) -> list[tuple[object, ...]]:
    return [(r.name, r.only, r.all_but) for r in report.layers]  # type: ignore[attr-defined]


@pytest.mark.slow
def test_a_sensitivity_run_on_ray_equals_the_serial_one(cnn: Explorer) -> None:
    ray = pytest.importorskip("ray")
    config = QuantConfig.from_dict({"weights": {"bits": 4}, "activations": {"bits": 4}, "calibration": {"num_samples": 128},
                                    "evaluation": {"runtime": None, "backend": "onnxruntime"}})
    serial = sensitivity(cnn, config, runner=SerialRunner(cnn))
    try:
        runner = RayRunner(cnn, address="", num_workers=2)
        on_ray = sensitivity(cnn, config, runner=runner)
    finally:
        ray.shutdown()
    assert on_ray.runner == "ray" and serial.runner == "serial"
    assert _rows(on_ray) == _rows(serial)  # every measured number, exactly
    assert on_ray.quantized == serial.quantized


def test_an_unreachable_cluster_is_named_and_fails_fast(cnn: Explorer) -> None:
    with socket.socket() as s:  # a loopback port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    runner = make_runner(cnn, "ray", address=f"127.0.0.1:{port}")
    with pytest.raises(ConfigError, match=rf"^ray address: cannot reach a Ray cluster at '127.0.0.1:{port}'"):
        runner.evaluate_many([QuantConfig()])
    with pytest.raises(ConfigError, match=r"^ray address: got 'no-port'; allowed: HOST:PORT"):
        make_runner(cnn, "ray", address="no-port").evaluate_many([QuantConfig()])
    with pytest.raises(ConfigError, match=r"^runner: got 'spark'; allowed: ray, serial"):
        make_runner(cnn, "spark")
    assert make_runner(cnn, "serial").evaluate_many([]) == []  # the serial path stays available
