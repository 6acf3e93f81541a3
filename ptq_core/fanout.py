"""Many independent evaluations of one model and data set: in this process, or fanned out on Ray.

What lives here: the :class:`Runner` protocol (``evaluate_many(configs)`` -> Results, in order),
:class:`SerialRunner` (one Explorer, this process: what the dashboard uses, sharing its caches)
and :class:`RayRunner` (Ray actors, each with an Explorer of the same model and data set), and
:func:`make_runner`. Sensitivity analysis (:mod:`ptq_core.sensitivity`) and the mixed-precision
search (:mod:`ptq_core.search`) evaluate dozens of configs through a Runner. Not here: what is
evaluated, or how results are read.

Every evaluation here is the simulation alone (:meth:`Explorer.evaluate` with
``layer_errors=False, runtime_check=False``): what a sensitivity row or a search step needs.

Ray
    By default :func:`make_runner` starts Ray inside this process the first time it is needed
    (``ray.init(num_cpus=..., include_dashboard=False)``), one actor per CPU, each running its
    batches on one thread; that Ray talks over the loopback interface only. With ``RAY_ADDRESS`` set (or ``address=``, the CLI's
    ``--ray-address``) it joins that cluster instead: ``ray start --head`` on one machine,
    ``ray start --address=HEAD:6379`` on the others, then ``RAY_ADDRESS=HEAD:6379 python -m
    ptq_core sensitivity ...``. Every node must reach the model and data the config names (the
    same paths, or a shared file system) and have this project's environment.

    The calibration statistics are computed once, by the driver, and sent to every actor, so no
    worker runs calibration and all quantize with the same ranges. Each actor computes its own FP32
    reference (from the disk cache when the node has one). Results are identical to the serial
    path: the same statistics, the same plan, one-thread ops whatever the number of workers
    (``tests/core/test_fanout.py`` compares them on digits).
"""

from __future__ import annotations

import logging
import os
import socket
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, Protocol

import torch

from .calibration import stats_from_dict, stats_to_dict
from .config import QuantConfig
from .errors import ConfigError, PTQError
from .result import Result

log = logging.getLogger(__name__)

RAY_ADDRESS_ENV = "RAY_ADDRESS"
LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # "0": Ray binds its processes to 127.0.0.1 (single machine)
CONNECT_TIMEOUT_S = 3.0  # a cluster address that does not answer in this long is reported, not waited on
# on_result(i, result): the i-th config's Result, as soon as it is there (for progress and partial answers)
ResultFn = Callable[[int, Result], None]


class Runner(Protocol):
    """Evaluates configs of one model and data set; Results come back in the order of ``configs``."""

    name: str

    def evaluate_many(self, configs: Sequence[QuantConfig], on_result: ResultFn | None = None) -> list[Result]: ...


class SerialRunner:
    """One Explorer in this process, one config after the other (each on every core: ptq_core.parallel)."""

    name = "serial"

    def __init__(self, explorer: Any) -> None:
        self.explorer = explorer

    def evaluate_many(self, configs: Sequence[QuantConfig], on_result: ResultFn | None = None) -> list[Result]:
        out = []
        for i, config in enumerate(configs):
            result = self.explorer.evaluate(config, layer_errors=False, runtime_check=False)
            out.append(result)
            if on_result is not None:
                on_result(i, result)
        return out


class _Worker:
    """A Ray actor's state: an Explorer of the driver's model and data set, with the driver's statistics."""

    def __init__(self, model: Any, dataset: Any, statistics: list[tuple[str, dict[str, Any]]]) -> None:
        from .allocator import tune_malloc
        from .pipeline import Explorer

        tune_malloc()
        torch.set_num_threads(1)  # as the driver: one thread per op, batches side by side
        self.explorer = Explorer(model, dataset)
        for config_json, stats in statistics:
            self.explorer.add_statistics(QuantConfig.from_json(config_json), stats_from_dict(stats))

    def evaluate(self, config_json: str) -> dict[str, Any]:
        config = QuantConfig.from_json(config_json)
        return self.explorer.evaluate(config, layer_errors=False, runtime_check=False).to_dict()


