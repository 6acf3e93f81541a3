"""PTQ Explorer's engine: post-training quantization simulated in pure PyTorch.

Start with :class:`ptq_core.pipeline.Explorer` (or :func:`ptq_core.run` for one config) and
:class:`ptq_core.config.QuantConfig`. Importing the package loads no model and no data.
"""

from .config import QuantConfig
from .errors import PTQError

__all__ = ["PTQError", "QuantConfig", "run"]


def run(config: QuantConfig, **kwargs):  # type: ignore[no-untyped-def]
    """Run one config and return its Result; see :func:`ptq_core.pipeline.run`."""
    from .pipeline import run as _run

    return _run(config, **kwargs)
