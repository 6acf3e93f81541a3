"""Sweeps: every combination of a grid of config fields, run on one Explorer.

    grid = parse_grid(["weights.bits=8,4", "weights.granularity=per_tensor,per_channel"])
    for config, result in run_sweep(explorer, expand_grid(base, grid), on_progress=...):
        ...

Calibration statistics are shared by every config with the same calibration subset, so a
sweep over bits, granularity or clipping calibrates once.

Every value of a grid is checked before anything runs: :func:`expand_grid` validates each
config's fields and resolves every model and data-set name it names (``model=digits_cnn,typo``
fails at once, naming ``typo`` and what is registered), so a sweep never stops after hours on the
last value.
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Callable, Iterator, Sequence
from typing import TYPE_CHECKING, Any

from .config import QuantConfig, set_fields
from .errors import ConfigError

if TYPE_CHECKING:
    from .pipeline import Explorer
    from .result import Result


def _parse_value(text: str) -> Any:
    """Grid values: JSON where it parses (8, 99.9, null, true), else the bare string (per_channel)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_grid(items: Sequence[str]) -> list[tuple[str, list[Any]]]:
    """``["weights.bits=8,4"]`` -> ``[("weights.bits", [8, 4])]``."""
    grid = []
    for item in items:
        if "=" not in item:
            raise ConfigError(f"grid entry {item!r}: expected FIELD=V1,V2,... e.g. weights.bits=8,4")
        key, values = item.split("=", 1)
        vals = [_parse_value(v.strip()) for v in values.split(",") if v.strip() != ""]
        if not vals:
            raise ConfigError(f"grid entry {item!r}: no values after '='")
        grid.append((key.strip(), vals))
    return grid


def expand_grid(base: QuantConfig, grid: Sequence[tuple[str, Sequence[Any]]]) -> list[QuantConfig]:
    """Every combination of the grid's values applied to ``base``, each validated, in row-major order.

    Validated means its fields, set together (:func:`~ptq_core.config.set_fields`) and its model and data-set
    names (:func:`check_sources`); what needs the model itself (layer names, group sizes) is
    checked by :func:`ptq_core.quantize.check_names`.
    """
    configs = []
    keys = [k for k, _ in grid]
    for combo in itertools.product(*(v for _, v in grid)):
        configs.append(set_fields(base, dict(zip(keys, combo, strict=True))))
    check_sources(configs)
    return configs


def source_key(config: QuantConfig) -> tuple[str, str]:
    """What picks the Explorer of a config: its model and data-set specs, as canonical JSON."""
    return json.dumps(config.model, sort_keys=True), json.dumps(config.dataset, sort_keys=True)


def check_sources(configs: Sequence[QuantConfig]) -> None:
    """Resolve every distinct model and data-set spec of ``configs`` (files checked, nothing loaded).

    Raises the registry's ModelError/DataError ("model: unknown model 'x'; available: ...") at the
    first spec that does not resolve.
    """
    from .data import check_dataset_spec  # the registries pull in the model zoo; imported when a sweep needs them
    from .models import get_model_entry

    models: dict[str, Any] = {}
    datasets: dict[str, Any] = {}
    for cfg in configs:
        model_key, data_key = source_key(cfg)
        models.setdefault(model_key, cfg.model)
        datasets.setdefault(data_key, cfg.dataset)
    for spec in models.values():
        get_model_entry(spec)
    for spec in datasets.values():
        check_dataset_spec(spec)


def run_sweep(
    explorer: Explorer,
    configs: Sequence[QuantConfig],
    *,
    on_progress: Callable[[int, int, str], None] | None = None,
) -> Iterator[tuple[QuantConfig, Result]]:
    """Evaluate each config in turn (lazily), reporting ``(done, total, message)`` after each."""
    for i, cfg in enumerate(configs):
        result = explorer.evaluate(cfg)
        if on_progress is not None:
            on_progress(i + 1, len(configs), f"configuration {i + 1}/{len(configs)}")
        yield cfg, result