class RayRunner:
    """Ray actors, one per CPU Ray offers (``num_workers`` to set), each with its own Explorer."""

    name = "ray"

    def __init__(self, explorer: Any, *, address: str | None = None, num_workers: int | None = None) -> None:
        self.explorer = explorer
        self.address = address if address is not None else os.environ.get(RAY_ADDRESS_ENV) or None
        self.num_workers = num_workers
        self._actors: list[Any] = []
        self._shipped: set[str] = set()

    def _start(self, configs: Sequence[QuantConfig]) -> None:
        if self.address:
            _check_reachable(self.address)
        else:
            # A Ray inside this process talks over loopback only: Ray uses the machine's network address for its
            # own processes unless it believes it runs on a single machine (read when ray is first imported).
            os.environ.setdefault(LOOPBACK_ENV, "0")
        ray = _ray()
        if not ray.is_initialized():
            try:
                if self.address:
                    ray.init(address=self.address, include_dashboard=False, log_to_driver=False, configure_logging=False)
                else:  # workers are new processes: they find ptq_core where this process found it
                    root = str(Path(__file__).resolve().parents[1])
                    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
                    ray.init(num_cpus=os.cpu_count() or 1, include_dashboard=False, log_to_driver=False,
                             configure_logging=False, runtime_env={"env_vars": {"PYTHONPATH": path}})
            except (ConnectionError, TimeoutError, RuntimeError, ValueError) as exc:
                where = f"{self.address!r}" if self.address else "this machine (a local Ray)"
                raise ConfigError(
                    f"ray address: cannot start or reach Ray at {where}: {str(exc).splitlines()[0][:200]}; allowed: the "
                    "address of a running Ray cluster (ray start --head prints it), unset for a Ray inside this "
                    "process, or the serial runner (--runner serial)"
                ) from None
        statistics = self._statistics(configs)
        if not self._actors:
            count = self.num_workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
            actor = ray.remote(num_cpus=1, runtime_env={"env_vars": {"PTQ_WORKERS": "1"}})(_Worker)
            self._actors = [actor.remote(self.explorer.model_spec, self.explorer.dataset_spec, statistics)
                            for _ in range(count)]

    def _statistics(self, configs: Sequence[QuantConfig]) -> list[tuple[str, dict[str, Any]]]:
        """The calibration statistics every config needs, computed once here (one per calibration setting)."""
        out, seen = [], set()
        for config in configs:
            if config.mode != "static":
                continue
            key = config.calibration, config.fold_batchnorm, config.device
            if key in seen:
                continue
            seen.add(key)
            out.append((config.to_json(), stats_to_dict(self.explorer.calibrate(config))))
        return out

    def evaluate_many(self, configs: Sequence[QuantConfig], on_result: ResultFn | None = None) -> list[Result]:
        if not configs:
            return []
        self._start(configs)
        ray = _ray()
        pending = {self._actors[i % len(self._actors)].evaluate.remote(c.to_json()): i for i, c in enumerate(configs)}
        results: dict[int, Result] = {}
        try:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                i = pending.pop(done[0])
                try:
                    results[i] = Result.from_dict(ray.get(done[0]))
                except ray.exceptions.RayTaskError as exc:  # the worker's PTQError, said as the serial path would
                    cause = exc.cause if isinstance(getattr(exc, "cause", None), PTQError) else None
                    if cause is not None:
                        raise cause from None
                    raise
                if on_result is not None:
                    on_result(i, results[i])
        finally:
            for ref in pending:  # stopped early (an error, or the caller's stop): nothing more is computed
                ray.cancel(ref)
        return [results[i] for i in range(len(configs))]


def _check_reachable(address: str) -> None:
    """Fail fast, naming the address, when a ``host:port`` cluster address does not accept a connection.

    (Ray itself waits 30 s or more before it gives up on a GCS that is not there.)
    """
    if address == "auto":
        return
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"ray address: got {address!r}; allowed: HOST:PORT of a Ray cluster's head (e.g. 10.0.0.5:6379), "
                          "ray://HOST:10001 for Ray Client, or auto")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        raise ConfigError(f"ray address: cannot reach a Ray cluster at {address!r} ({exc.strerror or exc}); allowed: the "
                          "address of a running Ray cluster (ray start --head prints it), unset for a Ray inside this "
                          "process, or the serial runner (--runner serial)") from None


def _ray() -> Any:
    try:
        import ray
    except ImportError as exc:  # pragma: no cover - ray is in requirements.txt
        raise ConfigError(f"runner: got 'ray' but Ray is not installed ({exc}); allowed: serial, or pip install ray") from None
    return ray


RUNNERS = ("ray", "serial")


def make_runner(explorer: Any, name: str = "ray", *, address: str | None = None, num_workers: int | None = None) -> Runner:
    """A runner by name: ``"ray"`` (local in-process Ray, or the cluster at ``address`` / ``RAY_ADDRESS``) or ``"serial"``."""
    if name == "serial":
        return SerialRunner(explorer)
    if name == "ray":
        return RayRunner(explorer, address=address, num_workers=num_workers)
    raise ConfigError(f"runner: got {name!r}; allowed: {', '.join(RUNNERS)}")
